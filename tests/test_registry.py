"""Model registry: numbered versions, atomic ``current`` pointer, promotion rule with known answers."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from seqrec.pipeline.registry import VocabAligned
from seqrec.serving import registry as R
from seqrec.models.base import Recommender
from seqrec.sequences import ItemVocab

VALID_FP = "valid-0001"


def model_file(tmp_path: Path, name: str = "markov.pt", content: bytes = b"weights") -> Path:
    """Write a stand-in model file (the registry copies bytes; it never loads them)."""
    path = tmp_path / "models" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


TARGETS = 1000


def ranks_file(tmp_path: Path, recall: float) -> str:
    """Write per-target ranks of 1000 validation targets whose recall@20 is ``recall``: the first hits (rank 1),
    the rest miss (rank 100), so a higher recall hits a superset of a lower one's targets."""
    path = tmp_path / "ranks" / f"{recall:.4f}-{len(list(tmp_path.glob('ranks/*')))}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.where(np.arange(TARGETS) < round(recall * TARGETS), 1, 100))
    return str(path)


def register(registry: Path, tmp_path: Path, recall: float, compared: dict | None = None, model: str = "markov") -> R.ModelVersion:
    """Register a candidate whose validation recall@20 is ``recall`` (with its per-target ranks)."""
    return R.register_version(registry, [model_file(tmp_path, f"{model}.pt")], model, {"models": {"names": [model]}},
                              "data-fp", {"recall@20": recall, "mrr@20": recall / 2}, VALID_FP, compared,
                              ranks_file(tmp_path, recall))


def compared_with(version: str, recall: float, valid_fp: str = VALID_FP, ranks: str | None = None) -> dict:
    """Return the current version's metrics (and per-target ranks) on the candidate's validation data."""
    return {"version": version, "metrics": {"recall@20": recall}, "valid_fingerprint": valid_fp, "ranks": ranks}


def test_register_numbers_versions_and_writes_meta(tmp_path):
    reg = tmp_path / "registry"
    first, second = register(reg, tmp_path, 0.5), register(reg, tmp_path, 0.6, compared_with("v0001", 0.5))
    assert [v.name for v in R.list_versions(reg)] == ["v0001", "v0002"]
    meta = json.loads((reg / "v0002" / "meta.json").read_text())
    assert meta["model"] == "markov" and meta["metrics"]["recall@20"] == 0.6 and meta["data_fingerprint"] == "data-fp"
    assert meta["config"] == {"models": {"names": ["markov"]}} and meta["created"].endswith("+00:00")
    assert second.model_path.read_bytes() == b"weights" and first.model_path.name == "markov.pt"
    assert R.current_version(reg) is None  # registering is not promoting
    assert not [p for p in reg.iterdir() if p.name.startswith(".staging")]


def test_register_missing_file_names_it_and_leaves_no_version(tmp_path):
    reg = tmp_path / "registry"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        R.register_version(reg, [tmp_path / "nope.pt"], "markov", {}, "fp", {"recall@20": 1.0}, VALID_FP)
    assert R.list_versions(reg) == [] and not [p for p in reg.iterdir() if p.name.startswith(".staging")]


@pytest.mark.parametrize(
    "current_recall, candidate_recall, min_gain, promoted, reason",
    [
        (0.50, 0.40, 0.0, False, "not higher"),  # worse candidate: current stays
        (0.50, 0.60, 0.0, True, "paired test says so"),  # 100 more targets hit, none lost: p ~ 0.0005
        (0.50, 0.50, 0.0, False, "not higher"),  # tie: current stays (a new model of the same quality is noise)
        (0.50, 0.505, 0.0, False, "may be noise"),  # 5 more hits of 1000: p ~ 0.06 > 0.05
        (0.50, 0.60, 0.2, False, "below min_gain"),  # real but smaller than asked
    ],
)
def test_promote_if_better(tmp_path, current_recall, candidate_recall, min_gain, promoted, reason):
    reg = tmp_path / "registry"
    register(reg, tmp_path, 0.9)  # v0001's own recall on OLD data must not matter
    assert R.promote_if_better(reg, "v0001")
    seen = compared_with("v0001", current_recall, ranks=ranks_file(tmp_path, current_recall))
    cand = register(reg, tmp_path, candidate_recall, seen)
    assert R.promote_if_better(reg, cand.name, metric="recall@20", min_gain=min_gain) is promoted
    assert R.current_version(reg).name == ("v0002" if promoted else "v0001")
    decision = R.read_version(reg, "v0002").meta["promotion"]
    assert decision["promoted"] is promoted and decision["current"] == "v0001" and reason in decision["reason"]
    assert decision["current_value"] == pytest.approx(current_recall) and decision["targets"] == TARGETS
    assert decision["difference"] == pytest.approx(candidate_recall - current_recall)
    assert decision["ci_low"] <= decision["difference"] <= decision["ci_high"]


def test_promotion_needs_both_rank_files(tmp_path):
    reg = tmp_path / "registry"
    register(reg, tmp_path, 0.5)
    R.promote_if_better(reg, "v0001")
    register(reg, tmp_path, 0.9, compared_with("v0001", 0.5))  # the current's ranks were not kept
    with pytest.raises(R.RegistryError, match="current's per-target validation ranks"):
        R.promote_if_better(reg, "v0002")
    assert R.current_version(reg).name == "v0001"


def test_first_version_is_promoted(tmp_path):
    reg = tmp_path / "registry"
    register(reg, tmp_path, 0.01)
    assert R.promote_if_better(reg, "v0001") and R.current_version(reg).name == "v0001"
    assert (reg / "current").read_text() == "v0001\n"


@pytest.mark.parametrize(
    "compared, message",
    [
        (None, "compared_with is empty"),  # current exists but was not evaluated on the new data
        (compared_with("v0009", 0.1), "compared_with.version='v0009'"),  # compared with a stale current
        (compared_with("v0001", 0.1, "other-valid"), "valid_fingerprint"),  # different validation data
    ],
)
def test_promotion_refuses_comparisons_on_other_data(tmp_path, compared, message):
    reg = tmp_path / "registry"
    register(reg, tmp_path, 0.5)
    R.promote_if_better(reg, "v0001")
    register(reg, tmp_path, 0.9, compared)
    with pytest.raises(R.RegistryError, match=message):
        R.promote_if_better(reg, "v0002")
    assert R.current_version(reg).name == "v0001"


def test_missing_metric_is_an_error_naming_it(tmp_path):
    reg = tmp_path / "registry"
    register(reg, tmp_path, 0.5)
    with pytest.raises(KeyError, match="ndcg@5"):
        R.promote_if_better(reg, "v0001", metric="ndcg@5")
    assert R.current_version(reg) is None


def test_pointer_survives_a_failed_switch(tmp_path, monkeypatch):
    reg = tmp_path / "registry"
    register(reg, tmp_path, 0.5)
    R.set_current(reg, "v0001")
    register(reg, tmp_path, 0.6)

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)  # the rename that would publish the new pointer fails
    with pytest.raises(OSError, match="current"):
        R.set_current(reg, "v0002")
    monkeypatch.undo()
    assert (reg / "current").read_text() == "v0001\n"  # old pointer intact, not half-written
    assert sorted(p.name for p in reg.iterdir()) == [".lock", "current", "v0001", "v0002"]  # no temp file left


def test_pointer_readers_never_see_a_partial_name(tmp_path):
    reg = tmp_path / "registry"
    for recall in (0.5, 0.6):
        register(reg, tmp_path, recall)
    R.set_current(reg, "v0001")
    seen, stop = set(), threading.Event()

    def read_pointer():
        while not stop.is_set():
            seen.add(R.current_version(reg).name)  # raises on a missing or partial pointer

    reader = threading.Thread(target=read_pointer)
    reader.start()
    try:
        for i in range(300):
            R.set_current(reg, ("v0001", "v0002")[i % 2])
    finally:
        stop.set()
        reader.join()
    assert seen <= {"v0001", "v0002"} and seen


def test_set_current_refuses_unknown_version(tmp_path):
    with pytest.raises(R.RegistryError, match="v0007"):
        R.set_current(tmp_path / "registry", "v0007")


def test_select_best_takes_highest_then_first():
    results = [{"model": "a", "metrics": {"recall@20": 0.2}}, {"model": "b", "metrics": {"recall@20": 0.4}},
               {"model": "c", "metrics": {"recall@20": 0.4}}]
    assert R.select_best(results, "recall@20") == 1


class Echo(Recommender):
    """Scores item j with j (its own index); remembers the inputs it was given."""

    name = "echo"

    def __init__(self, ids):
        self.vocab, self.inputs = ItemVocab(np.array(ids, dtype=object)), []

    def fit(self, train, validate=None):
        return self

    def score_steps(self, items, lengths):
        self.inputs.append(items.copy())
        for _ in range(items.shape[1]):
            yield np.tile(np.arange(self.vocab.size + 1, dtype=np.float32), (len(items), 1))


def test_vocab_aligned_maps_inputs_and_scores():
    model = Echo(["<pad>", "a", "b", "c"])
    aligned = VocabAligned(model, ItemVocab(np.array(["<pad>", "b", "c", "d"], dtype=object)))
    scores = aligned.score_last(np.array([[1, 3]]), np.array([2]))  # inputs b, d (d unknown to the model)
    assert model.inputs[0].tolist() == [[2, 0]]  # b -> 2 in the model's vocabulary, d -> padding
    assert scores.tolist() == [[-np.inf, 2.0, 3.0, -np.inf]]  # pad, b, c, d (d: the model cannot recommend it)
