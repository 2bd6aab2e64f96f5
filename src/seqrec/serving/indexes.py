"""Which index serves a model, and the approximate one built, measured and stored beside the model file.

``index_for(model, model_path, serving)`` returns None (exact ranking) or an ``AnnIndex``: loaded
from ``<model>.ann`` when it was built from this model's output layer and settings, else built,
measured and saved there. The measurement is the index's recall@k against the exact top-k on sample
sessions (the caller's, e.g. validation prefixes, or random items of the catalogue), with its build
time and memory; below ``serving.ann_min_recall`` its search is widened until it reaches it (each
breadth tried is kept). All of it travels with the index (``AnnIndex.describe()``) into every result
that used it.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from seqrec.config import ServingConfig
from seqrec.models.base import Recommender
from seqrec.serving.ann import AnnIndex, kind_params, tie_aware_recall
from seqrec.serving.topk import DotProductIndex

log = logging.getLogger(__name__)
SAMPLE_MAX_LENGTH = 5  # random sample sessions hold 1..5 items
MAX_WIDEN = 256  # serving.ann_min_recall widens the search to at most this many times the breadth asked
MIN_GAIN = 0.001  # ... and stops when a doubling raises recall by less (the misses are elsewhere)


def index_path(model_path: Path | str) -> Path:
    """Return where the approximate index of the model file at ``model_path`` is stored."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".ann")


def uses_ann(model: Recommender, serving: ServingConfig) -> bool:
    """Return whether ``serving`` ranks this model through the approximate index (dot-product models only)."""
    layer = model.output_layer()
    if layer is None or serving.index == "exact":
        return False
    return serving.index == "ann" or len(layer[0]) - 1 >= serving.exact_max_items


def random_sessions(n_items: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``n`` sessions of 1..5 items drawn uniformly from 1..n_items - 1: items (n, 5), lengths (n,)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, SAMPLE_MAX_LENGTH + 1, n)
    items = rng.integers(1, n_items, (n, SAMPLE_MAX_LENGTH))
    items[np.arange(SAMPLE_MAX_LENGTH)[None, :] >= lengths[:, None]] = 0
    return items, lengths


def sample_queries(model: Recommender, sample: tuple[np.ndarray, np.ndarray], batch: int = 512) -> torch.Tensor:
    """Return the model's query vectors (n, D) for sample sessions (items (n, L) 0-padded, lengths (n,))."""
    items, lengths = sample
    keep = np.flatnonzero(lengths > 0)
    with torch.no_grad():
        parts = [model.query_vectors(items[keep[s : s + batch]], lengths[keep[s : s + batch]]).float().cpu()
                 for s in range(0, len(keep), batch)]
    return torch.cat(parts) if parts else torch.zeros(0, 1)


def measure_recall(ann: AnnIndex, queries: torch.Tensor, k: int, min_recall: float = 0.0, max_widen: int = MAX_WIDEN) -> dict:
    """Return the index's recall@k against the exact top-k over ``queries`` (n, D), and both search rates.

    While the recall is below ``min_recall`` the search is widened (``widen_to``); every breadth tried
    is listed (``calibration``), and the figures are those of the breadth the index keeps.
    """
    exact = DotProductIndex(ann.weight, ann.bias)
    k = min(k, ann.n_items - 1)
    start = time.perf_counter()
    exact_values, _ = exact.search(queries, k)
    exact_s = time.perf_counter() - start
    trials, kept = widen_to(ann, queries, exact_values, min_recall, max_widen)
    return {f"recall@{k}": kept["recall"], "recall_k": k, "recall_queries": len(queries),
            "exact_queries_per_s": round(len(queries) / max(exact_s, 1e-9)),
            "ann_queries_per_s": kept["ann_queries_per_s"], "min_recall": min_recall, "calibration": trials}


def widen_to(ann: AnnIndex, queries: torch.Tensor, exact_values: torch.Tensor,
             min_recall: float, max_widen: int = MAX_WIDEN) -> tuple[list[dict], dict]:
    """Return (the breadth, recall@k and search rate of each try, the try kept): the index is left at the one
    ``kept_trial`` picks.

    The search is doubled while its recall against ``exact_values`` (n, k) is below ``min_recall`` and
    doubling still helps (``next_breadth``), at most ``max_widen`` times the breadth built with.
    """
    widest = min(ann.meta["breadth"] * max_widen, ann.backend.max_breadth())
    trials: list[dict] = []
    while True:
        start = time.perf_counter()
        ann_values, _ = ann.search(queries, exact_values.shape[1])
        trials.append({"breadth": ann.meta["breadth"], "recall": round(tie_aware_recall(ann_values, exact_values), 4),
                       "ann_queries_per_s": round(len(queries) / max(time.perf_counter() - start, 1e-9))})
        wider = next_breadth(trials, min_recall, widest)
        if wider is None:
            break
        ann.set_breadth(wider)
    kept = kept_trial(trials, min_recall)
    ann.set_breadth(kept["breadth"])
    if kept["recall"] < min_recall:
        log.warning("the approximate index reaches recall@%d %.4f (search breadth %d; %s), below serving.ann_min_recall "
                    "%s: its misses are not where a wider search looks; rank exactly or build it with more lists or links",
                    exact_values.shape[1], kept["recall"], kept["breadth"],
                    "the widest tried" if kept is trials[-1] else "wider gained nothing", min_recall)
    return trials, kept


def next_breadth(trials: list[dict], min_recall: float, widest: int) -> int | None:
    """Return the breadth to try after ``trials`` ({breadth, recall} each, in order), or None to stop: the floor
    is reached, the widest was tried, or the last doubling raised recall by less than ``MIN_GAIN``."""
    last = trials[-1]
    if last["recall"] >= min_recall or last["breadth"] >= widest:
        return None
    if len(trials) > 1 and last["recall"] - trials[-2]["recall"] < MIN_GAIN:
        return None
    return min(last["breadth"] * 2, widest)


def kept_trial(trials: list[dict], min_recall: float) -> dict:
    """Return the try whose breadth the index keeps: the last, unless it missed the floor and gained nothing on
    the one before (then that narrower, faster one)."""
    last = trials[-1]
    if len(trials) > 1 and last["recall"] < min_recall and last["recall"] - trials[-2]["recall"] < MIN_GAIN:
        return trials[-2]
    return last


def build_index(model: Recommender, serving: ServingConfig, sample: tuple[np.ndarray, np.ndarray] | None = None,
                sample_name: str = "") -> AnnIndex:
    """Return a new index over the model's output layer, with its recall measured on ``sample`` (or random sessions)."""
    weight, bias = model.output_layer()
    ann = AnnIndex.build(weight, bias, **index_params(serving))
    if sample is not None:
        keep = np.flatnonzero(sample[1] > 0)[: serving.recall_sessions]
        sample = (sample[0][keep], sample[1][keep])
        if not len(keep):
            log.warning("no session of the sample (%s) holds a known item: recall is measured on random sessions",
                        sample_name or "given")
            sample = None
    if sample is None:
        sample = random_sessions(len(weight), serving.recall_sessions, seed=0)
        sample_name = f"{serving.recall_sessions} sessions of 1-{SAMPLE_MAX_LENGTH} random items"
    queries = sample_queries(model, sample)
    ann.meta.update(measure_recall(ann, queries, serving.recall_k, serving.ann_min_recall), recall_sample=sample_name)
    return ann


def index_for(model: Recommender, model_path: Path | str | None, serving: ServingConfig, *,
              sample: tuple[np.ndarray, np.ndarray] | None = None, sample_name: str = "",
              rebuild: bool = False) -> AnnIndex | None:
    """Return the approximate index that serves ``model`` under ``serving``, or None when ranking is exact.

    With ``model_path`` the index is loaded from beside the model file when it matches this model's
    output layer and settings, else built and saved there; without one it is built in memory.
    """
    if not uses_ann(model, serving):
        return None
    weight, bias = model.output_layer()
    path = None if model_path is None else index_path(model_path)
    ann = None if path is None or rebuild else AnnIndex.load(path, weight, bias)
    if ann is not None and same_settings(ann, serving):
        return ann
    log.info("building the approximate index of %s (%d items)%s", model.name, len(weight) - 1,
             "" if path is None else f" into {path}")
    ann = build_index(model, serving, sample, sample_name)
    if path is not None:
        try:
            ann.save(path)
        except OSError as err:  # a read-only model folder: serve from memory, build again next time
            log.warning("could not store the approximate index beside %s (%s); it is used from memory", model_path, err)
    return ann


def index_params(serving: ServingConfig) -> dict:
    """Return ``AnnIndex.build``'s arguments from the serving settings (those of the chosen kind)."""
    return {"kind": serving.ann_kind, "extra": serving.ann_extra, "head": serving.ann_head, **kind_params(serving)}


def same_settings(ann: AnnIndex, serving: ServingConfig) -> bool:
    """Return whether a stored index was built with the settings asked now (else it is rebuilt)."""
    m, asked = ann.meta, index_params(serving)
    if m["kind"] != asked["kind"] or m.get("recall_k") != serving.recall_k or m["extra"] != asked["extra"]:
        return False
    if m.get("min_recall") != serving.ann_min_recall:  # the breadth it was widened to answers another floor
        return False
    if m["head"] not in (0, min(asked["head"], m["items"])):  # 0: a model without bias has no head
        return False
    if m["kind"] == "ivf":
        return asked["lists"] in (0, m["lists"]) and m["probe"] == min(asked["probe"], m["lists"])
    return all(m[key] == asked[key] for key in ("connectivity", "expansion_add", "expansion_search"))


class IndexedRecommender(Recommender):
    """A dot-product model ranked through its approximate index, for evaluation (``evaluation.index: ann``).

    Scores are the model's own for the items the index returns (the ``depth`` best, plus the
    prefix's length so that excluding seen items still leaves ``depth``) and -inf for every other
    item: a target the index misses ranks last, as it would in a served list. Each step's query is
    computed from its prefix (the wrapped model's state is not carried between steps), so an
    evaluation through the index costs about L/2 forward passes per session of length L.
    """

    def __init__(self, model: Recommender, ann: AnnIndex, depth: int):
        self.model, self.ann, self.depth = model, ann, depth
        self.name, self.vocab = model.name, model.vocab

    def label(self) -> str:
        """Return the wrapped model's label: the index is named in the result's ``index`` entry."""
        return self.model.label()

    def fit(self, train, validate=None) -> "IndexedRecommender":
        """Refuse: the index serves a trained model."""
        raise TypeError("IndexedRecommender ranks a trained model; train the model itself")

    def score_last(self, items: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Return scores (B, V) that are the model's own on the index's candidates and -inf elsewhere."""
        with torch.no_grad():
            q = self.model.query_vectors(items, lengths)  # (B, D)
            prefix = torch.as_tensor(np.asarray(items), dtype=torch.int64)
            term = self.model.repeat_term(q, prefix)
            depth = min(self.depth + prefix.shape[1], self.ann.n_items - 1)
            values, idx = self.ann.search(q, depth, repeat=term)
            values = self.model.final_activation(values).float().masked_fill(values == -math.inf, -math.inf)
        scores = torch.full((len(q), self.ann.n_items), -math.inf)
        scores.scatter_(1, idx, values)
        scores[:, 0] = -math.inf  # padding (where rows ran out of candidates)
        return scores.numpy()

    def score_steps(self, items: np.ndarray, lengths: np.ndarray):
        """Yield ``score_last`` after each position t (rows shorter than t + 1 repeat their last step)."""
        items, lengths = np.asarray(items), np.asarray(lengths)
        for t in range(items.shape[1]):
            yield self.score_last(items[:, : t + 1], np.clip(lengths, 1, t + 1))
