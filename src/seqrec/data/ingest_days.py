"""Ingest day by day, for the flows: each day's raw partitions become their own step, cached on that day's files.

``plan_days`` lists the days of the window (``data.window_days``: the last N days that have files, or every
day) with a fingerprint of each day's raw files; ``ingest_one_day`` reads one day's partitions (every domain,
in parallel with Dask) into ``own/<day>.parquet`` and puts the rows dated on other days aside
(``strays/<day>.parquet``); ``settle_days`` then judges bad partitions over all days (a "fail" error names
every bad file), merges stray rows into their own day's file (``events/<day>.parquet``, a day whose fingerprint
then covers its strays' sources too) or, for days without a readable file, into ``events_outside_days.parquet``,
and returns what ``seqrec.data.ingest.ingest_events`` returns. A night with one new day reads that day only; a
day whose files changed is read again. Same rows and files as the one-step ingest (tested).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from seqrec import io
from seqrec.config import DataConfig, config_to_dict
from seqrec.data import reader
from seqrec.data.ingest import write_event_day


def plan_days(root: str, data: DataConfig) -> dict[str, Any]:
    """Return the window's days, each with the fingerprint of its raw files (all domains), and the missing days."""
    first, last = reader.window_range(Path(root), data)
    cfg = data.model_copy(update={"first_day": first, "last_day": last})
    reads, missing, _ = reader.plan_event_reads(Path(root), cfg)
    files: dict[int, list[Path]] = {}
    for part, _, _ in reads:
        files.setdefault(part.day, []).append(part.path)
    days = [{"day": day, "fingerprint": io.fingerprint_obj([io.fingerprint_files(paths), config_to_dict(data)])}
            for day, paths in sorted(files.items())]
    return {"days": days, "missing_days": missing, "window": [first, last]}


def ingest_one_day(root: str, day: int, data: DataConfig, out_dir: str) -> dict[str, Any]:
    """Read day ``day``'s raw partitions; write its rows to ``own/`` and rows dated on other days to ``strays/``."""
    cfg = data.model_copy(update={"first_day": day, "last_day": day})
    reads, _, _ = reader.plan_event_reads(Path(root), cfg)
    results = reader.read_event_partitions(reads, cfg)
    pieces: dict[int, list[pa.Table]] = {}
    for table, _ in results:
        for d, piece in ({} if table is None else reader.split_event_days(table)).items():
            pieces.setdefault(d, []).append(piece)
    out = Path(out_dir)
    own = out / "own" / f"{day:05d}.parquet"
    rows = write_event_day(pieces.pop(day, []), own)
    strays = out / "strays" / f"{day:05d}.parquet"
    if pieces:
        io.write_table(pa.concat_tables([p for group in pieces.values() for p in group]), strays)
    else:
        strays.unlink(missing_ok=True)
    return {"day": day, "own": str(own), "rows": rows, "strays": str(strays) if pieces else None,
            "stray_rows": sum(p.num_rows for group in pieces.values() for p in group), "partitions": [r for _, r in results]}


def settle_days(days: list[dict[str, Any]], plan: dict[str, Any], data: DataConfig, out_dir: str) -> dict[str, Any]:
    """Judge bad partitions, merge stray rows into their days; return the ingest result (days, rows, partitions...)."""
    start = time.perf_counter()
    reports = [r for d in days for r in d["partitions"]]
    skipped = reader.check_bad_partitions(reports, data.on_bad_partition)
    prints = {p["day"]: p["fingerprint"] for p in plan["days"]}
    ok = {d["day"]: d for d in days if any(r["status"] == "ok" for r in d["partitions"])}
    incoming, sources, outside = gather_strays(days, ok, prints)
    out, written = Path(out_dir), []
    for day, d in sorted(ok.items()):
        path, rows, fp = d["own"], d["rows"], prints[day]
        if day in incoming:
            path = str(out / "events" / f"{day:05d}.parquet")
            rows = write_event_day([pq.read_table(d["own"])] + incoming[day], Path(path))
            fp = io.fingerprint_obj([fp, sorted(sources[day])])
        written.append({"day": day, "path": path, "rows": rows, "fingerprint": fp})
    n_outside = write_outside(outside, out / "events_outside_days.parquet")
    return {"days": written, "rows": sum(r["rows"] for r in reports), "rows_outside_days": n_outside, "partitions": reports,
            "skipped": skipped, "missing_days": plan["missing_days"], "window": plan["window"],
            "fingerprint": io.fingerprint_obj([d["fingerprint"] for d in written]),
            "seconds": round(time.perf_counter() - start, 3)}


def gather_strays(days: list[dict[str, Any]], ok: dict[int, dict], prints: dict[int, str]):
    """Return (stray tables per read day, fingerprints of their source days, rows of days without a readable file)."""
    incoming: dict[int, list[pa.Table]] = {}
    sources: dict[int, list[str]] = {}
    outside: list[pa.Table] = []
    for d in days:
        if not d["strays"]:
            continue
        for target, piece in reader.split_event_days(pq.read_table(d["strays"])).items():
            if target in ok:
                incoming.setdefault(target, []).append(piece)
                sources.setdefault(target, []).append(prints[d["day"]])
            else:
                outside.append(piece)
    return incoming, sources, outside


def write_outside(tables: list[pa.Table], path: Path) -> int:
    """Write rows dated on days without a readable file (or remove an earlier file when there are none); return them."""
    n = sum(t.num_rows for t in tables)
    if n:
        io.write_table(pa.concat_tables(tables), path)
    else:
        path.unlink(missing_ok=True)
    return n
