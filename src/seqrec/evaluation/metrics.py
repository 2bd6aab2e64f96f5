"""Offline evaluation: the rank of every next-item target, and metrics from the ranks.

The protocol is explicit and written into every result (``EvaluationResult.protocol``):

* **targets** ``"all"`` (GRU4Rec, config ``protocol: session``): every event after the first
  in each session is a target and its prefix is the input, scored with ``model.score_steps``.
  ``"last"`` (leave-one-out, config ``protocol: loo``): only the last item of each sequence
  is a target, the input is everything before it, scored with ``model.score_last``.
  Sequences of one event have no target; their number is reported.
* **candidates** ``"full"``: every catalogue item ``1..V`` (column 0, padding, never counts).
  ``"sampled"``: the target against ``n_negatives`` distinct items drawn uniformly (seeded)
  from the items not in the target's sequence; for paper comparisons only, and labelled so.
* **ties** ``conservative``: rank = number of candidates scoring >= the target (the target
  included, so a unique top score is rank 1); ``optimistic``: 1 + number scoring strictly
  higher; ``average``: the mean of both. NaN scores are an error. A target scored ``-inf``
  is not a candidate and counts as a miss (rank ``inf``).
* **exclude_seen** ``True``: items of the prefix are not candidates (scored ``-inf``). A
  target that is itself in the prefix (a repeat) is then not a candidate either: it counts
  as a miss, and the number of such targets is ``protocol["repeat_targets_excluded"]``.
  ``False`` (GRU4Rec's protocol): every item is a candidate. No effect in sampled mode,
  whose negatives are unseen items and whose target is always a candidate.
* **metrics** at each cut-off K: ``recall@K`` (= ``hr@K``, one target per prediction),
  ``mrr@K`` (reciprocal rank, 0 beyond K) and ``ndcg@K`` (1 / log2(rank + 1), 0 beyond K).
* **breakdowns**: by the target's action type (when the data has actions); by session length
  (``<3`` = cold start, ``>=3``); by prefix length (``1``, ``2``, ``3-4``, ``5-9``, ``10-19``,
  ``20+``); by the target's training popularity when ``train_support`` is given: ``head`` =
  items with support at least that of the item at the 20% position of the catalogue sorted
  by support (the top ~20% of items), ``tail`` = other items seen in training, ``unseen`` =
  zero training support.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field, fields
from typing import Callable, Literal

import numpy as np
import torch
from tqdm import tqdm

from seqrec import columns as C
from seqrec.config import EvaluationConfig
from seqrec.evaluation.analysis import beyond_accuracy, bootstrap_interval, classification_view
from seqrec.evaluation.ranks import as_scores, check_no_nan, metrics_from_ranks, rank_against, ranks_from_scores, top_items
from seqrec.models.base import Recommender
from seqrec.sequences import SessionDataset

__all__ = ["EvaluationResult", "evaluate_model", "make_validator", "as_scores", "metrics_from_ranks", "ranks_from_scores"]

TARGETS_BY_PROTOCOL = {"session": "all", "loo": "last"}
PREFIX_EDGES = (1, 2, 3, 5, 10, 20)  # prefix-length buckets: [1], [2], [3,5), [5,10), [10,20), [20,inf)
HEAD_SHARE = 0.2


@dataclass
class EvaluationResult:
    """Metrics over all targets, per-group breakdowns, the analyses of ``analysis.py``, and the protocol."""

    metrics: dict[str, float]
    n_targets: int
    breakdowns: dict[str, dict[str, dict[str, float]]]
    protocol: dict
    classification: dict = field(default_factory=dict)  # accuracy, macro precision / recall (full ranking only)
    beyond: dict | None = None  # coverage, Gini, popularity percentile, novelty at the largest cut-off
    intervals: dict = field(default_factory=dict)  # bootstrap 95% interval of recall@K and mrr@K, K the largest cut-off
    target_ranks: np.ndarray | None = field(default=None, repr=False)  # (n_targets,) for paired tests; not in to_dict

    def to_dict(self) -> dict:
        """Return a JSON-safe dict of the whole result (without the per-target ranks)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "target_ranks"}


def sample_negatives(rng: np.random.Generator, n_items: int, seen: np.ndarray, n: int) -> np.ndarray:
    """Return ``n`` distinct items in 1..n_items drawn uniformly among those not in ``seen``."""
    seen = np.unique(seen[seen > 0])
    if n_items - len(seen) < n:
        raise ValueError(f"cannot sample {n} negatives: only {n_items - len(seen)} items are unseen")
    picked = np.zeros(0, dtype=np.int64)
    while len(picked) < n:
        draw = rng.integers(1, n_items + 1, size=2 * n + len(seen))
        draw = draw[~np.isin(draw, seen) & ~np.isin(draw, picked)]
        _, first = np.unique(draw, return_index=True)
        picked = np.concatenate([picked, draw[np.sort(first)]])
    return picked[:n]


@dataclass
class TargetRanker:
    """Ranks targets under the configured candidate set, tie rule and seen-item exclusion."""

    ties: str
    exclude_seen: bool
    candidates: str
    n_negatives: int
    rng: np.random.Generator
    top_k: int = 0  # length of the recommendation lists kept per target (full ranking only)
    repeats_excluded: int = 0

    def rank(self, scores: np.ndarray, targets: np.ndarray, prefix: np.ndarray, sequence: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
        """Return ranks (R,) of targets (R,) and each row's top ``top_k`` items (R, k; k = 0 when sampled)
        from scores (R, V + 1), prefixes (R, P) and sequences (R, L)."""
        if self.candidates == "sampled":
            return self.rank_sampled(scores, targets, sequence), np.zeros((len(targets), 0), dtype=np.int64)
        scores = as_scores(scores)
        if self.exclude_seen:
            scores = np.array(scores, copy=True)  # never modify the model's array
            np.put_along_axis(scores, prefix, -np.inf, axis=1)  # padding 0 hits column 0 only
            self.repeats_excluded += int((prefix == targets[:, None]).any(1).sum())
        return ranks_from_scores(scores, targets, self.ties), top_items(scores, self.top_k)

    def rank_sampled(self, scores: np.ndarray, targets: np.ndarray, sequence: np.ndarray) -> np.ndarray:
        """Return ranks (R,) of targets among [target, n_negatives unseen random items]."""
        scores = as_scores(scores)  # (R, V + 1)
        check_no_nan(scores)
        n_items = scores.shape[1] - 1
        negs = np.stack([sample_negatives(self.rng, n_items, seq, self.n_negatives) for seq in sequence])  # (R, N)
        cand = np.concatenate([targets[:, None], negs], 1)  # (R, 1 + N)
        cand_scores = np.take_along_axis(scores, cand, 1)  # (R, 1 + N)
        return rank_against(cand_scores[:, 0], cand_scores, self.ties)


RECORD_FIELDS = ("ranks", "items", "events", "prefix_lengths", "session_lengths", "repeats", "top")


@dataclass
class TargetRecords:
    """Per-target results collected over batches: rank, target item, its global event index, lengths."""

    chunks: dict[str, list[np.ndarray]] = field(default_factory=lambda: {name: [] for name in RECORD_FIELDS})

    def add(self, **columns: np.ndarray) -> None:
        """Append one chunk of targets (one array per field of ``RECORD_FIELDS``)."""
        assert set(columns) == set(RECORD_FIELDS), f"record fields {sorted(columns)}"
        for name, values in columns.items():
            self.chunks[name].append(np.asarray(values))

    def column(self, name: str) -> np.ndarray:
        """Return one field over all chunks as a single array."""
        return np.concatenate(self.chunks[name]) if self.chunks[name] else np.zeros(0)


def check_scores(scores, n_rows: int, n_items: int, model_name: str) -> np.ndarray:
    """Return scores as numpy; raise if their shape is not (n_rows, n_items + 1)."""
    scores = as_scores(scores)
    if scores.shape != (n_rows, n_items + 1):
        raise ValueError(f"{model_name} returned scores of shape {scores.shape}, expected {(n_rows, n_items + 1)}")
    return scores


PADDED_EVENTS_PER_ROW = 16  # a batch holds at most batch_size x 16 padded events (rows x its longest session)


def batch_sessions(data: SessionDataset, batch_size: int) -> list[np.ndarray]:
    """Return batches of indices of sessions with a target (length >= 2), longest first.

    A batch is scored for as many steps as its longest session, every row at every step, so
    long sessions go in small batches: at most ``batch_size`` rows and at most
    ``batch_size * PADDED_EVENTS_PER_ROW`` padded events per batch.
    """
    idx = np.flatnonzero(data.lengths >= 2)
    idx = idx[np.argsort(-data.lengths[idx], kind="stable")]
    lengths, budget, batches, start = data.lengths[idx], batch_size * PADDED_EVENTS_PER_ROW, [], 0
    while start < len(idx):
        rows = int(min(batch_size, max(1, budget // lengths[start])))  # lengths[start] is the batch's longest
        batches.append(idx[start : start + rows])
        start += rows
    return batches


def rank_all_targets(
    model: Recommender, data: SessionDataset, idx: np.ndarray, ranker: TargetRanker, out: TargetRecords
) -> None:
    """Rank every event after the first of sessions ``idx`` given its prefix (GRU4Rec protocol)."""
    items, lens = data.padded(idx)  # (B, L), (B,)
    inputs, in_lens = items[:, :-1], lens - 1  # (B, L - 1): the last event is never an input
    steps = 0
    with closing(model.score_steps(inputs, in_lens)) as score_iter:  # closed even on an error
        for t, scores in enumerate(score_iter):  # scores: (B, V + 1)
            steps, rows = t + 1, np.flatnonzero(in_lens > t)
            scores = check_scores(scores, len(idx), data.vocab.size, model.name)
            scores = scores if len(rows) == len(scores) else scores[rows]  # (R, V + 1)
            targets = items[rows, t + 1]  # (R,)
            ranks, top = ranker.rank(scores, targets, inputs[rows, : t + 1], items[rows])
            out.add(ranks=ranks, top=top, items=targets, events=data.offsets[idx[rows]] + t + 1,
                    prefix_lengths=np.full(len(rows), t + 1), session_lengths=lens[rows],
                    repeats=(inputs[rows, : t + 1] == targets[:, None]).any(1))
    if steps != inputs.shape[1]:
        raise ValueError(f"{model.name}.score_steps yielded {steps} steps for inputs of {inputs.shape[1]}")


def rank_last_targets(
    model: Recommender, data: SessionDataset, idx: np.ndarray, ranker: TargetRanker, out: TargetRecords
) -> None:
    """Rank the last item of each sequence ``idx`` given everything before it (leave-one-out)."""
    items, lens = data.padded(idx)  # (B, L), (B,)
    rows = np.arange(len(idx))
    targets = items[rows, lens - 1]  # (B,)
    inputs = items.copy()
    inputs[rows, lens - 1] = 0
    inputs = inputs[:, : int(lens.max()) - 1]  # (B, L - 1)
    scores = check_scores(model.score_last(inputs, lens - 1), len(idx), data.vocab.size, model.name)  # (B, V + 1)
    ranks, top = ranker.rank(scores, targets, inputs, items)
    out.add(ranks=ranks, top=top, items=targets, events=data.offsets[idx] + lens - 1,
            prefix_lengths=lens - 1, session_lengths=lens, repeats=(inputs == targets[:, None]).any(1))


def label_prefix_lengths(prefix_lengths: np.ndarray) -> np.ndarray:
    """Return bucket labels ('1', '2', '3-4', '5-9', '10-19', '20+') for prefix lengths."""
    names = [f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in zip(PREFIX_EDGES, PREFIX_EDGES[1:])]
    names.append(f"{PREFIX_EDGES[-1]}+")
    return np.array(names)[np.searchsorted(PREFIX_EDGES, prefix_lengths, side="right") - 1]


def label_popularity(train_support: np.ndarray, target_items: np.ndarray) -> np.ndarray:
    """Return 'head' / 'tail' / 'unseen' for target items by training support (see module doc)."""
    support = np.asarray(train_support)[1:]
    ranked = np.sort(support)[::-1]
    threshold = max(ranked[max(int(np.ceil(HEAD_SHARE * len(support))) - 1, 0)], 1)
    s = np.asarray(train_support)[target_items]
    return np.where(s == 0, "unseen", np.where(s >= threshold, "head", "tail"))


def summarise_groups(ranks: np.ndarray, labels: np.ndarray, cutoffs) -> dict[str, dict[str, float]]:
    """Return, per label, the number of targets and the metrics over its targets."""
    labels = labels.astype(str)
    return {
        str(label): {"n_targets": int((labels == label).sum()), **metrics_from_ranks(ranks[labels == label], cutoffs)}
        for label in np.unique(labels)
    }


def event_label_groups(data: SessionDataset, events: np.ndarray) -> dict[str, np.ndarray]:
    """Return the target's subdomain (the study's event type) and, with several domains, whether the target's
    domain differs from the previous event's (``cross``) or not (``same``); targets never open a session."""
    groups = {}
    if C.SUBDOMAIN in data.event_labels:
        groups["subdomain"] = data.event_labels[C.SUBDOMAIN][events]
    domains = data.event_labels.get(C.DOMAIN)
    if domains is not None and len(np.unique(domains)) > 1:
        groups["cross_domain"] = np.where(domains[events] != domains[events - 1], "cross", "same")
    return groups


def build_breakdowns(records: TargetRecords, data: SessionDataset, cutoffs, train_support: np.ndarray | None) -> dict:
    """Return metrics by action type, session length, prefix length, repeat or new target and target popularity."""
    ranks = records.column("ranks")
    labels = {
        "session_length": np.where(records.column("session_lengths") < 3, "<3", ">=3"),
        "prefix_length": label_prefix_lengths(records.column("prefix_lengths")),
        "target": np.where(records.column("repeats").astype(bool), "repeat", "new"),  # already in the prefix or not
    }
    events = records.column("events").astype(np.int64)
    if data.actions is not None:
        labels["action"] = np.asarray(data.actions)[events]
    labels.update(event_label_groups(data, events))
    if train_support is not None:
        if len(train_support) != data.vocab.size + 1:
            n = data.vocab.size + 1
            raise ValueError(f"train_support has {len(train_support)} entries, the catalogue needs {n}")
        labels["popularity"] = label_popularity(train_support, records.column("items").astype(np.int64))
    return {name: summarise_groups(ranks, lab, cutoffs) for name, lab in labels.items()}


def describe_protocol(
    cfg: EvaluationConfig, targets: str, exclude_seen: bool, data: SessionDataset, ranker: TargetRanker
) -> dict:
    """Return the protocol record written into every evaluation result."""
    target_text = {"all": "every event after the first (GRU4Rec)", "last": "last item of each sequence (leave-one-out)"}
    if cfg.candidates == "sampled":
        cand_text = f"SAMPLED ({cfg.n_negatives} negatives) - not comparable with full ranking"
    else:
        cand_text = f"full ranking over {data.vocab.size} items"
    return {
        "protocol": f"{cand_text}; targets: {target_text[targets]}",
        "targets": targets,
        "candidates": cfg.candidates,
        "n_negatives": cfg.n_negatives if cfg.candidates == "sampled" else None,
        "seed": cfg.seed,
        "ties": cfg.ties,
        "cutoffs": list(cfg.cutoffs),
        "catalogue_size": data.vocab.size,
        "exclude_seen": exclude_seen,
        "repeat_targets_excluded": ranker.repeats_excluded,
        "sessions": data.n_sessions,
        "sessions_without_target": int((data.lengths < 2).sum()),
    }


def evaluate_model(
    model: Recommender,
    data: SessionDataset,
    cfg: EvaluationConfig,
    *,
    targets: Literal["all", "last"] | None = None,
    train_support: np.ndarray | None = None,
    exclude_seen: bool | None = None,
    progress: bool = False,
    lists: bool = True,
) -> EvaluationResult:
    """Return metrics, breakdowns, analyses and protocol of ``model`` on ``data`` (``None`` = from ``cfg``).

    ``lists``: the report's analyses: keep every target's top-K items for the classification view and
    beyond-accuracy figures (about twice the ranking's own cost), and bootstrap the headline metrics;
    validation during training needs only the metrics.
    """
    targets = targets or TARGETS_BY_PROTOCOL[cfg.protocol]
    if targets not in ("all", "last"):
        raise ValueError(f"targets={targets!r} is not 'all' or 'last'")
    exclude = cfg.exclude_seen if exclude_seen is None else exclude_seen
    ranker = TargetRanker(cfg.ties, exclude, cfg.candidates, cfg.n_negatives, np.random.default_rng(cfg.seed),
                          top_k=max(cfg.cutoffs) if lists else 0)
    rank_batch = rank_all_targets if targets == "all" else rank_last_targets
    records = TargetRecords()
    with torch.no_grad():
        for idx in tqdm(batch_sessions(data, cfg.batch_size), desc=f"evaluate {model.name}", disable=None if progress else True):
            try:
                rank_batch(model, data, idx, ranker, records)
            except ValueError as err:  # add which model and which sessions, then re-raise
                keys = data.session_keys[idx[:3]].tolist()
                raise ValueError(f"evaluate {model.name} on sessions {keys}...: {err}") from err
    if not records.chunks["ranks"]:
        raise ValueError(f"evaluate {model.name}: none of the {data.n_sessions} sequences has 2 or more events")
    return summarise_records(records, data, cfg, train_support, describe_protocol(cfg, targets, exclude, data, ranker), lists)


def summarise_records(records: TargetRecords, data: SessionDataset, cfg: EvaluationConfig,
                      train_support: np.ndarray | None, protocol: dict, analyses: bool = True) -> EvaluationResult:
    """Return the result of ranked targets: metrics, breakdowns, classification view, beyond accuracy, intervals."""
    ranks, top, items = records.column("ranks"), records.column("top"), records.column("items").astype(np.int64)
    full = top.ndim == 2 and top.shape[1] > 0
    k = max(cfg.cutoffs)
    hits, rr = (ranks <= k).astype(np.float64), np.where(ranks <= k, 1.0 / ranks, 0.0)
    return EvaluationResult(
        metrics_from_ranks(ranks, cfg.cutoffs), len(ranks), build_breakdowns(records, data, cfg.cutoffs, train_support),
        protocol,
        classification=classification_view(ranks, items, top[:, 0]) if full else {},
        beyond=beyond_accuracy(top, train_support) if full and train_support is not None else None,
        intervals={f"recall@{k}": bootstrap_interval(hits, cfg.seed), f"mrr@{k}": bootstrap_interval(rr, cfg.seed)}
        if analyses else {},
        target_ranks=ranks,
    )


def make_validator(model: Recommender, valid: SessionDataset, cfg: EvaluationConfig, metric: str) -> Callable[[], float]:
    """Return a callable giving ``metric`` of ``model`` on ``valid`` under ``cfg``: what neural training stops on."""
    def validate() -> float:
        if not np.array_equal(valid.vocab.ids, model.vocab.ids):
            raise ValueError(f"{type(model).__name__}: the validation data is encoded with another item vocabulary than train")
        return evaluate_model(model, valid, cfg, lists=False).metrics[metric]

    return validate
