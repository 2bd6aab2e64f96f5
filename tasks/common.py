"""What every seqrec task shares: cache policy, retries with backoff, result storage, code version."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from prefect.cache_policies import INPUTS, TASK_SOURCE

import seqrec
from seqrec.config import SeqrecConfig

# Cache on the task's inputs (data fingerprints, config sections, code version) and its source.
CACHE = {"cache_policy": INPUTS + TASK_SOURCE, "persist_result": True}
# Retries with backoff on I/O tasks only.
IO_RETRIES = {"retries": 3, "retry_delay_seconds": [1, 5, 20]}
LONG_TIMEOUT_S = 6 * 3600  # for tasks a flow calls directly
# THREAD_TASKS: tasks the flows submit (one per model, per day) run in Prefect's worker threads, where a
# timeout cannot interrupt the work (Prefect warns so on every run, and the limit would only act after the
# work ended): they carry none; bound a whole run with the deployment's or the flow's own timeout.


@functools.cache
def code_version() -> str:
    """Return a fingerprint of the seqrec library source, so changed code invalidates caches."""
    src = Path(seqrec.__file__).parent
    h = hashlib.sha256()
    for path in sorted(src.rglob("*.py")):  # content only: a fresh clone keeps its caches valid
        h.update(path.relative_to(src).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def results_dir(cfg: SeqrecConfig) -> Path:
    """Return where task results of this run's output root are persisted."""
    path = (cfg.output.run_dir / ".prefect-results").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def bind(task, cfg: SeqrecConfig):
    """Return ``task`` storing its persisted results under the run's output root."""
    return task.with_options(result_storage=results_dir(cfg))
