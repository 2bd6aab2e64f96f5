"""Helpers for tests that start real server/worker processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def process_group(args: list[str], log: Path, env: dict | None = None, cwd: Path | None = None,
                  grace_s: float = 20) -> Iterator[subprocess.Popen]:
    """Run ``args`` in its own process group; terminate (then kill) the whole group on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
