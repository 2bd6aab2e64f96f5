"""Ingest: raw event partitions (read in parallel with Dask) into one canonical parquet file per day.

Memory holds a few days, never the whole range; a row dated on another day than its file's
goes to its own day's file; rows of days with no readable file are kept apart and counted.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from seqrec import columns as C
from seqrec import io
from seqrec.config import DataConfig, config_to_dict
from seqrec.data import reader
from seqrec.data.reader import sort_event_table
from seqrec.data.schemas import EVENT_ARROW_SCHEMA


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
    """Do ``ingest_events``'s work, writing under ``out`` (a fresh folder)."""
    start = time.perf_counter()
    reads, missing, _ = reader.plan_event_reads(root_path, data)
    days = sorted({part.day for part, _, _ in reads})
    staged = out / "_off_day"
    staged.mkdir(parents=True)
    step = max(1, data.dask_workers)
    reports: list[dict[str, Any]] = []
    rows_by_day: dict[int, int] = {}
    for i in range(0, len(days), step):
        window = set(days[i : i + step])
        results = reader.read_event_partitions([r for r in reads if r[0].day in window], data, client)
        reports += [r for _, r in results]
        write_window(results, out, staged, i, rows_by_day)
    skipped = reader.check_bad_partitions(reports, data.on_bad_partition)
    prints = raw_day_fingerprints([r for r in reports if r["status"] == "ok"], root_path)
    outside = merge_off_day_rows(staged, out, prints, rows_by_day)
    written = [{"day": day, "path": str(out / "events" / f"{day:05d}.parquet"), "rows": rows_by_day.get(day, 0),
                "fingerprint": io.fingerprint_obj([fp, config_to_dict(data)])} for day, fp in prints.items()]
    for day in prints:
        if day not in rows_by_day:  # every row of the day's files belonged to other days
            write_event_day([], out / "events" / f"{day:05d}.parquet")
    return {"days": written, "rows": sum(r["rows"] for r in reports), "rows_outside_days": outside,
            "partitions": reports, "skipped": skipped, "missing_days": missing,
            "fingerprint": io.fingerprint_obj([d["fingerprint"] for d in written]),
            "seconds": round(time.perf_counter() - start, 3)}


def write_window(results: list, out: Path, staged: Path, window: int, rows_by_day: dict[int, int]) -> None:
    """Write the read days of window ``window`` to their files; stage other days' rows under ``staged``.

    Rows dated on another day, or on a day whose files were all bad, are settled once every
    file is read (``merge_off_day_rows``).
    """
    ok_days = {r["day"] for t, r in results if t is not None}
    pieces: dict[int, list] = {}
    for t, _ in results:
        for day, piece in ({} if t is None else reader.split_event_days(t)).items():
            pieces.setdefault(day, []).append(piece)
    for day, group in sorted(pieces.items()):
        if day in ok_days:
            rows_by_day[day] = write_event_day(group, out / "events" / f"{day:05d}.parquet")
            continue
        for j, piece in enumerate(group):
            io.write_table(piece, staged / f"{day:05d}" / f"{window:06d}-{j:03d}.parquet")


def write_event_day(tables: list, path: Path) -> int:
    """Write canonical event tables as one file sorted by (time, user); return its rows."""
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
