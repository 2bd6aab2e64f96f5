"""Approximate retrieval against exact ranking: sessions/s, recall@k, index build time and memory; one JSON line per size.

    .venv/bin/python benchmarks/bench_ann.py --items 50000,1000000,3600000 --threads 2

For each catalogue size: a model trained briefly over that many items (the index is the point, not
the model, but trained vectors are spread the way real ones are and random ones are not):
``--model gru4rec`` (default sizes) one epoch on ``--train-events`` of ``bench_recommend``'s Zipf-like
stream (most items of a large catalogue then keep their random initial vectors: the hard case), or
``--model bprmf`` one epoch on ``--events-per-item`` events per item of a stream with structure:
5-item sessions inside groups of 50 items, Zipf popularity inside a group, every item trained.
Sessions to rank: for GRU4Rec 1..30 random known items (``bench_recommend``'s), for BPR-MF 1..5 items
of one group, drawn as in its training stream. The
exact path (``recommend`` with no index, the in-process baseline) runs on ``--exact-sessions``
of them; the model's forward pass alone (query vectors, no ranking) on all of them is the ceiling
of either path; the index (``serving.index=ann``) is built with its recall measured on
``--calibration`` other sessions drawn the same way (as the pipeline measures it on validation
prefixes; ``--random-sample``: random 1-5 item sessions, as the CLI without ``--sessions``) and its
search widened until that recall reaches ``--min-recall``; then ``recommend`` through it runs on all
``--sessions``. ``list_recall@k`` compares the two paths' lists on the exact path's sessions (seen
items excluded), tie-aware. Each rate is the median of ``--passes`` timed passes after a warm-up
(each pass's rate is listed too): the steady state of a serving process.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time

import numpy as np
import torch

from bench_recommend import build_models, make_sessions
from seqrec.config import BprMfConfig, ServingConfig
from seqrec.models.bprmf import BPRMF
from seqrec.sequences import ItemVocab, SessionDataset
from seqrec.serving.ann import tie_aware_recall
from seqrec.serving.indexes import index_for
from seqrec.serving.recommend import encode_sessions, recommend, recommend_topk


def parse_args() -> argparse.Namespace:
    """Return the command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", default="50000,1000000", help="comma-separated catalogue sizes")
    p.add_argument("--sessions", type=int, default=10_240)
    p.add_argument("--exact-sessions", type=int, default=2048, help="sessions ranked exactly (the baseline)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--single", type=int, default=300, help="single-session calls timed for p50/p99")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", choices=["gru4rec", "bprmf"], default="gru4rec")
    p.add_argument("--train-events", type=int, default=50_000, help="gru4rec: events of its one training epoch")
    p.add_argument("--events-per-item", type=float, default=3.0, help="bprmf: training events per catalogue item")
    p.add_argument("--epochs", type=int, default=1, help="bprmf: training epochs")
    p.add_argument("--kind", choices=["hnsw", "ivf"], default=ServingConfig().ann_kind)
    p.add_argument("--expansion-search", type=int, default=ServingConfig().ann_expansion_search, help="hnsw")
    p.add_argument("--probe", type=int, default=ServingConfig().ann_probe, help="ivf")
    p.add_argument("--lists", type=int, default=ServingConfig().ann_lists, help="ivf (0: 4 sqrt(items))")
    p.add_argument("--extra", type=int, default=ServingConfig().ann_extra)
    p.add_argument("--min-recall", default=str(ServingConfig().ann_min_recall),
                   help="serving.ann_min_recall: the search is widened until the calibration recall reaches it (0: never); "
                        "one value, or one per --items size")
    p.add_argument("--calibration", type=int, default=ServingConfig().recall_sessions,
                   help="held-out sessions the index's recall is measured (and its search widened) on")
    p.add_argument("--random-sample", action="store_true", help="measure it on random 1-5 item sessions instead")
    p.add_argument("--head", type=int, default=ServingConfig().ann_head)
    p.add_argument("--passes", type=int, default=3, help="timed passes of each path (the median is reported)")
    return p.parse_args()


def rate(fn, n: int, passes: int) -> tuple[float, list[int]]:
    """Return (the median rate, each pass's rate) of ``passes`` timed calls of ``fn`` doing ``n`` items of work.

    The median of a few passes is a serving process's steady state; one pass also counts first-touch costs
    (pages of the index and of the item matrix) and is what a noisy shared machine moves most.
    """
    rates = []
    for _ in range(passes):
        start = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - start))
    return float(np.median(rates)), [round(r) for r in rates]


def list_recall(model, vocab: ItemVocab, sessions: list[list[str]], ann, k: int) -> float:
    """Return tie-aware recall@k of the index's lists against exact ones, seen items excluded."""
    enc = encode_sessions(sessions, vocab)
    live = enc.lengths > 0
    items, lengths = enc.items[live], enc.lengths[live]
    parts_exact, parts_ann = [], []
    for s in range(0, len(lengths), 512):
        rows = slice(s, s + 512)
        width = int(lengths[rows].max())
        parts_exact.append(torch.from_numpy(recommend_topk(model, items[rows, :width], lengths[rows], k)[1]))
        parts_ann.append(torch.from_numpy(recommend_topk(model, items[rows, :width], lengths[rows], k, index=ann)[1]))
    return tie_aware_recall(torch.cat(parts_ann), torch.cat(parts_exact))


def latency(model, vocab, sessions, ann, k: int) -> tuple[float, float]:
    """Return p50 and p99 milliseconds of single-session calls through the index."""
    times = []
    for s in sessions:
        t0 = time.perf_counter()
        recommend(model, [s], k=k, vocab=vocab, index=ann)
        times.append((time.perf_counter() - t0) * 1000)
    return round(float(np.percentile(times, 50)), 3), round(float(np.percentile(times, 99)), 3)


def forward_rate(model, vocab: ItemVocab, sessions: list[list[str]], batch: int, passes: int) -> float:
    """Return sessions/s of the model's forward pass alone (query vectors, batches sorted by length): the ceiling."""
    enc = encode_sessions(sessions, vocab)
    live = np.flatnonzero(enc.lengths > 0)
    live = live[np.argsort(enc.lengths[live], kind="stable")]

    @torch.no_grad()
    def forward() -> None:
        for s in range(0, len(live), batch):
            rows = live[s : s + batch]
            model.query_vectors(enc.items[rows, : int(enc.lengths[rows].max())], enc.lengths[rows])

    return rate(forward, len(live), passes)[0]


def group_stream(vocab: ItemVocab, n_events: int, rng: np.random.Generator, group: int = 50, length: int = 5) -> SessionDataset:
    """Return sessions of ``length`` items from one group of ``group`` items each (uniform groups, Zipf items in a group)."""
    n_items, n_sessions = vocab.size, max(1, n_events // length)
    ids = np.random.default_rng(n_items).permutation(n_items) + 1  # group g holds ids[g * group : (g + 1) * group]
    groups = rng.integers(0, max(1, n_items // group), n_sessions)
    offsets = (rng.zipf(1.5, (n_sessions, length)) - 1) % group
    items = ids[np.minimum(groups[:, None] * group + offsets, n_items - 1)].reshape(-1).astype(np.int64)
    n = len(items)
    return SessionDataset(vocab, np.arange(0, n + 1, length), items, np.arange(n), np.arange(n_sessions))


def group_sessions(vocab: ItemVocab, n: int, rng: np.random.Generator) -> list[list[str]]:
    """Return ``n`` sessions of 1..5 items of one group each, as the structured stream draws them (original ids)."""
    data = group_stream(vocab, 5 * n, rng)
    lengths = rng.integers(1, 6, n)
    return [list(vocab.ids[data.items[5 * i : 5 * i + m]]) for i, m in enumerate(lengths)]


def train_model(vocab: ItemVocab, rng: np.random.Generator, args: argparse.Namespace):
    """Return the model whose vectors are indexed (see the module's docstring)."""
    if args.model == "gru4rec":
        return build_models(vocab, rng, ["gru4rec"], args.train_events)["gru4rec"]
    return BPRMF(BprMfConfig(epochs=args.epochs)).fit(group_stream(vocab, int(args.events_per_item * vocab.size), rng))


def calibration_sample(vocab: ItemVocab, args: argparse.Namespace, rng: np.random.Generator) -> dict:
    """Return ``index_for``'s sample arguments: held-out sessions drawn as the ranked ones are (none: random ones)."""
    if args.random_sample:
        return {}
    drawn = (make_sessions(vocab, args.calibration, 30, rng) if args.model == "gru4rec"
             else group_sessions(vocab, args.calibration, rng))
    enc = encode_sessions(drawn, vocab)
    return {"sample": (enc.items, enc.lengths), "sample_name": f"{len(drawn)} held-out sessions drawn as the ranked ones"}


def one_size(n_items: int, min_recall: float, args: argparse.Namespace) -> dict:
    """Return the figures for one catalogue size."""
    rng = np.random.default_rng(0)
    vocab = ItemVocab(np.array(["<pad>"] + [f"item-{i}" for i in range(n_items)], dtype=object))
    start = time.perf_counter()
    model = train_model(vocab, rng, args)
    train_seconds = time.perf_counter() - start
    sessions = make_sessions(vocab, args.sessions, 30, rng) if args.model == "gru4rec" else group_sessions(vocab, args.sessions, rng)
    exact_sessions = sessions[: args.exact_sessions]
    recommend(model, exact_sessions[:64], k=args.k, vocab=vocab)  # warm-up
    exact_rate, exact_passes = rate(lambda: recommend(model, exact_sessions, k=args.k, vocab=vocab, batch_size=args.batch_size),
                                    len(exact_sessions), args.passes)
    serving = ServingConfig(index="ann", ann_kind=args.kind, ann_expansion_search=args.expansion_search,
                            ann_probe=args.probe, ann_lists=args.lists, ann_extra=args.extra, ann_head=args.head,
                            recall_k=args.k, ann_min_recall=min_recall, recall_sessions=args.calibration)
    ann = index_for(model, None, serving, **calibration_sample(vocab, args, rng))
    recommend(model, sessions[:64], k=args.k, vocab=vocab, index=ann)  # warm-up
    ann_rate, ann_passes = rate(lambda: recommend(model, sessions, k=args.k, vocab=vocab, batch_size=args.batch_size, index=ann),
                                len(sessions), args.passes)
    p50, p99 = latency(model, vocab, sessions[: args.single], ann, args.k)
    meta = ann.describe()
    return {"model": args.model, "items": n_items, "train_seconds": round(train_seconds, 1), "k": args.k, "threads": torch.get_num_threads(), "sessions": len(sessions),
            "exact_sessions_per_s": round(exact_rate), "ann_sessions_per_s": round(ann_rate),
            "ann_vs_exact": round(ann_rate / exact_rate, 2), "exact_passes": exact_passes, "ann_passes": ann_passes,
            "forward_only_sessions_per_s": round(forward_rate(model, vocab, sessions, args.batch_size, args.passes)),
            f"list_recall@{args.k}": round(list_recall(model, vocab, exact_sessions, ann, args.k), 4),
            "single_p50_ms": p50, "single_p99_ms": p99,
            **{key: value for key, value in meta.items() if key not in ("index", "recall_k", "seed", "built_at")},
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}


def main() -> None:
    """Print one JSON line per catalogue size."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("seqrec.serving.recommend").setLevel(logging.ERROR)
    sizes = [int(v) for v in args.items.split(",") if v.strip()]
    floors = [float(v) for v in args.min_recall.split(",") if v.strip()]
    if len(floors) not in (1, len(sizes)):
        raise SystemExit(f"--min-recall {args.min_recall}: give one floor, or one per size of --items {args.items}")
    for n_items, floor in zip(sizes, floors * len(sizes) if len(floors) == 1 else floors):
        print(json.dumps(one_size(n_items, floor, args)), flush=True)


if __name__ == "__main__":
    main()
