"""GRU4Rec and SASRec on one neural base: the same construction, warm start, saved state and device handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.config import EvaluationConfig, Gru4RecConfig, SasRecConfig, TrainingConfig
from seqrec.evaluation.metrics import make_validator
from seqrec.io import load_checkpoint, save_checkpoint
from seqrec.models.factory import build_model
from seqrec.models.gru4rec import GRU4Rec
from seqrec.models.neural import NeuralRecommender
from seqrec.models.sasrec import SASRec
from seqrec.sequences import ItemVocab, SessionDataset

torch.set_num_threads(1)
TRAIN = TrainingConfig(device="cpu", progress=False, seed=0, patience=0, threads=1)
SECTIONS = {
    "gru4rec": Gru4RecConfig(hidden=16, batch_size=8, n_sample=8, sample_store=1000, epochs=2, lr=0.1, dropout_hidden=0.0),
    "sasrec": SasRecConfig(dim=16, heads=2, ffn=32, blocks=1, max_len=6, dropout=0.0, epochs=2, batch_size=32, lr=1e-2),
}


def cycles(n: int, n_items: int = 12, seed: int = 0) -> SessionDataset:
    """Return ``n`` sessions walking the cycle 1 -> 2 -> ... -> n_items -> 1 from random starts."""
    rng = np.random.default_rng(seed)
    rows = [[(int(s) + i) % n_items + 1 for i in range(int(rng.integers(3, 7)))] for s in rng.integers(0, n_items, n)]
    vocab = ItemVocab(np.array(["<pad>"] + [f"i{j}" for j in range(1, n_items + 1)], dtype=object))
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    items = np.concatenate(rows).astype(np.int64)
    return SessionDataset(vocab, offsets, items, np.arange(len(items), dtype=np.int64), np.arange(n))


@pytest.mark.parametrize("name", ["gru4rec", "sasrec"])
def test_both_models_share_the_base_and_save_their_history(tmp_path, name):
    model = build_model(name, SECTIONS[name], TRAIN)
    assert isinstance(model, NeuralRecommender)
    model.fit(cycles(120), make_validator(model, cycles(30, seed=1), EvaluationConfig(), "recall@5"))
    save_checkpoint(model.state_dict(), tmp_path / "m.pt")
    loaded = type(model).from_state_dict(load_checkpoint(tmp_path / "m.pt"))
    assert loaded.history.to_dict() == model.history.to_dict() and len(loaded.history.valid_metric) == 2
    items, lengths = cycles(5, seed=2).padded(np.arange(5))
    np.testing.assert_allclose(loaded.score_last(items, lengths), model.score_last(items, lengths), rtol=1e-6)


@pytest.mark.parametrize("name", ["gru4rec", "sasrec"])
def test_a_model_trained_on_cuda_loads_on_a_cpu_only_machine(tmp_path, name):
    model = build_model(name, SECTIONS[name], TRAIN).fit(cycles(60))
    state = model.state_dict()
    state["training"] = {**state["training"], "device": "cuda"}  # as a GPU run saves it
    loaded = type(model).from_state_dict(state)
    want = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert loaded.device.type == want.type and next(loaded.net.parameters()).device.type == want.type


@pytest.mark.parametrize("name", ["gru4rec", "sasrec"])
def test_warm_start_has_one_signature_and_sets_the_input_item_vectors(name):
    data = cycles(20)
    model = build_model(name, SECTIONS[name].model_copy(update={"init_projection": "error"}), TRAIN)
    matrix = np.zeros((13, 16))
    matrix[[2, 5, 7]] = np.arange(48, dtype=float).reshape(3, 16)  # three items have a vector, the rest keep their init
    assert model.init_item_embeddings(matrix, data.vocab) == 3
    rows = model.item_embedding().detach().numpy()[[2, 5, 7]]
    assert np.corrcoef(rows.ravel(), matrix[[2, 5, 7]].ravel())[0, 1] > 0.999  # copied up to the init's scale
    with pytest.raises(ValueError, match="other items"):  # the network is built for its vocabulary once
        model.init_item_embeddings(np.zeros((9, 16)), ItemVocab(np.array(["<pad>"] + list("abcdefgh"), dtype=object)))


def test_validation_on_another_vocabulary_is_refused():
    model = GRU4Rec(SECTIONS["gru4rec"], TRAIN)
    other = cycles(30, n_items=10)
    with pytest.raises(ValueError, match="another item vocabulary"):
        model.fit(cycles(120), make_validator(model, other, EvaluationConfig(), "recall@5"))


def test_a_state_of_one_model_does_not_load_as_the_other():
    state = build_model("gru4rec", SECTIONS["gru4rec"], TRAIN).fit(cycles(60)).state_dict()
    with pytest.raises(ValueError, match="state is for model 'gru4rec', not 'sasrec'"):
        SASRec.from_state_dict(state)


def test_neural_models_trained_by_parallel_threads_equal_lone_runs(tmp_path):
    """The flow trains models in parallel threads; torch's RNG is process-wide, so neural fits take turns."""
    from concurrent.futures import ThreadPoolExecutor

    from seqrec.pipeline.models import fit_model

    data, noisy = cycles(200), {"gru4rec": {"dropout_hidden": 0.3}, "sasrec": {"dropout": 0.3}}  # dropout draws from the RNG
    sections = {name: SECTIONS[name].model_copy(update=noisy[name]) for name in SECTIONS}
    lone = {name: fit_model(name, s, TRAIN, tmp_path / f"{name}.ckpt", data, None) for name, s in sections.items()}
    with ThreadPoolExecutor(4) as pool:
        side_by_side = [(name, pool.submit(fit_model, name, s, TRAIN, tmp_path / f"{name}-{i}.ckpt", data, None))
                        for i in range(2) for name, s in sections.items()]
    items, lengths = cycles(8, seed=3).padded(np.arange(8))
    for name, future in side_by_side:
        np.testing.assert_array_equal(future.result().score_last(items, lengths), lone[name].score_last(items, lengths))


def test_logs_get_one_line_per_epoch_instead_of_progress_bars(capsys):
    model = build_model("gru4rec", SECTIONS["gru4rec"], TRAIN.model_copy(update={"progress": True}))
    model.fit(cycles(60))  # pytest's stderr is no terminal: the bars stay off, the epochs are reported
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert [line.split(":")[0] for line in lines] == ["gru4rec epoch 1/2", "gru4rec epoch 2/2"], lines
    assert "events/s" in lines[0] and "valid" not in lines[0]  # no validation given
