"""Benchmark SASRec: training speed on synthetic sequences, and Amazon Video Games leave-one-out.

    .venv/bin/python benchmarks/bench_sasrec.py speed --threads 2
    .venv/bin/python benchmarks/bench_sasrec.py speed --items 50000 --epochs 1 --compare-whole --threads 2
    .venv/bin/python benchmarks/bench_sasrec.py video --epochs 3 --threads 2

``speed``: sequences/s and targets/s of ``fit`` on synthetic sequences (small config), with the
CPU time split into user and system (kernel) time, one JSON line; ``--compare-whole`` trains again
with the full cross-entropy's whole (N, V) logits matrix through autograd (the path before the
chunked loss) in the same process and reports the ratio and the largest per-epoch loss difference.
``video``: SASRec trained on the leave-one-out ``train`` part of
``shared/data/amazon_video_sasrec/Video.txt`` (early stopping on ``valid``), tested on the
last item of every user: full-ranking HR@10/NDCG@10 (every catalogue item a candidate) and,
separately and LABELLED as such, the paper's sampled protocol (target + 100 random unseen
items) next to the paper's figures (Kang & McAuley 2018: HR@10 0.7410, NDCG@10 0.5360).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from seqrec.config import EvaluationConfig, SasRecConfig, TrainingConfig
from seqrec.models import kernels
from seqrec.models.sasrec import SASRec
from seqrec.sequences import ItemVocab, SessionDataset

VIDEO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon_video_sasrec" / "Video.txt"
PAPER_SAMPLED = {"hr@10": 0.7410, "ndcg@10": 0.5360}


def parse_args() -> argparse.Namespace:
    """Return the command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["speed", "video"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--loss", choices=["cross-entropy", "sampled-softmax", "bce"], default="cross-entropy")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--sequences", type=int, default=4096, help="speed mode: synthetic sequences")
    p.add_argument("--items", type=int, default=5000, help="speed mode: catalogue size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compare-whole", action="store_true",
                   help="speed mode, full cross-entropy: also train with the whole (N, V) logits matrix through autograd "
                        "(the path before chunking) in the same process, and report the ratio and the loss difference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=VIDEO)
    return p.parse_args()


def model_config(args: argparse.Namespace) -> SasRecConfig:
    """Return the SASRec config the options describe."""
    return SasRecConfig(dim=args.dim, ffn=2 * args.dim, max_len=args.max_len, batch_size=args.batch_size, lr=args.lr,
                        dropout=args.dropout, epochs=args.epochs, loss=args.loss)


def synthetic_sequences(n: int, n_items: int, rng: np.random.Generator) -> SessionDataset:
    """Return ``n`` random-walk sequences of 5..60 items over a ring of ``n_items`` items."""
    lengths = rng.integers(5, 61, n)
    starts = np.repeat(rng.integers(0, n_items, n), lengths)
    steps = np.concatenate([np.cumsum(rng.integers(1, 4, m)) for m in lengths])
    items = (starts + steps) % n_items + 1
    vocab = ItemVocab(np.array(["<pad>"] + [str(i) for i in range(1, n_items + 1)], dtype=object))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return SessionDataset(vocab, offsets, items.astype(np.int64), np.zeros(len(items), np.int64), np.arange(n))


def run_speed(args: argparse.Namespace, training: TrainingConfig) -> dict:
    """Return training throughput figures on synthetic sequences (and the whole-matrix loss's beside them)."""
    data = synthetic_sequences(args.sequences, args.items, np.random.default_rng(args.seed))
    result = timed_fit(args, training, data)
    if args.compare_whole and args.loss == "cross-entropy":
        chunk, kernels.CHUNK_ELEMENTS = kernels.CHUNK_ELEMENTS, 0
        try:
            whole = timed_fit(args, training, data)
        finally:
            kernels.CHUNK_ELEMENTS = chunk
        result["whole_matrix"] = {k: whole[k] for k in ("sequences_per_s", "fit_seconds", "cpu_user_s", "cpu_system_s",
                                                          "system_share", "loss_per_epoch")}
        result["speedup_vs_whole"] = round(result["sequences_per_s"] / whole["sequences_per_s"], 2)
        result["max_loss_difference"] = float(np.max(np.abs(np.subtract(result["loss_per_epoch"], whole["loss_per_epoch"]))))
    return result


def timed_fit(args: argparse.Namespace, training: TrainingConfig, data: SessionDataset) -> dict:
    """Return the throughput, CPU time split (user / kernel) and losses of one ``fit`` on ``data``."""
    model = SASRec(model_config(args), training)
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    model.fit(data)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    h = model.history
    return {"mode": "speed", "loss": args.loss, "sequences": args.sequences, "items": args.items, "epochs": args.epochs,
            "sequences_per_s": round(args.sequences * args.epochs / sum(h.seconds)),
            "targets_per_s": round(float(np.mean(h.events_per_second))), "fit_seconds": round(seconds, 1),
            "cpu_user_s": round(user, 1), "cpu_system_s": round(system, 1),
            "system_share": round(system / max(user + system, 1e-9), 3),
            "loss_per_epoch": [round(x, 6) for x in h.loss]}


def run_video(args: argparse.Namespace, training: TrainingConfig) -> dict:
    """Return leave-one-out full-ranking and sampled figures on Amazon Video Games."""
    from seqrec.data.importers import import_user_item_lines
    from seqrec.evaluation.splits import split_leave_one_out
    from seqrec.evaluation.metrics import evaluate_model, make_validator

    split = split_leave_one_out(import_user_item_lines(args.data))
    valid_cfg = EvaluationConfig(protocol="loo", cutoffs=(10,))
    model = SASRec(model_config(args), training.model_copy(update={"valid_metric": "ndcg@10"}))
    start = time.perf_counter()
    model.fit(split.train, make_validator(model, split.valid, valid_cfg, "ndcg@10"))
    seconds = time.perf_counter() - start
    full = evaluate_model(model, split.test, EvaluationConfig(protocol="loo", cutoffs=(10,), candidates="full"))
    sampled = evaluate_model(model, split.test, EvaluationConfig(protocol="loo", cutoffs=(10,), candidates="sampled",
                                                                n_negatives=100))
    pick = lambda r: {m: round(r.metrics[m], 4) for m in ("hr@10", "ndcg@10")}
    h = model.history
    return {"mode": "video", "loss": args.loss, "epochs_run": len(h.loss), "best_epoch": h.best_epoch,
            "full_ranking": pick(full), "sampled_100_negatives_LABELLED": pick(sampled),
            "paper_sampled_100_negatives": PAPER_SAMPLED, "n_test_users": full.n_targets,
            "valid_ndcg@10_per_epoch": [round(x, 4) for x in h.valid_metric],
            "train_seconds": round(seconds, 1), "targets_per_s": round(float(np.mean(h.events_per_second))),
            "split": split.report}


def main() -> None:
    """Run the chosen benchmark and print one JSON line."""
    args = parse_args()
    training = TrainingConfig(device="auto", threads=args.threads, seed=args.seed, patience=args.patience, progress=False)
    result = run_speed(args, training) if args.mode == "speed" else run_video(args, training)
    print(json.dumps({**result, "threads": torch.get_num_threads(), "device": str(SASRec(model_config(args), training).device)}))


if __name__ == "__main__":
    main()
