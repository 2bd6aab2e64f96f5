"""Time full-ranking evaluation, or measure the baselines on the yoochoose sample; one JSON line.

    python benchmarks/bench_evaluation.py --items 100000 --sessions 2000
    python benchmarks/bench_evaluation.py --yoochoose [--bprmf]

The timing mode evaluates ``Popularity`` (scoring is a copy of one row, so the time is the
evaluation's own: ranking every target against all N items) on synthetic sessions with
Zipf-distributed items; ``rank_only`` times ``ranks_from_scores`` on a ready (B, N) matrix.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from seqrec.config import BprMfConfig, EvaluationConfig, ItemKnnConfig, SessionKnnConfig
from seqrec.evaluation.metrics import evaluate_model, ranks_from_scores
from seqrec.models.baselines import ItemKNN, Markov, Popularity, SessionKNN, SessionPopularity
from seqrec.models.bprmf import BPRMF
from seqrec.sequences import ItemVocab, SessionDataset

YOOCHOOSE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "yoochoose_rsc15_100k"


def synthetic_sessions(n_items: int, n_sessions: int, mean_length: float, seed: int) -> SessionDataset:
    """Return sessions of geometric length (>= 2) over Zipf-popular items 1..n_items."""
    rng = np.random.default_rng(seed)
    lengths = 1 + rng.geometric(1.0 / (mean_length - 1.0), size=n_sessions)
    weights = 1.0 / np.arange(1, n_items + 1)
    items = rng.choice(np.arange(1, n_items + 1), size=int(lengths.sum()), p=weights / weights.sum())
    vocab = ItemVocab(np.array(["<pad>"] + [str(k) for k in range(1, n_items + 1)], dtype=object))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return SessionDataset(vocab, offsets, items.astype(np.int64), np.arange(len(items)), np.arange(n_sessions))


def time_evaluation(args: argparse.Namespace) -> dict:
    """Return targets/s of a full-ranking evaluation and of ranking alone on N items."""
    data = synthetic_sessions(args.items, args.sessions, args.mean_length, seed=0)
    model = Popularity().fit(data)
    cfg = EvaluationConfig(batch_size=args.batch_size, ties=args.ties)
    start = time.perf_counter()
    result = evaluate_model(model, data, cfg)
    seconds = time.perf_counter() - start
    scores = np.random.default_rng(1).random((args.batch_size, args.items + 1), dtype=np.float32)  # (B, N + 1)
    targets = np.random.default_rng(2).integers(1, args.items + 1, size=args.batch_size)
    start = time.perf_counter()
    ranks_from_scores(scores, targets, args.ties)
    rank_seconds = time.perf_counter() - start
    return {
        "bench": "evaluation", "items": args.items, "sessions": args.sessions, "targets": result.n_targets,
        "ties": args.ties, "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
        "seconds": round(seconds, 3), "targets_per_s": round(result.n_targets / seconds, 1),
        "rank_only_targets_per_s": round(args.batch_size / rank_seconds, 1),
    }


def measure_yoochoose(args: argparse.Namespace) -> dict:
    """Return Recall@20 / MRR@20 of every baseline on yoochoose train_full -> test."""
    from seqrec.data.importers import import_gru4rec_tsv
    from seqrec.evaluation.splits import split_presplit

    split = split_presplit(
        import_gru4rec_tsv(YOOCHOOSE / "yoochoose-clicks-100k_train_full.txt"),
        import_gru4rec_tsv(YOOCHOOSE / "yoochoose-clicks-100k_test.txt"),
        valid_share_days=None,
    )
    models = [Popularity(), SessionPopularity(), Markov(), ItemKNN(ItemKnnConfig()), SessionKNN(SessionKnnConfig())]
    if args.bprmf:
        models.append(BPRMF(BprMfConfig()))
    out: dict = {"bench": "yoochoose_baselines", "split": split.report["test"], "models": {}}
    for model in models:
        start = time.perf_counter()
        model.fit(split.train_full)
        fit_s = time.perf_counter() - start
        result = evaluate_model(model, split.test, EvaluationConfig(cutoffs=(20,)))
        out["protocol"] = result.protocol["protocol"] + f"; ties {result.protocol['ties']}"
        out["models"][model.name] = {
            "recall@20": round(result.metrics["recall@20"], 4), "mrr@20": round(result.metrics["mrr@20"], 4),
            "n_targets": result.n_targets, "fit_s": round(fit_s, 2),
            "eval_s": round(time.perf_counter() - start - fit_s, 2),
        }
    return out


def main() -> None:
    """Parse arguments, run one benchmark, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--mean-length", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--ties", default="conservative", choices=["conservative", "optimistic", "average"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--yoochoose", action="store_true", help="baselines on yoochoose_rsc15_100k instead")
    parser.add_argument("--bprmf", action="store_true", help="with --yoochoose: also train BPR-MF (~5 s)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure_yoochoose(args) if args.yoochoose else time_evaluation(args)))


if __name__ == "__main__":
    main()
