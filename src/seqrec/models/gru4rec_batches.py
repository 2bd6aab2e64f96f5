"""GRU4Rec's session-parallel mini-batches and its shared output samples (Hidasi et al. 2016, section 3.1).

B slots each feed their session's current item and target the next; a slot whose session is used
up takes the next session (time order) and its hidden state is reset. Extra negatives are shared
by the batch, drawn ∝ support^alpha from a store refilled when used up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from seqrec.sequences import SessionDataset


@dataclass(frozen=True)
class SessionParallelBatches:
    """Per-step index arrays of one epoch of session-parallel training.

    Tail policy (as in the papers' implementation): the epoch ends at the first step after
    which an emptied slot cannot be refilled; the remaining events of the other slots'
    sessions are not trained on in that epoch (their count is ``unused_pairs``).
    """

    inputs: np.ndarray  # (S, B) item fed to each slot at step t
    targets: np.ndarray  # (S, B) next item, the slot's positive
    resets: np.ndarray  # (S, B) bool: the slot's hidden state is zeroed before step t
    short_sessions: int  # sessions of length 1: no training pair
    unused_pairs: int  # pairs of sessions cut by the tail policy

    @property
    def n_steps(self) -> int:
        return len(self.inputs)


def build_session_parallel_batches(data: SessionDataset, batch_size: int) -> SessionParallelBatches:
    """Return the session-parallel step arrays for ``data`` in its (start-time) session order."""
    usable = np.flatnonzero(data.lengths >= 2)  # length-1 sessions give no pair
    if len(usable) < batch_size:
        raise ValueError(f"GRU4Rec: {len(usable)} sessions of length >= 2 cannot fill batch_size={batch_size} slots")
    pos = data.offsets[usable[:batch_size]].copy()  # (B,) current event per slot
    end = data.offsets[usable[:batch_size] + 1].copy()  # (B,) one past the slot's last event
    reset = np.ones(batch_size, dtype=bool)
    nxt, ins, tgts, resets = batch_size, [], [], []
    while True:
        ins.append(data.items[pos]), tgts.append(data.items[pos + 1]), resets.append(reset)
        pos = pos + 1
        done = np.flatnonzero(pos + 1 >= end)  # slots whose session has no pair left
        if len(done) > len(usable) - nxt:
            break
        new = usable[nxt : nxt + len(done)]
        pos[done], end[done], nxt = data.offsets[new], data.offsets[new + 1], nxt + len(done)
        reset = np.zeros(batch_size, dtype=bool)
        reset[done] = True
    unused = int((end - pos - 1).clip(min=0).sum() + (data.lengths[usable[nxt:]] - 1).sum())
    return SessionParallelBatches(np.stack(ins), np.stack(tgts), np.stack(resets),
                                  int((data.lengths == 1).sum()), unused)


class SampleStore:
    """Item indices drawn ∝ support^alpha, ``size`` at a time, served ``n`` per step; refilled when used up."""

    def __init__(self, support: np.ndarray, alpha: float, size: int, n: int, seed: tuple[int, ...]):
        weights = np.asarray(support, dtype=np.float64) ** alpha
        weights[0] = 0.0  # never sample padding
        weights[np.asarray(support) == 0] = 0.0  # 0**0 == 1: items unseen in training stay out
        if weights.sum() <= 0:
            raise ValueError("SampleStore: every item has zero support; nothing to sample")
        self.cdf = np.cumsum(weights) / weights.sum()  # (V + 1,)
        self.size, self.n = max(size, n), n
        self.rng = np.random.default_rng(list(seed))
        self.store, self.pos = torch.zeros(0, dtype=torch.int64), 0

    def draw(self, count: int) -> np.ndarray:
        """Return ``count`` fresh samples (int64) from the distribution."""
        idx = np.searchsorted(self.cdf, self.rng.random(count), side="right")
        return np.minimum(idx, len(self.cdf) - 1).astype(np.int64)

    def take(self) -> torch.Tensor:
        """Return the next ``n`` items (int64 tensor) of the store, refilling it first if too few are left."""
        if self.pos + self.n > len(self.store):
            self.store, self.pos = torch.from_numpy(self.draw(self.size)), 0
        self.pos += self.n
        return self.store[self.pos - self.n : self.pos]


class EpochBatches:
    """One epoch's steps as device tensors (x (B,), y (B,), reset (B,), negatives (n_sample,))."""

    def __init__(self, steps: tuple[torch.Tensor, torch.Tensor, torch.Tensor], store: SampleStore | None):
        self.steps, self.store = steps, store
        self.empty = torch.zeros(0, dtype=torch.int64, device=steps[0].device)

    def __len__(self) -> int:
        return len(self.steps[0])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        x, y, reset = self.steps  # (S, B) each
        for t in range(len(x)):
            neg = self.empty if self.store is None else self.store.take().to(x.device)  # (n_sample,)
            yield x[t], y[t], reset[t], neg
