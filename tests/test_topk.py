"""Exact top-k: group-max pruning and the blocked dot-product index give torch.topk's answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqrec.config import BprMfConfig, Gru4RecConfig, TrainingConfig
from seqrec.models.bprmf import BPRMF
from seqrec.models.gru4rec import GRU4Rec
from seqrec.serving.recommend import recommend_topk, top_k_rows, top_k_unseen
from seqrec.sequences import ItemVocab, SessionDataset
import seqrec.serving.topk as topk
from seqrec.serving.topk import GROUP, DotProductIndex, group_topk

torch.set_num_threads(1)


def brute_force(q, w, b, k, banned=None):
    """Return torch.topk of the full fp32 score matrix, padding column 0 and banned items at -inf."""
    scores = q @ w.T + (0 if b is None else b)
    scores[:, 0] = -math.inf
    if banned is not None:
        scores.scatter_(1, banned, -math.inf)
    return torch.topk(scores, k, dim=1)


def test_group_topk_equals_torch_topk_with_a_partial_last_group():
    scores = torch.randn(7, 40 * GROUP + 17, generator=torch.Generator().manual_seed(0))  # 17 columns in no group
    scores[3, -1] = 100.0  # the best item of row 3 sits in the partial tail
    values, idx = group_topk(scores, 6)
    ref_values, ref_idx = torch.topk(scores, 6, dim=1)
    assert torch.equal(values, ref_values) and torch.equal(idx, ref_idx)
    assert idx[3, 0] == scores.shape[1] - 1


def test_dot_product_index_is_exact_with_banned_items():
    gen = torch.Generator().manual_seed(1)
    w, b = torch.randn(3001, 32, generator=gen), torch.randn(3001, generator=gen)
    q = torch.randn(150, 32, generator=gen)
    banned = torch.randint(0, 3001, (150, 12), generator=gen)
    values, idx = DotProductIndex(w, b, chunk=64).search(q, 10, banned)
    ref_values, ref_idx = brute_force(q, w, b, 10, banned)
    assert torch.equal(idx.sort(1).values, ref_idx.sort(1).values)
    torch.testing.assert_close(values, ref_values, rtol=1e-5, atol=1e-5)


def test_certified_bf16_pass_certifies_clear_rows_and_returns_the_exact_answer(monkeypatch):
    monkeypatch.setattr(topk, "USE_BF16", True)  # opt-in
    gen = torch.Generator().manual_seed(2)
    w, b = torch.randn(5001, 32, generator=gen) * 0.2, torch.randn(5001, generator=gen)
    q = torch.randn(64, 33, generator=gen)
    q[:, -1] = 1.0  # the bias column, as search() appends it
    index = DotProductIndex(w, b)
    values, idx = torch.empty(64, 10), torch.empty(64, 10, dtype=torch.int64)
    ok = index.certified_block(q, 10, None, values, idx)
    assert index.certified and bool(ok.all())  # random scores: the top 64 approximate items leave a wide margin
    ref_values, ref_idx = brute_force(q[:, :-1], w, b, 10)
    assert torch.equal(idx.sort(1).values, ref_idx.sort(1).values)
    torch.testing.assert_close(values, ref_values, rtol=1e-5, atol=1e-5)


def test_rows_the_bf16_bound_cannot_certify_are_scored_again_in_float32(monkeypatch):
    monkeypatch.setattr(topk, "USE_BF16", True)  # opt-in
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(4001, 16, generator=gen)
    w[1:201] = w[1] + 1e-4 * torch.randn(200, 16, generator=gen)  # 200 near-ties: bf16 cannot order them
    q = torch.randn(32, 16, generator=gen)
    q[:16] = w[1] * 10  # rows 0..15 look straight at the near-ties
    index = DotProductIndex(w)
    values, idx = torch.empty(32, 10), torch.empty(32, 10, dtype=torch.int64)
    qb = torch.cat([q, torch.ones(32, 1)], 1)
    ok = index.certified_block(qb, 10, None, values, idx)
    assert not ok[:16].any()  # the bound says: not provably exact
    values, idx = index.search(q, 10)  # ... so search scores those rows in float32
    ref_values, ref_idx = brute_force(q, w, None, 10)
    assert torch.equal(idx.sort(1).values, ref_idx.sort(1).values)
    torch.testing.assert_close(values, ref_values, rtol=1e-5, atol=1e-5)


def test_rows_with_fewer_allowed_items_than_k_end_in_minus_infinity():
    w = torch.eye(5)  # items 1..4 (0 is padding)
    q = torch.ones(1, 5)
    values, idx = DotProductIndex(w).search(q, 3, banned=torch.tensor([[1, 2]]))
    assert sorted(idx[0, :2].tolist()) == [3, 4] and values[0, 2] == -math.inf


def cycle_data(n_items: int = 300, n: int = 400) -> SessionDataset:
    """Return sessions walking items i -> i + 1 (mod n_items) from random starts."""
    rng = np.random.default_rng(0)
    sessions = [(rng.integers(n_items) + np.arange(rng.integers(2, 7))) % n_items + 1 for _ in range(n)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sessions])]).astype(np.int64)
    items = np.concatenate(sessions).astype(np.int64)
    vocab = ItemVocab(np.array(["<pad>"] + [f"i{k}" for k in range(n_items)], dtype=object))
    return SessionDataset(vocab, offsets, items, np.arange(len(items)), np.arange(n))


@pytest.mark.parametrize("name", ["gru4rec", "bprmf"])
def test_recommend_dot_product_path_equals_full_scoring(name):
    data = cycle_data()
    if name == "gru4rec":
        cfg = Gru4RecConfig(hidden=24, batch_size=16, n_sample=64, epochs=1, final_act="elu", elu_param=0.5)
        model = GRU4Rec(cfg, TrainingConfig(device="cpu", progress=False)).fit(data)
    else:
        model = BPRMF(BprMfConfig(factors=16, epochs=2)).fit(data)
    items = np.array([[5, 6, 7], [9, 0, 0], [200, 201, 0]])
    lengths = np.array([3, 1, 2])
    idx, values = recommend_topk(model, items, lengths, k=8, exclude_seen=True)
    ref_idx, ref_values = top_k_unseen(torch.from_numpy(model.score_last(items, lengths)), torch.as_tensor(items), 8, True)
    np.testing.assert_array_equal(np.sort(idx, 1), np.sort(ref_idx.numpy(), 1))
    np.testing.assert_allclose(values, ref_values.numpy(), rtol=1e-5, atol=1e-5)


def test_top_k_rows_ranks_a_broadcast_row_once_with_the_same_answer():
    row = np.random.default_rng(4).random(3 * GROUP * 30).astype(np.float32)
    items = np.array([[int(np.argmax(row)), 0], [5, 6], [0, 0]])  # row 0 has seen the best item
    broadcast = np.broadcast_to(row, (3, len(row)))  # read-only, stride 0 like Popularity's scores
    idx, values = top_k_rows(broadcast, items, k=5, exclude_seen=True)
    ref_idx, ref_values = top_k_unseen(torch.from_numpy(np.tile(row, (3, 1))), torch.as_tensor(items), 5, True)
    assert torch.equal(idx, ref_idx) and torch.equal(values, ref_values)
    assert int(np.argmax(row)) not in idx[0].tolist() and int(np.argmax(row)) in idx[1].tolist()


def test_searches_from_several_threads_agree_and_restore_the_thread_count():
    from concurrent.futures import ThreadPoolExecutor

    gen = torch.Generator().manual_seed(5)
    w, q = torch.randn(2000, 16, generator=gen), torch.randn(40, 16, generator=gen)
    index, before = DotProductIndex(w), torch.get_num_threads()
    expected = index.search(q, 5)[1]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: index.search(q, 5)[1], range(8)))
    assert all(torch.equal(r, expected) for r in results)
    assert torch.get_num_threads() == before
