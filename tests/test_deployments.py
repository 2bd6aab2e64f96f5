"""End to end on a real Prefect server: process work pool, deployments from deployments/prefect.yaml,
a worker running a triggered flow run to Completed, and a headless-Chromium screenshot of its page.

Everything runs in subprocesses with their own PREFECT_HOME and PREFECT_API_URL, so the session
test harness that other tests use is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from procs import process_group
from seqrec.config import GeneratorConfig
from seqrec.synthetic.generate import generate_tecd

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"
PAUSE_TRIGGERS = """
import asyncio
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as client:
        automations = await client.read_automations()
        for a in automations:
            await client.pause_automation(a.id)
        print(len(automations))
asyncio.run(main())
"""
TRIGGER = """
import json, sys
from prefect.deployments import run_deployment
run = run_deployment(sys.argv[1], parameters=json.loads(sys.argv[2]), timeout=float(sys.argv[3]))
print(json.dumps({"id": str(run.id), "state": run.state.name}))
"""


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Return once ``url``/api/health answers; raise with the server log if it died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"prefect server exited: {log.read_text()[-2000:]}"
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout} s: {log.read_text()[-2000:]}")


def prefect(args: list[str], env: dict, timeout: float = 120) -> str:
    """Run a prefect CLI command against the test server; return its output, raise naming it on failure."""
    done = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return done.stdout


def screenshot(url: str, dest: Path) -> None:
    """Save a headless-Chromium screenshot of ``url`` (flags from ENVIRONMENT.md)."""
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=15000",
                        f"--screenshot={dest}", url], capture_output=True, timeout=120, start_new_session=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, dict]]:
    """Yield (UI URL, env for clients) of a Prefect server on 127.0.0.1:<free port>, stopped afterwards."""
    url, home = f"http://127.0.0.1:{free_port()}", tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"{url}/api",
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "results"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "INFO", "PREFECT_WORKER_QUERY_SECONDS": "2"}
    port = url.rsplit(":", 1)[1]
    log = tmp_path / "server.log"
    with process_group([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port], log, env=env, cwd=REPO) as proc:
        wait_healthy(url, proc, log)
        yield url, env


@pytest.mark.slow
def test_deployment_runs_on_worker(server, tmp_path):
    url, env = server
    root = tmp_path / "raw"
    generate_tecd(root, GeneratorConfig(events=2000, days=2, workers=1, domains=("marketplace",)))
    prefect(["work-pool", "create", "seqrec-process", "--type", "process"], env)
    deployed = prefect(["--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env)
    assert "retrain/nightly" in deployed and "quality-check/new-partitions" in deployed and "backfill/on-demand" in deployed
    # the nightly deployment's trigger exists; paused here, or the days this check announces would start a retrain
    paused = subprocess.run([sys.executable, "-c", PAUSE_TRIGGERS], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert paused.returncode == 0 and int(paused.stdout.split()[-1]) >= 1, paused.stderr[-2000:]
    params = json.dumps({"config": {"data": {"root": str(root)}, "output": {"root": str(tmp_path / "out")}}})
    worker = [str(BIN / "prefect"), "worker", "start", "--pool", "seqrec-process", "--type", "process"]
    with process_group(worker, tmp_path / "worker.log", env=env, cwd=REPO):
        done = subprocess.run([sys.executable, "-c", TRIGGER, "quality-check/new-partitions", params, "240"],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    assert run["state"] == "Completed", (run, (tmp_path / "worker.log").read_text()[-3000:])
    assert [p for p in (tmp_path / "out" / "default" / "quality").rglob("*") if p.is_file()]  # it wrote its checks
    announced = json.loads((tmp_path / "out" / "default" / "announced_days.json").read_text())
    assert sorted(announced) == ["1082", "1083"]  # both days announced as seqrec.partition.arrived events

    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} absent: flow run {run['id']} Completed, screenshot not taken")
    png = tmp_path / "flow-run.png"
    screenshot(f"{url}/runs/flow-run/{run['id']}", png)
    assert png.is_file() and png.stat().st_size > 20_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_deployment_definitions_agree():
    import yaml

    from deployments.serve import build_deployments
    from seqrec.config import build_config

    spec = {d["name"]: d for d in yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]}
    assert spec["nightly"]["schedules"][0]["cron"] == "0 2 * * *" and spec["nightly"]["entrypoint"] == "flows/retrain.py:retrain_flow"
    assert {d["work_pool"]["name"] for d in spec.values()} == {"seqrec-process"}
    served = {d.name: d for d in build_deployments(build_config({"output": {"run_name": "nightly", "lock_wait_seconds": 3600}}))}
    assert set(served) == set(spec)
    assert served["nightly"].schedules[0].schedule.cron == spec["nightly"]["schedules"][0]["cron"]
    assert served["new-partitions"].parameters == spec["new-partitions"]["parameters"]
    assert served["nightly"].triggers[0].expect == set(spec["nightly"]["triggers"][0]["expect"])
    assert served["tune"].parameters == spec["tune"]["parameters"] and spec["tune"]["entrypoint"] == "flows/tune.py:tune_flow"


@pytest.mark.parametrize("first, last, ok", [(1082, 1083, True), (1083, 1083, True), (1084, 1083, False)])
def test_backfill_day_range(first, last, ok):
    from flows.retrain import with_day_range
    from seqrec.config import ConfigError, build_config

    cfg = build_config({"output": {"run_name": "nightly"}})
    if not ok:  # an impossible range is refused before any work, naming both days
        with pytest.raises(ConfigError, match=f"first_day={first} is after data.last_day={last}"):
            with_day_range(cfg, first, last)
        return
    out = with_day_range(cfg, first, last)
    assert (out.data.first_day, out.data.last_day) == (first, last)
    assert out.output.run_name == f"nightly-backfill-{first}-{last}" and out.models == cfg.models
