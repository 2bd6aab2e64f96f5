"""Property-based tests (hypothesis): invariants that must hold for any input, not just the tables we
thought of. Cleaning loses no row unaccounted; sessions are ordered and cut exactly at the gap;
metrics are in [0, 1] and monotone in K."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqrec import columns as C
from seqrec.quality.cleaning import clean_table
from seqrec.config import CleaningConfig, SessionConfig
from seqrec.evaluation.metrics import metrics_from_ranks
from seqrec.features.sessions import gap_micros, sessionize

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MINUTE = 60_000_000


# --------------------------------------------------------------------------- cleaning
def maybe(values: st.SearchStrategy) -> st.SearchStrategy:
    """Return a strategy of the values or None (a null)."""
    return st.one_of(st.none(), values)


event_rows = st.lists(st.tuples(st.integers(0, 3), st.integers(1, 3), st.sampled_from(["a", "b", "c"]),
                                st.sampled_from(["view", "click", "added-to-cart"]), maybe(st.sampled_from(["u2i", "i2i"]))),
                      max_size=30)  # tiny value pools: duplicates are common
payment_rows = st.lists(st.tuples(st.integers(1, 3), st.sampled_from(["a", "b"]), maybe(st.floats(-5, 5)),
                                  maybe(st.integers(0, 9))), max_size=30)


@FAST
@given(event_rows)
def test_cleaning_events_accounts_for_every_row(rows):
    df = pd.DataFrame(rows, columns=[C.TIMESTAMP, C.USER, C.ITEM, C.ACTION, C.SUBDOMAIN])
    res = clean_table(df, "events", CleaningConfig(), source_file="day.pq")
    assert len(df) == len(res.clean) + len(res.quarantine)
    assert all(a.rows_kept == b.rows_in for a, b in zip(res.steps, res.steps[1:]))  # steps chain
    assert res.steps[0].rows_in == len(df) and res.steps[-1].rows_kept == len(res.clean)
    keys = [C.TIMESTAMP, C.USER, C.ITEM, C.ACTION]
    assert not res.clean.duplicated(keys).any()
    assert res.quarantine[C.REASON].notna().all() and (res.quarantine[C.SOURCE_FILE] == "day.pq").all()
    # a quarantined duplicate's key is still present among the kept rows (its first occurrence)
    quarantined = res.quarantine.assign(**{C.ACTION: res.quarantine[C.ACTION].replace(CleaningConfig().action_aliases)})
    kept = set(map(tuple, res.clean[keys].astype(str).to_numpy()))
    assert all(tuple(r) in kept for r in quarantined[keys].astype(str).to_numpy())


def test_cleaning_dedupes_after_normalising_action_spellings():
    df = pd.DataFrame([(0, 1, "c", "added-to-cart", "u2i"), (0, 1, "c", "added_to_cart", "u2i")],
                      columns=[C.TIMESTAMP, C.USER, C.ITEM, C.ACTION, C.SUBDOMAIN])
    res = clean_table(df, "events", CleaningConfig())
    assert len(res.clean) == 1 and len(res.quarantine) == 1


@FAST
@given(payment_rows)
def test_cleaning_payments_drops_only_missing_prices_and_fills_brands(rows):
    df = pd.DataFrame(rows, columns=[C.USER, C.ITEM, "price", "brand_id"])
    res = clean_table(df, "payments", CleaningConfig())
    assert len(df) == len(res.clean) + len(res.quarantine) == res.steps[-1].rows_kept + len(res.quarantine)
    assert len(res.quarantine) == df["price"].isna().sum() and (res.quarantine[C.REASON] == "missing price").all()
    assert res.clean["price"].notna().all() and res.clean["brand_id"].notna().all()
    assert (res.clean["brand_id"] == -1).sum() == df.loc[df["price"].notna(), "brand_id"].isna().sum()


# --------------------------------------------------------------------------- sessions
user_events = st.lists(st.tuples(st.integers(1, 4), st.integers(0, 240), st.sampled_from(["a", "b", "c", "d"])),
                       min_size=1, max_size=40)  # (user, time in half-minutes, item): exact-gap ties happen


@FAST
@given(user_events, st.sampled_from([0.5, 1.0, 5.0, 30.0]))
def test_sessions_are_ordered_single_user_and_cut_exactly_at_the_gap(rows, gap_minutes):
    events = pd.DataFrame({C.USER: np.array([r[0] for r in rows], np.int64),
                           C.TIMESTAMP: np.array([r[1] * MINUTE // 2 for r in rows], np.int64),
                           C.ITEM: [r[2] for r in rows]})
    res = sessionize(events, SessionConfig(gap_minutes=gap_minutes))
    out, gap = res.events, gap_micros(SessionConfig(gap_minutes=gap_minutes))
    assert len(out) == len(events) and len(res.removed) == 0  # no filters: nothing lost
    assert sorted(out[C.SESSION].unique()) == list(range(out[C.SESSION].nunique()))  # dense ids
    for _, user in out.groupby(C.USER, sort=False):
        t, s = user[C.TIMESTAMP].to_numpy(), user[C.SESSION].to_numpy()
        assert np.all(np.diff(t) >= 0)  # time order inside each user
        new = np.diff(s) != 0
        assert np.array_equal(new, np.diff(t) > gap)  # a new session exactly where the gap is exceeded
        assert len(np.unique(s)) == 1 + new.sum()  # a session never resumes after another one
    starts = out.groupby(C.SESSION)[C.TIMESTAMP].min().sort_index().to_numpy()
    assert np.all(np.diff(starts) >= 0)  # ids follow session start time


@FAST
@given(user_events, st.integers(1, 4), st.integers(1, 4), st.sampled_from(["once", "fixed_point"]))
def test_session_filters_account_for_every_event(rows, min_len, min_support, mode):
    events = pd.DataFrame({C.USER: np.array([r[0] for r in rows], np.int64),
                           C.TIMESTAMP: np.array([r[1] * MINUTE // 2 for r in rows], np.int64),
                           C.ITEM: [r[2] for r in rows]})
    cfg = SessionConfig(gap_minutes=5.0, min_session_length=min_len, min_item_support=min_support, filter_mode=mode)
    res = sessionize(events, cfg)
    assert len(res.events) + len(res.removed) == len(events) == res.report["events_in"]
    assert set(res.removed[C.REASON]) <= {"item_support", "session_length"}
    if mode == "fixed_point" and len(res.events):  # a fixed point satisfies both filters
        assert res.events.groupby(C.SESSION).size().min() >= min_len
        assert res.events.groupby(C.ITEM).size().min() >= min_support


# --------------------------------------------------------------------------- metrics
ranks = st.lists(st.one_of(st.integers(1, 500).map(float), st.floats(1, 500), st.just(math.inf)), min_size=1, max_size=50)
cutoffs = st.lists(st.integers(1, 600), min_size=1, max_size=6, unique=True).map(sorted)


@FAST
@given(ranks, cutoffs)
def test_metrics_are_in_unit_interval_and_monotone_in_k(r, ks):
    m = metrics_from_ranks(np.array(r), ks)
    assert all(0.0 <= v <= 1.0 for v in m.values())
    for k in ks:
        assert m[f"mrr@{k}"] <= m[f"ndcg@{k}"] + 1e-12 <= m[f"recall@{k}"] + 2e-12  # 1/r <= 1/log2(r+1) <= 1
        assert m[f"hr@{k}"] == m[f"recall@{k}"] == np.mean(np.array(r) <= k)
    for a, b in zip(ks, ks[1:]):
        for name in ("recall", "mrr", "ndcg"):
            assert m[f"{name}@{a}"] <= m[f"{name}@{b}"]
