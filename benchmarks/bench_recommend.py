"""Measure ``recommend`` throughput (sessions/s, batched) and single-session latency; one JSON line per model.

    .venv/bin/python benchmarks/bench_recommend.py --items 50000 --sessions 10240 --threads 2

Models: SASRec and GRU4Rec (default config sizes, trained one epoch on ``--train-events`` of the
stream cut into 5-item sessions: the certified bfloat16 top-k's work depends on how spread the
scores are, so untrained weights would not be representative), Markov and Popularity (fit on a
Zipf-like stream), over a synthetic
catalogue of ``--items`` original ids (``--models`` picks some). Sessions
hold 1..``--max-session`` random known ids plus one unknown id in 5% of them (counted).
Timings include encoding, scoring, top-k with seen items excluded and decoding to ids. For GRU4Rec
and SASRec the bare float32 catalogue product over as many sessions is timed too (the in-process
baseline: ``product_only_sessions_per_s``, its GFLOP/s, and ``recommend_vs_product``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch

from seqrec.config import Gru4RecConfig, SasRecConfig, TrainingConfig
from seqrec.models.baselines import Markov, Popularity
from seqrec.models.gru4rec import GRU4Rec
from seqrec.models.sasrec import SASRec
import seqrec.serving.recommend
import seqrec.serving.topk
from seqrec.serving.recommend import recommend
from seqrec.sequences import ItemVocab, SessionDataset


def parse_args() -> argparse.Namespace:
    """Return the command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--sessions", type=int, default=10_240)
    p.add_argument("--max-session", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--single", type=int, default=300, help="single-session calls timed for p50/p99")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default="sasrec,gru4rec,markov,popularity", help="comma-separated subset")
    p.add_argument("--train-events", type=int, default=50_000, help="GRU4Rec / SASRec: one epoch on this many events (0: untrained)")
    p.add_argument("--compare-fp32", action="store_true",
                   help="dot-product models: also time the opt-in certified bfloat16 top-k in this process")
    return p.parse_args()


def make_sessions(vocab: ItemVocab, n: int, max_len: int, rng: np.random.Generator) -> list[list[str]]:
    """Return ``n`` sessions of random original ids, 5% with one unknown id appended."""
    ids = vocab.ids[1:]
    lengths = rng.integers(1, max_len + 1, n)
    sessions = [list(ids[rng.integers(0, len(ids), m)]) for m in lengths]
    for i in np.flatnonzero(rng.random(n) < 0.05):
        sessions[i].append(f"unknown-{i}")
    return sessions


def build_models(vocab: ItemVocab, rng: np.random.Generator, names: list[str], train_events: int) -> dict:
    """Return the named models over ``vocab``: neural ones with initialised weights, counts fit on a Zipf-like stream."""
    training = TrainingConfig(device="cpu", progress=False)
    items = (rng.zipf(1.3, 500_000) % vocab.size + 1).astype(np.int64)
    data = SessionDataset(vocab, np.array([0, len(items)]), items, np.zeros(len(items), np.int64), np.array([0]))
    builders = {"sasrec": lambda: SASRec(SasRecConfig(), training), "gru4rec": lambda: GRU4Rec(Gru4RecConfig(), training),
                "markov": lambda: Markov().fit(data), "popularity": lambda: Popularity().fit(data)}
    models = {name: builders[name]() for name in names}
    n = train_events // 5 * 5
    sessions = SessionDataset(vocab, np.arange(0, n + 1, 5), items[:n], np.arange(n), np.arange(n // 5))
    for model in models.values():
        if hasattr(model, "build_net"):
            model.build_net(vocab)
            if n:
                model.cfg = model.cfg.model_copy(update={"epochs": 1})
                model.fit(sessions)
    return models


def time_model(model, vocab: ItemVocab, sessions: list[list[str]], args: argparse.Namespace) -> dict:
    """Return batched throughput and single-session latency figures for one model."""
    recommend(model, sessions[:64], k=args.k, vocab=vocab)  # warm-up
    start = time.perf_counter()
    out = recommend(model, sessions, k=args.k, batch_size=args.batch_size, vocab=vocab)
    batched = time.perf_counter() - start
    latencies = []
    for s in sessions[: args.single]:
        t0 = time.perf_counter()
        recommend(model, [s], k=args.k, vocab=vocab)
        latencies.append((time.perf_counter() - t0) * 1000)
    return {
        "sessions_per_s": round(len(sessions) / batched),
        "batched_seconds": round(batched, 3),
        "single_p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "single_p99_ms": round(float(np.percentile(latencies, 99)), 3),
        "unknown_items": out.unknown_items,
    }


def main() -> None:
    """Build the models and sessions, time them, print one JSON line per model."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("seqrec.serving.recommend").setLevel(logging.ERROR)  # unknown-id counts are in the JSON
    rng = np.random.default_rng(args.seed)
    vocab = ItemVocab(np.array(["<pad>"] + [f"item-{i}" for i in range(args.items)], dtype=object))
    sessions = make_sessions(vocab, args.sessions, args.max_session, rng)
    for name, model in build_models(vocab, rng, [m.strip() for m in args.models.split(",") if m.strip()], args.train_events).items():
        figures = time_model(model, vocab, sessions, args)
        if model.output_layer() is not None:
            figures.update(product_figures(model, len(sessions), figures["sessions_per_s"]))
        if args.compare_fp32 and model.output_layer() is not None:
            figures.update(fp32_figures(model, vocab, sessions, args, figures["sessions_per_s"]))
        print(json.dumps({"model": name, "items": args.items, "sessions": args.sessions, "k": args.k,
                          "batch_size": args.batch_size, "threads": torch.get_num_threads(), **figures}), flush=True)


def product_figures(model, n_rows: int, rate: int) -> dict:
    """Return the in-process baseline of a dot-product model: the bare float32 catalogue product for as many rows.

    The same blocks (``DotProductIndex.chunk`` rows) through the same product as ``recommend``, with no
    forward pass, no top-k and no id mapping: the ceiling of exact scoring on this machine.
    """
    index = seqrec.serving.recommend.dot_product_index(model)
    q = torch.randn(n_rows, index.wt.shape[0])  # (n, D + 1)
    block = torch.empty(index.chunk, index.wt.shape[1])
    index.score_block(q[: index.chunk], block)  # warm-up
    start = time.perf_counter()
    for s in range(0, n_rows, index.chunk):
        index.score_block(q[s : s + index.chunk], block)
    seconds = time.perf_counter() - start
    flop = 2.0 * n_rows * index.wt.shape[1] * index.wt.shape[0]
    return {"product_only_sessions_per_s": round(n_rows / seconds), "product_gflop_per_s": round(flop / seconds / 1e9, 1),
            "recommend_vs_product": round(rate * seconds / n_rows, 3), "dim": index.wt.shape[0] - 1}


def fp32_figures(model, vocab: ItemVocab, sessions: list[list[str]], args: argparse.Namespace, fp32_rate: int) -> dict:
    """Return the certified bf16 top-k's throughput (opt-in), its ratio to the default float32 path, and whether both agree."""
    plain = list(recommend(model, sessions[:512], k=args.k, vocab=vocab))
    seqrec.serving.topk.USE_BF16 = True
    seqrec.serving.recommend._DOT_INDEX.pop(model, None)  # rebuild the index with the bf16 copy
    try:
        fast = time_model(model, vocab, sessions, args)
        same = list(recommend(model, sessions[:512], k=args.k, vocab=vocab)) == plain
        index = seqrec.serving.recommend.dot_product_index(model)
        certified = round(index.rows_certified / max(index.rows_certified + index.rows_redone, 1), 4)
    finally:
        seqrec.serving.topk.USE_BF16 = False
        seqrec.serving.recommend._DOT_INDEX.pop(model, None)
    return {"bf16_sessions_per_s": fast["sessions_per_s"], "bf16_vs_fp32": round(fast["sessions_per_s"] / fp32_rate, 2),
            "same_items_first_512": same, "bf16_rows_certified": certified}


if __name__ == "__main__":
    main()
