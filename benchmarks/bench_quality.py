"""Throughput of the quality passes and cleaning on event partitions, against a raw pyarrow scan.

    python benchmarks/bench_quality.py --events 500000             # generate, then measure
    python benchmarks/bench_quality.py --root ../shared/data/tecd_marketplace

Prints one JSON object: events/s of a pyarrow scan, of the raw pass (per-partition GX suites on a
thread pool), of cleaning and of the cleaned pass, each as a ratio to the scan, and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import pyarrow.parquet as pq  # noqa: E402

from seqrec.quality import validate as Q  # noqa: E402
from seqrec.quality.cleaning import clean_table  # noqa: E402
from seqrec.config import CleaningConfig, GeneratorConfig, QualityConfig, SuiteParams  # noqa: E402


def peak_rss_mb() -> float:
    """Return this process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    """Return (result, seconds) of calling ``fn``."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def event_files(root: Path, domain: str) -> list[Path]:
    """Return the day partitions of one domain's events."""
    files = sorted((root / domain / "events").glob("*.pq")) or sorted((root / "events").glob("*.pq"))
    if not files:
        raise FileNotFoundError(f"no event partitions under {root / domain / 'events'} or {root / 'events'}")
    return files


def run(root: Path, domain: str, workers: int) -> dict:
    """Return the measured figures for one domain's event partitions under ``root``."""
    import great_expectations  # noqa: F401  (import cost is paid once, outside the timings)

    files = event_files(root, domain)
    tables, scan_s = timed(lambda: [pq.read_table(f) for f in files])
    n = sum(t.num_rows for t in tables)
    frames, to_pandas_s = timed(lambda: {f.stem: t.to_pandas() for f, t in zip(files, tables)})
    params = SuiteParams.of(QualityConfig(workers=workers, on_cleaned_failure="warn"), CleaningConfig())
    table = f"events.{domain}"
    raw, raw_s = timed(lambda: Q.validate_partitions(frames, table, "raw", params))
    cleaned, clean_s = timed(lambda: {k: clean_table(df, table, CleaningConfig()).clean for k, df in frames.items()})
    gate, gate_s = timed(lambda: Q.validate_partitions(cleaned, table, "cleaned", params))
    rate = lambda s: round(n / s)  # noqa: E731
    return {
        "root": str(root), "table": table, "partitions": len(files), "events": n, "workers": workers,
        "scan_s": round(scan_s, 3), "scan_events_per_s": rate(scan_s), "to_pandas_s": round(to_pandas_s, 3),
        "raw_pass_s": round(raw_s, 3), "raw_pass_events_per_s": rate(raw_s), "raw_pass_vs_scan": round(scan_s / raw_s, 4),
        "cleaning_s": round(clean_s, 3), "cleaning_events_per_s": rate(clean_s), "cleaning_vs_scan": round(scan_s / clean_s, 4),
        "cleaned_pass_s": round(gate_s, 3), "cleaned_pass_events_per_s": rate(gate_s),
        "raw_findings": sorted({c.check for v in raw for c in v.failures()}),
        "cleaned_failures": sorted({c.check for v in gate for c in v.failures()}),
        "peak_rss_mib": round(peak_rss_mb(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="T-ECD root (default: generate one in a temp dir)")
    parser.add_argument("--events", type=int, default=500_000, help="marketplace events to generate without --root")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--domain", default="marketplace")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.root is not None:
        print(json.dumps(run(args.root, args.domain, args.workers), indent=1))
        return
    from seqrec.synthetic.generate import generate_tecd

    with tempfile.TemporaryDirectory() as tmp:
        generate_tecd(Path(tmp), GeneratorConfig(events=args.events, days=args.days, domains=(args.domain,), workers=1))
        print(json.dumps(run(Path(tmp), args.domain, args.workers), indent=1))


if __name__ == "__main__":
    main()
