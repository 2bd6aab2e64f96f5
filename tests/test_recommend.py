"""Batched recommendation: encoding, seen-item exclusion, decoding, batching, model files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.config import SasRecConfig, TrainingConfig
from seqrec.io import save_checkpoint
from seqrec.models.sasrec import SASRec
from seqrec.serving.recommend import (
    encode_ids,
    encode_sessions,
    load_model,
    read_sessions_file,
    recommend,
    recommend_indices,
    save_model,
    top_k_unseen,
)
from seqrec.sequences import ItemVocab, SessionDataset

torch.set_num_threads(1)

N_ITEMS = 10
IDS = [f"sku-{k * 7}" for k in range(1, N_ITEMS + 1)]  # original ids; dense index k is IDS[k - 1]
VOCAB = ItemVocab(np.array(["<pad>"] + IDS, dtype=object))


def cycle_dataset(n: int = 200) -> SessionDataset:
    """Return sessions walking dense items 1 -> 2 -> ... -> 10 -> 1 from random starts."""
    rng = np.random.default_rng(0)
    sessions = [(rng.integers(N_ITEMS) + np.arange(rng.integers(3, 9))) % N_ITEMS + 1 for _ in range(n)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sessions])]).astype(np.int64)
    items = np.concatenate(sessions).astype(np.int64)
    return SessionDataset(VOCAB, offsets, items, np.arange(len(items)), np.arange(n))


@pytest.fixture(scope="module")
def model() -> SASRec:
    cfg = SasRecConfig(dim=16, heads=2, ffn=32, blocks=1, max_len=8, epochs=12, batch_size=32, lr=1e-2, dropout=0.1)
    return SASRec(cfg, TrainingConfig(device="cpu", progress=False)).fit(cycle_dataset())


def test_encode_sessions_drops_and_counts_unknown_ids():
    enc = encode_sessions([["sku-14", "nope", "sku-7"], ["x", "y"], np.array(["sku-70"])], VOCAB)
    np.testing.assert_array_equal(enc.items, [[2, 1], [0, 0], [10, 0]])
    np.testing.assert_array_equal(enc.lengths, [2, 0, 1])
    assert enc.unknown_items == 3


def test_encode_ids_maps_known_ids_and_zeroes_unknown_ones():
    ids = [IDS[k % N_ITEMS] if k % 7 else f"ghost-{k}" for k in range(600)]  # every 7th id unknown
    codes = encode_ids(ids, VOCAB)
    assert codes[0] == 0 and codes[1] == 2 and codes[10] == 1  # "ghost-0" unknown; IDS[1] is dense 2; IDS[0] is 1
    assert (codes == 0).sum() == len(range(0, 600, 7)) and codes.dtype == np.int64
    assert encode_sessions([np.array(IDS[:2], dtype=object), [IDS[2]]], VOCAB).items.tolist() == [[1, 2], [3, 0]]


def test_encode_sessions_reads_numeric_ids_as_their_text():
    vocab = ItemVocab(np.array(["<pad>", "5", "12", "7"], dtype=object))
    enc = encode_sessions([[12, np.int64(7), "5"], np.array([5, 99]), [np.str_("12"), 12.0]], vocab)
    np.testing.assert_array_equal(enc.items, [[2, 3, 1], [1, 0, 0], [2, 0, 0]])  # 99 and "12.0" are unknown
    np.testing.assert_array_equal(enc.lengths, [3, 1, 1])
    assert enc.unknown_items == 2


def test_top_k_unseen_skips_padding_and_seen_items():
    scores = torch.tensor([[9.0, 5.0, 4.0, 3.0, 2.0], [9.0, 1.0, 2.0, 3.0, 4.0]])  # column 0 = padding
    items = torch.tensor([[1, 3], [4, 0]])
    idx, val = top_k_unseen(scores, items, k=2, exclude_seen=True)
    assert idx.tolist() == [[2, 4], [3, 2]] and val.tolist() == [[4.0, 2.0], [3.0, 2.0]]
    idx, _ = top_k_unseen(scores, items, k=2, exclude_seen=False)
    assert idx.tolist() == [[1, 2], [4, 3]]


def test_top_k_unseen_pads_rows_that_run_out_of_items():
    scores = torch.tensor([[0.0, 3.0, 2.0, 1.0]])
    idx, val = top_k_unseen(scores, torch.tensor([[1, 2]]), k=2, exclude_seen=True)
    assert idx.tolist() == [[3, 0]] and val[0, 1] == float("-inf")


def test_recommend_decodes_the_cycle_in_original_ids(model):
    out = recommend(model, [["sku-7", "sku-14"], ["sku-63", "sku-70"]], k=1)
    assert out == [["sku-21"], ["sku-7"]]  # next on the cycle: dense 3, and 10 -> 1


def test_exclude_seen_removes_the_sessions_items(model):
    session = ["sku-7", "sku-14", "sku-21"]
    kept = recommend(model, [session], k=N_ITEMS, exclude_seen=False)[0]
    excluded = recommend(model, [session], k=N_ITEMS - 3, exclude_seen=True)[0]
    assert sorted(kept) == sorted(IDS)
    assert excluded == [i for i in kept if i not in session]


def test_batched_result_equals_one_by_one(model):
    rng = np.random.default_rng(3)
    sessions = [list(rng.choice(IDS, size=rng.integers(1, 12))) for _ in range(37)]
    batched = recommend(model, sessions, k=4, batch_size=8)
    assert batched == [recommend(model, [s], k=4)[0] for s in sessions]


def test_unknown_items_and_empty_sessions_are_counted(model, caplog):
    with caplog.at_level(logging.WARNING, logger="seqrec.serving.recommend"):
        out = recommend(model, [["sku-7", "ghost"], ["ghost", "ghost2"], []], k=2)
    assert out.unknown_items == 3 and out.empty_sessions == 2
    assert out[1] == [] and out[2] == [] and len(out[0]) == 2
    assert "3 unknown item ids" in caplog.text


def test_recommend_indices_refuses_k_beyond_the_catalogue(model):
    with pytest.raises(ValueError, match="k=11"):
        recommend_indices(model, np.array([[1]]), np.array([1]), k=11)


# --------------------------------------------------------------------------- model files
def test_save_and_load_model_round_trip(model, tmp_path):
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert isinstance(loaded, SASRec)
    sessions = [["sku-7", "sku-14"], ["sku-49"]]
    assert recommend(loaded, sessions, k=3) == recommend(model, sessions, k=3)


class Payload:
    """An arbitrary object whose unpickling would create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_load_model_refuses_a_pickle_that_is_not_weights_only(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"model_type": "sasrec", "payload": Payload(marker)}, path)
    with pytest.raises(ValueError, match="not a weights-only"):
        load_model(path)
    assert not marker.exists()


def test_load_model_names_an_unknown_model_type(tmp_path):
    path = save_checkpoint({"model_type": "no-such-model"}, tmp_path / "x.pt")
    with pytest.raises(KeyError, match="no-such-model"):
        load_model(path)


# --------------------------------------------------------------------------- session files
def test_read_sessions_file_plain_text(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("a b c\nd,e, f\n\ng\n")
    assert read_sessions_file(path) == [["a", "b", "c"], ["d", "e", "f"], [], ["g"]]


def test_read_sessions_file_tsv_orders_items_by_time(tmp_path):
    path = tmp_path / "s.tsv"
    path.write_text("SessionId\tItemId\tTime\n7\tb\t20\n3\tx\t5\n7\ta\t10\n3\ty\t6\n")
    assert read_sessions_file(path) == [["a", "b"], ["x", "y"]]


# --------------------------------------------------------------------------- any recommender
def test_recommend_works_for_a_count_baseline_with_a_given_vocab(tmp_path):
    baselines = pytest.importorskip("seqrec.models.baselines")
    sessions = [np.full(k, k) for k in range(1, N_ITEMS + 1)]  # item k has support k: no ties
    offsets = np.concatenate([[0], np.cumsum(np.arange(1, N_ITEMS + 1))]).astype(np.int64)
    items = np.concatenate(sessions).astype(np.int64)
    pop = baselines.Popularity().fit(SessionDataset(VOCAB, offsets, items, np.arange(len(items)), np.arange(N_ITEMS)))
    out = recommend(pop, [["sku-7"], ["sku-70", "sku-49"]], k=3, vocab=VOCAB)
    assert out == [["sku-70", "sku-63", "sku-56"], ["sku-63", "sku-56", "sku-42"]]  # dense 10, 9, 8 / minus 10, 7
    loaded = load_model(save_model(pop, tmp_path / "pop.pt", vocab=VOCAB))  # vocab travels in the file
    assert recommend(loaded, [["sku-7"]], k=3) == out[:1]


def random_sessions(n_items: int, n: int, seed: int) -> SessionDataset:
    """Return n random sessions over a Zipf-like catalogue of n_items (so popularity has few ties)."""
    rng = np.random.default_rng(seed)
    vocab = ItemVocab(np.array(["<pad>"] + [f"i{j}" for j in range(1, n_items + 1)], dtype=object))
    lengths = rng.integers(2, 8, n)
    items = (rng.zipf(1.2, lengths.sum()) % n_items + 1).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return SessionDataset(vocab, offsets, items, np.arange(len(items)), np.arange(n))


@pytest.mark.parametrize("name", ["markov", "itemknn", "spop"])
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_sparse_top_k_of_the_count_baselines_equals_the_dense_scores(name, exclude_seen):
    from seqrec.models.baselines import ItemKNN, Markov, SessionPopularity
    from seqrec.serving.recommend import recommend_topk, top_k_rows

    data = random_sessions(300, 400, seed=1)
    model = {"markov": Markov, "itemknn": ItemKNN, "spop": SessionPopularity}[name]().fit(data)
    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 12, 64)
    items = np.zeros((64, 11), np.int64)
    for b, n in enumerate(lengths):
        items[b, :n] = rng.integers(1, 301, n) if b % 2 else (rng.zipf(1.2, n) % 300 + 1)
    assert model.sparse_scores(items, lengths) is not None  # the sparse path runs
    idx, values = recommend_topk(model, items, lengths, k=25, exclude_seen=exclude_seen)
    dense = model.score_last(items, lengths)
    _, ref_values = top_k_rows(dense, items, 25, exclude_seen)
    np.testing.assert_array_equal(values, ref_values.numpy())  # the same scores in the same order
    np.testing.assert_array_equal(np.take_along_axis(dense, idx, 1), values)  # each item holds its own score
    assert all(len(set(row)) == 25 and 0 not in row for row in idx.tolist())  # distinct items, never padding
    seen = [set(items[b, : lengths[b]].tolist()) & set(idx[b].tolist()) for b in range(64)]
    assert not any(seen) if exclude_seen else any(seen)
