"""End-to-end pipeline through graph building, timed per stage with peak RSS; one JSON line.

    .venv/bin/python benchmarks/bench_pipeline.py --events 1000000 --out outputs/bench/pipeline
    .venv/bin/python benchmarks/bench_pipeline.py --root outputs/bench/data/1000000 --out /tmp/pipe

Calls the library stages directly, in the pipeline's order and in one process (as the flow's
tasks run): resolve (generate ``--events`` marketplace events unless ``--root`` is given) ->
ingest -> raw validation per day -> cleaning per day -> cleaned gate per day -> sessionize ->
co-occurrence graph. The config is ``seqrec.config.load_config(overrides=[...])`` (``--set``
adds overrides). Before ingesting, a raw ``pyarrow.dataset`` scan of the same event files and
columns is timed (best of ``--repeat``, page cache warm) as the in-process baseline:
``load_validate_clean_vs_scan`` = scan seconds / (ingest + raw validation + cleaning seconds),
i.e. the pipeline's throughput as a share of the scan's (ingest and cleaning include writing
their parquet outputs, as in the pipeline).

Peak memory per stage is the process's VmHWM, reset before each stage (after garbage collection
and handing pyarrow's unused pool memory back, so the scan's buffers do not count) through
``/proc/self/clear_refs`` (Linux; without it the figures are cumulative and say so). The
generator's worker processes are reported apart (``children_peak_rss_mib``). Great Expectations
is imported before the timings (``gx_import_s``), as a long-running worker pays it once. Human-readable
lines go to stderr, the JSON line to stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import pyarrow as pa  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402

from seqrec.config import load_config  # noqa: E402
from seqrec.data.reader import EVENT_SOURCE_COLUMNS, list_partitions  # noqa: E402
from seqrec.pipeline.data import ingest_events, resolve_data_root  # noqa: E402
from seqrec.pipeline.features import build_item_graph, sessionize_events  # noqa: E402
from seqrec.pipeline.quality import clean_events_day, validate_events_day  # noqa: E402

MIB = 1024.0


def rss_status() -> dict[str, float]:
    """Return this process's current (VmRSS) and peak (VmHWM) resident memory in MiB."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) / MIB
    return out


def release_memory() -> None:
    """Collect garbage and hand pyarrow's unused pool memory back, so a stage's peak starts from live data only."""
    gc.collect()
    pa.default_memory_pool().release_unused()


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; return False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class Stages:
    """Runs and records stages: seconds, peak RSS during the stage, RSS after it."""

    def __init__(self) -> None:
        self.figures: dict[str, dict[str, Any]] = {}
        self.peak_resets = True

    def run(self, name: str, fn: Callable[[], Any], **extra: Any) -> Any:
        """Return ``fn()``; record its wall time and peak RSS under ``name``."""
        release_memory()
        self.peak_resets = reset_peak() and self.peak_resets
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        mem = rss_status()
        self.figures[name] = {"seconds": round(seconds, 3), "peak_rss_mib": round(mem["VmHWM"], 1),
                              "rss_after_mib": round(mem["VmRSS"], 1), **extra}
        print(f"{name:16s} {seconds:9.2f} s  peak {mem['VmHWM']:9.1f} MiB", file=sys.stderr, flush=True)
        return out

    def seconds(self, *names: str) -> float:
        """Return the summed seconds of the named stages that ran."""
        return sum(self.figures[n]["seconds"] for n in names if n in self.figures)


def scan_seconds(root: Path, domains: tuple[str, ...], repeat: int) -> tuple[float, int, int]:
    """Return (best seconds, rows, files) of a raw pyarrow.dataset scan of the event files, after a warm-up."""
    files = [str(p.path) for d in domains for p in list_partitions(root, f"{d}/events", None, None)]
    scan = lambda: pads.dataset(files, format="parquet").to_table(columns=list(EVENT_SOURCE_COLUMNS)).num_rows  # noqa: E731
    rows, best = scan(), float("inf")
    for _ in range(max(repeat, 1)):
        start = time.perf_counter()
        scan()
        best = min(best, time.perf_counter() - start)
    return best, rows, len(files)


def per_day(fn: Callable[[dict], dict], days: list[dict], workers: int) -> list[dict]:
    """Return ``fn(day)`` for every day, run on ``workers`` threads (as the flow submits them)."""
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        return list(pool.map(fn, days))


def timed_per_day(fn: Callable[[dict], dict], days: list[dict], workers: int) -> tuple[list[dict], float]:
    """Return (``fn(day)`` for every day on ``workers`` threads, the summed seconds of the days' calls)."""
    def one(day: dict) -> tuple[dict, float]:
        start = time.perf_counter()
        return fn(day), time.perf_counter() - start

    pairs = per_day(one, days, workers)
    return [r for r, _ in pairs], sum(s for _, s in pairs)


def bare_gx_seconds(days: list[dict], stage: str, cfg, root: str, domains: tuple[str, ...], workers: int) -> float:
    """Return the summed seconds of Great Expectations' own validation of the days' frames, on ``workers`` threads as
    the stage runs: the same suites, rows and check columns, the frames prepared outside the timing (the floor the
    validate stage is compared with: ``vs_bare_gx`` = the stage's summed day seconds / these)."""
    from seqrec.config import SuiteParams
    from seqrec.pipeline.quality import LOW_CARDINALITY, events_by_domain, references_of
    from seqrec.quality.validate import add_check_columns, run_suite, suite_columns

    params, refs = SuiteParams.of(cfg.quality, cfg.cleaning), references_of(root, domains)

    def one(day: dict) -> float:
        seconds = 0.0
        for table, df in events_by_domain(day["path"], categorical=LOW_CARDINALITY).items():
            frame, skipped = add_check_columns(df, table, stage, params, refs)
            frame = frame[suite_columns(frame, table, stage, params, skipped)]
            start = time.perf_counter()
            run_suite(frame, table, stage, params, skipped, keep=False)  # GX's pass alone: its result not serialised
            seconds += time.perf_counter() - start
        return seconds

    return sum(per_day(one, days, workers))


def validate_days(stages: "Stages", name: str, days: list[dict], stage: str, cfg, qdir: str, root: str,
                  domains: tuple[str, ...], workers: int) -> list[dict]:
    """Run the validate stage on every day as ``name``; record its failed checks and its cost against bare GX."""
    results, day_s = stages.run(name, lambda: timed_per_day(
        lambda d: validate_events_day(d, stage, cfg.quality, cfg.cleaning, qdir, root, domains), days, workers))
    gx_s = bare_gx_seconds(days, stage, cfg, root, domains, workers)
    rows = sum(r["rows"] for r in results)
    stages.figures[name].update(failed_checks=sum(r["failed"] for r in results), day_seconds=round(day_s, 3),
                                bare_gx_seconds=round(gx_s, 3), vs_bare_gx=round(day_s / gx_s, 3),
                                us_per_row=round(1e6 * day_s / rows, 3), bare_gx_us_per_row=round(1e6 * gx_s / rows, 3))
    print(f"{'':16s} {name}: {day_s:.2f} s over days vs bare GX {gx_s:.2f} s = {day_s / gx_s:.2f}x", file=sys.stderr)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000, help="marketplace events to generate (without --root)")
    p.add_argument("--days", type=int, default=7, help="days to generate (without --root)")
    p.add_argument("--root", type=Path, default=None, help="existing T-ECD root (skips generation)")
    p.add_argument("--out", type=Path, required=True, help="run folder (its stage outputs are replaced)")
    p.add_argument("--domains", default="marketplace", help="data.domains, comma-separated")
    p.add_argument("--workers", type=int, default=2, help="generator processes, Dask threads, per-day threads")
    p.add_argument("--repeat", type=int, default=2, help="timed raw scans (best kept)")
    p.add_argument("--no-validate", action="store_true", help="skip the raw validation and cleaned gate")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the pipeline stages, print and return the JSON record."""
    args = parse_args(argv)
    out = args.out.resolve()
    domains = tuple(args.domains.split(","))
    overrides = [
        f"output.root={out}", "output.run_name=run",
        f"generator.events={args.events}", f"generator.days={args.days}", f"generator.workers={args.workers}",
        f"data.domains=[{','.join(domains)}]", f"data.dask_workers={args.workers}", f"quality.workers={args.workers}",
        "quality.on_cleaned_failure=warn",
    ]
    if args.root is not None:
        overrides.append(f"data.root={args.root.resolve()}")
    cfg = load_config(overrides=overrides + list(args.set))
    run_dir = (cfg.output.run_dir).resolve()
    stages = Stages()
    start = time.perf_counter()
    import great_expectations  # noqa: F401  (a one-off import cost, kept out of the stage timings)

    gx_import_s = time.perf_counter() - start
    source = stages.run("resolve", lambda: resolve_data_root(cfg))
    root = Path(source["root"])
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / MIB  # generator workers, if any
    scan_s, scan_rows, n_files = scan_seconds(root, domains, args.repeat)
    print(f"{'raw scan':16s} {scan_s:9.2f} s  {scan_rows:,} rows in {n_files} files", file=sys.stderr, flush=True)

    ingested = stages.run("ingest", lambda: ingest_events(str(root), cfg.data, str(run_dir / "ingest")))
    days, rows = ingested["days"], ingested["rows"]
    stages.figures["ingest"].update(rows=rows, days=len(days))
    qdir = str(run_dir / "quality")
    if not args.no_validate:
        validate_days(stages, "validate_raw", days, "raw", cfg, qdir, str(root), domains, args.workers)
    cleaned = stages.run("clean", lambda: per_day(
        lambda d: clean_events_day(d, cfg.cleaning, str(run_dir / "clean")), days, args.workers))
    kept = sum(d["rows_kept"] for d in cleaned)
    stages.figures["clean"].update(rows_kept=kept, rows_quarantined=sum(d["rows_quarantined"] for d in cleaned))
    if not args.no_validate:
        validate_days(stages, "validate_cleaned", cleaned, "cleaned", cfg, qdir, str(root), domains, args.workers)
    sessions = stages.run("sessionize", lambda: sessionize_events(
        [d["path"] for d in cleaned], cfg.features.sessions, str(run_dir / "features" / "sessions")))
    stages.figures["sessionize"]["sessions"] = sessions["report"].get("sessions_out")
    graph = stages.run("graph", lambda: build_item_graph(
        sessions["sessions"], str(root), cfg.features.graph, str(run_dir / "features" / "graph"), cfg.data))
    stats = graph["stats"]
    stages.figures["graph"].update({k: v for k, v in stats.items() if isinstance(v, (int, float, str))})

    lvc_s = stages.seconds("ingest", "validate_raw", "clean")
    through_graph = stages.seconds(*(n for n in stages.figures if n != "resolve"))
    peak = max(f["peak_rss_mib"] for n, f in stages.figures.items() if n != "resolve")
    record = {
        "bench": "pipeline", "events": args.events if not args.root else None, "root": str(root), "generated": bool(source.get("generated")),
        "domains": list(domains), "workers": args.workers, "rows": rows, "rows_kept": kept, "days": len(days),
        "validated": not args.no_validate, "scan_s": round(scan_s, 3), "scan_rows": scan_rows,
        "scan_events_per_s": round(scan_rows / scan_s),
        "load_validate_clean_s": round(lvc_s, 3), "load_validate_clean_events_per_s": round(rows / lvc_s),
        "load_validate_clean_vs_scan": round(scan_s / lvc_s, 4),
        "through_graph_s": round(through_graph, 3), "through_graph_events_per_s": round(rows / through_graph),
        "peak_rss_mib": peak, "resolve_peak_rss_mib": stages.figures["resolve"]["peak_rss_mib"],
        "children_peak_rss_mib": round(child_peak, 1), "peak_resets_per_stage": stages.peak_resets,
        "gx_import_s": round(gx_import_s, 3),
        "stages": stages.figures,
    }
    print(f"load+validate+clean / raw scan throughput: {record['load_validate_clean_vs_scan']:.3f}; "
          f"through graph {through_graph:.1f} s, peak {peak:.0f} MiB", file=sys.stderr)
    print(json.dumps(record, default=str), flush=True)
    return record


if __name__ == "__main__":
    main()
