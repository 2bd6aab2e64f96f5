"""Counting the item graph's pairs out of core: co-view pairs of session chunks and co-purchase pairs of
receipt baskets, pre-aggregated per chunk and hash-partitioned on the edge into parquet buckets.

A sessions file whose sessions are contiguous runs in time order is streamed ``chunk_events`` rows
at a time (``SessionOrderError`` when it is not); ``seqrec.features.graph`` aggregates the buckets.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from seqrec import columns as C
from seqrec.config import GraphConfig
from seqrec.features.sessions_stream import PARTS_MANIFEST
from seqrec.io import read_json, read_table, write_table
from seqrec.parallel import Mapper, serial_map
from seqrec.sequences import PAD, ItemVocab, distinct_items

TRANSACTION = "transaction_hash"
RECEIPT_ITEM = "approximate_item_id"
PAIR_COLUMNS = ["coview", "n_coview", "copurchase"]  # summed per edge key (a << 32 | b)
PAIR_DTYPES = {"coview": np.float64, "n_coview": np.int64, "copurchase": np.int64}
_HASH = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing spreads consecutive keys over buckets
MAX_SESSION_ID = 1 << 30  # streamed session ids index a bitmap of this many bytes at most
log = logging.getLogger(__name__)


def group_positions(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (position inside its group, group length) per row of contiguous group codes."""
    new = np.ones(len(groups), dtype=bool)
    new[1:] = groups[1:] != groups[:-1]
    starts = np.flatnonzero(new)
    lengths = np.diff(np.append(starts, len(groups)))
    first = np.repeat(starts, lengths)
    return np.arange(len(groups)) - first, np.repeat(lengths, lengths)


def iter_pair_positions(groups: np.ndarray, max_distance: int) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (left row indices, distance d) of every pair (i, i + d) in one group, d <= max_distance."""
    pos, length = group_positions(groups)
    idx = np.flatnonzero(length - pos > 1)  # rows with a later partner; shrinks as d grows
    for d in range(1, max_distance + 1):
        idx = idx[pos[idx] + d < length[idx]]
        if len(idx) == 0:
            return
        yield idx, d


def sum_pairs(a: np.ndarray, b: np.ndarray, values: dict[str, np.ndarray]) -> pd.DataFrame:
    """Return values summed per undirected edge key (min << 32 | max), self-pairs excluded."""
    keep = a != b
    lo, hi = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
    frame = pd.DataFrame({"key": (lo << 32) | hi, **{k: v[keep] for k, v in values.items()}})
    out = frame.groupby("key", sort=False).sum().reindex(columns=PAIR_COLUMNS, fill_value=0)
    return out.astype(PAIR_DTYPES).reset_index()  # one schema for every spill file


def count_coview_pairs(groups: np.ndarray, items: np.ndarray, cfg: GraphConfig) -> tuple[pd.DataFrame, int]:
    """Return (co-view pair sums per edge of one chunk, self-pairs skipped)."""
    max_len = int(group_positions(groups)[1].max()) if len(groups) else 1
    max_d = min(cfg.window, max_len) if cfg.coview == "window" else max_len
    left, dist = [], []
    for idx, d in iter_pair_positions(groups, max_d):
        left.append(idx)
        dist.append(np.full(len(idx), d, dtype=np.int64))
    left_i = np.concatenate(left) if left else np.empty(0, np.int64)
    d_all = np.concatenate(dist) if dist else np.empty(0, np.int64)
    a, b = items[left_i], items[left_i + d_all]  # (P,), (P,)
    weight = 1.0 / d_all if cfg.distance_weighting else np.ones(len(d_all))
    pairs = sum_pairs(a, b, {"coview": weight, "n_coview": np.ones(len(a), dtype=np.int64)})
    return pairs, int((a == b).sum())


def count_copurchase_pairs(baskets: np.ndarray, items: np.ndarray) -> pd.DataFrame:
    """Return per-edge basket counts of one chunk (rows: distinct items per basket, grouped)."""
    max_len = int(group_positions(baskets)[1].max()) if len(baskets) else 1
    left, right = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for idx, d in iter_pair_positions(baskets, max_len):
        left.append(idx)
        right.append(idx + d)
    left_i, right_i = np.concatenate(left), np.concatenate(right)
    ones = np.ones(len(left_i), dtype=np.int64)
    return sum_pairs(items[left_i], items[right_i], {"copurchase": ones})


def iter_chunks(groups: np.ndarray, chunk_rows: int) -> Iterator[slice]:
    """Yield row slices of about ``chunk_rows`` rows that never split a group."""
    new = np.ones(len(groups), dtype=bool)
    new[1:] = groups[1:] != groups[:-1]
    starts = np.flatnonzero(new)
    chunk = starts // chunk_rows
    cuts = starts[np.flatnonzero(np.diff(chunk)) + 1]
    bounds = np.concatenate([[0], cuts, [len(groups)]]).astype(np.int64)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > lo:
            yield slice(int(lo), int(hi))


def spill_pairs(pairs: pd.DataFrame, spill_dir: Path, name: str, buckets: int) -> None:
    """Write a chunk's pair sums into its hash bucket files ``spill_dir/bucket-NNNN/name.pq``."""
    bucket = ((pairs["key"].to_numpy().astype(np.uint64) * _HASH) >> np.uint64(33)) % np.uint64(buckets)
    order = np.argsort(bucket, kind="stable")
    sorted_buckets = bucket[order]
    for b in np.unique(sorted_buckets):
        lo, hi = np.searchsorted(sorted_buckets, [b, b + 1])
        write_table(pairs.iloc[order[lo:hi]], spill_dir / f"bucket-{int(b):04d}" / f"{name}.pq")


def ordered_session_items(sessions: pd.DataFrame, vocab: ItemVocab) -> tuple[np.ndarray, np.ndarray]:
    """Return (session ids, dense items) sorted by session then time (input order on ties)."""
    for col in (C.SESSION, C.ITEM, C.TIMESTAMP):
        if col not in sessions.columns:
            if col == C.TIMESTAMP:  # optional: rows are then in time order already
                continue
            raise KeyError(f"sessions: no column '{col}'; columns are {list(sessions.columns)}")
        if sessions[col].isna().any():
            raise ValueError(f"sessions: column '{col}' has {int(sessions[col].isna().sum())} null value(s)")
    keys = sessions[C.SESSION].to_numpy(np.int64)
    times = sessions[C.TIMESTAMP].to_numpy(np.int64) if C.TIMESTAMP in sessions else np.zeros(len(keys), np.int64)
    order = np.lexsort((times, keys))
    return keys[order], vocab.encode(sessions[C.ITEM])[order]


def iter_memory_chunks(sessions: pd.DataFrame, vocab: ItemVocab, chunk_events: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (session ids, dense items) chunks of an in-memory frame, sorted by session then time."""
    keys, items = ordered_session_items(sessions, vocab)
    for sl in iter_chunks(keys, chunk_events):
        yield keys[sl], items[sl]


class SessionOrderError(ValueError):
    """A sessions file whose sessions are not contiguous runs in time order (it cannot be streamed)."""


def session_files(path: Path) -> list[str]:
    """Return the parquet files of a sessions file or folder as pyarrow reads them (hidden and ``_`` files skipped)."""
    files = list(ds.dataset(path, format="parquet").files)
    if not files:
        raise FileNotFoundError(f"sessions {path}: no parquet file")
    return files


def check_runs(keys: np.ndarray, times: np.ndarray, seen: np.ndarray, source: str) -> np.ndarray:
    """Return ``seen`` (one flag per session id met so far) with this chunk's sessions added.

    Raises SessionOrderError when a session's rows are not one run in time order, or the ids
    are not non-negative integers below MAX_SESSION_ID (the flags stay under that many bytes).
    """
    new = np.ones(len(keys), dtype=bool)
    new[1:] = keys[1:] != keys[:-1]
    back = ~new[1:] & (times[1:] < times[:-1])
    if back.any():
        raise SessionOrderError(f"{source}: the rows of session {int(keys[1:][back][0])} are not in time order")
    runs = keys[new]
    bad = runs[(runs < 0) | (runs >= MAX_SESSION_ID)]
    if len(bad):
        raise SessionOrderError(f"{source}: session id {int(bad[0])} outside [0, {MAX_SESSION_ID})")
    if runs.max() >= len(seen):
        grown = min(max(int(runs.max()) + 1, 2 * len(seen)), MAX_SESSION_ID)
        seen = np.concatenate([seen, np.zeros(grown - len(seen), dtype=bool)])
    if seen[runs].any() or len(np.unique(runs)) < len(runs):
        raise SessionOrderError(f"{source}: a session's rows are split in two or more runs (rows are not grouped by session)")
    seen[runs] = True
    return seen


def batch_arrays(batch: pa.RecordBatch, vocab: ItemVocab, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (session ids, times, dense items) of one record batch; nulls and unknown items are errors."""
    for name in batch.schema.names:
        if batch.column(name).null_count:
            raise ValueError(f"{source}: column '{name}' has {batch.column(name).null_count} null value(s)")
    keys = batch.column(C.SESSION).cast(pa.int64()).to_numpy(zero_copy_only=False)
    times = (batch.column(C.TIMESTAMP).cast(pa.int64()).to_numpy(zero_copy_only=False) if C.TIMESTAMP in batch.schema.names
             else np.zeros(len(keys), np.int64))
    items = vocab.encode(batch.column(C.ITEM).to_pandas())
    if (items == PAD).any():
        raise ValueError(f"{source}: item {batch.column(C.ITEM)[int(np.argmax(items == PAD))]} is not in the vocabulary "
                         "built from the same file (was it changed while the graph was built?)")
    return keys, times, items


def iter_file_chunks(path: Path, vocab: ItemVocab, chunk_events: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (session ids, dense items) chunks of about ``chunk_events`` rows streamed from parquet.

    A chunk never splits a session: the rows of the last session of a batch wait for the next
    batch (kept as parts, joined once the session ends). Raises SessionOrderError (before or
    while yielding) when the file cannot be streamed.
    """
    seen, parts, source = np.zeros(0, dtype=bool), [], str(path)
    for source in session_files(path):
        reader = pq.ParquetFile(source, read_dictionary=[C.ITEM])
        columns = [c for c in (C.SESSION, C.TIMESTAMP, C.ITEM) if c in reader.schema_arrow.names]
        for batch in reader.iter_batches(batch_size=chunk_events, columns=columns):
            if batch.num_rows == 0:
                continue
            keys, times, items = batch_arrays(batch, vocab, source)
            other = np.flatnonzero(keys != keys[-1])  # rows before the batch's last session
            if len(other) == 0 and (not parts or parts[-1][0][-1] == keys[-1]):
                parts.append((keys, times, items))  # the pending session goes on through this batch
                continue
            if len(other) == 0:  # a new session fills the batch: the pending rows are whole sessions
                done, parts = parts, [(keys, times, items)]
            else:
                cut = int(other[-1]) + 1
                done, parts = parts + [(keys[:cut], times[:cut], items[:cut])], [(keys[cut:], times[cut:], items[cut:])]
            done_keys, done_times, done_items = (np.concatenate(c) for c in zip(*done))
            seen = check_runs(done_keys, done_times, seen, source)
            yield done_keys, done_items
    if parts:
        done_keys, done_times, done_items = (np.concatenate(c) for c in zip(*parts))
        check_runs(done_keys, done_times, seen, source)
        yield done_keys, done_items


def spill_coview(chunks: Iterator[tuple[np.ndarray, np.ndarray]], cfg: GraphConfig, spill_dir: Path,
                 prefix: str = "coview") -> dict[str, int]:
    """Count co-view pairs chunk by chunk into bucket files (named ``prefix-NNNNNN``); return counts."""
    n_chunks = self_pairs = events = 0
    for keys, items in chunks:
        pairs, n_self = count_coview_pairs(keys, items, cfg)
        spill_pairs(pairs, spill_dir, f"{prefix}-{n_chunks:06d}", cfg.buckets)
        n_chunks, self_pairs, events = n_chunks + 1, self_pairs + n_self, events + len(keys)
    return {"session_events": events, "coview_chunks": n_chunks, "coview_self_pairs_skipped": self_pairs}


def spill_part(part: tuple[int, str], vocab: ItemVocab, cfg: GraphConfig, spill_dir: str) -> dict[str, int]:
    """Spill the co-view pairs of one sessions part file ``(i, path)`` that holds whole sessions (a task)."""
    i, path = part
    return spill_coview(iter_file_chunks(Path(path), vocab, cfg.chunk_events), cfg, Path(spill_dir), f"coview-{i:05d}")


def whole_session_parts(sessions: pd.DataFrame | Path) -> list[str] | None:
    """Return the part files of a sessions folder whose manifest says each part holds whole sessions (the sessionize
    stage's output), else None."""
    if isinstance(sessions, pd.DataFrame) or not (sessions / PARTS_MANIFEST).is_file():
        return None
    return session_files(sessions) if read_json(sessions / PARTS_MANIFEST).get("whole_sessions") else None


def link_receipts(receipts: pd.DataFrame, catalogue: pd.Index, cfg: GraphConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (linked basket lines: transaction, item id, unique per basket; unused lines with REASON)."""
    for col in (TRANSACTION, RECEIPT_ITEM):
        if col not in receipts.columns:
            raise KeyError(f"receipts: no column '{col}'; columns are {list(receipts.columns)}")
    lines = receipts[[TRANSACTION, RECEIPT_ITEM]].reset_index(drop=True)
    missing = lines[TRANSACTION].isna() | lines[RECEIPT_ITEM].isna()
    ids = lines[RECEIPT_ITEM].astype(str).where(~missing)
    size = ids.groupby(lines[TRANSACTION]).transform("nunique")
    noise = ~missing & (size > cfg.max_basket)
    unlinked = ~missing & ~noise & ~ids.isin(catalogue)
    duplicate = ~missing & ~noise & ~unlinked & lines.assign(_id=ids).duplicated([TRANSACTION, "_id"])
    reason = np.select([missing, noise, unlinked, duplicate],
                       ["missing_id", "basket_too_large", "unlinked_item", "duplicate_in_basket"], default="")
    linked = pd.DataFrame({TRANSACTION: lines[TRANSACTION][reason == ""], C.ITEM: ids[reason == ""]})
    return linked, lines[reason != ""].assign(**{C.REASON: reason[reason != ""]})


def spill_copurchase(linked: pd.DataFrame, vocab: ItemVocab, cfg: GraphConfig, spill_dir: Path) -> dict[str, int]:
    """Count co-purchase pairs chunk by chunk into bucket files; return counts."""
    codes = pd.factorize(linked[TRANSACTION], sort=True)[0]
    order = np.argsort(codes, kind="stable")
    baskets, items = codes[order], vocab.encode(linked[C.ITEM].to_numpy()[order])
    chunks = 0
    for sl in iter_chunks(baskets, cfg.chunk_events):
        spill_pairs(count_copurchase_pairs(baskets[sl], items[sl]), spill_dir, f"copurchase-{chunks:06d}", cfg.buckets)
        chunks += 1
    pairs_per_basket = np.bincount(baskets) if len(baskets) else np.zeros(0, np.int64)
    return {"copurchase_chunks": chunks, "baskets_with_pairs": int((pairs_per_basket > 1).sum())}


def reset_dir(path: Path) -> Path:
    """Return ``path`` as a fresh empty directory (stale spill files would corrupt the sums)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def count_receipts(receipts: pd.DataFrame, linked: pd.DataFrame, unused: pd.DataFrame) -> dict[str, Any]:
    """Return receipt lines in, linked, unused per reason, and baskets dropped as noise."""
    noise = unused.loc[unused[C.REASON] == "basket_too_large", TRANSACTION]
    return {"receipt_lines": len(receipts), "receipt_lines_linked": len(linked),
            "receipt_baskets": int(receipts[TRANSACTION].nunique()), "baskets_dropped_too_large": int(noise.nunique()),
            "receipt_lines_unused": {str(k): int(v) for k, v in unused[C.REASON].value_counts().items()}}


def session_chunks(sessions: pd.DataFrame | Path, vocab: ItemVocab, cfg: GraphConfig) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Return the (session ids, dense items) chunks of a frame or a streamable sessions file."""
    if isinstance(sessions, pd.DataFrame):
        return iter_memory_chunks(sessions, vocab, cfg.chunk_events)
    return iter_file_chunks(sessions, vocab, cfg.chunk_events)


def viewed_items(sessions: pd.DataFrame | Path) -> pd.Series:
    """Return the distinct session items (read as a categorical column from a file: no per-row strings)."""
    if isinstance(sessions, pd.DataFrame):
        return distinct_items(sessions[C.ITEM]).astype(str)
    return distinct_items(read_table(session_files(sessions), columns=[C.ITEM], categorical=[C.ITEM])[C.ITEM]).astype(str)


def spill_sessions(sessions: pd.DataFrame | Path, vocab: ItemVocab, cfg: GraphConfig, spill_dir: Path,
                   mapper: Mapper = serial_map) -> dict[str, int]:
    """Spill the co-view pairs of ``sessions`` into ``spill_dir``'s buckets; return the pair counts.

    The parts of a folder that holds whole sessions per part are counted as one task each (``mapper``). A file
    that is not grouped by session cannot be streamed: it is read whole instead (same graph).
    """
    try:
        parts = whole_session_parts(sessions)
        if parts is None:
            return spill_coview(session_chunks(sessions, vocab, cfg), cfg, spill_dir)
        counts = mapper(spill_part, list(enumerate(parts)), vocab=vocab, cfg=cfg, spill_dir=str(spill_dir))
        return {k: sum(c[k] for c in counts) for k in ("session_events", "coview_chunks", "coview_self_pairs_skipped")}
    except SessionOrderError as err:
        log.warning("%s; reading the sessions whole instead of streaming them", err)
        reset_dir(spill_dir)
        files = session_files(sessions)
        names = pq.read_schema(files[0]).names
        frame = read_table(files, columns=[c for c in (C.SESSION, C.TIMESTAMP, C.ITEM) if c in names], categorical=[C.ITEM])
        return spill_coview(session_chunks(frame, vocab, cfg), cfg, spill_dir)
