"""Concurrent runs: one run per run directory (``seqrec.pipeline.runlock``), separate roots independent.

Every test uses real processes: the lock is an ``fcntl.flock`` whose owner is a process, and
its release on process death (SIGKILL) is the kernel's, not ours.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqrec.pipeline.runlock import LOCK_NAME, RunLockedError, run_lock

REPO = Path(__file__).resolve().parents[2]
HOLDER = r'''
import sys, time
from seqrec.pipeline.runlock import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
'''
# ``seqrec run`` with the Prefect pipeline replaced by a stand-in that writes into its run
# directory and waits for a release file: the lock, the CLI and the I/O are the real ones.
RUN = r'''
import os, sys, time, types
from pathlib import Path
from seqrec import io

def pipeline_flow(config):
    run = config.output.run_dir
    io.write_text(str(os.getpid()), run / "started")
    while not Path(sys.argv[1]).exists():
        time.sleep(0.02)
    io.write_json({"pid": os.getpid(), "run_dir": str(run)}, run / "result.json")
    return {"run_dir": str(run)}

sys.modules["flows"] = types.ModuleType("flows")
sys.modules["flows.pipeline"] = types.SimpleNamespace(pipeline_flow=pipeline_flow)
from seqrec.cli import main
sys.exit(main(["run", "--json", *sys.argv[2:]]))
'''


def spawn(code: str, *args: str) -> subprocess.Popen:
    """Start ``python -c code args`` in the repository root; return the process."""
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_until(condition, what: str, procs: list[subprocess.Popen], timeout: float = 60.0) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` (and the output of a child that died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"child exited {p.returncode} while waiting for {what}: {p.communicate()}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture()
def holder(tmp_path):
    """A child process holding the lock of ``tmp_path / "run"``; killed at the end."""
    proc = spawn(HOLDER, str(tmp_path / "run"))
    assert proc.stdout.readline().strip() == "locked", proc.communicate()
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def test_second_process_is_refused_naming_dir_and_holder_pid(tmp_path, holder):
    run = (tmp_path / "run").resolve()
    with pytest.raises(RunLockedError, match=rf"run directory {run} is in use by another run \(pid {holder.pid},"):
        with run_lock(run):
            pytest.fail("entered a locked run directory")
    with run_lock(tmp_path / "other"):  # another run directory is free meanwhile
        assert (tmp_path / "other" / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_lock_is_released_when_the_holder_is_killed(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)  # no cleanup code runs
    holder.wait(timeout=30)
    with run_lock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_lock_is_released_on_exit_and_on_error(tmp_path):
    with pytest.raises(ValueError, match="boom"):
        with run_lock(tmp_path):
            raise ValueError("boom")
    with run_lock(tmp_path):
        pass
    assert (tmp_path / LOCK_NAME).read_text() == ""  # no stale pid after a finished run


def test_cli_runs_on_different_roots_overlap_and_a_second_run_on_a_root_is_refused(tmp_path):
    release = tmp_path / "release"
    roots = [tmp_path / "a", tmp_path / "b"]
    runs = [spawn(RUN, str(release), "--set", f"output.root={r}", "--set", "output.run_name=r1") for r in roots]
    try:
        wait_until(lambda: all((r / "r1" / "started").exists() for r in roots), "both runs to start", runs)
        # both hold their locks now; a third run on root a is refused before any work
        third = spawn(RUN, str(release), "--set", f"output.root={roots[0]}", "--set", "output.run_name=r1")
        out, err = third.communicate(timeout=60)
        assert third.returncode == 1 and out == ""
        assert err == (f"seqrec: RunLockedError: run directory {(roots[0] / 'r1').resolve()} is in use by another run "
                       f"(pid {runs[0].pid}, lock {(roots[0] / 'r1').resolve() / LOCK_NAME}); wait for it to finish "
                       "or choose another output.root / output.run_name\n")
        release.touch()
        results = [p.communicate(timeout=60) for p in runs]
    finally:
        for p in runs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in runs] == [0, 0], results
    for root, proc in zip(roots, runs):  # each run wrote only its own directory, whole
        assert json.loads((root / "r1" / "result.json").read_text()) == {"pid": proc.pid, "run_dir": str(root / "r1")}
        assert sorted(p.name for p in (root / "r1").iterdir()) == [LOCK_NAME, "result.json", "started"]


def test_the_lock_is_reentrant_in_its_process_and_still_refuses_others(tmp_path):
    run = tmp_path / "run"
    with run_lock(run):
        with run_lock(run):  # the CLI holds it and the flow it starts takes it again
            assert (run / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        probe = spawn("import sys\nfrom seqrec.pipeline.runlock import run_lock\nwith run_lock(sys.argv[1]): pass\n", str(run))
        _, err = probe.communicate(timeout=60)
        assert probe.returncode == 1 and "is in use by another run" in err  # the outer hold is still there
    with run_lock(run):  # released once the outermost block ends
        pass


def test_a_second_run_waits_for_the_first_then_runs(tmp_path):
    run = tmp_path / "run"
    short = spawn(HOLDER.replace("time.sleep(120)", "time.sleep(2)"), str(run))
    assert short.stdout.readline().strip() == "locked"
    start = time.monotonic()
    with pytest.raises(RunLockedError, match=r"\(waited 0.3 s\)"):
        with run_lock(run, wait_seconds=0.3):
            pytest.fail("entered a locked run directory")
    with run_lock(run, wait_seconds=60):  # entered once the first run let go (it holds the lock for 2 s)
        waited = time.monotonic() - start
    short.communicate()
    assert 1.0 < waited < 30


@pytest.mark.slow
def test_every_flow_that_writes_a_run_directory_takes_its_lock(tmp_path, holder, prefect_harness):
    from flows.pipeline import pipeline_flow
    from flows.retrain import backfill_flow, quality_check_flow, retrain_flow
    from seqrec.config import build_config

    cfg = build_config({"output": {"root": str(tmp_path), "run_name": "run"}, "generator": {"events": 2000}})
    for flow in (pipeline_flow, retrain_flow, quality_check_flow):
        with pytest.raises(RunLockedError, match="is in use by another run"):
            flow(config=cfg)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_NAME]  # nothing written before the refusal
    other = spawn(HOLDER, str(tmp_path / "run-backfill-1082-1083"))
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match="run-backfill-1082-1083"):
            backfill_flow(config=cfg, first_day=1082, last_day=1083)
    finally:
        other.kill()
        other.communicate()
