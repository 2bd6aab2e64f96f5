"""Ingest on a real Dask cluster (scheduler + one worker as subprocesses, 127.0.0.1 only) equals a local run."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
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
