"""Sequences in model space: an item vocabulary and sessions stored as CSR arrays.

Every model trains on and is evaluated on a ``SessionDataset``: sessions (or user
sequences) ordered by start time, items mapped to dense indices ``1..n_items``;
index 0 is reserved for padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from seqrec import columns as C

PAD = 0
EVENT_LABELS = (C.SUBDOMAIN, C.DOMAIN)  # per-event columns kept for the evaluation's breakdowns


@dataclass(frozen=True)
class ItemVocab:
    """Original item ids by dense index; ``ids[0]`` is the padding slot."""

    ids: np.ndarray  # (n_items + 1,) object array of original ids; ids[0] = "<pad>"

    @classmethod
    def from_items(cls, items: pd.Series | np.ndarray) -> "ItemVocab":
        """Return a vocabulary of the distinct items, sorted for determinism."""
        uniq = np.sort(pd.unique(distinct_items(items).astype(str)))
        return cls(np.concatenate([np.array(["<pad>"], dtype=object), uniq.astype(object)]))

    @property
    def size(self) -> int:
        """Number of real items (padding excluded)."""
        return len(self.ids) - 1

    def encode(self, items: pd.Series | np.ndarray) -> np.ndarray:
        """Return dense indices (int64) for original ids; unknown ids map to 0.

        A categorical input is encoded by its categories (no per-row strings are made).
        """
        series = pd.Series(items)
        if isinstance(series.dtype, pd.CategoricalDtype):
            per_category = np.append(self.encode(series.cat.categories.to_numpy()), PAD)  # code -1 (missing) -> PAD
            return per_category[series.cat.codes.to_numpy()]
        pos = self.index.get_indexer(series.astype(str))
        return np.where(pos >= 0, pos + 1, PAD).astype(np.int64)

    @cached_property
    def index(self) -> pd.Index:
        """The real ids as an index (built once: encoding a stream of batches reuses its hash table)."""
        return pd.Index(self.ids[1:])

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Return original ids for dense indices (any shape)."""
        return self.ids[np.asarray(indices)]


def distinct_items(items: pd.Series | np.ndarray) -> pd.Series:
    """Return the distinct values of ``items`` (a categorical's used categories: no per-row strings are made)."""
    series = pd.Series(items)
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes = np.unique(series.cat.codes.to_numpy())
        return pd.Series(series.cat.categories.to_numpy()[codes[codes >= 0]])
    return pd.Series(pd.unique(series))


@dataclass(frozen=True)
class SessionDataset:
    """Sessions in CSR form: ``items[offsets[i]:offsets[i+1]]`` is session i, in time order."""

    vocab: ItemVocab
    offsets: np.ndarray  # (n_sessions + 1,) int64
    items: np.ndarray  # (n_events,) int64 dense item indices (>= 1)
    times: np.ndarray  # (n_events,) int64 timestamps (microseconds)
    session_keys: np.ndarray  # (n_sessions,) original session (or user) ids
    actions: np.ndarray | None = None  # (n_events,) action types, for breakdowns
    event_labels: dict[str, np.ndarray] = field(default_factory=dict)  # (n_events,) each: subdomain, domain (breakdowns)

    def __post_init__(self) -> None:
        assert self.offsets[0] == 0 and self.offsets[-1] == len(self.items), "offsets do not cover items"
        assert len(self.session_keys) == len(self.offsets) - 1, "one key per session"

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        """Length of every session (int64)."""
        return np.diff(self.offsets)

    def session(self, i: int) -> np.ndarray:
        """Return the dense items of session i."""
        return self.items[self.offsets[i] : self.offsets[i + 1]]

    def subset(self, mask: np.ndarray) -> "SessionDataset":
        """Return the sessions selected by a boolean mask, in the same order."""
        idx = np.flatnonzero(mask)
        lens = self.lengths[idx]
        starts = self.offsets[idx]
        event_idx = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(lens.sum())
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        actions = None if self.actions is None else self.actions[event_idx]
        labels = {k: v[event_idx] for k, v in self.event_labels.items()}
        return SessionDataset(
            self.vocab, offsets, self.items[event_idx], self.times[event_idx], self.session_keys[idx], actions, labels
        )

    def item_support(self) -> np.ndarray:
        """Return event counts per dense index (length n_items + 1; index 0 is 0)."""
        return np.bincount(self.items, minlength=self.vocab.size + 1).astype(np.int64)

    def padded(self, idx: np.ndarray, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return (items (B, L) left-aligned with 0 padding, lengths (B,)) for sessions idx.

        With ``max_len`` only the last ``max_len`` items of each session are kept.
        """
        lens = self.lengths[idx]
        if max_len is not None:
            lens = np.minimum(lens, max_len)
        L = int(lens.max()) if len(lens) else 0
        out = np.zeros((len(idx), L), dtype=np.int64)
        for row, (i, n) in enumerate(zip(idx, lens)):
            end = self.offsets[i + 1]
            out[row, :n] = self.items[end - n : end]
        return out, lens.astype(np.int64)


def build_sessions(events: pd.DataFrame, vocab: ItemVocab | None = None) -> tuple[SessionDataset, int]:
    """Return sessions from a canonical event table with ``session_id``, and events dropped.

    Items unknown to ``vocab`` are removed (their count is returned); sessions are ordered
    by start time, events by (timestamp, original row order).
    """
    if vocab is None:
        vocab = ItemVocab.from_items(events[C.ITEM])
    extra = [c for c in (C.ACTION, *EVENT_LABELS) if c in events]
    df = events[[C.SESSION, C.TIMESTAMP, C.ITEM, *extra]].copy()
    df["_item"] = vocab.encode(df[C.ITEM])
    df["_row"] = np.arange(len(df))
    unknown = int((df["_item"] == PAD).sum())
    df = df[df["_item"] != PAD]
    start = df.groupby(C.SESSION, sort=False)[C.TIMESTAMP].transform("min")
    df = df.assign(_start=start).sort_values(["_start", C.SESSION, C.TIMESTAMP, "_row"], kind="stable")
    keys, first = np.unique(df[C.SESSION].to_numpy(), return_index=True)
    order = np.argsort(first, kind="stable")
    lens = np.diff(np.concatenate([np.sort(first), [len(df)]]))
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    actions = df[C.ACTION].to_numpy(dtype=object) if C.ACTION in df else None
    ds = SessionDataset(
        vocab,
        offsets,
        df["_item"].to_numpy(np.int64),
        df[C.TIMESTAMP].to_numpy(np.int64),
        keys[order],
        actions,
        {c: df[c].astype(object).fillna("none").to_numpy(dtype=object).astype(str) for c in EVENT_LABELS if c in df},
    )
    return ds, unknown


def reencode_sessions(ds: SessionDataset, vocab: ItemVocab, min_length: int = 2) -> tuple[SessionDataset, dict]:
    """Return ``ds`` re-encoded to ``vocab``: unknown items removed, short sessions dropped, with counts."""
    items = vocab.encode(ds.vocab.decode(ds.items))
    known = items != PAD
    session_of = np.repeat(np.arange(ds.n_sessions), ds.lengths)
    lens = np.bincount(session_of[known], minlength=ds.n_sessions)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    actions = None if ds.actions is None else ds.actions[known]
    labels = {k: v[known] for k, v in ds.event_labels.items()}
    kept = SessionDataset(vocab, offsets, items[known], ds.times[known], ds.session_keys, actions, labels)
    out = kept.subset(lens >= min_length)
    report = {
        "unknown_items_removed": int((~known).sum()),
        "short_sessions_dropped": int((lens < min_length).sum()),
        "events_in_dropped_sessions": int(lens[lens < min_length].sum()),
    }
    return out, report
