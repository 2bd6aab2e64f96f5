"""Ranks, tie rules, metrics and the evaluation loop on hand-made scores with known answers."""

from __future__ import annotations

import json
import math
from typing import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqrec.config import EvaluationConfig
from seqrec.evaluation.metrics import PADDED_EVENTS_PER_ROW, batch_sessions, evaluate_model, label_popularity, metrics_from_ranks, ranks_from_scores
from seqrec.models.base import Recommender
from seqrec.models.baselines import Popularity
from seqrec.sequences import ItemVocab, SessionDataset

torch.set_num_threads(1)


def make_sessions(sessions: list[list[int]], n_items: int, actions: list[list[str]] | None = None) -> SessionDataset:
    """Return a SessionDataset over items 1..n_items from lists of dense indices."""
    vocab = ItemVocab(np.array(["<pad>"] + [f"i{k}" for k in range(1, n_items + 1)], dtype=object))
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sessions])]).astype(np.int64)
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions])
    acts = None if actions is None else np.concatenate([np.asarray(a, dtype=object) for a in actions])
    return SessionDataset(vocab, offsets, items, np.arange(len(items), dtype=np.int64), np.arange(len(sessions)), acts)


class FixedScores(Recommender):
    """Test model: the same score row for every prefix (a test fixture, not a shipped model)."""

    name = "fixed"

    def __init__(self, row: list[float]) -> None:
        self.row = np.asarray(row, dtype=np.float32)

    def fit(self, train, validate=None) -> "FixedScores":
        return self

    def score_steps(self, items: np.ndarray, lengths: np.ndarray) -> Iterator[np.ndarray]:
        for _ in range(items.shape[1]):
            yield np.tile(self.row, (len(items), 1))


# Column 0 (padding) holds the largest score: it must never count.
SCORES = np.array([[100.0, 0.5, 0.9, 0.9, 0.9, 0.1]], dtype=np.float32)


@pytest.mark.parametrize(
    "target, ties, rank",
    [
        (2, "conservative", 3.0),  # tied with items 3 and 4: all three score >= 0.9
        (2, "optimistic", 1.0),  # nothing strictly higher
        (2, "average", 2.0),
        (1, "conservative", 4.0),  # three items above
        (1, "optimistic", 4.0),
        (5, "conservative", 5.0),  # the lowest of 5 items
    ],
)
def test_ranks_follow_the_tie_rule(target, ties, rank):
    assert ranks_from_scores(SCORES, np.array([target]), ties)[0] == rank


def test_a_unique_top_score_is_rank_one_under_every_rule():
    scores = np.array([[9.0, 0.1, 0.7, 0.2]], dtype=np.float32)
    ranks = [ranks_from_scores(scores, np.array([2]), t)[0] for t in ("conservative", "optimistic", "average")]
    assert ranks == [1, 1, 1]


def test_nan_scores_are_an_error_and_minus_inf_targets_miss():
    with pytest.raises(ValueError, match="NaN"):
        ranks_from_scores(np.array([[0.0, np.nan, 1.0]], dtype=np.float32), np.array([2]), "conservative")
    scores = np.array([[0.0, -np.inf, 1.0]], dtype=np.float32)
    assert ranks_from_scores(scores, np.array([1]), "conservative")[0] == math.inf
    with pytest.raises(ValueError, match="1..2"):
        ranks_from_scores(scores, np.array([0]), "conservative")


def test_metrics_from_ranks_known_values():
    m = metrics_from_ranks(np.array([1.0, 2.0, 3.0, 25.0]), cutoffs=(1, 5, 20))
    assert m["recall@1"] == m["hr@1"] == 0.25
    assert m["recall@5"] == m["recall@20"] == 0.75
    assert m["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 4)
    assert m["mrr@20"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 4)  # rank 25 is truncated to 0
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(4)) / 4)
    assert m["ndcg@1"] == 0.25
    assert metrics_from_ranks(np.array([1.5]), (1, 2))["recall@1"] == 0.0  # an average rank 1.5 is not in the top 1


def test_metrics_from_no_ranks_is_an_error_not_zero():
    with pytest.raises(ValueError, match="no targets"):
        metrics_from_ranks(np.array([]), (20,))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=40))
def test_recall_and_ndcg_do_not_decrease_with_the_cutoff(ranks):
    m = metrics_from_ranks(np.array(ranks, dtype=float), cutoffs=(1, 5, 10, 20, 50))
    for a, b in [(1, 5), (5, 10), (10, 20), (20, 50)]:
        assert m[f"recall@{a}"] <= m[f"recall@{b}"]
        assert m[f"mrr@{a}"] <= m[f"mrr@{b}"]
    assert m["recall@50"] == 1.0


# Training support: item 1: 3, item 2: 2, item 3: 1, item 4: 0 -> popularity ranks 1, 2, 3, 4.
TRAIN = make_sessions([[1, 2], [1, 3], [1, 2]], n_items=4)


def test_evaluate_all_targets_ranks_every_event_after_the_first():
    test = make_sessions([[2, 1, 3], [4, 2], [3]], n_items=4)  # targets 1, 3 | 2 | none
    result = evaluate_model(Popularity().fit(TRAIN), test, EvaluationConfig(cutoffs=(1, 2)))
    assert result.n_targets == 3  # ranks 1, 3, 2
    assert result.metrics["recall@1"] == pytest.approx(1 / 3)
    assert result.metrics["recall@2"] == pytest.approx(2 / 3)
    assert result.metrics["mrr@2"] == pytest.approx((1 + 1 / 2) / 3)
    assert result.protocol["sessions_without_target"] == 1
    assert result.protocol["catalogue_size"] == 4


def test_long_sessions_are_batched_apart_and_results_do_not_depend_on_batching():
    lengths = [200, 3, 150, 2, 1, 40, 5, 2]  # the length-1 session has no target
    rng = np.random.default_rng(0)
    test = make_sessions([list(rng.integers(1, 5, n)) for n in lengths], n_items=4)
    batches = batch_sessions(test, batch_size=4)  # budget: 4 x PADDED_EVENTS_PER_ROW padded events
    assert [b.tolist() for b in batches] == [[0], [2], [5], [6, 1, 3, 7]]  # longest first, long ones alone
    assert all(len(b) * test.lengths[b].max() <= max(4 * PADDED_EVENTS_PER_ROW, test.lengths[b].max()) for b in batches)
    small = evaluate_model(Popularity().fit(TRAIN), test, EvaluationConfig(batch_size=4)).metrics
    large = evaluate_model(Popularity().fit(TRAIN), test, EvaluationConfig(batch_size=512)).metrics
    assert small == pytest.approx(large, rel=1e-12)


def test_evaluate_last_target_only():
    test = make_sessions([[2, 1, 3], [4, 2]], n_items=4)  # targets 3 (rank 3) and 2 (rank 2)
    result = evaluate_model(Popularity().fit(TRAIN), test, EvaluationConfig(cutoffs=(2, 3)), targets="last")
    assert result.n_targets == 2
    assert result.metrics["recall@2"] == 0.5
    assert result.metrics["mrr@3"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert result.protocol["targets"] == "last"
    loo = evaluate_model(Popularity().fit(TRAIN), test, EvaluationConfig(cutoffs=(2, 3), protocol="loo"))
    assert loo.metrics == result.metrics  # targets=None follows cfg.protocol


def test_exclude_seen_removes_prefix_items_and_a_repeat_target_misses():
    test = make_sessions([[1, 2, 1]], n_items=4)  # target 2 after (1); target 1 after (1, 2): a repeat
    cfg = EvaluationConfig(cutoffs=(1, 4))
    kept = evaluate_model(Popularity().fit(TRAIN), test, cfg, exclude_seen=False)
    assert kept.metrics["mrr@4"] == pytest.approx((1 / 2 + 1) / 2)  # ranks 2 and 1
    excluded = evaluate_model(Popularity().fit(TRAIN), test, cfg, exclude_seen=True)
    assert excluded.metrics["mrr@4"] == pytest.approx((1 + 0) / 2)  # item 1 excluded: 2 -> rank 1; repeat misses
    assert excluded.protocol["repeat_targets_excluded"] == 1
    assert excluded.protocol["exclude_seen"] is True


def test_evaluate_breaks_ties_through_the_whole_loop():
    test = make_sessions([[1, 2]], n_items=5)
    model = FixedScores([100.0, 0.5, 0.9, 0.9, 0.9, 0.1])  # target 2 tied with 3 and 4
    ranks = {t: evaluate_model(model, test, EvaluationConfig(ties=t, cutoffs=(3,))).metrics["mrr@3"] for t in
             ("conservative", "optimistic", "average")}
    assert ranks == pytest.approx({"conservative": 1 / 3, "optimistic": 1.0, "average": 1 / 2})


def test_evaluate_names_the_model_when_scores_are_nan():
    test = make_sessions([[1, 2]], n_items=3)
    with pytest.raises(ValueError, match="evaluate fixed on sessions.*NaN"):
        evaluate_model(FixedScores([0.0, 1.0, np.nan, 0.5]), test, EvaluationConfig())


def test_evaluate_without_targets_is_an_error():
    with pytest.raises(ValueError, match="fixed.*2 or more events"):
        evaluate_model(FixedScores([0.0, 1.0, 2.0]), make_sessions([[1], [2]], n_items=2), EvaluationConfig())


def test_breakdowns_by_action_length_position_and_popularity():
    test = make_sessions([[2, 1, 3], [4, 2]], n_items=4, actions=[["view", "view", "click"], ["view", "click"]])
    result = evaluate_model(
        Popularity().fit(TRAIN), test, EvaluationConfig(cutoffs=(1,)), train_support=TRAIN.item_support()
    )
    b = result.breakdowns  # targets: 1 (rank 1, view), 3 (rank 3, click), 2 (rank 2, click)
    assert b["action"]["view"] == {"n_targets": 1, "recall@1": 1.0, "hr@1": 1.0, "mrr@1": 1.0, "ndcg@1": 1.0}
    assert b["action"]["click"]["n_targets"] == 2 and b["action"]["click"]["recall@1"] == 0.0
    assert b["session_length"]["<3"]["n_targets"] == 1 and b["session_length"][">=3"]["n_targets"] == 2
    assert b["prefix_length"]["1"]["n_targets"] == 2 and b["prefix_length"]["2"]["n_targets"] == 1
    assert b["target"]["new"]["n_targets"] == 3 and "repeat" not in b["target"]  # no target is in its prefix
    # 4 items, top 20% = 1 item: item 1 (support 3) is head; items 2, 3 tail; item 4 unseen.
    assert b["popularity"]["head"] == {"n_targets": 1, "recall@1": 1.0, "hr@1": 1.0, "mrr@1": 1.0, "ndcg@1": 1.0}
    assert b["popularity"]["tail"]["n_targets"] == 2
    json.dumps(result.to_dict())  # the whole result is JSON-safe


def test_breakdown_by_repeat_or_new_target():
    test = make_sessions([[2, 1, 2], [3, 3]], n_items=4)  # targets: 1 (new), 2 (repeat), 3 (repeat)
    b = evaluate_model(Popularity().fit(TRAIN), test, EvaluationConfig(cutoffs=(1,))).breakdowns["target"]
    assert b["repeat"]["n_targets"] == 2 and b["new"] == {"n_targets": 1, "recall@1": 1.0, "hr@1": 1.0, "mrr@1": 1.0, "ndcg@1": 1.0}
    assert b["repeat"]["recall@1"] == 0.0  # item 1 is the most popular: ranks first every time


def test_label_popularity_head_tail_unseen():
    support = np.array([0, 10, 10, 5, 1, 0, 0, 0, 0, 0, 0])  # 10 items: the top 20% = 2 items (10, 10)
    assert list(label_popularity(support, np.array([1, 2, 3, 4, 5]))) == ["head", "head", "tail", "tail", "unseen"]


def test_sampled_mode_is_labelled_seeded_and_ranks_among_few_candidates():
    test = make_sessions([[1, 2], [3, 4, 2]], n_items=30)
    model = FixedScores([0.0] + [float(k) for k in range(1, 31)])  # item k scores k
    cfg = EvaluationConfig(candidates="sampled", n_negatives=5, cutoffs=(1, 6))
    result = evaluate_model(model, test, cfg)
    assert result.protocol["protocol"].startswith("SAMPLED (5 negatives) - not comparable with full ranking")
    assert result.metrics["recall@6"] == 1.0  # at most 6 candidates
    assert evaluate_model(model, test, cfg).metrics == result.metrics  # same seed, same draw
    full = evaluate_model(model, test, cfg.model_copy(update={"candidates": "full"}))
    assert full.metrics["recall@6"] == 0.0  # item 2 is rank 29, item 4 rank 27 over 30 items
    assert "full ranking over 30 items" in full.protocol["protocol"]


def test_sampled_mode_fails_when_too_few_unseen_items():
    with pytest.raises(ValueError, match="only 1 items are unseen"):
        evaluate_model(FixedScores([0.0, 1.0, 2.0, 3.0]), make_sessions([[1, 2]], n_items=3),
                       EvaluationConfig(candidates="sampled", n_negatives=2))


def test_scores_of_the_wrong_catalogue_size_are_an_error():
    test = make_sessions([[1, 2]], n_items=3)  # catalogue of 3 items: scores need 4 columns
    with pytest.raises(ValueError, match=r"fixed returned scores of shape \(1, 3\), expected \(1, 4\)"):
        evaluate_model(FixedScores([0.0, 1.0, 2.0]), test, EvaluationConfig())


def test_evaluation_reports_classification_beyond_accuracy_and_intervals():
    # every prefix gets the list 3, 1, 2 (padding's high score never counts); targets: 1, 3 (session 1), 2 (session 2)
    test = make_sessions([[2, 1, 3], [1, 2]], n_items=4)
    model = FixedScores([9.0, 0.5, 0.2, 0.9, 0.0])
    support = np.array([0, 8, 4, 2, 0])  # item 4 never seen in training
    result = evaluate_model(model, test, EvaluationConfig(cutoffs=(1, 2)), train_support=support)
    assert result.n_targets == 3 and result.target_ranks.tolist() == [2.0, 3.0, 1.0]  # by step: both first targets, then the next
    assert result.classification == {"accuracy": pytest.approx(1 / 3), "macro_precision": pytest.approx((0 + 0 + 1 / 3) / 3),
                                     "macro_recall": pytest.approx((0 + 0 + 1) / 3), "items": 3}  # top-1 is item 3 each time
    assert result.beyond["k"] == 2 and result.beyond["coverage"] == 0.5  # items 3 and 1 of 4
    assert result.beyond["gini"] == pytest.approx(0.5)  # counts 3, 0, 3, 0
    lo, hi = result.intervals["recall@2"]
    assert lo <= 2 / 3 <= hi and "target_ranks" not in result.to_dict()
    json.dumps(result.to_dict())  # what reports and tasks store stays JSON


def test_breakdowns_by_subdomain_and_cross_domain_transitions(tmp_path):
    from seqrec import io

    test = make_sessions([[2, 1, 3], [1, 2]], n_items=4)
    labels = {"subdomain": np.array(["u2i", "search", "none", "catalog", "search"]),
              "domain": np.array(["marketplace", "retail", "retail", "marketplace", "marketplace"])}
    test = SessionDataset(test.vocab, test.offsets, test.items, test.times, test.session_keys, None, labels)
    test = io.load_sessions(io.save_sessions(test, tmp_path / "t.npz"))  # the labels survive the split files
    b = evaluate_model(FixedScores([9.0, 0.5, 0.2, 0.9, 0.0]), test, EvaluationConfig(cutoffs=(1,))).breakdowns
    # targets: item 1 (search, retail after marketplace), item 3 (none, retail after retail), item 2 (search, same domain)
    assert {g: v["n_targets"] for g, v in b["subdomain"].items()} == {"none": 1, "search": 2}
    assert b["cross_domain"]["cross"]["n_targets"] == 1 and b["cross_domain"]["same"]["n_targets"] == 2
    assert b["cross_domain"]["same"]["recall@1"] == 0.5  # item 3 ranks first, item 2 does not
