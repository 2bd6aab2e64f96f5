"""Out-of-core sessionization of day files: the same sessions, ids and filters as
``seqrec.features.sessions.sessionize_partitions``, with memory bounded by a day and a user bucket.

Three passes over the cleaned day files (given in time order):

1. per day (a task each), only user / timestamp / item are read: local sessions
   (``session_bounds``) and the day's item codes are written as small arrays per event; then, in
   this process, days are stitched and sessions numbered exactly as in memory
   (``stitch_sessions``, ``number_sessions``);
2. the support and length filters run on those arrays alone (``np.bincount`` per round), giving
   every event its fate: kept, or removed with a reason and round;
3. per day (a task each), the whole rows are read again, given their session id and fate, and
   spilled into user-range buckets (``bucket_events`` rows each); then per bucket (a task each)
   the rows are sorted by user (stable, so time order holds) and written as that bucket's part
   of ``sessions.parquet/`` (kept) and ``sessions_removed.parquet/`` (removed, with REASON and
   ROUND): two folders of ``part-NNNNN.parquet`` files, one per bucket, replaced as a whole.

The tasks go through a mapper (``seqrec.parallel``): one after another here, or as Dask tasks on a
cluster whose workers see ``out_dir``. Either way the result is the same. Read in file order (as
pyarrow and pandas read a folder), ``sessions.parquet`` is identical to the in-memory result:
sorted by (user, timestamp, input order); each part holds whole users, so whole sessions
(``_parts.json`` says so, for the item graph). ``sessions_removed.parquet`` holds the same rows,
sorted by (user, timestamp) rather than by filter round.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from seqrec import columns as C
from seqrec import io
from seqrec.config import SessionConfig
from seqrec.parallel import Mapper, serial_map
from seqrec.features.sessions import (
    REASON_LENGTH,
    REASON_SUPPORT,
    ROUND,
    check_event_columns,
    gap_micros,
    number_sessions,
    session_bounds,
    stitch_sessions,
)

log = logging.getLogger(__name__)

KEPT, SUPPORT, LENGTH = 0, 1, 2  # an event's fate
REASONS = {SUPPORT: REASON_SUPPORT, LENGTH: REASON_LENGTH}
_FATE, _ROUND = "_fate", "_round"
PARTS_MANIFEST = "_parts.json"  # in a sessions folder: each part holds whole sessions



@dataclass
class DayIndex:
    """Pass 1's output for every day: local session numbers and item codes of the sorted rows."""

    tables: list[pd.DataFrame]  # per day: one row per local session (user, start, end, first, last)
    local: list[np.ndarray]  # per day: (rows,) int32 local session number, in (user, time) order
    items: np.ndarray  # (events,) int32 item code, all days, in each day's (user, time) order
    n_items: int


def save_arrays(folder: Path, prefix: str, **arrays: np.ndarray) -> None:
    """Write each array to ``folder/<prefix>-<name>.npy`` (``seqrec.io.write_array``: atomic, no pickle)."""
    for name, values in arrays.items():
        io.write_array(values, folder / f"{prefix}-{name}.npy")


def load_arrays(folder: Path, prefix: str, *names: str) -> list[np.ndarray]:
    """Return the arrays ``save_arrays`` wrote under ``folder`` with ``prefix``, in the order of ``names``."""
    return [io.read_array(folder / f"{prefix}-{name}.npy") for name in names]


def index_day(day: tuple[int, str], gap_us: int, work: str) -> int:
    """Pass 1 of day ``(p, path)`` (a task): write its local sessions and item codes under ``work/index``; return its rows."""
    p, path = day
    part = io.read_table(path, columns=[C.USER, C.TIMESTAMP, C.ITEM])
    check_event_columns(part, str(path))
    order, loc, sess = session_bounds(part[C.USER].to_numpy(np.int64), part[C.TIMESTAMP].to_numpy(np.int64), gap_us)
    codes, uniques = pd.factorize(part[C.ITEM].to_numpy()[order])
    base = Path(work) / "index"
    io.write_table(sess, base / f"{p:05d}-sessions.parquet")
    io.write_table(pd.DataFrame({C.ITEM: uniques}), base / f"{p:05d}-items.parquet")
    save_arrays(base, f"{p:05d}", local=loc.astype(np.int32), codes=codes.astype(np.int32))
    log.info("sessionize pass 1: %s, %d events, %d local sessions", Path(path).name, len(part), len(sess))
    return len(part)


def load_index(work: Path, days: int) -> DayIndex:
    """Return pass 1's output of ``days`` days, item codes made global (numbered in day order, as first seen)."""
    tables, local, codes, vocab = [], [], [], {}
    for p in range(days):
        base = work / "index" / f"{p:05d}"
        loc, day_codes = load_arrays(base.parent, base.name, "local", "codes")
        uniques = io.read_table(f"{base}-items.parquet")[C.ITEM].to_numpy()
        glob = np.array([vocab.setdefault(u, len(vocab)) for u in uniques], dtype=np.int32)
        tables.append(io.read_table(f"{base}-sessions.parquet"))
        local.append(loc)
        codes.append(glob[day_codes])
    items = np.concatenate(codes) if codes else np.empty(0, np.int32)
    return DayIndex(tables, local, items, len(vocab))


def event_sessions(index: DayIndex, final: np.ndarray) -> np.ndarray:
    """Return every event's final session id, days in order."""
    offsets = np.cumsum([0] + [len(t) for t in index.tables])
    return np.concatenate([final[offsets[p] + loc] for p, loc in enumerate(index.local)]) if index.local else np.empty(0, np.int64)


def filter_fates(sessions: np.ndarray, items: np.ndarray, n_sessions: int, n_items: int, cfg: SessionConfig
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """Pass 2: return (fate per event, filter round that removed it or 0, rounds run).

    Same rule as ``seqrec.features.sessions.filter_sessions``: per round, items with fewer than
    ``min_item_support`` kept events go, then sessions with fewer than ``min_session_length``.
    """
    fate = np.zeros(len(items), dtype=np.int8)
    rounds = np.zeros(len(items), dtype=np.int16)
    rnd = 0
    while True:
        rnd += 1
        removed = 0
        for reason, keys, size, minimum in ((SUPPORT, items, n_items, cfg.min_item_support),
                                            (LENGTH, sessions, n_sessions, cfg.min_session_length)):
            if minimum <= 1:
                continue
            alive = fate == KEPT
            counts = np.bincount(keys[alive], minlength=size)
            drop = alive & (counts[keys] < minimum)
            fate[drop], rounds[drop] = reason, rnd
            removed += int(drop.sum())
        if cfg.filter_mode == "once" or removed == 0:
            return fate, rounds, rnd


def count_fates(users: np.ndarray, sessions: np.ndarray, fate: np.ndarray, rounds: np.ndarray, n_sessions: int) -> dict[str, int]:
    """Return the counts of ``seqrec.features.sessions.count_sessionization`` from the compact arrays."""
    kept = fate == KEPT
    alive_sessions = np.bincount(sessions[kept], minlength=n_sessions) > 0
    lost = ~alive_sessions
    last = np.zeros(n_sessions, dtype=np.int32)  # the last removal of a lost session: (round, reason) order
    gone = ~kept
    np.maximum.at(last, sessions[gone], rounds[gone].astype(np.int32) * 2 + (fate[gone] == LENGTH))
    report = {
        "events_in": len(fate), "sessions_in": n_sessions, "users_in": int(len(np.unique(users))),
        "events_out": int(kept.sum()), "sessions_out": int(alive_sessions.sum()), "events_removed": int(gone.sum()),
        "sessions_removed": int(lost.sum()),
    }
    for code, reason in REASONS.items():
        report[f"events_removed_{reason}"] = int((fate == code).sum())
        report[f"sessions_removed_{reason}"] = int((lost & (last % 2 == (code == LENGTH))).sum())
    return report


def user_buckets(users: np.ndarray, tables: list[pd.DataFrame], local: list[np.ndarray], bucket_events: int) -> np.ndarray:
    """Return the sorted upper user bounds of buckets of about ``bucket_events`` events each (``users``: per local session)."""
    sizes = np.concatenate([np.bincount(loc, minlength=len(t)) for t, loc in zip(tables, local)])
    uniq, inverse = np.unique(users, return_inverse=True)
    per_user = np.bincount(inverse, weights=sizes, minlength=len(uniq))
    cum = np.cumsum(per_user)
    cuts = np.searchsorted(cum, np.arange(bucket_events, cum[-1] if len(cum) else 0, bucket_events), side="left")
    return np.unique(uniq[np.minimum(cuts, len(uniq) - 1)]) if len(uniq) else np.empty(0, np.int64)


def index_and_filter(paths: list[str], cfg: SessionConfig, work: Path, bucket_events: int, mapper: Mapper
                     ) -> tuple[dict[str, Any], np.ndarray]:
    """Passes 1 and 2: return (the counts, the user bounds of the buckets); every day's session ids and fates are
    written to ``work/fates``."""
    gap_us = gap_micros(cfg)
    mapper(index_day, list(enumerate(paths)), gap_us=gap_us, work=str(work))
    index = load_index(work, len(paths))
    root, stitched = stitch_sessions(index.tables, gap_us)
    final = number_sessions(index.tables, root)
    n_sessions = int(final.max()) + 1 if len(final) else 0
    ids = event_sessions(index, final)
    fate, rounds, n_rounds = filter_fates(ids, index.items, n_sessions, index.n_items, cfg)
    users = np.concatenate([t["user"].to_numpy(np.int64) for t in index.tables]) if index.tables else np.empty(0, np.int64)
    report = count_fates(users, ids, fate, rounds, n_sessions)
    report.update(sessions_stitched_across_partitions=stitched, filter_rounds=n_rounds)
    bounds = user_buckets(users, index.tables, index.local, bucket_events)
    start = 0
    for p, loc in enumerate(index.local):
        stop = start + len(loc)
        save_arrays(work / "fates", f"{p:05d}", ids=ids[start:stop], fate=fate[start:stop], rounds=rounds[start:stop])
        start = stop
    return report, bounds


def spill_day(day: tuple[int, str], gap_us: int, bounds: np.ndarray, work: str) -> int:
    """Pass 3a of day ``(p, path)`` (a task): write its rows, sorted by (user, time), with session id and fate, into
    the user buckets ``work/bucket-NNNNN/``; return its rows."""
    p, path = day
    part = io.read_table(path)
    ids, fate, rounds = load_arrays(Path(work) / "fates", f"{p:05d}", "ids", "fate", "rounds")
    # the sort order is recomputed rather than kept from pass 1, which would hold 8 bytes per event for the whole run
    order, _, _ = session_bounds(part[C.USER].to_numpy(np.int64), part[C.TIMESTAMP].to_numpy(np.int64), gap_us)
    ordered = part.iloc[order].reset_index(drop=True)
    ordered[C.SESSION], ordered[_FATE], ordered[_ROUND] = ids, fate, rounds
    bucket = np.searchsorted(bounds, ordered[C.USER].to_numpy(np.int64), side="left")  # sorted: contiguous
    edges = np.searchsorted(bucket, np.arange(len(bounds) + 2))
    for b in range(len(bounds) + 1):
        if edges[b + 1] > edges[b]:
            io.write_table(ordered.iloc[edges[b] : edges[b + 1]], Path(work) / f"bucket-{b:05d}" / f"{p:05d}.parquet")
    return len(part)


def day_schema(paths: list[str]) -> pa.Schema:
    """Return the kept sessions' schema: the day files' columns (their types unified: a column all null in one day
    takes its type from the others) plus SESSION."""
    try:
        schema = pa.unify_schemas([pq.read_schema(p).remove_metadata() for p in paths])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise TypeError(f"sessionize: the day files {paths[0]} ... {paths[-1]} disagree on column types: {err}") from err
    fields = [f for f in schema if not f.name.startswith("__") and f.name != C.SESSION]
    return pa.schema(fields + [pa.field(C.SESSION, pa.int64())])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return ``table``'s columns of ``schema``, in its order and cast to its types."""
    return table.select(schema.names).cast(schema)


def finish_bucket(b: int, work: str, kept_dir: str, removed_dir: str, schema: pa.Schema) -> tuple[int, int]:
    """Pass 3b of bucket ``b`` (a task): sort its rows by user (stable) and write its kept and removed parts; return
    (kept rows, removed rows)."""
    folder = Path(work) / f"bucket-{b:05d}"
    spill = schema.append(pa.field(_FATE, pa.int8())).append(pa.field(_ROUND, pa.int16()))
    tables = [conform(pq.read_table(f), spill) for f in sorted(folder.glob("*.parquet"))]
    rows = pa.concat_tables(tables) if tables else spill.empty_table()
    rows = rows.take(np.argsort(rows.column(C.USER).to_numpy(), kind="stable"))
    fate, rnd = rows.column(_FATE).to_numpy(), rows.column(_ROUND).to_numpy()
    kept, gone = rows.filter(pa.array(fate == KEPT)), rows.filter(pa.array(fate != KEPT))
    reasons = pd.Series(fate[fate != KEPT]).map(REASONS).to_numpy(dtype=object)
    gone = (conform(gone, schema).append_column(C.REASON, pa.array(reasons, pa.string()))
            .append_column(ROUND, pa.array(rnd[fate != KEPT].astype(np.int64))))
    io.write_table(conform(kept, schema), Path(kept_dir) / f"part-{b:05d}.parquet")
    io.write_table(gone, Path(removed_dir) / f"part-{b:05d}.parquet")
    shutil.rmtree(folder, ignore_errors=True)
    return kept.num_rows, gone.num_rows


def write_parts(paths: list[str], cfg: SessionConfig, work: Path, bounds: np.ndarray, out: Path, mapper: Mapper) -> None:
    """Pass 3: spill the days into user buckets, then write each bucket's kept and removed parts; both folders are
    put in place only when every part is written."""
    mapper(spill_day, list(enumerate(paths)), gap_us=gap_micros(cfg), bounds=bounds, work=str(work))
    with io.atomic_dir(out / "sessions.parquet") as kept_dir, io.atomic_dir(out / "sessions_removed.parquet") as removed_dir:
        counts = mapper(finish_bucket, list(range(len(bounds) + 1)), work=str(work), kept_dir=str(kept_dir),
                        removed_dir=str(removed_dir), schema=day_schema(paths))
        io.write_json({"whole_sessions": True, "split_by": "user", "parts": len(counts),
                       "rows": [k for k, _ in counts], "removed_rows": [r for _, r in counts]}, kept_dir / PARTS_MANIFEST)


def sessionize_files(paths: list[str | Path], cfg: SessionConfig, out_dir: str | Path,
                     bucket_events: int = 4_000_000, mapper: Mapper = serial_map) -> dict[str, Any]:
    """Sessionize day files given in time order without holding them all; write sessions and removed rows.

    Returns ``{"sessions": folder, "removed": folder, "report": counts}``; the report has the keys of
    ``seqrec.features.sessions.sessionize_partitions``'s plus ``buckets``. ``mapper`` runs the per-day
    and per-bucket passes (``seqrec.parallel``; its workers must see ``out_dir``).
    """
    if not paths:
        raise ValueError("sessionize_files: no day files given")
    paths = [str(p) for p in paths]
    out = Path(out_dir)
    work = out / "_work"
    shutil.rmtree(work, ignore_errors=True)
    report, bounds = index_and_filter(paths, cfg, work, bucket_events, mapper)
    write_parts(paths, cfg, work, bounds, out, mapper)
    shutil.rmtree(work, ignore_errors=True)
    report.update(partitions=len(paths), gap_minutes=cfg.gap_minutes, gap_rule="new session if gap > gap_minutes",
                  min_item_support=cfg.min_item_support, min_session_length=cfg.min_session_length,
                  filter_mode=cfg.filter_mode, buckets=len(bounds) + 1)
    return {"sessions": str(out / "sessions.parquet"), "removed": str(out / "sessions_removed.parquet"), "report": report}
