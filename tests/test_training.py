"""Shared training machinery: device, optimiser arithmetic, warm starts, the resumable fit loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from seqrec.config import TrainingConfig
from seqrec.io import load_checkpoint
from seqrec.models.kernels import AdagradMomentum
from seqrec.models.neural import warm_start_embedding
from seqrec.models.training import CheckpointMismatch, TrainingHistory, fit_epochs, resolve_device, set_seed

torch.set_num_threads(1)
CPU = TrainingConfig(device="cpu", progress=False, seed=3, patience=0, checkpoint_every_steps=1000)


def test_resolve_device_auto_and_missing_cuda():
    assert resolve_device(TrainingConfig(device="cpu")).type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(TrainingConfig(device="auto")).type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            resolve_device(TrainingConfig(device="cuda"))


def test_set_seed_repeats_draws():
    set_seed(7)
    a = torch.rand(3), np.random.rand()
    set_seed(7)
    assert torch.equal(a[0], torch.rand(3)) and a[1] == np.random.rand()


# --------------------------------------------------------------------------- optimiser
def test_adagrad_momentum_dense_matches_hand_computation():
    p = nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    opt = AdagradMomentum([p], lr=0.1, momentum=0.5, eps=1e-6)
    grads = [torch.tensor([[1.0, 0.0], [2.0, -1.0]]), torch.tensor([[1.0, 1.0], [0.0, 2.0]])]
    acc, vel, ref = np.zeros((2, 2)), np.zeros((2, 2)), p.detach().numpy().astype(np.float64).copy()
    for g in grads:
        p.grad = g.clone()
        opt.step()
        acc += g.numpy() ** 2
        vel = 0.5 * vel + 0.1 * g.numpy() / np.sqrt(acc + 1e-6)
        ref -= vel
    # e.g. row 0 col 0: step 1 moves by 0.1, step 2 by 0.5*0.1 + 0.1/sqrt(2) = 0.1207
    assert p[0, 0].item() == pytest.approx(1.0 - 0.1 - (0.05 + 0.1 / math.sqrt(2)), abs=1e-6)
    np.testing.assert_allclose(p.detach().numpy(), ref, atol=1e-6)


def test_adagrad_momentum_sparse_touches_only_given_rows():
    p = nn.Parameter(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    opt = AdagradMomentum([p], lr=0.1, momentum=0.5, eps=1e-6)
    # step 1 touches row 0 twice (duplicates are summed: g = [2, 4]) and row 2; step 2 only row 2
    p.grad = torch.sparse_coo_tensor([[0, 2, 0]], torch.tensor([[1.0, 2.0], [1.0, 1.0], [1.0, 2.0]]), (3, 2), check_invariants=True)
    opt.step()
    p.grad = torch.sparse_coo_tensor([[2]], torch.tensor([[1.0, 1.0]]), (3, 2), check_invariants=True)
    opt.step()
    assert p[0].tolist() == pytest.approx([1.0 - 0.1, 1.0 - 0.1], abs=1e-6)  # g/sqrt(g²) = 1, no 2nd move
    assert p[1].tolist() == [2.0, 2.0]  # never touched
    second = 0.5 * 0.1 + 0.1 * 1.0 / math.sqrt(2.0)  # momentum + Adagrad step with acc = 2
    assert p[2, 0].item() == pytest.approx(3.0 - 0.1 - second, abs=1e-6)
    acc = opt.state[p]["acc_vel"][:, 0]  # (3, 2) accumulators
    assert acc[1].tolist() == [0.0, 0.0] and acc[0].tolist() == [4.0, 16.0]


# --------------------------------------------------------------------------- warm start
def test_warm_start_same_dim_copies_present_rows_and_keeps_missing():
    w = nn.Parameter(torch.full((4, 2), 9.0))
    m = np.array([[5.0, 5.0], [1.0, 2.0], [0.0, 0.0], [3.0, 4.0]])  # row 0 = padding, row 2 = no vector
    assert warm_start_embedding(w, m, rescale=False) == 2
    assert w.tolist() == [[9.0, 9.0], [1.0, 2.0], [9.0, 9.0], [3.0, 4.0]]


def test_warm_start_other_dim_error_names_both_sizes():
    with pytest.raises(ValueError, match="dim 3 != model embedding dim 2"):
        warm_start_embedding(nn.Parameter(torch.zeros(3, 2)), np.ones((3, 3)), mode="error")
    with pytest.raises(ValueError, match="needs 3 rows"):
        warm_start_embedding(nn.Parameter(torch.zeros(3, 2)), np.ones((4, 2)))


def test_warm_start_projection_keeps_the_main_direction():
    # 3-d vectors spread along (1, 1, 0) with tiny noise on z: 1-d projection keeps their order and spacing.
    t = np.array([0.0, -2.0, -1.0, 1.0, 2.0])
    m = np.stack([t, t, 1e-3 * np.array([0, 1, -1, 1, -1])], 1)
    w = nn.Parameter(torch.zeros(5, 1))
    warm_start_embedding(w, m, mode="project", rescale=False)
    got = w[1:, 0].detach().numpy()
    np.testing.assert_allclose(np.abs(got), np.sqrt(2) * np.abs(t[1:] - t[1:].mean()), atol=1e-3)
    assert np.sign(got[0]) != np.sign(got[3])  # -2 and +2 end on opposite sides


# --------------------------------------------------------------------------- the loop
class Tiny(nn.Module):
    """y = w·x with dropout on x: exercises RNG restore on resume."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.carry = torch.zeros(1)

    def forward(self, x):
        return self.lin(nn.functional.dropout(x, 0.3, self.training))


def make_problem(seed: int = 0):
    """Return (module, optimizer, make_batches, step) for a small regression task."""
    set_seed(seed)
    module = Tiny()
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])

    def make_batches(epoch):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(100 + epoch))
        return [order[i : i + 8] for i in range(0, 64, 8)]

    def step(idx):
        module.carry = module.carry + 1  # loop state carried from step to step
        return ((module(x[idx]) - y[idx]) ** 2).mean(), len(idx)

    return module, opt, make_batches, step


def test_fit_epochs_decreases_loss_and_reports_speed():
    module, opt, make_batches, step = make_problem()
    h = fit_epochs(module, opt, make_batches, step, CPU, 6)
    assert len(h.loss) == 6 and h.loss[-1] < 0.5 * h.loss[0]
    assert all(e > 0 for e in h.events_per_second) and all(math.isnan(v) for v in h.valid_metric)


def test_early_stopping_restores_best_weights():
    module, opt, make_batches, step = make_problem()
    scripted, snapshots = iter([0.1, 0.3, 0.2, 0.25, 0.9]), []

    def validate():
        snapshots.append(module.lin.weight.detach().clone())
        return next(scripted)

    cfg = CPU.model_copy(update={"patience": 2})
    h = fit_epochs(module, opt, make_batches, step, cfg, 5, validate=validate)
    assert h.valid_metric == [0.1, 0.3, 0.2, 0.25] and h.stopped_early and h.best_epoch == 1  # 0.9 never reached
    assert torch.equal(module.lin.weight, snapshots[1])


def run_with_crash(tmp_path, crash_at: int | None, cfg: TrainingConfig):
    """Train 3 epochs with checkpoints, raising inside step number ``crash_at``; return module or error."""
    module, opt, make_batches, step = make_problem()
    calls = {"n": 0}

    def crashing_step(batch):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt("simulated crash")
        return step(batch)

    kwargs = dict(checkpoint_path=tmp_path / "ckpt.pt", extra_state={"config": {"lr": 0.05}, "vocab": ["<pad>", "a"]},
                  get_loop_state=lambda: {"carry": module.carry}, set_loop_state=lambda s: setattr(module, "carry", s["carry"]))
    h = fit_epochs(module, opt, make_batches, crashing_step, cfg, 3, **kwargs)
    return module, h


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    cfg = CPU.model_copy(update={"checkpoint_every_steps": 3})
    ref, ref_h = run_with_crash(tmp_path / "a", None, cfg)
    with pytest.raises(KeyboardInterrupt):
        run_with_crash(tmp_path / "b", 13, cfg)  # epoch 2, after the checkpoint at its step 3 (global step 11)
    ckpt = load_checkpoint(tmp_path / "b" / "ckpt.pt")  # weights_only=True
    assert (ckpt["loop"]["epoch"], ckpt["loop"]["step"], ckpt["vocab"]) == (1, 3, ["<pad>", "a"])
    resumed, h = run_with_crash(tmp_path / "b", None, cfg)
    for a, b in zip(ref.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert resumed.carry.item() == ref.carry.item() == 24  # the carried loop state was restored too
    np.testing.assert_allclose(h.loss, ref_h.loss, atol=1e-6)


def test_checkpoint_of_another_config_is_an_error(tmp_path):
    module, opt, make_batches, step = make_problem()
    fit_epochs(module, opt, make_batches, step, CPU, 1, checkpoint_path=tmp_path / "c.pt", extra_state={"config": {"lr": 1}})
    with pytest.raises(CheckpointMismatch, match=r"c\.pt.*\['lr'\]"):
        fit_epochs(module, opt, make_batches, step, CPU, 2, checkpoint_path=tmp_path / "c.pt", extra_state={"config": {"lr": 2}})


def test_history_save_curves_writes_json_and_png(tmp_path):
    h = TrainingHistory(loss=[2.0, 1.0], valid_metric=[0.1, 0.2], seconds=[1.0, 1.0], events_per_second=[5.0, 6.0])
    json_path, png_path = h.save_curves(tmp_path / "curves")
    assert json.loads(json_path.read_text())["loss"] == [2.0, 1.0]
    assert png_path.read_bytes()[:4] == b"\x89PNG"
