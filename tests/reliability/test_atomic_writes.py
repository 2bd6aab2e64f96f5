"""Output faults: a writer dying midway, an unwritable directory, a full disk; file modes.

Every output goes through ``seqrec.io.atomic_path``: the destination is either the complete
new file or untouched, no temporary file is left behind, and a failure is an ``OutputError``
naming the destination path.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from seqrec import cli, io
from seqrec.io import OutputError, atomic_path


def leftovers(directory: Path) -> list[str]:
    """Return the names of every file in ``directory`` (temporary files start with a dot)."""
    return sorted(p.name for p in directory.iterdir())


def test_exception_inside_the_block_leaves_no_file_and_no_temp(tmp_path):
    dest = tmp_path / "out" / "metrics.json"
    with pytest.raises(RuntimeError, match="writer died"):
        with atomic_path(dest) as tmp:
            tmp.write_text('{"recall@20": 0.')  # half written
            raise RuntimeError("writer died")
    assert leftovers(dest.parent) == []


def test_writer_dying_midway_keeps_the_previous_complete_file(tmp_path, monkeypatch):
    dest = tmp_path / "table.parquet"
    io.write_table(pd.DataFrame({"a": [1, 2, 3]}), dest)
    real = pq.write_table

    def dies_midway(table, where, **kwargs):
        with open(where, "wb") as fh:
            fh.write(b"PAR1 partial")  # some bytes reach the temporary file
        raise KeyboardInterrupt("killed while writing")  # not an OSError: must still clean up

    monkeypatch.setattr(pq, "write_table", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.write_table(pd.DataFrame({"a": [9]}), dest)
    monkeypatch.setattr(pq, "write_table", real)
    assert leftovers(tmp_path) == ["table.parquet"]
    assert io.read_table(dest)["a"].tolist() == [1, 2, 3]  # the old result, whole


def test_full_disk_is_an_output_error_naming_the_path(tmp_path, monkeypatch):
    dest = tmp_path / "report.txt"

    def enospc(self, data, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", enospc)
    with pytest.raises(OutputError, match=f"cannot write {dest}: No space left on device") as info:
        io.write_text("x" * 100, dest)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert leftovers(tmp_path) == []


def test_output_directory_under_a_file_is_an_output_error(tmp_path):
    (tmp_path / "not_a_dir").write_text("a file")
    dest = tmp_path / "not_a_dir" / "run" / "model.pt"
    with pytest.raises(OutputError, match=f"cannot write {dest}: Not a directory"):  # ENOTDIR, even for root
        io.save_checkpoint({"w": [1.0]}, dest)
    with pytest.raises(OutputError, match=f"cannot write {dest.parent.parent / 'm.pt'}: .*not_a_dir exists and is not a directory"):
        io.save_checkpoint({"w": [1.0]}, dest.parent.parent / "m.pt")


def test_read_only_output_directory_is_an_output_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root (CAP_DAC_OVERRIDE) ignores mode bits
            pytest.skip("running with privileges that bypass directory permissions (root); see ENOTDIR test")
        with pytest.raises(OutputError, match=f"cannot write {ro / 'x.json'}: Permission denied"):
            io.write_json({"a": 1}, ro / "x.json")
        assert leftovers(ro) == []
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_usual_mode_not_mkstemps_0600(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = io.write_json({"a": 1}, tmp_path / "a.json")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(mode)


def test_cli_reports_an_output_error_as_one_line_and_exit_1(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("1 a\n1 b\n2 a\n2 c\n")
    (tmp_path / "blocker").write_text("a file where a directory should be")
    out = tmp_path / "blocker" / "events.parquet"
    code = cli.main(["import", str(src), "--format", "user-item", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and err == f"seqrec: OutputError: cannot write {out}: {out.parent} exists and is not a directory\n"
