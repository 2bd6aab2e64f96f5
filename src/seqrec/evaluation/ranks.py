"""Rank arithmetic: where a target ranks among scored candidates, the metrics of ranks, the best items of a row."""

from __future__ import annotations

import warnings

import numpy as np
import torch


def count_above(scores: np.ndarray, target_scores: np.ndarray, strict: bool, skip_pad: bool) -> np.ndarray:
    """Return per row the number of scores (R, N) >= (or > if strict) the row's target score (R,)."""
    compare = np.greater if strict else np.greater_equal
    counts = compare(scores, target_scores[:, None]).sum(1)  # (R,); numpy: ~6x torch's bool sum on CPU
    if skip_pad:
        counts -= compare(scores[:, 0], target_scores)  # column 0 is padding, never a candidate
    return counts


def rank_against(target_scores: np.ndarray, scores: np.ndarray, ties: str, skip_pad: bool = False) -> np.ndarray:
    """Return float64 ranks (R,) of target scores (R,) among candidate scores (R, N) that include them."""
    if ties == "conservative":
        ranks = count_above(scores, target_scores, False, skip_pad).astype(np.float64)
    elif ties == "optimistic":
        ranks = 1.0 + count_above(scores, target_scores, True, skip_pad)
    elif ties == "average":
        at_least = count_above(scores, target_scores, False, skip_pad)
        ranks = 0.5 * (at_least + 1 + count_above(scores, target_scores, True, skip_pad))
    else:
        raise ValueError(f"ties={ties!r} is not one of conservative, optimistic, average")
    ranks[np.isneginf(target_scores)] = np.inf
    return ranks


def check_no_nan(scores: np.ndarray) -> None:
    """Raise if any candidate score (columns 1..V of (B, V + 1)) is NaN, naming the rows."""
    if not np.isnan(scores[:, 1:].sum(1)).any():  # one fast reduction; exact check only if flagged
        return
    nan_rows = np.flatnonzero(np.isnan(scores[:, 1:]).any(1))
    if len(nan_rows):  # (a flagged row may only hold +inf and -inf)
        raise ValueError(f"scores hold NaN in {len(nan_rows)} of {len(scores)} rows (first: row {nan_rows[0]})")


def as_scores(scores) -> np.ndarray:
    """Return scores as a numpy array (a torch tensor is moved to the CPU)."""
    if isinstance(scores, torch.Tensor):
        return scores.detach().cpu().numpy()
    return np.asarray(scores)


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray, ties: str = "conservative") -> np.ndarray:
    """Return float64 ranks (B,) of targets (B,) in 1..V under full ranking of scores (B, V + 1)."""
    scores, targets = as_scores(scores), np.asarray(targets, dtype=np.int64)
    n_items = scores.shape[1] - 1
    if len(targets) and (targets.min() < 1 or targets.max() > n_items):
        raise ValueError(f"targets must be item indices in 1..{n_items}, got {targets.min()}..{targets.max()}")
    check_no_nan(scores)
    target_scores = scores[np.arange(len(targets)), targets]  # (B,)
    return rank_against(target_scores, scores, ties, skip_pad=True)


def metrics_from_ranks(ranks: np.ndarray, cutoffs) -> dict[str, float]:
    """Return recall@K, hr@K, mrr@K and ndcg@K (means over targets) for every cut-off K."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if len(ranks) == 0:
        raise ValueError("metrics_from_ranks: no ranks (no targets) to compute metrics from")
    out: dict[str, float] = {}
    for k in cutoffs:
        hit = ranks <= k
        out[f"recall@{k}"] = out[f"hr@{k}"] = float(hit.mean())
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / ranks, 0.0).mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
    return out


def top_items(scores: np.ndarray, k: int) -> np.ndarray:
    """Return each row's ``k`` best items (R, k) of scores (R, V + 1), best first; column 0 (padding) never."""
    with warnings.catch_warnings():  # torch warns about read-only arrays; topk only reads them
        warnings.simplefilter("ignore", UserWarning)
        real = torch.as_tensor(scores)[:, 1:]  # (R, V)
    k = min(k, real.shape[1])
    if k == 0:
        return np.zeros((len(scores), 0), dtype=np.int64)
    return torch.topk(real, k, dim=1).indices.numpy() + 1  # (R, k) best first; ~15x numpy's argpartition here
