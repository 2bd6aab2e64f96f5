"""Reader tests: tiny hand-made T-ECD partitions with known answers, plus the two real partitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqrec import columns as C
from seqrec.config import DataConfig
from seqrec.data.reader import (
    MISSING_EMBEDDING_LEN,
    Partition,
    PartitionError,
    list_partitions,
    load_day_tables,
    load_events,
    make_dask_client,
    read_table_safe,
    repair_embeddings,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_EVENTS = DATA / "tecd_marketplace" / "events"
DAY_US = C.MICROS_PER_DAY


def event_table(day: int, rows: list[tuple]) -> pa.Table:
    """Return a T-ECD event partition: rows of (seconds into day, user, item, subdomain, action, os)."""
    secs, users, items, subs, actions, oses = zip(*rows)
    return pa.table(
        {
            "timestamp": pa.array([day * DAY_US + int(s * 1e6) for s in secs], pa.duration("us")),
            "user_id": pa.array(users, pa.uint64()),
            "item_id": pa.array(items, pa.large_string()),
            "subdomain": pa.array(subs, pa.large_string()),
            "action_type": pa.array(actions, pa.large_string()),
            "os": pa.array(oses, pa.large_string()),
        }
    )


def write_day(root: Path, table_dir: str, day: int, table: pa.Table) -> Path:
    """Write one day partition as T-ECD names it; return its path."""
    path = root / table_dir / f"{day:05d}.pq"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


DAY1 = [  # same second for users 9 and 2: sort must put user 2 first
    (5.0, 9, "nfmcg_1", "u2i", "view", "ios"),
    (5.0, 2, "nfmcg_2", "search", "click", "android"),
    (1.0, 7, "nfmcg_3", None, "like", "other"),
]
DAY2 = [(0.5, 2, "nfmcg_1", "i2i", "view", "ios"), (3.0, 3, "nfmcg_4", "catalog", "clickout", "ios")]
DAY4 = [(2.0, 4, "nfmcg_9", "other", "view", "android")]


@pytest.fixture()
def tecd_root(tmp_path: Path) -> Path:
    """A marketplace root with days 100, 101 and 103 (day 102 missing)."""
    for day, rows in ((100, DAY1), (101, DAY2), (103, DAY4)):
        write_day(tmp_path, "marketplace/events", day, event_table(day, rows))
    return tmp_path


def test_load_events_canonical_values_and_order(tecd_root: Path) -> None:
    res = load_events(tecd_root, DataConfig(first_day=100, last_day=101))
    ev = res.events
    assert list(ev.columns) == list(C.CANONICAL_EVENT_COLUMNS)
    assert ev[C.TIMESTAMP].dtype == np.int64 and ev[C.USER].dtype == np.int64
    # day 100: like at 1 s, then users 2 and 9 tied at 5 s; day 101 after.
    assert ev[C.USER].tolist() == [7, 2, 9, 2, 3]
    assert ev[C.TIMESTAMP].tolist()[:2] == [100 * DAY_US + 1_000_000, 100 * DAY_US + 5_000_000]
    assert ev[C.ITEM].tolist() == ["nfmcg_3", "nfmcg_2", "nfmcg_1", "nfmcg_1", "nfmcg_4"]
    assert set(ev[C.DOMAIN]) == {"marketplace"}
    assert pd.isna(ev[C.SUBDOMAIN].iloc[0]) and ev[C.ACTION].iloc[0] == "like"
    assert [p["rows"] for p in res.partitions] == [3, 2]
    assert res.skipped == [] and res.missing_days == {"marketplace/events": []}


def test_day_range_and_missing_days(tecd_root: Path) -> None:
    parts = list_partitions(tecd_root, "marketplace/events", 101, None)
    assert [p.day for p in parts] == [101, 103]
    assert parts[0] == Partition(tecd_root / "marketplace/events/00101.pq", 101)
    res = load_events(tecd_root, DataConfig(first_day=99, last_day=104))
    assert res.missing_days == {"marketplace/events": [99, 102, 104]}
    assert len(res.events) == 6
    assert load_events(tecd_root, DataConfig()).missing_days == {"marketplace/events": [102]}


def test_empty_day_range_is_an_error_naming_directory_and_range(tecd_root: Path) -> None:
    with pytest.raises(PartitionError, match=r"marketplace/events: no partitions for days 200\.\.210"):
        list_partitions(tecd_root, "marketplace/events", 200, 210)
    with pytest.raises(PartitionError, match="retail/events does not exist"):
        load_events(tecd_root, DataConfig(domains=("marketplace", "retail")))


def test_retail_action_spelling_kept_as_read_and_domains_merged(tecd_root: Path) -> None:
    # the reader keeps spellings as read; cleaning maps them by cleaning.action_aliases (one setting, one place)
    rows = [(4.0, 5, "fmcg_1", "main", "added-to-cart", "ios"), (6.0, 5, "fmcg_1", "other", "order", "ios")]
    write_day(tecd_root, "retail/events", 100, event_table(100, rows))
    res = load_events(tecd_root, DataConfig(domains=("marketplace", "retail"), first_day=100, last_day=100))
    ev = res.events
    assert ev[C.USER].tolist() == [7, 5, 2, 9, 5]
    assert ev[C.ACTION].tolist() == ["like", "added-to-cart", "click", "view", "order"]
    assert ev[C.DOMAIN].tolist() == ["marketplace", "retail", "marketplace", "marketplace", "retail"]


def corrupt_partitions(root: Path) -> tuple[str, str]:
    """Make day 101 truncated and day 103 a wrong-schema file; return their relative names."""
    good = (root / "marketplace/events/00101.pq").read_bytes()
    (root / "marketplace/events/00101.pq").write_bytes(good[: len(good) // 2])
    wrong = event_table(103, DAY4).set_column(1, "user_id", pa.array(["4"], pa.large_string()))
    write_day(root, "marketplace/events", 103, wrong)
    return "marketplace/events/00101.pq", "marketplace/events/00103.pq"


def test_bad_partitions_fail_naming_the_file(tecd_root: Path) -> None:
    truncated, wrong = corrupt_partitions(tecd_root)
    with pytest.raises(PartitionError, match=f"{truncated}: corrupt parquet"):
        load_events(tecd_root, DataConfig(first_day=100, last_day=101, read_retries=0))
    msg = f"{wrong}: column 'user_id' has type large_string, expected uint64"
    with pytest.raises(PartitionError, match=msg):
        load_events(tecd_root, DataConfig(first_day=102, last_day=103))


def test_bad_partitions_skipped_and_reported(tecd_root: Path) -> None:
    truncated, wrong = corrupt_partitions(tecd_root)
    res = load_events(tecd_root, DataConfig(on_bad_partition="skip", read_retries=1))
    assert res.skipped == [truncated, wrong]
    status = {p["file"]: (p["status"], p["rows"]) for p in res.partitions}
    assert status == {"marketplace/events/00100.pq": ("ok", 3), truncated: ("skipped", 0), wrong: ("skipped", 0)}
    assert "Parquet magic bytes" in res.partitions[1]["reason"]
    assert "'user_id' has type large_string" in res.partitions[2]["reason"]
    assert res.events[C.USER].tolist() == [7, 2, 9]  # the good day intact


def test_missing_column_and_uint64_overflow_are_named(tecd_root: Path) -> None:
    write_day(tecd_root, "marketplace/events", 104, event_table(104, DAY4).drop_columns(["os"]))
    with pytest.raises(PartitionError, match="00104.pq: column 'os' is missing"):
        load_events(tecd_root, DataConfig(first_day=104))
    huge = event_table(105, DAY4).set_column(1, "user_id", pa.array([2**63 + 5], pa.uint64()))
    write_day(tecd_root, "marketplace/events", 105, huge)
    with pytest.raises(PartitionError, match=f"00105.pq: column 'user_id' value {2**63 + 5} exceeds int64"):
        load_events(tecd_root, DataConfig(first_day=105))


def test_unreadable_file_retried_then_reported(tecd_root: Path) -> None:
    (tecd_root / "marketplace/events/00101.pq").write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")  # garbage footer
    res = load_events(tecd_root, DataConfig(on_bad_partition="skip", read_retries=2, first_day=101, last_day=103))
    assert res.skipped == ["marketplace/events/00101.pq"]
    assert "unreadable after 3 attempt(s)" in res.partitions[0]["reason"]
    assert len(res.events) == 1


@pytest.mark.skipif(not REAL_EVENTS.exists(), reason=f"real T-ECD partitions not found at {REAL_EVENTS}")
def test_real_partitions_match_pyarrow(tmp_path: Path) -> None:
    (tmp_path / "marketplace").mkdir()
    (tmp_path / "marketplace" / "events").symlink_to(REAL_EVENTS)
    res = load_events(tmp_path, DataConfig())
    files = sorted(REAL_EVENTS.glob("*.pq"))
    assert len(res.events) == sum(pq.read_metadata(f).num_rows for f in files) == 900_131
    ev = res.events
    days = ev[C.TIMESTAMP].to_numpy() // DAY_US
    assert set(np.unique(days)) == {1272, 1302}
    assert [p["off_day_rows"] for p in res.partitions] == [0, 0]
    raw = pq.read_table(files[0], columns=["timestamp", "user_id"])
    first = ev[days == 1272]
    assert first[C.TIMESTAMP].min() == raw["timestamp"].cast(pa.int64()).to_numpy().min()
    assert np.all(np.diff(ev[C.TIMESTAMP].to_numpy()) >= 0)
    assert set(ev[C.ACTION]) == {"view", "click", "clickout", "like"}
    assert ev[C.SUBDOMAIN].isna().sum() == (ev[C.ACTION] == "like").sum()
    assert len(res.missing_days["marketplace/events"]) == 1301 - 1273 + 1


def test_dask_local_cluster_matches_threads(tecd_root: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASK_TEMPORARY_DIRECTORY", str(tmp_path_factory.mktemp("dask")))
    cfg = DataConfig(dask_workers=2)
    threaded = load_events(tecd_root, cfg)
    with make_dask_client(cfg) as client:
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in client.scheduler_info()["workers"])
        clustered = load_events(tecd_root, cfg, client=client)
        skip_cfg = DataConfig(on_bad_partition="skip")
        corrupt_partitions(tecd_root)
        # every bad file is named, in file order, whichever worker failed first
        with pytest.raises(PartitionError, match=r"2 bad partition\(s\): .*00101.pq: corrupt.*; .*00103.pq: column"):
            load_events(tecd_root, DataConfig(read_retries=0), client=client)
        skipped = load_events(tecd_root, skip_cfg, client=client)
    pd.testing.assert_frame_equal(threaded.events, clustered.events)
    assert threaded.partitions == clustered.partitions
    assert skipped.events[C.USER].tolist() == [7, 2, 9]


# --------------------------------------------------------------------------- non-event tables
def ragged_brands() -> pa.Table:
    """Brands with embeddings of length 3, 0 (empty), null, 5 and a duplicated id."""
    emb = pa.array([[1.0, 2.0, 3.0], [], None, [1, 2, 3, 4, 5], [7.0, 8.0, 9.0]], pa.list_(pa.float64()))
    return pa.table({"brand_id": pa.array([10, 11, 12, 13, 10], pa.uint64()), "embedding": emb})


def test_read_table_safe_excludes_ragged_embeddings(tmp_path: Path) -> None:
    pq.write_table(ragged_brands(), tmp_path / "brands.pq")
    df = read_table_safe(tmp_path / "brands.pq")
    assert list(df.columns) == ["brand_id"]
    assert df["brand_id"].dtype == np.int64 and df["brand_id"].tolist() == [10, 11, 12, 13, 10]


def test_read_table_safe_repairs_embeddings_to_fixed_size(tmp_path: Path) -> None:
    pq.write_table(ragged_brands(), tmp_path / "brands.pq")
    df = read_table_safe(tmp_path / "brands.pq", embeddings="repair", dim=4)
    matrix = np.stack(df["embedding"])
    assert matrix.shape == (5, 4) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[0], [1, 2, 3, 0])  # padded
    np.testing.assert_array_equal(matrix[1], [0, 0, 0, 0])  # empty
    np.testing.assert_array_equal(matrix[3], [1, 2, 3, 4])  # truncated
    np.testing.assert_array_equal(matrix[4], [7, 8, 9, 0])
    assert df["embedding_len"].tolist() == [3, 0, MISSING_EMBEDDING_LEN, 5, 3]


def test_repair_embeddings_infers_modal_length_with_empty_first_row() -> None:
    col = pa.chunked_array([pa.array([[]], pa.list_(pa.float32())), pa.array([[1.0, 2.0], [3.0], [4.0, 5.0]], pa.list_(pa.float32()))])
    matrix, lengths = repair_embeddings(col, None)
    assert matrix.shape == (4, 2)  # not (4, 0), the np.stack / torch.tensor pitfall
    np.testing.assert_array_equal(matrix, [[0, 0], [1, 2], [3, 0], [4, 5]])
    assert lengths.tolist() == [0, 2, 1, 2]


def review_day(day: int, users: list[int], emb: list, emb_type: pa.DataType) -> pa.Table:
    """Return a reviews partition with the given users and embeddings."""
    n = len(users)
    return pa.table(
        {
            "timestamp": pa.array([day * DAY_US + i for i in range(n)], pa.duration("us")),
            "user_id": pa.array(users, pa.uint64()),
            "rating": pa.array([5] * n, pa.int8()),
            "embedding": pa.array(emb, pa.list_(emb_type)),
        }
    )


def test_load_day_tables_mixed_float_types_and_bad_schema(tmp_path: Path) -> None:
    write_day(tmp_path, "reviews", 10, review_day(10, [1, 2], [[1.0, 2.0], []], pa.float32()))
    write_day(tmp_path, "reviews", 11, review_day(11, [3], [[3.0, 4.0, 5.0]], pa.float64()))
    bad = review_day(12, [4], [[1.0]], pa.float32()).set_column(2, "rating", pa.array(["five"]))
    write_day(tmp_path, "reviews", 12, bad)
    with pytest.raises(PartitionError, match="reviews/00012.pq: column 'rating' is type string, expected int8"):
        load_day_tables(tmp_path, "reviews", DataConfig())
    cfg = DataConfig(on_bad_partition="skip", embeddings="repair", embedding_dim=2)
    res = load_day_tables(tmp_path, "reviews", cfg)
    assert res.skipped == ["reviews/00012.pq"]
    assert res.table["user_id"].tolist() == [1, 2, 3]
    assert res.table["timestamp"].tolist() == [10 * DAY_US, 10 * DAY_US + 1, 11 * DAY_US]
    np.testing.assert_array_equal(np.stack(res.table["embedding"]), [[1, 2], [0, 0], [3, 4]])
    assert res.table["embedding_len"].tolist() == [2, 0, 3]
    excluded = load_day_tables(tmp_path, "reviews", DataConfig(on_bad_partition="skip", first_day=11))
    assert list(excluded.table.columns) == ["timestamp", "user_id", "rating"]
    assert excluded.missing_days == {"reviews": []}


def test_ingest_streams_days_and_moves_off_day_rows(tecd_root: Path, tmp_path: Path) -> None:
    """One day at a time: off-day rows land in their day's file; rows of a day with no file are kept apart."""
    from seqrec.pipeline.data import ingest_events

    stray = DAY2 + [(-3600.0, 5, "nfmcg_7", "u2i", "view", "ios"), (2 * 86400 + 1.0, 6, "nfmcg_8", "u2i", "view", "ios")]
    write_day(tecd_root, "marketplace/events", 101, event_table(101, stray))  # 1 h before day 101; 1 s into day 103
    out = ingest_events(str(tecd_root), DataConfig(dask_workers=1), str(tmp_path / "ingest"))
    by_day = {d["day"]: pd.read_parquet(d["path"]) for d in out["days"]}
    assert sorted(by_day) == [100, 101, 103]
    assert [d["rows"] for d in out["days"]] == [4, 2, 2]
    assert by_day[100][C.USER].tolist() == [7, 2, 9, 5]  # sorted by (time, user); the stray row at 23:00 last
    assert by_day[103][C.ITEM].tolist() == ["nfmcg_8", "nfmcg_9"]  # 1 s before 2 s
    assert out["rows"] == 8 and out["rows_outside_days"] == 0
    assert not (tmp_path / "ingest" / "_off_day").exists()


def test_ingest_keeps_rows_of_days_without_a_file(tecd_root: Path, tmp_path: Path) -> None:
    """A row dated on day 102 (no file, in the range) is written to events_outside_days, counted."""
    from seqrec.pipeline.data import ingest_events

    write_day(tecd_root, "marketplace/events", 101, event_table(101, DAY2 + [(86400 + 10.0, 8, "nfmcg_5", "u2i", "view", "ios")]))
    out = ingest_events(str(tecd_root), DataConfig(dask_workers=2), str(tmp_path / "ingest"))
    assert out["rows_outside_days"] == 1 and sum(d["rows"] for d in out["days"]) == out["rows"] - 1
    outside = pd.read_parquet(tmp_path / "ingest" / "events_outside_days.parquet")
    assert outside[C.USER].tolist() == [8]
    whole = load_events(tecd_root, DataConfig())
    assert len(whole.events) == out["rows"]


def ingest_day_by_day(root: Path, data: DataConfig, out: Path) -> dict:
    """Run the flows' per-day ingest (plan, one step per day, settle) as plain functions."""
    from seqrec.data.ingest_days import ingest_one_day, plan_days, settle_days

    plan = plan_days(str(root), data)
    return settle_days([ingest_one_day(str(root), d["day"], data, str(out)) for d in plan["days"]], plan, data, str(out))


def test_per_day_ingest_moves_off_day_rows_like_the_one_step_ingest(tecd_root: Path, tmp_path: Path) -> None:
    stray = DAY2 + [(-3600.0, 5, "nfmcg_7", "u2i", "view", "ios"), (2 * 86400 + 1.0, 6, "nfmcg_8", "u2i", "view", "ios"),
                    (86400 + 10.0, 8, "nfmcg_5", "u2i", "view", "ios")]  # into day 100, into day 103, onto day 102 (no file)
    write_day(tecd_root, "marketplace/events", 101, event_table(101, stray))
    out = ingest_day_by_day(tecd_root, DataConfig(), tmp_path / "days")
    by_day = {d["day"]: pd.read_parquet(d["path"]) for d in out["days"]}
    assert sorted(by_day) == [100, 101, 103] and [d["rows"] for d in out["days"]] == [4, 2, 2]
    assert by_day[100][C.USER].tolist() == [7, 2, 9, 5]
    assert by_day[103][C.ITEM].tolist() == ["nfmcg_8", "nfmcg_9"]
    assert out["rows"] == 9 and out["rows_outside_days"] == 1
    assert pd.read_parquet(tmp_path / "days" / "events_outside_days.parquet")[C.USER].tolist() == [8]
    unchanged = ingest_day_by_day(tecd_root, DataConfig(), tmp_path / "days")  # settling again adds nothing twice
    assert [d["rows"] for d in unchanged["days"]] == [4, 2, 2]
    assert [d["fingerprint"] for d in unchanged["days"]] == [d["fingerprint"] for d in out["days"]]
    day100 = next(d for d in out["days"] if d["day"] == 100)
    day103 = next(d for d in out["days"] if d["day"] == 103)
    assert Path(day100["path"]).parent.name == "events" and Path(day103["path"]).parent.name == "events"  # merged copies


def test_per_day_ingest_names_every_bad_file_at_once(tecd_root: Path, tmp_path: Path) -> None:
    from seqrec.data.reader import PartitionError

    for day in (100, 101):
        (tecd_root / "marketplace" / "events" / f"{day:05d}.pq").write_bytes(b"not parquet")
    with pytest.raises(PartitionError, match=r"2 bad partition\(s\).*00100.*00101"):
        ingest_day_by_day(tecd_root, DataConfig(), tmp_path / "days")


@pytest.mark.parametrize("odd", [0.01, 0.3], ids=["runs-of-whole-rows", "odd-rows-everywhere"])
def test_repair_embeddings_equals_row_by_row_padding_and_truncation(odd: float) -> None:
    """Runs of whole rows are copied at once, the odd rows element by element (every row so when runs are short):
    the same matrix as row by row."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(5000):
        r = rng.random()
        size = 8 if r > odd else int(rng.integers(1, 12))
        rows.append(None if r < odd / 5 else [] if r < 2 * odd / 5 else list(rng.random(size).astype(np.float32)))
    arr = pa.chunked_array([pa.array(rows[:2500], type=pa.list_(pa.float32())), pa.array(rows[2500:], type=pa.list_(pa.float32()))])
    for dim in (None, 5, 8, 11):
        matrix, lengths = repair_embeddings(arr, dim)
        width = 8 if dim is None else dim
        expected = np.zeros((len(rows), width), np.float32)
        for i, row in enumerate(rows):
            if row:
                expected[i, : min(len(row), width)] = row[:width]
        np.testing.assert_array_equal(matrix, expected)
        assert lengths.tolist() == [MISSING_EMBEDDING_LEN if r is None else len(r) for r in rows]
