"""Data stages: resolve (or generate) the raw root, ingest its event partitions; the raw fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from seqrec import io
from seqrec.config import ConfigError, GeneratorConfig, SeqrecConfig, config_to_dict
from seqrec.data.ingest import ingest_events
from seqrec.data.ingest_days import ingest_one_day, plan_days, settle_days
from seqrec.synthetic.generate import generate_tecd

Progress = Callable[[str, int, int], None]

__all__ = ["resolve_data_root", "generate_data", "ingest_events", "plan_days", "ingest_one_day", "settle_days", "partition_rows", "ingest_note"]


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
    stamp = Path(root) / "_generator" / "config.json"
    wanted = config_to_dict(gen)
    if stamp.is_file() and io.read_json(stamp) == wanted:
        return {"reused": True, "summary": io.read_json(Path(root) / "_generator" / "summary.json")}
    summary = generate_tecd(Path(root), gen, progress)
    io.write_json(wanted, stamp)
    return {"reused": False, "summary": summary}


def partition_rows(ingested: dict[str, Any]) -> list[dict[str, Any]]:
    """Return one row per raw partition ingest read: file, day, rows, status and the reason of a bad one."""
    return [{k: p.get(k) for k in ("file", "day", "rows", "status", "reason")} for p in ingested["partitions"]]


def ingest_note(ingested: dict[str, Any]) -> str:
    """Return the one-line description of an ingest, naming rows kept outside every read day."""
    outside = ingested["rows_outside_days"]
    note = f"; {outside} row(s) dated on days without a readable file kept in events_outside_days.parquet" if outside else ""
    return f"Raw partitions read by ingest{note}"


SEEN_DAYS = "announced_days.json"  # day -> fingerprint of the day partitions already announced


def announce_new_days(root: str, days: list[dict[str, Any]], state_dir: str, emit: Callable[..., Any]) -> list[int]:
    """Announce every ingested day not announced before, or whose files changed since; return those days.

    ``emit(event=, resource=, payload=)`` sends one ``seqrec.partition.arrived`` event per such day (Prefect's
    ``emit_event`` in the flows): resource ``seqrec.partition.<root id>.<day>``, payload root, day, rows and the
    day's fingerprint. What was announced is kept in ``<state_dir>/announced_days.json`` after the events are sent.
    """
    path = Path(state_dir) / SEEN_DAYS
    seen = io.read_json(path) if path.is_file() else {}
    fresh = [d for d in days if seen.get(str(d["day"])) != d["fingerprint"]]
    root_id = io.fingerprint_obj(str(Path(root).resolve()))
    for d in fresh:
        emit(event="seqrec.partition.arrived",
             resource={"prefect.resource.id": f"seqrec.partition.{root_id}.{d['day']}",
                       "prefect.resource.name": f"{root} day {d['day']}", "seqrec.day": str(d["day"])},
             payload={"root": str(root), "day": int(d["day"]), "rows": d.get("rows"), "fingerprint": d["fingerprint"]})
    io.write_json({**seen, **{str(d["day"]): d["fingerprint"] for d in fresh}}, path)
    return [int(d["day"]) for d in fresh]
