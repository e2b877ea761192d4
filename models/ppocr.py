"""``ppocr-det`` and ``ppocr-rec``: the real PP-OCRv6 (small) text detector and recogniser.

Both ONNX files ship inside the PyPI wheel ``rapidocr==3.10.0`` (``rapidocr/models/``) and are copied
unchanged (exported from PaddlePaddle, opset 11). Install with ``pip install --no-deps rapidocr==3.10.0``:
only the model files are used, so none of rapidocr's own dependencies (OpenCV, shapely, ...) are needed.

* det ``PP-OCRv6_det_small.onnx`` (9.9 MB): input ``x`` (N, 3, H, W) float32, H and W multiples of 32;
  output ``fetch_name_0`` (N, 1, H, W), the per-pixel text probability (DB head).
* rec ``PP-OCRv6_rec_small.onnx`` (21 MB): input ``x`` (N, 3, 48, W) float32; output ``fetch_name_0``
  (N, W/8, 18710), per-position class probabilities for CTC decoding (the dictionary is in the model's
  ``character`` metadata).

Preprocessing as rapidocr does it: BGR channel order (rapidocr reads images with OpenCV),
``(pixel / 255 - 0.5) / 0.5``, channels first. Rec crops are resized to height 48 keeping their aspect
ratio and right-padded with 0 (after normalisation) to width 320, rapidocr's ``rec_img_shape``.

Data (scikit-image's bundled pictures, :mod:`models.images`):

* det — 32 calib / 16 eval crops of 320 x 320: half from ``page`` and ``text`` (photographs of printed and
  handwritten text), half from the natural photographs;
* rec — 256 calib / 256 eval labelled text lines rendered here (:mod:`models.text_lines`: DejaVu fonts from
  the matplotlib wheel, document-like words and numbers from the recogniser's own dictionary), preprocessed
  as above; the texts are stored next to the data, one per line (``ppocr_rec_calib.txt``,
  ``ppocr_rec_eval.txt``), so a rewritten model is judged by its character error rate against the ground
  truth, not only by agreement with fp32. These replaced 128 eval lines cut from ``skimage.data.page()``,
  which had no ground truth: errors of fp32 itself were invisible, and agreement counted every flip alike.
  256 eval lines hold about 2,900 characters. The set is noisy: the character error rate of fp32 itself
  was 2.2 % on these lines and 0.9 % on 1,024 lines of another seed (a few hard lines — small,
  low-contrast text — weigh a lot), so compare variants on the same lines only. 512 lines would halve
  the noise, but the recogniser's outputs (T=40 × 18,710 classes per line, 1.5 GB per variant at 512)
  made ``tools/bench.py`` hold more memory than this 23 GB machine has. Data files of another size, or
  without their labels, are rebuilt.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from models.artifacts import npz_paths, write_bytes_atomic, write_npz

SEED = 0
DET_FILE = "PP-OCRv6_det_small.onnx"
REC_FILE = "PP-OCRv6_rec_small.onnx"
DET_SIZE = 320
DET_CALIB, DET_EVAL = 32, 16
REC_HEIGHT, REC_WIDTH = 48, 320
REC_CALIB, REC_EVAL = 256, 256


def package_model(filename: str) -> Path:
    """Path of a model file inside the installed ``rapidocr`` wheel (found without importing rapidocr,
    whose ``__init__`` needs OpenCV and friends)."""
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or spec.origin is None:
        raise ImportError("ppocr models need the rapidocr wheel: pip install --no-deps rapidocr==3.10.0")
    path = Path(spec.origin).parent / "models" / filename
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with: pip install --no-deps rapidocr==3.10.0")
    return path


def _copy(filename: str, out_dir: Path, stem: str) -> Path:
    path = Path(out_dir) / f"{stem}.onnx"
    if not path.exists():
        write_bytes_atomic(path, package_model(filename).read_bytes())
    return path


def normalize(bgr: np.ndarray) -> np.ndarray:
    """(…, H, W, 3) BGR in [0, 255] → (…, 3, H, W) float32 in [-1, 1], rapidocr's det/rec normalisation."""
    x = (np.asarray(bgr, dtype=np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(np.moveaxis(x, -1, -3)).astype(np.float32)


def det_images(n: int, seed: int) -> np.ndarray:
    from models.images import NATURAL, TEXT, image_batch

    n_text = n // 2
    text = image_batch(n_text, DET_SIZE, DET_SIZE, seed, names=TEXT)
    natural = image_batch(n - n_text, DET_SIZE, DET_SIZE, seed + 1000, names=NATURAL)
    rgb = np.concatenate([text, natural])
    return normalize(rgb[..., ::-1])


def rec_images(n: int, seed: int) -> np.ndarray:
    """(n, 3, 48, 320) text-line crops, resized and padded the way rapidocr's recogniser does it."""
    from models.images import have_skimage, page_lines, resize, smooth_noise

    out = np.zeros((n, 3, REC_HEIGHT, REC_WIDTH), dtype=np.float32)
    if not have_skimage():
        return normalize(smooth_noise(n, REC_HEIGHT, REC_WIDTH, seed)[..., ::-1])
    for i, crop in enumerate(page_lines(n, seed, max_aspect=REC_WIDTH / REC_HEIGHT)):
        h, w = crop.shape[:2]
        width = min(REC_WIDTH, int(np.ceil(REC_HEIGHT * w / h)))
        line = normalize(resize(crop, REC_HEIGHT, width)[..., ::-1])
        out[i, :, :, :width] = line
    return out


def build_det(out_dir: Path) -> Path:
    return _copy(DET_FILE, out_dir, "ppocr_det")


def build_rec(out_dir: Path) -> Path:
    return _copy(REC_FILE, out_dir, "ppocr_rec")


def det_data(out_dir: Path) -> tuple[Path, Path]:
    calib_path, eval_path = npz_paths(out_dir, "ppocr_det")
    if not calib_path.exists():
        write_npz(calib_path, {"x": det_images(DET_CALIB, seed=SEED + 1)})
    if not eval_path.exists():
        write_npz(eval_path, {"x": det_images(DET_EVAL, seed=SEED + 2)})
    return calib_path, eval_path


def _holds(path: Path, samples: int) -> bool:
    """``path`` exists and its ``x`` has ``samples`` samples (an older build of another size does not count)."""
    if not path.exists():
        return False
    with np.load(path) as data:
        return "x" in data and len(data["x"]) == samples


def _write_lines(path: Path, count: int, seed: int) -> None:
    from models.text_lines import labels_path, text_lines

    inputs, labels = text_lines(count, seed)
    write_bytes_atomic(labels_path(path), "".join(f"{text}\n" for text in labels).encode("utf-8"))
    write_npz(path, {"x": inputs})


def _labelled(path: Path, samples: int) -> bool:
    from models.text_lines import read_labels

    labels = read_labels(path)
    return _holds(path, samples) and labels is not None and len(labels) == samples


def rec_data(out_dir: Path) -> tuple[Path, Path]:
    """Labelled text lines (module docstring); ``<file>.txt`` next to each ``.npz`` holds the texts."""
    calib_path, eval_path = npz_paths(out_dir, "ppocr_rec")
    if not _labelled(calib_path, REC_CALIB):
        _write_lines(calib_path, REC_CALIB, seed=SEED + 1)
    if not _labelled(eval_path, REC_EVAL):
        _write_lines(eval_path, REC_EVAL, seed=SEED + 2)
    return calib_path, eval_path
