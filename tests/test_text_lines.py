"""Labelled text lines for the PP-OCR recogniser: CTC decoding, character error rate, rendering determinism."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from models import text_lines
from models.text_lines import character_error_rate, edit_distance

needs_rapidocr = pytest.mark.skipif(importlib.util.find_spec("rapidocr") is None,
                                    reason="the rapidocr wheel (the recogniser's dictionary) is not installed")
needs_fonts = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None or importlib.util.find_spec("PIL") is None,
                                 reason="rendering needs Pillow and matplotlib's DejaVu fonts")


def test_edit_distance_and_cer_maths():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3
    assert edit_distance("abc", "abc") == 0
    # two lines, 10 reference characters: one substitution + one deletion → 2 / 10
    assert character_error_rate(["hello", "world"], ["hallo", "wrld"]) == pytest.approx(0.2)
    # an insertion counts too, so the rate can pass 100 %
    assert character_error_rate(["a"], ["abc"]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        character_error_rate(["a"], [])


@needs_rapidocr
def test_decode_collapses_repeats_and_drops_blanks():
    chars = text_lines.dictionary()
    assert chars[0] == "blank" and chars[-1] == " " and len(chars) == 18710
    index = {c: i for i, c in enumerate(chars)}
    # "a a b _ b c" with blanks (0) in between: the repeated a collapses, the blank separates the two b's
    path = [index["a"], index["a"], 0, index["b"], 0, index["b"], index[" "], index["7"], 0]
    scores = np.full((1, len(path), len(chars)), -1.0, np.float32)
    scores[0, np.arange(len(path)), path] = 1.0
    assert text_lines.decode(scores) == ["abb 7"]


@needs_rapidocr
@needs_fonts
def test_rendering_is_deterministic_and_in_the_dictionary():
    first_x, first_labels = text_lines.text_lines(6, seed=3)
    again_x, again_labels = text_lines.text_lines(6, seed=3)
    other_x, _ = text_lines.text_lines(6, seed=4)
    assert first_labels == again_labels and np.array_equal(first_x, again_x)
    assert not np.array_equal(first_x, other_x)
    assert first_x.shape == (6, 3, 48, 320) and first_x.dtype == np.float32
    assert first_x.min() >= -1.0 and first_x.max() <= 1.0
    assert set("".join(first_labels)) <= set(text_lines.dictionary())
    assert all(label and label == label.strip() for label in first_labels)


@needs_fonts
def test_rec_input_keeps_the_aspect_ratio_and_pads_with_zero():
    rgb = np.full((24, 60, 3), 255, np.uint8)  # aspect 2.5 → width 120 at height 48
    x = text_lines.rec_input(rgb)
    assert x.shape == (3, 48, 320)
    np.testing.assert_allclose(x[:, :, :120], 1.0, atol=1e-6)  # white → +1 after (x/255 − 0.5)/0.5
    assert np.all(x[:, :, 120:] == 0.0)
