"""Where the flows' fanned-out tasks run: a Dask cluster when the config names one, else Prefect's threads.

``data.dask_address`` names a running scheduler (``dask scheduler`` / ``dask worker`` on your machines: give the
workers ``PREFECT_API_URL`` of the Prefect server the flow reports to, and the run directory on storage every
worker sees); ``data.dask_processes`` asks for a local cluster of ``data.dask_workers`` single-threaded worker
processes on 127.0.0.1, started for the flow and stopped after it; neither: Prefect's threads in the flow's own
process, as before. On a cluster each per-day task (ingest, raw validation, cleaning, cleaned validation) runs in a
worker process through prefect-dask's ``DaskTaskRunner``: one task run per day in the flow run, results (summaries
and paths) stored in the run directory; a task whose worker dies is run again by Dask on another worker. The
features flow's sessionize and graph tasks send their days and buckets to the same scheduler (``seqrec.parallel``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

from seqrec.config import ConfigError, SeqrecConfig

log = logging.getLogger("seqrec.cluster")


def prefect_api_url() -> str:
    """Return the URL of the Prefect API this process reports to (the ephemeral server's too, once it runs)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


def local_cluster_kwargs(workers: int) -> dict:
    """Return the keyword arguments of a local cluster of ``workers`` single-threaded processes on 127.0.0.1 whose
    tasks report to this process's Prefect API (without it each worker would start an ephemeral server of its own)."""
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1", "protocol": "tcp",
            "dashboard_address": "127.0.0.1:0", "env": {"PREFECT_API_URL": prefect_api_url()},
            # no per-worker share of the memory (Dask's default, RAM / workers): a large day that fits in the machine
            # as a thread would otherwise be killed by its nanny
            "memory_limit": 0}


def worker_view(run_dir: str) -> dict:
    """Return what a worker sees that the flow relies on: the run directory, its Prefect API, its code version."""
    from prefect.settings import get_current_settings

    from tasks.common import code_version

    return {"run_dir": os.path.isdir(run_dir), "api": (get_current_settings().api.url or "").rstrip("/"),
            "code": code_version()}


def check_workers(address: str, run_dir: Path, timeout_s: float = 30) -> None:
    """Raise ConfigError unless every worker of the scheduler at ``address`` sees the run directory (shared storage),
    reports to this flow's Prefect API and runs the same seqrec code (results are cached under the flow's version)."""
    from distributed import Client

    from tasks.common import code_version

    run_dir.mkdir(parents=True, exist_ok=True)
    want = {"run_dir": True, "api": prefect_api_url(), "code": code_version()}
    try:
        client = Client(address, timeout=timeout_s)
    except (OSError, TimeoutError) as err:
        raise ConfigError(f"config key 'data.dask_address' = '{address}': no Dask scheduler answers there ({err})") from err
    with client:
        seen = client.run(worker_view, str(run_dir.resolve()))
    if not seen:
        raise ConfigError(f"config key 'data.dask_address' = '{address}': the scheduler has no workers")
    what = {"run_dir": f"does not see the run directory {run_dir.resolve()} (put it on storage every worker mounts)",
            "api": f"reports to another Prefect API than {want['api']} (set PREFECT_API_URL for the workers)",
            "code": f"runs other seqrec code than this flow ({want['code']}): restart the workers on this version"}
    problems = [f"worker {w} {what[k]}" for w, view in sorted(seen.items()) for k in want if view[k] != want[k]]
    if problems:
        raise ConfigError(f"config key 'data.dask_address' = '{address}': " + "; ".join(problems))


@contextlib.contextmanager
def day_cluster(config: SeqrecConfig) -> Iterator[str | None]:
    """Yield the scheduler address the per-day tasks and the feature buckets run on (``data.dask_address``, or a local
    process cluster's when ``data.dask_processes``), or None for Prefect's threads in this process."""
    data = config.data
    if data.dask_address:
        check_workers(data.dask_address, config.output.run_dir)
        yield data.dask_address
    elif data.dask_processes:
        from distributed import LocalCluster

        with LocalCluster(**local_cluster_kwargs(data.dask_workers)) as cluster:
            log.info("Per-day tasks on a local Dask cluster of %d worker processes at %s (dashboard %s)",
                     data.dask_workers, cluster.scheduler_address, cluster.dashboard_link)
            yield cluster.scheduler_address
    else:
        yield None


def on_cluster(flow, address: str | None):
    """Return ``flow`` with its tasks submitted to the Dask scheduler at ``address`` (unchanged when None)."""
    if address is None:
        return flow
    from prefect_dask import DaskTaskRunner

    return flow.with_options(task_runner=DaskTaskRunner(address=address))
