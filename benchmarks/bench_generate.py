"""Benchmark the synthetic T-ECD generator: events written per second.

    python benchmarks/bench_generate.py --events 1000000 --workers 2 --out /tmp/tecd-bench

Prints a human line and a JSON line (also appended to ``--json`` if given).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from seqrec.config import GeneratorConfig
from seqrec.synthetic.generate import generate_tecd


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000, help="marketplace events over all days")
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--domains", default="marketplace,retail,offers", help="comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="root to write (replaced)")
    p.add_argument("--json", type=Path, default=None, help="append the JSON line to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run one generation; return the benchmark record."""
    args = parse_args(argv)
    cfg = GeneratorConfig(
        seed=args.seed, events=args.events, days=args.days, workers=args.workers, domains=tuple(args.domains.split(","))
    )
    if args.out.exists():
        shutil.rmtree(args.out)
    summary = generate_tecd(args.out, cfg)
    market = summary["rows"]["marketplace/events"] if "marketplace" in cfg.domains else 0
    record = {
        "bench": "generate",
        "events": args.events,
        "days": args.days,
        "workers": args.workers,
        "domains": list(cfg.domains),
        "events_written": summary["events_written"],
        "marketplace_events": market,
        "seconds": summary["seconds"],
        "events_per_second": summary["events_per_second"],
        "seconds_catalogue": summary["seconds_catalogue"],
        "day_events_per_second": summary["day_events_per_second"],  # day partitions only
        "bytes": sum(p.stat().st_size for p in args.out.rglob("*.pq")),
    }
    print(
        f"{record['events_written']:,} events in {record['seconds']:.2f} s: {record['events_per_second']:,} events/s "
        f"(catalogue {record['seconds_catalogue']:.2f} s; day partitions {record['day_events_per_second']:,} events/s)",
        file=sys.stderr,
    )
    print(json.dumps(record))
    if args.json:
        with args.json.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()
