"""The ``seqrec`` command line: every pipeline stage on its own, plus ``run`` for the whole flow.

Commands that produce figures accept ``--json`` and then print exactly one JSON object on
stdout (logs and progress go to stderr). Expected errors (bad or missing input, a failed gate,
a held lock) print one line and exit 1; a configuration error exits 2; ``--debug`` shows their
traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from seqrec.cli.parser import build_parser
from seqrec.config import ConfigError


def emit(payload: dict[str, Any], as_json: bool, human: Callable[[dict], str] | None = None) -> None:
    """Print one JSON object (``--json``) or a human-readable summary."""
    if as_json:
        print(json.dumps(payload, default=str, sort_keys=True))
    else:
        print(human(payload) if human else json.dumps(payload, indent=2, default=str))


def known_errors() -> tuple[type[BaseException], ...]:
    """Return the expected errors the CLI reports as one line and exit code 1: bad or missing input, gates, locks."""
    from seqrec.data.importers import ImportFormatError
    from seqrec.data.reader import PartitionError
    from seqrec.io import OutputError
    from seqrec.models.training import CheckpointMismatch
    from seqrec.pipeline.runlock import RunLockedError
    from seqrec.quality.validate import QualityGateError
    from seqrec.serving.recommend import ModelFileError
    from seqrec.serving.registry import RegistryError

    return (PartitionError, OutputError, RunLockedError, QualityGateError, ImportFormatError, ModelFileError,
            CheckpointMismatch, RegistryError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


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
        if args.debug:
            raise
        print(f"seqrec: configuration error: {err}", file=sys.stderr)
        return 2
    except known_errors() as err:  # evaluated only when an exception arrives: imports stay lazy
        if args.debug:
            raise
        print(f"seqrec: {type(err).__name__}: {one_line(err)}", file=sys.stderr)
        return 1
    emit(result, getattr(args, "json", False), HUMAN.get(args.command))
    return 0

