"""The ``seqrec`` command line: every pipeline stage on its own, plus ``run`` for the whole flow.

Commands that produce figures accept ``--json`` and then print exactly one JSON object on
stdout (logs and progress go to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from seqrec.config import MODEL_NAMES, NEURAL_MODELS, ConfigError, SeqrecConfig, load_config

EPILOG = """Configuration: every command accepts --config FILE.yaml and repeated --set key.path=value
(e.g. --set training.device=cpu --set models.gru4rec.hidden=64). Unknown keys are an error.
Outputs go under output.root/output.run_name (default outputs/default)."""


def emit(payload: dict[str, Any], as_json: bool, human: Callable[[dict], str] | None = None) -> None:
    """Print one JSON object (``--json``) or a human-readable summary."""
    if as_json:
        print(json.dumps(payload, default=str, sort_keys=True))
    else:
        print(human(payload) if human else json.dumps(payload, indent=2, default=str))


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


def add_common(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    """Add --config, --set and (optionally) --json to a sub-command."""
    p.add_argument("--config", type=Path, help="YAML config file (see README: Configuration)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key (repeatable)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


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

    with run_lock(cfg.output.run_dir):  # a second run on the same run directory is refused, not interleaved
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

    events = import_gru4rec_tsv(args.path) if args.format == "gru4rec" else import_user_item_lines(args.path)
    io.write_table(events, args.out)
    return {"rows": len(events), "sessions": int(events["session_id"].nunique()),
            "items": int(events["item_id"].nunique()), "out": str(args.out)}


def read_events_arg(path: Path, fmt: str):
    """Return canonical events with session ids from a TSV, `user item` file or parquet."""
    from seqrec import io
    from seqrec.data.importers import import_gru4rec_tsv, import_user_item_lines

    if fmt == "gru4rec" or (fmt == "auto" and path.suffix in (".tsv", ".txt") and _has_header(path)):
        return import_gru4rec_tsv(path)
    if fmt in ("user-item", "auto") and path.suffix == ".txt":
        return import_user_item_lines(path)
    return io.read_table(path)


def _has_header(path: Path) -> bool:
    """Return whether the file's first line looks like a GRU4Rec TSV header."""
    with open(path, encoding="utf-8") as fh:
        return "SessionId" in fh.readline()


def build_split(args: argparse.Namespace, cfg: SeqrecConfig):
    """Return a Split from --train/--test files (pre-split) or one --events file and the protocol."""
    from seqrec.evaluation.splits import split_by_time, split_leave_one_out, split_presplit

    if args.test is not None:
        return split_presplit(read_events_arg(args.train, args.format), read_events_arg(args.test, args.format),
                              cfg.evaluation.valid_days)
    events = read_events_arg(args.train, args.format)
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
    return stage.evaluate_trained_model(str(model), str(split_dir), cfg.evaluation, part=args.part)


def cmd_recommend(args: argparse.Namespace) -> dict:
    """Recommend the top K items for every session in a file."""
    from seqrec.serving.recommend import load_model, read_sessions_file, recommend

    model = load_model(args.model)
    sessions = read_sessions_file(args.sessions)
    start = time.perf_counter()
    recs = recommend(model, sessions, k=args.k, exclude_seen=not args.keep_seen)
    seconds = time.perf_counter() - start
    return {"recommendations": [list(r) for r in recs], "sessions": len(sessions), "seconds": round(seconds, 4),
            "sessions_per_second": round(len(sessions) / max(seconds, 1e-9), 1),
            "unknown_items": getattr(recs, "unknown_items", 0)}


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
    """Build sessions, the co-occurrence graph and item embeddings from canonical events."""
    from seqrec.pipeline import features as stage

    cfg = config_from(args)
    out = Path(args.out)
    sessions = stage.sessionize_events([str(p) for p in args.events], cfg.features.sessions, str(out / "sessions"))
    result: dict[str, Any] = {"sessions": sessions}
    if cfg.features.build_graph:
        result["graph"] = stage.build_item_graph(sessions["sessions"], str(args.root or ""), cfg.features.graph,
                                                  str(out / "graph"), cfg.data)
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


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="seqrec", description="Raw e-commerce event logs to trained next-item recommenders.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_run_commands, add_data_commands, add_model_commands, add_serving_commands):
        add(sub)
    return parser


def add_run_commands(sub) -> None:
    """Add `generate` (synthetic data) and `run` (the whole pipeline as a Prefect flow)."""
    p = sub.add_parser("generate", help="write a synthetic T-ECD root (layout, schemas, defects)", epilog=EPILOG)
    add_common(p)
    p.add_argument("--out", type=Path, help="root directory to write (default: <run dir>/data)")
    p.add_argument("--events", type=int, help="marketplace events in total (the scale knob)")
    p.add_argument("--days", type=int, help="number of day partitions")
    p.add_argument("--seed", type=int, help="random seed (same seed, same bytes)")
    p.add_argument("--workers", type=int, help="processes writing day partitions")
    p.add_argument("--no-defects", action="store_true", help="switch every documented defect off")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("run", help="run the whole pipeline as a Prefect flow", epilog=EPILOG)
    add_common(p)
    p.add_argument("--data", type=Path, help="T-ECD root to read (default: generate data)")
    p.set_defaults(func=cmd_run)


def add_data_commands(sub) -> None:
    """Add the data stages: `load`, `import`, `validate`, `clean`, `features`."""
    p = sub.add_parser("load", help="load a T-ECD root's events into canonical per-day parquet (Dask)")
    add_common(p)
    p.add_argument("root", type=Path, help="T-ECD root (…/dataset/small)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("import", help="import GRU4Rec TSV or `user item` lines into a canonical table")
    add_common(p)
    p.add_argument("path", type=Path)
    p.add_argument("--format", choices=["gru4rec", "user-item"], required=True)
    p.add_argument("--out", type=Path, required=True, help="parquet file to write")
    p.set_defaults(func=cmd_import)

    for name, func, text in (("validate", cmd_validate, "validate a T-ECD root with the Great Expectations suites"),
                             ("clean", cmd_clean, "clean a T-ECD root; quarantine dropped rows with reasons")):
        p = sub.add_parser(name, help=text)
        add_common(p)
        p.add_argument("root", type=Path, help="T-ECD root")
        p.add_argument("--out", type=Path, required=True, help="output directory (reports, cleaned data)")
        if name == "validate":
            p.add_argument("--stage", choices=["raw", "cleaned"], default="raw", help="raw: findings; cleaned: gates")
        p.set_defaults(func=func)

    p = sub.add_parser("features", help="sessions, co-occurrence graph and InfoNCE item embeddings")
    add_common(p)
    p.add_argument("events", type=Path, nargs="+", help="canonical event parquet files (e.g. day partitions)")
    p.add_argument("--root", type=Path, help="T-ECD root for receipts (co-purchase edges)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_features)


def add_model_commands(sub) -> None:
    """Add `train` and `evaluate` for one named model on your own files."""
    p = sub.add_parser("train", help="train a named model on your data (GRU4Rec TSV, `user item` lines, parquet)")
    add_common(p)
    p.add_argument("model", choices=MODEL_NAMES)
    p.add_argument("--train", type=Path, required=True, help="training events (or all events, split by --protocol)")
    p.add_argument("--test", type=Path, help="test events when already split (GRU4Rec train/test TSVs)")
    p.add_argument("--format", choices=["auto", "gru4rec", "user-item", "parquet"], default="auto")
    p.add_argument("--protocol", choices=["session", "loo"], help="session = GRU4Rec, loo = SASRec leave-one-out")
    p.add_argument("--embeddings", help="item embeddings .npz to warm-start neural models")
    p.add_argument("--out", type=Path, required=True, help="directory for the model, its split and history")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained model (full ranking unless --candidates sampled)")
    add_common(p)
    p.add_argument("model", type=Path, help="model file written by `seqrec train`")
    p.add_argument("--split", type=Path, help="split directory (default: next to the model)")
    p.add_argument("--train", type=Path, help="with --test: evaluate on these files instead")
    p.add_argument("--test", type=Path)
    p.add_argument("--format", choices=["auto", "gru4rec", "user-item", "parquet"], default="auto")
    p.add_argument("--part", choices=["test", "valid"], default="test")
    p.add_argument("--protocol", choices=["session", "loo"])
    p.add_argument("--candidates", choices=["full", "sampled"], help="sampled = paper comparison only (labelled)")
    p.set_defaults(func=cmd_evaluate)


def add_serving_commands(sub) -> None:
    """Add `recommend` (top-K for sessions in a file) and `dashboard` (live replay)."""
    p = sub.add_parser("recommend", help="top-K recommendations for sessions in a file")
    add_common(p)
    p.add_argument("model", type=Path)
    p.add_argument("sessions", type=Path, help="one session per line (item ids separated by spaces or commas)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--keep-seen", action="store_true", help="allow items already in the session")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("dashboard", help="live dashboard: replay the test split against a model; rolling HR/MRR, latency")
    add_common(p, json_flag=False)
    p.add_argument("--run-dir", type=Path, help="run directory with models/*.pt and split/test.npz (default: output.run_dir)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only; no authentication)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("-k", type=int, default=20, help="list length K for HR@K / MRR@K")
    p.set_defaults(func=cmd_dashboard)


def known_errors() -> tuple[type[BaseException], ...]:
    """Return seqrec's own error types that the CLI reports as one line and exit code 1."""
    from seqrec.io import OutputError
    from seqrec.quality.validate import QualityGateError
    from seqrec.data.reader import PartitionError
    from seqrec.pipeline.runlock import RunLockedError

    return PartitionError, OutputError, RunLockedError, QualityGateError


def one_line(err: BaseException) -> str:
    """Return an error's message with its lines joined by " | "."""
    return " | ".join(line.strip() for line in str(err).splitlines() if line.strip())


def describe_run(result: dict) -> str:
    """Return a pipeline run's summary: where the reports are, and Recall@20 / MRR@20 per model."""
    lines = [f"seqrec pipeline finished in {result.get('seconds', 0)} s; run directory {result['run_dir']}", "Reports:"]
    lines += [f"  {name:9s} {path}" for name, path in result["reports"].items()]
    lines.append("Test metrics (full ranking, conservative ties):")
    for model, m in sorted(result["metrics"].items(), key=lambda kv: -kv[1].get("recall@20", 0)):
        lines.append(f"  {model:11s} Recall@20 {m.get('recall@20', float('nan')):.4f}  MRR@20 {m.get('mrr@20', float('nan')):.4f}")
    return "\n".join(lines)


HUMAN = {"run": describe_run}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # The embedded API starts inside this process; give it time on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    if os.environ.get("PREFECT_HOME"):  # Prefect does not create missing parent directories
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except ConfigError as err:
        print(f"seqrec: configuration error: {err}", file=sys.stderr)
        return 2
    except known_errors() as err:  # evaluated only when an exception arrives: imports stay lazy
        print(f"seqrec: {type(err).__name__}: {one_line(err)}", file=sys.stderr)
        return 1
    emit(result, getattr(args, "json", False), HUMAN.get(args.command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
