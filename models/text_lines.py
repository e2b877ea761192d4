"""Labelled text lines for the PP-OCRv6 recogniser: rendered here, judged by character error rate.

Lines are drawn with PIL in the DejaVu fonts that ship inside the matplotlib wheel
(``matplotlib/mpl-data/fonts/ttf``: Sans, Serif and Mono, regular / bold / oblique), so no font or data is
downloaded. Every character comes from the recogniser's own dictionary (the model's ``character``
metadata, :func:`dictionary`), and the text imitates what a recogniser reads in documents: words from a
small English vocabulary (capitalised or in capitals now and then), integers, decimals, prices,
percentages, dates, times, invoice-style codes and phone numbers, joined by spaces and punctuation
(:func:`random_text`).

Rendering (:func:`render_line`): a seeded random font and size (11–44 px: small text is upscaled to the
input height, as from a low-resolution scan), ink darker than the background by 45 grey levels or more
(both varying per line, with a slight colour cast), a margin of 0–12 pixels, and for some lines a
rotation of up to 2.5°, a Gaussian blur and pixel noise — crops as a detector cuts them from scans and
photos.
A line that would not fit the recogniser's 48×320 input at its aspect ratio loses its last word.

Preprocessing (:func:`rec_input`) is exactly what :func:`models.ppocr.rec_images` (and rapidocr) does:
resize to height 48 keeping the aspect ratio (width ``ceil(48·w/h)``, at most 320; bilinear, PIL here,
OpenCV in rapidocr), BGR order, ``(x/255 − 0.5)/0.5``, channels first, right-padded with 0 to width 320.

Decoding (:func:`decode`): greedy CTC as rapidocr does it — argmax per position, repeats collapsed, the
blank (index 0) removed — then indices to characters through the dictionary
(``['blank'] + metadata lines + [' ']``, rapidocr's ``CTCLabelDecode``).

Character error rate (:func:`character_error_rate`): ``Σ edit distance(hyp, ref) / Σ len(ref)`` over the
lines (Levenshtein: insertions, deletions and substitutions each cost 1), as a fraction.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REC_HEIGHT, REC_WIDTH = 48, 320
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
              "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf")
WORDS = (
    "the of and to in is for on with as by at from this that be are was it not or an have has total date "
    "number order invoice amount price tax net due payment account customer name address street city road "
    "phone email page report table figure section chapter summary result value error rate time day week "
    "month year item quantity unit cost discount balance paid received shipping delivery store market bank "
    "office station north south east west central main new old first last next open closed monday friday "
    "january march june october december model serial version product service support contact information "
    "please note see below above more less only free sale special offer reference code number label text "
    "line document scan copy original signature approved manager department school hospital library "
    "museum airport hotel restaurant coffee water green blue red black white light heavy small large"
).split()
PUNCT_AFTER = (",", ".", ":", ";")


def font_dir() -> Path:
    """Folder of the DejaVu fonts inside the installed matplotlib wheel (found without importing it)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        raise ImportError("rendering text lines needs the matplotlib wheel (its DejaVu fonts): pip install matplotlib")
    return Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"


@functools.lru_cache(maxsize=1)
def dictionary() -> tuple[str, ...]:
    """Index → character of the PP-OCRv6 recogniser's output classes (module docstring)."""
    import onnx

    from models.ppocr import REC_FILE, package_model

    model = onnx.load(str(package_model(REC_FILE)), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    return ("blank", *meta["character"].split("\n"), " ")


def _token(rng: np.random.Generator) -> str:
    kind = rng.choice(["word", "word", "word", "word", "Word", "WORD", "int", "decimal", "price", "percent",
                       "date", "time", "code", "phone"])
    if kind in ("word", "Word", "WORD"):
        word = str(rng.choice(WORDS))
        word = word.capitalize() if kind == "Word" else word.upper() if kind == "WORD" else word
        return word + (str(rng.choice(PUNCT_AFTER)) if rng.random() < 0.12 else "")
    if kind == "int":
        return str(int(rng.integers(0, 10 ** int(rng.integers(1, 6)))))
    if kind == "decimal":
        return f"{rng.uniform(0, 1000):.{int(rng.integers(1, 4))}f}"
    if kind == "price":
        return f"{rng.choice(['$', '€', '£', ''])}{rng.uniform(0, 5000):.2f}"
    if kind == "percent":
        return f"{rng.uniform(0, 100):.1f}%"
    if kind == "date":
        y, m, d = int(rng.integers(1990, 2031)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        return f"{y}-{m:02d}-{d:02d}" if rng.random() < 0.5 else f"{d:02d}/{m:02d}/{y}"
    if kind == "time":
        return f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
    if kind == "code":
        letters = "".join(chr(ord("A") + int(i)) for i in rng.integers(0, 26, int(rng.integers(2, 4))))
        return f"{letters}-{int(rng.integers(100, 99999))}"
    return f"+{int(rng.integers(1, 99))} {int(rng.integers(10, 999))} {int(rng.integers(100000, 9999999))}"


def random_text(rng: np.random.Generator, tokens: int | None = None) -> str:
    """A document-like line of 1–6 tokens (module docstring); every character is in :func:`dictionary`."""
    count = tokens if tokens is not None else int(rng.integers(1, 7))
    text = " ".join(_token(rng) for _ in range(count))
    if rng.random() < 0.08:
        text = f"({text})"
    return text


def render_line(text: str, rng: np.random.Generator) -> np.ndarray:
    """``text`` drawn as an (h, w, 3) uint8 RGB crop (module docstring); the same ``rng`` state gives the same
    pixels."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    font = ImageFont.truetype(str(font_dir() / FONT_FILES[int(rng.integers(len(FONT_FILES)))]),
                              size=int(rng.integers(11, 45)))
    left, _, right, _ = font.getbbox(text)
    ascent, descent = font.getmetrics()
    margin_x, margin_y = int(rng.integers(1, 12)), int(rng.integers(0, 8))
    width = right - min(left, 0) + 2 * margin_x
    height = ascent + descent + 2 * margin_y
    paper = rng.uniform(110, 255)
    background = tuple(int(np.clip(paper + rng.uniform(-15, 15), 0, 255)) for _ in range(3))
    ink_level = paper - rng.uniform(45, min(paper, 230))
    ink = tuple(int(np.clip(ink_level + rng.uniform(-20, 20), 0, 255)) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    ImageDraw.Draw(image).text((margin_x - min(left, 0), margin_y), text, font=font, fill=ink)
    if rng.random() < 0.4:  # slightly rotated, as a detector's box cuts a skewed line
        image = image.rotate(float(rng.uniform(-2.5, 2.5)), resample=Image.BILINEAR, expand=False,
                             fillcolor=background)
    if rng.random() < 0.6:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.5))))
    pixels = np.asarray(image, dtype=np.float32)
    if rng.random() < 0.7:
        pixels = pixels + rng.normal(0, rng.uniform(2, 18), size=pixels.shape)
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def rec_input(rgb: np.ndarray) -> np.ndarray:
    """(3, 48, 320) float32 recogniser input from an (h, w, 3) uint8 RGB line (module docstring)."""
    from PIL import Image

    from models.ppocr import normalize

    h, w = rgb.shape[:2]
    width = min(REC_WIDTH, int(math.ceil(REC_HEIGHT * w / h)))
    resized = np.asarray(Image.fromarray(rgb).resize((width, REC_HEIGHT), Image.BILINEAR), dtype=np.float32)
    out = np.zeros((3, REC_HEIGHT, REC_WIDTH), dtype=np.float32)
    out[:, :, :width] = normalize(resized[..., ::-1])
    return out


def _fits(text: str, rng_state: dict) -> bool:
    rng = np.random.default_rng()
    rng.bit_generator.state = rng_state
    crop = render_line(text, rng)
    return REC_HEIGHT * crop.shape[1] / crop.shape[0] <= REC_WIDTH


def text_lines(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` labelled lines: the (n, 3, 48, 320) recogniser inputs and their texts; seeded, deterministic."""
    known = set(dictionary())
    rng = np.random.default_rng(seed)
    inputs = np.zeros((n, 3, REC_HEIGHT, REC_WIDTH), dtype=np.float32)
    labels: list[str] = []
    for i in range(n):
        words = random_text(rng).split(" ")
        state = rng.bit_generator.state
        while len(words) > 1 and not _fits(" ".join(words), state):
            words = words[:-1]
        text = " ".join(words)
        missing = sorted(set(text) - known)
        if missing:
            raise ValueError(f"characters {missing} are not in the recogniser's dictionary")
        inputs[i] = rec_input(render_line(text, rng))
        labels.append(text)
    return inputs, labels


def decode(scores: np.ndarray) -> list[str]:
    """Greedy CTC decoding of (N, T, C) recogniser scores to text (module docstring)."""
    from graphopt.verify import ctc_greedy_decode

    chars = dictionary()
    return ["".join(chars[i] for i in row) for row in ctc_greedy_decode(np.asarray(scores))]


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (insertions, deletions, substitutions each 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """``Σ edit_distance / Σ len(reference)`` over the lines, as a fraction."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("character error rate needs at least one reference character")
    return sum(edit_distance(h, r) for r, h in zip(references, hypotheses)) / total


def labels_path(npz: Path) -> Path:
    """The text labels stored next to a data file: ``<stem>.txt``, one line per sample."""
    return Path(npz).with_suffix(".txt")


def read_labels(npz: Path) -> list[str] | None:
    """The labels of ``npz`` (``None`` when there is no ``.txt`` next to it)."""
    path = labels_path(npz)
    if not path.exists():
        return None
    return path.read_text(encoding="utf-8").split("\n")[:-1]
