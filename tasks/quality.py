"""Quality tasks: Great Expectations validation (raw findings, cleaned gates) and cleaning."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from seqrec.pipeline import quality as SQ
from seqrec.config import CleaningConfig, DataConfig, QualityConfig
from tasks.common import CACHE, IO_RETRIES


@task(name="validate_events_day", **CACHE, task_run_name="validate_events_day-{stage}-{day[day]}")
def validate_events_day(day: dict, stage: str, quality: QualityConfig, cleaning: CleaningConfig, out_dir: str, code: str,
                        raw_root: str | None = None, domains: tuple[str, ...] = ("marketplace",), catalogue: str = "") -> dict:
    """Return the check summary of one event day partition (raw: findings; cleaned: gate); ``catalogue``: the catalogue
    files' fingerprint, so a changed catalogue (the referential checks' reference) is not a cache hit."""
    return SQ.validate_events_day(day, stage, quality, cleaning, out_dir, raw_root, domains)


@task(name="validate_tables", **CACHE, **IO_RETRIES, task_run_name="validate_tables-{stage}")
def validate_tables(table_root: str, fingerprint: str, stage: str, quality: QualityConfig, cleaning: CleaningConfig,
                    data: DataConfig, out_dir: str, code: str, raw_root: str | None = None) -> dict:
    """Return the check summary of the users, brands, items, payments, receipts and reviews tables."""
    return SQ.validate_tables(table_root, stage, quality, cleaning, data, out_dir, raw_root)


@task(name="clean_events_day", **CACHE, task_run_name="clean_events_day-{day[day]}")
def clean_events_day(day: dict, cleaning: CleaningConfig, out_dir: str, code: str) -> dict:
    """Return one cleaned event day partition with its quarantine and step counts."""
    return SQ.clean_events_day(day, cleaning, out_dir)


@task(name="clean_tables", **CACHE, **IO_RETRIES)
def clean_tables(root: str, fingerprint: str, cleaning: CleaningConfig, data: DataConfig, out_dir: str, code: str) -> dict:
    """Return the cleaned non-event tables, their quarantine and row counts."""
    return SQ.clean_tables(root, cleaning, data, out_dir)


@task(name="write_quality_report")
def write_quality_report(quality_dir: str, cleaned: dict, out_dir: str) -> dict:
    """Return the data-quality report paths; publish the summary as Prefect artifacts."""
    report = dict(SQ.write_quality_report(quality_dir, cleaned, out_dir))
    markdown = report.pop("markdown")
    create_table_artifact(SQ.accounting_rows(cleaned), key="cleaning-accounting", description="rows in = kept + quarantined")
    create_markdown_artifact(markdown + f"\n\nFull report: `{report['html']}`\n", key="data-quality")
    return report


@task(name="publish_data_docs", task_run_name="publish_data_docs-{stage}")
def publish_data_docs(results: list[str], stage: str, quality: QualityConfig, cleaning: CleaningConfig, out_dir: str) -> str:
    """Return the GX Data Docs index of a stage: the results the table and day passes kept, added to the run's history."""
    return SQ.publish_data_docs(results, stage, quality, cleaning, out_dir)


@task(name="check_cleaned_gate")
def check_cleaned_gate(gates: list[dict], quality: QualityConfig) -> list[str]:
    """Return the cleaned pass's failures over every day and table; fail naming all of them (quality.on_cleaned_failure)."""
    return SQ.check_cleaned_gate(gates, quality)
