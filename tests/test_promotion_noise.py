"""Promotion does not follow noise: GRU4Rec trained twice on the same data with different seeds is not promoted over
itself in either direction, while a model that is really better is."""

from __future__ import annotations

import numpy as np
import pytest

from seqrec.config import EvaluationConfig, Gru4RecConfig, TrainingConfig
from seqrec.evaluation.metrics import evaluate_model
from seqrec.models.baselines import Popularity
from seqrec.models.gru4rec import GRU4Rec
from seqrec.sequences import ItemVocab, SessionDataset
from seqrec.serving import registry as R

N_ITEMS, LENGTH = 120, 6
METRIC = "mrr@20"  # the next item is one of three: every model hits in its top 20, the order is what they learn


def sessions(n: int, seed: int, vocab: ItemVocab) -> SessionDataset:
    """Return ``n`` sessions where the next item is the previous plus 1-3 (mod the catalogue): learnable, not certain."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, N_ITEMS, n)
    steps = np.cumsum(rng.integers(1, 4, (n, LENGTH)), axis=1) - 1
    items = ((starts[:, None] + steps) % N_ITEMS + 1).reshape(-1).astype(np.int64)
    return SessionDataset(vocab, np.arange(0, n * LENGTH + 1, LENGTH), items, np.arange(n * LENGTH), np.arange(n))


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    """Return per-target validation ranks of two GRU4Rec seeds and of Popularity, written as .npy files."""
    vocab = ItemVocab(np.array(["<pad>"] + [str(i) for i in range(N_ITEMS)], dtype=object))
    train, valid = sessions(3000, 0, vocab), sessions(400, 1, vocab)
    cfg = EvaluationConfig(cutoffs=(20,))
    out, tmp = {}, tmp_path_factory.mktemp("ranks")
    models = {f"seed{s}": GRU4Rec(Gru4RecConfig(epochs=3, hidden=32, batch_size=32, n_sample=64),
                                  TrainingConfig(device="cpu", progress=False, seed=s)) for s in (0, 1)}
    models["popularity"] = Popularity()
    for name, model in models.items():
        result = evaluate_model(model.fit(train), valid, cfg, lists=False)
        np.save(tmp / f"{name}.npy", result.target_ranks)
        out[name] = (str(tmp / f"{name}.npy"), result.metrics)
    return out


def decide(tmp_path, ranked, current: str, candidate: str) -> dict:
    """Register ``current`` (promoted) then ``candidate`` compared with it; return the promotion decision."""
    reg = tmp_path / "registry"
    model = tmp_path / "m.pt"
    model.write_bytes(b"weights")
    R.register_version(reg, [model], current, {}, "d", ranked[current][1], "v", None, ranked[current][0])
    R.promote_if_better(reg, "v0001", METRIC)
    seen = {"version": "v0001", "metrics": ranked[current][1], "valid_fingerprint": "v", "ranks": ranked[current][0]}
    R.register_version(reg, [model], candidate, {}, "d", ranked[candidate][1], "v", seen, ranked[candidate][0])
    R.promote_if_better(reg, "v0002", METRIC)
    return R.read_version(reg, "v0002").meta["promotion"]


@pytest.mark.parametrize("current, candidate", [("seed0", "seed1"), ("seed1", "seed0")])
def test_another_seed_is_not_promoted_over_the_same_model(tmp_path, ranked, current, candidate):
    decision = decide(tmp_path, ranked, current, candidate)
    assert not decision["promoted"], decision
    assert decision["p_value"] > 0.05 or decision["difference"] <= 0


def test_a_really_better_model_is_promoted(tmp_path, ranked):
    decision = decide(tmp_path, ranked, "popularity", "seed0")
    assert decision["promoted"] and decision["p_value"] < 0.001 and decision["difference"] > 0.1, decision
