"""The ``seqrec`` commands: each runs one stage from its parsed arguments and returns what it printed as JSON."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from seqrec.config import NEURAL_MODELS, ConfigError, SeqrecConfig, load_config


def progress_printer(stage: str, done: int, total: int) -> None:
    """Show progress of long steps on stderr."""
    print(f"\r{stage}: {done}/{total}", end="\n" if done >= total else "", file=sys.stderr, flush=True)


def config_from(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> SeqrecConfig:
    """Return the config from --config, then --set overrides, then command options."""
    sets = list(args.set or [])
    cfg = load_config(args.config, sets)
    if extra:
        from seqrec.config import build_config, parse_overrides

        cfg = build_config(cfg.model_dump(mode="json"), parse_overrides(sets), extra)
    return cfg


# --------------------------------------------------------------------------- commands
def cmd_generate(args: argparse.Namespace) -> dict:
    """Generate a synthetic T-ECD root."""
    from seqrec.config import DefectRates
    from seqrec.synthetic.generate import generate_tecd

    extra: dict[str, Any] = {"generator": {k: v for k, v in
                                           {"events": args.events, "seed": args.seed, "days": args.days, "workers": args.workers}.items()
                                           if v is not None}}
    if args.no_defects:
        extra["generator"]["defects"] = DefectRates.none().model_dump()
    cfg = config_from(args, extra)
    out = args.out or cfg.output.run_dir / "data"
    summary = generate_tecd(Path(out), cfg.generator, progress_printer)
    return {"root": str(out), **summary}


def load_flow(name: str):
    """Return the flow the orchestration layer registers as entry point ``name`` of group ``seqrec.flows``.

    The library never imports ``flows``; the flows plug themselves in (pyproject.toml).
    """
    from importlib.metadata import entry_points

    found = entry_points(group="seqrec.flows", name=name)
    if not found:
        raise RuntimeError(f"no entry point '{name}' in group 'seqrec.flows': install seqrec with its flows (make install)")
    return next(iter(found)).load()


def cmd_run(args: argparse.Namespace) -> dict:
    """Run the whole pipeline as a Prefect flow."""
    extra = {"data": {"root": str(args.data)}} if args.data else {}
    cfg = config_from(args, extra)
    from seqrec.pipeline.runlock import run_lock

    with run_lock(cfg.output.run_dir, cfg.output.lock_wait_seconds):  # a second run on the same run directory is refused, not interleaved
        start = time.perf_counter()
        result = load_flow("pipeline")(config=cfg)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def cmd_load(args: argparse.Namespace) -> dict:
    """Load a T-ECD root's event partitions into canonical per-day parquet files."""
    from seqrec.pipeline import data

    cfg = config_from(args, {"data": {"root": str(args.root)}})
    return data.ingest_events(str(args.root), cfg.data, str(args.out))


def cmd_import(args: argparse.Namespace) -> dict:
    """Import public session data (GRU4Rec TSV or `user item` lines) into a canonical table."""
    from seqrec import io
    from seqrec.data.importers import import_gru4rec_tsv, import_user_item_lines

    if args.format == "gru4rec":
        events = import_gru4rec_tsv(args.path, time_unit=args.time_unit)
    else:
        events = import_user_item_lines(args.path)
    io.write_table(events, args.out)
    return {"rows": len(events), "sessions": int(events["session_id"].nunique()), "items": int(events["item_id"].nunique()),
            "time_unit": events.attrs.get("time_unit", "s (positions)"), "out": str(args.out)}


def read_events_arg(path: Path, fmt: str, time_unit: str = "auto"):
    """Return canonical events with session ids from a TSV, `user item` file or parquet."""
    from seqrec import io
    from seqrec.data.importers import import_gru4rec_tsv, import_user_item_lines

    if fmt == "gru4rec" or (fmt == "auto" and path.suffix in (".tsv", ".txt") and _has_header(path)):
        events = import_gru4rec_tsv(path, time_unit=time_unit)
        if time_unit == "auto":
            print(f"seqrec: {path}: Time read as {events.attrs['time_unit']} (inferred; --time-unit to say)", file=sys.stderr)
        return events
    if fmt in ("user-item", "auto") and path.suffix == ".txt":
        return import_user_item_lines(path)
    return io.read_table(path)


def _has_header(path: Path) -> bool:
    """Return whether the file's first line looks like a GRU4Rec TSV header."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as fh:
        return "SessionId" in fh.readline()


def build_split(args: argparse.Namespace, cfg: SeqrecConfig):
    """Return a Split from --train/--test files (pre-split) or one --events file and the protocol."""
    from seqrec.evaluation.splits import split_by_time, split_leave_one_out, split_presplit

    if args.test is not None:
        return split_presplit(read_events_arg(args.train, args.format, args.time_unit),
                              read_events_arg(args.test, args.format, args.time_unit),
                              cfg.evaluation.valid_days)
    events = read_events_arg(args.train, args.format, args.time_unit)
    if cfg.evaluation.protocol == "loo":
        return split_leave_one_out(events)
    return split_by_time(events, cfg.evaluation.test_days, cfg.evaluation.valid_days)


def protocol_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return evaluation overrides from --protocol / --candidates options."""
    ev: dict[str, Any] = {}
    if getattr(args, "protocol", None):
        ev["protocol"] = args.protocol
    if getattr(args, "candidates", None):
        ev["candidates"] = args.candidates
    return {"evaluation": ev} if ev else {}


def cmd_train(args: argparse.Namespace) -> dict:
    """Train one named model on user files; save the model and the split next to it."""
    from seqrec.models.factory import model_section
    from seqrec.pipeline import models as stage

    cfg = config_from(args, protocol_overrides(args))
    section = model_section(cfg.models, args.model)
    if args.embeddings and args.model not in NEURAL_MODELS:
        raise ConfigError(f"--embeddings warm-starts {' and '.join(NEURAL_MODELS)}, not {args.model}")
    if getattr(section, "init_from_embeddings", False) and not args.embeddings:
        raise ConfigError(f"models.{args.model}.init_from_embeddings=true needs --embeddings FILE")
    out = Path(args.out)
    split = stage.save_split(build_split(args, cfg), str(out / "split"))
    return stage.train_model(args.model, split["split_dir"], section, cfg.training, cfg.evaluation, str(out), args.embeddings)


def cmd_evaluate(args: argparse.Namespace) -> dict:
    """Evaluate a trained model on the split saved by `seqrec train` (or given files)."""
    from seqrec.pipeline import models as stage

    cfg = config_from(args, protocol_overrides(args))
    model = Path(args.model)
    split_dir = args.split or model.parent / "split"
    if args.test is not None:
        split_dir = Path(stage.save_split(build_split(args, cfg), str(model.parent / "split_eval"))["split_dir"])
    return stage.evaluate_trained_model(str(model), str(split_dir), cfg.evaluation, part=args.part, serving=cfg.serving)


def cmd_tune(args: argparse.Namespace) -> dict:
    """Search one model's settings as the tune flow: on a given split, or on --train/--test files split here."""
    from seqrec.pipeline import models as stage

    tuning = {"tuning": {key: value for key, value in (("trials", args.trials), ("timeout_minutes", args.timeout_minutes),
                                                       ("parallel", args.parallel)) if value is not None}}
    cfg = config_from(args, {**protocol_overrides(args), **tuning})
    if (args.split is None) == (args.train is None):
        raise ConfigError("seqrec tune needs either --split DIR or --train FILE (with --test FILE when already split)")
    if args.split is not None:
        if not (args.split / "valid.npz").is_file():
            raise FileNotFoundError(f"{args.split}: not a split directory (no valid.npz); `seqrec train` writes one in <out>/split")
        split_dir = str(args.split.resolve())
    else:
        split_dir = stage.save_split(build_split(args, cfg), str((cfg.output.run_dir / "tune" / args.model / "split").resolve()))["split_dir"]
    result = load_flow("tune")(model=args.model, split_dir=split_dir, config=cfg)
    keys = ("model", "study", "storage", "metric", "trials", "states", "counted", "budget", "best", "importances", "test",
            "best_config", "markdown", "html", "json", "plot", "resumed")
    return {key: result[key] for key in keys}


def serving_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the serving options given on the command line as config overrides."""
    keys = {"index": "index", "host": "host", "port": "port"}
    return {"serving": {key: getattr(args, opt) for opt, key in keys.items() if getattr(args, opt, None) is not None}}


def cmd_recommend(args: argparse.Namespace) -> dict:
    """Recommend the top K items for every session in a file (through the model's index when serving.index asks)."""
    from seqrec.serving.indexes import index_for
    from seqrec.serving.recommend import load_model, read_sessions_file, recommend

    cfg = config_from(args, serving_overrides(args))
    model = load_model(args.model)
    sessions = read_sessions_file(args.sessions)
    index = index_for(model, args.model, cfg.serving)
    start = time.perf_counter()
    recs = recommend(model, sessions, k=args.k, exclude_seen=not args.keep_seen, index=index)
    seconds = time.perf_counter() - start
    return {"recommendations": [list(r) for r in recs], "sessions": len(sessions), "seconds": round(seconds, 4),
            "sessions_per_second": round(len(sessions) / max(seconds, 1e-9), 1),
            "unknown_items": getattr(recs, "unknown_items", 0), "index": recs.index}


def cmd_index(args: argparse.Namespace) -> dict:
    """Build (or load) a dot-product model's approximate index beside its file; report its recall, time and memory."""
    from seqrec.serving.indexes import index_for, index_path
    from seqrec.serving.recommend import ModelFileError, encode_sessions, load_model, model_vocab, read_sessions_file

    cfg = config_from(args, {"serving": {"index": "ann"}})
    model = load_model(args.model)
    if model.output_layer() is None:
        raise ModelFileError(f"{args.model}: a {model.name} model has no dot-product output layer; it is always ranked exactly")
    sample, name = None, ""
    if args.sessions is not None:
        enc = encode_sessions(read_sessions_file(args.sessions), model_vocab(model))
        if not (enc.lengths > 0).any():
            raise ValueError(f"{args.sessions}: no session holds an item of the model's catalogue "
                             f"({enc.unknown_items} unknown ids); recall would be measured on nothing")
        sample, name = (enc.items, enc.lengths), f"sessions of {args.sessions}"
    index = index_for(model, args.model, cfg.serving, sample=sample, sample_name=name, rebuild=args.rebuild)
    return {"model": str(args.model), "path": str(index_path(args.model)), **index.describe()}


def cmd_serve(args: argparse.Namespace) -> dict:
    """Serve recommendations over HTTP for a model file or a registry's current version until interrupted."""
    from seqrec.serving.http import serve

    cfg = config_from(args, serving_overrides(args))
    serve(args.target, cfg.serving)
    return {"target": str(args.target), "stopped": True}


def cmd_validate(args: argparse.Namespace) -> dict:
    """Validate a T-ECD root's tables and event partitions with the Great Expectations suites."""
    from seqrec.pipeline import quality

    cfg = config_from(args, {"data": {"root": str(args.root)}})
    return quality.validate_root(str(args.root), args.stage, cfg, str(args.out))


def cmd_clean(args: argparse.Namespace) -> dict:
    """Clean a T-ECD root by the configured policy; quarantine every dropped row with its reason."""
    from seqrec.pipeline import quality

    cfg = config_from(args, {"data": {"root": str(args.root)}})
    return quality.clean_root(str(args.root), cfg, str(args.out))


def cmd_features(args: argparse.Namespace) -> dict:
    """Build sessions, the co-occurrence graph and item embeddings from canonical events (the sessions' and the graph's
    buckets on the workers of ``data.dask_address``, when set)."""
    from seqrec.pipeline import features as stage

    cfg = config_from(args)
    out, address = Path(args.out), cfg.data.dask_address
    sessions = stage.sessionize_events([str(p) for p in args.events], cfg.features.sessions, str(out / "sessions"), address)
    result: dict[str, Any] = {"sessions": sessions}
    if cfg.features.build_graph:
        result["graph"] = stage.build_item_graph(sessions["sessions"], str(args.root or ""), cfg.features.graph,
                                                  str(out / "graph"), cfg.data, address)
        if cfg.features.build_embeddings:
            result["embeddings"] = stage.train_item_embeddings(result["graph"], cfg.features.embeddings, cfg.training,
                                                                str(out / "embeddings"))
    return result


def cmd_dashboard(args: argparse.Namespace) -> dict:
    """Serve the live recommendation dashboard for a run directory until interrupted."""
    from seqrec.serving.dashboard.app import run_dashboard

    run_dir = args.run_dir or config_from(args).output.run_dir
    run_dashboard(Path(run_dir), host=args.host, port=args.port, k=args.k)
    return {"run_dir": str(run_dir), "stopped": True}
