"""The GPU paths, run for real: GRU4Rec, SASRec, one InfoNCE epoch and recommend on CUDA with AMP, next to CPU.

    .venv/bin/python benchmarks/bench_gpu.py                 # make bench-gpu: about 5-8 minutes on one GPU
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --quick   # the same code paths on CPU (a smoke test)

One JSON line per part, then a summary line; exit 1 when a check fails, 0 with a ``skipped`` line when
there is no CUDA device (nothing is measured then). Parts:

* ``gru4rec``: GRU4REC.md's RSC15 settings on the YooChoose sample (``shared/data``), trained ``--epochs``
  on CPU and on the GPU at the preset's batch size 32 (Recall@20 / MRR@20 on the test file, events/s);
  check: the GPU model's Recall@20 within ``--tolerance`` of the CPU one's. Then the GPU alone at the
  batch sizes it favours (``--gpu-batches``), events/s and Recall@20 each.
* ``sasrec``: Amazon Video leave-one-out, ``--sasrec-epochs`` on both devices (no early stopping),
  full-ranking HR@10 / NDCG@10 and sequences/s; same check on HR@10.
* ``embeddings``: one InfoNCE epoch over the co-occurrence graph of ``--embedding-events`` synthetic events
  (10M by default) on the device, seconds and pairs/s, with CPU's time per step for the same batches.
* ``recommend``: GRU4Rec over 50k items, batched sessions/s on each device (exact ranking).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np
import torch

from bench_features import synthesise_events
from bench_gru4rec import DATA as YOOCHOOSE, PRESETS
from bench_recommend import build_models, make_sessions
from bench_sasrec import VIDEO
from seqrec import columns as C
from seqrec.config import EmbeddingConfig, EvaluationConfig, GraphConfig, Gru4RecConfig, SasRecConfig, SessionConfig, TrainingConfig
from seqrec.data.importers import import_gru4rec_tsv, import_user_item_lines
from seqrec.evaluation.metrics import evaluate_model
from seqrec.evaluation.splits import split_leave_one_out
from seqrec.features.embeddings import ItemEncoder, edge_arrays, epoch_pairs, make_optimizers, train_step
from seqrec.features.graph import build_cooccurrence_graph
from seqrec.features.sessions import sessionize_partitions
from seqrec.models.gru4rec import GRU4Rec
from seqrec.models.sasrec import SASRec
from seqrec.sequences import ItemVocab, build_sessions
from seqrec.serving.recommend import recommend

logging.getLogger("seqrec.serving.recommend").setLevel(logging.ERROR)  # unknown-id counts are not the point here


def parse_args() -> argparse.Namespace:
    """Return the command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (the same code paths, as a smoke test)")
    p.add_argument("--quick", action="store_true", help="small sizes: checks the script, measures nothing")
    p.add_argument("--epochs", type=int, default=3, help="GRU4Rec epochs on each device")
    p.add_argument("--gpu-batches", default="256,1024,2048", help="GRU4Rec batch sizes timed on the device alone")
    p.add_argument("--sasrec-epochs", type=int, default=2)
    p.add_argument("--embedding-events", type=int, default=10_000_000)
    p.add_argument("--tolerance", type=float, default=0.03, help="largest |metric(device) - metric(CPU)| allowed")
    return p.parse_args()


def emit(part: str, **figures) -> dict:
    """Print one JSON line and return it."""
    line = {"part": part, **figures}
    print(json.dumps(line), flush=True)
    return line


def training(device: str) -> TrainingConfig:
    """Return the training settings on ``device``: AMP on CUDA, no early stopping, no progress bars."""
    return TrainingConfig(device=device, amp=True, patience=0, progress=False, seed=0)


def gru4rec_run(train, test, device: str, epochs: int, batch: int) -> dict:
    """Return Recall@20, MRR@20 and events/s of GRU4Rec (RSC15 settings at ``batch``) trained on ``device``."""
    cfg = Gru4RecConfig(**{**PRESETS["rsc15"], "batch_size": batch}, n_sample=2048, epochs=epochs, embedding="constrained")
    model = GRU4Rec(cfg, training(device))
    model.fit(train)
    m = evaluate_model(model, test, EvaluationConfig(cutoffs=(20,)), targets="all", lists=False).metrics
    h = model.history
    return {"device": device, "batch_size": batch, "epochs": epochs, "recall@20": round(m["recall@20"], 4),
            "mrr@20": round(m["mrr@20"], 4), "events_per_s": round(float(np.mean(h.events_per_second[1:] or h.events_per_second)))}


def part_gru4rec(args: argparse.Namespace) -> bool:
    """Train on CPU and on the device at the preset's batch, then on the device at larger batches; return the check."""
    train, _ = build_sessions(import_gru4rec_tsv(YOOCHOOSE / "yoochoose-clicks-100k_train_full.txt"))
    test, _ = build_sessions(import_gru4rec_tsv(YOOCHOOSE / "yoochoose-clicks-100k_test.txt"), train.vocab)
    epochs = 1 if args.quick else args.epochs
    cpu, dev = gru4rec_run(train, test, "cpu", epochs, 32), gru4rec_run(train, test, args.device, epochs, 32)
    ok = abs(dev["recall@20"] - cpu["recall@20"]) <= args.tolerance
    emit("gru4rec", cpu=cpu, device=dev, check_recall_within_tolerance=ok, tolerance=args.tolerance)
    for batch in [int(b) for b in args.gpu_batches.split(",") if b] if not args.quick else []:
        emit("gru4rec-batch", **gru4rec_run(train, test, args.device, epochs, batch))
    return ok


def sasrec_run(split, device: str, epochs: int) -> dict:
    """Return HR@10, NDCG@10 (full ranking) and sequences/s of SASRec trained ``epochs`` on ``device``."""
    model = SASRec(SasRecConfig(epochs=epochs), training(device))
    model.fit(split.train)
    m = evaluate_model(model, split.test, EvaluationConfig(protocol="loo", cutoffs=(10,)), lists=False).metrics
    h = model.history
    return {"device": device, "epochs": epochs, "hr@10": round(m["hr@10"], 4), "ndcg@10": round(m["ndcg@10"], 4),
            "sequences_per_s": round(split.train.n_sessions * len(h.seconds) / sum(h.seconds))}


def part_sasrec(args: argparse.Namespace) -> bool:
    """Train SASRec on Amazon Video on CPU and on the device; return the check."""
    split = split_leave_one_out(import_user_item_lines(VIDEO))
    epochs = 1 if args.quick else args.sasrec_epochs
    cpu, dev = sasrec_run(split, "cpu", epochs), sasrec_run(split, args.device, epochs)
    ok = abs(dev["hr@10"] - cpu["hr@10"]) <= args.tolerance
    emit("sasrec", cpu=cpu, device=dev, check_hr_within_tolerance=ok, tolerance=args.tolerance)
    return ok


def step_seconds(graph, cfg: EmbeddingConfig, device: str, steps: int) -> tuple[float, int, int]:
    """Return (seconds per InfoNCE step on ``device``, full-epoch steps, pairs per epoch) after one warm-up step."""
    left, right = epoch_pairs(edge_arrays(graph), cfg, np.random.default_rng(cfg.seed))
    n = cfg.batch_size
    full = len(left) // n
    steps = max(1, min(steps or full, full - 1))
    torch.manual_seed(cfg.seed)
    model = ItemEncoder(graph.vocab.size, cfg).to(device)
    opts, scaler = make_optimizers(model, cfg), torch.amp.GradScaler("cuda", enabled=device == "cuda")
    batch = lambda i: (torch.from_numpy(left[i * n:(i + 1) * n]).to(device), torch.from_numpy(right[i * n:(i + 1) * n]).to(device))  # noqa: E731
    train_step(model, *batch(0), cfg, opts, scaler)
    sync(device)
    start = time.perf_counter()
    for i in range(1, steps + 1):
        train_step(model, *batch(i), cfg, opts, scaler)
    sync(device)
    return (time.perf_counter() - start) / steps, full, len(left)


def part_embeddings(args: argparse.Namespace) -> None:
    """Build the graph of synthetic events on CPU, then time InfoNCE steps on the device (whole epoch) and on CPU."""
    events, receipts, catalogue = synthesise_events(50_000 if args.quick else args.embedding_events, 7)
    parts = [day for _, day in events.groupby(events[C.TIMESTAMP] // C.MICROS_PER_DAY, sort=True)]
    sessions = sessionize_partitions(parts, SessionConfig())
    import tempfile
    from pathlib import Path

    graph = build_cooccurrence_graph(sessions.events, receipts, catalogue, GraphConfig(), Path(tempfile.mkdtemp()) / "graph")
    cfg = EmbeddingConfig(epochs=1, batch_size=8192)
    dev_step, full, pairs = step_seconds(graph, cfg, args.device, 0)
    cpu_step, _, _ = step_seconds(graph, cfg, "cpu", 3)
    emit("embeddings", events=len(events), items=graph.vocab.size, pairs=pairs, steps=full, batch_size=cfg.batch_size,
         device=args.device, device_epoch_s=round(dev_step * full, 2), device_step_ms=round(1000 * dev_step, 2),
         cpu_step_ms=round(1000 * cpu_step, 2), cpu_epoch_s_estimate=round(cpu_step * full, 1),
         device_vs_cpu=round(cpu_step / dev_step, 1))


def part_recommend(args: argparse.Namespace) -> None:
    """Time batched exact recommend of a GRU4Rec over 50k items on CPU and on the device."""
    figures = {}
    for device in ("cpu", args.device):
        rng = np.random.default_rng(0)
        vocab = ItemVocab(np.array(["<pad>"] + [f"item-{i}" for i in range(50_000)], dtype=object))
        model = build_models(vocab, rng, ["gru4rec"], 20_000)["gru4rec"]
        model.net.to(device)
        model.device = torch.device(device)
        sessions = make_sessions(vocab, 2_048 if args.quick else 20_480, 30, rng)
        recommend(model, sessions[:256], k=10)
        sync(device)
        start = time.perf_counter()
        recommend(model, sessions, k=10, batch_size=2048)
        sync(device)
        figures[device] = round(len(sessions) / (time.perf_counter() - start))
    emit("recommend", items=50_000, sessions_per_s=figures)


def sync(device: str) -> None:
    """Wait for the device's queued work (timings end when the GPU is done)."""
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    """Run every part; return 1 when a check failed."""
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        emit("summary", skipped=f"no CUDA device (torch {torch.__version__}, cuda {torch.version.cuda}): nothing measured")
        return 0
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none"
    start = time.perf_counter()
    checks = {"gru4rec": part_gru4rec(args), "sasrec": part_sasrec(args)}
    part_embeddings(args)
    part_recommend(args)
    emit("summary", device=args.device, gpu=gpu, torch=torch.__version__, checks=checks,
         seconds=round(time.perf_counter() - start, 1))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
