"""Baselines ranked on a tiny session set worked out by hand, plus the yoochoose reference figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.config import BprMfConfig, EvaluationConfig, ItemKnnConfig, SessionKnnConfig
from seqrec.evaluation.metrics import evaluate_model
from seqrec.io import load_checkpoint, save_checkpoint
from seqrec.models.baselines import ItemKNN, Markov, Popularity, SessionKNN, SessionPopularity
from seqrec.models.bprmf import BPRMF
from seqrec.sequences import ItemVocab, SessionDataset

torch.set_num_threads(1)

YOOCHOOSE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "yoochoose_rsc15_100k"


def make_sessions(sessions: list[list[int]], n_items: int) -> SessionDataset:
    """Return a SessionDataset over items 1..n_items, sessions in the given (start) order."""
    vocab = ItemVocab(np.array(["<pad>"] + [f"i{k}" for k in range(1, n_items + 1)], dtype=object))
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sessions])]).astype(np.int64)
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions])
    return SessionDataset(vocab, offsets, items, np.arange(len(items), dtype=np.int64), np.arange(len(sessions)))


# Event support: 1: 3, 2: 4, 3: 2, 4: 1, 5: 0. Sessions holding each item: 1: 3, 2: 3, 3: 2, 4: 1.
# Transitions: 1->2 x2, 2->3 x2, 3->2 x1, 4->1 x1. Co-occurring sessions: {1,2}: 2, {2,3}: 2, {1,3}: 1, {1,4}: 1.
TRAIN = make_sessions([[1, 2, 3], [1, 2], [2, 3, 2], [4, 1]], n_items=5)


def scores_after(model, prefix: list[int]) -> np.ndarray:
    """Return the model's scores (V + 1,) after a single prefix."""
    return model.score_last(np.array([prefix]), np.array([len(prefix)]))[0]


def order_of(scores: np.ndarray) -> list[int]:
    """Return items 1..V from best to worst (stable for equal scores)."""
    return list(np.argsort(-scores[1:], kind="stable") + 1)


def test_popularity_ranks_by_training_events():
    assert order_of(scores_after(Popularity().fit(TRAIN), [3])) == [2, 1, 3, 4, 5]


def test_spop_ranks_by_count_in_prefix_then_popularity():
    model = SessionPopularity().fit(TRAIN)
    assert order_of(scores_after(model, [3])) == [3, 2, 1, 4, 5]
    assert order_of(scores_after(model, [4, 3, 4, 1])) == [4, 1, 3, 2, 5]  # 4 twice; 1 and 3 once, 1 more popular
    steps = list(model.score_steps(np.array([[3, 1, 3]]), np.array([3])))
    assert order_of(steps[2][0]) == [3, 1, 2, 4, 5]


def test_markov_counts_transitions_with_popularity_backoff():
    model = Markov().fit(TRAIN)
    assert model.transitions[1, 2] == 2 and model.transitions[2, 3] == 2 and model.transitions[3, 2] == 1
    assert model.transitions[3, 1] == 0  # the pair (3 | 1) spans two sessions: not a transition
    assert order_of(scores_after(model, [2])) == [3, 2, 1, 4, 5]  # 2 -> 3, then popularity
    assert order_of(scores_after(model, [5])) == [2, 1, 3, 4, 5]  # no transitions: popularity
    assert order_of(scores_after(model, [1, 4])) == [1, 2, 3, 4, 5]  # only the last item counts


def test_itemknn_cosine_values():
    sim = ItemKNN(ItemKnnConfig(shrinkage=0.0, alpha=0.5)).fit(TRAIN).similarity
    assert sim[1, 2] == pytest.approx(2 / 3)  # 2 / sqrt(3 * 3)
    assert sim[2, 3] == pytest.approx(2 / np.sqrt(6))
    assert sim[1, 3] == pytest.approx(1 / np.sqrt(6))
    assert sim[1, 4] == pytest.approx(1 / np.sqrt(3))
    assert sim[1, 1] == 0 and sim[3, 4] == 0
    shrunk = ItemKNN(ItemKnnConfig(shrinkage=1.0)).fit(TRAIN).similarity
    assert shrunk[2, 3] == pytest.approx(2 / (np.sqrt(6) + 1))
    asym = ItemKNN(ItemKnnConfig(shrinkage=0.0, alpha=1.0)).fit(TRAIN).similarity
    assert (asym[1, 4], asym[4, 1]) == pytest.approx((1 / 3, 1.0))  # c / s_i


def test_itemknn_keeps_top_neighbours_and_backs_off_to_popularity():
    model = ItemKNN(ItemKnnConfig(shrinkage=0.0)).fit(TRAIN)
    assert order_of(scores_after(model, [3, 1])) == [2, 4, 3, 1, 5]  # sims .667 > .577 > .408, then popularity
    one = ItemKNN(ItemKnnConfig(shrinkage=0.0, neighbours=1)).fit(TRAIN)
    assert one.similarity[1].nnz == 1 and one.similarity[1, 2] == pytest.approx(2 / 3)
    assert order_of(scores_after(one, [1])) == [2, 1, 3, 4, 5]


def test_session_knn_sums_neighbour_similarity():
    s = scores_after(SessionKNN(SessionKnnConfig()).fit(TRAIN), [1])
    # Neighbours of (1): sessions 0 (|3|: 1/sqrt3), 1 (|2|: 1/sqrt2), 3 (|2|: 1/sqrt2).
    assert s[2] == pytest.approx(1 / np.sqrt(3) + 1 / np.sqrt(2))
    assert s[3] == pytest.approx(1 / np.sqrt(3)) and s[4] == pytest.approx(1 / np.sqrt(2))
    assert s[5] == 0  # no neighbour holds it and it has no training support
    after3 = scores_after(SessionKNN(SessionKnnConfig()).fit(TRAIN), [3])  # neighbours: sessions 0 and 2
    assert 0 < after3[4] < after3[1]  # item 4: popularity back-off, below every neighbour item
    top2 = scores_after(SessionKNN(SessionKnnConfig(neighbours=2)).fit(TRAIN), [1])
    assert top2[2] == pytest.approx(1 / np.sqrt(2)) and top2[3] < top2[4]  # session 0 is not kept
    recent = scores_after(SessionKNN(SessionKnnConfig(sample=1)).fit(TRAIN), [1])
    assert recent[4] == pytest.approx(1 / np.sqrt(2)) and recent[2] < recent[4]  # only session 3 sampled


def two_group_sessions(n: int, seed: int = 0) -> SessionDataset:
    """Return sessions each drawing 3 items from one of the groups {1,2,3} and {4,5,6}."""
    rng = np.random.default_rng(seed)
    groups = [np.array([1, 2, 3]), np.array([4, 5, 6])]
    return make_sessions([list(rng.permutation(groups[i % 2])) for i in range(n)], n_items=6)


BPR_CFG = BprMfConfig(factors=8, lr=0.1, epochs=30, batch_size=64, reg=1e-4, seed=3)


def test_bprmf_session_score_is_the_averaged_item_factors():
    model = BPRMF(BPR_CFG).fit(two_group_sessions(40))
    q, b = model.item_factors, model.item_bias
    steps = list(model.score_steps(np.array([[1, 5, 2]]), np.array([3])))
    expected = (q[[1, 5, 2]].mean(0) @ q.T + b).numpy()
    np.testing.assert_allclose(steps[2][0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(steps[0][0], (q[1] @ q.T + b).numpy(), rtol=1e-5, atol=1e-6)


def test_bprmf_ranks_the_cooccurring_item_first_and_is_deterministic():
    train = two_group_sessions(200)
    model = BPRMF(BPR_CFG).fit(train)
    assert model.losses[-1] < model.losses[0]
    for prefix, group in (([1], {2, 3}), ([5], {4, 6})):
        s = scores_after(model, prefix)
        s[prefix] = -np.inf  # the seen item aside, the best item is from the same group
        assert order_of(s)[0] in group
        assert set(order_of(s)[:2]) == group
    again = BPRMF(BPR_CFG).fit(train)
    assert torch.equal(model.item_factors, again.item_factors)


@pytest.mark.parametrize(
    "model",
    [Popularity(), SessionPopularity(), Markov(), ItemKNN(ItemKnnConfig(neighbours=2)), SessionKNN(SessionKnnConfig()),
     BPRMF(BprMfConfig(factors=4, epochs=2))],
    ids=lambda m: m.name,
)
def test_state_dict_round_trips_through_a_safe_checkpoint(model, tmp_path):
    model.fit(TRAIN)
    save_checkpoint(model.state_dict(), tmp_path / "model.pt")
    restored = type(model).from_state_dict(load_checkpoint(tmp_path / "model.pt"))
    items, lengths = np.array([[1, 2, 3], [4, 0, 0]]), np.array([3, 1])
    for a, b in zip(model.score_steps(items, lengths), restored.score_steps(items, lengths)):
        np.testing.assert_array_equal(a, b)


def test_scoring_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="markov: score called before fit"):
        scores_after(Markov(), [1])


@pytest.mark.skipif(not YOOCHOOSE.exists(), reason=f"real data not found at {YOOCHOOSE}")
def test_yoochoose_reference_figures_for_popularity_and_markov():
    from seqrec.data.importers import import_gru4rec_tsv
    from seqrec.evaluation.splits import split_presplit

    split = split_presplit(
        import_gru4rec_tsv(YOOCHOOSE / "yoochoose-clicks-100k_train_full.txt"),
        import_gru4rec_tsv(YOOCHOOSE / "yoochoose-clicks-100k_test.txt"),
        valid_share_days=None,
    )
    cfg = EvaluationConfig(cutoffs=(20,))
    # GRU4REC.md: 10,152 prediction points over 2,933 items; Popularity 0.0894 / 0.0264, Markov 0.5907 / 0.3430.
    for model, recall, mrr in ((Popularity(), 0.0894, 0.0264), (Markov(), 0.5907, 0.3430)):
        result = evaluate_model(model.fit(split.train_full), split.test, cfg)
        assert (result.n_targets, result.protocol["catalogue_size"]) == (10_152, 2_933)
        assert result.metrics["recall@20"] == pytest.approx(recall, abs=5e-5)
        assert result.metrics["mrr@20"] == pytest.approx(mrr, abs=5e-5)


@pytest.mark.parametrize(
    "model",
    [Popularity(), SessionPopularity(), Markov(), ItemKNN(ItemKnnConfig()), SessionKNN(SessionKnnConfig()),
     BPRMF(BprMfConfig(factors=4, epochs=2))],
    ids=lambda m: m.name,
)
def test_score_last_equals_the_last_step_of_score_steps(model):
    model.fit(TRAIN)
    items, lengths = np.array([[1, 2, 3, 2], [4, 0, 0, 0], [3, 1, 0, 0]]), np.array([4, 1, 2])
    steps = list(model.score_steps(items, lengths))
    last = model.score_last(items, lengths)
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(last[row, 1:], steps[n - 1][row, 1:], rtol=1e-5, atol=1e-6)  # column 0: padding


def test_a_suspended_score_generator_leaves_grad_mode_alone():
    model = BPRMF(BprMfConfig(factors=4, epochs=1)).fit(TRAIN)
    steps = model.score_steps(np.array([[1, 2]]), np.array([2]))
    next(steps)  # suspended mid-way, as zip() or an early stop leaves it
    assert torch.is_grad_enabled()
