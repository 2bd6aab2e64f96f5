"""Exact top-k over a large catalogue: group-max pruning, and blocked dot-product scoring.

* ``group_topk``: top-k of score rows (n, V) seen as groups of ``GROUP`` columns. The k best
  items lie in at most k groups, and those groups are among the k groups with the highest
  maxima; so one max-reduction over the row (a streaming pass) plus a top-k over the
  V / GROUP maxima and one over k·GROUP candidates replace the top-k over V columns. Exact:
  the same items as ``torch.topk`` up to the order of equal scores.
* ``sparse_candidates``: the best items of models whose scores are sparse rows over a
  back-off (Markov, Item-KNN, S-POP: ``Recommender.sparse_scores``): each row's ``need`` best
  stored entries and the back-off's ``need`` best items, ranked; the dense (n, V) block is
  never built.
* ``DotProductIndex``: top-k of ``q @ W.T + b`` (the output layer of GRU4Rec, SASRec, BPR-MF)
  for a batch of queries, ``chunk`` rows at a time (128), so the (chunk, V) score block is reused
  and stays small instead of a (B, V) matrix per call; banned items (already seen, padding)
  get -inf in the block before selection.
* Certified bfloat16 pass (CPU blocks): the catalogue is scored in bfloat16 (the processor's
  bf16 dot-product instructions). Every score then moves by at
  most ``eps`` (``error_bound``: the rounding of the query and of the item matrix, measured, by
  Cauchy-Schwarz, plus the output's rounding). Candidates are the items of the k + EXTRA best
  groups; their best k + EXTRA are rescored exactly in float32. Any other item scores at most
  ``bound + eps`` exactly, ``bound`` being the next group maximum or the best candidate not
  rescored; a row whose k-th exact score is above that is provably exact. Other rows are scored
  again in float32.

A row with fewer than k allowed items returns -inf scores in its last slots (callers map
them to padding).
"""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
import scipy.sparse as sp
import torch

from seqrec.models.repeat import RepeatTerm

GROUP = 64  # columns per group for the group-max pruning
NUMPY_MIN_ROWS = 8  # blocks of at least this many queries use numpy's matrix product on CPU
EXTRA = 10  # certified bf16 pass: candidate groups and rescored items beyond k (k = 10 -> 20 of each)
USE_BF16 = False  # the certified bfloat16 pass on CPU: off, no faster than oneDNN float32 (BENCHMARKS.md); opt in for CPUs without oneDNN
USE_ONEDNN = True  # float32 blocks through oneDNN's product on CPU (else numpy's BLAS)


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


def sparse_candidates(rows: sp.csr_matrix, background: np.ndarray, need: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (scores (n, 2·need) float32, item indices (n, 2·need) int64) of each row's best items, best first.

    Item j of row b scores ``rows[b, j]`` where stored, else ``background[j]``; stored values are
    above every background value. The ``need`` best of a row are then among its ``need`` best stored
    entries and the ``need`` best background items: both go in, a background item that the row
    stores is dropped (it scores its stored value there), and unused slots hold (-inf, 0).
    """
    n = rows.shape[0]
    rows = rows.tocsr()
    counts = np.diff(rows.indptr)  # (n,) stored entries per row
    owner = np.repeat(np.arange(n), counts)  # (nnz,)
    order = np.lexsort((-rows.data, owner))  # by row, then best first
    rank = np.arange(len(order)) - rows.indptr[owner]  # rank within the row, order keeps rows grouped
    keep = order[rank < need]
    stored_v = torch.full((n, need), -math.inf)
    stored_i = torch.zeros((n, need), dtype=torch.int64)
    kept_rows, kept_rank = torch.from_numpy(owner[keep]), torch.from_numpy(rank[rank < need])
    stored_v[kept_rows, kept_rank] = torch.from_numpy(rows.data[keep].astype(np.float32))
    stored_i[kept_rows, kept_rank] = torch.from_numpy(rows.indices[keep].astype(np.int64))
    back_v, back_i = torch.topk(torch.from_numpy(np.asarray(background, dtype=np.float32)), min(need, len(background)))
    slot = torch.full((len(background),), -1, dtype=torch.int64)
    slot[back_i] = torch.arange(len(back_i))  # item -> its place among the background's best, -1 elsewhere
    hit = slot[stored_i]  # (n, need) where each stored item sits in the background list
    dup = torch.zeros(n, len(back_i) + 1, dtype=torch.bool)  # last column: stored items not in the list
    dup.scatter_(1, torch.where((hit >= 0) & (stored_v > -math.inf), hit, len(back_i)), True)
    dup = dup[:, :-1]  # (n, need) background items the row stores: they score their stored value there
    values = torch.cat([stored_v, back_v.expand(n, -1).masked_fill(dup, -math.inf)], 1)
    index = torch.cat([stored_i, back_i.expand(n, -1).masked_fill(dup, 0)], 1)
    values, pos = torch.sort(values, dim=1, descending=True, stable=True)
    return values, index.gather(1, pos)


def onednn_weight(rows: torch.Tensor, batch: int) -> torch.Tensor | None:
    """Return the item matrix (V, D) packed for oneDNN's float32 product, or None where torch has no oneDNN.

    oneDNN's kernels run the short-and-wide catalogue product faster than numpy's BLAS and torch.mm
    (BENCHMARKS.md). The op is the one torch's own CPU compiler emits for linear layers; any
    failure here (a torch without it) keeps the numpy product.
    """
    if not (USE_ONEDNN and torch.backends.mkldnn.is_available()):
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(rows, batch)
        probe = torch.ops.mkldnn._linear_pointwise(rows[:2], packed, None, "none", [], "")  # (2, V)
        if probe.shape != (2, len(rows)) or not torch.allclose(probe, rows[:2] @ rows.T, rtol=1e-4, atol=1e-4):
            return None
        return packed
    except (RuntimeError, AttributeError):
        return None


_THREADS_LOCK = threading.RLock()  # the thread count is process-wide: one holder at a time (re-entrant: blocks nest)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Hold torch's intra-op pool at ``n`` threads inside the block (None: leave it), then restore it.

    numpy's BLAS brings its own threads for the catalogue product; with torch's pool also awake
    the two fight over the cores and throughput halves (BENCHMARKS.md). The
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
    products (a few dozen queries against the whole catalogue) it is faster than ``torch.addmm``
    (BENCHMARKS.md); single sessions stay on torch (its threads, no BLAS pool to wake).
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
        self.rows_certified = self.rows_redone = 0  # certified bf16 pass: rows it proved exact, rows scored again
        rows = self.wt.T.contiguous() if self.device.type == "cpu" else None  # (V', D + 1)
        self.packed = None if rows is None else onednn_weight(rows, chunk)
        self.certified = USE_BF16 and rows is not None and torch.backends.mkldnn.is_available()
        if self.certified:  # bfloat16 copy for the approximate pass, float32 rows for the exact rescoring
            self.rows = rows
            self.wt_bf16 = self.wt.bfloat16()  # (D + 1, V')
            rounded = self.wt_bf16.float().T  # (V', D + 1)
            self.max_norm = float(rounded[:, :-1].norm(dim=1).max())  # max |w~| over the item vectors (bias apart)
            error = (rounded - self.rows)[: self.n_items]  # (V, D + 1) rounding of each item's vector and bias
            self.max_error = float(error[:, :-1].norm(dim=1).max())  # max |w~ - w|
            self.max_bias_error = float(error[:, -1].abs().max())  # max |b~ - b|
            self.wt_bf16[-1, self.banned_columns] = -math.inf  # bias -inf: banned columns score -inf in the product

    def search(self, q: torch.Tensor, k: int, banned: torch.Tensor | None = None,
               repeat: RepeatTerm | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (scores (B, k) float32, item indices (B, k) int64) of the best non-banned items per query row.

        ``repeat``: the model's term for the items already in each row's session (repeat bias or mixture).
        """
        if not 0 < k <= self.n_items:
            raise ValueError(f"k={k} must be between 1 and the catalogue size {self.n_items}")
        q = q.detach().float().to(self.device)  # (B, D)
        q = torch.cat([q, torch.ones(len(q), 1, device=self.device)], 1)  # (B, D + 1): picks up the bias row
        values = torch.empty(len(q), k, device=self.device)
        index = torch.empty(len(q), k, dtype=torch.int64, device=self.device)
        block = torch.empty(min(self.chunk, len(q)), self.wt.shape[1], device=self.device)  # (chunk, V') reused
        # the (chunk, V') bfloat16 product is reused too: fresh blocks of this size cost page faults on every call
        bf16 = self.bf16_pays() and repeat is None
        approx = torch.empty(block.shape if bf16 else (0, 0), dtype=torch.bfloat16, device=self.device)
        blocks_on_torch = len(q) >= NUMPY_MIN_ROWS and (self.packed is not None or bf16)
        hold = 1 if self.device.type == "cpu" and not blocks_on_torch else None
        with torch_threads(hold):  # numpy's BLAS (or a one-row product) takes the cores
            self.search_blocks(q, k, banned, repeat, (block, approx), values, index)
        return values, index

    def bf16_pays(self) -> bool:
        """Return whether to run the certified bf16 pass: available, and proving most rows so far.

        Rows it cannot prove are scored twice; when the scores are too close for the bf16 bound
        (GRU4Rec's close scores: BENCHMARKS.md) the index
        keeps to float32 after its first 256 rows.
        """
        seen = self.rows_certified + self.rows_redone
        return self.certified and (seen < 256 or self.rows_certified >= 0.75 * seen)

    def search_blocks(self, q, k, banned, repeat, buffers, values, index) -> None:
        """Fill values / index (B, k) block by block (see ``search``); ``buffers``: reused float32 and bf16 blocks."""
        block = buffers[0]
        for start in range(0, len(q), self.chunk):
            rows = slice(start, start + self.chunk)
            ban = None if banned is None else banned[rows].to(self.device)
            if self.bf16_pays() and repeat is None and len(q[rows]) >= NUMPY_MIN_ROWS:
                ok = self.certified_block(q[rows], k, ban, values[rows], index[rows], buffers)
                n_ok = int(ok.sum())
                self.rows_certified, self.rows_redone = self.rows_certified + n_ok, self.rows_redone + len(ok) - n_ok
                if n_ok == len(ok):
                    continue
                redo = torch.arange(start, start + len(ok))[~ok]  # rows the bound could not certify: float32
                sub_v, sub_i = values[redo], index[redo]
                self.exact_block(q[redo], k, None if ban is None else ban[redo - start], None, block[: len(redo)], sub_v, sub_i)
                values[redo], index[redo] = sub_v, sub_i
                continue
            self.exact_block(q[rows], k, ban, None if repeat is None else (repeat, rows), block[: len(q[rows])],
                             values[rows], index[rows])

    def exact_block(self, q, k, banned, repeat, block, values, index) -> None:
        """Fill values / index (n, k) with the exact float32 top-k of queries q (n, D + 1); ``repeat`` = (term, rows)."""
        scores = self.score_block(q, block)  # (n, V)
        scores[:, self.banned_columns] = -math.inf  # first: out of the repeat mixture's normaliser too
        if repeat is not None:
            scores = repeat[0].apply(scores, repeat[1])
        if banned is not None:
            scores.scatter_(1, banned, -math.inf)
        values[:], index[:] = group_topk(scores, k)

    def certified_block(self, q, k, banned, values, index, buffers: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Fill values / index (n, k) from the bfloat16 pass; return which rows (n,) bool are certified exact.

        The approximate block's k best 64-item groups (by their maxima) hold the candidates; the best
        ``k + EXTRA`` of them are rescored in float32. Every other item's approximate score is at most
        ``bound`` = the larger of the (k+1)-th group maximum and the best candidate not rescored, so its
        exact score is at most ``bound + eps``: a row whose k-th exact score is above that is exact.
        """
        n, width = len(q), self.wt.shape[1]
        if buffers is None:
            buffers = torch.empty(n, width), torch.empty(n, width, dtype=torch.bfloat16)
        approx = torch.mm(q.bfloat16(), self.wt_bf16, out=buffers[1][:n])  # (n, V') bfloat16, banned columns -inf
        approx = buffers[0][:n].copy_(approx)  # float32 from here: its reductions are faster than bfloat16's
        if banned is not None:
            approx.scatter_(1, banned, -math.inf)
        maxima = approx.view(n, width // GROUP, GROUP).amax(2)  # (n, G)
        c = min(k + EXTRA, maxima.shape[1])  # candidate groups
        top_max, groups = torch.topk(maxima, min(c + 1, maxima.shape[1]), dim=1)  # (n, c + 1)
        cols = group_columns(groups[:, :c])  # (n, c * GROUP) candidates
        m = min(k + EXTRA, cols.shape[1])
        cand_approx, pos = torch.topk(approx.gather(1, cols), m, dim=1)  # (n, m)
        cand = cols.gather(1, pos)  # (n, m) item indices
        exact = torch.bmm(self.rows[cand], q[:, :, None])[:, :, 0]  # (n, m) float32 scores
        exact = exact.masked_fill(cand_approx == -math.inf, -math.inf)
        values[:], best = torch.topk(exact, k, dim=1)
        index[:] = cand.gather(1, best)
        outside = top_max[:, c] if top_max.shape[1] > c else torch.full((n,), -math.inf)  # best approx outside them
        if m < cols.shape[1]:
            outside = torch.maximum(outside, cand_approx[:, -1])  # ... or inside them but not rescored
        return (outside == -math.inf) | (values[:, k - 1] > outside + self.error_bound(q, outside))

    def error_bound(self, q: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
        """Return, per query row (n,), a bound on |bf16 score - exact score| for approximate scores up to ``approx``.

        q~.w~ - q.w = (q~ - q).w~ + q.(w~ - w) (Cauchy-Schwarz on each, with this row's |q~ - q| and the
        catalogue's max |w~| and max |w~ - w|), plus the bf16 rounding of the output (2^-9 relative, 2^-8 taken)
        and a generous allowance for the float32 accumulation.
        """
        vec = q[:, :-1]  # (n, D) the query without its bias column (exactly 1 in bf16 too)
        q_norm = vec.norm(dim=1)
        inputs = (vec.bfloat16().float() - vec).norm(dim=1) * self.max_norm + q_norm * self.max_error + self.max_bias_error
        return inputs + approx.abs() * 2.0**-8 + (q_norm * self.max_norm + 1.0) * 2.0**-16

    def score_block(self, q: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Return the scores (n, V) of queries q (n, D + 1), in ``out`` unless oneDNN's product made its own block."""
        if self.packed is not None and len(q) >= NUMPY_MIN_ROWS:
            return torch.ops.mkldnn._linear_pointwise(q, self.packed, None, "none", [], "")  # (n, V')
        if self.device.type == "cpu" and len(q) >= NUMPY_MIN_ROWS:
            np.matmul(q.numpy(), self.wt.numpy(), out=out.numpy())
            return out
        return torch.mm(q, self.wt, out=out)  # GPU, or one session (numpy's BLAS threads are slower to wake there)
