"""Analyses beyond the ranking metrics, from per-target ranks and recommendation lists.

* **classification view** (the T-ECD study's): ``accuracy`` = the top-1 hit rate (Recall@1 under the
  protocol's tie rule); ``macro_precision`` and ``macro_recall`` over the items that occur as a
  target or as a top-1 prediction: for item i, precision = hits(i) / predicted(i) and recall =
  hits(i) / targets(i) (0 where the denominator is 0), averaged with equal weight per item.
* **beyond accuracy** at K, over every target's top-K list: ``coverage`` = distinct recommended items
  / catalogue size; ``gini`` of the recommendation counts over the whole catalogue (0 = every item
  recommended equally often, 1 = one item only); ``popularity_percentile`` = mean share of catalogue
  items whose training support is at most the recommended item's; ``novelty`` = mean -log2 p(i), p
  the item's smoothed share of training events ((support + 1) / (events + V)).
* **uncertainty**: a bootstrap 95% interval of a mean over targets (resampling targets), and a paired
  randomisation test of two models on the same targets (random sign flips of the per-target
  differences; p = share of flips whose |mean| reaches the observed one, counting the observed).
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_SAMPLES = 1000
PERMUTATIONS = 2000
_CHUNK = 100  # resamples drawn at once (memory: CHUNK x targets)


def classification_view(ranks: np.ndarray, targets: np.ndarray, top1: np.ndarray) -> dict[str, float]:
    """Return accuracy, macro precision and macro recall from ranks (N,), target items (N,) and top-1 items (N,)."""
    hits = top1 == targets
    items = np.union1d(targets, top1)
    hit_count = np.bincount(np.searchsorted(items, targets[hits]), minlength=len(items))
    predicted = np.bincount(np.searchsorted(items, top1), minlength=len(items))
    actual = np.bincount(np.searchsorted(items, targets), minlength=len(items))
    precision = np.divide(hit_count, predicted, out=np.zeros(len(items)), where=predicted > 0)
    recall = np.divide(hit_count, actual, out=np.zeros(len(items)), where=actual > 0)
    return {"accuracy": float(np.mean(ranks <= 1)), "macro_precision": float(precision.mean()),
            "macro_recall": float(recall.mean()), "items": int(len(items))}


def gini(counts: np.ndarray) -> float:
    """Return the Gini index of non-negative counts (0: all equal; (n - 1) / n: all in one)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * total))


def beyond_accuracy(top: np.ndarray, train_support: np.ndarray) -> dict[str, float]:
    """Return coverage, Gini, popularity percentile and novelty of top-K lists (N, K) over a catalogue of support (V + 1,)."""
    support = np.asarray(train_support, dtype=np.float64)[1:]  # (V,) padding dropped
    n_items, recommended = len(support), top[top > 0] - 1  # (M,) 0-based item indices
    counts = np.bincount(recommended, minlength=n_items)  # (V,)
    percentile = np.searchsorted(np.sort(support), support, side="right") / n_items  # (V,) share with support <= its
    p = (support + 1) / (support.sum() + n_items)  # (V,) smoothed popularity
    return {"k": int(top.shape[1]), "coverage": float((counts > 0).mean()), "gini": gini(counts),
            "popularity_percentile": float(percentile[recommended].mean()) if len(recommended) else float("nan"),
            "novelty": float(-np.log2(p[recommended]).mean()) if len(recommended) else float("nan")}


def bootstrap_interval(values: np.ndarray, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """Return the 2.5% and 97.5% quantiles of the mean of ``values`` over bootstrap resamples."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng, means = np.random.default_rng(seed), []
    for start in range(0, samples, _CHUNK):
        idx = rng.integers(0, len(values), (min(_CHUNK, samples - start), len(values)))  # (C, N)
        means.append(values[idx].mean(1))
    lo, hi = np.quantile(np.concatenate(means), [0.025, 0.975])
    return float(lo), float(hi)


def per_target_values(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Return each target's contribution (R,) to ``metric`` (recall/hr/mrr/ndcg@K) from its rank (1 = first)."""
    name, _, k = metric.partition("@")
    if name not in ("recall", "hr", "mrr", "ndcg") or not k.isdigit():
        raise ValueError(f"metric {metric!r} is not <recall|hr|mrr|ndcg>@K")
    ranks = np.asarray(ranks, dtype=np.float64)
    inside = ranks <= int(k)
    if name in ("recall", "hr"):
        return inside.astype(np.float64)
    safe = np.where(inside, ranks, 1.0)
    return np.where(inside, 1.0 / safe if name == "mrr" else 1.0 / np.log2(safe + 1.0), 0.0)


def paired_test(a: np.ndarray, b: np.ndarray, seed: int = 0, permutations: int = PERMUTATIONS) -> dict[str, float]:
    """Return mean(a - b), its bootstrap 95% interval and the randomisation p-value of a paired comparison."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired test: {a.shape} and {b.shape} targets; both models must rank the same targets")
    diff = a - b
    observed = abs(diff.mean()) if len(diff) else 0.0
    rng, reached = np.random.default_rng(seed), 1  # the observed assignment counts
    for start in range(0, permutations, _CHUNK):
        signs = rng.choice((-1.0, 1.0), (min(_CHUNK, permutations - start), len(diff)))  # (C, N)
        reached += int((np.abs(signs @ diff / max(len(diff), 1)) >= observed - 1e-12).sum())
    lo, hi = bootstrap_interval(diff, seed)
    return {"mean_difference": float(diff.mean()) if len(diff) else 0.0, "ci_low": lo, "ci_high": hi,
            "p_value": reached / (permutations + 1)}
