"""Sessionization: gap rule, ordering, ids, midnight stitching and filters on tiny tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seqrec import columns as C
from seqrec.config import SessionConfig
from seqrec.features.sessions import REASON_LENGTH, REASON_SUPPORT, ROUND, sessionize, sessionize_partitions

MIN = 60 * C.MICROS_PER_SECOND
DAY = C.MICROS_PER_DAY


def events(rows: list[tuple[int, int, str]]) -> pd.DataFrame:
    """Return a canonical event frame from (user, timestamp, item) rows."""
    users, times, items = zip(*rows) if rows else ((), (), ())
    return pd.DataFrame({
        C.TIMESTAMP: np.array(times, dtype=np.int64), C.USER: np.array(users, dtype=np.int64),
        C.ITEM: list(items), C.ACTION: "view",
    })


@pytest.mark.parametrize(
    "gap_us, sessions",
    [
        (30 * MIN - 1, 1),  # just under the gap: same session
        (30 * MIN, 1),  # exactly the gap: same session (rule is gap > gap_minutes)
        (30 * MIN + 1, 2),  # one microsecond more: new session
    ],
)
def test_gap_exactly_at_threshold(gap_us: int, sessions: int) -> None:
    out = sessionize(events([(1, 0, "a"), (1, gap_us, "b")]), SessionConfig(gap_minutes=30))
    assert out.events[C.SESSION].nunique() == sessions


def test_ids_ordered_by_start_then_user_with_interleaved_users() -> None:
    # user 9 starts first; users 5 and 7 start together (tie broken by user id); user 5 returns after 2 h
    df = events([(7, 10 * MIN, "b"), (9, 0, "a"), (5, 10 * MIN, "c"), (9, 5 * MIN, "d"), (5, 130 * MIN, "e"), (7, 20 * MIN, "f")])
    out = sessionize(df, SessionConfig()).events
    assert out[C.USER].tolist() == [5, 5, 7, 7, 9, 9]
    assert out[C.ITEM].tolist() == ["c", "e", "b", "f", "a", "d"]
    assert out[C.SESSION].tolist() == [1, 3, 2, 2, 0, 0]
    assert out[C.SESSION].dtype == np.int64


def test_ties_in_time_keep_input_order() -> None:
    df = events([(1, 100, "z"), (1, 100, "a"), (1, 50, "m"), (1, 100, "k")])
    out = sessionize(df, SessionConfig()).events
    assert out[C.ITEM].tolist() == ["m", "z", "a", "k"]


def test_session_over_midnight_is_one_session_across_partitions() -> None:
    day0 = events([(1, DAY - 10 * MIN, "a"), (2, DAY - 50 * MIN, "x")])
    day1 = events([(1, DAY + 10 * MIN, "b"), (2, DAY + 10 * MIN, "y"), (3, DAY + 20 * MIN, "q")])
    out = sessionize_partitions([day0, day1], SessionConfig())
    sess = out.events.set_index(C.ITEM)[C.SESSION]
    assert sess["a"] == sess["b"]  # 20 minutes apart over midnight: one session
    assert sess["x"] != sess["y"]  # 60 minutes apart: two sessions
    assert out.report["sessions_stitched_across_partitions"] == 1
    assert sess.to_dict() == {"x": 0, "a": 1, "b": 1, "y": 2, "q": 3}


def random_events(seed: int, n: int = 3000) -> pd.DataFrame:
    """Return events of 40 users over 3 days with gaps clustered around 30 minutes, some tied."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 40, n)
    gaps = rng.choice([0, 29 * MIN, 30 * MIN, 31 * MIN, 3 * MIN, 5 * 60 * MIN], n)
    df = pd.DataFrame({C.USER: users, "gap": gaps}).assign(**{C.TIMESTAMP: lambda d: d.groupby(C.USER)["gap"].cumsum()})
    df[C.TIMESTAMP] = (df[C.TIMESTAMP] % (3 * DAY)).astype(np.int64)  # wrap: users active on all days
    df[C.ITEM] = [f"i{v}" for v in rng.integers(0, 30, n)]
    return df[[C.TIMESTAMP, C.USER, C.ITEM]].sort_values(C.TIMESTAMP, kind="stable", ignore_index=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partitions_give_the_same_sessions_as_one_table(seed: int) -> None:
    df = random_events(seed)
    parts = [g.reset_index(drop=True) for _, g in df.groupby(df[C.TIMESTAMP] // DAY, sort=True)]
    cfg = SessionConfig(min_item_support=90, min_session_length=2)
    whole, split = sessionize(df, cfg), sessionize_partitions(parts, cfg)
    pd.testing.assert_frame_equal(whole.events, split.events)
    pd.testing.assert_frame_equal(whole.removed, split.removed)
    assert split.report["sessions_stitched_across_partitions"] > 0  # the case was exercised
    assert whole.report["sessions_in"] == split.report["sessions_in"]


def test_empty_day_partition_is_allowed() -> None:
    day0, day2 = events([(1, DAY - 5 * MIN, "a")]), events([(1, 2 * DAY, "b")])
    out = sessionize_partitions([day0, events([]), day2], SessionConfig())
    assert out.events[C.SESSION].tolist() == [0, 1] and out.report["partitions"] == 3


def test_partitions_out_of_time_order_are_an_error() -> None:
    day0, day1 = events([(1, DAY + 5, "a")]), events([(1, 5, "b")])
    with pytest.raises(ValueError, match="partition 1: user 1"):
        sessionize_partitions([day0, day1], SessionConfig())


def filter_table() -> pd.DataFrame:
    """Six 2-event sessions of one user each (users 0..5), 2 h apart, plus user 6's single event."""
    sessions = [["a", "b"], ["a", "c"], ["b"], ["c", "d"], ["a", "e"], ["e", "a"], ["z"]]
    return events([(u, t * MIN, item) for u, items in enumerate(sessions) for t, item in enumerate(items)])


def test_filters_to_fixed_point_count_every_removed_event() -> None:
    # round 1: support drops d, z (once each); length drops [b], [c], i.e. sessions 2 and 3.
    # round 2: b and c now have one event each: support drops them; sessions 0 and 1 become
    # [a] and are dropped by length. round 3 removes nothing.
    cfg = SessionConfig(min_item_support=2, min_session_length=2, filter_mode="fixed_point")
    out = sessionize(filter_table(), cfg)
    assert out.events[C.USER].tolist() == [4, 4, 5, 5]
    rep = out.report
    assert (rep["events_in"], rep["events_out"], rep["filter_rounds"]) == (12, 4, 3)
    assert rep["events_removed_item_support"] == 4 and rep["events_removed_session_length"] == 4
    assert rep["sessions_removed_session_length"] == 4 and rep["sessions_removed_item_support"] == 1  # user 6
    assert out.removed.groupby([ROUND, C.REASON]).size().to_dict() == {
        (1, REASON_SUPPORT): 2, (1, REASON_LENGTH): 2, (2, REASON_SUPPORT): 2, (2, REASON_LENGTH): 2,
    }


def test_filters_once_stop_after_one_round() -> None:
    cfg = SessionConfig(min_item_support=2, min_session_length=2, filter_mode="once")
    out = sessionize(filter_table(), cfg)
    assert out.events[C.USER].tolist() == [0, 0, 1, 1, 4, 4, 5, 5]
    assert out.report["filter_rounds"] == 1 and out.report["events_removed"] == 4


def test_no_event_is_lost() -> None:
    df = random_events(3, 500)
    out = sessionize(df, SessionConfig(min_item_support=20, min_session_length=3))
    both = pd.concat([out.events, out.removed])[[C.TIMESTAMP, C.USER, C.ITEM]]
    key = [C.USER, C.TIMESTAMP, C.ITEM]
    pd.testing.assert_frame_equal(both.sort_values(key, ignore_index=True), df.sort_values(key, ignore_index=True))
    assert out.report["events_removed"] == len(out.removed) > 0


def test_ids_do_not_depend_on_input_order() -> None:
    df = random_events(4, 400).drop_duplicates([C.USER, C.TIMESTAMP], ignore_index=True)  # no ties
    a = sessionize(df, SessionConfig()).events
    b = sessionize(df.sample(frac=1.0, random_state=1), SessionConfig()).events
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_bad_input_names_the_column() -> None:
    with pytest.raises(KeyError, match="user_id"):
        sessionize(events([(1, 0, "a")]).drop(columns=C.USER), SessionConfig())
    df = events([(1, 0, "a")]).astype({C.USER: float})
    df.loc[0, C.USER] = np.nan
    with pytest.raises(ValueError, match="'user_id' has 1 null"):
        sessionize(df, SessionConfig())


def random_days(seed: int, days: int = 4, per_day: int = 3000) -> list[pd.DataFrame]:
    """Return day partitions of random events: few users, bursty times, a skewed catalogue."""
    rng = np.random.default_rng(seed)
    parts = []
    for d in range(days):
        n = per_day
        times = d * DAY + np.sort(rng.integers(0, DAY, n))
        times[rng.random(n) < 0.2] = d * DAY + 5  # ties in time
        users = rng.integers(0, 60, n)
        items = [f"i{k}" for k in rng.zipf(1.6, n) % 400]
        part = events(list(zip(users.tolist(), times.tolist(), items)))
        part[C.OS] = np.where(rng.random(n) < 0.5, "ios", None)
        parts.append(part)
    return parts


@pytest.mark.parametrize("support, length, mode", [(1, 1, "fixed_point"), (3, 2, "fixed_point"), (5, 4, "once")])
def test_out_of_core_stage_equals_in_memory(tmp_path, support: int, length: int, mode: str) -> None:
    """Day files sessionized in buckets of ~1000 rows give the in-memory result: rows, order, ids, removals, counts."""
    from seqrec import io
    from seqrec.features.sessions_stream import sessionize_files

    parts = random_days(support * 10 + length)
    paths = [io.write_table(p, tmp_path / "days" / f"{i:05d}.parquet") for i, p in enumerate(parts)]
    cfg = SessionConfig(min_item_support=support, min_session_length=length, filter_mode=mode, gap_minutes=20)
    mem = sessionize_partitions(parts, cfg)
    out = sessionize_files(paths, cfg, tmp_path / "out", bucket_events=1000)
    got = pd.read_parquet(out["sessions"])
    assert out["report"]["buckets"] >= 10
    pd.testing.assert_frame_equal(got, mem.events, check_dtype=False)
    removed = pd.read_parquet(out["removed"])
    key = [C.USER, C.TIMESTAMP, C.ITEM, C.REASON, ROUND]
    pd.testing.assert_frame_equal(removed.sort_values(key, kind="stable").reset_index(drop=True),
                                  mem.removed.sort_values(key, kind="stable").reset_index(drop=True), check_dtype=False)
    assert {k: out["report"][k] for k in mem.report} == mem.report
    assert len(got) + len(removed) == sum(len(p) for p in parts)
    if support > 1:
        assert mem.report["events_removed_item_support"] > 0 and mem.report["sessions_removed_session_length"] > 0
