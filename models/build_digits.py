"""Build the embedded digits models and their data: ``python -m models.build_digits``.

Data: scikit-learn's bundled ``load_digits`` (1,797 real 8x8 handwritten digits, classes 0-9, no download).
Pixels are divided by 16 to lie in [0, 1] (float32). One fixed permutation (numpy ``default_rng(0)``)
splits the samples into three disjoint sets:

* eval  — 300 samples, held out from training, with ``labels``;
* calib — 200 samples from the training pool, not trained on, with ``labels``;
* train — the other 1,297 samples; shipped for the CNN only (``digits_cnn_train.npz``, what
  ``--distill`` trains a student on).

Models, trained with a fixed torch seed on one CPU thread with deterministic algorithms, exported with
:func:`models.artifacts.export_torch` (opset 17, BatchNormalization kept):

* ``digits_cnn.onnx`` — :class:`models.digits_nets.DigitsCNN`, input ``input`` (N, 1, 8, 8);
* ``digits_mlp.onnx`` — :class:`models.digits_nets.DigitsMLP`, input ``input`` (N, 64).

Both output ``logits`` (N, 10). Rebuilding on the same kind of CPU and library versions reproduces every
file byte for byte; another CPU may change the last bits of the trained weights (different kernels),
never the data files.

This module imports only numpy and scikit-learn at the top; torch is imported when a model is trained.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

from models.artifacts import export_torch, npz_paths, read_npz, write_npz

MODELS_DIR = Path(__file__).resolve().parent

SEED = 0
N_EVAL = 300
N_CALIB = 200

#: kind → (file stem, input shape after the batch dimension, training epochs)
KINDS: dict[str, tuple[str, tuple[int, ...], int]] = {
    "cnn": ("digits_cnn", (1, 8, 8), 30),
    "mlp": ("digits_mlp", (64,), 30),
}


def load_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train" | "calib" | "eval": (pixels (n, 64) float32 in [0, 1], labels (n,) int64)}``."""
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    pixels = (pixels / 16.0).astype(np.float32)
    labels = labels.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(labels))
    parts = {
        "eval": order[:N_EVAL],
        "calib": order[N_EVAL : N_EVAL + N_CALIB],
        "train": order[N_EVAL + N_CALIB :],
    }
    return {name: (pixels[idx], labels[idx]) for name, idx in parts.items()}


def _shaped(kind: str, pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape((len(pixels), *KINDS[kind][1]))


def write_data(kind: str, out_dir: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``<stem>_calib.npz`` and ``<stem>_eval.npz`` (keys ``input`` and ``labels``); keep existing ones."""
    calib_path, eval_path = npz_paths(out_dir, KINDS[kind][0])
    if force or not (calib_path.exists() and eval_path.exists()):
        split = load_split()
        for path, part in ((calib_path, "calib"), (eval_path, "eval")):
            pixels, labels = split[part]
            write_npz(path, {"input": _shaped(kind, pixels), "labels": labels})
    return calib_path, eval_path


def write_train_data(kind: str, out_dir: Path, *, force: bool = False) -> Path:
    """Write ``<stem>_train.npz`` (keys ``input`` and ``labels``: the training split); keep an existing one."""
    path = Path(out_dir) / f"{KINDS[kind][0]}_train.npz"
    if force or not path.exists():
        pixels, labels = load_split()["train"]
        write_npz(path, {"input": _shaped(kind, pixels), "labels": labels})
    return path


def train(kind: str, pixels: np.ndarray, labels: np.ndarray):
    """Train the ``kind`` network from a fixed seed and return it in eval mode.

    Adam (lr 3e-3, weight decay 1e-4), cross-entropy, batches of 64 in a seeded order, cosine LR decay.
    """
    import torch

    from models.digits_nets import DigitsCNN, DigitsMLP

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(SEED)
        net = DigitsCNN() if kind == "cnn" else DigitsMLP()
        x = torch.from_numpy(_shaped(kind, pixels))
        y = torch.from_numpy(labels)
        epochs = KINDS[kind][2]
        steps_per_epoch = (len(y) + 63) // 64
        opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        order_gen = torch.Generator().manual_seed(SEED)
        net.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(y), generator=order_gen).split(64):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
                loss.backward()
                opt.step()
                sched.step()
        return net.eval()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


def build(kind: str, out_dir: Path, *, force: bool = False) -> Path:
    """Train and export ``<stem>.onnx`` into ``out_dir`` unless it exists (or ``force``)."""
    stem, shape, _ = KINDS[kind]
    path = Path(out_dir) / f"{stem}.onnx"
    if path.exists() and not force:
        return path
    import torch
    pixels, labels = load_split()["train"]
    net = train(kind, pixels, labels)
    example = torch.zeros((2, *shape), dtype=torch.float32)
    return export_torch(
        net,
        (example,),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        doc_string=f"graphopt reference model {stem.replace('_', '-')}: sklearn digits classifier, see models/README.md",
    )


def build_cnn(out_dir: Path) -> Path:
    return build("cnn", out_dir)


def build_mlp(out_dir: Path) -> Path:
    return build("mlp", out_dir)


def cnn_data(out_dir: Path) -> tuple[Path, Path]:
    return write_data("cnn", out_dir)


def mlp_data(out_dir: Path) -> tuple[Path, Path]:
    return write_data("mlp", out_dir)


def eval_accuracy(model_path: Path, eval_path: Path) -> float:
    """Top-1 accuracy of an ONNX digits model on an eval ``.npz`` with onnxruntime (CPU, fp32)."""
    import onnxruntime as ort

    data = read_npz(eval_path)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": data["input"]})
    return float((logits.argmax(axis=1) == data["labels"]).mean())


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.build_digits", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out-dir", type=Path, default=MODELS_DIR, help="where to write (default: models/)")
    args = parser.parse_args(argv)
    for kind in KINDS:
        start = time.perf_counter()
        model_path = build(kind, args.out_dir, force=True)
        calib_path, eval_path = write_data(kind, args.out_dir, force=True)
        extra = (write_train_data(kind, args.out_dir, force=True),) if kind == "cnn" else ()
        seconds = time.perf_counter() - start
        acc = eval_accuracy(model_path, eval_path)
        print(f"{model_path.name}: eval top-1 {acc:.4f} ({seconds:.1f} s)")
        for path in (model_path, calib_path, eval_path, *extra):
            print(f"  {path.name:24s} {path.stat().st_size:>8d} B  sha256 {sha256(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
