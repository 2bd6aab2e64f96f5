"""Search tasks: open (or resume) the study, one trial, the best trial retrained and tested, the report."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from seqrec.config import SeqrecConfig
from seqrec.pipeline import tuning as stages
from tasks.common import IO_RETRIES


@task(name="open_search", **IO_RETRIES)
def open_search(model: str, split_dir: str, config: SeqrecConfig, out_dir: str) -> dict:
    """Return the study's location and how many trials count already (trials a killed search left running: queued again)."""
    return stages.open_search(model, split_dir, config, out_dir)


# Not cached: a trial is a new draw from the study, which remembers it. Run in worker threads or Dask workers (no timeout:
# THREAD_TASKS in tasks/common.py); the trial's row names its state, value and settings.
@task(name="trial", task_run_name="trial-{model}-{slot}", tags=["tune"])
def run_trial(model: str, slot: int, split_dir: str, config: SeqrecConfig, out_dir: str) -> dict:
    """Return one trial's row: trained on train, scored on valid after each epoch, pruned or finished."""
    return stages.run_trial(model, slot, split_dir, config, out_dir)


@task(name="retrain_best", tags=["gpu"])
def retrain_best(model: str, split_dir: str, config: SeqrecConfig, out_dir: str) -> dict:
    """Return the test metrics of the best settings retrained on train + valid (the search's one look at test)."""
    return stages.retrain_best(model, split_dir, config, out_dir)


@task(name="write_search_report")
def write_search_report(model: str, config: SeqrecConfig, out_dir: str, final: dict | None) -> dict:
    """Return the report's paths and summary; publish the trial table and the report as Prefect artifacts."""
    report = stages.write_search_report(model, config, out_dir, final)
    create_table_artifact(stages.search_rows(model, config, out_dir), key=f"tune-{model}-trials", description=f"Trials of the {model} search (valid metric)")
    create_markdown_artifact(open(report["markdown"]).read() + f"\n\nHTML report: `{report['html']}`\n", key=f"tune-{model}")
    return report
