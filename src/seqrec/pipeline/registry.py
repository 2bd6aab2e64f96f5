"""Registry stages: the current version, a saved version evaluated on this run's split (aligned to its
vocabulary), the best candidate registered, and the candidate-vs-current comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from seqrec import io
from seqrec.evaluation.metrics import as_scores, evaluate_model
from seqrec.models.base import Recommender
from seqrec.pipeline.models import evaluate_trained_model
from seqrec.sequences import PAD, ItemVocab, reencode_sessions
from seqrec.serving import registry as R
from seqrec.serving.recommend import load_model


class VocabAligned(Recommender):
    """A fitted model scoring in another vocabulary: unknown input items enter as padding,
    items the model does not know score -inf (a miss when they are the target)."""

    def __init__(self, model: Recommender, vocab: ItemVocab):
        self.model, self.vocab, self.name = model, vocab, model.name
        self.to_model = np.concatenate([[PAD], model.vocab.encode(vocab.ids[1:])]).astype(np.int64)  # (V + 1,)
        self.unknown = self.to_model == PAD  # (V + 1,), padding included

    def fit(self, train, validate=None) -> "VocabAligned":
        """Refuse: an aligned view only scores."""
        raise NotImplementedError("VocabAligned wraps a fitted model; it cannot be trained")

    def realign(self, scores) -> np.ndarray:
        """Return the model's scores (B, V_model + 1) as (B, V + 1) in this vocabulary."""
        out = np.asarray(as_scores(scores), dtype=np.float32)[:, self.to_model]  # (B, V + 1)
        out[:, self.unknown] = -np.inf
        return out

    def score_steps(self, items: np.ndarray, lengths: np.ndarray) -> Iterator[np.ndarray]:
        """Yield realigned scores after each position."""
        for scores in self.model.score_steps(self.to_model[items], lengths):
            yield self.realign(scores)

    def score_last(self, items: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Return realigned scores after each row's full prefix."""
        return self.realign(self.model.score_last(self.to_model[items], lengths))


def evaluate_version(model_path: str, split_dir: str, cfg, part: str = "valid", ranks_path: str | None = None) -> dict[str, Any]:
    """Evaluate a saved model on a split part; a model of another vocabulary is aligned to the split's.

    ``ranks_path``: write the per-target ranks there (the promotion's paired test reads them) and name it as ``ranks``.
    """
    model, train = load_model(model_path), io.load_sessions(Path(split_dir) / "train.npz")
    data_path = Path(split_dir) / f"{part}.npz"
    stamp = {"model_path": str(model_path), "data_fingerprint": io.fingerprint_files([data_path], content=True)}
    if np.array_equal(np.asarray(model.vocab.ids, dtype=str), np.asarray(train.vocab.ids, dtype=str)):
        out = evaluate_trained_model(model_path, split_dir, cfg, part=part, keep_ranks=ranks_path is not None,
                                     ranks_path=ranks_path)
        ranks = out.pop("target_ranks", None)
        return {**out, **stamp, "aligned": None, "ranks": ranks}
    aligned = VocabAligned(model, train.vocab)
    data, reenc = reencode_sessions(io.load_sessions(data_path), train.vocab)
    evaluated = evaluate_model(aligned, data, cfg, train_support=train.item_support())
    ranks = None if ranks_path is None else str(io.write_array(evaluated.target_ranks, Path(ranks_path)))
    counts = {"split_items_unknown_to_model": int(aligned.unknown[1:].sum()), "model_items": model.vocab.size}
    return {**evaluated.to_dict(), **stamp, "model": model.name, "part": part, "reencoding": reenc, "aligned": counts,
            "ranks": ranks}


def current_version_info(registry: str) -> dict[str, Any] | None:
    """Return the registry's current version (name, model, model file), or None before the first."""
    version = R.current_version(registry)
    return None if version is None else {"version": version.name, "model": version.meta["model"],
                                         "model_path": str(version.model_path)}


def model_files(model_path: str) -> list[str]:
    """Return the model file, then its approximate index and description when they were built beside it."""
    from seqrec.serving.indexes import index_path

    ann = index_path(model_path)
    pair = [ann, ann.with_name(ann.name + ".json")]
    return [model_path] + ([str(p) for p in pair] if all(p.is_file() for p in pair) else [])


def register_best(registry: str, results: list[dict[str, Any]], metric: str, config: dict[str, Any], data_fingerprint: str,
                  current: dict[str, Any] | None, baseline: dict[str, Any] | None, trained: list[dict[str, Any]] | None = None,
                  days: list[int] | None = None) -> dict[str, Any]:
    """Register the candidate with the best validation ``metric``, recording what it was compared with and how it was
    trained (``trained``: ``train_model``'s results; ``days``: the days of its data); return its name."""
    chosen = R.select_best(results, metric)
    best = results[chosen]
    init = next((t.get("init") for t in trained or [] if Path(t["path"]) == Path(best["model_path"])), None)
    training = None if init is None else {**init, "days": [min(days), max(days)] if days else None}
    compared = None if current is None else {"version": current["version"], "metrics": baseline["metrics"],
                                             "valid_fingerprint": baseline["data_fingerprint"], "ranks": baseline.get("ranks")}
    version = R.register_version(registry, model_files(best["model_path"]), best["model"], config, data_fingerprint,
                                 best["metrics"], best["data_fingerprint"], compared, best.get("ranks"), training)
    return {"version": version.name, "chosen": chosen, "model": best["model"]}


def compare_with_current(results: list[dict[str, Any]], baseline: dict[str, Any] | None, current: dict[str, Any] | None,
                         registered: dict[str, Any], promoted: bool, metric: str,
                         registry: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """Return the candidate-vs-current rows and their markdown table with the decision (read from ``registry``)."""
    now = None if current is None else {**current, "metrics": baseline["metrics"]}
    rows = R.comparison_rows(results, now, metric, registered["chosen"], promoted)
    decision = None if registry is None else R.read_version(registry, registered["version"]).meta.get("promotion")
    return rows, R.render_comparison_markdown(rows, registered["version"], promoted, metric, decision)


def announce_promotion(registry: str, version: str, emit: Callable[..., Any]) -> bool:
    """Send ``seqrec.model.promoted`` (resource ``seqrec.registry.<version>``, the decision as payload) when ``version``
    was promoted; return whether it was."""
    meta = R.read_version(registry, version).meta
    decision = meta.get("promotion") or {}
    if decision.get("promoted"):
        emit(event="seqrec.model.promoted",
             resource={"prefect.resource.id": f"seqrec.registry.{version}", "prefect.resource.name": f"{meta['model']} {version}",
                       "seqrec.registry": str(Path(registry).resolve())},
             payload={"model": meta["model"], "version": version, **decision})
    return bool(decision.get("promoted"))


def warm_start_plan(registry: str, training) -> dict[str, Any] | None:
    """Return what tonight's retrain starts from: the registry's current version when ``training.init_from`` is
    ``registry`` and it is a neural model, unless ``training.full_retrain_every`` nights have passed since the last
    training from scratch; None means from scratch."""
    from seqrec.config import NEURAL_MODELS

    current = R.current_version(registry) if training.init_from == "registry" else None
    if current is None or current.meta["model"] not in NEURAL_MODELS:
        return None
    nights = int((current.meta.get("training") or {}).get("nights_since_full", 0)) + 1
    if training.full_retrain_every and nights >= training.full_retrain_every:
        return None
    return {"model": current.meta["model"], "path": str(current.model_path), "version": current.name,
            "nights_since_full": nights}


def already_trained(registry: str, data_fingerprint: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """Return the newest version (name, model) when it was trained on these data with this config, else None:
    an unchanged warehouse retrains nothing and registers no new version."""
    versions = R.list_versions(registry)
    newest = versions[-1] if versions else None
    if newest is None or newest.meta.get("data_fingerprint") != data_fingerprint or newest.meta.get("config") != config:
        return None
    return {"version": newest.name, "model": newest.meta["model"]}
