"""Load test of ``seqrec serve`` on loopback: single-session latency (p50/p99), throughput, batched sessions/s.

    .venv/bin/python benchmarks/bench_serve.py --items 50000 --requests 2000 --index exact

Trains ``bench_recommend``'s GRU4Rec over ``--items`` items (one epoch on 50k events), saves it,
starts ``seqrec serve`` on a free 127.0.0.1 port as its own process and sends a bounded number of
requests with httpx (keep-alive): ``--requests`` one-session requests one after another (latency as
the client sees it, HTTP and JSON included), the same number from ``--concurrency`` threads at once
(throughput), and requests of ``--batch`` sessions (sessions/s). The in-process baseline is
``recommend`` itself on the same single sessions (``in_process_p50_ms``). One JSON line.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from bench_recommend import build_models, make_sessions
from seqrec.sequences import ItemVocab
from seqrec.serving.recommend import recommend, save_model


def parse_args() -> argparse.Namespace:
    """Return the command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--batch", type=int, default=256, help="sessions per request in the batched pass")
    p.add_argument("--index", choices=["exact", "ann", "auto"], default="exact")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the in-process baseline (the server uses torch's default)")
    return p.parse_args()


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_path: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    """Start ``seqrec serve`` and return once /health answers."""
    seqrec = str(Path(sys.executable).with_name("seqrec"))
    proc = subprocess.Popen([seqrec, "serve", str(model_path), "--port", str(port), "--index", args.index],
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300  # an ann index is built on the first start
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except httpx.TransportError:
            if proc.poll() is not None:
                raise RuntimeError("seqrec serve exited before answering")
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("seqrec serve did not answer within 300 s")


def timed_requests(url: str, bodies: list[dict]) -> list[float]:
    """Send the bodies one after another on one keep-alive connection; return each request's seconds."""
    times = []
    with httpx.Client(timeout=30) as client:
        for body in bodies:
            t0 = time.perf_counter()
            r = client.post(url, json=body)
            times.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text}")
    return times


def concurrent(url: str, bodies: list[dict], n_threads: int) -> tuple[float, list[float]]:
    """Return (wall seconds, per-request seconds) of the bodies sent from ``n_threads`` threads at once."""
    parts, out = [bodies[i::n_threads] for i in range(n_threads)], [[] for _ in range(n_threads)]
    threads = [threading.Thread(target=lambda i=i: out[i].extend(timed_requests(url, parts[i]))) for i in range(n_threads)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, [x for part in out for x in part]


def ms(times: list[float], q: float) -> float:
    """Return the q-th percentile of seconds in milliseconds."""
    return round(float(np.percentile(np.array(times) * 1000, q)), 3)


def main() -> None:
    """Train, serve, load-test, print one JSON line."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    vocab = ItemVocab(np.array(["<pad>"] + [f"item-{i}" for i in range(args.items)], dtype=object))
    model = build_models(vocab, rng, ["gru4rec"], 50_000)["gru4rec"]
    sessions = make_sessions(vocab, args.requests + args.batch * 20, 30, rng)
    sessions = [[i for i in s if not i.startswith("unknown")] for s in sessions]
    singles = [{"session": s, "k": args.k} for s in sessions[: args.requests]]
    batches = [{"sessions": sessions[i : i + args.batch], "k": args.k} for i in range(0, args.batch * 20, args.batch)]
    in_process = []
    for s in sessions[: min(args.requests, 500)]:
        t0 = time.perf_counter()
        recommend(model, [s], k=args.k)
        in_process.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(model, Path(tmp) / "gru4rec.pt")
        port = free_port()
        proc = start_server(path, port, args)
        url = f"http://127.0.0.1:{port}/recommend"
        try:
            timed_requests(url, singles[:50])  # warm-up
            start = time.perf_counter()
            single = timed_requests(url, singles)
            single_wall = time.perf_counter() - start
            wall, many = concurrent(url, singles, args.concurrency)
            start = time.perf_counter()
            timed_requests(url, batches)
            batched_wall = time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps({"items": args.items, "index": args.index, "k": args.k, "threads": args.threads,
                      "requests": args.requests, "single_p50_ms": ms(single, 50), "single_p99_ms": ms(single, 99),
                      "single_requests_per_s": round(len(single) / single_wall),
                      "in_process_p50_ms": ms(in_process, 50), "in_process_p99_ms": ms(in_process, 99),
                      "concurrency": args.concurrency, "concurrent_requests_per_s": round(len(many) / wall),
                      "concurrent_p99_ms": ms(many, 99), "batch": args.batch,
                      "batched_sessions_per_s": round(args.batch * len(batches) / batched_wall)}), flush=True)


if __name__ == "__main__":
    main()
