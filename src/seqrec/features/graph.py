"""Item co-occurrence graph: co-view edges inside sessions and co-purchase edges from receipts.

Co-view: every ordered pair of positions (i, j), i < j, inside a session with j - i <= window
("window") or any distance ("all") adds 1 (or 1/(j - i) with ``distance_weighting``) to the
undirected edge {item_i, item_j}; a repeated item never pairs with itself. Co-purchase: each
basket (``transaction_hash``) adds 1 to every pair of distinct linked items in it. A basket
is noise, and dropped whole, when it has more than ``max_basket`` distinct
``approximate_item_id`` (counted before linkage); a receipt line links when its id is a
catalogue item id (without a catalogue, the session items are the catalogue).

Edge columns: ``coview`` (weighted co-view), ``copurchase`` (baskets), ``count`` (raw
co-view pairs + baskets; edges with ``count < min_count`` are pruned and kept under
``pruned_edges/``) and ``weight = coview + copurchase_weight * copurchase``.

Out of core: pairs are counted per chunk of about ``chunk_events`` session events (or
basket lines), pre-aggregated, and hash-partitioned on the edge into ``buckets`` parquet
files under ``workdir/_pairs``; buckets are then aggregated one at a time, so peak memory
is one chunk's pairs or one bucket's distinct edges, never all pairs at once. Given a
sessions parquet file whose sessions are contiguous runs in time order (the sessionize
stage's output), the session rows are streamed ``chunk_events`` at a time as well; any
other file is read whole. Kept edges are held as compact numeric columns (32 bytes per
edge), ``edges.pq`` is written a slice at a time with item ids taken by Arrow, and the
matrix is built with 32-bit indices; the returned graph reads ``edges.pq`` on demand.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from seqrec import columns as C  # noqa: E402
from seqrec.config import GraphConfig  # noqa: E402
from seqrec.io import atomic_path, read_json, read_table, write_figure, write_json, write_table  # noqa: E402
from seqrec.sequences import PAD, ItemVocab, distinct_items  # noqa: E402

TRANSACTION = "transaction_hash"
RECEIPT_ITEM = "approximate_item_id"
EDGE_SCHEMA = pa.schema([("item_a", pa.string()), ("item_b", pa.string()), ("coview", pa.float64()),
                         ("copurchase", pa.int64()), ("count", pa.int64()), ("weight", pa.float64())])
PAIR_COLUMNS = ["coview", "n_coview", "copurchase"]  # summed per edge key (a << 32 | b)
PAIR_DTYPES = {"coview": np.float64, "n_coview": np.int64, "copurchase": np.int64}
_HASH = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing spreads consecutive keys over buckets
MAX_SESSION_ID = 1 << 30  # streamed session ids index a bitmap of this many bytes at most
EDGE_SLICE = 2_000_000  # edges decoded and written per row group of edges.pq
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemGraph:
    """An undirected weighted item graph over a vocabulary (index 0 = padding, no edges).

    ``edge_table`` is the edge frame (EDGE_SCHEMA's columns, item_a < item_b by dense index, sorted) or
    the parquet file holding it; ``edges`` reads the file on each access (large graphs keep
    only the matrix in memory), so it shows that file as it is now: a graph rebuilt into the
    same folder, or a deleted folder, changes or breaks an older graph object's edges.
    """

    vocab: ItemVocab
    edge_table: pd.DataFrame | Path
    matrix: sp.csr_matrix  # (n_items + 1, n_items + 1) symmetric edge weights
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def edges(self) -> pd.DataFrame:
        """Return the edge frame (read from ``edge_table`` when it is a file)."""
        return self.edge_columns(None)

    def edge_columns(self, columns: list[str] | None) -> pd.DataFrame:
        """Return some edge columns (all for None), reading only those from a file."""
        if isinstance(self.edge_table, Path):
            return read_table(self.edge_table, columns=columns)
        return self.edge_table if columns is None else self.edge_table[columns]


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


def spill_coview(chunks: Iterator[tuple[np.ndarray, np.ndarray]], cfg: GraphConfig, spill_dir: Path) -> dict[str, int]:
    """Count co-view pairs chunk by chunk into bucket files; return counts."""
    n_chunks = self_pairs = events = 0
    for keys, items in chunks:
        pairs, n_self = count_coview_pairs(keys, items, cfg)
        spill_pairs(pairs, spill_dir, f"coview-{n_chunks:06d}", cfg.buckets)
        n_chunks, self_pairs, events = n_chunks + 1, self_pairs + n_self, events + len(keys)
    return {"session_events": events, "coview_chunks": n_chunks, "coview_self_pairs_skipped": self_pairs}


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


def edge_weight(sums: pd.DataFrame, cfg: GraphConfig) -> np.ndarray:
    """Return weight = coview + copurchase_weight * copurchase per edge (float64)."""
    return (sums["coview"] + cfg.copurchase_weight * sums["copurchase"]).to_numpy(np.float64)


def edge_table(sums: pd.DataFrame, ids: pa.Array, cfg: GraphConfig) -> pa.Table:
    """Return EDGE_SCHEMA rows of per-key sums; ``ids`` (pa.string, by dense index) gives the item ids."""
    keys = sums["key"].to_numpy(np.int64)
    return pa.table([
        ids.take(pa.array(keys >> 32)), ids.take(pa.array(keys & 0xFFFFFFFF)),
        pa.array(sums["coview"].to_numpy(np.float64)), pa.array(sums["copurchase"].to_numpy(np.int64)),
        pa.array((sums["n_coview"] + sums["copurchase"]).to_numpy(np.int64)), pa.array(edge_weight(sums, cfg)),
    ], schema=EDGE_SCHEMA)


def vocab_ids(vocab: ItemVocab) -> pa.Array:
    """Return the vocabulary's ids as an Arrow string array (taken by dense index, no Python strings per edge)."""
    return pa.array(vocab.ids, pa.string())


def aggregate_buckets(spill_dir: Path, vocab: ItemVocab, cfg: GraphConfig, workdir: Path) -> tuple[pd.DataFrame, int]:
    """Return (kept per-edge sums sorted by key, pruned count), one bucket in memory at a time.

    Pruned edges are written to ``workdir/pruned_edges/<bucket>.pq`` with their reason. The
    kept sums are gathered column by column (32 bytes per edge) and sorted through one
    argsort, so the peak is about twice the kept sums, not a frame concatenation and sort.
    """
    kept: dict[str, list[np.ndarray]] = {"key": [np.empty(0, np.int64)]} | {c: [np.empty(0, t)] for c, t in PAIR_DTYPES.items()}
    pruned, ids = 0, vocab_ids(vocab)
    for bucket_dir in sorted(spill_dir.glob("bucket-*")):
        sums = read_table(bucket_dir).groupby("key", sort=False)[PAIR_COLUMNS].sum().reset_index()
        low = (sums["n_coview"] + sums["copurchase"]).to_numpy() < cfg.min_count
        if low.any():
            edges = edge_table(sums[low], ids, cfg)
            edges = edges.append_column(C.REASON, pa.array(np.full(edges.num_rows, "min_count"), pa.string()))
            write_table(edges, workdir / "pruned_edges" / f"{bucket_dir.name}.pq")
        for col, parts in kept.items():
            parts.append(sums[col].to_numpy()[~low].astype(PAIR_DTYPES.get(col, np.int64)))
        pruned += int(low.sum())
        del sums
    keys = np.concatenate(kept.pop("key"))
    order = np.argsort(keys, kind="stable")
    out = {"key": keys[order]}
    del keys
    for col in PAIR_COLUMNS:
        out[col] = np.concatenate(kept.pop(col))[order]
    return pd.DataFrame(out, copy=False), pruned


def write_edges(sums: pd.DataFrame, vocab: ItemVocab, cfg: GraphConfig, dest: Path) -> Path:
    """Write the edge table (EDGE_SCHEMA) of the sorted sums to parquet, EDGE_SLICE edges per row group."""
    ids = vocab_ids(vocab)
    with atomic_path(dest) as tmp, pq.ParquetWriter(tmp, EDGE_SCHEMA) as writer:
        for lo in range(0, max(len(sums), 1), EDGE_SLICE):
            writer.write_table(edge_table(sums.iloc[lo:lo + EDGE_SLICE], ids, cfg))
    return dest


def build_matrix(sums: pd.DataFrame, n_items: int, cfg: GraphConfig) -> sp.csr_matrix:
    """Return the symmetric (n_items + 1, n_items + 1) CSR matrix of edge weights (32-bit indices when they fit)."""
    keys = sums["key"].to_numpy(np.int64)
    index = np.int32 if n_items < np.iinfo(np.int32).max else np.int64
    a, b, w = (keys >> 32).astype(index), (keys & 0xFFFFFFFF).astype(index), edge_weight(sums, cfg)
    rows, cols = np.concatenate([a, b]), np.concatenate([b, a])
    del a, b
    return sp.csr_matrix((np.concatenate([w, w]), (rows, cols)), shape=(n_items + 1, n_items + 1))


def reset_dir(path: Path) -> Path:
    """Return ``path`` as a fresh empty directory (stale spill files would corrupt the sums)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def count_coverage(matrix: sp.csr_matrix, vocab: ItemVocab, catalogue: pd.Index | None) -> dict[str, Any]:
    """Return how many catalogue items are graph nodes (degree > 0)."""
    nodes = vocab.ids[np.flatnonzero(np.diff(matrix.indptr) > 0)]
    if catalogue is None:
        return {"catalogue_items": None, "catalogue_items_in_graph": None}
    return {"catalogue_items": len(catalogue), "catalogue_items_in_graph": int(catalogue.isin(nodes).sum())}


def write_item_graph(graph: ItemGraph, workdir: Path) -> None:
    """Write edges.pq (unless the graph's edges are that file), graph.npz, items.pq and graph_report.json."""
    if not (isinstance(graph.edge_table, Path) and graph.edge_table == workdir / "edges.pq"):
        write_table(graph.edges, workdir / "edges.pq")
    with atomic_path(workdir / "graph.npz") as tmp, open(tmp, "wb") as fh:
        sp.save_npz(fh, graph.matrix, compressed=False)  # zlib costs more than it saves here
    write_table(pd.DataFrame({C.ITEM: graph.vocab.ids.astype(str)}), workdir / "items.pq")
    write_json(graph.report, workdir / "graph_report.json")


def load_item_graph(workdir: Path | str) -> ItemGraph:
    """Return the ItemGraph written by ``build_cooccurrence_graph`` under workdir."""
    workdir = Path(workdir)
    for name in ("edges.pq", "graph.npz", "items.pq", "graph_report.json"):
        if not (workdir / name).is_file():
            raise FileNotFoundError(f"item graph file {workdir / name} does not exist")
    vocab = ItemVocab(read_table(workdir / "items.pq")[C.ITEM].to_numpy(dtype=object))
    matrix = sp.load_npz(workdir / "graph.npz").tocsr()
    return ItemGraph(vocab, workdir / "edges.pq", matrix, read_json(workdir / "graph_report.json"))


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


def build_cooccurrence_graph(
    sessions: pd.DataFrame | Path | str,
    receipts: pd.DataFrame | None,
    catalogue_items: pd.Series | None,
    cfg: GraphConfig,
    workdir: Path,
) -> ItemGraph:
    """Return the item graph of co-views and co-purchases; write it and the rows it left out to workdir.

    ``sessions`` is a frame (SESSION, ITEM, optional TIMESTAMP) or a parquet file of one. A file
    whose sessions are contiguous runs in time order is streamed ``cfg.chunk_events`` rows at a
    time; another file is read whole (the result is the same, the memory is not).
    """
    workdir = Path(workdir)
    sessions = sessions if isinstance(sessions, pd.DataFrame) else Path(sessions)
    catalogue = None if catalogue_items is None else pd.Index(pd.unique(catalogue_items.dropna().astype(str)))
    viewed = viewed_items(sessions)
    link_to = catalogue if catalogue is not None else pd.Index(viewed)
    linked, unused = link_receipts(receipts, link_to, cfg) if receipts is not None else (None, None)
    vocab = ItemVocab.from_items(pd.concat([viewed] + ([linked[C.ITEM]] if linked is not None else [])))
    del viewed, link_to
    spill_dir = reset_dir(workdir / "_pairs")
    reset_dir(workdir / "pruned_edges")
    report: dict[str, Any] = {"config": cfg.model_dump(), "vocab_items": vocab.size}
    try:
        report.update(spill_coview(session_chunks(sessions, vocab, cfg), cfg, spill_dir))
    except SessionOrderError as err:  # a file that is not grouped by session: the same graph, read whole
        log.warning("%s; reading the sessions whole instead of streaming them", err)
        spill_dir = reset_dir(spill_dir)
        files = session_files(sessions)
        names = pq.read_schema(files[0]).names
        frame = read_table(files, columns=[c for c in (C.SESSION, C.TIMESTAMP, C.ITEM) if c in names], categorical=[C.ITEM])
        report.update(spill_coview(session_chunks(frame, vocab, cfg), cfg, spill_dir))
        del frame
    if linked is not None:
        report.update(spill_copurchase(linked, vocab, cfg, spill_dir), **count_receipts(receipts, linked, unused))
        write_table(unused, workdir / "unused_receipt_lines.pq")
    sums, pruned = aggregate_buckets(spill_dir, vocab, cfg, workdir)
    shutil.rmtree(spill_dir)
    edges_path = write_edges(sums, vocab, cfg, workdir / "edges.pq")
    report.update(edges=len(sums), coview_edges=int((sums["coview"].to_numpy() > 0).sum()),
                  copurchase_edges=int((sums["copurchase"].to_numpy() > 0).sum()), edges_pruned_min_count=pruned)
    sums = sums[["key", "coview", "copurchase"]]  # all the matrix needs
    matrix = build_matrix(sums, vocab.size, cfg)
    del sums
    report.update(count_coverage(matrix, vocab, catalogue))
    graph = ItemGraph(vocab, edges_path, matrix, report)
    write_item_graph(graph, workdir)
    return graph


def graph_stats(graph: ItemGraph) -> dict[str, Any]:
    """Return nodes, edges, degree quantiles and the share of catalogue items covered."""
    degree = np.diff(graph.matrix.indptr)[1:]  # (n_items,) padding row excluded
    nodes = degree[degree > 0]
    q = np.quantile(nodes, [0.5, 0.9, 0.99]) if len(nodes) else [0, 0, 0]
    cat, covered = graph.report.get("catalogue_items"), graph.report.get("catalogue_items_in_graph")
    counted = ("edges", "coview_edges", "copurchase_edges")
    if all(k in graph.report for k in counted):  # counted while the graph was built: no need to read the edges
        n_edges, n_coview, n_copurchase = (graph.report[k] for k in counted)
    else:
        kinds = graph.edge_columns(["coview", "copurchase"])
        n_edges, n_coview, n_copurchase = len(kinds), int((kinds["coview"] > 0).sum()), int((kinds["copurchase"] > 0).sum())
    return {
        "vocab_items": graph.vocab.size, "nodes": int(len(nodes)), "isolated_items": int((degree == 0).sum()),
        "edges": n_edges, "coview_edges": n_coview, "copurchase_edges": n_copurchase,
        "degree_mean": float(nodes.mean()) if len(nodes) else 0.0, "degree_p50": float(q[0]),
        "degree_p90": float(q[1]), "degree_p99": float(q[2]), "degree_max": int(nodes.max()) if len(nodes) else 0,
        "catalogue_coverage": (covered / cat) if cat else None,
    }


def plot_degree_distribution(graph: ItemGraph, path: Path | str) -> Path:
    """Write a log-log plot of the degree distribution (share of nodes with degree >= d); return its path."""
    degree = np.diff(graph.matrix.indptr)[1:]
    degree = np.sort(degree[degree > 0])
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(degree):
        ccdf = 1.0 - np.arange(len(degree)) / len(degree)
        ax.loglog(degree, ccdf, marker=".", linestyle="none", markersize=2)
    n_edges = graph.report.get("edges", None)
    n_edges = len(graph.edge_columns(["weight"])) if n_edges is None else n_edges
    ax.set(xlabel="degree d", ylabel="share of nodes with degree >= d", title=f"{len(degree)} nodes, {n_edges} edges")
    fig.tight_layout()
    return write_figure(fig, path)
