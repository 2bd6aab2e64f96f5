"""The cleaned gate judges every day and table at once: its error names each failing partition and check."""

from __future__ import annotations

import pandas as pd
import pytest

from seqrec import io
from seqrec.config import CleaningConfig, QualityConfig
from seqrec.pipeline.quality import check_cleaned_gate, validate_events_day
from seqrec.quality.validate import QualityGateError


def write_day(tmp_path, day: int, actions: list[str]) -> dict:
    """Write a canonical marketplace event day with the given actions; return its ingest record."""
    n = len(actions)
    frame = pd.DataFrame({"timestamp": [day * 86_400_000_000 + i for i in range(n)], "user_id": list(range(n)),
                          "item_id": [f"nfmcg_{i}" for i in range(n)], "domain": ["marketplace"] * n,
                          "action_type": actions, "subdomain": ["u2i"] * n, "os": ["ios"] * n})
    path = io.write_table(frame, tmp_path / "events" / f"{day:05d}.parquet")
    return {"day": day, "path": str(path), "fingerprint": str(day)}


def test_every_failing_day_is_named_and_the_summaries_are_written(tmp_path):
    days = [write_day(tmp_path, 1082, ["view", "jump"]), write_day(tmp_path, 1083, ["view", "click"]),
            write_day(tmp_path, 1084, ["bounce", "view"])]
    out = tmp_path / "quality"
    gates = [validate_events_day(d, "cleaned", QualityConfig(), CleaningConfig(), str(out)) for d in days]
    assert [g["failed"] for g in gates] == [1, 0, 1]
    assert all((out / "cleaned" / f"events_{d['day']:05d}.parquet").is_file() for d in days)  # written before judging
    with pytest.raises(QualityGateError) as err:
        check_cleaned_gate(gates, QualityConfig())
    message = str(err.value)
    assert "failed 2 check(s)" in message
    assert "events.marketplace[01082] cleaned: action_type.values" in message
    assert "events.marketplace[01084] cleaned: action_type.values" in message and "[01083]" not in message


def test_warn_mode_returns_the_failures_instead(tmp_path):
    gates = [validate_events_day(write_day(tmp_path, 1082, ["jump"]), "cleaned", QualityConfig(), CleaningConfig(),
                                 str(tmp_path / "q"))]
    failures = check_cleaned_gate(gates, QualityConfig(on_cleaned_failure="warn"))
    assert len(failures) == 1 and "action_type.values" in failures[0]
    assert check_cleaned_gate([{"failures": []}], QualityConfig()) == []  # a clean pass raises nothing
