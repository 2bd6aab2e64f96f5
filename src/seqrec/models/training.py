"""Training machinery shared by the neural models (GRU4Rec, SASRec): device, seeds, an
Adagrad-with-momentum optimiser, embedding warm starts, and one resumable fit loop.

Contract of ``fit_epochs`` (what a model passes in):

* ``module``: the ``torch.nn.Module`` that ``optimizer`` updates. Its ``state_dict()`` is
  checkpointed, and at the end the weights of the best validation epoch are loaded back.
* ``make_batches(epoch) -> Iterable[batch]``: must be **deterministic given the epoch** (seed
  any randomness from ``(cfg.seed, epoch)``, never from a global RNG), because a resumed run
  skips the stored number of batches of its epoch by iterating them without training. A sized
  iterable (``len()``) gives the progress bar its total.
* ``step(batch) -> (loss, n_events)``: the forward pass; ``loss`` is the scalar tensor to
  backpropagate, ``n_events`` the number of training targets it covers (events/s). With
  ``loss_reduction="sum"`` the loss is a sum over those events and the history reports
  ``loss / n_events``; with ``"mean"`` it is already a mean. The loop does zero_grad,
  backward (through a ``GradScaler`` under CUDA AMP), the optimiser step and autocast.
* ``validate() -> float``: higher is better (``cfg.valid_metric`` on the *validation* split,
  never test); called after every epoch; drives early stopping (``cfg.patience``).
* ``get_loop_state() -> dict[str, Tensor]`` / ``set_loop_state(dict)``: state carried from
  step to step that is neither a parameter nor optimiser state (GRU4Rec's slot hidden
  states); stored in mid-epoch checkpoints. On resume, ``set_loop_state`` is called after
  the done batches of the epoch were skipped, just before training continues.
* ``extra_state``: tensors/lists/primitives stored in every checkpoint (model config dict under
  ``"config"``, item vocabulary as ``list[str]`` under ``"vocab"``). A checkpoint whose
  ``"config"`` differs from ``extra_state["config"]`` is an error naming the file and keys.

Checkpoints (``seqrec.io.save_checkpoint``, atomic, loadable with ``weights_only=True``) are
written every ``cfg.checkpoint_every_steps`` steps and after every epoch. They hold model and
optimiser state, epoch, step-in-epoch, torch RNG states, the partial epoch's sums, the
history so far, the best metric and best weights. Resuming restores all of these, so a
resumed run repeats an uninterrupted run's arithmetic exactly (same ops in the same order;
the tests allow 1e-6).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import numpy as np
import torch
from tqdm import tqdm

from seqrec.config import TrainingConfig, config_to_dict
from seqrec.io import load_checkpoint, save_checkpoint, write_figure, write_json

CHECKPOINT_FORMAT = 1
Batch = Any
StepFn = Callable[[Batch], tuple[torch.Tensor, int]]


class CheckpointMismatch(ValueError):
    """A checkpoint was written for another config; the message names the file and keys."""


def resolve_device(cfg: TrainingConfig) -> torch.device:
    """Return the torch device for ``cfg.device`` ("auto" = cuda when available)."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device='cuda' but torch.cuda.is_available() is False")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def use_amp(cfg: TrainingConfig, device: torch.device) -> bool:
    """Return whether mixed precision applies (CUDA and ``cfg.amp``)."""
    return bool(cfg.amp and device.type == "cuda")


def autocast_for(cfg: TrainingConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """Return an fp16 autocast context on CUDA with AMP, else a no-op context."""
    if use_amp(cfg, device):
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def set_seed(seed: int) -> None:
    """Seed Python, NumPy's global RNG and torch (CPU and CUDA); returns nothing."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_threads(cfg: TrainingConfig) -> int:
    """Set torch's CPU threads from ``cfg.threads`` (0 = leave torch's default); return the count."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    return torch.get_num_threads()


# --------------------------------------------------------------------------- optimiser
class AdagradMomentum(torch.optim.Optimizer):
    """Adagrad whose scaled step feeds a momentum buffer (GRU4Rec's optimiser).

    acc += g²;  v = momentum·v + lr·g / sqrt(acc + eps);  p -= v.
    Sparse gradients (``F.embedding(..., sparse=True)``) update only the rows they touch:
    untouched rows keep their accumulator and velocity and do not move.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, eps: float = 1e-6, weight_decay: float = 0.0):
        if lr <= 0 or momentum < 0 or eps <= 0 or weight_decay < 0:
            raise ValueError(f"AdagradMomentum: bad lr={lr}, momentum={momentum}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        """Apply one update to every parameter with a gradient; return the closure's loss."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            dense = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if p.grad.is_sparse:  # accumulator and velocity side by side: one gather and one scatter per step
                    if "acc_vel" not in state:
                        state["acc_vel"] = torch.zeros((p.shape[0], 2, *p.shape[1:]), dtype=p.dtype, device=p.device)
                    sparse_update(p, p.grad, state["acc_vel"], group)
                else:
                    if "acc" not in state:
                        state["acc"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["vel"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    dense.append(p)
            if dense:
                dense_update(dense, [p.grad for p in dense], [self.state[p]["acc"] for p in dense],
                             [self.state[p]["vel"] for p in dense], group)
        return loss


def dense_update(ps: list, grads: list, accs: list, vels: list, group: dict) -> None:
    """Update whole parameters in place, all at once (Adagrad step into momentum); returns nothing."""
    if group["weight_decay"]:
        grads = torch._foreach_add(grads, ps, alpha=group["weight_decay"])
    torch._foreach_addcmul_(accs, grads, grads)
    denoms = torch._foreach_add(accs, group["eps"])
    torch._foreach_sqrt_(denoms)
    if group["momentum"]:
        torch._foreach_mul_(vels, group["momentum"])
        torch._foreach_addcdiv_(vels, grads, denoms, value=group["lr"])
        torch._foreach_sub_(ps, vels)
    else:
        torch._foreach_addcdiv_(ps, grads, denoms, value=-group["lr"])


def sparse_update(p: torch.Tensor, g: torch.Tensor, acc_vel: torch.Tensor, group: dict) -> None:
    """Update only the rows of ``p`` named by a sparse gradient (duplicates summed); ``acc_vel`` is (V, 2, ...)."""
    g = g.coalesce()
    rows, values = g.indices()[0], g.values()  # (R,), (R, ...)
    if group["weight_decay"]:
        values = values.add(p.index_select(0, rows), alpha=group["weight_decay"])
    state = acc_vel.index_select(0, rows)  # (R, 2, ...) accumulator and velocity of the touched rows
    acc, vel = state[:, 0], state[:, 1]
    acc.addcmul_(values, values)
    step = (acc + group["eps"]).rsqrt_().mul_(values).mul_(group["lr"])  # (R, ...)
    if group["momentum"]:
        step = vel.mul_(group["momentum"]).add_(step)
    acc_vel.index_copy_(0, rows, state)
    p.index_add_(0, rows, step, alpha=-1.0)


# --------------------------------------------------------------------------- warm start
def project_rows(matrix: np.ndarray, dim: int) -> np.ndarray:
    """Return ``matrix`` (N, d) mapped to (N, dim) by its top principal directions (zeros beyond d)."""
    x = torch.as_tensor(matrix, dtype=torch.float64)
    centred = x - x.mean(0, keepdim=True)  # (N, d)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # vh (min(N, d), d)
    k = min(dim, vh.shape[0])
    out = torch.zeros(x.shape[0], dim, dtype=torch.float64)
    out[:, :k] = centred @ vh[:k].T  # (N, k)
    return out.numpy()


def warm_start_embedding(
    weight: torch.nn.Parameter, matrix: np.ndarray, mode: Literal["project", "error"] = "project", rescale: bool = True
) -> int:
    """Copy pretrained rows (aligned to the vocab, row 0 = padding) into ``weight``; return rows set.

    Rows of ``matrix`` that are all zero (no pretrained vector) keep their initial values.
    Other dims: ``mode="project"`` maps the vectors on their top principal directions,
    ``"error"`` raises naming both sizes. ``rescale`` matches the std of the existing init so
    the model's training dynamics (learning rate, activations) stay as configured.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != weight.shape[0]:
        raise ValueError(f"warm start: matrix shape {matrix.shape} needs {weight.shape[0]} rows (vocab + padding)")
    if matrix.shape[1] != weight.shape[1]:
        if mode == "error":
            raise ValueError(f"warm start: pretrained dim {matrix.shape[1]} != model embedding dim {weight.shape[1]}")
        matrix = project_rows(matrix, weight.shape[1])
    present = np.flatnonzero(np.abs(matrix).sum(1) > 0)
    present = present[present > 0]  # (P,) never the padding row
    values = torch.as_tensor(matrix[present], dtype=weight.dtype)  # (P, D)
    with torch.no_grad():
        if rescale and len(present) > 1:
            values = values * (weight.std() / values.std().clamp_min(1e-12))
        weight[torch.as_tensor(present)] = values.to(weight.device)
    return int(len(present))


# --------------------------------------------------------------------------- history
@dataclass
class TrainingHistory:
    """Per-epoch loss, validation metric, seconds and events/s of one training run."""

    metric_name: str = "recall@20"
    loss: list[float] = field(default_factory=list)
    valid_metric: list[float] = field(default_factory=list)  # NaN where there was no validation
    seconds: list[float] = field(default_factory=list)
    events_per_second: list[float] = field(default_factory=list)
    best_epoch: int = -1  # 0-based; -1 = no validation
    stopped_early: bool = False

    def to_dict(self) -> dict:
        """Return the history as a dict of primitives and lists."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingHistory":
        """Return a history from ``to_dict()`` output."""
        return cls(**{k: (list(v) if isinstance(v, list) else v) for k, v in d.items()})

    def save_curves(self, path: Path | str) -> tuple[Path, Path]:
        """Write the history as JSON and a loss/metric curve PNG beside it; return both paths."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        json_path, png_path = path.with_suffix(".json"), path.with_suffix(".png")
        write_json(self.to_dict(), json_path)
        fig, ax = plt.subplots(figsize=(6, 4))
        epochs = np.arange(1, len(self.loss) + 1)
        ax.plot(epochs, self.loss, marker="o", label="training loss")
        ax.set_xlabel("epoch"), ax.set_ylabel("loss per event")
        if any(not math.isnan(v) for v in self.valid_metric):
            twin = ax.twinx()
            twin.plot(epochs, self.valid_metric, marker="s", color="tab:orange", label=f"valid {self.metric_name}")
            twin.set_ylabel(f"valid {self.metric_name}")
        fig.legend(loc="upper center", ncols=2)
        return json_path, write_figure(fig, png_path)


# --------------------------------------------------------------------------- the loop
@dataclass
class LoopState:
    """Where a run is: what a checkpoint stores besides model and optimiser state."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps done in the current epoch
    loss_sum: float = 0.0  # partial epoch sums
    events: int = 0
    seconds: float = 0.0
    bad_epochs: int = 0
    best_metric: float = -math.inf
    best_model: dict | None = None
    finished: bool = False
    history: TrainingHistory = field(default_factory=TrainingHistory)


def rng_states() -> dict:
    """Return torch's CPU (and CUDA) RNG states as tensors."""
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng_states(states: dict) -> None:
    """Restore RNG states from ``rng_states()``; returns nothing."""
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Return a detached CPU copy of a module's state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


@dataclass
class FitLoop:
    """The pieces of one ``fit_epochs`` call; methods are the loop's steps."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    make_batches: Callable[[int], Iterable[Batch]]
    step: StepFn
    validate: Callable[[], float] | None
    cfg: TrainingConfig
    epochs: int
    checkpoint_path: Path | None
    extra_state: dict
    loss_reduction: Literal["mean", "sum"]
    get_loop_state: Callable[[], dict] | None
    set_loop_state: Callable[[dict], None] | None
    device: torch.device = torch.device("cpu")
    scaler: Any = None
    state: LoopState = field(default_factory=LoopState)

    def save(self) -> None:
        """Write a checkpoint of the current position (if a path was given)."""
        if self.checkpoint_path is None:
            return
        s = self.state
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states(),
            "loop": {k: v for k, v in asdict(s).items() if k not in ("best_model", "history")},
            "history": s.history.to_dict(),
            "best_model": s.best_model,
            "carry": self.get_loop_state() if (self.get_loop_state and s.step) else None,
            **self.extra_state,
        }
        save_checkpoint(ckpt, self.checkpoint_path)

    def resume(self) -> dict | None:
        """Load the checkpoint if there is one; return its RNG/carry part for the continued epoch."""
        if self.checkpoint_path is None or not Path(self.checkpoint_path).exists():
            return None
        ckpt = load_checkpoint(self.checkpoint_path, map_location=str(self.device))
        check_checkpoint_config(ckpt, self.extra_state, self.checkpoint_path)
        self.module.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = LoopState(**ckpt["loop"], best_model=ckpt["best_model"])
        self.state.history = TrainingHistory.from_dict(ckpt["history"])
        return {"rng": ckpt["rng"], "carry": ckpt["carry"]}

    def train_step(self, batch: Batch) -> tuple[float, int]:
        """Run forward, backward and the optimiser on one batch; return (loss value, events)."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_for(self.cfg, self.device):
            loss, n = self.step(batch)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        value = float(loss.detach())
        return (value if self.loss_reduction == "sum" else value * n), int(n)

    def run_epoch(self, epoch: int, resumed: dict | None) -> None:
        """Train one epoch (a resumed one continues after its done steps); update the sums."""
        s = self.state
        self.module.train()
        batches = self.make_batches(epoch)
        total = len(batches) if hasattr(batches, "__len__") else None
        it = iter(batches)
        for _ in range(s.step):  # deterministic batches: skip what the checkpoint already did
            next(it)
        if resumed is not None:
            restore_rng_states(resumed["rng"])
            if resumed["carry"] is not None and self.set_loop_state is not None:
                self.set_loop_state(resumed["carry"])
        bar = tqdm(it, total=total, initial=s.step, desc=f"epoch {epoch + 1}/{self.epochs}", disable=not self.cfg.progress)
        start = time.perf_counter() - s.seconds
        for batch in bar:
            loss, n = self.train_step(batch)
            s.loss_sum, s.events, s.step = s.loss_sum + loss, s.events + n, s.step + 1
            s.seconds = time.perf_counter() - start
            if s.step % 50 == 0:
                bar.set_postfix(loss=f"{s.loss_sum / max(s.events, 1):.4f}", ev_s=f"{s.events / s.seconds:.0f}")
            if s.step % self.cfg.checkpoint_every_steps == 0:
                self.save()
        bar.close()

    def end_epoch(self) -> None:
        """Record the epoch, validate, track the best weights and early stopping; checkpoint."""
        s, h = self.state, self.state.history
        if s.events == 0:
            raise ValueError(f"epoch {s.epoch + 1}: make_batches produced no batch to train on")
        h.loss.append(s.loss_sum / s.events)
        h.seconds.append(s.seconds)
        h.events_per_second.append(s.events / max(s.seconds, 1e-9))
        metric = float(self.validate()) if self.validate is not None else math.nan
        h.valid_metric.append(metric)
        if self.validate is not None:
            if math.isnan(metric):
                raise ValueError(f"epoch {s.epoch + 1}: validation {h.metric_name} is NaN")
            if metric > s.best_metric:
                s.best_metric, s.best_model, h.best_epoch, s.bad_epochs = metric, cpu_state(self.module), s.epoch, 0
            else:
                s.bad_epochs += 1
            h.stopped_early = 0 < self.cfg.patience <= s.bad_epochs
        s.epoch, s.step, s.loss_sum, s.events, s.seconds = s.epoch + 1, 0, 0.0, 0, 0.0
        s.finished = h.stopped_early
        self.save()


def check_checkpoint_config(ckpt: dict, extra_state: dict, path: Path | str) -> None:
    """Raise CheckpointMismatch when the checkpoint's config or format differ from this run's."""
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatch(f"checkpoint {path}: format {ckpt.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    mine, theirs = extra_state.get("config"), ckpt.get("config")
    if mine != theirs:
        keys = sorted(k for k in set(mine or {}) | set(theirs or {}) if (mine or {}).get(k) != (theirs or {}).get(k))
        raise CheckpointMismatch(f"checkpoint {path} was written with another config (differs in: {keys}); remove it or use it")


def fit_epochs(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    make_batches: Callable[[int], Iterable[Batch]],
    step: StepFn,
    cfg: TrainingConfig,
    epochs: int,
    *,
    validate: Callable[[], float] | None = None,
    checkpoint_path: Path | str | None = None,
    extra_state: dict | None = None,
    loss_reduction: Literal["mean", "sum"] = "mean",
    get_loop_state: Callable[[], dict] | None = None,
    set_loop_state: Callable[[dict], None] | None = None,
) -> TrainingHistory:
    """Train for ``epochs`` (resuming from ``checkpoint_path`` if it exists); return the history.

    The module ends with the best validation epoch's weights (the last epoch's without
    ``validate``). See the module docstring for the contract of each argument.
    """
    device = next(module.parameters()).device
    loop = FitLoop(module, optimizer, make_batches, step, validate, cfg, epochs,
                   Path(checkpoint_path) if checkpoint_path else None, dict(extra_state or {}),
                   loss_reduction, get_loop_state, set_loop_state, device)
    loop.state.history.metric_name = cfg.valid_metric
    loop.scaler = torch.amp.GradScaler("cuda", enabled=use_amp(cfg, device))
    resumed = loop.resume()
    while not loop.state.finished and loop.state.epoch < epochs:
        loop.run_epoch(loop.state.epoch, resumed)
        resumed = None
        loop.end_epoch()
    if loop.state.best_model is not None:
        module.load_state_dict(loop.state.best_model)
    return loop.state.history


def neural_state(model) -> dict:
    """Return a neural model's configs, vocabulary (list[str]) and CPU weights: loadable with ``weights_only=True``."""
    if model.net is None:
        raise RuntimeError(f"{type(model).__name__}.state_dict called before fit")
    return {
        "name": model.name,
        "config": config_to_dict(model.cfg),
        "training": config_to_dict(model.training),
        "evaluation": config_to_dict(model.eval_cfg) if model.eval_cfg else None,
        "vocab": [str(i) for i in model.vocab.ids],
        "net": {k: v.detach().cpu() for k, v in model.net.state_dict().items()},
    }


def make_validator(model, valid, eval_cfg, metric: str):
    """Return a callable giving ``metric`` of ``model`` on ``valid``, or None without validation data."""
    if valid is None:
        return None
    from seqrec.config import EvaluationConfig
    from seqrec.evaluation.metrics import evaluate_model  # lazy: evaluation is not needed to train or score

    if not np.array_equal(valid.vocab.ids, model.vocab.ids):
        raise ValueError(f"{type(model).__name__}.fit: valid is encoded with another item vocabulary than train")
    cfg = eval_cfg or EvaluationConfig()
    return lambda: evaluate_model(model, valid, cfg).metrics[metric]
