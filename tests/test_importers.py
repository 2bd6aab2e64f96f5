"""Importer tests: tiny files with known answers, plus counts on the real public samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqrec import columns as C
from seqrec.data.importers import IMPORT_COLUMNS, ImportFormatError, import_gru4rec_tsv, import_user_item_lines
from seqrec.sequences import build_sessions

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
YOOCHOOSE = DATA / "yoochoose_rsc15_100k"
VIDEO = DATA / "amazon_video_sasrec" / "Video.txt"


def write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``; return the path."""
    path.write_text(text, encoding="utf-8")
    return path


def test_gru4rec_tsv_values_order_and_ties(tmp_path: Path) -> None:
    # session 7 comes later in the file but starts first; its second click ties with session 3's
    # second click; session 3 has two clicks at the same time: file order must survive the time sort.
    tsv = "SessionId\tItemId\tTime\n3\t100\t10.5\n3\t101\t20.000001\n3\t102\t20.000001\n7\t9\t5\n7\t100\t20.000001\n"
    df = import_gru4rec_tsv(write(tmp_path / "s.tsv", tsv), time_unit="s")
    assert tuple(df.columns) == IMPORT_COLUMNS
    assert df[C.TIMESTAMP].tolist() == [5_000_000, 10_500_000, 20_000_001, 20_000_001, 20_000_001]
    assert df[C.USER].tolist() == [7, 3, 3, 3, 7]
    assert df[C.ITEM].tolist() == ["9", "100", "101", "102", "100"]
    assert (df[C.SESSION] == df[C.USER]).all()
    assert set(df[C.DOMAIN]) == {"import"} and set(df[C.ACTION]) == {"view"}
    assert df[C.SUBDOMAIN].isna().all() and df[C.OS].isna().all()
    assert df[C.TIMESTAMP].dtype == np.int64 and df[C.USER].dtype == np.int64


def test_gru4rec_tsv_custom_keys_and_leading_zero_items(tmp_path: Path) -> None:
    tsv = "sid\tts\tiid\n2\t2\t007\n1\t1\t08\n"
    df = import_gru4rec_tsv(write(tmp_path / "c.tsv", tsv), item_key="iid", session_key="sid", time_key="ts", time_unit="s")
    assert df[C.ITEM].tolist() == ["08", "007"]  # ids stay strings, zeros kept
    assert df[C.TIMESTAMP].tolist() == [1_000_000, 2_000_000]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SessionId\tItemId\n1\t2\n", "missing column 'Time'"),
        ("SessionId\tItemId\tTime\n1\t2\t3\nx\t2\t4\n", "line 3: SessionId 'x' is not an integer"),
        ("SessionId\tItemId\tTime\n1\t2\t3\n1\t2\tnoon\n", "line 3: Time 'noon' is not a number"),
        ("SessionId\tItemId\tTime\n1\t\t3\n", "line 2: ItemId is empty"),
        ("SessionId\tItemId\tTime\n1\t2\t3\t4\t5\n", "Length of header .* does not match"),  # extra fields, first row
        ("SessionId\tItemId\tTime\n1\t2\t3\n1\t2\t3\t4\n", "Expected 3 fields in line 3, saw 4"),
        ("SessionId\tItemId\tTime\n1\t2\t3\n1\t2\n", "line 3: Time '' is not a number"),  # too few fields
    ],
)
def test_gru4rec_tsv_errors_name_file_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "bad.tsv", text)
    with pytest.raises(ImportFormatError, match=f"bad.tsv.*{message}"):
        import_gru4rec_tsv(path)


def test_user_item_lines_positions_become_time(tmp_path: Path) -> None:
    # users interleaved in the file: positions are counted per user in file order.
    df = import_user_item_lines(write(tmp_path / "u.txt", "2 50\n1 10\n1 11\n2 51\n2 50\n"))
    assert tuple(df.columns) == IMPORT_COLUMNS
    assert df[C.USER].tolist() == [1, 2, 1, 2, 2]
    assert df[C.ITEM].tolist() == ["10", "50", "11", "51", "50"]
    assert df[C.TIMESTAMP].tolist() == [0, 0, 1_000_000, 1_000_000, 2_000_000]
    ds, unknown = build_sessions(df)
    assert unknown == 0
    assert [ds.vocab.decode(ds.session(i)).tolist() for i in range(ds.n_sessions)] == [["10", "11"], ["50", "51", "50"]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2\n1 2 3\n", "line 2: expected 'user item', got '1 2 3'"),
        ("1 2\n\n1 3\n", "line 2: expected 'user item', got ''"),
        ("1 2\nbob 3\n", "line 2: user 'bob' is not an integer"),
        ("", "no 'user item' lines"),
    ],
)
def test_user_item_lines_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "bad.txt", text)
    with pytest.raises(ImportFormatError, match=f"bad.txt: {message}"):
        import_user_item_lines(path)


@pytest.mark.skipif(not YOOCHOOSE.exists(), reason=f"YooChoose sample not found at {YOOCHOOSE}")
def test_real_yoochoose_counts() -> None:
    train = import_gru4rec_tsv(YOOCHOOSE / "yoochoose-clicks-100k_train_full.txt")
    test = import_gru4rec_tsv(YOOCHOOSE / "yoochoose-clicks-100k_test.txt")
    assert len(train) == 70_278 and len(test) == 13_568
    raw = pd.read_csv(YOOCHOOSE / "yoochoose-clicks-100k_test.txt", sep="\t")
    assert test[C.SESSION].nunique() == raw["SessionId"].nunique()
    assert test[C.TIMESTAMP].min() == round(raw["Time"].min() * 1e6)
    assert train[C.TIMESTAMP].max() < test[C.TIMESTAMP].max()


@pytest.mark.skipif(not VIDEO.exists(), reason=f"Amazon Video Games (SASRec) file not found at {VIDEO}")
def test_real_video_counts() -> None:
    df = import_user_item_lines(VIDEO)
    assert len(df) == 287_107
    assert df[C.USER].nunique() == 31_013
    assert df[C.ITEM].nunique() == 23_715
    first = df[df[C.USER] == 1]
    assert first[C.ITEM].tolist()[:3] == ["6393", "13504", "14087"]  # the file's first three lines
    assert first[C.TIMESTAMP].tolist()[:3] == [0, 1_000_000, 2_000_000]
