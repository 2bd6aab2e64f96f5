"""Write a synthetic T-ECD root: the real layout, schema and defects, at any scale.

``generate_tecd`` builds the catalogue once (users, brands, items, latent intents), writes
it, then writes every day's partitions (events of each domain, payments, receipts, reviews)
independently, in ``cfg.workers`` processes. Every random stream is seeded from (seed, table,
day), the parquet writer options are fixed, and no wall-clock value enters a data file, so
the same config gives byte-identical files. Ground truth for later checks goes to
``root/_generator/`` (``item_groups.pq``, ``summary.json``), outside the T-ECD layout.
"""

from __future__ import annotations

import collections
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq

from seqrec.config import GeneratorConfig, config_to_dict
from seqrec.synthetic.catalogue import (
    Catalogue,
    brands_table,
    build_catalogue,
    item_chunks,
    item_groups_table,
    users_table,
)
from seqrec.synthetic.events import day_events
from seqrec.synthetic.payments import payments_day, reviews_day
from seqrec.synthetic.schemas import TECD_SCHEMAS, tecd_schema
from seqrec.io import atomic_path, write_json, write_table

__all__ = ["TECD_SCHEMAS", "tecd_schema", "generate_tecd", "day_paths", "GENERATOR_DIR"]

Progress = Callable[[str, int, int], None]
GENERATOR_DIR = "_generator"
# Fixed writer options: the same data always gives the same bytes.
WRITE_OPTIONS = {"compression": "zstd", "compression_level": 1, "write_statistics": True}  # level 1: half the time of 3, same size
ROW_GROUP = 1 << 18


def day_paths(root: Path, domains: tuple[str, ...], day: int) -> dict[str, Path]:
    """Return the path of every file written for ``day``, keyed by table name."""
    name = f"{day:05d}.pq"
    paths = {f"{d}/events": root / d / "events" / name for d in domains}
    return paths | {
        "payments/events": root / "payments" / "events" / name,
        "payments/receipts": root / "payments" / "receipts" / name,
        "reviews": root / "reviews" / name,
    }


def write_parquet(table, dest: Path) -> None:
    """Write one table atomically with the fixed writer options."""
    write_table(table, dest, row_group_size=ROW_GROUP, **WRITE_OPTIONS)


def write_day(root: Path, cfg: GeneratorConfig, cat: Catalogue, day: int) -> dict[str, int]:
    """Write every partition of ``day``; return its row and defect counts."""
    paths, counts = day_paths(root, cfg.domains, day), collections.Counter()
    for domain in cfg.domains:
        table, c = day_events(cfg, cat, cat.domains[domain], day)
        write_parquet(table, paths[f"{domain}/events"])
        counts.update(c)
    payments, receipts, c = payments_day(cfg, cat, day)
    write_parquet(payments, paths["payments/events"])
    write_parquet(receipts, paths["payments/receipts"])
    reviews, c2 = reviews_day(cfg, cat, day)
    write_parquet(reviews, paths["reviews"])
    counts.update(c)
    counts.update(c2)
    return dict(counts)


def write_items(root: Path, cfg: GeneratorConfig, cat: Catalogue, domain: str) -> dict[str, int]:
    """Write ``<domain>/items.pq`` chunk by chunk (bounded memory); return its counts."""
    counts = collections.Counter()
    dest = root / domain / "items.pq"
    with atomic_path(dest) as tmp, pq.ParquetWriter(tmp, TECD_SCHEMAS["items"], **WRITE_OPTIONS) as writer:
        for chunk, c in item_chunks(cfg, cat.domains[domain], cat):
            writer.write_table(chunk, row_group_size=ROW_GROUP)
            counts.update(c)
    counts[f"{domain}/items.pq"] = cat.domains[domain].size
    return dict(counts)


def write_catalogue(root: Path, cfg: GeneratorConfig, cat: Catalogue) -> dict[str, int]:
    """Write users, brands, every domain's items and the intent ground truth; return counts."""
    counts = collections.Counter()
    for name, build in (("users.pq", users_table), ("brands.pq", brands_table)):
        table, c = build(cfg, cat)
        write_parquet(table, root / name)
        counts.update(c | {name: table.num_rows})
    for domain in cfg.domains:
        counts.update(write_items(root, cfg, cat, domain))
    write_parquet(item_groups_table(cat), root / GENERATOR_DIR / "item_groups.pq")
    return dict(counts)


_WORKER: dict = {}


def _init_worker(root: Path, cfg: GeneratorConfig, cat: Catalogue) -> None:
    """Keep the run's inputs in a worker process (sent once, not once per day)."""
    _WORKER.update(root=root, cfg=cfg, cat=cat)


def _write_day_in_worker(day: int) -> dict[str, int]:
    """Write one day in a worker process; return its counts."""
    return write_day(_WORKER["root"], _WORKER["cfg"], _WORKER["cat"], day)


def write_days(root: Path, cfg: GeneratorConfig, cat: Catalogue, progress: Progress | None) -> dict[str, int]:
    """Write every day (in parallel when ``cfg.workers`` > 1); return the summed counts."""
    days, counts = list(range(cfg.first_day, cfg.first_day + cfg.days)), collections.Counter()
    report = progress or (lambda stage, done, total: None)
    if cfg.workers == 1:
        for done, day in enumerate(days, 1):
            counts.update(write_day(root, cfg, cat, day))
            report("days", done, len(days))
        return dict(counts)
    # spawn, not fork: forking a process whose Arrow thread pools are running can deadlock.
    ctx = multiprocessing.get_context("spawn")
    workers = min(cfg.workers, len(days))
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(root, cfg, cat)) as pool:
        futures = [pool.submit(_write_day_in_worker, day) for day in days]
        try:
            for done, future in enumerate(as_completed(futures), 1):
                counts.update(future.result())
                report("days", done, len(days))
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return dict(counts)


def summarise(cfg: GeneratorConfig, counts: dict[str, int]) -> dict:
    """Return the deterministic summary: rows per table, events, injected defects, the config."""
    tables = ("users.pq", "brands.pq", "payments.rows", "receipts.rows", "reviews.rows")
    rows = {k: counts[k] for k in tables} | {f"{d}/items.pq": counts[f"{d}/items.pq"] for d in cfg.domains}
    rows |= {f"{d}/events": counts.get(f"events.{d}", 0) for d in cfg.domains}
    defects = {k: v for k, v in counts.items() if k not in rows and not k.startswith("events.") and "." not in k}
    return {
        "rows": rows,
        "events_written": sum(rows[f"{d}/events"] for d in cfg.domains),
        "events_after_midnight": {d: counts.get(f"events.{d}.after_midnight", 0) for d in cfg.domains},
        "defects": dict(sorted(defects.items())),
        "days": [cfg.first_day, cfg.first_day + cfg.days - 1],
        "config": config_to_dict(cfg),
    }


def generate_tecd(root: Path, cfg: GeneratorConfig, progress: Progress | None = None) -> dict:
    """Write a full synthetic T-ECD root; return the summary with seconds and events/s added."""
    root, start = Path(root), time.perf_counter()
    cat = build_catalogue(cfg)
    counts = write_catalogue(root, cfg, cat)
    if progress:
        progress("catalogue", 1, 1)
    catalogue_done = time.perf_counter()
    counts |= write_days(root, cfg, cat, progress)
    summary = summarise(cfg, counts)
    write_json(summary, root / GENERATOR_DIR / "summary.json")  # no timings: byte-identical per seed
    end = time.perf_counter()
    timings = {
        "seconds": round(end - start, 3),
        "seconds_catalogue": round(catalogue_done - start, 3),
        "seconds_days": round(end - catalogue_done, 3),
        "events_per_second": round(summary["events_written"] / (end - start)),
        "day_events_per_second": round(summary["events_written"] / (end - catalogue_done)),
    }
    return summary | timings
