"""The pipeline's data flows on a local Dask cluster of 1 and of 2 worker processes: speed-up and memory per worker.

    .venv/bin/python benchmarks/bench_cluster.py --root outputs/bench/data/10000000 --out outputs/bench/work/cluster

Runs the real Prefect flows (Prefect's test harness: a temporary API on 127.0.0.1) as the pipeline runs them:
ingest, quality and clean with their per-day tasks on the cluster (``data.dask_address`` set to a local cluster of
``n`` single-threaded worker processes started here, as ``data.dask_processes`` would), then features through the
item graph (no embeddings) with the sessions' days and buckets and the graph's parts and buckets as Dask tasks on the
same workers; once with 1 worker process and once with 2, each into a fresh run directory (no cache hits). Prints per
stage seconds for each, the speed-up of 2 workers over 1 (per-day stages, features, through the graph), the peak RSS
of each worker process and of the flow's process; one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from bench_pipeline import Stages  # noqa: E402  (this folder: timing and peak memory per stage)

DAY_STAGES = ("ingest", "quality", "clean")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="T-ECD root (e.g. from `seqrec generate`)")
    p.add_argument("--out", type=Path, required=True, help="folder for the two runs (replaced)")
    p.add_argument("--workers", default="1,2", help="worker-process counts to compare, comma-separated")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    return p.parse_args(argv)


def peak_mib() -> float:
    """Return this process's peak resident memory in MiB (VmHWM; run on each worker too)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warm_up() -> None:
    """Import what the day tasks use (a long-running worker pays this once, outside the timings)."""
    import great_expectations  # noqa: F401

    import tasks.data  # noqa: F401
    import tasks.quality  # noqa: F401


def run_once(args: argparse.Namespace, workers: int) -> dict:
    """Return the stage seconds and peak memory of one run of the data flows on ``workers`` worker processes."""
    from distributed import Client, LocalCluster

    from flows.cluster import local_cluster_kwargs, on_cluster
    from flows.pipeline import clean_flow, features_flow, ingest_flow, quality_flow
    from seqrec.config import load_config

    with LocalCluster(**local_cluster_kwargs(workers)) as cluster, Client(cluster) as client:
        cfg = load_config(overrides=[
            f"data.root={args.root.resolve()}", f"output.root={args.out.resolve()}", f"output.run_name=workers-{workers}",
            f"data.dask_address={cluster.scheduler_address}", "features.build_embeddings=false", *args.set])
        client.run(warm_up)
        stages = Stages()
        ingested = stages.run("ingest", lambda: on_cluster(ingest_flow, cluster.scheduler_address)(config=cfg))
        stages.run("quality", lambda: on_cluster(quality_flow, cluster.scheduler_address)(ingested=ingested, config=cfg))
        cleaned = stages.run("clean", lambda: on_cluster(clean_flow, cluster.scheduler_address)(ingested=ingested, config=cfg))
        features = stages.run("features", lambda: features_flow(cleaned=cleaned, root=ingested["root"], config=cfg,
                                                                address=cluster.scheduler_address))
        peaks = client.run(peak_mib)
    seconds = {k: f["seconds"] for k, f in stages.figures.items()}
    rows = sum(d["rows"] for d in ingested["days"])
    print(f"{workers} worker(s): " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()), file=sys.stderr, flush=True)
    return {"workers": workers, "rows": rows, "days": len(ingested["days"]), "seconds": seconds,
            "per_day_stages_s": round(sum(seconds[k] for k in DAY_STAGES), 3),
            "through_graph_s": round(sum(seconds.values()), 3), "edges": features["graph"]["stats"].get("edges"),
            "worker_peak_rss_mib": sorted(round(v, 1) for v in peaks.values()),
            "flow_process_peak_rss_mib": {k: f["peak_rss_mib"] for k, f in stages.figures.items()}}


def main(argv: list[str] | None = None) -> dict:
    """Run the data flows once per worker count; print and return the JSON record."""
    from prefect.testing.utilities import prefect_test_harness

    args = parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    counts = [int(n) for n in args.workers.split(",")]
    warm_up()

    with prefect_test_harness(server_startup_timeout=180):
        runs = [run_once(args, n) for n in counts]
    first, last = runs[0], runs[-1]
    record = {"bench": "cluster", "root": str(args.root), "runs": runs, "cpu_count": os.cpu_count(),
              "speedup_per_day_stages": round(first["per_day_stages_s"] / last["per_day_stages_s"], 3),
              "speedup_features": round(first["seconds"]["features"] / last["seconds"]["features"], 3),
              "speedup_through_graph": round(first["through_graph_s"] / last["through_graph_s"], 3),
              "same_graph": len({r["edges"] for r in runs}) == 1}
    print(f"{last['workers']} workers vs {first['workers']}: per-day stages {record['speedup_per_day_stages']}x, "
          f"features {record['speedup_features']}x, through the graph {record['speedup_through_graph']}x", file=sys.stderr)
    print(json.dumps(record), flush=True)
    return record


if __name__ == "__main__":
    main()
