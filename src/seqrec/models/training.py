"""Training machinery shared by the neural models (GRU4Rec, SASRec): device, seeds, the training
history, and one resumable fit loop.

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
  never test; ``seqrec.evaluation.metrics.make_validator`` builds one); called after every
  epoch; drives early stopping (``cfg.patience``).
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
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import numpy as np
import torch
from tqdm import tqdm

from seqrec.config import TrainingConfig
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
    name: str = "model"  # names the progress bar and the per-epoch lines
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
        bar = tqdm(it, total=total, initial=s.step, desc=f"{self.name} epoch {epoch + 1}/{self.epochs}",
                   disable=None if self.cfg.progress else True)  # None: a bar on a terminal only
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
        self.report_epoch()
        s.epoch, s.step, s.loss_sum, s.events, s.seconds = s.epoch + 1, 0, 0.0, 0, 0.0
        s.finished = h.stopped_early
        self.save()

    def report_epoch(self) -> None:
        """Print one line for the epoch just recorded where no progress bar shows (logs, not a terminal)."""
        if not self.cfg.progress or sys.stderr.isatty():
            return
        h = self.state.history
        valid = "" if math.isnan(h.valid_metric[-1]) else f", valid {h.metric_name} {h.valid_metric[-1]:.4f}"
        print(f"{self.name} epoch {self.state.epoch + 1}/{self.epochs}: loss {h.loss[-1]:.4f}{valid}, "
              f"{h.events_per_second[-1]:.0f} events/s, {h.seconds[-1]:.1f} s", file=sys.stderr, flush=True)


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
    name: str = "model",
) -> TrainingHistory:
    """Train for ``epochs`` (resuming from ``checkpoint_path`` if it exists); return the history.

    The module ends with the best validation epoch's weights (the last epoch's without
    ``validate``). See the module docstring for the contract of each argument.
    """
    device = next(module.parameters()).device
    loop = FitLoop(module, optimizer, make_batches, step, validate, cfg, epochs,
                   Path(checkpoint_path) if checkpoint_path else None, dict(extra_state or {}),
                   loss_reduction, get_loop_state, set_loop_state, device, name)
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


