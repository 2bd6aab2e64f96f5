"""Feature tasks: sessions, the item co-occurrence graph and InfoNCE item embeddings."""

from __future__ import annotations

from prefect import task

from seqrec.pipeline import features as stages
from seqrec.config import DataConfig, EmbeddingConfig, GraphConfig, SessionConfig, TrainingConfig
from tasks.common import CACHE, CACHE_ANYWHERE, LONG_TIMEOUT_S


@task(name="sessionize_events", **CACHE_ANYWHERE, timeout_seconds=LONG_TIMEOUT_S)
def sessionize_events(day_paths: list[str], fingerprints: list[str], cfg: SessionConfig, out_dir: str, code: str,
                      address: str | None = None) -> dict:
    """Return the sessionized event table (30-minute gap by default) and its report (days and buckets as Dask tasks
    on the scheduler at ``address``, when given)."""
    return stages.sessionize_events(day_paths, cfg, out_dir, address)


@task(name="build_item_graph", **CACHE_ANYWHERE, timeout_seconds=LONG_TIMEOUT_S)
def build_item_graph(sessions_path: str, fingerprint: str, root: str, cfg: GraphConfig, data: DataConfig, out_dir: str, code: str,
                     address: str | None = None) -> dict:
    """Return the co-view / co-purchase item graph's files and statistics (session parts and pair buckets as Dask
    tasks on the scheduler at ``address``, when given)."""
    return stages.build_item_graph(sessions_path, root, cfg, out_dir, data, address)


@task(name="train_item_embeddings", **CACHE, timeout_seconds=LONG_TIMEOUT_S, tags=["gpu"])
def train_item_embeddings(graph: dict, cfg: EmbeddingConfig, training: TrainingConfig, out_dir: str, code: str) -> dict:
    """Return the InfoNCE item embeddings' file and reports."""
    return stages.train_item_embeddings(graph, cfg, training, out_dir)
