"""Data tasks: resolve (or generate) the raw root, ingest event partitions day by day (Dask), announce new days."""

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


@task(name="announce_new_days", **IO_RETRIES)
def announce_new_days(ingested: dict, state_dir: str) -> list:
    """Return the days not announced before; emit seqrec.partition.arrived for each (the nightly deployment's trigger)."""
    return stages.announce_new_days(ingested["root"], ingested["days"], state_dir, emit_event)


@task(name="plan_days", **IO_RETRIES)
def plan_days(root: str, data: DataConfig) -> dict:
    """Return the window's days with the fingerprint of each day's raw files (what the per-day ingest is cached on)."""
    return stages.plan_days(root, data)


@task(name="ingest_day", **CACHE, **IO_RETRIES, task_run_name="ingest_day-{day}")
def ingest_day(root: str, day: int, fingerprint: str, data: DataConfig, out_dir: str, code: str) -> dict:
    """Return one day's canonical rows (its file) and the rows it holds for other days (cached on its files)."""
    return stages.ingest_one_day(root, day, data, out_dir)


@task(name="settle_days")
def settle_days(ingested: list, plan: dict, data: DataConfig, out_dir: str) -> dict:
    """Return the ingest result: bad partitions judged over all days, rows dated elsewhere merged into their day."""
    result = stages.settle_days(ingested, plan, data, out_dir)
    create_table_artifact(stages.partition_rows(result), key="ingest-partitions", description=stages.ingest_note(result))
    return result
