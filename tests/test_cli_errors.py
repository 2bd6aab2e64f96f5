"""Bad input gets one line naming the file and exit 1, never a traceback; TSV time units are read, not guessed silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seqrec import cli
from seqrec import columns as C
from seqrec.data.importers import ImportFormatError, import_gru4rec_tsv, infer_time_unit


def tsv(path: Path, rows: list[tuple]) -> Path:
    """Write a GRU4Rec TSV with a header; return its path."""
    path.write_text("SessionId\tItemId\tTime\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- time units
@pytest.mark.parametrize("unit, scale", [("s", 1), ("ms", 1_000), ("us", 1_000_000)])
def test_time_unit_is_inferred_from_the_gaps_within_sessions(tmp_path, unit, scale):
    start = 110_000_000  # T-ECD's days count from its own epoch: day ~1273 in seconds
    rows = [(1, "a", start * scale), (1, "b", (start + 30) * scale), (2, "c", (start + 60) * scale), (2, "a", (start + 200) * scale)]
    df = import_gru4rec_tsv(tsv(tmp_path / "t.tsv", rows))
    assert df.attrs["time_unit"] == unit
    assert df[C.TIMESTAMP].tolist() == [(start + s) * 1_000_000 for s in (0, 30, 60, 200)]  # microseconds, no overflow


def test_without_gaps_the_magnitude_decides():
    assert infer_time_unit(np.array([1.7e9, 1.7e9 + 5]), np.array([1, 2])) == "s"
    assert infer_time_unit(np.array([1.1e14]), np.array([1])) == "us"


def test_a_time_that_does_not_fit_the_stated_unit_names_the_line(tmp_path):
    path = tsv(tmp_path / "t.tsv", [(1, "a", 110_000_000_000_000), (1, "b", 110_000_030_000_000)])  # microseconds
    with pytest.raises(ImportFormatError, match=r"line 2: Time 1\.1e\+14 is negative or does not fit int64 microseconds as s"):
        import_gru4rec_tsv(path, time_unit="s")
    assert import_gru4rec_tsv(path, time_unit="us")[C.TIMESTAMP].tolist() == [110_000_000_000_000, 110_000_030_000_000]


@pytest.mark.parametrize("rows, message", [
    ([(1, "a", 10), (1, "b", -5)], r"line 3: Time -5 is negative"),
    ([(1, "a", 100), (2, "c", 50), (1, "b", 90)], r"line 4: Time goes back in time within session 1"),  # interleaved
])
def test_negative_or_backward_times_are_errors_naming_the_line(tmp_path, rows, message):
    with pytest.raises(ImportFormatError, match=message):
        import_gru4rec_tsv(tsv(tmp_path / "t.tsv", rows), time_unit="s")


def test_the_cli_says_which_unit_it_read(tmp_path, capsys):
    path = tsv(tmp_path / "t.tsv", [(1, "a", 1_000_000), (1, "b", 31_000_000), (2, "a", 5_000_000), (2, "c", 65_000_000)])
    assert cli.main(["import", str(path), "--format", "gru4rec", "--out", str(tmp_path / "e.parquet"), "--json"]) == 0
    assert '"time_unit": "us"' in capsys.readouterr().out


# --------------------------------------------------------------------------- one line, exit 1
def one_error_line(capsys) -> str:
    """Return stderr's only line (asserting there is exactly one)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A good TSV, one with a non-numeric Time, a file that is not a model, and names that do not exist."""
    good = tsv(tmp_path / "good.tsv", [(1, "a", 1), (1, "b", 2), (2, "a", 3), (2, "b", 4)])
    bad_time = tsv(tmp_path / "bad.tsv", [(1, "a", 1), (1, "b", "noon")])
    not_model = tmp_path / "notes.pt"
    not_model.write_bytes(b"these are notes, not weights")
    return {"good": good, "bad_time": bad_time, "not_model": not_model, "missing": tmp_path / "nowhere.tsv",
            "missing_model": tmp_path / "nowhere.pt", "out": tmp_path / "out"}


CASES = {
    "train, missing --train file": (["train", "markov", "--train", "{missing}", "--out", "{out}"], "nowhere.tsv: no such file"),
    "train, non-numeric Time": (["train", "markov", "--train", "{bad_time}", "--out", "{out}"], "line 3: Time 'noon' is not a number"),
    "import, missing file": (["import", "{missing}", "--format", "gru4rec", "--out", "{out}"], "nowhere.tsv: no such file"),
    "recommend, missing model": (["recommend", "{missing_model}", "{good}"], "nowhere.pt does not exist"),
    "recommend, not a model file": (["recommend", "{not_model}", "{good}"], "notes.pt is not a seqrec model file"),
    "evaluate, missing model": (["evaluate", "{missing_model}", "--split", "{out}"], "nowhere.pt does not exist"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_prints_one_line_and_exits_1(files, capsys, case):
    argv, expected = CASES[case]
    code = cli.main([a.format(**files) for a in argv])
    line = one_error_line(capsys)
    assert code == 1 and line.startswith("seqrec: ") and expected in line, line


def test_debug_shows_the_traceback(files):
    with pytest.raises(FileNotFoundError, match="nowhere.tsv: no such file"):
        cli.main(["train", "markov", "--train", str(files["missing"]), "--out", str(files["out"]), "--debug"])


# --------------------------------------------------------------------------- a partial root
def test_validate_on_a_root_with_only_events_validates_them_and_writes_nowhere_else(tmp_path, monkeypatch, capsys):
    import json
    import shutil

    from seqrec.config import GeneratorConfig
    from seqrec.synthetic.generate import generate_tecd

    full, root, cwd = tmp_path / "full", tmp_path / "root", tmp_path / "cwd"
    generate_tecd(full, GeneratorConfig(events=3000, days=2, workers=1, domains=("marketplace",)))
    shutil.copytree(full / "marketplace" / "events", root / "marketplace" / "events")  # no users, brands, items
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code = cli.main(["validate", str(root), "--out", str(tmp_path / "out"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and list(cwd.iterdir()) == []  # nothing written outside the output directory
    assert result["tables"]["tables"] == [] and "users" in result["tables"]["absent"]
    from seqrec.quality.datadocs import ASSETS

    if ASSETS.is_dir():  # Data Docs of what was validated: the event days
        docs = Path(result["data_docs"])
        assert docs.is_file() and (tmp_path / "out") in docs.parents
        assert sorted(p.stem for p in docs.parent.glob("validations/events/marketplace/raw/*/*/*.html")) == ["01082", "01083"]
    else:
        assert "make datadocs-assets" in result["data_docs"]
    assert [d["day"] for d in result["days"]] == [1082, 1083] and all(d["rows"] > 0 for d in result["days"])
