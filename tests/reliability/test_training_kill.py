"""Training killed with SIGKILL mid-epoch, then rerun: it resumes from the last checkpoint and
ends where an uninterrupted run ends.

A child process trains GRU4Rec on a small synthetic SessionDataset with a checkpoint every 5
steps; the parent kills it (SIGKILL: no handler, no cleanup, no flush) once a mid-epoch
checkpoint is on disk, reruns the same command to completion and compares it with a run that
was never interrupted. Tolerance (RELIABILITY.md): per-epoch losses, validation metrics and
final test metrics within 1e-6 absolute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqrec.io import load_checkpoint

TOLERANCE = 1e-6
EPOCHS = 2
CHILD = r'''
import json, sys, time
import numpy as np
import torch
torch.set_num_threads(1)
from seqrec.config import EvaluationConfig, Gru4RecConfig, TrainingConfig
from seqrec.evaluation.metrics import evaluate_model, make_validator
from seqrec.models.gru4rec import GRU4Rec
from seqrec.sequences import ItemVocab, SessionDataset

ckpt, out, delay, epochs = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])

def cycles(n, seed, n_items=15):
    """Sessions walking 1 -> 2 -> ... -> n_items -> 1 from random starts (a learnable pattern)."""
    rng = np.random.default_rng(seed)
    sessions = [[(s + k) % n_items + 1 for k in range(int(rng.integers(3, 8)))] for s in rng.integers(0, n_items, n)]
    vocab = ItemVocab(np.array(["<pad>"] + [f"i{k}" for k in range(1, n_items + 1)], dtype=object))
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sessions])]).astype(np.int64)
    items = np.concatenate(sessions).astype(np.int64)
    return SessionDataset(vocab, offsets, items, np.arange(len(items), dtype=np.int64), np.arange(n))

class Counted(GRU4Rec):
    """Counts the training steps this process runs; ``delay`` slows them so the kill lands mid-epoch."""
    steps_run = 0
    def train_step(self, batch):
        self.steps_run += 1
        time.sleep(delay)
        return super().train_step(batch)

cfg = Gru4RecConfig(hidden=16, batch_size=8, n_sample=8, sample_store=1000, epochs=epochs, lr=0.1, dropout_hidden=0.3)
training = TrainingConfig(device="cpu", progress=False, seed=1, patience=0, threads=1, checkpoint_every_steps=5,
                          valid_metric="recall@5")
ev = EvaluationConfig(cutoffs=(1, 5, 10), batch_size=64)
model = Counted(cfg, training, checkpoint_path=ckpt)
model.fit(cycles(100, 0), make_validator(model, cycles(30, 1), ev, "recall@5"))
test = evaluate_model(model, cycles(40, 2), ev)
with open(out, "w") as fh:
    json.dump({"steps_run": model.steps_run, "steps_per_epoch": model.batch_stats["steps"],
               "history": model.history.to_dict(), "test": test.metrics}, fh)
'''


def train(ckpt: Path, out: Path, delay: float = 0.0) -> subprocess.Popen:
    """Start the child training process; return it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(ckpt), str(out), str(delay), str(EPOCHS)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_mid_epoch_checkpoint(proc: subprocess.Popen, ckpt: Path, timeout: float = 90.0) -> None:
    """Return once ``ckpt`` holds a checkpoint taken inside an epoch (step > 0); fail if the child ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training ended before it could be killed:\n{proc.stdout.read()}"
        if ckpt.exists() and load_checkpoint(ckpt)["loop"]["step"] > 0:  # atomic: never a partial file
            return
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no checkpoint at {ckpt} after {timeout} s")


def finish(proc: subprocess.Popen, out: Path) -> dict:
    """Wait for a child to finish successfully; return its result JSON."""
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    return json.loads(out.read_text())


def test_sigkill_mid_epoch_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path):
    reference = train(tmp_path / "ref.pt", tmp_path / "ref.json")
    ckpt = tmp_path / "run.pt"
    victim = train(ckpt, tmp_path / "never.json", delay=0.05)
    wait_for_mid_epoch_checkpoint(victim, ckpt)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL and not (tmp_path / "never.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run.pt")) == []  # no temp left
    at_kill = load_checkpoint(ckpt)["loop"]
    resumed = finish(train(ckpt, tmp_path / "resumed.json"), tmp_path / "resumed.json")
    ref = finish(reference, tmp_path / "ref.json")

    total = EPOCHS * ref["steps_per_epoch"]
    done = at_kill["epoch"] * ref["steps_per_epoch"] + at_kill["step"]
    assert 0 < done < total and at_kill["step"] > 0  # the kill landed inside an epoch
    assert ref["steps_run"] == total
    assert resumed["steps_run"] == total - done  # it resumed: only the steps after the checkpoint ran
    for key in ("loss", "valid_metric"):
        assert resumed["history"][key] == pytest.approx(ref["history"][key], abs=TOLERANCE)
    assert resumed["history"]["best_epoch"] == ref["history"]["best_epoch"]
    assert resumed["test"] == pytest.approx(ref["test"], abs=TOLERANCE)
    assert ref["test"]["recall@5"] > 0.5  # the model learned something, so equality is not trivial
