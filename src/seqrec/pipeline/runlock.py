"""One run per run directory: an exclusive, non-blocking ``fcntl.flock`` on ``<run_dir>/.lock``.

The kernel drops a flock when the last descriptor of its open file closes, so the lock
goes with the process that holds it however it ends (SIGKILL included): there is never a
stale lock to clean up by hand. The lock is re-entrant within a process (the CLI holds it and
the flow it starts takes it again), and a second run may wait for the first (``wait_seconds``,
``output.lock_wait_seconds``) instead of being refused at once. The holder writes its pid into the file so that a refused
run can name it; the pid is information only, the lock is the flock. The lock file is never
deleted: unlinking it while another process waits on the same inode would let two runs in.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Iterator

from seqrec.io import OutputError

LOCK_NAME = ".lock"
POLL_SECONDS = 0.5
_HELD: dict[Path, int] = {}  # run directories this process holds -> nesting depth
_HELD_GUARD = threading.Lock()


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock; the message names the directory and its pid."""


def read_holder(fd: int) -> str:
    """Return the pid written in an open lock file, or "unknown" while the holder has not written it yet."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"


def open_lock_file(run_dir: Path) -> int:
    """Return a descriptor of ``<run_dir>/.lock`` (created, with its directory); raise OutputError naming it."""
    path = run_dir / LOCK_NAME
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise OutputError(f"cannot create run lock {path}: {err.strerror or err}") from err


def acquire(fd: int, run_dir: Path, wait_seconds: float) -> None:
    """Take the flock on ``fd``, waiting up to ``wait_seconds``; raise RunLockedError naming the holder."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                waited = f" (waited {wait_seconds:g} s)" if wait_seconds else ""
                raise RunLockedError(
                    f"run directory {run_dir} is in use by another run (pid {read_holder(fd)}, lock {run_dir / LOCK_NAME})"
                    f"{waited}; wait for it to finish or choose another output.root / output.run_name"
                ) from None
            time.sleep(POLL_SECONDS)


@contextlib.contextmanager
def run_lock(run_dir: Path | str, wait_seconds: float = 0.0) -> Iterator[Path]:
    """Hold the run directory's lock for the block and yield the lock file's path; raise RunLockedError if held.

    Already held by this process: the block runs under that hold. Held by another: wait up to
    ``wait_seconds`` for it (0: refuse at once).
    """
    run_dir = Path(run_dir).resolve()
    with _HELD_GUARD:
        nested = run_dir in _HELD
        if nested:
            _HELD[run_dir] += 1
    if nested:
        try:
            yield run_dir / LOCK_NAME
        finally:
            with _HELD_GUARD:
                _HELD[run_dir] -= 1
        return
    fd = open_lock_file(run_dir)
    try:
        acquire(fd, run_dir, wait_seconds)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        with _HELD_GUARD:
            _HELD[run_dir] = 1
        try:
            yield run_dir / LOCK_NAME
        finally:
            with _HELD_GUARD:
                del _HELD[run_dir]
            os.ftruncate(fd, 0)  # still held here: a finished run's pid is never shown as the holder
    finally:
        os.close(fd)  # releases the flock
