"""What every seqrec task shares: cache policy, retries with backoff, result storage, code version."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from prefect.cache_policies import INPUTS, TASK_SOURCE

import expectations
import seqrec
from seqrec.config import SeqrecConfig

# Cache on the task's inputs (data fingerprints, config sections, code version) and its source.
CACHE = {"cache_policy": INPUTS + TASK_SOURCE, "persist_result": True}
# The same, for tasks told where to run their work (``address``: a Dask scheduler, or None for this process): the
# result does not depend on it, and a local cluster's address changes with every run.
CACHE_ANYWHERE = {"cache_policy": (INPUTS - "address") + TASK_SOURCE, "persist_result": True}
# Errors that retrying cannot mend although they are OSErrors: the file is not there or not readable.
PERMANENT_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def transient_only(task, task_run, state) -> bool:
    """Return whether a failed I/O task is worth retrying: an OSError that may pass (a flaky disk or network share).

    A configuration error, a failed quality gate, a bad partition or a missing file fails at once.
    """
    error = state.result(raise_on_failure=False)
    return isinstance(error, OSError) and not isinstance(error, PERMANENT_OS_ERRORS)


# Retries with backoff on I/O tasks only, and only for transient errors.
IO_RETRIES = {"retries": 3, "retry_delay_seconds": [1, 5, 20], "retry_condition_fn": transient_only}
LONG_TIMEOUT_S = 6 * 3600  # for tasks a flow calls directly
# THREAD_TASKS: tasks the flows submit (one per model, per day) run in Prefect's worker threads, where a
# timeout cannot interrupt the work (Prefect warns so on every run, and the limit would only act after the
# work ended): they carry none; bound a whole run with the deployment's or the flow's own timeout.


def source_fingerprint(*folders: Path) -> str:
    """Return a hash of the Python sources under ``folders`` (names relative to each folder, and contents)."""
    h = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):  # content only: a fresh clone keeps its caches valid
            h.update(folder.name.encode() + b"/" + path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


@functools.cache
def code_version() -> str:
    """Return a fingerprint of the library and the expectation suites, so changed code or suites invalidate caches."""
    return source_fingerprint(Path(seqrec.__file__).parent, Path(expectations.__file__).parent)


def results_dir(cfg: SeqrecConfig) -> Path:
    """Return where task results of this run's output root are persisted."""
    path = (cfg.output.run_dir / ".prefect-results").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def bind(task, cfg: SeqrecConfig):
    """Return ``task`` storing its persisted results under the run's output root."""
    return task.with_options(result_storage=results_dir(cfg))
