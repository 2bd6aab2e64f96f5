"""Reader throughput next to a raw pyarrow.dataset scan of the same files and columns.

    python benchmarks/bench_reader.py --root ../shared/data/tecd_marketplace --repeat 5

``--root`` is a T-ECD root (``<root>/<domain>/events/*.pq``); a folder holding ``events/``
directly (as ``shared/data/tecd_marketplace`` does) is read as the marketplace domain.
Prints one line per measurement, the ratio, and one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as pads

from seqrec.config import DataConfig
from seqrec.data.reader import EVENT_SOURCE_COLUMNS, list_partitions, load_events


def resolve_root(root: Path, domain: str, scratch: Path) -> Path:
    """Return a T-ECD root for ``root``: itself, or a scratch root linking ``root/events`` as ``domain``."""
    if (root / domain / "events").is_dir() or not (root / "events").is_dir():
        return root
    (scratch / domain).mkdir(parents=True)
    (scratch / domain / "events").symlink_to((root / "events").resolve())
    return scratch


def time_best(fn, repeat: int) -> tuple[float, float, int]:
    """Return (best seconds, median seconds, rows) of ``repeat`` calls of ``fn`` (which returns a row count)."""
    times, rows = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        rows = fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), rows


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--domain", default="marketplace")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = resolve_root(args.root, args.domain, Path(scratch))
        files = [str(p.path) for p in list_partitions(root, f"{args.domain}/events", None, None)]
        cfg = DataConfig(domains=(args.domain,), dask_workers=args.workers)
        cols = list(EVENT_SOURCE_COLUMNS)
        scans = {
            "reader": lambda: len(load_events(root, cfg).events),
            "pyarrow_dataset": lambda: pads.dataset(files, format="parquet").to_table(columns=cols).num_rows,
            "pyarrow_dataset_to_pandas": lambda: len(pads.dataset(files, format="parquet").to_table(columns=cols).to_pandas()),
        }
        figures = {"files": len(files), "repeat": args.repeat, "workers": args.workers}
        for name, fn in scans.items():
            best, median, rows = time_best(fn, args.repeat)
            figures[name] = {"rows": rows, "best_s": round(best, 4), "median_s": round(median, 4), "events_per_s": round(rows / best)}
            print(f"{name:28s} {rows:>10,d} rows  best {best:.3f} s  median {median:.3f} s  {rows / best / 1e6:.2f} M events/s")
    figures["ratio_reader_vs_pyarrow"] = round(figures["reader"]["events_per_s"] / figures["pyarrow_dataset"]["events_per_s"], 4)
    figures["ratio_reader_vs_pyarrow_pandas"] = round(
        figures["reader"]["events_per_s"] / figures["pyarrow_dataset_to_pandas"]["events_per_s"], 4
    )
    print(f"reader / pyarrow.dataset throughput: {figures['ratio_reader_vs_pyarrow']:.3f}")
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
