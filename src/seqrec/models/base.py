"""The interface every recommender implements, baselines and neural models alike.

Scoring contract (used by evaluation and by ``recommend``):

* input: ``items`` (B, L) int64 dense indices, left-aligned, 0-padded, and ``lengths`` (B,);
* ``score_steps`` yields, for t = 0..L-1, a float32 array (B, n_items + 1): the scores for
  the next item after the model has consumed ``items[:, : t + 1]``. Rows whose session is
  shorter than t + 1 may hold anything; callers ignore them. Column 0 (padding) is ignored.
* ``score_last`` returns (B, n_items + 1): the scores after each row's whole prefix.

Models that see the whole prefix at once (SASRec) override ``score_last`` for speed;
recurrent models carry state in ``score_steps`` (the GRU4Rec protocol).

Dot-product models (GRU4Rec, SASRec, BPR-MF) also expose their output layer: scores are
``act(query_vectors(items, lengths) @ W.T + bias)`` with ``(W, bias) = output_layer()`` and a
monotone increasing ``act`` (``final_activation``), so ``recommend`` can take the exact top-k
with ``seqrec.serving.topk.DotProductIndex`` without materialising the full score matrix.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from seqrec.models.repeat import RepeatTerm, extension_label
from seqrec.sequences import ItemVocab, SessionDataset

if TYPE_CHECKING:
    import scipy.sparse as sp

Validate = Callable[[], float]  # the validation metric of the model being trained; higher is better


class Recommender(ABC):
    """A next-item model over a fixed item vocabulary."""

    name: str = "model"
    vocab: ItemVocab | None = None  # set by fit (or from_state_dict): dense index -> original id

    @abstractmethod
    def fit(self, train: SessionDataset, validate: Validate | None = None) -> "Recommender":
        """Train on ``train``; return self.

        ``validate()`` returns the model's validation metric (higher is better); models that train
        in epochs call it after each one to stop early and keep the best epoch, the others ignore it.
        """

    @abstractmethod
    def score_steps(self, items: np.ndarray, lengths: np.ndarray) -> Iterator[np.ndarray]:
        """Yield next-item scores (B, n_items + 1) after each position t."""

    def score_last(self, items: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Return next-item scores (B, n_items + 1) after each row's full prefix."""
        out = None
        for t, scores in enumerate(self.score_steps(items, lengths)):
            if out is None:
                out = np.empty_like(scores)
            rows = lengths == t + 1
            out[rows] = scores[rows]
        assert out is not None, "score_last needs at least one item per row"
        return out

    def sparse_scores(self, items: np.ndarray, lengths: np.ndarray) -> "tuple[sp.csr_matrix, np.ndarray] | None":
        """Return (rows (B, V + 1) sparse, background (V + 1,)) of a model whose scores are sparse rows over a back-off.

        Item j of row b scores ``rows[b, j]`` where stored, else ``background[j]``, and every
        stored value is above every background value; ``recommend`` then takes the top-k from
        the stored entries and the background's best items, never a dense (B, V + 1) block.
        None (the default): the model has no such form.
        """
        return None

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Return (item matrix W (V + 1, D), bias (V + 1,) or None) of a dot-product scorer; None for other models."""
        return None

    def query_vectors(self, items: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        """Return the (B, D) float32 vectors that ``output_layer`` scores (dot-product models only)."""
        raise NotImplementedError(f"{type(self).__name__} is not a dot-product scorer")

    def repeat_term(self, query: torch.Tensor, items: torch.Tensor) -> RepeatTerm | None:
        """Return what a dot-product model adds to the items of each row's prefix (B, L) for queries (B, D), or None."""
        return None

    def label(self) -> str:
        """Return the name results are shown under: the model's name, plus any extension it runs with."""
        return self.name + extension_label(getattr(self, "cfg", None))

    def final_activation(self, scores: torch.Tensor) -> torch.Tensor:
        """Return scores after the model's monotone increasing output activation (identity by default)."""
        return scores

    def state_dict(self) -> dict:
        """Return the fitted state as tensors/arrays/primitives (safe to save)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved yet")

    @classmethod
    def from_state_dict(cls, state: dict) -> "Recommender":
        """Rebuild a fitted model from ``state_dict()``."""
        raise NotImplementedError(f"{cls.__name__} cannot be loaded yet")
