"""The optional repeat bias: known answers for the boost, and GRU4Rec / SASRec learning to revisit session items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.config import Gru4RecConfig, SasRecConfig, TrainingConfig
from seqrec.models.gru4rec import GRU4Rec
from seqrec.models.repeat import add_repeat_bias
from seqrec.models.sasrec import SASRec, prefix_pairs
from seqrec.recommend import recommend_topk, top_k_unseen
from seqrec.sequences import ItemVocab, SessionDataset

torch.set_num_threads(1)
TRAIN = TrainingConfig(device="cpu", progress=False, seed=0, patience=0, threads=1)


def test_add_repeat_bias_boosts_each_prefix_item_once_and_never_padding():
    scores = torch.zeros(2, 6)
    out = add_repeat_bias(scores, torch.tensor([[1, 1, 3], [0, 0, 0]]), torch.tensor([2.0, 5.0]))
    assert out.tolist() == [[0, 2, 0, 2, 0, 0], [0, 0, 0, 0, 0, 0]]  # item 1 twice in the prefix: +2 once


def test_prefix_pairs_lists_the_items_up_to_each_kept_position():
    inputs = torch.tensor([[0, 4, 2, 4], [3, 1, 0, 0]])  # (B, L); row 0 left-padded, row 1 right-padded
    keep = torch.tensor([[False, True, True, True], [True, True, False, False]])  # rows 0..2, then 3..4
    rows, items = prefix_pairs(inputs, keep)
    pairs = sorted(zip(rows.tolist(), items.tolist()))
    assert pairs == [(0, 4), (1, 2), (1, 4), (2, 2), (2, 4), (3, 3), (4, 1), (4, 3)]  # 4 repeated: one pair


def revisit_sessions(n: int, n_items: int = 300, seed: int = 0) -> SessionDataset:
    """Return sessions a b a b ... of two random items: the next item is always one already seen."""
    rng = np.random.default_rng(seed)
    sessions = [list(np.tile(rng.choice(np.arange(1, n_items + 1), 2, replace=False), 4)) for _ in range(n)]
    vocab = ItemVocab(np.array(["<pad>"] + [f"i{k}" for k in range(1, n_items + 1)], dtype=object))
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sessions])]).astype(np.int64)
    items = np.concatenate(sessions).astype(np.int64)
    return SessionDataset(vocab, offsets, items, np.arange(len(items), dtype=np.int64), np.arange(n))


def hit_rate_at_2_after_two_items(model, data: SessionDataset) -> float:
    """Return how often the next item is in the top 2 once both items of the session were seen."""
    items, lengths = data.padded(np.arange(data.n_sessions))
    scores = list(model.score_steps(items, lengths))
    hits = [np.isin(items[:, t + 1], np.argsort(-scores[t], 1)[:, :2]) for t in range(1, items.shape[1] - 1)]
    return float(np.mean(hits))


def build(name: str, repeat_bias: bool):
    """Return a small GRU4Rec or SASRec with or without the repeat bias."""
    if name == "gru4rec":
        cfg = Gru4RecConfig(hidden=16, batch_size=16, n_sample=32, epochs=4, lr=0.1, dropout_hidden=0.0, repeat_bias=repeat_bias)
        return GRU4Rec(cfg, TRAIN)
    cfg = SasRecConfig(dim=16, heads=2, ffn=32, blocks=1, max_len=8, epochs=6, batch_size=32, lr=5e-3, dropout=0.0,
                       repeat_bias=repeat_bias)
    return SASRec(cfg, TRAIN)


@pytest.mark.parametrize("name", ["gru4rec", "sasrec"])
def test_repeat_bias_learns_to_revisit_items_the_plain_model_cannot_place(name):
    # 300 items, each session revisits two random ones: only "already seen" predicts the next item
    train, test = revisit_sessions(400, seed=0), revisit_sessions(60, seed=1)
    with_bias = build(name, True).fit(train)
    plain = build(name, False).fit(train)
    assert with_bias.net.repeat[-1].item() > 0 or with_bias.net.repeat[:-1].abs().sum().item() > 0  # learned
    hit_bias, hit_plain = hit_rate_at_2_after_two_items(with_bias, test), hit_rate_at_2_after_two_items(plain, test)
    assert hit_bias > 0.9 and hit_bias > hit_plain + 0.15  # measured: GRU4Rec 1.0 vs 0.43, SASRec 1.0 vs 0.71


@pytest.mark.parametrize("name", ["gru4rec", "sasrec"])
def test_recommend_with_repeat_bias_equals_full_scoring(name):
    model = build(name, True).fit(revisit_sessions(100))
    items, lengths = np.array([[5, 9, 5], [7, 0, 0]]), np.array([3, 1])
    idx, values = recommend_topk(model, items, lengths, k=6, exclude_seen=False)
    ref_idx, ref_values = top_k_unseen(torch.from_numpy(model.score_last(items, lengths)), torch.as_tensor(items), 6, False)
    np.testing.assert_array_equal(np.sort(idx, 1), np.sort(ref_idx.numpy(), 1))
    np.testing.assert_allclose(values, ref_values.numpy(), rtol=1e-5, atol=1e-5)
    assert {5, 9} <= set(idx[0].tolist())  # the session's own items come back when they are not excluded


def test_sasrec_repeat_bias_needs_full_cross_entropy():
    with pytest.raises(ValueError, match="repeat_bias=true needs loss=cross-entropy"):
        SasRecConfig(repeat_bias=True, loss="bce")
