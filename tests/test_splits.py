"""Splits on tiny event tables whose every assignment is worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seqrec import columns as C
from seqrec.evaluation.splits import TOO_SHORT, UNKNOWN_ITEM, split_by_time, split_leave_one_out, split_presplit

DAY = C.MICROS_PER_DAY


def make_events(rows: list[tuple[int, str, float]]) -> pd.DataFrame:
    """Return canonical-enough events from (session, item, time in days) rows."""
    return pd.DataFrame(
        {
            C.SESSION: [r[0] for r in rows],
            C.ITEM: [r[1] for r in rows],
            C.TIMESTAMP: [int(r[2] * DAY) for r in rows],
        }
    )


def decoded(ds, i: int) -> list[str]:
    """Return the original ids of session i."""
    return list(ds.vocab.decode(ds.session(i)))


# Last event at day 2.9, so test = sessions ending >= 1.9; the rest ends at 1.6, so valid = ending >= 0.6.
TIME_ROWS = [
    (1, "A", 0.1), (1, "B", 0.2),  # train
    (7, "C", 0.3), (7, "A", 0.4),  # train
    (6, "D", 0.5), (6, "C", 0.65),  # valid; D unknown to train -> (C) -> dropped
    (2, "A", 1.5), (2, "E", 1.55), (2, "B", 1.6),  # valid; E unknown to train -> (A, B)
    (3, "B", 2.5), (3, "A", 2.6),  # test
    (4, "A", 2.7), (4, "X", 2.75), (4, "B", 2.8),  # test; X unknown -> (A, B)
    (5, "Y", 2.85), (5, "A", 2.9),  # test; Y unknown -> (A) -> dropped
]


def test_split_by_time_assigns_sessions_by_their_last_event():
    split = split_by_time(make_events(TIME_ROWS), test_days=1.0, valid_days=1.0)
    assert split.protocol == "session"
    assert list(split.train.session_keys) == [1, 7]
    assert list(split.valid.session_keys) == [2]
    assert list(split.train_full.session_keys) == [1, 7, 6, 2]  # by session start
    assert list(split.test.session_keys) == [3, 4]


def test_split_by_time_uses_the_right_vocabulary_for_each_pair():
    split = split_by_time(make_events(TIME_ROWS), test_days=1.0, valid_days=1.0)
    assert list(split.train.vocab.ids[1:]) == ["A", "B", "C"]
    assert split.valid.vocab is split.train.vocab
    assert list(split.train_full.vocab.ids[1:]) == ["A", "B", "C", "D", "E"]
    assert split.test.vocab is split.train_full.vocab
    assert decoded(split.valid, 0) == ["A", "B"]
    assert decoded(split.test, 1) == ["A", "B"]  # A, X, B -> A, B


def test_split_by_time_counts_and_keeps_every_dropped_event():
    split = split_by_time(make_events(TIME_ROWS), test_days=1.0, valid_days=1.0)
    r = split.report
    assert (r["valid_unknown_items_removed"], r["valid_sessions_dropped_short"]) == (2, 1)  # E, D; session 6
    assert (r["test_unknown_items_removed"], r["test_sessions_dropped_short"]) == (2, 1)  # X, Y; session 5
    assert r["test"] == {"sessions": 2, "events": 4, "items": 5}
    d = split.dropped
    assert sorted(d.loc[d[C.REASON] == UNKNOWN_ITEM, C.ITEM]) == ["D", "E", "X", "Y"]
    assert sorted(zip(d.loc[d[C.REASON] == TOO_SHORT, C.SESSION], d.loc[d[C.REASON] == TOO_SHORT, "part"])) == [
        (5, "test"),
        (6, "valid"),
    ]
    # Nothing lost: kept + dropped = input, for the final pair and for the tuning pair.
    assert split.train_full.n_events + split.test.n_events + (d["part"] == "test").sum() == len(TIME_ROWS)
    assert split.train.n_events + split.valid.n_events + (d["part"] == "valid").sum() == split.train_full.n_events


def test_split_by_time_puts_a_session_ending_exactly_at_the_cut_into_test():
    rows = [(0, "A", 0.0), (0, "B", 0.1), (1, "A", 0.4), (1, "B", 0.5)]
    rows += [(2, "A", 1.0), (2, "B", 1.5), (3, "B", 2.0), (3, "A", 2.5)]
    split = split_by_time(make_events(rows), test_days=1.0, valid_days=0.1)  # test cut = 1.5: session 2 ends there
    assert list(split.test.session_keys) == [2, 3]
    assert list(split.valid.session_keys) == [1]  # the rest ends at 0.5, so its valid cut is 0.4
    assert list(split.train.session_keys) == [0]


def test_split_by_time_names_a_missing_column():
    with pytest.raises(KeyError, match="session_id"):
        split_by_time(make_events(TIME_ROWS).drop(columns=C.SESSION), 1.0, 1.0)


def test_split_presplit_without_validation_trains_on_everything():
    events = make_events(TIME_ROWS)
    train, test = events[events[C.SESSION].isin([1, 2, 6, 7])], events[events[C.SESSION].isin([3, 4, 5])]
    split = split_presplit(train, test, valid_share_days=None)
    assert split.valid.n_sessions == 0
    assert list(split.train.session_keys) == list(split.train_full.session_keys) == [1, 7, 6, 2]
    assert list(split.test.session_keys) == [3, 4]
    assert split.report["test_unknown_items_removed"] == 2


def test_split_presplit_takes_validation_from_the_end_of_train():
    events = make_events(TIME_ROWS)
    train, test = events[events[C.SESSION].isin([1, 2, 6, 7])], events[events[C.SESSION].isin([3, 4])]
    split = split_presplit(train, test, valid_share_days=1.0)
    assert list(split.valid.session_keys) == [2]
    assert list(split.train.session_keys) == [1, 7]


def test_split_presplit_rejects_a_session_in_both_tables():
    events = make_events(TIME_ROWS)
    with pytest.raises(ValueError, match="both train and test"):
        split_presplit(events, events[events[C.SESSION] == 3], None)


LOO_ROWS = [
    (1, "a", 1), (1, "b", 2), (1, "c", 3), (1, "a", 4),  # 4 actions, last item known
    (2, "e", 1), (2, "a", 2), (2, "f", 3),  # last item f occurs nowhere else: unknown
    (3, "g", 1), (3, "h", 2),  # 2 actions: train only
]


def test_split_leave_one_out_cuts_each_user_sequence():
    split = split_leave_one_out(make_events(LOO_ROWS).sample(frac=1.0, random_state=0))  # order must not matter
    assert split.protocol == "loo"
    user = {k: i for i, k in enumerate(split.train.session_keys)}
    assert decoded(split.train, user[1]) == ["a", "b"]
    assert decoded(split.train, user[2]) == ["e"]
    assert decoded(split.train, user[3]) == ["g", "h"]
    assert [decoded(split.valid, i) for i in range(split.valid.n_sessions)] == [["a", "b", "c"], ["e", "a"]]
    assert decoded(split.train_full, list(split.train_full.session_keys).index(2)) == ["e", "a"]
    assert list(split.test.session_keys) == [1]
    assert decoded(split.test, 0) == ["a", "b", "c", "a"]  # the target is the last item


def test_split_leave_one_out_reports_short_users_and_unknown_targets():
    split = split_leave_one_out(make_events(LOO_ROWS))
    assert list(split.train.vocab.ids[1:]) == ["a", "b", "c", "e", "g", "h"]  # items of train_full
    assert all(ds.vocab is split.train.vocab for ds in (split.valid, split.train_full, split.test))
    assert split.report["users_lt3_train_only"] == 1
    assert split.report["test_users_dropped_unknown_target"] == 1
    assert list(split.dropped[C.ITEM]) == ["f"]
    assert np.array_equal(split.valid.session_keys, [1, 2])


def test_vocab_encodes_categoricals_by_category() -> None:
    """A categorical column encodes like its strings; missing values and unknown categories map to padding."""
    from seqrec.sequences import ItemVocab, distinct_items

    vocab = ItemVocab.from_items(pd.Series(["b", "a", "c"]).astype("category"))
    assert list(vocab.ids) == ["<pad>", "a", "b", "c"]
    items = pd.Series(pd.Categorical(["c", None, "x", "a"], categories=["x", "a", "c", "q"]))
    assert vocab.encode(items).tolist() == [3, 0, 0, 1] == vocab.encode(np.array(["c", "", "x", "a"], dtype=object)).tolist()
    assert sorted(distinct_items(items)) == ["a", "c", "x"]  # used categories only ("q" unused)
