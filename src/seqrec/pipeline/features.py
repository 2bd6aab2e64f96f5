"""Feature stages: sessions, the item co-occurrence graph and InfoNCE item embeddings, on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from seqrec import io
from seqrec.parallel import mapper_for
from seqrec.config import DataConfig, EmbeddingConfig, GraphConfig, SessionConfig, TrainingConfig, config_to_dict


def sessionize_events(day_paths: list[str], cfg: SessionConfig, out_dir: str, address: str | None = None) -> dict[str, Any]:
    """Sessionize cleaned day partitions in day order, out of core; write sessions and removed rows (the per-day and
    per-bucket passes as Dask tasks on the scheduler at ``address``, when given)."""
    from seqrec.features.sessions_stream import sessionize_files

    return sessionize_files(sorted(day_paths), cfg, out_dir, bucket_events=cfg.bucket_events, mapper=mapper_for(address))


def load_receipts(root: str, data: DataConfig) -> tuple[pd.DataFrame | None, pd.Series | None]:
    """Return receipts and the catalogue item ids of the configured domains, when present."""
    from seqrec.data.reader import load_day_tables, read_table_safe

    base = Path(root)
    catalogue = [read_table_safe(base / d / "items.pq")["item_id"] for d in data.domains if (base / d / "items.pq").is_file()]
    if not (base / "payments" / "receipts").is_dir():
        return None, pd.concat(catalogue) if catalogue else None
    receipts = load_day_tables(base, "payments/receipts", data).table
    return receipts, pd.concat(catalogue) if catalogue else None


def build_item_graph(sessions_path: str, root: str, cfg: GraphConfig, out_dir: str, data: DataConfig | None = None,
                     address: str | None = None) -> dict[str, Any]:
    """Build the co-occurrence graph from sessions and receipts; write edges, matrix, stats, plot (the per-part and
    per-bucket work as Dask tasks on the scheduler at ``address``, when given)."""
    from seqrec.features.graph import build_cooccurrence_graph, graph_stats, plot_degree_distribution

    receipts, catalogue = load_receipts(root, data or DataConfig())
    graph = build_cooccurrence_graph(Path(sessions_path), receipts, catalogue, cfg, Path(out_dir), mapper_for(address))
    stats = graph_stats(graph)
    plot = plot_degree_distribution(graph, Path(out_dir) / "degree_distribution.png")
    io.write_json(stats, Path(out_dir) / "graph_stats.json")
    return {"graph_dir": str(out_dir), "stats": stats, "plot": str(plot)}


def train_item_embeddings(graph: dict[str, Any], cfg: EmbeddingConfig, training: TrainingConfig, out_dir: str) -> dict[str, Any]:
    """Train InfoNCE item embeddings on the graph; write vectors, neighbours report and 2-D map."""
    from seqrec.features import embeddings as E
    from seqrec.features.graph import load_item_graph

    item_graph = load_item_graph(graph["graph_dir"])
    emb = E.train_item_embeddings(item_graph, cfg, device=training.device, progress=training.progress)
    out = Path(out_dir)
    path = emb.save(out / "item_embeddings.npz")
    neighbours = E.nearest_neighbours(emb, k=10)
    io.write_table(neighbours, out / "nearest_neighbours.parquet")
    plot = E.plot_embedding_map(emb, out / "embedding_map.png")
    return {"path": str(path), "items": emb.vocab.size, "dim": int(emb.vectors.shape[1]),
            "history": emb.history, "map": str(plot)}


def fingerprint_sessions(days: list[dict[str, Any]], cfg: SessionConfig) -> str:
    """Return a fingerprint of the sessionized data: the cleaned days' fingerprints plus session settings."""
    return io.fingerprint_obj([[d["fingerprint"] for d in days], config_to_dict(cfg)])
