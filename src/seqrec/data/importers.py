"""Importers of public session data sets into the canonical event table (plus ``session_id``).

Both importers return ``CANONICAL_EVENT_COLUMNS + (SESSION,)`` sorted by (timestamp,
user_id) with ties kept in file order, like the T-ECD reader's output, so everything
downstream treats them alike. Domain is "import", action_type "view", subdomain and os
are null.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from seqrec import columns as C

IMPORT_DOMAIN = "import"
IMPORT_ACTION = "view"
IMPORT_COLUMNS = (*C.CANONICAL_EVENT_COLUMNS, C.SESSION)


class ImportFormatError(ValueError):
    """An input file is malformed; the message names the file, and the line or column."""


TIME_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1}  # microseconds per unit
INT64_MAX = np.iinfo(np.int64).max


def infer_time_unit(times: np.ndarray, sessions: np.ndarray) -> str:
    """Return the unit of ``times`` ("s", "ms" or "us") from the median gap between a session's events.

    Shoppers act seconds to minutes apart: a median gap under 1,000 reads as seconds, under
    1,000,000 as milliseconds, else microseconds. Without any gap (one event per session) the
    magnitude decides: unix seconds are ~1.7e9 today, unix milliseconds ~1.7e12, and T-ECD's
    microseconds from its own epoch ~1e14.
    """
    same = sessions[1:] == sessions[:-1]
    gaps = np.diff(times)[same]
    gaps = gaps[gaps > 0]
    if len(gaps):
        gap = float(np.median(gaps))
        return "s" if gap < 1e3 else "ms" if gap < 1e6 else "us"
    top = float(np.abs(times).max(initial=0))
    return "s" if top < 1e11 else "ms" if top < 1e13 else "us"


def to_micros(times: np.ndarray, unit: str, path: Path, column: str, first_line: int) -> np.ndarray:
    """Return ``times`` in whole microseconds; a negative or too large value raises naming the line and value."""
    bad = np.flatnonzero((times < 0) | (np.abs(times) * TIME_UNITS[unit] > INT64_MAX))
    if len(bad):
        pos = int(bad[0])
        raise ImportFormatError(f"{path}: line {pos + first_line}: {column} {times[pos]:g} is negative or does not fit "
                                f"int64 microseconds as {unit} (--time-unit)")
    return np.rint(times * TIME_UNITS[unit]).astype(np.int64)


def check_session_order(sessions: np.ndarray, micros: np.ndarray, path: Path, column: str, first_line: int) -> None:
    """Raise naming the line and value where a session's time goes backwards in file order."""
    order = np.argsort(sessions, kind="stable")  # each session's rows together, in file order
    s, m = sessions[order], micros[order]
    back = np.flatnonzero((s[1:] == s[:-1]) & (m[1:] < m[:-1]))
    if len(back):
        pos = int(order[back[0] + 1])
        raise ImportFormatError(f"{path}: line {pos + first_line}: {column} goes back in time within session {sessions[pos]}")


def parse_integers(values: pd.Series, path: Path, column: str, first_line: int) -> np.ndarray:
    """Return ``values`` as int64; a non-integer raises naming the file, line and value."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() | (numbers != np.floor(numbers))
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise ImportFormatError(f"{path}: line {pos + first_line}: {column} {values.iloc[pos]!r} is not an integer")
    return numbers.to_numpy().astype(np.int64)


def canonical_import(users: np.ndarray, items: np.ndarray, times: np.ndarray) -> pd.DataFrame:
    """Return a canonical event table (session = user) sorted by (timestamp, user), ties in input order."""
    n = len(users)
    frame = pd.DataFrame(
        {
            C.TIMESTAMP: times.astype(np.int64),
            C.USER: users.astype(np.int64),
            C.ITEM: pd.array(items, dtype="str"),
            C.DOMAIN: pd.array([IMPORT_DOMAIN] * n, dtype="str"),
            C.ACTION: pd.array([IMPORT_ACTION] * n, dtype="str"),
            C.SUBDOMAIN: pd.array([None] * n, dtype="str"),
            C.OS: pd.array([None] * n, dtype="str"),
            C.SESSION: users.astype(np.int64),
        }
    )
    return frame.sort_values([C.TIMESTAMP, C.USER], kind="stable", ignore_index=True)


def import_gru4rec_tsv(
    path: Path, item_key: str = "ItemId", session_key: str = "SessionId", time_key: str = "Time", time_unit: str = "auto"
) -> pd.DataFrame:
    """Return a GRU4Rec-style TSV (header) as canonical events, user = session.

    ``time_unit`` says what ``Time`` counts ("s", "ms", "us"); "auto" infers it from the gaps
    between a session's events. The unit used is in ``frame.attrs["time_unit"]``.
    """
    path = Path(path)
    raw = read_tsv(path, (session_key, item_key, time_key))
    empty = (raw[item_key].isna() | (raw[item_key] == "")).to_numpy()
    if empty.any():
        raise ImportFormatError(f"{path}: line {int(np.flatnonzero(empty)[0]) + 2}: {item_key} is empty")
    sessions = parse_integers(raw[session_key], path, session_key, first_line=2)
    times = pd.to_numeric(raw[time_key], errors="coerce")
    if times.isna().any():
        pos = int(np.flatnonzero(times.isna().to_numpy())[0])
        raise ImportFormatError(f"{path}: line {pos + 2}: {time_key} {raw[time_key].iloc[pos]!r} is not a number")
    times = times.to_numpy(np.float64)
    unit = infer_time_unit(times, sessions) if time_unit == "auto" else time_unit
    if unit not in TIME_UNITS:
        raise ImportFormatError(f"{path}: time unit {unit!r} is not one of {sorted(TIME_UNITS)}")
    micros = to_micros(times, unit, path, time_key, first_line=2)
    check_session_order(sessions, micros, path, time_key, first_line=2)
    frame = canonical_import(sessions, raw[item_key].to_numpy(), micros)
    frame.attrs["time_unit"] = unit
    return frame


def read_tsv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Return a TSV with a header as strings; a malformed line or a missing column raises naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)  # extra fields would otherwise be dropped
        try:
            raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, index_col=False)
        except (pd.errors.ParserError, pd.errors.ParserWarning, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ImportFormatError(f"{path}: {err}") from err
    for key in columns:
        if key not in raw.columns:
            raise ImportFormatError(f"{path}: missing column '{key}' (header: {list(raw.columns)})")
    return raw


def parse_user_item_lines(path: Path) -> tuple[list[str], list[str]]:
    """Return the (user, item) tokens of a ``user item`` file; a bad line raises naming file and line."""
    users, items = [], []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if len(parts) != 2:
                raise ImportFormatError(f"{path}: line {lineno}: expected 'user item', got {line.rstrip()!r}")
            users.append(parts[0])
            items.append(parts[1])
    return users, items


def import_user_item_lines(path: Path) -> pd.DataFrame:
    """Return a SASRec-style ``user item`` file as canonical events; timestamp = position in the user's sequence (s)."""
    path = Path(path)
    users_raw, items = parse_user_item_lines(path)
    if not users_raw:
        raise ImportFormatError(f"{path}: no 'user item' lines")
    users = parse_integers(pd.Series(users_raw), path, "user", first_line=1)
    position = pd.Series(users).groupby(users, sort=False).cumcount().to_numpy()  # 0, 1, ... per user, file order
    return canonical_import(users, np.asarray(items, dtype=object), position * C.MICROS_PER_SECOND)
