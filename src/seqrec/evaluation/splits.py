"""Train / validation / test splits in model space, with every dropped event accounted for.

Two protocols:

* ``session`` (GRU4Rec): whole sessions are assigned by the time of their last event.
  ``train``/``valid`` share the vocabulary of ``train`` (for tuning); ``train_full``
  (= train + valid) and ``test`` share the vocabulary of ``train_full`` (final run).
  Evaluation items unknown to their training vocabulary are removed from their sessions
  (A, X, B -> A, B) and sessions left with fewer than 2 events are dropped.
* ``loo`` (SASRec leave-one-out, one sequence per user): one vocabulary, the items of
  ``train_full``, for all four data sets, so a model trained on ``train`` can be tested.

Every removed event is a row of ``Split.dropped`` with its part and reason, and every
count is in ``Split.report``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from seqrec import columns as C
from seqrec.sequences import PAD, ItemVocab, SessionDataset, build_sessions

UNKNOWN_ITEM = "item unknown to the training vocabulary"
TOO_SHORT = "session shorter than 2 events after removing unknown items"
LOO_UNKNOWN_TARGET = "test target unknown to the training vocabulary"
DROPPED_COLUMNS = [C.SESSION, C.ITEM, C.TIMESTAMP, "part", C.REASON]


@dataclass(frozen=True)
class Split:
    """The four data sets of a protocol, the events removed from them, and the counts."""

    protocol: str
    train: SessionDataset  # vocabulary: see the module docstring
    valid: SessionDataset
    train_full: SessionDataset
    test: SessionDataset
    report: dict = field(default_factory=dict)
    dropped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DROPPED_COLUMNS))


def check_events(events: pd.DataFrame, name: str) -> None:
    """Raise if ``events`` lacks a column the splits need or holds nulls in one."""
    for col in (C.SESSION, C.ITEM, C.TIMESTAMP):
        if col not in events.columns:
            raise KeyError(f"{name} events lack column '{col}' (have {list(events.columns)})")
        n_null = int(events[col].isna().sum())
        if n_null:
            raise ValueError(f"{name} events: column '{col}' holds {n_null} null values")


def mark_recent_sessions(events: pd.DataFrame, days: float) -> np.ndarray:
    """Return a per-event mask: the event's session ends in the last ``days`` of ``events``."""
    if events.empty:
        return np.zeros(0, dtype=bool)
    session_end = events.groupby(C.SESSION)[C.TIMESTAMP].transform("max").to_numpy()
    cut = events[C.TIMESTAMP].max() - int(round(days * C.MICROS_PER_DAY))
    return session_end >= cut


def restrict_to_vocab(events: pd.DataFrame, vocab: ItemVocab, part: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (kept events, dropped events with reasons): unknown items out, then short sessions."""
    known = vocab.encode(events[C.ITEM]) != PAD
    kept = events[known]
    short = kept.groupby(C.SESSION)[C.ITEM].transform("size").to_numpy() < 2
    dropped = pd.concat(
        [events[~known].assign(part=part, reason=UNKNOWN_ITEM), kept[short].assign(part=part, reason=TOO_SHORT)]
    )
    return kept[~short], dropped[DROPPED_COLUMNS]


def describe_dataset(ds: SessionDataset) -> dict:
    """Return the counts a report shows for one data set."""
    return {"sessions": ds.n_sessions, "events": ds.n_events, "items": ds.vocab.size}


def count_drops(dropped: pd.DataFrame, part: str) -> dict:
    """Return the numbers of removed events and of dropped sessions in one part."""
    rows = dropped[dropped["part"] == part]
    return {
        f"{part}_unknown_items_removed": int((rows[C.REASON] == UNKNOWN_ITEM).sum()),
        f"{part}_sessions_dropped_short": int(rows.loc[rows[C.REASON] == TOO_SHORT, C.SESSION].nunique()),
        f"{part}_events_dropped_short": int((rows[C.REASON] == TOO_SHORT).sum()),
    }


def build_eval_pair(
    train: pd.DataFrame, test: pd.DataFrame, part: str
) -> tuple[SessionDataset, SessionDataset, pd.DataFrame]:
    """Return (train set, evaluation set over train's vocabulary, dropped evaluation events)."""
    train_ds, unknown = build_sessions(train)
    assert unknown == 0, "a vocabulary built from train knows all of train's items"
    kept, dropped = restrict_to_vocab(test, train_ds.vocab, part)
    test_ds, unknown = build_sessions(kept, train_ds.vocab)
    assert unknown == 0, "restrict_to_vocab removed every unknown item"
    return train_ds, test_ds, dropped


def assemble_session_split(train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame, report: dict) -> Split:
    """Return the session-protocol Split from event tables already assigned to parts."""
    train_ds, valid_ds, dropped_valid = build_eval_pair(train, valid, "valid")
    full_ds, test_ds, dropped_test = build_eval_pair(pd.concat([train, valid]), test, "test")
    dropped = pd.concat([dropped_valid, dropped_test], ignore_index=True)
    parts = {"train": train_ds, "valid": valid_ds, "train_full": full_ds, "test": test_ds}
    report = {
        **report,
        **{name: describe_dataset(ds) for name, ds in parts.items()},
        **count_drops(dropped, "valid"),
        **count_drops(dropped, "test"),
    }
    return Split("session", train_ds, valid_ds, full_ds, test_ds, report, dropped)


def split_by_time(events: pd.DataFrame, test_days: float, valid_days: float) -> Split:
    """Return the GRU4Rec split: test = sessions ending in the last ``test_days``, valid likewise before."""
    check_events(events, "split_by_time")
    is_test = mark_recent_sessions(events, test_days)
    rest = events[~is_test]
    is_valid = mark_recent_sessions(rest, valid_days)
    report = {"test_days": test_days, "valid_days": valid_days, "input_events": len(events)}
    return assemble_session_split(rest[~is_valid], rest[is_valid], events[is_test], report)


def split_presplit(train: pd.DataFrame, test: pd.DataFrame, valid_share_days: float | None) -> Split:
    """Return the session-protocol Split of given train/test tables (valid: last days of train, or none)."""
    check_events(train, "split_presplit train")
    check_events(test, "split_presplit test")
    shared = np.intersect1d(train[C.SESSION].unique(), test[C.SESSION].unique())
    if len(shared):
        raise ValueError(f"split_presplit: {len(shared)} session ids are in both train and test, e.g. {shared[0]!r}")
    is_valid = mark_recent_sessions(train, valid_share_days) if valid_share_days else np.zeros(len(train), dtype=bool)
    report = {"valid_days": valid_share_days, "input_events": len(train) + len(test)}
    return assemble_session_split(train[~is_valid], train[is_valid], test, report)


def split_leave_one_out(events: pd.DataFrame) -> Split:
    """Return the SASRec split per user: train = all but the last 2, valid = 2nd-to-last, test = last.

    ``session_id`` identifies the user. Users with fewer than 3 actions cannot give a
    train, a valid and a test target: all their actions go to ``train`` and ``train_full``
    and they have no valid or test target (as in the SASRec code); their count is reported.
    A test target unknown to the vocabulary (items of ``train_full``) drops that user from
    ``test`` (reported and kept in ``dropped``).
    """
    check_events(events, "split_leave_one_out")
    df = events.assign(_row=np.arange(len(events))).sort_values([C.SESSION, C.TIMESTAMP, "_row"], kind="stable")
    from_end = df.groupby(C.SESSION).cumcount(ascending=False).to_numpy()  # 0 = last action
    eligible = df.groupby(C.SESSION)[C.ITEM].transform("size").to_numpy() >= 3
    in_full = ~eligible | (from_end >= 1)
    vocab = ItemVocab.from_items(df.loc[in_full, C.ITEM])
    test_ok = vocab.encode(df.groupby(C.SESSION)[C.ITEM].transform("last")) != PAD  # per row: user's last item
    parts = {
        "train": df[~eligible | (from_end >= 2)],
        "valid": df[eligible & (from_end >= 1)],
        "train_full": df[in_full],
        "test": df[eligible & test_ok],
    }
    data = {name: build_sessions(part.drop(columns="_row"), vocab)[0] for name, part in parts.items()}
    dropped = df[eligible & ~test_ok & (from_end == 0)].assign(part="test", reason=LOO_UNKNOWN_TARGET)
    report = {
        "input_events": len(events),
        "users": int(df[C.SESSION].nunique()),
        "users_lt3_train_only": int(df.loc[~eligible, C.SESSION].nunique()),
        "test_users_dropped_unknown_target": len(dropped),
        **{name: describe_dataset(ds) for name, ds in data.items()},
    }
    datasets = (data["train"], data["valid"], data["train_full"], data["test"])
    return Split("loo", *datasets, report, dropped[DROPPED_COLUMNS])
