"""The tune flow: a hyperparameter search whose trials are Prefect tasks (on Dask worker processes when asked).

The trials run in a subflow whose task runner is the Dask scheduler at ``data.dask_address``; a local cluster of
``tuning.parallel`` worker processes (127.0.0.1) when trials should run side by side; otherwise Prefect's threads,
one trial at a time (neural models take turns in one process: torch's generator and thread pool are process-wide).
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger

from flows.cluster import local_cluster_kwargs
from seqrec.config import SeqrecConfig
from seqrec.pipeline.runlock import run_lock
from seqrec.pipeline.tuning import trials_left, worker_config
from tasks import tuning as T
from tasks.common import bind


@flow(name="tune", log_prints=True)
def tune_flow(model: str, split_dir: str, config: SeqrecConfig = SeqrecConfig()) -> dict:
    """Search ``models.<model>``'s settings on the split's train/valid parts, retrain the best on train + valid and test
    it once, and publish the search's report (holding the run directory's lock)."""
    with run_lock(config.output.run_dir, config.output.lock_wait_seconds):
        return tune_body(model, split_dir, config)


def tune_body(model: str, split_dir: str, config: SeqrecConfig) -> dict:
    """Return the search's summary, report paths and trial rows (``tune_flow`` under the run lock)."""
    log = get_run_logger()
    out = str((config.output.run_dir / "tune" / model).resolve())
    search = T.open_search(model, split_dir, config, out)
    if search["requeued"]:
        log.info("Resumed: trials %s were left running by a killed search; their settings run again first", search["requeued"])
    runner = task_runner(config)
    trials = trials_flow if runner is None else trials_flow.with_options(task_runner=runner)
    rows = trials(model=model, split_dir=split_dir, config=config, out_dir=out, first_slot=search["slots"])
    final = T.retrain_best(model, split_dir, config, out) if config.tuning.retrain_best else None
    report = T.write_search_report(model, config, out, final)
    log.info("Search report: %s (best settings: %s)", report["html"], report["best_config"])
    return {**report, "rows": rows, "resumed": search["requeued"], "run_dir": str(Path(config.output.run_dir).resolve())}


@flow(name="tune-trials", log_prints=True)
def trials_flow(model: str, split_dir: str, config: SeqrecConfig, out_dir: str, first_slot: int = 0) -> list[dict]:
    """Run trials, ``tuning.parallel`` at a time, until the trial budget is spent or the wall-clock budget has passed;
    return their rows (a subflow, so that its task runner can be the Dask cluster ``config`` names)."""
    log = get_run_logger()
    deadline = time.monotonic() + config.tuning.timeout_minutes * 60 if config.tuning.timeout_minutes else None
    trial_cfg, slot, rows = worker_config(config), first_slot, []
    while (left := trials_left(model, config, out_dir)) > 0:
        if deadline is not None and time.monotonic() >= deadline:
            log.info("Wall-clock budget of %s min spent: no new trial starts (%d left of the budget)",
                     config.tuning.timeout_minutes, left)
            break
        n = min(config.tuning.parallel, left)
        futures = [bind(T.run_trial, config).submit(model, slot + i, split_dir, trial_cfg, out_dir) for i in range(n)]
        for row in (f.result() for f in futures):
            rows.append(row)
            log.info("trial %s %s: valid %s %s %s", row["number"], row["state"], config.training.valid_metric,
                     f"{row['value']:.4f}" if "value" in row else "-", row.get("error", ""))
        slot += n
    return rows


def task_runner(config: SeqrecConfig):
    """Return the trials' task runner: the Dask scheduler at ``data.dask_address``, a local cluster of
    ``tuning.parallel`` worker processes (127.0.0.1) for trials side by side, else None (Prefect's threads)."""
    if not config.data.dask_address and config.tuning.parallel <= 1:
        return None
    from prefect_dask import DaskTaskRunner

    if config.data.dask_address:
        return DaskTaskRunner(address=config.data.dask_address)
    return DaskTaskRunner(cluster_kwargs=local_cluster_kwargs(config.tuning.parallel))
