"""Feature throughput: sessionization, co-occurrence graph and one embedding epoch on CPU.

    python benchmarks/bench_features.py --events 1000000 --out /tmp/bench_features

Generates a synthetic T-ECD root with ``seqrec.synthetic.generate`` (or, without it, synthesises a
canonical event table), then times each stage and prints one JSON line per stage: seconds,
events/s, the process's peak RSS so far, and (``--memory``, a second traced run) the peak of
allocations traced by ``tracemalloc``. The embedding stage times its parts apart: reading the
edges from the matrix, sampling one full epoch's pairs, and ``--steps`` optimisation steps
(0 = the full epoch) after one warm-up step; the full epoch's estimate is sampling + steps x the
measured time per step (the model's set-up and the export of vectors are not part of an epoch).
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
from seqrec.features.embeddings import ItemEncoder, edge_arrays, epoch_pairs, make_optimizers, train_step
from seqrec.features.graph import build_cooccurrence_graph, graph_stats
from seqrec.features.sessions import sessionize_partitions


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
    from seqrec.synthetic.generate import generate_tecd
    from seqrec.data.reader import load_day_tables, load_events

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


def embedding_epoch(graph, batch_size: int, steps: int) -> None:
    """Time one InfoNCE epoch's parts on CPU and print the embedding_epoch line (see the module doc)."""
    cfg = EmbeddingConfig(epochs=1, batch_size=batch_size)
    edges, edges_s = timed(lambda: edge_arrays(graph))
    (left, right), sample_s = timed(lambda: epoch_pairs(edges, cfg, np.random.default_rng(cfg.seed)))
    full_steps = len(left) // batch_size
    steps = max(1, min(steps or full_steps, full_steps - 1))  # one batch is the warm-up
    torch.manual_seed(cfg.seed)
    model = ItemEncoder(graph.vocab.size, cfg)
    opts, scaler = make_optimizers(model, cfg), torch.amp.GradScaler("cuda", enabled=False)
    left_t, right_t = torch.from_numpy(left), torch.from_numpy(right)
    batch = lambda i: (left_t[i * batch_size:(i + 1) * batch_size], right_t[i * batch_size:(i + 1) * batch_size])  # noqa: E731
    train_step(model, *batch(0), cfg, opts, scaler)  # warm-up: first-call allocations
    _, sec = timed(lambda: [train_step(model, *batch(i), cfg, opts, scaler) for i in range(1, steps + 1)])
    emit("embedding_epoch", sec, steps * batch_size, steps=steps, step_ms=round(1000 * sec / steps, 2),
         edges_s=round(edges_s, 3), pair_sampling_s=round(sample_s, 3), full_epoch_steps=full_steps,
         full_epoch_s_estimate=round(sample_s + sec / steps * full_steps, 1), threads=torch.get_num_threads())


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

    embedding_epoch(graph, args.batch_size, args.steps)

if __name__ == "__main__":
    main()
