"""``transformer-encoder``: a small BERT-style encoder with seeded random weights.

Token + learned position embeddings → LayerNorm → 4 post-LN layers of
``x = LN(x + MHA(x)); x = LN(x + FFN(x))`` (d_model 256, 4 heads of 64, FFN 1024 with GELU), vocabulary
8,000, sequence length dynamic up to 512. Attention is written out as MatMul / Softmax (no fused op), so
every pass sees the plain ONNX pattern a BERT export gives.

Padding mask: ``scores + (1 - attention_mask) * -10000`` before the softmax — -1e4 rather than -inf or the
float32 minimum so that an fp16 model keeps finite scores.

Inputs ``input_ids`` and ``attention_mask`` (N, S) int64; output ``last_hidden_state`` (N, S, 256).
Weights from ``torch.manual_seed(0)``; LayerNorm γ ~ U(0.5, 1.5), β ~ N(0, 0.1) so that they matter.

Data: 128 calib / 32 eval sequences of 64 tokens, ids uniform in [2, 8000), real length uniform in
[8, 64] with the rest padded (id 0, mask 0); position 0 holds id 1 as a [CLS]-like token.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.artifacts import export_torch, npz_paths, write_npz

STEM = "transformer_encoder"
SEED = 0
VOCAB = 8000
D_MODEL = 256
HEADS = 4
FFN = 1024
LAYERS = 4
MAX_LEN = 512
SEQ = 64
N_CALIB = 128
N_EVAL = 32
MASK_VALUE = -10000.0


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(D_MODEL, D_MODEL)
        self.k = nn.Linear(D_MODEL, D_MODEL)
        self.v = nn.Linear(D_MODEL, D_MODEL)
        self.out = nn.Linear(D_MODEL, D_MODEL)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, s, _ = x.shape
        return x.reshape(n, s, HEADS, D_MODEL // HEADS).transpose(1, 2)  # (N, H, S, Dh)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D_MODEL // HEADS) + mask_bias
        ctx = torch.softmax(scores, dim=-1) @ v
        n, _, s, _ = ctx.shape
        return self.out(ctx.transpose(1, 2).reshape(n, s, D_MODEL))


class EncoderLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = SelfAttention()
        self.ln1 = nn.LayerNorm(D_MODEL)
        self.ffn = nn.Sequential(nn.Linear(D_MODEL, FFN), nn.GELU(), nn.Linear(FFN, D_MODEL))
        self.ln2 = nn.LayerNorm(D_MODEL)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.attn(x, mask_bias))
        return self.ln2(x + self.ffn(x))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, D_MODEL)
        self.positions = nn.Embedding(MAX_LEN, D_MODEL)
        self.ln = nn.LayerNorm(D_MODEL)
        self.layers = nn.ModuleList(EncoderLayer() for _ in range(LAYERS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.ln(self.tokens(input_ids) + self.positions(positions)[None])
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * MASK_VALUE
        for layer in self.layers:
            x = layer(x, mask_bias)
        return x


def make_network() -> Encoder:
    torch.manual_seed(SEED)
    net = Encoder()
    for m in net.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.1)
    return net.eval()


def tokens(n: int, seed: int) -> dict[str, np.ndarray]:
    """``{"input_ids", "attention_mask"}`` (n, 64) int64 random padded sequences."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, VOCAB, size=(n, SEQ), dtype=np.int64)
    lengths = rng.integers(8, SEQ + 1, size=n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    ids[:, 0] = 1
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def build(out_dir: Path) -> Path:
    path = Path(out_dir) / f"{STEM}.onnx"
    if path.exists():
        return path
    example = tokens(2, seed=SEED + 99)
    args = (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"]))
    axes = {0: "N", 1: "S"}
    return export_torch(
        make_network(),
        args,
        path,
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
        doc_string="graphopt reference model transformer-encoder: seeded random weights, see models/README.md",
    )


def data(out_dir: Path) -> tuple[Path, Path]:
    calib_path, eval_path = npz_paths(out_dir, STEM)
    if not calib_path.exists():
        write_npz(calib_path, tokens(N_CALIB, seed=SEED + 1))
    if not eval_path.exists():
        write_npz(eval_path, tokens(N_EVAL, seed=SEED + 2))
    return calib_path, eval_path
