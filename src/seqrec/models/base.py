"""The interface every recommender implements, baselines and neural models alike.

Scoring contract (used by evaluation and by ``recommend``):

* input: ``items`` (B, L) int64 dense indices, left-aligned, 0-padded, and ``lengths`` (B,);
* ``score_steps`` yields, for t = 0..L-1, a float32 array (B, n_items + 1): the scores for
  the next item after the model has consumed ``items[:, : t + 1]``. Rows whose session is
  shorter than t + 1 may hold anything; callers ignore them. Column 0 (padding) is ignored.
* ``score_last`` returns (B, n_items + 1): the scores after each row's whole prefix.

Models that see the whole prefix at once (SASRec) override ``score_last`` for speed;
recurrent models carry state in ``score_steps`` (the GRU4Rec protocol).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator

import numpy as np

from seqrec.sequences import ItemVocab, SessionDataset


class Recommender(ABC):
    """A next-item model over a fixed item vocabulary."""

    name: str = "model"
    vocab: ItemVocab | None = None  # set by fit (or from_state_dict): dense index -> original id

    @abstractmethod
    def fit(self, train: SessionDataset, valid: SessionDataset | None = None) -> "Recommender":
        """Train on ``train`` (``valid`` only for early stopping); return self."""

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

    def state_dict(self) -> dict:
        """Return the fitted state as tensors/arrays/primitives (safe to save)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved yet")

    @classmethod
    def from_state_dict(cls, state: dict) -> "Recommender":
        """Rebuild a fitted model from ``state_dict()``."""
        raise NotImplementedError(f"{cls.__name__} cannot be loaded yet")
