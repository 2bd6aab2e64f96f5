"""What GRU4Rec and SASRec share: construction from their config, device handling, a seeded network,
item-embedding warm starts, the resumable fit loop's bookkeeping and a weights-only saved state.

A subclass says what its network is (``make_net``), which parameter holds its input item vectors
(``item_embedding``), and how it trains (``fit``, through ``fit_network``).
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Literal

import numpy as np
import torch
from torch import nn

from seqrec.config import Section, TrainingConfig, config_to_dict
from seqrec.models.base import Recommender, Validate
from seqrec.models.training import TrainingHistory, fit_epochs, resolve_device, set_seed
from seqrec.sequences import ItemVocab



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


class NeuralRecommender(Recommender):
    """A recommender with a torch network over its item vocabulary, built from its config section."""

    config_class: ClassVar[type[Section]]

    def __init__(self, cfg: Section, training: TrainingConfig = TrainingConfig(), *,
                 checkpoint_path: Path | str | None = None, device: torch.device | None = None):
        self.cfg, self.training = cfg, training
        self.checkpoint_path = checkpoint_path
        self.device = device or resolve_device(training)
        self.vocab: ItemVocab | None = None
        self.net: nn.Module | None = None
        self.history: TrainingHistory | None = None

    @abstractmethod
    def make_net(self, n_items: int) -> nn.Module:
        """Return a new network for ``n_items`` items (index 0 = padding)."""

    @abstractmethod
    def item_embedding(self) -> nn.Parameter:
        """Return the parameter whose rows are the items' input vectors (what a warm start sets)."""

    def build_net(self, vocab: ItemVocab) -> nn.Module:
        """Return the network for ``vocab``, creating it (seeded, on the model's device) on first use."""
        if self.net is not None:
            if not np.array_equal(self.vocab.ids, vocab.ids):
                raise ValueError(f"{type(self).__name__} was built for {self.vocab.size} items; "
                                 f"got a vocabulary of {vocab.size} other items")
            return self.net
        set_seed(self.training.seed)
        self.vocab, self.net = vocab, self.make_net(vocab.size).to(self.device)
        return self.net

    def init_item_embeddings(self, matrix: np.ndarray, vocab: ItemVocab) -> int:
        """Warm-start the input item vectors from ``matrix`` (rows aligned to ``vocab``, 0 = padding); return rows set."""
        self.build_net(vocab)
        return warm_start_embedding(self.item_embedding(), matrix, mode=self.cfg.init_projection)

    def init_from_model(self, previous: "NeuralRecommender", vocab: ItemVocab) -> dict[str, int]:
        """Start from ``previous`` (the same kind, the same sizes) over ``vocab``; return item counts kept / new / dropped.

        Every weight is copied; a weight with one row per item (and padding) is copied row by row by item id:
        items both vocabularies hold keep their rows, new items keep this network's fresh (seeded) rows, and
        items only ``previous`` knew are dropped. Optimiser state starts afresh.
        """
        if type(previous) is not type(self) or previous.net is None:
            raise ValueError(f"cannot start {type(self).__name__} from a {type(previous).__name__}")
        self.build_net(vocab)
        old_pos = previous.vocab.encode(vocab.ids[1:])  # (V,) row of each item in the previous model, 0 = new
        kept = np.flatnonzero(old_pos > 0) + 1
        theirs, rows = previous.net.state_dict(), (len(previous.vocab.ids), len(vocab.ids))
        with torch.no_grad():
            for key, mine in self.net.state_dict().items():
                old = theirs.get(key)
                if old is not None and mine.ndim and (old.shape[0], mine.shape[0]) == rows and old.shape[1:] == mine.shape[1:]:
                    mine[torch.as_tensor(kept)] = old[torch.as_tensor(old_pos[kept - 1])].to(mine.device, mine.dtype)
                elif old is not None and old.shape == mine.shape:
                    mine.copy_(old)
                else:
                    raise ValueError(f"cannot start {self.name} from the previous model: weight {key!r} has shape "
                                     f"{None if old is None else tuple(old.shape)} there and {tuple(mine.shape)} here "
                                     f"(models.{self.name} sizes changed? train from scratch)")
        return {"kept": int(len(kept)), "new": int(vocab.size - len(kept)), "dropped": int(previous.vocab.size - len(kept))}

    def fit_network(self, optimizer: torch.optim.Optimizer, make_batches: Callable[[int], Iterable], step,
                    validate: Validate | None, **loop: Any) -> TrainingHistory:
        """Run the resumable fit loop for ``cfg.epochs`` on the built network; keep and return its history."""
        state = {"config": {**config_to_dict(self.cfg), "seed": self.training.seed}, "vocab": [str(i) for i in self.vocab.ids]}
        self.history = fit_epochs(self.net, optimizer, make_batches, step, self.training, self.cfg.epochs,
                                  validate=validate, checkpoint_path=self.checkpoint_path, extra_state=state, name=self.name,
                                  **loop)
        return self.history

    def state_dict(self) -> dict:
        """Return configs, vocabulary ids (list[str]), CPU weights and history: loadable with ``weights_only=True``."""
        if self.net is None:
            raise RuntimeError(f"{type(self).__name__}.state_dict called before fit")
        return {"name": self.name, "config": config_to_dict(self.cfg), "training": config_to_dict(self.training),
                "vocab": [str(i) for i in self.vocab.ids],
                "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                "history": self.history.to_dict() if self.history else None}

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | None = None) -> "NeuralRecommender":
        """Return a fitted model from ``state_dict()`` on ``device`` (default: CUDA when present, else CPU).

        The device a model was trained on is not where it must run: a CUDA-trained model loads on a
        CPU-only machine.
        """
        if state.get("name") != cls.name:
            raise ValueError(f"state is for model {state.get('name')!r}, not {cls.name!r}")
        training = TrainingConfig.model_validate(state["training"])
        device = device or resolve_device(training.model_copy(update={"device": "auto"}))
        model = cls(cls.config_class.model_validate(state["config"]), training, device=device)
        model.vocab = ItemVocab(np.array(state["vocab"], dtype=object))
        model.net = model.make_net(model.vocab.size).to(device)
        model.net.load_state_dict(state["net"])
        model.net.eval()
        model.history = TrainingHistory.from_dict(state["history"]) if state.get("history") else None
        return model
