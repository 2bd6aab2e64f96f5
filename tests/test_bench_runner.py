"""The benchmark runner's record keeping: merges, the committed fallback, machine lines."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("run_all", Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py")
run_all = importlib.util.module_from_spec(SPEC)
sys.modules.setdefault("run_all", run_all)  # dataclasses look their module up
SPEC.loader.exec_module(run_all)


def rec(stage: str, scale: int | None, wall: float, machine: str | None = "m1") -> dict:
    return {"stage": stage, "variant": "default", "scale": scale, "key": f"{stage}|default|{scale}", "wall_s": wall,
            "machine": machine}


def test_full_run_keeps_only_other_scales_and_only_merges_by_key() -> None:
    old = [rec("pipeline", 1_000_000, 1.0), rec("pipeline", 100_000_000, 9.0), rec("gru4rec", None, 5.0),
           rec("reader", 1_000_000, 2.0)]
    new = [rec("pipeline", 1_000_000, 1.5), rec("gru4rec", None, 4.0)]
    full = run_all.combine_records(old, new, only=False, scales=[1_000_000, 10_000_000])
    assert [(r["key"], r["wall_s"]) for r in full] == [
        ("pipeline|default|100000000", 9.0), ("pipeline|default|1000000", 1.5), ("gru4rec|default|None", 4.0)]
    merged = run_all.combine_records(old, new, only=True, scales=[1_000_000])
    assert [(r["key"], r["wall_s"]) for r in merged] == [
        ("pipeline|default|100000000", 9.0), ("reader|default|1000000", 2.0),
        ("pipeline|default|1000000", 1.5), ("gru4rec|default|None", 4.0)]


def test_missing_results_fall_back_to_committed_records(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    committed = tmp_path / "records.jsonl"
    committed.write_text(json.dumps(rec("pipeline", 10, 1.0)) + "\n\n")
    assert run_all.load_records(tmp_path / "results.jsonl") == []
    assert run_all.load_records(tmp_path / "results.jsonl", committed) == [rec("pipeline", 10, 1.0)]
    assert "committed records" in capsys.readouterr().err
    (tmp_path / "results.jsonl").write_text(json.dumps(rec("reader", 10, 2.0)) + "\n")
    assert run_all.load_records(tmp_path / "results.jsonl", committed) == [rec("reader", 10, 2.0)]


def test_machine_lines_name_every_machine_unless_all_are_this_one() -> None:
    here = run_all.machine_tag()
    assert run_all.machines_lines([rec("pipeline", 10, 1.0, here), rec("gru4rec", None, 1.0, here)]) == []
    lines = run_all.machines_lines([rec("pipeline", 10_000_000, 1.0, here), rec("gru4rec", None, 1.0, None)])
    assert lines[1] == f"  - {here}: pipeline 10M"
    assert lines[2] == "  - not recorded (records written before machines were tagged): gru4rec"
