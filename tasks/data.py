"""Data tasks: resolve (or generate) the raw root, and ingest event partitions with Dask."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event

from seqrec.pipeline import data as stages
from seqrec.config import DataConfig, SeqrecConfig
from tasks.common import CACHE, IO_RETRIES, LONG_TIMEOUT_S


@task(name="resolve_data_root", **IO_RETRIES, timeout_seconds=LONG_TIMEOUT_S)
def resolve_data_root(cfg: SeqrecConfig) -> dict:
    """Return the raw data root, generating T-ECD data when no root is configured."""
    return stages.resolve_data_root(cfg)


@task(name="ingest_events", **CACHE, **IO_RETRIES, timeout_seconds=LONG_TIMEOUT_S)
def ingest_events(root: str, raw_fingerprint: str, data: DataConfig, out_dir: str, code: str) -> dict:
    """Return per-day canonical event files loaded from the raw partitions."""
    result = stages.ingest_events(root, data, out_dir)
    create_table_artifact(stages.partition_rows(result), key="ingest-partitions", description=stages.ingest_note(result))
    return result


@task(name="announce_new_days", **IO_RETRIES)
def announce_new_days(ingested: dict, state_dir: str) -> list:
    """Return the days not announced before; emit seqrec.partition.arrived for each (the nightly deployment's trigger)."""
    return stages.announce_new_days(ingested["root"], ingested["days"], state_dir, emit_event)
