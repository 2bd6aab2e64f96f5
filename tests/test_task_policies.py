"""Task policies: retries for transient I/O errors only, and cache keys that follow the suites as well as the library."""

from __future__ import annotations

import shutil

import pytest

from seqrec.config import ConfigError
from seqrec.quality.validate import QualityGateError
from tasks.common import IO_RETRIES, source_fingerprint


def run_failing_task(errors: list[BaseException]) -> tuple[int, str]:
    """Run a task with the I/O retry policy (no delay) that raises ``errors`` in turn; return (calls, final state)."""
    from prefect import flow, task

    calls = []

    @task(**{**IO_RETRIES, "retry_delay_seconds": 0})
    def flaky() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "done"

    @flow
    def one_task() -> str:
        return flaky(return_state=True).name

    state = one_task()
    return len(calls), state


@pytest.mark.parametrize("errors, calls, state", [
    ([OSError("share hiccup"), TimeoutError("slow disk")], 3, "Completed"),  # transient: retried, then it works
    ([ConfigError("config key 'x' = 1: bad")], 1, "Failed"),  # never retried
    ([QualityGateError("cleaned data failed 1 check(s)", [])], 1, "Failed"),
    ([FileNotFoundError("raw/users.pq: no such file")], 1, "Failed"),  # an OSError that retrying cannot mend
])
def test_only_transient_errors_are_retried(prefect_harness, errors, calls, state):
    assert run_failing_task(errors) == (calls, state)


def test_the_cache_key_moves_with_the_suites_as_well_as_the_library(tmp_path):
    lib, suites = tmp_path / "seqrec", tmp_path / "expectations"
    shutil.copytree("src/seqrec/config", lib / "config")
    shutil.copytree("expectations", suites)
    before = source_fingerprint(lib, suites)
    assert source_fingerprint(lib, suites) == before  # stable
    (suites / "suites.py").write_text((suites / "suites.py").read_text() + "\n# a threshold changed\n")
    assert source_fingerprint(lib, suites) != before
    assert source_fingerprint(lib) != source_fingerprint(lib, suites)
