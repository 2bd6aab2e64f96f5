"""Ingest on a real Dask cluster (scheduler + one worker as subprocesses, 127.0.0.1 only) equals a local run."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest

from procs import process_group
from seqrec.config import DataConfig, GeneratorConfig
from seqrec.synthetic.generate import generate_tecd

BIN = Path(sys.executable).parent


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_workers(address: str, n: int, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    """Return once the scheduler at ``address`` has ``n`` workers; raise if a process died or time ran out."""
    from distributed import Client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p.args for p in procs if p.poll() is not None]
        assert not dead, f"exited early: {dead}"
        with contextlib.suppress(OSError, TimeoutError):
            with Client(address, timeout=5) as client:
                client.wait_for_workers(n, timeout=timeout)
                return
        time.sleep(0.5)
    raise TimeoutError(f"no {n} worker(s) at {address} after {timeout} s")


@pytest.fixture
def dask_cluster(tmp_path) -> Iterator[str]:
    """Yield the address of a scheduler with one single-threaded worker, stopped afterwards."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    worker = [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
              "--host", "127.0.0.1", "--local-directory", str(tmp_path / "worker")]
    with process_group(scheduler, tmp_path / "scheduler.log") as sched, process_group(worker, tmp_path / "worker.log") as work:
        wait_for_workers(address, 1, [sched, work])
        yield address
    assert sched.poll() is not None and work.poll() is not None  # both stopped


def test_ingest_on_cluster_equals_local(dask_cluster, tmp_path):
    from seqrec.data.reader import load_events

    root = tmp_path / "raw"
    generate_tecd(root, GeneratorConfig(events=2000, days=2, workers=1, domains=("marketplace",)))
    local = load_events(root, DataConfig(root=root))
    remote = load_events(root, DataConfig(root=root, dask_address=dask_cluster))
    assert len(remote.events) == len(local.events) > 0
    pd.testing.assert_frame_equal(remote.events, local.events)
    assert [p["rows"] for p in remote.partitions] == [p["rows"] for p in local.partitions]


@contextlib.contextmanager
def two_workers(tmp_path: Path, env: dict) -> Iterator[tuple[str, dict[str, subprocess.Popen]]]:
    """Yield (address, {name: worker process}) of a scheduler with workers w0 and w1, each one process with one
    thread and no nanny (a killed worker stays dead), all on 127.0.0.1 and stopped afterwards."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    with contextlib.ExitStack() as stack:
        sched = stack.enter_context(process_group(scheduler, tmp_path / "scheduler.log", env=env, cwd=tmp_path))
        workers = {name: stack.enter_context(process_group(
            [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", name,
             "--host", "127.0.0.1", "--local-directory", str(tmp_path / name)], tmp_path / f"{name}.log", env=env,
            cwd=tmp_path)) for name in ("w0", "w1")}
        wait_for_workers(address, 2, [sched, *workers.values()], timeout=120)
        yield address, workers


def kill_worker_running(client, prefix: str, workers: dict[str, subprocess.Popen], killed: list,
                        stop: threading.Event) -> None:
    """Kill (SIGKILL) the first worker seen executing a task whose key starts with ``prefix``; note its name."""
    names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
    while not stop.is_set():
        with contextlib.suppress(Exception):  # a worker that just died does not answer
            # a lambda travels by value: the workers cannot import this test module
            running = client.run(lambda dask_worker: [str(ts.key) for ts in dask_worker.state.executing], on_error="ignore")
            for address, keys in running.items():
                if any(k.startswith(prefix) for k in keys):
                    workers[names[address]].kill()
                    killed.append(names[address])
                    return
        time.sleep(0.01)


def pipeline_outputs(run_dir: Path) -> dict:
    """Return what a pipeline run wrote that must not depend on where its tasks ran."""
    def frames(pattern: str) -> list[pd.DataFrame]:
        return [pd.read_parquet(p) for p in sorted(run_dir.glob(pattern))]

    return {"cleaned": frames("clean/events/*.parquet"), "quarantine": frames("clean/quarantine/*.parquet"),
            "sessions": frames("features/sessions/sessions*.parquet"), "edges": frames("features/graph/edges.pq")}


@pytest.mark.slow
def test_pipeline_on_two_worker_processes_equals_local_and_survives_a_dead_worker(tmp_path, prefect_harness):
    """The per-day tasks of the pipeline, the sessions' days and buckets and the graph's parts and buckets run on a
    real scheduler's two worker processes; one worker is killed while it cleans a day: Dask runs that task again on
    the other, and every output equals the local run's."""
    from distributed import Client
    from prefect.settings import get_current_settings

    from flows.pipeline import pipeline_flow
    from seqrec.config import load_config

    def config(name: str, *extra: str):
        return load_config(overrides=[
            "generator.events=6000", "generator.days=4", "generator.workers=1", "features.build_embeddings=false",
            "models.names=[popularity, markov, gru4rec]", "models.gru4rec.epochs=1", "models.gru4rec.n_sample=64",
            "training.progress=false", "training.threads=1", f"output.root={tmp_path}", f"output.run_name={name}", *extra])

    local = pipeline_flow(config=config("local"))
    env = {**os.environ, "PREFECT_API_URL": get_current_settings().api.url}
    with two_workers(tmp_path, env) as (address, workers), Client(address) as client:
        client.get_task_stream()  # start recording which worker ran which task
        killed: list[str] = []
        stop = threading.Event()
        killer = threading.Thread(target=kill_worker_running, args=(client, "clean_events_day", workers, killed, stop),
                                  daemon=True)
        killer.start()
        try:
            remote = pipeline_flow(config=config("cluster", f"data.dask_address={address}"))
        finally:
            stop.set()
            killer.join(timeout=10)
        names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
        stream = client.get_task_stream()
        ran = {(rec["key"].split("-")[0], rec["worker"]) for rec in stream}
        mapped = {rec["key"].rsplit("-", 2)[0] for rec in stream}  # seqrec.parallel's tasks: name-index-token
    assert killed, "no clean_events_day task was seen executing"
    assert {key for key, _ in ran} >= {"ingest_day", "validate_events_day", "clean_events_day", "validate_tables",
                                       "clean_tables"}  # the day and table tasks all ran on the workers
    assert len({w for key, w in ran if key in {"ingest_day", "validate_events_day"}}) == 2  # both workers took days
    assert mapped >= {"index-day", "spill-day", "finish-bucket", "spill-part", "aggregate-bucket"}  # sessions, graph
    survivor = [a for a, n in names.items() if n not in killed]
    assert len(survivor) == 1 and ("clean_events_day", survivor[0]) in ran  # the other worker cleaned days
    assert remote["metrics"] == local["metrics"]
    a, b = pipeline_outputs(tmp_path / "local"), pipeline_outputs(tmp_path / "cluster")
    for name in a:
        assert len(a[name]) == len(b[name]) > 0, name
        for x, y in zip(a[name], b[name]):
            pd.testing.assert_frame_equal(x, y)


def api_url_here() -> str | None:
    """Return the Prefect API URL in this process's environment (run on each worker)."""
    return os.environ.get("PREFECT_API_URL")


@pytest.mark.slow
def test_local_process_cluster_binds_loopback_and_reports_to_the_flows_api(prefect_harness, tmp_path):
    from distributed import Client
    from prefect.settings import get_current_settings

    from flows.cluster import day_cluster
    from seqrec.config import load_config

    cfg = load_config(overrides=["data.dask_processes=true", "data.dask_workers=2", f"output.root={tmp_path}"])
    with day_cluster(cfg) as address, Client(address) as client:
        assert address.startswith("tcp://127.0.0.1:")
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2 and all(a.startswith("tcp://127.0.0.1:") for a in workers)
        assert "127.0.0.1" in client.dashboard_link
        # without it each worker would start an ephemeral Prefect server of its own
        assert set(client.run(api_url_here).values()) == {get_current_settings().api.url.rstrip("/")}
    with day_cluster(load_config(overrides=[f"output.root={tmp_path}"])) as none:
        assert none is None  # no cluster named: Prefect's threads, as before


@pytest.mark.slow
def test_workers_that_report_elsewhere_are_refused_before_any_work(prefect_harness, tmp_path):
    """A scheduler whose worker has no PREFECT_API_URL (it would record its task runs in an API of its own): the flows
    refuse it with one error naming the worker and what differs, before any task runs."""
    from distributed import LocalCluster

    from flows.cluster import check_workers
    from seqrec.config import ConfigError

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      env={"PREFECT_API_URL": ""}) as cluster:
        with pytest.raises(ConfigError, match=r"data.dask_address.*worker tcp://127\.0\.0\.1:\d+ reports to another Prefect API"):
            check_workers(cluster.scheduler_address, tmp_path / "run")


def test_a_scheduler_that_does_not_answer_is_a_config_error(prefect_harness, tmp_path):
    from flows.cluster import check_workers
    from seqrec.config import ConfigError

    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConfigError, match=rf"data.dask_address' = '{address}': no Dask scheduler answers there"):
        check_workers(address, tmp_path / "run", timeout_s=2)
