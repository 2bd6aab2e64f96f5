"""The canonical schema of event partitions, and the checks that turn a raw T-ECD event file into it.

A raw event file must carry the T-ECD columns with accepted Arrow types (``EVENT_TYPES``);
``canonical_events`` casts it to ``EVENT_ARROW_SCHEMA``: int64 microseconds and user ids, large
strings for the rest, the domain added. A file that does not fit is a ``PartitionError`` naming
the file, the column and the type.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqrec import columns as C

INT64_MAX = np.iinfo(np.int64).max
EVENT_SOURCE_COLUMNS = (C.TIMESTAMP, C.USER, C.ITEM, C.SUBDOMAIN, C.ACTION, C.OS)
EVENT_ARROW_SCHEMA = pa.schema(
    [(C.TIMESTAMP, pa.int64()), (C.USER, pa.int64())]
    + [(name, pa.large_string()) for name in C.CANONICAL_EVENT_COLUMNS[2:]]
)


class PartitionError(ValueError):
    """A partition (or table directory) is missing, unreadable or has the wrong schema."""


def _is_text(t: pa.DataType) -> bool:
    """Return whether ``t`` holds strings (plain, large or dictionary-encoded)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


# Accepted Arrow types per event column, and the type the T-ECD files use (named in errors).
EVENT_TYPES: dict[str, tuple[Callable[[pa.DataType], bool], str]] = {
    C.TIMESTAMP: (pa.types.is_duration, "duration[us]"),
    C.USER: (pa.types.is_integer, "uint64"),
    C.ITEM: (_is_text, "large_string"),
    C.SUBDOMAIN: (lambda t: _is_text(t) or pa.types.is_null(t), "large_string"),
    C.ACTION: (_is_text, "large_string"),
    C.OS: (lambda t: _is_text(t) or pa.types.is_null(t), "large_string"),
}


def check_event_schema(schema: pa.Schema, rel: str) -> None:
    """Raise PartitionError naming ``rel`` and the column if ``schema`` is not an event schema."""
    for name, (accepts, expected) in EVENT_TYPES.items():
        if name not in schema.names:
            raise PartitionError(f"{rel}: column '{name}' is missing (columns: {schema.names})")
        if not accepts(schema.field(name).type):
            raise PartitionError(f"{rel}: column '{name}' has type {schema.field(name).type}, expected {expected}")


def to_int64(column: pa.ChunkedArray, rel: str, name: str) -> pa.ChunkedArray:
    """Return an integer or duration column as int64 (durations in microseconds); overflow is an error."""
    if pa.types.is_duration(column.type):
        return column.cast(pa.duration("us")).cast(pa.int64())
    if pa.types.is_uint64(column.type) and column.null_count < len(column):
        top = pc.max(column).as_py()
        if top > INT64_MAX:
            raise PartitionError(f"{rel}: column '{name}' value {top} exceeds int64 max {INT64_MAX}")
    return column.cast(pa.int64())


def constant_strings(value: str, n: int) -> pa.Array:
    """Return a large_string array of ``n`` copies of ``value``, built from buffers (cheaper than pa.repeat)."""
    raw = value.encode()
    offsets = np.arange(n + 1, dtype=np.int64) * len(raw)  # (n + 1,)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(raw * n))


def canonical_events(table: pa.Table, domain: str, rel: str) -> pa.Table:
    """Return a raw event partition as a table with EVENT_ARROW_SCHEMA."""
    action = table[C.ACTION].cast(pa.large_string())  # spellings kept as read: cleaning.action_aliases maps them
    cols = {
        C.TIMESTAMP: to_int64(table[C.TIMESTAMP], rel, C.TIMESTAMP),
        C.USER: to_int64(table[C.USER], rel, C.USER),
        C.ITEM: table[C.ITEM].cast(pa.large_string()),
        C.DOMAIN: constant_strings(domain, table.num_rows),
        C.ACTION: action,
        C.SUBDOMAIN: table[C.SUBDOMAIN].cast(pa.large_string()),
        C.OS: table[C.OS].cast(pa.large_string()),
    }
    return pa.table(cols, schema=EVENT_ARROW_SCHEMA)
