"""Faults in the raw data: transient read errors, truncated and wrong-schema files, missing days.

Each test injects the fault into real parquet files (or into pyarrow's read call) and asserts
what the reader, the ingest stage and the CLI do: recover, or skip and report, or fail naming
the file; a partition is never dropped without a trace.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqrec import cli
from seqrec.pipeline import data as stages
from seqrec.data import reader as R
from seqrec.config import DataConfig
from seqrec.data.reader import PartitionError, load_events

DAY_US = 86_400_000_000
DAYS = (100, 101, 102, 104)  # day 103 is missing on purpose


def day_table(day: int) -> pa.Table:
    """Return a valid raw event partition of three events on ``day``."""
    return pa.table({
        "timestamp": pa.array([day * DAY_US + s * 1_000_000 for s in (1, 2, 3)], pa.duration("us")),
        "user_id": pa.array([day, day + 1, day], pa.uint64()),
        "item_id": pa.array([f"nfmcg_{day}", "nfmcg_1", "nfmcg_2"], pa.large_string()),
        "subdomain": pa.array(["u2i", "search", None], pa.large_string()),
        "action_type": pa.array(["view", "click", "like"], pa.large_string()),
        "os": pa.array(["ios", "android", "other"], pa.large_string()),
    })


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """A marketplace root with days 100, 101, 102 and 104."""
    for day in DAYS:
        path = tmp_path / "marketplace" / "events" / f"{day:05d}.pq"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(day_table(day), path)
    return tmp_path


def flaky(real, fail_times: dict[str, int]):
    """Return ``real`` wrapped to raise OSError the first ``fail_times[name]`` calls per file name (thread-safe)."""
    calls: Counter = Counter()
    lock = threading.Lock()

    def read(path, *args, **kwargs):
        name = Path(path).name
        with lock:
            calls[name] += 1
            fail = calls[name] <= fail_times.get(name, 0)
        if fail:
            raise OSError(5, f"injected transient I/O error #{calls[name]}", str(path))
        return real(path, *args, **kwargs)

    read.calls = calls
    return read


def test_transient_read_errors_recover_and_equal_a_clean_run(root, monkeypatch):
    clean = load_events(root, DataConfig(read_retries=3))
    monkeypatch.setattr(R, "RETRY_BACKOFF_S", 0.001)
    # half the partitions fail: 00101 twice on read_table, 00104 three times on read_schema (retries = 3)
    read_table = flaky(pq.read_table, {"00101.pq": 2})
    read_schema = flaky(pq.read_schema, {"00104.pq": 3})
    monkeypatch.setattr(R.pq, "read_table", read_table)
    monkeypatch.setattr(R.pq, "read_schema", read_schema)
    faulty = load_events(root, DataConfig(read_retries=3))
    assert read_table.calls["00101.pq"] == 3 and read_schema.calls["00104.pq"] == 4  # the faults really fired
    pd.testing.assert_frame_equal(faulty.events, clean.events)
    assert faulty.partitions == clean.partitions and faulty.skipped == []


def test_persistent_read_errors_exhaust_retries_then_fail_or_skip_naming_the_file(root, monkeypatch):
    monkeypatch.setattr(R, "RETRY_BACKOFF_S", 0.001)
    monkeypatch.setattr(R.pq, "read_schema", flaky(pq.read_schema, {"00102.pq": 99}))
    with pytest.raises(PartitionError, match=r"marketplace/events/00102.pq: unreadable after 2 attempt\(s\)"):
        load_events(root, DataConfig(read_retries=1))
    res = load_events(root, DataConfig(read_retries=1, on_bad_partition="skip"))
    assert res.skipped == ["marketplace/events/00102.pq"]
    assert sorted(res.events["user_id"].unique()) == [100, 101, 102, 104, 105]  # the other days intact


def damage(root: Path) -> tuple[str, str]:
    """Truncate day 101 and give day 102 a string user_id; return their relative names."""
    day101 = root / "marketplace/events/00101.pq"
    day101.write_bytes(day101.read_bytes()[:100])
    wrong = day_table(102).set_column(1, "user_id", pa.array(["1", "2", "3"], pa.large_string()))
    pq.write_table(wrong, root / "marketplace/events/00102.pq")
    return "marketplace/events/00101.pq", "marketplace/events/00102.pq"


def test_bad_partitions_skip_mode_reports_every_gap(root, tmp_path):
    truncated, wrong = damage(root)
    out = stages.ingest_events(str(root), DataConfig(on_bad_partition="skip", read_retries=0, first_day=100, last_day=104),
                               str(tmp_path / "out"))
    assert out["skipped"] == [truncated, wrong]
    assert out["missing_days"] == {"marketplace/events": [103]}
    reasons = {p["file"]: p["reason"] for p in out["partitions"] if p["status"] == "skipped"}
    assert "corrupt parquet" in reasons[truncated] and "'user_id' has type large_string" in reasons[wrong]
    # every requested day is accounted for: written, skipped (with reason) or reported missing
    assert [d["day"] for d in out["days"]] == [100, 104] and out["rows"] == 6


def test_bad_partitions_fail_mode_cli_exits_1_naming_both_files(root, tmp_path, capsys):
    truncated, wrong = damage(root)
    code = cli.main(["load", str(root), "--out", str(tmp_path / "out"), "--set", "data.read_retries=0"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("seqrec: PartitionError: 2 bad partition(s)") and err.count("\n") == 1
    assert truncated in err and wrong in err
    assert not (tmp_path / "out").exists()  # nothing written before the failure


def test_skip_mode_cli_json_lists_skipped_and_missing_days(root, tmp_path, capsys):
    truncated, _ = damage(root)
    (root / "marketplace/events/00102.pq").unlink()  # now: 101 truncated, 102 and 103 missing
    code = cli.main(["load", str(root), "--out", str(tmp_path / "out"), "--json",
                     "--set", "data.on_bad_partition=skip", "--set", "data.read_retries=0"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["skipped"] == [truncated] and summary["missing_days"] == {"marketplace/events": [102, 103]}
