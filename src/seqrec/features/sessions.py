"""Sessionization: cut each user's events into sessions at gaps of inactivity, then filter.

Rule: a new session starts when a user's next event comes MORE than ``gap_minutes`` after
the previous one; a gap of exactly ``gap_minutes`` continues the session. Events are
ordered by (user, timestamp, input order), so ties in time keep the order they came in.

Session ids are int64, dense from 0 in the order (session start, user): the same events
give the same ids whichever way they are partitioned. Day partitions are sessionized one
by one (in parallel threads), then stitched: a user's first session of a day continues
their last session of an earlier day when the gap allows, so a session over midnight is
one session. Filters (item support, then session length) drop events into
``SessionizeResult.removed`` with a reason; ids of the kept sessions are not renumbered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from seqrec import columns as C
from seqrec.config import SessionConfig

REASON_SUPPORT = "item_support"  # the item has fewer than min_item_support events
REASON_LENGTH = "session_length"  # the session has fewer than min_session_length events
ROUND = "filter_round"  # column of ``removed``: the filter round that removed the event
_LOCAL = "_local_session"


@dataclass(frozen=True)
class SessionizeResult:
    """Sessionized events, the events the filters removed (with a reason), and counts."""

    events: pd.DataFrame  # input columns + SESSION, sorted by (user, timestamp, input order)
    removed: pd.DataFrame  # input columns + SESSION + REASON + ROUND
    report: dict[str, Any] = field(default_factory=dict)


def gap_micros(cfg: SessionConfig) -> int:
    """Return the inactivity gap in microseconds."""
    return int(round(cfg.gap_minutes * 60 * C.MICROS_PER_SECOND))


def check_event_columns(events: pd.DataFrame, where: str) -> None:
    """Raise if ``events`` lacks user/timestamp/item, has nulls in them, or non-integer keys."""
    missing = [c for c in (C.TIMESTAMP, C.USER, C.ITEM) if c not in events.columns]
    if missing:
        raise KeyError(f"{where}: event table has no column(s) {missing}; columns are {list(events.columns)}")
    for col in (C.TIMESTAMP, C.USER, C.ITEM):
        nulls = int(events[col].isna().sum())
        if nulls:
            raise ValueError(f"{where}: column '{col}' has {nulls} null value(s); sessionization needs all")
    for col in (C.TIMESTAMP, C.USER):
        if not pd.api.types.is_integer_dtype(events[col]):
            raise TypeError(f"{where}: column '{col}' must be int64, got dtype {events[col].dtype}")


def session_bounds(users: np.ndarray, times: np.ndarray, gap_us: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Return (sort order by user/time, each sorted row's local session number, one row per local session)."""
    order = np.lexsort((times, users))  # stable: ties in (user, time) keep input order
    u, t = users[order], times[order]  # (n,), (n,)
    new_user = np.ones(len(u), dtype=bool)
    new_user[1:] = u[1:] != u[:-1]
    new = new_user.copy()
    new[1:] |= np.diff(t) > gap_us  # strictly greater: a gap of exactly gap_us continues
    starts = np.flatnonzero(new)
    ends = (np.append(starts[1:], len(u)) - 1)[: len(starts)]  # empty partition: no sessions
    sessions = pd.DataFrame({"user": u[starts], "start": t[starts], "end": t[ends], "first": new_user[starts]})
    first_users = sessions["user"].to_numpy()
    sessions["last"] = np.append(first_users[1:] != first_users[:-1], True)[: len(starts)]
    return order, np.cumsum(new) - 1, sessions


def local_sessions(part: pd.DataFrame, gap_us: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (partition sorted by user/time with a local session number, one row per local session)."""
    order, local, sessions = session_bounds(part[C.USER].to_numpy(np.int64), part[C.TIMESTAMP].to_numpy(np.int64), gap_us)
    ordered = part.iloc[order].reset_index(drop=True)
    ordered[_LOCAL] = local
    return ordered, sessions


def join_carried(sess: pd.DataFrame, carry: pd.DataFrame, gap_us: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (local indices of users' first sessions in partition p that continue a carried session, its root)."""
    firsts = np.flatnonzero(sess["first"].to_numpy())
    users = sess["user"].to_numpy()[firsts]
    pos = carry.index.get_indexer(users)  # -1: user not seen before p
    firsts, users, pos = firsts[pos >= 0], users[pos >= 0], pos[pos >= 0]
    prev_end, start = carry["end"].to_numpy()[pos], sess["start"].to_numpy()[firsts]
    if (start < prev_end).any():
        bad = users[start < prev_end][0]
        raise ValueError(f"partition {p}: user {bad} has events earlier than in partition {p - 1} or before; "
                         "partitions must be given in time order")
    joins = start - prev_end <= gap_us  # same rule as inside a partition
    return firsts[joins], carry["root"].to_numpy()[pos[joins]]


def carry_forward(sess: pd.DataFrame, carry: pd.DataFrame, roots: np.ndarray) -> pd.DataFrame:
    """Return each user's last session end and root after a partition (index: user)."""
    lasts = np.flatnonzero(sess["last"].to_numpy())
    update = pd.DataFrame({"end": sess["end"].to_numpy()[lasts], "root": roots[lasts]},
                          index=pd.Index(sess["user"].to_numpy()[lasts]))
    return pd.concat([carry[~carry.index.isin(update.index)], update])


def stitch_sessions(tables: list[pd.DataFrame], gap_us: int) -> tuple[np.ndarray, int]:
    """Return each partition-local session's root (its earliest part) and the count of stitched ones.

    Local sessions are numbered across partitions in order (partition 0 first). A user's first
    session in partition p joins their last session before p if it starts at most ``gap_us`` later.
    """
    offsets = np.cumsum([0] + [len(t) for t in tables])
    root = np.arange(offsets[-1], dtype=np.int64)
    carry = pd.DataFrame({"end": np.empty(0, np.int64), "root": np.empty(0, np.int64)}, index=pd.Index([], dtype=np.int64))
    stitched = 0
    for p, sess in enumerate(tables):
        local, carried = join_carried(sess, carry, gap_us, p)
        root[offsets[p] + local] = carried
        stitched += len(local)
        carry = carry_forward(sess, carry, root[offsets[p] : offsets[p + 1]])
    return root, stitched


def number_sessions(tables: list[pd.DataFrame], root: np.ndarray) -> np.ndarray:
    """Return the final session id of every local session: roots ranked by (start, user)."""
    start = np.concatenate([t["start"].to_numpy(np.int64) for t in tables])
    user = np.concatenate([t["user"].to_numpy(np.int64) for t in tables])
    roots = np.flatnonzero(root == np.arange(len(root)))
    ranked = roots[np.lexsort((user[roots], start[roots]))]  # unique: one user's sessions never share a start
    final = np.empty(len(root), dtype=np.int64)
    final[ranked] = np.arange(len(ranked))
    return final[root]


def assign_sessions(parts: list[pd.DataFrame], cfg: SessionConfig) -> tuple[pd.DataFrame, int]:
    """Return all partitions' events with SESSION, sorted by (user, time, input order), and stitch count."""
    for i, part in enumerate(parts):
        check_event_columns(part, f"partition {i}")
    gap_us = gap_micros(cfg)
    local = [local_sessions(part, gap_us) for part in parts]
    tables = [sess for _, sess in local]
    root, stitched = stitch_sessions(tables, gap_us)
    final = number_sessions(tables, root)
    offsets = np.cumsum([0] + [len(t) for t in tables])
    frames = []
    for p, (ordered, _) in enumerate(local):
        ids = final[offsets[p] + ordered.pop(_LOCAL).to_numpy()]
        frames.append(ordered.assign(**{C.SESSION: ids}))
    events = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if len(frames) > 1:  # partitions are in time order, so a stable sort by user suffices
        events = events.iloc[np.argsort(events[C.USER].to_numpy(), kind="stable")].reset_index(drop=True)
    return events, stitched


def split_rows(events: pd.DataFrame, drop: np.ndarray, reason: str, rnd: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (rows kept, rows dropped with REASON and ROUND)."""
    gone = events[drop].assign(**{C.REASON: reason, ROUND: rnd})
    return events[~drop], gone


def count_below(events: pd.DataFrame, column: str, minimum: int) -> np.ndarray:
    """Return a row mask: the row's value of ``column`` occurs in fewer than ``minimum`` rows."""
    if minimum <= 1:  # every value occurs at least once
        return np.zeros(len(events), dtype=bool)
    return events.groupby(column, sort=False)[column].transform("size").to_numpy() < minimum


def filter_sessions(events: pd.DataFrame, cfg: SessionConfig) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Return (kept events, removed events with reason, rounds run) after support then length filters.

    ``fixed_point`` repeats both filters until a round removes nothing (dropping short sessions can
    push items under the support threshold and back); ``once`` runs one round.
    """
    removed = [events.iloc[:0].assign(**{C.REASON: pd.Series(dtype=object), ROUND: pd.Series(dtype=np.int64)})]
    rnd = 0
    while True:
        rnd += 1
        events, gone_s = split_rows(events, count_below(events, C.ITEM, cfg.min_item_support), REASON_SUPPORT, rnd)
        events, gone_l = split_rows(events, count_below(events, C.SESSION, cfg.min_session_length), REASON_LENGTH, rnd)
        removed += [gone_s, gone_l]
        if cfg.filter_mode == "once" or len(gone_s) + len(gone_l) == 0:
            break
    return events.reset_index(drop=True), pd.concat(removed, ignore_index=True), rnd


def count_sessionization(events: pd.DataFrame, kept: pd.DataFrame, removed: pd.DataFrame) -> dict[str, int]:
    """Return counts in/out and removed per reason (events and whole sessions)."""
    by_reason = removed.groupby(C.REASON)
    events_removed = by_reason.size()
    lost_sessions = np.setdiff1d(events[C.SESSION].unique(), kept[C.SESSION].unique())
    last_reason = removed.drop_duplicates(C.SESSION, keep="last").set_index(C.SESSION)[C.REASON]
    sessions_removed = last_reason.reindex(lost_sessions).value_counts()
    report = {
        "events_in": len(events), "sessions_in": int(events[C.SESSION].nunique()),
        "users_in": int(events[C.USER].nunique()), "events_out": len(kept),
        "sessions_out": int(kept[C.SESSION].nunique()), "events_removed": len(removed),
        "sessions_removed": len(lost_sessions),
    }
    for reason in (REASON_SUPPORT, REASON_LENGTH):
        report[f"events_removed_{reason}"] = int(events_removed.get(reason, 0))
        report[f"sessions_removed_{reason}"] = int(sessions_removed.get(reason, 0))
    return report


def sessionize_partitions(parts: list[pd.DataFrame], cfg: SessionConfig) -> SessionizeResult:
    """Return sessionized, filtered events from day partitions given in time order."""
    if not parts:
        raise ValueError("sessionize_partitions: no partitions given")
    events, stitched = assign_sessions(parts, cfg)
    kept, removed, rounds = filter_sessions(events, cfg)
    report = count_sessionization(events, kept, removed)
    report.update(partitions=len(parts), sessions_stitched_across_partitions=stitched, filter_rounds=rounds,
                  gap_minutes=cfg.gap_minutes, gap_rule="new session if gap > gap_minutes",
                  min_item_support=cfg.min_item_support, min_session_length=cfg.min_session_length,
                  filter_mode=cfg.filter_mode)
    return SessionizeResult(kept, removed, report)


def sessionize(events: pd.DataFrame, cfg: SessionConfig) -> SessionizeResult:
    """Return sessionized, filtered events of one table (see ``sessionize_partitions``)."""
    return sessionize_partitions([events], cfg)
