"""The report's analyses on tiny tables with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from seqrec.evaluation.analysis import beyond_accuracy, bootstrap_interval, classification_view, gini, paired_test


def test_classification_view_macro_averages_over_targets_and_predictions():
    # targets 1, 1, 2, 3; top-1 predictions 1, 2, 2, 2: hits on the first and third
    view = classification_view(np.array([1, 2, 1, 3]), np.array([1, 1, 2, 3]), np.array([1, 2, 2, 2]))
    assert view["accuracy"] == 0.5 and view["items"] == 3
    assert view["macro_precision"] == pytest.approx((1 + 1 / 3 + 0) / 3)  # item 2 predicted 3 times, right once
    assert view["macro_recall"] == pytest.approx((1 / 2 + 1 + 0) / 3)  # item 1 a target twice, found once


@pytest.mark.parametrize("counts, expected", [([1, 1, 1, 1], 0.0), ([0, 0, 0, 4], 0.75), ([0, 1, 1, 2], 0.375), ([], 0.0)])
def test_gini_of_recommendation_counts(counts, expected):
    assert gini(np.array(counts)) == pytest.approx(expected)


def test_beyond_accuracy_of_two_lists():
    support = np.array([0, 10, 5, 0, 1])  # padding, then 4 items
    out = beyond_accuracy(np.array([[1, 2], [1, 3]]), support)
    assert out["k"] == 2 and out["coverage"] == 0.75 and out["gini"] == pytest.approx(0.375)
    assert out["popularity_percentile"] == pytest.approx((1 + 0.75 + 1 + 0.25) / 4)
    p = np.array([11, 6, 1, 2]) / 20  # (support + 1) / (events + items)
    assert out["novelty"] == pytest.approx(-np.log2(p[[0, 1, 0, 2]]).mean())


def test_bootstrap_interval_contains_the_mean_and_shrinks_to_a_constant():
    values = np.random.default_rng(1).random(500)
    lo, hi = bootstrap_interval(values)
    assert lo < values.mean() < hi and hi - lo < 0.1
    assert bootstrap_interval(np.full(50, 0.3)) == pytest.approx((0.3, 0.3))


def test_paired_test_on_identical_models_gives_p_one_and_a_real_gap_a_small_p():
    a = np.random.default_rng(2).random(300)
    same = paired_test(a, a.copy())
    assert same["p_value"] == 1.0 and same["mean_difference"] == 0.0
    better = paired_test(a + 0.05, a)
    assert better["p_value"] < 0.01 and better["mean_difference"] == pytest.approx(0.05)
    assert better["ci_low"] == pytest.approx(0.05) and better["ci_high"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="same targets"):
        paired_test(a, a[:10])
