"""Out-of-core sessionization of day files: the same sessions, ids and filters as
``seqrec.features.sessions.sessionize_partitions``, with memory bounded by a day and a user bucket.

Three passes over the cleaned day files (given in time order):

1. per day, only user / timestamp / item are read: local sessions (``session_bounds``) and
   integer item codes are kept as two small arrays per event; days are stitched and sessions
   numbered exactly as in memory (``stitch_sessions``, ``number_sessions``);
2. the support and length filters run on those arrays alone (``np.bincount`` per round), giving
   every event its fate: kept, or removed with a reason and round;
3. per day, the whole rows are read again, given their session id and fate, and spilled into
   user-range buckets (``bucket_events`` rows each); then bucket by bucket (users in order) the
   rows are sorted by user (stable, so time order holds) and appended to ``sessions.parquet``
   (kept) and ``sessions_removed.parquet`` (removed, with REASON and ROUND).

``sessions.parquet`` is therefore identical to the in-memory result: sorted by (user, timestamp,
input order). ``sessions_removed.parquet`` holds the same rows, sorted by (user, timestamp)
rather than by filter round.
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


@dataclass
class DayIndex:
    """Pass 1's output for every day: local session numbers and item codes of the sorted rows."""

    tables: list[pd.DataFrame]  # per day: one row per local session (user, start, end, first, last)
    local: list[np.ndarray]  # per day: (rows,) int32 local session number, in (user, time) order
    items: np.ndarray  # (events,) int32 item code, all days, in each day's (user, time) order
    n_items: int


def index_days(paths: list[Path], gap_us: int) -> DayIndex:
    """Pass 1: read user / timestamp / item of each day; return local sessions and item codes."""
    tables, local, codes, vocab = [], [], [], {}
    for path in paths:
        part = io.read_table(path, columns=[C.USER, C.TIMESTAMP, C.ITEM])
        check_event_columns(part, str(path))
        order, loc, sess = session_bounds(part[C.USER].to_numpy(np.int64), part[C.TIMESTAMP].to_numpy(np.int64), gap_us)
        day_codes, uniques = pd.factorize(part[C.ITEM].to_numpy()[order])
        glob = np.array([vocab.setdefault(u, len(vocab)) for u in uniques], dtype=np.int32)
        tables.append(sess)
        local.append(loc.astype(np.int32))
        codes.append(glob[day_codes])
        log.info("sessionize pass 1: %s, %d events, %d local sessions", path.name, len(part), len(sess))
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


def spill_day(path: Path, p: int, gap_us: int, ids: np.ndarray, fate: np.ndarray, rounds: np.ndarray,
              bounds: np.ndarray, work: Path) -> None:
    """Pass 3a: write day ``p``'s rows, sorted by (user, time), with session id and fate, into user buckets."""
    part = io.read_table(path)
    # the sort order is recomputed rather than kept from pass 1, which would hold 8 bytes per event for the whole run
    order, _, _ = session_bounds(part[C.USER].to_numpy(np.int64), part[C.TIMESTAMP].to_numpy(np.int64), gap_us)
    ordered = part.iloc[order].reset_index(drop=True)
    ordered[C.SESSION], ordered[_FATE], ordered[_ROUND] = ids, fate, rounds
    bucket = np.searchsorted(bounds, ordered[C.USER].to_numpy(np.int64), side="left")  # sorted: contiguous
    edges = np.searchsorted(bucket, np.arange(len(bounds) + 2))
    for b in range(len(bounds) + 1):
        if edges[b + 1] > edges[b]:
            io.write_table(ordered.iloc[edges[b] : edges[b + 1]], work / f"bucket-{b:05d}" / f"{p:05d}.parquet")


class Appender:
    """Appends pandas frames to one parquet file at ``path``; the first frame fixes the schema."""

    def __init__(self, path: Path) -> None:
        self.path, self.writer = path, None

    def append(self, frame: pd.DataFrame) -> None:
        """Append ``frame`` (cast to the file's schema)."""
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        elif table.schema != self.writer.schema:
            table = table.cast(self.writer.schema)
        self.writer.write_table(table)

    def close(self, empty: pd.DataFrame) -> None:
        """Finish the file (one empty table with ``empty``'s columns if nothing was appended)."""
        if self.writer is None:
            self.append(empty)
        self.writer.close()


def write_buckets(work: Path, sessions_path: Path, removed_path: Path, columns: list[str]) -> None:
    """Pass 3b: bucket by bucket, sort rows by user (stable) and append kept / removed rows (both files atomic)."""
    with io.atomic_path(sessions_path) as kept_tmp, io.atomic_path(removed_path) as removed_tmp:
        kept_out, removed_out = Appender(kept_tmp), Appender(removed_tmp)
        for folder in sorted(work.glob("bucket-*")):
            rows = pq.read_table(sorted(str(f) for f in folder.glob("*.parquet"))).to_pandas()
            rows = rows.iloc[np.argsort(rows[C.USER].to_numpy(np.int64), kind="stable")].reset_index(drop=True)
            fate, rnd = rows.pop(_FATE).to_numpy(), rows.pop(_ROUND).to_numpy()
            kept_out.append(rows[fate == KEPT])
            gone = rows[fate != KEPT].assign(**{C.REASON: pd.Series(fate[fate != KEPT]).map(REASONS).to_numpy(),
                                                ROUND: rnd[fate != KEPT].astype(np.int64)})
            removed_out.append(gone)
            shutil.rmtree(folder)
        empty = pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
        kept_out.close(empty.assign(**{C.SESSION: pd.Series(dtype=np.int64)}))
        removed_out.close(empty.assign(**{C.SESSION: pd.Series(dtype=np.int64), C.REASON: pd.Series(dtype=object),
                                          ROUND: pd.Series(dtype=np.int64)}))


def sessionize_files(paths: list[str | Path], cfg: SessionConfig, out_dir: str | Path,
                     bucket_events: int = 4_000_000) -> dict[str, Any]:
    """Sessionize day files given in time order without holding them all; write sessions and removed rows.

    Returns ``{"sessions": path, "removed": path, "report": counts}``; the report has the keys of
    ``seqrec.features.sessions.sessionize_partitions``'s plus ``buckets``.
    """
    if not paths:
        raise ValueError("sessionize_files: no day files given")
    paths = [Path(p) for p in paths]
    out = Path(out_dir)
    gap_us = gap_micros(cfg)
    index = index_days(paths, gap_us)
    root, stitched = stitch_sessions(index.tables, gap_us)
    final = number_sessions(index.tables, root)
    n_sessions = int(final.max()) + 1 if len(final) else 0
    ids = event_sessions(index, final)
    fate, rounds, n_rounds = filter_fates(ids, index.items, n_sessions, index.n_items, cfg)
    del index.items
    users = np.concatenate([t["user"].to_numpy(np.int64) for t in index.tables]) if index.tables else np.empty(0, np.int64)
    report = count_fates(users, ids, fate, rounds, n_sessions)
    bounds = user_buckets(users, index.tables, index.local, bucket_events)
    work = out / "_buckets"
    shutil.rmtree(work, ignore_errors=True)
    start = 0
    for p, (path, loc) in enumerate(zip(paths, index.local)):
        stop = start + len(loc)
        spill_day(path, p, gap_us, ids[start:stop], fate[start:stop], rounds[start:stop], bounds, work)
        start = stop
    columns = [c for c in pq.read_schema(paths[0]).names if not c.startswith("__")]
    sessions_path, removed_path = out / "sessions.parquet", out / "sessions_removed.parquet"
    write_buckets(work, sessions_path, removed_path, columns)
    shutil.rmtree(work, ignore_errors=True)
    report.update(partitions=len(paths), sessions_stitched_across_partitions=stitched, filter_rounds=n_rounds,
                  gap_minutes=cfg.gap_minutes, gap_rule="new session if gap > gap_minutes",
                  min_item_support=cfg.min_item_support, min_session_length=cfg.min_session_length,
                  filter_mode=cfg.filter_mode, buckets=len(bounds) + 1)
    return {"sessions": str(sessions_path), "removed": str(removed_path), "report": report}
