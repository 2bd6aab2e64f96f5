"""SASRec: masks, padding, losses against direct computations, training, scoring, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqrec.config import SasRecConfig, TrainingConfig
from seqrec.io import load_checkpoint, save_checkpoint
from seqrec.models import kernels
from seqrec.models.sasrec import (
    SASRec,
    SasRecNet,
    bce_loss,
    build_training_windows,
    full_cross_entropy,
    right_align,
    sampled_softmax_loss,
)
from seqrec.sequences import ItemVocab, SessionDataset

torch.set_num_threads(1)

N_ITEMS = 12
TINY = SasRecConfig(dim=16, heads=2, ffn=32, blocks=2, max_len=6, dropout=0.1, epochs=12, batch_size=32, lr=1e-2)
CPU = TrainingConfig(device="cpu", progress=False, seed=0)


def make_dataset(sessions: list[list[int]], n_items: int = N_ITEMS) -> SessionDataset:
    """Return a SessionDataset over items 'i1'..'i{n}' (dense index k is id 'i{k}')."""
    vocab = ItemVocab(np.array(["<pad>"] + [f"i{k}" for k in range(1, n_items + 1)], dtype=object))
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sessions])]).astype(np.int64)
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions])
    return SessionDataset(vocab, offsets, items, np.arange(len(items), dtype=np.int64), np.arange(len(sessions)))


def cycle_sessions(n: int = 240, seed: int = 0) -> list[list[int]]:
    """Return sessions walking the cycle 1 -> 2 -> ... -> N_ITEMS -> 1 from random starts."""
    rng = np.random.default_rng(seed)
    return [list((rng.integers(N_ITEMS) + np.arange(rng.integers(3, 10))) % N_ITEMS + 1) for _ in range(n)]


@pytest.fixture(scope="module")
def cycle_model() -> tuple[SASRec, SessionDataset]:
    data = make_dataset(cycle_sessions())
    return SASRec(TINY, CPU).fit(data), data


def fresh_net(cfg: SasRecConfig = TINY) -> SasRecNet:
    torch.manual_seed(0)
    return SasRecNet(N_ITEMS, cfg).eval()


# --------------------------------------------------------------------------- network
def test_changing_a_future_item_leaves_earlier_outputs_unchanged():
    net = fresh_net()
    a = torch.tensor([[3, 5, 7, 9, 11]])
    b = torch.tensor([[3, 5, 7, 2, 4]])  # positions 3 and 4 differ
    ha, hb = net(a), net(b)  # (1, 5, D)
    torch.testing.assert_close(ha[:, :3], hb[:, :3])
    assert not torch.allclose(ha[:, 3], hb[:, 3])  # the changed position itself does change


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_left_and_right_padding_do_not_change_real_outputs(norm):
    net = fresh_net(TINY.model_copy(update={"norm": norm}))
    bare = net(torch.tensor([[4, 8, 2]]))[0]  # (3, D)
    left = net(torch.tensor([[0, 0, 4, 8, 2]]))[0]
    right = net(torch.tensor([[4, 8, 2, 0, 0]]))[0]
    torch.testing.assert_close(left[2:], bare)
    torch.testing.assert_close(right[:3], bare)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_last_only_forward_equals_the_last_position_of_the_full_forward(norm):
    net = fresh_net(TINY.model_copy(update={"norm": norm, "blocks": 2}))
    seq = torch.tensor([[0, 0, 4, 8, 2], [3, 1, 4, 1, 5]])  # (2, 5) left-padded and full rows
    last = net(seq, last_only=True)  # (2, 1, D): the last block computes one position
    assert last.shape == (2, 1, TINY.dim)
    torch.testing.assert_close(last[:, 0], net(seq)[:, -1])


def test_tied_output_shares_storage_and_untied_does_not():
    tied, untied = fresh_net(), fresh_net(TINY.model_copy(update={"tied": False}))
    assert tied.output_weight().data_ptr() == tied.item_emb.weight.data_ptr()
    assert untied.output_weight().data_ptr() != untied.item_emb.weight.data_ptr()
    assert untied.output_weight().shape == (N_ITEMS + 1, TINY.dim)


# --------------------------------------------------------------------------- losses
H = torch.tensor([[1.0, 0.0], [0.5, -1.0]])  # (N=2, D=2)
W = torch.tensor([[9.0, 9.0], [1.0, 2.0], [0.0, 1.0], [-1.0, 0.5]])  # (V+1=4, D); row 0 = padding
Y = torch.tensor([1, 3])


def test_full_cross_entropy_matches_softmax_over_real_items():
    logits = [[1.0, 0.0, -1.0], [-1.5, -1.0, -1.0]]  # H @ W[1:].T, padding column left out
    expected = np.mean([math.log(sum(math.exp(v) for v in row)) - row[y - 1] for row, y in zip(logits, [1, 3])])
    assert float(full_cross_entropy(H, W, Y)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("chunk_elements", [4, 7, 1 << 22])  # one row per chunk, a ragged last chunk, one chunk
def test_chunked_cross_entropy_equals_autograd_through_the_whole_matrix(monkeypatch, chunk_elements):
    monkeypatch.setattr(kernels, "CHUNK_ELEMENTS", chunk_elements)
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(9, 5, generator=gen, requires_grad=True)
    w = torch.randn(7, 5, generator=gen, requires_grad=True)  # row 0 = padding
    y = torch.tensor([1, 2, 6, 6, 3, 1, 5, 4, 2])
    loss = full_cross_entropy(h, w, y)  # the chunked path on CPU
    (2.5 * loss).backward()
    got = (loss.item(), h.grad.clone(), w.grad.clone())
    h.grad = w.grad = None
    logits = h @ w.T
    logits[:, 0] = float("-inf")
    reference = torch.nn.functional.cross_entropy(logits, y)
    (2.5 * reference).backward()
    assert got[0] == pytest.approx(reference.item(), rel=1e-6)
    assert torch.allclose(got[1], h.grad, atol=1e-6) and torch.allclose(got[2], w.grad, atol=1e-6)
    assert float(got[2][0].abs().max()) == 0.0  # the padding row gets no gradient
    with torch.no_grad():  # scoring a loss without gradients takes the same path and gives the same value
        assert float(full_cross_entropy(h, w, y)) == pytest.approx(reference.item(), rel=1e-6)


def test_sampled_softmax_applies_log_q_and_masks_accidental_hits():
    negatives = torch.tensor([2, 1])  # item 1 is row 0's own target: an accidental hit
    log_q = torch.log(torch.tensor([0.0, 0.5, 0.3, 0.2]))
    s = lambda n, i: float(H[n] @ W[i]) - float(log_q[i])  # corrected logit
    row0 = [s(0, 1), s(0, 2)]  # hit on item 1 masked out
    row1 = [s(1, 3), s(1, 2), s(1, 1)]
    expected = np.mean([math.log(sum(math.exp(v) for v in r)) - r[0] for r in (row0, row1)])
    assert float(sampled_softmax_loss(H, W, Y, negatives, log_q)) == pytest.approx(expected, rel=1e-6)


def test_bce_uses_one_negative_per_position():
    negatives = torch.tensor([2, 1])
    sig = lambda x: 1 / (1 + math.exp(-x))
    pos, neg = [1.0, -1.0], [0.0, -1.5]  # H[n] @ W[Y[n]], H[n] @ W[negatives[n]]
    expected = -np.mean([math.log(sig(p)) + math.log(1 - sig(q)) for p, q in zip(pos, neg)])
    assert float(bce_loss(H, W, Y, negatives)) == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- data
def test_training_windows_keep_last_items_left_padded():
    data = make_dataset([[1, 2, 3, 4, 5], [6, 7], [8]])  # session [8] has no transition
    expected = np.array([[2, 3, 4, 5], [0, 0, 6, 7]])
    np.testing.assert_array_equal(build_training_windows(data, 4, "last"), expected)


def test_sliding_windows_train_every_transition_once():
    data = make_dataset([[1, 2, 3, 4, 5, 6, 7, 8]])
    windows = build_training_windows(data, 4, "slide")
    np.testing.assert_array_equal(windows, [[5, 6, 7, 8], [2, 3, 4, 5], [0, 0, 1, 2]])
    pairs = {(w[i], w[i + 1]) for w in windows for i in range(3) if w[i]}
    assert pairs == {(k, k + 1) for k in range(1, 8)}


def test_right_align_moves_the_last_items_to_the_end():
    items = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    out = right_align(items, torch.tensor([4, 2]), 3)
    assert out.tolist() == [[2, 3, 4], [0, 5, 6]]


# --------------------------------------------------------------------------- training and scoring
def test_training_on_a_cycle_beats_popularity(cycle_model):
    model, data = cycle_model
    items, lengths = data.padded(np.arange(data.n_sessions))
    prefix = lengths - 1  # predict each session's last item from the rest
    target = items[np.arange(len(items)), prefix]
    scores = model.score_last(items, prefix)
    accuracy = float((scores[:, 1:].argmax(1) + 1 == target).mean())
    popular = np.bincount(data.items, minlength=N_ITEMS + 1)[1:].argmax() + 1
    assert accuracy > 0.9 and accuracy > 2 * float((target == popular).mean())
    assert model.history.loss[-1] < model.history.loss[0]


@pytest.mark.parametrize("loss", ["sampled-softmax", "bce"])
def test_other_losses_also_learn_the_cycle(loss):
    data = make_dataset(cycle_sessions(160))
    model = SASRec(TINY.model_copy(update={"loss": loss, "n_negatives": 4, "epochs": 10}), CPU).fit(data)
    items, lengths = data.padded(np.arange(data.n_sessions))
    scores = model.score_last(items, lengths)
    expected_next = items[np.arange(len(items)), lengths - 1] % N_ITEMS + 1
    assert float((scores[:, 1:].argmax(1) + 1 == expected_next).mean()) > 0.7


def test_score_last_equals_last_step_of_score_steps(cycle_model):
    model, _ = cycle_model
    items = np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9], [4, 5, 0, 0, 0, 0, 0, 0, 0], [7, 8, 9, 10, 11, 0, 0, 0, 0]])
    lengths = np.array([9, 2, 5])  # row 0 is longer than max_len = 6
    steps = list(model.score_steps(items, lengths))
    assert len(steps) == 9
    last = model.score_last(items, lengths)
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(steps[n - 1][row], last[row], rtol=1e-5, atol=1e-5)


def test_score_last_sees_only_the_last_max_len_items(cycle_model):
    model, _ = cycle_model
    long = np.array([[9, 1, 2, 3, 4, 5, 6]])  # 7 items, max_len 6: item 9 falls out
    np.testing.assert_allclose(model.score_last(long, np.array([7])), model.score_last(long[:, 1:], np.array([6])), atol=1e-6)


def test_score_last_refuses_an_empty_row(cycle_model):
    model, _ = cycle_model
    with pytest.raises(ValueError, match="length 0"):
        model.score_last(np.array([[1, 2], [0, 0]]), np.array([2, 0]))


def test_checkpoint_round_trip_with_weights_only(cycle_model, tmp_path):
    model, _ = cycle_model
    path = save_checkpoint(model.state_dict(), tmp_path / "sasrec.pt")
    loaded = SASRec.from_state_dict(load_checkpoint(path))  # weights_only=True inside
    items, lengths = np.array([[3, 4, 5], [6, 0, 0]]), np.array([3, 1])
    np.testing.assert_array_equal(loaded.score_last(items, lengths), model.score_last(items, lengths))
    assert loaded.vocab.ids.tolist() == model.vocab.ids.tolist() and loaded.cfg == model.cfg


# --------------------------------------------------------------------------- warm start
def test_warm_start_copies_same_dimension_vectors_up_to_one_scale():
    data = make_dataset(cycle_sessions(20))
    matrix = np.random.default_rng(1).normal(size=(N_ITEMS + 1, TINY.dim))
    model = SASRec(TINY.model_copy(update={"epochs": 1, "lr": 1e-9}), CPU)
    assert model.init_item_embeddings(matrix, data.vocab) == N_ITEMS  # before fit: builds the network
    model.fit(data)  # keeps the warm-started network
    ratio = model.net.item_emb.weight[1:].detach().numpy() / matrix[1:]
    np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-3)  # rescaled to the init's std, not reshaped


def test_warm_start_dimension_mismatch_errors_or_projects():
    data = make_dataset(cycle_sessions(20))
    matrix = np.random.default_rng(1).normal(size=(N_ITEMS + 1, 40))
    strict = SASRec(TINY.model_copy(update={"init_projection": "error"}), CPU)
    with pytest.raises(ValueError, match="dim 40 != model embedding dim 16"):
        strict.init_item_embeddings(matrix, data.vocab)
    model = SASRec(TINY, CPU)
    low_rank = matrix[:, :1] @ np.ones((1, 40))  # rank 1: PCA keeps it exactly, in 1 dimension
    model.init_item_embeddings(low_rank, data.vocab)
    emb = model.net.item_emb.weight.detach().numpy()
    assert np.abs(emb[1:, 1:]).max() < 1e-6 and emb[1:, 0].std() > 0
    np.testing.assert_allclose(np.corrcoef(emb[1:, 0], low_rank[1:, 0])[0, 1] ** 2, 1.0, atol=1e-4)


def test_fit_with_validation_records_the_metric_and_keeps_the_best_epoch():
    from seqrec.config import EvaluationConfig
    from seqrec.evaluation.metrics import make_validator

    data = make_dataset(cycle_sessions(120))
    cfg = TINY.model_copy(update={"epochs": 4})
    model = SASRec(cfg, CPU.model_copy(update={"valid_metric": "recall@1"}))
    model.fit(data, make_validator(model, make_dataset(cycle_sessions(40, seed=1)), EvaluationConfig(protocol="loo"), "recall@1"))
    metrics = model.history.valid_metric
    assert len(metrics) == 4 and model.history.best_epoch == int(np.argmax(metrics))
    assert max(metrics) > 0.5  # next item on the cycle from a one-epoch-old model onwards
