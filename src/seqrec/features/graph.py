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
files under ``workdir/_pairs``; buckets are then aggregated one per task, so peak memory
is one chunk's pairs or one bucket's distinct edges per task, never all pairs at once. Given a
sessions parquet file (or folder) whose sessions are contiguous runs in time order (the
sessionize stage's output), the session rows are streamed ``chunk_events`` at a time as well,
a task per part when each part holds whole sessions; any other file is read whole. Tasks run
through a mapper (``seqrec.parallel``): in this process, or as Dask tasks on a cluster. Kept
edges are held as compact numeric columns (32 bytes per edge), ``edges.pq`` is written a slice
at a time with item ids taken by Arrow, and the matrix is built with 32-bit indices; the
returned graph reads ``edges.pq`` on demand.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from seqrec import columns as C  # noqa: E402
from seqrec.config import GraphConfig  # noqa: E402
from seqrec.features.cooccurrence import (  # noqa: E402
    PAIR_COLUMNS, PAIR_DTYPES, count_receipts, link_receipts, reset_dir, spill_copurchase, spill_sessions, viewed_items,
)
from seqrec.parallel import Mapper, serial_map  # noqa: E402
from seqrec.io import atomic_path, read_json, read_table, write_figure, write_json, write_table  # noqa: E402
from seqrec.sequences import ItemVocab  # noqa: E402

EDGE_SCHEMA = pa.schema([("item_a", pa.string()), ("item_b", pa.string()), ("coview", pa.float64()),
                         ("copurchase", pa.int64()), ("count", pa.int64()), ("weight", pa.float64())])
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


def aggregate_bucket(bucket_dir: str, ids: pa.Array, cfg: GraphConfig, workdir: str) -> tuple[int, dict[str, np.ndarray]]:
    """Sum one pair bucket per edge (a task): write its pruned edges to ``workdir/pruned_edges/<bucket>.pq``; return
    (the pruned count, the kept sums as numeric columns: 32 bytes per edge)."""
    folder = Path(bucket_dir)
    sums = read_table(folder).groupby("key", sort=False)[PAIR_COLUMNS].sum().reset_index()
    low = (sums["n_coview"] + sums["copurchase"]).to_numpy() < cfg.min_count
    if low.any():
        edges = edge_table(sums[low], ids, cfg)
        edges = edges.append_column(C.REASON, pa.array(np.full(edges.num_rows, "min_count"), pa.string()))
        write_table(edges, Path(workdir) / "pruned_edges" / f"{folder.name}.pq")
    return int(low.sum()), {col: sums[col].to_numpy()[~low].astype(PAIR_DTYPES.get(col, np.int64)) for col in ["key", *PAIR_COLUMNS]}


def aggregate_buckets(spill_dir: Path, vocab: ItemVocab, cfg: GraphConfig, workdir: Path,
                      mapper: Mapper = serial_map) -> tuple[pd.DataFrame, int]:
    """Return (kept per-edge sums sorted by key, pruned count), a bucket per task (``mapper``).

    Each task holds one bucket's distinct edges and returns its kept sums as numeric columns
    (32 bytes per edge); they are joined column by column and sorted through one argsort, so the
    peak here is about twice the kept sums, not a frame concatenation and sort.
    """
    buckets = sorted(str(b) for b in spill_dir.glob("bucket-*") if b.is_dir())
    done = mapper(aggregate_bucket, buckets, ids=vocab_ids(vocab), cfg=cfg, workdir=str(workdir))
    pruned = sum(n for n, _ in done)
    kept = {col: [np.empty(0, PAIR_DTYPES.get(col, np.int64))] + [k[col] for _, k in done] for col in ["key", *PAIR_COLUMNS]}
    del done
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


def build_cooccurrence_graph(sessions: pd.DataFrame | Path | str, receipts: pd.DataFrame | None, catalogue_items: pd.Series | None,
                             cfg: GraphConfig, workdir: Path, mapper: Mapper = serial_map) -> ItemGraph:
    """Return the item graph of co-views and co-purchases; write it and the rows it left out to workdir.

    ``sessions`` is a frame (SESSION, ITEM, optional TIMESTAMP) or a parquet file of one. A file
    whose sessions are contiguous runs in time order is streamed ``cfg.chunk_events`` rows at a
    time; another file is read whole (same result, not the same memory). ``mapper`` (``seqrec.parallel``)
    runs a task per part of the sessionize stage's folder and per pair bucket.
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
    report.update(spill_sessions(sessions, vocab, cfg, spill_dir, mapper))
    if linked is not None:
        report.update(spill_copurchase(linked, vocab, cfg, spill_dir), **count_receipts(receipts, linked, unused))
        write_table(unused, workdir / "unused_receipt_lines.pq")
    sums, pruned = aggregate_buckets(spill_dir, vocab, cfg, workdir, mapper)
    shutil.rmtree(spill_dir)
    edges_path = write_edges(sums, vocab, cfg, workdir / "edges.pq")
    report.update(edges=len(sums), coview_edges=int((sums["coview"].to_numpy() > 0).sum()),
                  copurchase_edges=int((sums["copurchase"].to_numpy() > 0).sum()), edges_pruned_min_count=pruned)
    sums = sums[["key", "coview", "copurchase"]]  # all the matrix needs
    matrix = build_matrix(sums, vocab.size, cfg)
    del sums
    report.update(count_coverage(matrix, vocab, catalogue))
    write_item_graph(graph := ItemGraph(vocab, edges_path, matrix, report), workdir)
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
