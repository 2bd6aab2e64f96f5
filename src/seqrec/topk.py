"""Exact top-k over a large catalogue: group-max pruning, and blocked dot-product scoring.

* ``group_topk``: top-k of score rows (n, V) seen as groups of ``GROUP`` columns. The k best
  items lie in at most k groups, and those groups are among the k groups with the highest
  maxima; so one max-reduction over the row (a streaming pass) plus a top-k over the
  V / GROUP maxima and one over k·GROUP candidates replace the top-k over V columns. Exact:
  the same items as ``torch.topk`` up to the order of equal scores.
* ``DotProductIndex``: top-k of ``q @ W.T + b`` (the output layer of GRU4Rec, SASRec, BPR-MF)
  for a batch of queries, ``chunk`` rows at a time (128), so the (chunk, V) score block is reused
  and stays small instead of a (B, V) matrix per call; banned items (already seen, padding)
  get -inf in the block before selection.

A row with fewer than k allowed items returns -inf scores in its last slots (callers map
them to padding).
"""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
import torch

from seqrec.models.repeat import add_repeat_bias

GROUP = 64  # columns per group for the group-max pruning
NUMPY_MIN_ROWS = 8  # blocks of at least this many queries use numpy's matrix product on CPU


def group_columns(groups: torch.Tensor) -> torch.Tensor:
    """Return the column indices (n, g·GROUP) of groups (n, g)."""
    n, g = groups.shape
    return (groups[:, :, None] * GROUP + torch.arange(GROUP, device=groups.device)).view(n, g * GROUP)


def group_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (values (n, k), column indices (n, k)) of each row's k largest scores; exact."""
    n, width = scores.shape
    full = width // GROUP * GROUP  # columns in whole groups; the rest are always candidates
    if k * GROUP * 4 > full or scores.stride(1) != 1:  # few groups: the plain top-k is as fast
        return torch.topk(scores, k, dim=1)
    groups_view = scores.as_strided((n, full // GROUP, GROUP), (scores.stride(0), GROUP, 1))  # (n, G, GROUP)
    cols = group_columns(torch.topk(groups_view.amax(2), k, dim=1).indices)  # (n, k·GROUP) the groups holding the k best
    if full < width:
        cols = torch.cat([cols, torch.arange(full, width, device=scores.device).expand(n, -1)], 1)
    values, pos = torch.topk(scores.gather(1, cols), k, dim=1)  # (n, k)
    return values, cols.gather(1, pos)


_THREADS_LOCK = threading.Lock()  # the thread count is process-wide: one holder at a time


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Hold torch's intra-op pool at ``n`` threads inside the block (None: leave it), then restore it.

    numpy's BLAS brings its own threads for the catalogue product; with torch's pool also awake
    the two fight over the cores (measured: 3.4k vs 6.8k SASRec sessions/s on 2 cores). The
    setting is process-wide, so blocks from several threads run one at a time (each uses
    every core anyway) and the count is always restored to what it was.
    """
    if n is None:
        yield
        return
    with _THREADS_LOCK:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)


class DotProductIndex:
    """Exact top-k of ``q @ W.T + b`` over a fixed item matrix W (V, D); ``banned_columns`` are never returned.

    The bias is folded in as one more dimension (``[q, 1] @ [W, b].T``). On CPU, blocks of
    ``NUMPY_MIN_ROWS`` or more queries use numpy's matrix product: for these short-and-wide
    products (a few dozen queries against the whole catalogue) it measured 2-4x faster than
    ``torch.addmm`` here; single sessions stay on torch (its threads, no BLAS pool to wake).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, chunk: int = 128,
                 banned_columns: tuple[int, ...] = (0,)):
        self.n_items, dim = weight.shape
        self.device = weight.device
        bias = torch.zeros(self.n_items, device=self.device) if bias is None else bias.detach().float().reshape(-1)
        width = math.ceil(self.n_items / GROUP) * GROUP  # whole groups: the group maxima are a contiguous reduction
        self.wt = torch.zeros(dim + 1, width, device=self.device)  # (D + 1, V'): bias as the last row
        self.wt[:, : self.n_items] = torch.cat([weight.detach().float(), bias[:, None]], 1).T
        self.banned_columns = list(banned_columns) + list(range(self.n_items, width))  # padding columns never win
        self.chunk = chunk

    def search(self, q: torch.Tensor, k: int, banned: torch.Tensor | None = None,
               boost: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (scores (B, k) float32, item indices (B, k) int64) of the best non-banned items per query row.

        ``boost`` = (items (B, L), beta (B,)): beta is added once to each listed item of the row (repeat bias).
        """
        if not 0 < k <= self.n_items:
            raise ValueError(f"k={k} must be between 1 and the catalogue size {self.n_items}")
        q = q.detach().float().to(self.device)  # (B, D)
        q = torch.cat([q, torch.ones(len(q), 1, device=self.device)], 1)  # (B, D + 1): picks up the bias row
        values = torch.empty(len(q), k, device=self.device)
        index = torch.empty(len(q), k, dtype=torch.int64, device=self.device)
        block = torch.empty(min(self.chunk, len(q)), self.wt.shape[1], device=self.device)  # (chunk, V') reused
        with torch_threads(1 if self.device.type == "cpu" else None):  # numpy BLAS or a one-row product
            self.search_blocks(q, k, banned, boost, block, values, index)
        return values, index

    def search_blocks(self, q, k, banned, boost, block, values, index) -> None:
        """Fill values / index (B, k) block by block (see ``search``)."""
        for start in range(0, len(q), self.chunk):
            rows = slice(start, start + self.chunk)
            scores = self.score_block(q[rows], block[: len(q[rows])])  # (n, V)
            if boost is not None:
                scores = add_repeat_bias(scores, boost[0][rows].to(self.device), boost[1][rows].to(self.device))
            scores[:, self.banned_columns] = -math.inf
            if banned is not None:
                scores.scatter_(1, banned[rows].to(self.device), -math.inf)
            values[rows], index[rows] = group_topk(scores, k)

    def score_block(self, q: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Return ``out`` (n, V) filled with the scores of queries q (n, D + 1)."""
        if self.device.type == "cpu" and len(q) >= NUMPY_MIN_ROWS:
            np.matmul(q.numpy(), self.wt.numpy(), out=out.numpy())
            return out
        return torch.mm(q, self.wt, out=out)  # GPU, or one session (numpy's BLAS threads are slower to wake there)
