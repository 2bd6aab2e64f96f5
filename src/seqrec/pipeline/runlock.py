"""One run per run directory: an exclusive, non-blocking ``fcntl.flock`` on ``<run_dir>/.lock``.

The kernel drops a flock when the last descriptor of its open file closes, so the lock
goes with the process that holds it however it ends (SIGKILL included): there is never a
stale lock to clean up by hand. The holder writes its pid into the file so that a refused
run can name it; the pid is information only, the lock is the flock. The lock file is never
deleted: unlinking it while another process waits on the same inode would let two runs in.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from seqrec.io import OutputError

LOCK_NAME = ".lock"


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


@contextlib.contextmanager
def run_lock(run_dir: Path | str) -> Iterator[Path]:
    """Hold the run directory's lock for the block and yield the lock file's path; raise RunLockedError if held."""
    run_dir = Path(run_dir).resolve()
    fd = open_lock_file(run_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"run directory {run_dir} is in use by another run (pid {read_holder(fd)}, lock {run_dir / LOCK_NAME}); "
                "wait for it to finish or choose another output.root / output.run_name"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield run_dir / LOCK_NAME
        finally:
            os.ftruncate(fd, 0)  # still held here: a finished run's pid is never shown as the holder
    finally:
        os.close(fd)  # releases the flock
