"""Real-looking image batches for the on-demand image models (ResNet, PP-OCR), made without any download.

Source pictures are the sample images bundled inside the scikit-image wheel (``skimage.data``: astronaut,
coffee, chelsea, rocket, camera, ...; ``page`` and ``text`` are photographs of printed / handwritten text).
Crops are cut at seeded random positions, scales and aspect ratios and resized bilinearly, so a given seed
gives the same batch on every machine with the same scikit-image.

Where scikit-image is not installed, :func:`smooth_noise` stands in: low-frequency random colour fields
(random 7x7 grids upsampled to the target size) plus mild pixel noise — smoother, more image-like
statistics than white noise, though with no objects or text in them.
"""

from __future__ import annotations

import numpy as np

#: Natural scenes bundled in the scikit-image wheel (no network fetch).
NATURAL = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "immunohistochemistry",
    "hubble_deep_field",
    "colorwheel",
    "moon",
    "brick",
    "grass",
    "gravel",
    "retina",
    "coins",
    "logo",
)
#: Pictures of text bundled in the scikit-image wheel.
TEXT = ("page", "text")

#: Row bands (y0, y1) that each hold one printed line in ``skimage.data.page()`` (191 x 384), found once
#: with a horizontal ink profile (rows where >2 % of pixels are 25 levels darker than their 31 px mean).
PAGE_LINES = ((10, 36), (48, 66), (65, 84), (83, 102), (100, 121), (117, 138))


def have_skimage() -> bool:
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        return False
    return True


def load(name: str) -> np.ndarray:
    """A bundled scikit-image sample as an (H, W, 3) uint8 RGB array (grey and RGBA converted)."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3]).astype(np.uint8)


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, anti-aliased resize of an (H, W, 3) uint8 image; returns float32 in [0, 255]."""
    from skimage.transform import resize as sk_resize

    out = sk_resize(img, (height, width), order=1, anti_aliasing=True, preserve_range=True)
    return out.astype(np.float32)


def random_crops(
    names: tuple[str, ...], n: int, height: int, width: int, seed: int, min_area: float = 0.15
) -> np.ndarray:
    """``n`` crops (n, height, width, 3) float32 in [0, 255], RGB.

    Each crop takes a seeded random image from ``names``, a box covering ``min_area``..100 % of it with
    aspect ratio within 3/4..4/3 of the target's, and resizes the box to (height, width).
    """
    rng = np.random.default_rng(seed)
    images = [load(name) for name in names]
    out = np.empty((n, height, width, 3), dtype=np.float32)
    for i in range(n):
        img = images[rng.integers(len(images))]
        h, w = img.shape[:2]
        area = rng.uniform(min_area, 1.0) * h * w
        aspect = (width / height) * np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(h, max(8, round(np.sqrt(area / aspect)))))
        cw = int(min(w, max(8, round(ch * aspect))))
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        out[i] = resize(img[y : y + ch, x : x + cw], height, width)
    return out


def page_lines(n: int, seed: int, max_aspect: float = 6.0) -> list[np.ndarray]:
    """``n`` single-line text crops (h, w, 3) uint8 of ``skimage.data.page()``, of varied width and jitter.

    Widths run from 3x to ``max_aspect`` x the crop height, so that a recogniser input of fixed width
    never has to squeeze a line.
    """
    rng = np.random.default_rng(seed)
    page = load("page")
    width = page.shape[1]
    crops = []
    for _ in range(n):
        y0, y1 = PAGE_LINES[rng.integers(len(PAGE_LINES))]
        y0 = max(0, y0 + int(rng.integers(-3, 4)))
        y1 = min(page.shape[0], y1 + int(rng.integers(-3, 4)))
        h = y1 - y0
        w = int(rng.integers(min(width, 3 * h), min(width, int(max_aspect * h)) + 1))
        x = int(rng.integers(0, width - w + 1))
        crops.append(page[y0:y1, x : x + w])
    return crops


def smooth_noise(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """Fallback without scikit-image: (n, height, width, 3) float32 in [0, 255] of smooth random colour."""
    rng = np.random.default_rng(seed)
    grid = rng.uniform(0, 255, size=(n, 7, 7, 3)).astype(np.float32)
    ys = np.linspace(0, 6, height)
    xs = np.linspace(0, 6, width)
    y0 = np.floor(ys).astype(int).clip(0, 5)
    x0 = np.floor(xs).astype(int).clip(0, 5)
    fy = (ys - y0)[None, :, None, None]
    fx = (xs - x0)[None, None, :, None]
    top = grid[:, y0][:, :, x0] * (1 - fx) + grid[:, y0][:, :, x0 + 1] * fx
    bottom = grid[:, y0 + 1][:, :, x0] * (1 - fx) + grid[:, y0 + 1][:, :, x0 + 1] * fx
    img = top * (1 - fy) + bottom * fy + rng.normal(0, 8, size=(n, height, width, 3))
    return img.clip(0, 255).astype(np.float32)


#: ImageNet channel statistics (RGB, pixels scaled to [0, 1]) that torchvision-style classifiers expect.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def image_batch(n: int, height: int, width: int, seed: int, names: tuple[str, ...] = NATURAL) -> np.ndarray:
    """Crops of the bundled samples when scikit-image is installed, else :func:`smooth_noise`."""
    if have_skimage():
        return random_crops(names, n, height, width, seed)
    return smooth_noise(n, height, width, seed)


def imagenet_batch(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """(n, 3, height, width) float32 crops of :func:`image_batch`, ImageNet-normalised: (x / 255 - mean) / std."""
    rgb = image_batch(n, height, width, seed) / 255.0
    normalized = ((rgb - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)
    return np.ascontiguousarray(normalized.transpose(0, 3, 1, 2))
