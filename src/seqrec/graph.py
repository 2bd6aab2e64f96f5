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
is one chunk's pairs or one bucket's distinct edges, never all pairs at once.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from seqrec import columns as C  # noqa: E402
from seqrec.config import GraphConfig  # noqa: E402
from seqrec.io import atomic_path, read_json, read_table, write_figure, write_json, write_table  # noqa: E402
from seqrec.sequences import ItemVocab, distinct_items  # noqa: E402

TRANSACTION = "transaction_hash"
RECEIPT_ITEM = "approximate_item_id"
EDGE_COLUMNS = ["item_a", "item_b", "coview", "copurchase", "count", "weight"]
PAIR_COLUMNS = ["coview", "n_coview", "copurchase"]  # summed per edge key (a << 32 | b)
PAIR_DTYPES = {"coview": np.float64, "n_coview": np.int64, "copurchase": np.int64}
_HASH = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing spreads consecutive keys over buckets


@dataclass(frozen=True)
class ItemGraph:
    """An undirected weighted item graph over a vocabulary (index 0 = padding, no edges)."""

    vocab: ItemVocab
    edges: pd.DataFrame  # EDGE_COLUMNS, item_a < item_b, sorted
    matrix: sp.csr_matrix  # (n_items + 1, n_items + 1) symmetric edge weights
    report: dict[str, Any] = field(default_factory=dict)


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
    for col in (C.SESSION, C.ITEM):
        if col not in sessions.columns:
            raise KeyError(f"sessions: no column '{col}'; columns are {list(sessions.columns)}")
        if sessions[col].isna().any():
            raise ValueError(f"sessions: column '{col}' has {int(sessions[col].isna().sum())} null value(s)")
    keys = sessions[C.SESSION].to_numpy(np.int64)
    times = sessions[C.TIMESTAMP].to_numpy(np.int64) if C.TIMESTAMP in sessions else np.zeros(len(keys), np.int64)
    order = np.lexsort((times, keys))
    return keys[order], vocab.encode(sessions[C.ITEM])[order]


def spill_coview(sessions: pd.DataFrame, vocab: ItemVocab, cfg: GraphConfig, spill_dir: Path) -> dict[str, int]:
    """Count co-view pairs chunk by chunk into bucket files; return counts."""
    keys, items = ordered_session_items(sessions, vocab)
    chunks = self_pairs = 0
    for sl in iter_chunks(keys, cfg.chunk_events):
        pairs, n_self = count_coview_pairs(keys[sl], items[sl], cfg)
        spill_pairs(pairs, spill_dir, f"coview-{chunks:06d}", cfg.buckets)
        chunks, self_pairs = chunks + 1, self_pairs + n_self
    return {"coview_chunks": chunks, "coview_self_pairs_skipped": self_pairs}


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


def decode_edges(sums: pd.DataFrame, vocab: ItemVocab, cfg: GraphConfig) -> pd.DataFrame:
    """Return edges with item ids, raw count and weight from per-key sums."""
    keys = sums["key"].to_numpy(np.int64)
    return pd.DataFrame({
        "item_a": vocab.decode(keys >> 32).astype(str), "item_b": vocab.decode(keys & 0xFFFFFFFF).astype(str),
        "coview": sums["coview"].to_numpy(np.float64), "copurchase": sums["copurchase"].to_numpy(np.int64),
        "count": (sums["n_coview"] + sums["copurchase"]).to_numpy(np.int64), "weight": edge_weight(sums, cfg),
    })


def aggregate_buckets(spill_dir: Path, vocab: ItemVocab, cfg: GraphConfig, workdir: Path) -> tuple[pd.DataFrame, int]:
    """Return (kept per-edge sums sorted by key, pruned count), one bucket in memory at a time.

    Pruned edges are written to ``workdir/pruned_edges/<bucket>.pq`` with their reason.
    """
    kept, pruned = [pd.DataFrame({"key": np.empty(0, np.int64)} | {c: np.empty(0, t) for c, t in PAIR_DTYPES.items()})], 0
    for bucket_dir in sorted(spill_dir.glob("bucket-*")):
        sums = read_table(bucket_dir).groupby("key", sort=False)[PAIR_COLUMNS].sum().reset_index()
        low = (sums["n_coview"] + sums["copurchase"]).to_numpy() < cfg.min_count
        if low.any():
            edges = decode_edges(sums[low], vocab, cfg).assign(**{C.REASON: "min_count"})
            write_table(edges, workdir / "pruned_edges" / f"{bucket_dir.name}.pq")
        kept.append(sums[~low])
        pruned += int(low.sum())
    return pd.concat(kept, ignore_index=True).sort_values("key", ignore_index=True), pruned


def build_matrix(sums: pd.DataFrame, n_items: int, cfg: GraphConfig) -> sp.csr_matrix:
    """Return the symmetric (n_items + 1, n_items + 1) CSR matrix of edge weights."""
    keys = sums["key"].to_numpy(np.int64)
    a, b, w = keys >> 32, keys & 0xFFFFFFFF, edge_weight(sums, cfg)
    rows, cols = np.concatenate([a, b]), np.concatenate([b, a])
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
    """Write edges.pq, graph.npz, items.pq and graph_report.json under workdir (atomically)."""
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
    return ItemGraph(vocab, read_table(workdir / "edges.pq"), matrix, read_json(workdir / "graph_report.json"))


def count_receipts(receipts: pd.DataFrame, linked: pd.DataFrame, unused: pd.DataFrame) -> dict[str, Any]:
    """Return receipt lines in, linked, unused per reason, and baskets dropped as noise."""
    noise = unused.loc[unused[C.REASON] == "basket_too_large", TRANSACTION]
    return {"receipt_lines": len(receipts), "receipt_lines_linked": len(linked),
            "receipt_baskets": int(receipts[TRANSACTION].nunique()), "baskets_dropped_too_large": int(noise.nunique()),
            "receipt_lines_unused": {str(k): int(v) for k, v in unused[C.REASON].value_counts().items()}}


def build_cooccurrence_graph(
    sessions: pd.DataFrame,
    receipts: pd.DataFrame | None,
    catalogue_items: pd.Series | None,
    cfg: GraphConfig,
    workdir: Path,
) -> ItemGraph:
    """Return the item graph of co-views and co-purchases; write it and the rows it left out to workdir."""
    workdir = Path(workdir)
    catalogue = None if catalogue_items is None else pd.Index(pd.unique(catalogue_items.dropna().astype(str)))
    viewed = distinct_items(sessions[C.ITEM]).astype(str)
    link_to = catalogue if catalogue is not None else pd.Index(viewed)
    linked, unused = link_receipts(receipts, link_to, cfg) if receipts is not None else (None, None)
    vocab = ItemVocab.from_items(pd.concat([viewed] + ([linked[C.ITEM]] if linked is not None else [])))
    spill_dir = reset_dir(workdir / "_pairs")
    reset_dir(workdir / "pruned_edges")
    report: dict[str, Any] = {"config": cfg.model_dump(), "session_events": len(sessions), "vocab_items": vocab.size}
    report.update(spill_coview(sessions, vocab, cfg, spill_dir))
    if linked is not None:
        report.update(spill_copurchase(linked, vocab, cfg, spill_dir), **count_receipts(receipts, linked, unused))
        write_table(unused, workdir / "unused_receipt_lines.pq")
    sums, pruned = aggregate_buckets(spill_dir, vocab, cfg, workdir)
    shutil.rmtree(spill_dir)
    edges, matrix = decode_edges(sums, vocab, cfg), build_matrix(sums, vocab.size, cfg)
    report.update(edges=len(edges), edges_pruned_min_count=pruned, **count_coverage(matrix, vocab, catalogue))
    graph = ItemGraph(vocab, edges, matrix, report)
    write_item_graph(graph, workdir)
    return graph


def graph_stats(graph: ItemGraph) -> dict[str, Any]:
    """Return nodes, edges, degree quantiles and the share of catalogue items covered."""
    degree = np.diff(graph.matrix.indptr)[1:]  # (n_items,) padding row excluded
    nodes = degree[degree > 0]
    q = np.quantile(nodes, [0.5, 0.9, 0.99]) if len(nodes) else [0, 0, 0]
    cat, covered = graph.report.get("catalogue_items"), graph.report.get("catalogue_items_in_graph")
    return {
        "vocab_items": graph.vocab.size, "nodes": int(len(nodes)), "isolated_items": int((degree == 0).sum()),
        "edges": len(graph.edges), "coview_edges": int((graph.edges["coview"] > 0).sum()),
        "copurchase_edges": int((graph.edges["copurchase"] > 0).sum()),
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
    ax.set(xlabel="degree d", ylabel="share of nodes with degree >= d", title=f"{len(degree)} nodes, {len(graph.edges)} edges")
    fig.tight_layout()
    return write_figure(fig, path)
