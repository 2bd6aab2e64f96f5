"""Pipeline stages as plain functions: each reads its inputs from disk, writes its outputs
under the run directory and returns a small JSON-able summary (paths, counts, fingerprints).

The Prefect tasks in ``tasks/`` wrap these one to one (same names); the CLI calls them
directly, so every stage works without Prefect.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from seqrec import columns as C
from seqrec import io
from seqrec.config import (
    DataConfig,
    EvaluationConfig,
    GeneratorConfig,
    SeqrecConfig,
    ConfigError,
    SessionConfig,
    config_to_dict,
)

Progress = Callable[[str, int, int], None]


def resolve_data_root(cfg: SeqrecConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Return the raw data root: ``data.root``, or generated data under the run directory."""
    if cfg.data.root is not None:
        root = Path(cfg.data.root).resolve()
        if not root.is_dir():
            raise ConfigError(f"config key 'data.root' = '{root}': not a directory")
        return {"root": str(root), "generated": False}
    root = (cfg.output.run_dir / "data").resolve()
    return {"root": str(root), "generated": True, **generate_data(root, cfg.generator, progress)}


def generate_data(root: Path, gen: GeneratorConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Generate T-ECD data into ``root`` unless the same generator config already wrote it."""
    from seqrec.generate import generate_tecd

    stamp = Path(root) / "_generator" / "config.json"
    wanted = config_to_dict(gen)
    if stamp.is_file() and io.read_json(stamp) == wanted:
        return {"reused": True, "summary": io.read_json(Path(root) / "_generator" / "summary.json")}
    summary = generate_tecd(Path(root), gen, progress)
    io.write_json(wanted, stamp)
    return {"reused": False, "summary": summary}


def day_of(timestamps: pd.Series) -> np.ndarray:
    """Return the day number of microsecond timestamps since day 0."""
    return (timestamps.to_numpy(np.int64) // C.MICROS_PER_DAY).astype(np.int64)


def raw_day_fingerprints(partitions: list[dict[str, Any]], root: Path) -> dict[int, str]:
    """Return, per day, a fingerprint of the raw files of that day (all domains)."""
    by_day: dict[int, list[Path]] = {}
    for p in partitions:
        by_day.setdefault(int(p["day"]), []).append(Path(root) / p["file"])
    return {day: io.fingerprint_files(files) for day, files in sorted(by_day.items())}


def ingest_events(root: str, data: DataConfig, out_dir: str, client=None) -> dict[str, Any]:
    """Load the raw event partitions (Dask) and write one canonical parquet file per day, sorted by (time, user).

    Streams: ``data.dask_workers`` days are read at a time (every domain's file of those days in
    parallel) and written before the next days are read, so memory holds a few days, never the
    whole range. A row whose timestamp falls on another day than its file's is written to its own
    day's file (merged in at the end); rows of a day with no readable file go to
    ``events_outside_days.parquet`` and are counted, never dropped. Bad partitions are judged
    after every file was read, so a "fail" error names all of them. Files are written to a
    sibling folder first and moved into ``out_dir`` only when the whole ingest succeeded: a failed
    ingest leaves ``out_dir`` as it was.
    """
    import tempfile

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        result = ingest_days(Path(root), data, work, client)
        out.mkdir(exist_ok=True)
        for name in ("events", "events_outside_days.parquet"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            if (work / name).exists():
                (work / name).rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for d in result["days"]:
        d["path"] = str(out / "events" / Path(d["path"]).name)
    return result


def ingest_days(root_path: Path, data: DataConfig, out: Path, client=None) -> dict[str, Any]:
    """Do ``ingest_events``'s work, writing under ``out``."""
    from seqrec import reader

    start = time.perf_counter()
    reads, missing, _ = reader.plan_event_reads(root_path, data)
    days = sorted({part.day for part, _, _ in reads})
    staged = out / "_off_day"  # ``out`` is a fresh folder
    staged.mkdir(parents=True)
    step = max(1, data.dask_workers)
    reports: list[dict[str, Any]] = []
    rows_by_day: dict[int, int] = {}
    for i in range(0, len(days), step):
        window = set(days[i : i + step])
        results = reader.read_event_partitions([r for r in reads if r[0].day in window], data, client)
        reports += [r for _, r in results]
        ok_days = {r["day"] for t, r in results if t is not None}
        pieces: dict[int, list] = {}
        for t, _ in results:
            for day, piece in ({} if t is None else reader.split_event_days(t)).items():
                pieces.setdefault(day, []).append(piece)
        for day, group in sorted(pieces.items()):
            if day in ok_days:
                rows_by_day[day] = write_event_day(group, out / "events" / f"{day:05d}.parquet")
            else:  # another day's rows, or a day whose files were all bad: settled once every file is read
                for j, piece in enumerate(group):
                    io.write_table(piece, staged / f"{day:05d}" / f"{i:06d}-{j:03d}.parquet")
    skipped = reader.check_bad_partitions(reports, data.on_bad_partition)
    prints = raw_day_fingerprints([r for r in reports if r["status"] == "ok"], root_path)
    outside = merge_off_day_rows(staged, out, prints, rows_by_day)
    written = [{"day": day, "path": str(out / "events" / f"{day:05d}.parquet"), "rows": rows_by_day.get(day, 0),
                "fingerprint": io.fingerprint_obj([fp, config_to_dict(data)])} for day, fp in prints.items()]
    for day in prints:
        if day not in rows_by_day:  # every row of the day's files belonged to other days
            write_event_day([], out / "events" / f"{day:05d}.parquet")
    return {
        "days": written,
        "rows": sum(r["rows"] for r in reports),
        "rows_outside_days": outside,
        "partitions": reports,
        "skipped": skipped,
        "missing_days": missing,
        "fingerprint": io.fingerprint_obj([d["fingerprint"] for d in written]),
        "seconds": round(time.perf_counter() - start, 3),
    }


def write_event_day(tables: list, path: Path) -> int:
    """Write canonical event tables as one file sorted by (time, user); return its rows."""
    from seqrec.reader import EVENT_ARROW_SCHEMA, sort_event_table

    table = pa.concat_tables(tables) if tables else EVENT_ARROW_SCHEMA.empty_table()
    io.write_table(sort_event_table(table), path)
    return table.num_rows


def merge_off_day_rows(staged: Path, out: Path, prints: dict[int, str], rows_by_day: dict[int, int]) -> int:
    """Merge staged rows into their day's file (rows of days without a file go to ``events_outside_days``).

    Return the count of rows outside every read day; remove the staging folder.
    """
    outside = []
    for folder in sorted(p for p in staged.iterdir() if p.is_dir()):
        day, rows = int(folder.name), pq.read_table(folder)
        if day not in prints:
            outside.append(rows)
            continue
        path = out / "events" / f"{day:05d}.parquet"
        current = [pq.read_table(path)] if day in rows_by_day else []
        rows_by_day[day] = write_event_day(current + [rows], path)
    shutil.rmtree(staged)
    n = sum(t.num_rows for t in outside)
    if n:
        io.write_table(pa.concat_tables(outside), out / "events_outside_days.parquet")
    return n


def sessionize_events(day_paths: list[str], cfg: SessionConfig, out_dir: str) -> dict[str, Any]:
    """Sessionize cleaned day partitions in day order, out of core; write sessions and removed rows."""
    from seqrec.sessions_stream import sessionize_files

    return sessionize_files(sorted(day_paths), cfg, out_dir, bucket_events=cfg.bucket_events)


def split_sessions(sessions_path: str, cfg: EvaluationConfig, out_dir: str) -> dict[str, Any]:
    """Split sessionized events by the configured protocol and save the four data sets."""
    from seqrec.splits import split_by_time, split_leave_one_out

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


def train_model(name: str, split_dir: str, cfg: SeqrecConfig, out_dir: str, embeddings_path: str | None = None) -> dict[str, Any]:
    """Train model ``name`` on the split's train_full part and save it.

    Neural models first pick their epoch count by early stopping on ``valid`` (trained on
    ``train`` only, so selection never sees its own validation data), then retrain on
    ``train_full`` for that many epochs. Every model ends up on the same vocabulary, so all
    are ranked on exactly the same test targets.
    """
    from seqrec.models.factory import NEURAL, build_model
    from seqrec.recommend import save_model

    out, split = Path(out_dir), Path(split_dir)
    train_full = io.load_sessions(split / "train_full.npz")
    start = time.perf_counter()
    selection: dict[str, Any] = {}
    if name in NEURAL and cfg.training.patience > 0:
        cfg, selection = select_epochs(name, split, cfg, out, embeddings_path)
    ckpt = checkpoint_path(out, name, split / "train_full.npz", cfg, embeddings_path)
    model = build_model(name, cfg, checkpoint_path=ckpt)
    if embeddings_path and name in NEURAL:
        warm_start(model, embeddings_path, train_full)
    model.fit(train_full)
    seconds = time.perf_counter() - start
    path = save_model(model, out / f"{name}.pt")
    ckpt.unlink(missing_ok=True)  # the finished model replaces the resume point
    history = history_of(model)
    io.write_json({"history": history, "selection": selection}, out / f"{name}.history.json")
    return {"model": name, "path": str(path), "train_seconds": round(seconds, 2), "train_events": train_full.n_events,
            "history": history, "selection": selection, "warm_start": bool(embeddings_path and name in NEURAL)}


def checkpoint_path(out: Path, name: str, data: Path, cfg: SeqrecConfig, embeddings_path: str | None) -> Path:
    """Return a resume checkpoint path unique to the training data, model config and warm start."""
    key = io.fingerprint_obj([io.fingerprint_files([data], content=True), config_to_dict(cfg.models),
                              config_to_dict(cfg.training), embeddings_path])
    return out / "checkpoints" / f"{name}-{key}.ckpt"


def select_epochs(name: str, split: Path, cfg: SeqrecConfig, out: Path, embeddings_path: str | None) -> tuple[SeqrecConfig, dict]:
    """Return the config with the model's epochs set by early stopping on valid, and the selection record."""
    from seqrec.config import build_config
    from seqrec.models.factory import build_model

    train, valid = io.load_sessions(split / "train.npz"), io.load_sessions(split / "valid.npz")
    if valid.n_sessions == 0:
        return cfg, {"skipped": "validation part is empty"}
    ckpt = checkpoint_path(out, f"{name}.select", split / "train.npz", cfg, embeddings_path)
    probe = build_model(name, cfg, checkpoint_path=ckpt)
    if embeddings_path:
        warm_start(probe, embeddings_path, train)
    probe.fit(train, valid)
    ckpt.unlink(missing_ok=True)
    hist = probe.history.to_dict()
    best = max(int(hist["best_epoch"]) + 1, 1)
    tuned = build_config(cfg.model_dump(mode="json"), {"models": {name: {"epochs": best}}})
    return tuned, {"best_epoch": best, "metric": hist["metric_name"], "valid_metric": hist["valid_metric"]}


def warm_start(model, embeddings_path: str, train) -> None:
    """Initialise a neural model's item embeddings from saved InfoNCE vectors, aligned to the vocab."""
    from seqrec.embeddings import ItemEmbeddings

    emb = ItemEmbeddings.load(embeddings_path)
    aligned = np.zeros((train.vocab.size + 1, emb.vectors.shape[1]), dtype=np.float32)
    idx = emb.vocab.encode(train.vocab.ids[1:])
    aligned[1:][idx > 0] = emb.vectors[idx[idx > 0]]
    if model.name == "gru4rec":
        model.init_item_embeddings(aligned, train.vocab)
    else:
        model.init_item_embeddings(aligned)


def history_of(model) -> dict[str, Any]:
    """Return a model's training history as a dict (empty for count-based models)."""
    hist = getattr(model, "history", None)
    if hist is None:
        losses = getattr(model, "losses", None)
        return {"loss": list(map(float, losses))} if losses else {}
    if isinstance(hist, list):
        return {"loss": [float(h.get("loss", float("nan"))) for h in hist], "epochs": hist}
    return hist.to_dict()


def evaluate_trained_model(model_path: str, split_dir: str, cfg: EvaluationConfig, part: str = "test") -> dict[str, Any]:
    """Evaluate a saved model on the split's ``part`` under the configured protocol."""
    from seqrec.evaluation import evaluate_model
    from seqrec.recommend import load_model
    from seqrec.sequences import reencode_sessions

    model = load_model(model_path)
    data = io.load_sessions(Path(split_dir) / f"{part}.npz")
    train = io.load_sessions(Path(split_dir) / ("train_full.npz" if part == "test" else "train.npz"))
    data, reenc = reencode_sessions(data, model.vocab)  # a no-op when the model trained on this split
    start = time.perf_counter()
    targets = "all" if cfg.protocol == "session" else "last"
    result = evaluate_model(model, data, cfg, targets=targets, train_support=model_support(train, model.vocab))
    out = result.to_dict()
    out.update(model=model.name, label=model.label(), part=part, reencoding=reenc, eval_seconds=round(time.perf_counter() - start, 3))
    return out


def model_support(train, vocab) -> np.ndarray:
    """Return the training support of every item of ``vocab`` (index 0 = padding)."""
    counts = train.item_support()
    idx = train.vocab.encode(vocab.ids[1:])
    return np.concatenate([[0], np.where(idx > 0, counts[idx], 0)]).astype(np.int64)


def write_model_report(results: list[dict[str, Any]], out_dir: str, title: str = "Model comparison") -> dict[str, Any]:
    """Write the comparison report (markdown, HTML, JSON) and return its paths."""
    from seqrec.reports.comparison import render_comparison_html, render_comparison_markdown

    protocol = results[0]["protocol"] if results else {}
    out = Path(out_dir)
    md = io.write_text(render_comparison_markdown(results, protocol, title), out / "models.md")
    page = io.write_text(render_comparison_html(results, protocol, title), out / "models.html")
    data = io.write_json(results, out / "models.json")
    return {"markdown": str(md), "html": str(page), "json": str(data)}


def fingerprint_raw_events(root: str, data: DataConfig) -> str:
    """Return a fingerprint of the raw event files that ``data`` selects (names, sizes, mtimes)."""
    from seqrec.reader import list_partitions

    files = [p.path for d in data.domains for p in list_partitions(Path(root), f"{d}/events", data.first_day, data.last_day)]
    return io.fingerprint_obj([io.fingerprint_files(files), config_to_dict(data)])


def load_receipts(root: str, data: DataConfig) -> tuple[pd.DataFrame | None, pd.Series | None]:
    """Return receipts and the catalogue item ids of the configured domains, when present."""
    from seqrec.reader import load_day_tables, read_table_safe

    base = Path(root)
    catalogue = [read_table_safe(base / d / "items.pq")["item_id"] for d in data.domains if (base / d / "items.pq").is_file()]
    if not (base / "payments" / "receipts").is_dir():
        return None, pd.concat(catalogue) if catalogue else None
    receipts = load_day_tables(base, "payments/receipts", data).table
    return receipts, pd.concat(catalogue) if catalogue else None


def build_item_graph(sessions_path: str, root: str, cfg, out_dir: str, data: DataConfig | None = None) -> dict[str, Any]:
    """Build the co-occurrence graph from sessions and receipts; write edges, matrix, stats, plot."""
    from seqrec.graph import build_cooccurrence_graph, graph_stats, plot_degree_distribution

    receipts, catalogue = load_receipts(root, data or DataConfig())
    graph = build_cooccurrence_graph(Path(sessions_path), receipts, catalogue, cfg, Path(out_dir))  # streamed
    stats = graph_stats(graph)
    plot = plot_degree_distribution(graph, Path(out_dir) / "degree_distribution.png")
    io.write_json(stats, Path(out_dir) / "graph_stats.json")
    return {"graph_dir": str(out_dir), "stats": stats, "plot": str(plot)}


def train_item_embeddings(graph: dict[str, Any], cfg, training, out_dir: str) -> dict[str, Any]:
    """Train InfoNCE item embeddings on the graph; write vectors, neighbours report and 2-D map."""
    from seqrec import embeddings as E
    from seqrec.graph import load_item_graph

    item_graph = load_item_graph(graph["graph_dir"])
    emb = E.train_item_embeddings(item_graph, cfg, device=training.device, progress=training.progress)
    out = Path(out_dir)
    path = emb.save(out / "item_embeddings.npz")
    neighbours = E.nearest_neighbours(emb, k=10)
    io.write_table(neighbours, out / "nearest_neighbours.parquet")
    plot = E.plot_embedding_map(emb, out / "embedding_map.png")
    return {"path": str(path), "items": emb.vocab.size, "dim": int(emb.vectors.shape[1]),
            "history": emb.history, "map": str(plot)}


def fingerprint_sessions(days: list[dict[str, Any]], cfg: SessionConfig) -> str:
    """Return a fingerprint of the sessionized data: the cleaned days' fingerprints plus session settings."""
    return io.fingerprint_obj([[d["fingerprint"] for d in days], config_to_dict(cfg)])
