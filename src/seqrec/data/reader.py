"""Schema-safe, parallel reading of a T-ECD root into canonical tables.

Layout (TECD.md): ``<root>/<domain>/events/{day:05d}.pq`` and day-partitioned
``payments/events``, ``payments/receipts`` and ``reviews``; single-file ``users.pq``,
``brands.pq`` and ``<domain>/items.pq``. Every partition's schema is read before its
data; a bad partition either fails the load with a message naming the file and the
problem, or is skipped and reported, never dropped silently. Dask schedules the
partitions; the per-partition work is pyarrow (ENVIRONMENT.md: Dask's own overhead
dominates on small machines).
"""

from __future__ import annotations

import collections
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqrec import columns as C
from seqrec.config import DataConfig
from seqrec.data.schemas import EVENT_SOURCE_COLUMNS, PartitionError, canonical_events, check_event_schema, to_int64
from seqrec.io import fingerprint_files
from seqrec.parallel import in_dask_worker

if TYPE_CHECKING:
    import distributed

log = logging.getLogger(__name__)

DAY_FILE = re.compile(r"^(\d+)\.pq$")
RETRY_BACKOFF_S = 0.05  # first wait after a transient OSError; doubles on each retry
MISSING_EMBEDDING_LEN = -1  # ``<col>_len`` of a null embedding (0 means an empty list)
@dataclass(frozen=True)
class Partition:
    """One day file of a partitioned table."""

    path: Path
    day: int


@dataclass
class LoadResult:
    """The canonical event table and what happened to every partition on the way."""

    events: pd.DataFrame
    partitions: list[dict[str, Any]]  # file, day, rows, status ("ok" | "skipped"), reason
    skipped: list[str]  # files (relative to root) that were skipped, with reasons in ``partitions``
    missing_days: dict[str, list[int]]  # table -> days absent inside the requested range
    fingerprint: str


@dataclass
class DayTableResult:
    """A day-partitioned non-event table (payments, receipts, reviews) and its partition report."""

    table: pd.DataFrame
    partitions: list[dict[str, Any]]
    skipped: list[str]
    missing_days: dict[str, list[int]]
    fingerprint: str


# --------------------------------------------------------------------------- partitions
def find_missing_days(partitions: list[Partition], first_day: int | None, last_day: int | None) -> list[int]:
    """Return the days inside [first_day, last_day] (default: the files' own span) with no file."""
    days = {p.day for p in partitions}
    lo = min(days) if first_day is None else first_day
    hi = max(days) if last_day is None else last_day
    return sorted(set(range(lo, hi + 1)) - days)


def list_partitions(root: Path, table: str, first_day: int | None, last_day: int | None) -> list[Partition]:
    """Return the day partitions of ``<root>/<table>`` inside the day range, sorted by day."""
    directory = Path(root) / table
    if not directory.is_dir():
        raise PartitionError(f"table directory {directory} does not exist")
    found: dict[int, Path] = {}
    for path in sorted(directory.iterdir()):
        match = DAY_FILE.match(path.name)
        if match is None:
            if path.suffix == ".pq" and not path.name.startswith("."):
                log.warning("%s: not named {day:05d}.pq; not read", path)
            continue
        day = int(match.group(1))
        if day in found:
            raise PartitionError(f"{directory}: day {day} has two files, {found[day].name} and {path.name}")
        found[day] = path
    lo, hi = first_day, last_day
    parts = [Partition(p, d) for d, p in sorted(found.items()) if (lo is None or d >= lo) and (hi is None or d <= hi)]
    if not parts:
        raise PartitionError(f"{directory}: no partitions for days {lo}..{hi} (days present: {sorted(found)[:10]})")
    missing = find_missing_days(parts, first_day, last_day)
    if missing:
        log.warning("%s: %d missing day(s) in range: %s", directory, len(missing), missing)
    return parts


# --------------------------------------------------------------------------- per-partition work
def with_retries(read: Callable[[], Any], rel: str, retries: int) -> Any:
    """Return ``read()``, retrying transient OSErrors; raise PartitionError naming ``rel`` otherwise."""
    for attempt in range(retries + 1):
        try:
            return read()
        except OSError as err:
            if attempt == retries:
                raise PartitionError(f"{rel}: unreadable after {retries + 1} attempt(s): {err}") from err
            time.sleep(RETRY_BACKOFF_S * 2**attempt)
        except pa.ArrowException as err:
            raise PartitionError(f"{rel}: corrupt parquet: {err}") from err


def read_event_partition(part: Partition, rel: str, domain: str, retries: int) -> pa.Table:
    """Return one event partition in canonical form; raise PartitionError naming ``rel`` if it is bad."""
    schema = with_retries(lambda: pq.read_schema(part.path), rel, retries)
    check_event_schema(schema, rel)
    raw = with_retries(lambda: pq.read_table(part.path, columns=list(EVENT_SOURCE_COLUMNS)), rel, retries)
    try:
        return canonical_events(raw, domain, rel)
    except pa.ArrowException as err:
        raise PartitionError(f"{rel}: cannot convert to canonical events: {err}") from err


def count_off_day(events: pa.Table, day: int) -> int:
    """Return how many rows of a canonical partition have a timestamp outside the file's day."""
    days = pc.floor(pc.divide(events[C.TIMESTAMP].cast(pa.float64()), float(C.MICROS_PER_DAY)))
    return int(pc.sum(pc.not_equal(days, float(day))).as_py() or 0)


def guard_partition(read: Callable[..., pa.Table], part: Partition, rel: str, *args: Any) -> tuple[pa.Table | None, dict]:
    """Return (table, "ok" report), or (None, "skipped" report with the reason) for a bad partition."""
    try:
        table = read(part, rel, *args)
    except PartitionError as err:
        return None, {"file": rel, "day": part.day, "rows": 0, "status": "skipped", "reason": str(err)}
    return table, {"file": rel, "day": part.day, "rows": table.num_rows, "status": "ok", "reason": ""}


def check_bad_partitions(reports: list[dict[str, Any]], on_bad: str) -> list[str]:
    """Return the skipped files; in "fail" mode raise PartitionError naming every bad file instead."""
    bad = [r for r in reports if r["status"] == "skipped"]
    if bad and on_bad == "fail":
        raise PartitionError(f"{len(bad)} bad partition(s): " + "; ".join(r["reason"] for r in bad))
    for r in bad:
        log.warning("skipped bad partition: %s", r["reason"])
    if bad and len(bad) == len(reports):
        raise PartitionError(f"all {len(reports)} partitions are bad: " + "; ".join(r["reason"] for r in bad))
    return [r["file"] for r in bad]


# --------------------------------------------------------------------------- dask
def make_dask_client(cfg: DataConfig) -> "distributed.Client":
    """Return a client of ``cfg.dask_address``, or of a new LocalCluster bound to 127.0.0.1."""
    from distributed import Client

    if cfg.dask_address:
        return Client(cfg.dask_address)
    return Client(
        n_workers=cfg.dask_workers,
        threads_per_worker=1,
        processes=cfg.dask_processes,
        host="127.0.0.1",
        protocol="tcp",
        dashboard_address="127.0.0.1:0",
        local_directory=dask.config.get("temporary-directory", None),  # DASK_TEMPORARY_DIRECTORY
    )


def compute_all(tasks: list, cfg: DataConfig, client: "distributed.Client | None") -> list:
    """Return the results of delayed ``tasks`` on ``client``, a client from ``cfg``, or local threads."""
    if client is not None:
        return client.gather(client.compute(tasks))
    if in_dask_worker():  # a per-day task already on the cluster: its partitions in this worker, one at a time
        return list(dask.compute(*tasks, scheduler="sync"))
    if cfg.dask_address or cfg.dask_processes:
        with make_dask_client(cfg) as own:
            return own.gather(own.compute(tasks))
    return list(dask.compute(*tasks, scheduler="threads", num_workers=cfg.dask_workers))


def relative_name(path: Path, root: Path) -> str:
    """Return ``path`` relative to ``root`` as a POSIX string (the name used in reports and errors)."""
    return Path(path).relative_to(root).as_posix()


# --------------------------------------------------------------------------- events
EventRead = tuple[Partition, str, str]  # (partition, name relative to the root, domain)


def window_range(root: Path, data: DataConfig) -> tuple[int | None, int | None]:
    """Return (first_day, last_day) of ``data`` narrowed to the last ``data.window_days`` days that have files."""
    if data.window_days is None:
        return data.first_day, data.last_day
    days = [p.day for d in data.domains for p in list_partitions(root, f"{d}/events", data.first_day, data.last_day)]
    if not days:
        return data.first_day, data.last_day
    last = max(days)
    return max(last - data.window_days + 1, data.first_day if data.first_day is not None else 0), last


def plan_event_reads(root: Path, cfg: DataConfig) -> tuple[list[EventRead], dict[str, list[int]], list[Path]]:
    """Return (the event partitions of ``cfg.domains`` to read, missing days per table, their files).

    The day range is ``cfg.first_day``..``cfg.last_day``, narrowed to the last ``cfg.window_days`` days that have files.
    """
    root = Path(root)
    first, last = window_range(root, cfg)
    cfg = cfg.model_copy(update={"first_day": first, "last_day": last})
    reads, missing = [], {}
    for domain in cfg.domains:
        table = f"{domain}/events"
        parts = list_partitions(root, table, cfg.first_day, cfg.last_day)
        missing[table] = find_missing_days(parts, cfg.first_day, cfg.last_day)
        reads += [(part, relative_name(part.path, root), domain) for part in parts]
    return reads, missing, [part.path for part, _, _ in reads]


def read_event_partitions(reads: list[EventRead], cfg: DataConfig, client: "distributed.Client | None" = None
                          ) -> list[tuple[pa.Table | None, dict[str, Any]]]:
    """Return (canonical table or None, report) per partition, read in parallel by Dask; never raises for a bad one."""
    read = dask.delayed(guard_partition, pure=False)
    results = compute_all([read(read_event_partition, part, rel, domain, cfg.read_retries) for part, rel, domain in reads],
                          cfg, client)
    for t, r in results:
        r["off_day_rows"] = 0 if t is None else count_off_day(t, r["day"])
    return results


def load_events(root: Path, cfg: DataConfig, client: "distributed.Client | None" = None) -> LoadResult:
    """Return the canonical event table of ``cfg.domains`` over the day range, with a partition report.

    Every partition is read before bad ones are judged, so a "fail" error names all of them.
    The whole table is held in memory; ``seqrec.data.ingest.ingest_events`` streams day by day.
    """
    reads, missing, files = plan_event_reads(root, cfg)
    results = read_event_partitions(reads, cfg, client)
    reports = [r for _, r in results]
    skipped = check_bad_partitions(reports, cfg.on_bad_partition)
    events = sort_event_table(pa.concat_tables([t for t, _ in results if t is not None])).to_pandas()
    return LoadResult(events, reports, skipped, missing, fingerprint_files(files))


def sort_event_table(table: pa.Table) -> pa.Table:
    """Return the events sorted by (timestamp, user), ties in (domain, day, file row) order."""
    order = pc.sort_indices(table, sort_keys=[(C.TIMESTAMP, "ascending"), (C.USER, "ascending")])  # stable
    if not np.array_equal(order.to_numpy(), np.arange(len(order))):  # day files usually arrive sorted
        table = table.take(order)
    return table


def sort_events(table: pa.Table) -> pd.DataFrame:
    """Return the events sorted by (timestamp, user), ties in (domain, day, file row) order, as pandas."""
    return sort_event_table(table).to_pandas()


def split_event_days(table: pa.Table) -> dict[int, pa.Table]:
    """Return a canonical event table's rows by the day of their timestamp (in row order)."""
    days = table[C.TIMESTAMP].to_numpy() // C.MICROS_PER_DAY  # (n,)
    first = int(days[0]) if len(days) else 0
    if len(days) == 0 or (days == first).all():  # the usual case: one day per file
        return {first: table} if len(days) else {}
    return {int(d): table.filter(pa.array(days == d)) for d in np.unique(days)}


def repair_embeddings(column: pa.ChunkedArray | pa.Array, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Return (matrix (N, dim) float32, original lengths (N,) int32) of a ragged list column.

    Rows are zero-padded or truncated to ``dim`` (default: the most common non-zero length);
    a null row has length MISSING_EMBEDDING_LEN and an all-zero vector.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.list_value_length(arr).fill_null(MISSING_EMBEDDING_LEN).to_numpy().astype(np.int32)  # (N,)
    sizes = np.maximum(lengths, 0)  # (N,)
    if dim is None:
        nonzero = sizes[sizes > 0]
        dim = int(np.bincount(nonzero).argmax()) if len(nonzero) else 0
    values = pc.list_flatten(arr).cast(pa.float32()).to_numpy(zero_copy_only=False)  # (sum(sizes),)
    starts = np.cumsum(sizes) - sizes  # (N,) where each row begins in ``values``
    matrix = np.zeros((len(sizes), dim), dtype=np.float32)  # (N, dim)
    whole = sizes == dim  # rows of the right length: copied a run of rows at a time
    runs = np.flatnonzero(np.diff(np.concatenate([[0], whole, [0]]))).reshape(-1, 2)  # (R, 2) [first, end) rows
    if len(runs) > len(sizes) // 32:  # short runs (odd rows everywhere): every row element by element
        whole, runs = np.zeros_like(whole), runs[:0]
    for a, b in runs:
        matrix[a:b] = values[starts[a] : starts[a] + (b - a) * dim].reshape(b - a, dim)
    odd = np.flatnonzero(~whole & (sizes > 0))  # padded or truncated rows, element by element
    keep = np.minimum(sizes[odd], dim)  # (M,)
    cols = np.arange(keep.sum()) - np.repeat(np.cumsum(keep) - keep, keep)  # (K,) position inside row
    matrix[np.repeat(odd, keep), cols] = values[np.repeat(starts[odd], keep) + cols]
    return matrix, lengths


def is_list(t: pa.DataType) -> bool:
    """Return whether ``t`` is a (large, fixed-size) list type, i.e. an embedding column."""
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def frame_from_arrow(table: pa.Table, rel: str, embeddings: str, dim: int | None) -> pd.DataFrame:
    """Return pandas with durations and uint64 ids as int64, and list columns excluded or repaired."""
    scalars = {}
    for name in table.column_names:
        col = table[name]
        if pa.types.is_duration(col.type) or pa.types.is_uint64(col.type):
            col = to_int64(col, rel, name)
        if not is_list(col.type):
            scalars[name] = col
    frame = pa.table(scalars).to_pandas()
    if embeddings == "repair":
        for name in (n for n in table.column_names if is_list(table[n].type)):
            matrix, lengths = repair_embeddings(table[name], dim)
            frame[name] = list(matrix)  # (N,) rows of one contiguous (N, dim) float32 matrix
            frame[f"{name}_len"] = lengths
    return frame


def read_arrow_safe(path: Path, rel: str, embeddings: str, retries: int = 0) -> pa.Table:
    """Return a parquet file as Arrow, list columns dropped ("exclude") or cast to list<float32>."""
    schema = with_retries(lambda: pq.read_schema(path), rel, retries)
    lists = [f.name for f in schema if is_list(f.type)]
    keep = [f.name for f in schema if embeddings == "repair" or f.name not in lists]
    table = with_retries(lambda: pq.read_table(path, columns=keep), rel, retries)
    for name in (n for n in lists if n in keep):
        try:
            table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(pa.list_(pa.float32())))
        except pa.ArrowException as err:
            raise PartitionError(f"{rel}: column '{name}' of type {schema.field(name).type} is not a float list") from err
    return table


def read_table_safe(path: Path, embeddings: Literal["exclude", "repair"] = "exclude", dim: int | None = None) -> pd.DataFrame:
    """Return a single-file table (users, brands, items, ...) with its ragged embeddings excluded or repaired."""
    path = Path(path)
    return frame_from_arrow(read_arrow_safe(path, str(path), embeddings), str(path), embeddings, dim)


def read_day_partition(part: Partition, rel: str, embeddings: str, retries: int) -> pa.Table:
    """Return one partition of a non-event day table as Arrow (embeddings as list<float32> or dropped)."""
    return read_arrow_safe(part.path, rel, embeddings, retries)


def find_schema_outliers(tables: list[pa.Table | None], reports: list[dict]) -> dict[int, str]:
    """Return {index: problem} for partitions whose scalar columns differ from the most common schema.

    A column is expected when more than half of the readable partitions have it; its expected
    type is the most common one, ties going to the earliest partition.
    """
    types: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for t in (t for t in tables if t is not None):
        for f in (f for f in t.schema if not is_list(f.type)):
            types[f.name][str(f.type)] += 1
    n_good = sum(t is not None for t in tables)
    expected = {name: c.most_common(1)[0][0] for name, c in types.items() if c.total() * 2 > n_good}
    problems = {}
    for i, t in enumerate(tables):
        if t is None:
            continue
        have = {f.name: str(f.type) for f in t.schema if not is_list(f.type)}
        for name, typ in expected.items():
            if have.get(name) != typ:
                got = "missing" if name not in have else f"type {have[name]}"
                problems.setdefault(i, f"{reports[i]['file']}: column '{name}' is {got}, expected {typ}")
    return problems


def load_day_tables(root: Path, table: str, cfg: DataConfig, client: "distributed.Client | None" = None) -> DayTableResult:
    """Return a day-partitioned table (``payments/receipts``, ``reviews``, ...) over the day range, with a report."""
    root = Path(root)
    parts = list_partitions(root, table, cfg.first_day, cfg.last_day)
    rels = [relative_name(p.path, root) for p in parts]
    read = dask.delayed(guard_partition, pure=False)
    tasks = [read(read_day_partition, p, r, cfg.embeddings, cfg.read_retries) for p, r in zip(parts, rels)]
    tables, reports = map(list, zip(*compute_all(tasks, cfg, client)))
    for i, problem in find_schema_outliers(tables, reports).items():
        tables[i] = None
        reports[i].update(rows=0, status="skipped", reason=problem)
    skipped = check_bad_partitions(reports, cfg.on_bad_partition)
    try:
        merged = pa.concat_tables([t for t in tables if t is not None], promote_options="permissive")
    except pa.ArrowException as err:
        raise PartitionError(f"{root / table}: partition schemas cannot be combined: {err}") from err
    frame = frame_from_arrow(merged, table, cfg.embeddings, cfg.embedding_dim)
    missing = {table: find_missing_days(parts, cfg.first_day, cfg.last_day)}
    return DayTableResult(frame, reports, skipped, missing, fingerprint_files([p.path for p in parts]))
