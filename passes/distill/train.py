"""The training loop: the student learns the teacher's outputs on the training data.

* **Optimizer**: AdamW (weight decay ``1e-4``), gradients clipped to norm 5; learning rate decayed
  along a cosine from ``lr`` to 0 over all steps. Default ``lr``: ``1e-3`` for convolutional and MLP
  students, ``1e-4`` for students with ``LayerNormalization`` (transformers, which start from pretrained
  weights and lose them at larger rates) — :func:`default_lr`.
* **Order**: a seeded shuffle per epoch (``seed``), so a run is reproducible on the same machine.
  Batches of fewer than 2 samples are skipped (batch statistics of one sample are meaningless).
* **Selection**: after every epoch the student is scored on the evaluation data against the teacher
  with the manager's metric (:func:`graphopt.verify.compare_outputs`, quality drop in points; ties
  broken by the distillation loss on the same data). The best state — the untrained student included
  — is kept; training stops after ``patience`` epochs without improvement. Selecting on the data that
  later justifies the substitution makes that measurement slightly optimistic; a user who needs an
  unbiased number keeps a third split for the final check.
* **Threads**: torch's intra-op threads are set to ``threads`` for the loop (``None`` in the options:
  1 for students under :data:`SMALL_STUDENT` weights, else torch's default). The pass sets
  ``OMP_WAIT_POLICY=PASSIVE`` before it first imports torch (unless set): with OpenMP's default
  spin-waiting, 2 threads on the shared 2-core VM took 4–9 s per step of the transformer encoder where
  1 thread took 0.7–0.9 s; passive waiting brought 2 threads back to 0.7–0.8 s.
* **Sparsity**: with ``keep_sparsity``, weights that are exactly zero when training starts (left by a
  pruning pass) are put back to zero after every step, so prune-then-distill keeps its sparsity.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import numpy as np
import torch

from graphopt.console import progress_bar
from graphopt.data import DataSet
from graphopt.errors import InputError
from graphopt.passes.distill.loss import distillation_loss
from graphopt.passes.distill.torch_graph import TorchGraph
from graphopt.verify import MetricChoice, compare_outputs

MIN_BATCH = 2
GRAD_CLIP = 5.0
SMALL_STUDENT = 1_000_000
"""Students with fewer weights train on one thread: their ops are too small to split (the digits CNN
took 30 ms per step on 1 thread, 69 ms on 2, on the 2-core VM)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    patience: int
    seed: int
    device: str
    threads: int
    temperature: float
    alpha: float
    keep_sparsity: bool


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    eval_loss: float
    drop: float
    """Quality drop vs the teacher on the evaluation data, percentage points."""


@dataclasses.dataclass
class TrainOutcome:
    history: list[EpochRecord]
    best: EpochRecord
    seconds: float
    stopped_early: bool

    @property
    def initial(self) -> EpochRecord:
        return self.history[0]


def default_lr(model_ops: set[str]) -> float:
    """``1e-4`` for students with LayerNormalization (transformers), else ``1e-3``."""
    return 1e-4 if "LayerNormalization" in model_ops else 1e-3


def default_threads(weights: int) -> int:
    """1 for students under :data:`SMALL_STUDENT` weights, else torch's default."""
    return 1 if weights < SMALL_STUDENT else torch.get_num_threads()


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("distill --device cuda: torch sees no CUDA GPU here (or this torch is a CPU build); "
                         "use --device cpu")
    return torch.device(device)


def _tensors(arrays: dict[str, np.ndarray], index: np.ndarray | slice, device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(array[index])).to(device) for name, array in arrays.items()}


def evaluate(module: TorchGraph, data: DataSet, batch_size: int, device: torch.device) -> dict[str, np.ndarray]:
    """The module's outputs on ``data`` (eval mode, no gradients), concatenated along axis 0."""
    module.eval()
    collected: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            feeds = _tensors(data.inputs, slice(start, start + batch_size), device)
            for name, value in module(feeds).items():
                collected.setdefault(name, []).append(value.to("cpu").numpy())
    return {name: np.concatenate(parts) for name, parts in collected.items()}


def train_student(module: TorchGraph, train: DataSet, teacher_train: dict[str, np.ndarray], evaluation: DataSet,
                  teacher_eval: dict[str, np.ndarray], losses: dict[str, str], label_output: str | None,
                  config: TrainConfig, metric: MetricChoice = "auto", batch_size: int | None = None) -> TrainOutcome:
    """Train ``module`` in place; on return it holds the best state found (see the module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(module, train, teacher_train, evaluation, teacher_eval, losses, label_output, config, metric,
                      batch_size)
    finally:
        torch.set_num_threads(threads)


def _train(module: TorchGraph, train: DataSet, teacher_train: dict[str, np.ndarray], evaluation: DataSet,
           teacher_eval: dict[str, np.ndarray], losses: dict[str, str], label_output: str | None,
           config: TrainConfig, metric: MetricChoice, batch_size: int | None) -> TrainOutcome:
    started = time.perf_counter()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    module.to(device)
    batch = batch_size or config.batch_size
    if batch < MIN_BATCH:
        raise InputError(f"distill trains on batches of at least {MIN_BATCH} samples but the student's batch "
                         f"dimension is fixed at {batch}; export it with a dynamic (or larger) batch dimension")
    train_labels = train.labels if label_output is not None else None
    eval_labels = evaluation.labels if label_output is not None else None
    masks = _sparsity_masks(module) if config.keep_sparsity else {}
    steps_per_epoch = sum(1 for s in range(0, len(train), batch) if min(batch, len(train) - s) >= MIN_BATCH)
    if steps_per_epoch == 0:
        raise InputError(f"distill needs at least {MIN_BATCH} training samples, got {len(train)}")
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, config.epochs * steps_per_epoch)
                                                    / (config.epochs * steps_per_epoch))))
    order = np.random.default_rng(config.seed)

    def score(epoch: int, train_loss: float) -> EpochRecord:
        outputs = evaluate(module, evaluation, batch, device)
        drop = compare_outputs(teacher_eval, outputs, evaluation.labels, metric).worst_drop
        with torch.no_grad():
            eval_loss = distillation_loss(
                _tensors(outputs, slice(None), device), _tensors(teacher_eval, slice(None), device), losses,
                None if eval_labels is None else torch.from_numpy(eval_labels).to(device), label_output,
                config.temperature, config.alpha)
        return EpochRecord(epoch, train_loss, eval_loss.item(), float(drop))

    history = [score(0, float("nan"))]
    best, best_state, since_best = history[0], copy.deepcopy(module.state_dict()), 0
    stopped_early = False
    with progress_bar("distill", config.epochs * steps_per_epoch) as bar:
        for epoch in range(1, config.epochs + 1):
            module.train()
            permutation = order.permutation(len(train))
            total, seen = 0.0, 0
            for start in range(0, len(train), batch):
                index = np.sort(permutation[start:start + batch])
                if len(index) < MIN_BATCH:
                    continue
                feeds = _tensors(train.inputs, index, device)
                targets = _tensors(teacher_train, index, device)
                labels = None if train_labels is None else torch.from_numpy(train_labels[index]).to(device)
                loss = distillation_loss(module(feeds), targets, losses, labels, label_output,
                                         config.temperature, config.alpha)
                value = loss.detach().item()
                if not math.isfinite(value):
                    raise InputError(f"distill: the training loss became {value} at epoch {epoch}; lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), GRAD_CLIP)
                optimizer.step()
                scheduler.step()
                _apply_masks(masks)
                total, seen = total + value * len(index), seen + len(index)
                bar.advance(description=f"distill epoch {epoch}/{config.epochs} loss {value:.4f} "
                                        f"best drop {best.drop:.2f}")
            record = score(epoch, total / max(seen, 1))
            history.append(record)
            if (record.drop, record.eval_loss) < (best.drop, best.eval_loss):
                best, best_state, since_best = record, copy.deepcopy(module.state_dict()), 0
            else:
                since_best += 1
                if since_best >= config.patience:
                    stopped_early = epoch < config.epochs
                    break
    module.load_state_dict(best_state)
    module.eval()
    return TrainOutcome(history, best, time.perf_counter() - started, stopped_early)


def _sparsity_masks(module: TorchGraph) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Masks of the weights (rank ≥ 2) that hold exact zeros."""
    masks = {}
    for parameter in module.parameters():
        if parameter.dim() >= 2 and bool((parameter == 0).any()):
            masks[parameter] = (parameter != 0).to(parameter.dtype)
    return masks


def _apply_masks(masks: dict[torch.nn.Parameter, torch.Tensor]) -> None:
    with torch.no_grad():
        for parameter, mask in masks.items():
            parameter.mul_(mask)
