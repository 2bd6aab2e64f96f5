"""Feature throughput: sessionization, co-occurrence graph and one embedding epoch on CPU.

    python benchmarks/bench_features.py --events 1000000 --out /tmp/bench_features

Generates a synthetic T-ECD root with ``seqrec.generate`` (or, without it, synthesises a
canonical event table), then times each stage and prints one JSON line per stage: seconds,
events/s, the process's peak RSS so far, and (``--memory``, a second traced run) the peak of
allocations traced by ``tracemalloc``. The embedding stage runs ``--steps`` batches of one
epoch (0 = the full epoch) and extrapolates the full epoch's time.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from seqrec import columns as C
from seqrec.config import DataConfig, EmbeddingConfig, GeneratorConfig, GraphConfig, SessionConfig
from seqrec.embeddings import edge_arrays, train_item_embeddings
from seqrec.graph import build_cooccurrence_graph, graph_stats
from seqrec.sessions import sessionize_partitions


def peak_rss_mb() -> float:
    """Return the process's peak resident set size so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def traced_peak_mb(fn: Callable[[], Any]) -> float:
    """Return the peak of Python/numpy allocations traced while running ``fn`` (MiB)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def synthesise_events(n: int, days: int, seed: int = 0) -> tuple[pd.DataFrame, None, pd.Series]:
    """Return (events, no receipts, catalogue): users browsing 50 latent item groups."""
    rng = np.random.default_rng(seed)
    n_items, n_users = max(n // 25, 100), max(n // 12, 10)
    user = rng.integers(0, n_users, n)
    times = np.sort(rng.integers(0, days * C.MICROS_PER_DAY, n))
    group = rng.integers(0, 50, n_users)[user]
    item = (group * (n_items // 50) + rng.zipf(1.3, n) % (n_items // 50)).astype(np.int64)
    events = pd.DataFrame({C.TIMESTAMP: times, C.USER: user, C.ITEM: pd.Series(item).map("nfmcg_{}".format)})
    return events, None, pd.Series(np.unique(events[C.ITEM]))


def generated_events(n: int, days: int, root: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.Series]:
    """Return (events, receipts, catalogue) of a generated T-ECD root (marketplace + retail)."""
    from seqrec.generate import generate_tecd
    from seqrec.reader import load_day_tables, load_events

    domains = ("marketplace", "retail")
    generate_tecd(root, GeneratorConfig(events=n, days=days, domains=domains))
    data = DataConfig(root=root, domains=domains)
    catalogue = pd.concat([pd.read_parquet(root / d / "items.pq", columns=[C.ITEM])[C.ITEM] for d in domains])
    return load_events(root, data).events, load_day_tables(root, "payments/receipts", data).table, catalogue


def emit(stage: str, seconds: float, rows: int, **extra: Any) -> None:
    """Print one JSON line for a stage."""
    line = {"stage": stage, "seconds": round(seconds, 3), "rows": rows, "rows_per_s": round(rows / seconds),
            "peak_rss_mb": round(peak_rss_mb(), 1), **extra}
    print(json.dumps(line, default=str), flush=True)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Return (fn(), seconds)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    """Run the benchmark and print one JSON line per stage."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--synthetic", action="store_true", help="skip the generator")
    ap.add_argument("--steps", type=int, default=20, help="embedding batches to time (0 = full epoch)")
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--memory", action="store_true", help="re-run stages under tracemalloc")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_features_"))
    source = "synthetic" if args.synthetic else "generator"
    try:
        (events, receipts, catalogue), sec = timed(lambda: generated_events(args.events, args.days, out / "tecd"))
    except ImportError:
        source = "synthetic"
    if source == "synthetic":
        (events, receipts, catalogue), sec = timed(lambda: synthesise_events(args.events, args.days))
    emit("prepare_events", sec, len(events), source=source)

    parts = [day for _, day in events.groupby(events[C.TIMESTAMP] // C.MICROS_PER_DAY, sort=True)]
    run_sessions = lambda: sessionize_partitions(parts, SessionConfig())  # noqa: E731
    sessions, sec = timed(run_sessions)
    traced = {"tracemalloc_peak_mb": round(traced_peak_mb(run_sessions), 1)} if args.memory else {}
    emit("sessionize", sec, len(events), partitions=len(parts), sessions=sessions.report["sessions_out"], **traced)

    cfg = GraphConfig()
    run_graph = lambda: build_cooccurrence_graph(sessions.events, receipts, catalogue, cfg, out / "graph")  # noqa: E731
    graph, sec = timed(run_graph)
    traced = {"tracemalloc_peak_mb": round(traced_peak_mb(run_graph), 1)} if args.memory else {}
    emit("graph", sec, len(sessions.events), buckets=cfg.buckets, **graph_stats(graph), **traced)

    emb_cfg = EmbeddingConfig(epochs=1, batch_size=args.batch_size, steps_per_epoch=args.steps)
    full_steps = int(np.ceil(2 * len(edge_arrays(graph)[0]) / args.batch_size))
    _, sec = timed(lambda: train_item_embeddings(graph, emb_cfg, device="cpu", progress=False))
    steps = args.steps or full_steps
    emit("embedding_epoch", sec, steps * args.batch_size, steps=steps, full_epoch_steps=full_steps,
         full_epoch_s_estimate=round(sec / steps * full_steps, 1), threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
