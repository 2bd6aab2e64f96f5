"""Feature tasks: sessions, the item co-occurrence graph and InfoNCE item embeddings."""

from __future__ import annotations

from prefect import task

from seqrec.pipeline import features as stages
from seqrec.config import DataConfig, EmbeddingConfig, GraphConfig, SessionConfig, TrainingConfig
from tasks.common import CACHE, LONG_TIMEOUT_S


@task(name="sessionize_events", **CACHE, timeout_seconds=LONG_TIMEOUT_S)
def sessionize_events(day_paths: list[str], fingerprints: list[str], cfg: SessionConfig, out_dir: str, code: str) -> dict:
    """Return the sessionized event table (30-minute gap by default) and its report."""
    return stages.sessionize_events(day_paths, cfg, out_dir)


@task(name="build_item_graph", **CACHE, timeout_seconds=LONG_TIMEOUT_S)
def build_item_graph(sessions_path: str, fingerprint: str, root: str, cfg: GraphConfig, data: DataConfig, out_dir: str, code: str) -> dict:
    """Return the co-view / co-purchase item graph's files and statistics."""
    return stages.build_item_graph(sessions_path, root, cfg, out_dir, data)


@task(name="train_item_embeddings", **CACHE, timeout_seconds=LONG_TIMEOUT_S, tags=["gpu"])
def train_item_embeddings(graph: dict, cfg: EmbeddingConfig, training: TrainingConfig, out_dir: str, code: str) -> dict:
    """Return the InfoNCE item embeddings' file and reports."""
    return stages.train_item_embeddings(graph, cfg, training, out_dir)
