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
    path: Path, item_key: str = "ItemId", session_key: str = "SessionId", time_key: str = "Time"
) -> pd.DataFrame:
    """Return a GRU4Rec-style TSV (header; Time in unix seconds) as canonical events, user = session."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)  # extra fields would otherwise be dropped
        try:
            raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, index_col=False)
        except (pd.errors.ParserError, pd.errors.ParserWarning) as err:
            raise ImportFormatError(f"{path}: {err}") from err
    for key in (session_key, item_key, time_key):
        if key not in raw.columns:
            raise ImportFormatError(f"{path}: missing column '{key}' (header: {list(raw.columns)})")
    empty = (raw[item_key].isna() | (raw[item_key] == "")).to_numpy()
    if empty.any():
        raise ImportFormatError(f"{path}: line {int(np.flatnonzero(empty)[0]) + 2}: {item_key} is empty")
    sessions = parse_integers(raw[session_key], path, session_key, first_line=2)
    seconds = pd.to_numeric(raw[time_key], errors="coerce")
    if seconds.isna().any():
        pos = int(np.flatnonzero(seconds.isna().to_numpy())[0])
        raise ImportFormatError(f"{path}: line {pos + 2}: {time_key} {raw[time_key].iloc[pos]!r} is not a number")
    micros = np.rint(seconds.to_numpy(np.float64) * C.MICROS_PER_SECOND)  # float seconds -> whole microseconds
    return canonical_import(sessions, raw[item_key].to_numpy(), micros)


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
