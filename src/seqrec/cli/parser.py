"""The ``seqrec`` argument parser, one function a group of commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from seqrec.cli.commands import (cmd_clean, cmd_dashboard, cmd_evaluate, cmd_features, cmd_generate, cmd_import,
                                 cmd_index, cmd_load, cmd_recommend, cmd_run, cmd_serve, cmd_train, cmd_tune,
                                 cmd_validate)
from seqrec.config import MODEL_NAMES


EPILOG = """Configuration: every command accepts --config FILE.yaml and repeated --set key.path=value
(e.g. --set training.device=cpu --set models.gru4rec.hidden=64). Unknown keys are an error.
Outputs go under output.root/output.run_name (default outputs/default)."""


def add_time_unit(p: argparse.ArgumentParser) -> None:
    """Add --time-unit for commands that read GRU4Rec TSV files."""
    p.add_argument("--time-unit", choices=["auto", "s", "ms", "us"], default="auto",
                   help="what the TSV's Time counts (auto: inferred from the gaps between a session's events, and said)")


def add_common(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    """Add --config, --set and (optionally) --json to a sub-command."""
    p.add_argument("--config", type=Path, help="YAML config file (see README: Configuration)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key (repeatable)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an expected error (bad input, gate, lock)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="seqrec", description="Raw e-commerce event logs to trained next-item recommenders.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_run_commands, add_data_commands, add_model_commands, add_tune_command, add_serving_commands):
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
    add_time_unit(p)
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
    add_time_unit(p)
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
    add_time_unit(p)
    p.add_argument("--part", choices=["test", "valid"], default="test")
    p.add_argument("--protocol", choices=["session", "loo"])
    p.add_argument("--candidates", choices=["full", "sampled"], help="sampled = paper comparison only (labelled)")
    p.set_defaults(func=cmd_evaluate)


TUNE_EPILOG = """The search space is tuning.space (in a --config YAML), or the model's default
(seqrec/models/spaces/MODEL.yaml). Trials train on the train part and are scored on valid
(training.valid_metric) after every epoch; the median pruner stops the ones behind. The best
settings are retrained on train + valid and evaluated on test once. The study is a SQLite file in
<run dir>/tune/MODEL/ (tuning.storage: any database URL): run the same command again to resume a
killed search or to add trials (raise --trials). Report: tune.md / tune.html, best settings: best.yaml.

""" + EPILOG


def add_tune_command(sub) -> None:
    """Add `tune`: a hyperparameter search for one model as a Prefect flow."""
    p = sub.add_parser("tune", help="search a model's settings (Optuna; chosen on valid, tested once); resumable",
                       epilog=TUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("model", choices=[m for m in MODEL_NAMES if m not in ("popularity", "spop", "markov")])
    p.add_argument("--split", type=Path, help="a split directory (`seqrec train`'s <out>/split, a run's split/)")
    p.add_argument("--train", type=Path, help="training events (or all events, split by --protocol); instead of --split")
    p.add_argument("--test", type=Path, help="test events when already split (GRU4Rec train/test TSVs)")
    p.add_argument("--format", choices=["auto", "gru4rec", "user-item", "parquet"], default="auto")
    add_time_unit(p)
    p.add_argument("--protocol", choices=["session", "loo"], help="session = GRU4Rec, loo = SASRec leave-one-out")
    p.add_argument("--trials", type=int, help="trial budget (tuning.trials), stored trials of a resumed search included")
    p.add_argument("--timeout-minutes", type=float, help="wall-clock budget: no new trial starts after it (tuning.timeout_minutes)")
    p.add_argument("--parallel", type=int, help="trials at once, in Dask worker processes (tuning.parallel)")
    p.set_defaults(func=cmd_tune)


def add_serving_commands(sub) -> None:
    """Add `recommend` (top-K for sessions in a file), `index` (the approximate index), `serve` (HTTP), `dashboard`."""
    index_help = "exact: score every item; ann: the model's approximate index; auto: ann from serving.exact_max_items items"
    p = sub.add_parser("recommend", help="top-K recommendations for sessions in a file")
    add_common(p)
    p.add_argument("model", type=Path)
    p.add_argument("sessions", type=Path, help="one session per line (item ids separated by spaces or commas)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--keep-seen", action="store_true", help="allow items already in the session")
    p.add_argument("--index", choices=["exact", "ann", "auto"], help=index_help + " (default: serving.index)")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("index", help="build a model's approximate (ANN) index beside it; print recall@k, build time, memory")
    add_common(p)
    p.add_argument("model", type=Path, help="a GRU4Rec, SASRec or BPR-MF model file")
    p.add_argument("--sessions", type=Path, help="sessions to measure recall on, and to widen the search until it reaches "
                   "serving.ann_min_recall (default: random items; sessions like the served ones measure what they get)")
    p.add_argument("--rebuild", action="store_true", help="build again even when a matching index is stored")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("serve", help="HTTP endpoint: POST /recommend (JSON), GET /health; follows a registry's current version")
    add_common(p, json_flag=False)
    p.add_argument("target", type=Path, help="a model file, or a registry directory (its current version, reloaded on change)")
    p.add_argument("--host", help="interface to bind (default serving.host, 127.0.0.1: no authentication)")
    p.add_argument("--port", type=int, help="port (default serving.port)")
    p.add_argument("--index", choices=["exact", "ann", "auto"], help=index_help + " (default: serving.index)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("dashboard", help="live dashboard: replay the test split against a model; rolling HR/MRR, latency")
    add_common(p, json_flag=False)
    p.add_argument("--run-dir", type=Path, help="run directory with models/*.pt and split/test.npz (default: output.run_dir)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only; no authentication)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("-k", type=int, default=20, help="list length K for HR@K / MRR@K")
    p.set_defaults(func=cmd_dashboard)
