"""Model stages: split the sessions by protocol, train one model, evaluate one model, write the comparison."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from seqrec import columns as C
from seqrec import io
from seqrec.config import ConfigError, EvaluationConfig, Section, ServingConfig, TrainingConfig, config_to_dict
from seqrec.evaluation.metrics import make_validator
from seqrec.features.embeddings import ItemEmbeddings
from seqrec.models.base import Recommender, Validate
from seqrec.models.factory import NEURAL_MODELS, build_model
from seqrec.serving.recommend import load_model, save_model


def split_sessions(sessions_path: str, cfg: EvaluationConfig, out_dir: str) -> dict[str, Any]:
    """Split sessionized events by the configured protocol and save the four data sets."""
    from seqrec.evaluation.splits import split_by_time, split_leave_one_out

    events = io.read_table(sessions_path)
    split = split_by_time(events, cfg.test_days, cfg.valid_days) if cfg.protocol == "session" else split_leave_one_out(events)
    return save_split(split, out_dir)


def save_split(split, out_dir: str) -> dict[str, Any]:
    """Write a Split's data sets (.npz), dropped events and report; return their paths."""
    out = Path(out_dir)
    paths = {part: str(io.save_sessions(getattr(split, part), out / f"{part}.npz")) for part in ("train", "valid", "train_full", "test")}
    io.write_table(split.dropped.astype({C.SESSION: str, C.ITEM: str}), out / "dropped.parquet")
    io.write_json(split.report, out / "report.json")
    return {"protocol": split.protocol, "paths": paths, "report": split.report, "split_dir": str(out)}


def train_model(name: str, split_dir: str, section: Section | None, training: TrainingConfig, evaluation: EvaluationConfig,
                out_dir: str, embeddings_path: str | None = None, warm: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train model ``name`` (its config ``section``) on the split's train_full part and save it.

    Neural models first pick their epoch count by early stopping on ``valid`` (trained on
    ``train`` only, so selection never sees its own validation data), then retrain on
    ``train_full`` for that many epochs. Every model ends up on the same vocabulary, so all
    are ranked on exactly the same test targets. Given ``embeddings_path``, a neural model starts
    from those item embeddings (``embeddings_for`` says when the pipeline gives them). Given ``warm`` (a registry
    version of this model, ``seqrec.pipeline.registry.warm_start_plan``), it starts from that model instead and trains
    ``training.finetune_epochs`` on train_full, with no epoch selection; ``init`` in the result says which.
    """
    if embeddings_path and name not in NEURAL_MODELS:
        raise ConfigError(f"item embeddings warm-start {' and '.join(NEURAL_MODELS)}, not {name}")
    out, split = Path(out_dir), Path(split_dir)
    train_full = io.load_sessions(split / "train_full.npz")
    start = time.perf_counter()
    selection: dict[str, Any] = {}
    previous = None if not warm or warm["model"] != name else load_model(warm["path"])
    if previous is not None:
        section = type(section).model_validate({**config_to_dict(section), "epochs": training.finetune_epochs})
    elif name in NEURAL_MODELS and training.patience > 0:
        section, selection = select_epochs(name, split, section, training, evaluation, out, embeddings_path)
    ckpt = checkpoint_path(out, name, split / "train_full.npz", section, training, warm["path"] if previous else embeddings_path)
    model = fit_model(name, section, training, ckpt, train_full, embeddings_path, previous=previous)
    seconds = time.perf_counter() - start
    path = save_model(model, out / f"{name}.pt")
    ckpt.unlink(missing_ok=True)  # the finished model replaces the resume point
    history = history_of(model)
    io.write_json({"history": history, "selection": selection}, out / f"{name}.history.json")
    init = ({"mode": "finetune", "from": warm["version"], "nights_since_full": warm["nights_since_full"],
             **getattr(model, "warm_counts", {})} if previous else {"mode": "scratch", "nights_since_full": 0})
    return {"model": name, "path": str(path), "train_seconds": round(seconds, 2), "train_events": train_full.n_events,
            "history": history, "selection": selection, "warm_start": embeddings_path is not None, "init": init}


def embeddings_for(name: str, section: Section | None, features: dict[str, Any]) -> dict[str, Any] | None:
    """Return the embeddings stage's result that model ``name`` starts from: the pipeline's, when its section asks."""
    if not getattr(section, "init_from_embeddings", False):
        return None
    if "embeddings" not in features:
        raise ConfigError(f"models.{name}.init_from_embeddings=true but no item embeddings were built "
                          "(features.build_graph and features.build_embeddings must be true)")
    return features["embeddings"]


def path_of(stage_result: dict[str, Any] | None) -> str | None:
    """Return the ``path`` of a stage's result, or None without one."""
    return None if stage_result is None else stage_result["path"]


def checkpoint_path(out: Path, name: str, data: Path, section: Section | None, training: TrainingConfig,
                    embeddings_path: str | None) -> Path:
    """Return a resume checkpoint path unique to the training data, model config and warm start."""
    vectors = io.fingerprint_files([Path(embeddings_path)], content=True) if embeddings_path else None
    key = io.fingerprint_obj([io.fingerprint_files([data], content=True), config_to_dict(section) if section else None,
                              config_to_dict(training), vectors])
    return out / "checkpoints" / f"{name}-{key}.ckpt"


def select_epochs(name: str, split: Path, section: Section, training: TrainingConfig, evaluation: EvaluationConfig,
                  out: Path, embeddings_path: str | None) -> tuple[Section, dict]:
    """Return the model's section with its epochs set by early stopping on valid, and the selection record."""
    train, valid = io.load_sessions(split / "train.npz"), io.load_sessions(split / "valid.npz")
    if valid.n_sessions == 0:
        return section, {"skipped": "validation part is empty"}
    ckpt = checkpoint_path(out, f"{name}.select", split / "train.npz", section, training, embeddings_path)
    probe = fit_model(name, section, training, ckpt, train, embeddings_path,
                      lambda model: make_validator(model, valid, evaluation, training.valid_metric))
    ckpt.unlink(missing_ok=True)
    hist = probe.history.to_dict()
    best = max(int(hist["best_epoch"]) + 1, 1)
    tuned = type(section).model_validate({**config_to_dict(section), "epochs": best})
    return tuned, {"best_epoch": best, "metric": hist["metric_name"], "valid_metric": hist["valid_metric"]}


# torch's random generator (weight init, dropout, sampling) and its thread count are process-wide: neural models
# that the flow's task threads train side by side take turns, so a seed gives the same model whatever else runs.
NEURAL_TURN = threading.Lock()


def fit_model(name: str, section: Section | None, training: TrainingConfig, ckpt: Path, train, embeddings_path: str | None,
              validator: Callable[[Recommender], Validate] | None = None, previous: Recommender | None = None) -> Recommender:
    """Return model ``name`` built from its section, warm-started when asked (from ``previous`` or the embeddings),
    and fitted on ``train``."""
    with NEURAL_TURN if name in NEURAL_MODELS else contextlib.nullcontext():
        model = build_model(name, section, training, checkpoint_path=ckpt)
        if previous is not None:
            model.warm_counts = model.init_from_model(previous, train.vocab)
        elif embeddings_path:
            warm_start(model, embeddings_path, train)
        return model.fit(train, validator(model) if validator else None)


def warm_start(model, embeddings_path: str, train) -> int:
    """Initialise a neural model's item embeddings from saved InfoNCE vectors aligned to ``train``'s vocabulary; return rows set."""
    return model.init_item_embeddings(ItemEmbeddings.load(embeddings_path).aligned_to(train.vocab), train.vocab)


def history_of(model) -> dict[str, Any]:
    """Return a model's training history as a dict (empty for count-based models)."""
    hist = getattr(model, "history", None)
    if hist is None:
        losses = getattr(model, "losses", None)
        return {"loss": list(map(float, losses))} if losses else {}
    if isinstance(hist, list):
        return {"loss": [float(h.get("loss", float("nan"))) for h in hist], "epochs": hist}
    return hist.to_dict()


def evaluate_trained_model(model_path: str, split_dir: str, cfg: EvaluationConfig, part: str = "test",
                           keep_ranks: bool = False, serving: ServingConfig | None = None,
                           ranks_path: str | None = None) -> dict[str, Any]:
    """Evaluate a saved model on the split's ``part`` under the configured protocol.

    ``keep_ranks``: write the per-target ranks (``target_ranks``) for the paired tests, to ``ranks_path`` or beside the model.
    ``serving``: build (or load) the model's approximate index beside it when these settings serve it through one,
    and name it in the result (``index``); ``evaluation.index: ann`` ranks through it.
    """
    from seqrec.evaluation.metrics import evaluate_model
    from seqrec.sequences import reencode_sessions

    model = load_model(model_path)
    data = io.load_sessions(Path(split_dir) / f"{part}.npz")
    train = io.load_sessions(Path(split_dir) / ("train_full.npz" if part == "test" else "train.npz"))
    data, reenc = reencode_sessions(data, model.vocab)  # a no-op when the model trained on this split
    ranked, index = ranked_through(model, model_path, train, cfg, serving)
    start = time.perf_counter()
    result = evaluate_model(ranked, data, cfg, train_support=model_support(train, model.vocab))
    out = result.to_dict()
    label = model.label() + (" (ann index)" if index.get("ranked_through") else "")
    out.update(model=model.name, label=label, part=part, reencoding=reenc, eval_seconds=round(time.perf_counter() - start, 3),
               index=index)
    if keep_ranks:
        dest = Path(ranks_path) if ranks_path else Path(model_path).with_suffix(f".{part}_ranks.npy")
        out["target_ranks"] = str(io.write_array(result.target_ranks, dest))
    return out


def ranked_through(model, model_path: str, train, cfg: EvaluationConfig, serving: ServingConfig | None):
    """Return (what evaluation ranks: the model or the model through its index, the serving index's description).

    The index's recall is measured on up to ``serving.recall_sessions`` training sessions (never the evaluated part).
    """
    from seqrec.serving.indexes import IndexedRecommender, index_for, uses_ann

    serving = serving or ServingConfig(index="exact")
    if cfg.index == "ann":
        serving = serving.model_copy(update={"index": "ann"})
    if not uses_ann(model, serving):
        return model, {"index": "exact"}
    rows = np.random.default_rng(cfg.seed).permutation(np.flatnonzero(train.lengths > 0))[: serving.recall_sessions]
    ann = index_for(model, model_path, serving, sample=train.padded(np.sort(rows)), sample_name="training sessions")
    through = cfg.index == "ann"
    return (IndexedRecommender(model, ann, max(cfg.cutoffs)) if through else model), {**ann.describe(), "ranked_through": through}


def evaluate_trained(trained: dict[str, Any], split_dir: str, cfg: EvaluationConfig,
                     serving: ServingConfig | None = None) -> dict[str, Any]:
    """Return ``train_model``'s result evaluated on the test part, with its training time and history."""
    result = evaluate_trained_model(trained["path"], split_dir, cfg, keep_ranks=True, serving=serving)
    return {**result, "train_seconds": trained["train_seconds"], "history": trained.get("history", {}),
            "selection": trained.get("selection", {})}


def model_support(train, vocab) -> np.ndarray:
    """Return the training support of every item of ``vocab`` (index 0 = padding)."""
    counts = train.item_support()
    idx = train.vocab.encode(vocab.ids[1:])
    return np.concatenate([[0], np.where(idx > 0, counts[idx], 0)]).astype(np.int64)


def embedding_view(embeddings: dict[str, Any] | None, items: int = 5, neighbours: int = 5) -> dict[str, Any] | None:
    """Return the embeddings stage's 2-D map (PNG bytes) and neighbour examples: the items whose nearest
    neighbour is closest, each with its ``neighbours`` nearest; None without embeddings."""
    if not embeddings:
        return None
    table = io.read_table(Path(embeddings["path"]).parent / "nearest_neighbours.parquet")
    first = table[table["rank"] == 1].nlargest(items, "similarity")["item_id"]
    shown = table[table["item_id"].isin(first) & (table["rank"] <= neighbours)].sort_values("rank")
    rows = [{"item": item, **{f"#{int(r['rank'])}": f"{r['neighbour']} ({r['similarity']:.3f})"
                              for _, r in shown[shown["item_id"] == item].iterrows()}} for item in first]
    return {"map_png": Path(embeddings["map"]).read_bytes(), "neighbours": rows}


def write_model_report(results: list[dict[str, Any]], out_dir: str, title: str = "Model comparison",
                       embeddings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the comparison report (markdown, HTML, JSON), with the embeddings' map when given; return its paths."""
    from seqrec.evaluation.comparison import headline_k, render_comparison_html, render_comparison_markdown
    from seqrec.evaluation.sections import label_of, paired_rows

    protocol = results[0]["protocol"] if results else {}
    ranks = {label_of(r): io.read_array(r["target_ranks"]) for r in results if Path(r.get("target_ranks", "")).is_file()}
    paired = paired_rows(results, ranks, headline_k(protocol)) if results else []
    out = Path(out_dir)
    view = embedding_view(embeddings)
    md = io.write_text(render_comparison_markdown(results, protocol, title, paired, view), out / "models.md")
    page = io.write_text(render_comparison_html(results, protocol, title, paired, view), out / "models.html")
    data = io.write_json(results, out / "models.json")
    return {"markdown": str(md), "html": str(page), "json": str(data)}
