"""GRU4Rec: batching, sampling, losses, embeddings, training, scoring, saving and resuming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.config import Gru4RecConfig, TrainingConfig
from seqrec.io import load_checkpoint, save_checkpoint
from seqrec.config import EvaluationConfig
from seqrec.evaluation.metrics import make_validator
from seqrec.models.gru4rec import (GRU4Rec, bpr_loss, bpr_max_loss, cross_entropy_loss, logq_correction,
                                   top1_loss, top1_max_loss)
from seqrec.models.gru4rec_batches import SampleStore, build_session_parallel_batches
from seqrec.sequences import ItemVocab, SessionDataset

torch.set_num_threads(1)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "yoochoose_rsc15_100k"
TRAIN = TrainingConfig(device="cpu", progress=False, seed=0, patience=0, threads=1)
SMALL = Gru4RecConfig(hidden=16, batch_size=8, n_sample=8, sample_store=1000, epochs=4, lr=0.1, dropout_hidden=0.0)


def make_dataset(sessions: list[list[int]], n_items: int) -> SessionDataset:
    """Return a SessionDataset of the given dense-item sessions over items 1..n_items."""
    vocab = ItemVocab(np.array(["<pad>"] + [f"i{k}" for k in range(1, n_items + 1)], dtype=object))
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sessions])]).astype(np.int64)
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions])
    return SessionDataset(vocab, offsets, items, np.arange(len(items), dtype=np.int64), np.arange(len(sessions)))


def cycle_sessions(n: int, n_items: int = 12, seed: int = 0) -> SessionDataset:
    """Return n sessions walking the deterministic cycle 1 -> 2 -> ... -> n_items -> 1."""
    rng = np.random.default_rng(seed)
    sessions = []
    for _ in range(n):
        start, length = rng.integers(1, n_items + 1), rng.integers(3, 8)
        sessions.append([(start - 1 + k) % n_items + 1 for k in range(length)])
    return make_dataset(sessions, n_items)


def hit_rate_at_1(score_fn, data: SessionDataset) -> float:
    """Return the share of next-item targets scored highest (the test's own tiny evaluation)."""
    items, lengths = data.padded(np.arange(data.n_sessions))
    hits = []
    for t, scores in enumerate(score_fn(items, lengths)):
        rows = np.flatnonzero(lengths > t + 1)
        if len(rows):
            hits.extend(scores[rows].argmax(1) == items[rows, t + 1])
    return float(np.mean(hits))


# --------------------------------------------------------------------------- batching and sampling
def test_session_parallel_batches_slots_resets_and_tail():
    # sessions: A=[1,2,3], B=[4,5], C=[6] (no pair), D=[7,8,9,10], E=[11,12]; 2 slots
    data = make_dataset([[1, 2, 3], [4, 5], [6], [7, 8, 9, 10], [11, 12]], 12)
    plan = build_session_parallel_batches(data, 2)
    assert plan.inputs.tolist() == [[1, 4], [2, 7], [11, 8]]  # slot 1: B ends, D takes it; slot 0: A ends, E
    assert plan.targets.tolist() == [[2, 5], [3, 8], [12, 9]]
    assert plan.resets.tolist() == [[True, True], [False, True], [True, False]]
    # E ends after step 2 and no session is left: the epoch stops, D's last pair 9 -> 10 is unused
    assert (plan.short_sessions, plan.unused_pairs) == (1, 1)


def test_session_parallel_batches_need_enough_sessions():
    with pytest.raises(ValueError, match="2 sessions of length >= 2 cannot fill batch_size=3"):
        build_session_parallel_batches(make_dataset([[1, 2], [3], [2, 3]], 3), 3)


def test_sample_store_follows_support_power_alpha():
    support = np.array([0, 1, 4, 9, 16, 0])  # alpha 0.5 -> weights 1, 2, 3, 4 (item 5 unseen)
    store = SampleStore(support, alpha=0.5, size=50_000, n=1000, seed=(0, 0))
    draws = torch.cat([store.take() for _ in range(200)]).numpy()  # 4 refills of the store
    freq = np.bincount(draws, minlength=6) / len(draws)
    np.testing.assert_allclose(freq, [0, 0.1, 0.2, 0.3, 0.4, 0], atol=0.005)
    uniform = SampleStore(support, alpha=0.0, size=10, n=4, seed=(0, 1))
    assert set(torch.cat([uniform.take() for _ in range(50)]).tolist()) == {1, 2, 3, 4}


def test_logq_correction_uses_support_for_batch_and_power_for_samples():
    log_support = torch.log(torch.tensor([1.0, 1.0, 2.0, 4.0, 8.0, 16.0]))
    corr = logq_correction(log_support, torch.tensor([3, 1, 5, 5, 2]), n_batch=2, logq=1.0, alpha=0.5)
    expected = [np.log(4), 0.0, 0.5 * np.log(16), 0.5 * np.log(16), 0.5 * np.log(2)]
    np.testing.assert_allclose(corr.numpy(), expected, atol=1e-6)


# --------------------------------------------------------------------------- losses
SCORES = np.array([[2.0, 0.5, -1.0, 0.3, 1.5], [0.1, -0.4, 0.9, 0.0, -2.0], [1.0, 1.0, 1.0, -0.5, 0.7]])


def negatives(i: int) -> np.ndarray:
    """Return row i's negative scores (all columns but i)."""
    return np.delete(SCORES[i], i)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_cross_entropy_with_logq_matches_numpy():
    corr = np.array([0.2, -0.1, 0.5, 1.0, 0.0])
    got = cross_entropy_loss(torch.tensor(SCORES), torch.tensor(corr)).numpy()
    o = SCORES - corr
    want = [-(o[i, i] - np.log(np.exp(o[i]).sum())) for i in range(3)]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(cross_entropy_loss(torch.tensor(SCORES)).numpy(), want, atol=1e-3)  # logQ matters


def test_bpr_max_and_top1_max_match_numpy():
    bpr_max, top1_max = [], []
    for i in range(3):
        neg = negatives(i)
        s = np.exp(neg) / np.exp(neg).sum()
        bpr_max.append(-np.log((s * sigmoid(SCORES[i, i] - neg)).sum()) + 0.7 * (s * neg**2).sum())
        top1_max.append((s * (sigmoid(neg - SCORES[i, i]) + sigmoid(neg**2))).sum())
    np.testing.assert_allclose(bpr_max_loss(torch.tensor(SCORES), bpreg=0.7).numpy(), bpr_max, atol=1e-6)
    np.testing.assert_allclose(top1_max_loss(torch.tensor(SCORES)).numpy(), top1_max, atol=1e-6)


def test_bpr_and_top1_match_numpy():
    bpr = [np.mean(-np.log(sigmoid(SCORES[i, i] - negatives(i)))) for i in range(3)]
    top1 = [np.mean(sigmoid(negatives(i) - SCORES[i, i]) + sigmoid(negatives(i) ** 2)) for i in range(3)]
    np.testing.assert_allclose(bpr_loss(torch.tensor(SCORES)).numpy(), bpr, atol=1e-6)
    np.testing.assert_allclose(top1_loss(torch.tensor(SCORES)).numpy(), top1, atol=1e-6)


# --------------------------------------------------------------------------- network
def test_constrained_embedding_is_the_output_matrix_and_updates_touch_used_rows():
    data = cycle_sessions(20)
    model = GRU4Rec(SMALL.model_copy(update={"epochs": 1, "n_sample": 0}), TRAIN)
    net = model.build_net(data.vocab)
    assert net.input_weights().data_ptr() == net.Wy.data_ptr() == net.Wyb.data_ptr()  # views of one matrix
    before = net.Wy.detach().clone()
    model.hidden, model.log_support = torch.zeros(1, 2, 16), torch.zeros(13)
    opt = model.make_optimizer()
    loss, _ = model.train_step((torch.tensor([5, 9]), torch.tensor([6, 10]), torch.tensor([True, True]), torch.zeros(0, dtype=torch.int64)))
    loss.backward()
    opt.step()
    changed = set(np.flatnonzero((net.Wy.detach() != before).any(1).numpy()))
    assert changed == {5, 9, 6, 10}  # input rows (5, 9: tied) and output rows only
    bias_changed = set(np.flatnonzero((net.By.detach()[:, 0] != 0).numpy()))
    assert bias_changed == {6, 10}  # the bias column moves only where it has a gradient: the output rows


@pytest.mark.parametrize("embedding", ["onehot", "separate", "constrained"])
def test_score_steps_equals_a_reference_gru_prefix_by_prefix(embedding):
    data = cycle_sessions(30)
    cfg = SMALL.model_copy(update={"embedding": embedding, "embedding_dim": 6, "epochs": 1})
    model = GRU4Rec(cfg, TRAIN).fit(data)
    net = model.net
    cell = torch.nn.GRUCell(3 * 16 if embedding == "onehot" else net.input_weights().shape[1], 16)
    with torch.no_grad():  # torch's GRUCell, gates stacked as (r, z, n) rows: our (in, 3h) matrices transposed
        cell.weight_ih.copy_(torch.eye(48) if embedding == "onehot" else net.W_ih[0].T)
        cell.weight_hh.copy_(net.W_hh[0].T), cell.bias_ih.copy_(net.b_ih[0]), cell.bias_hh.copy_(net.b_hh[0])
    items, lengths = np.array([[3, 4, 5, 6], [7, 8, 0, 0]]), np.array([4, 2])
    for t, scores in enumerate(model.score_steps(items, lengths)):
        h = torch.zeros(2, 16)
        with torch.no_grad():
            for k in range(t + 1):  # the whole prefix again, from a zero state
                h = cell(net.input_weights()[torch.as_tensor(items[:, k])], h)
            want = (h @ net.Wy.T + net.By.T).numpy()
        assert np.isneginf(scores[:, 0]).all()
        np.testing.assert_allclose(scores[:, 1:], want[:, 1:], atol=1e-5)


# --------------------------------------------------------------------------- training
def test_training_learns_cycles_and_beats_popularity():
    train, test = cycle_sessions(300, seed=0), cycle_sessions(40, seed=1)
    model = GRU4Rec(SMALL, TRAIN).fit(train)
    # learnt within epoch 1; the floor stays > 0 because of duplicate items among the 8 + 8 outputs
    assert model.history.loss[-1] < model.history.loss[0] - 0.1
    support = train.item_support().astype(float)
    popularity = lambda items, lengths: (np.tile(support, (len(items), 1)) for _ in range(items.shape[1]))  # noqa: E731
    gru, pop = hit_rate_at_1(model.score_steps, test), hit_rate_at_1(popularity, test)
    assert gru > 0.95 and pop < 0.2  # the next item is always the cycle's successor


@pytest.mark.parametrize("loss,act", [("bpr-max", "elu"), ("top1-max", "linear"), ("bpr", "tanh"), ("top1", "linear")])
def test_every_loss_trains(loss, act):
    train = cycle_sessions(300, seed=0)
    cfg = SMALL.model_copy(update={"loss": loss, "final_act": act, "elu_param": 0.5, "bpreg": 0.5, "logq": 0.0, "n_sample": 16})
    model = GRU4Rec(cfg, TRAIN).fit(train)
    assert model.history.loss[-1] < model.history.loss[0]
    assert hit_rate_at_1(model.score_steps, cycle_sessions(40, seed=1)) > 0.8


def test_two_layer_onehot_gru_trains():
    model = GRU4Rec(SMALL.model_copy(update={"layers": 2, "embedding": "onehot"}), TRAIN).fit(cycle_sessions(300))
    assert hit_rate_at_1(model.score_steps, cycle_sessions(40, seed=1)) > 0.8


def test_adamw_with_dense_gradients_trains():
    cfg = SMALL.model_copy(update={"optimizer": "adamw", "lr": 0.01, "embedding": "separate"})
    model = GRU4Rec(cfg, TRAIN).fit(cycle_sessions(300))
    assert hit_rate_at_1(model.score_steps, cycle_sessions(40, seed=1)) > 0.8


def test_fit_with_validation_records_the_metric():
    model = GRU4Rec(SMALL.model_copy(update={"epochs": 2}), TRAIN)
    model.fit(cycle_sessions(200), make_validator(model, cycle_sessions(30, seed=2), EvaluationConfig(), "recall@20"))
    assert len(model.history.valid_metric) == 2 and model.history.valid_metric[-1] > 0.5
    assert model.history.best_epoch in (0, 1)


def test_init_item_embeddings_warm_starts_the_tied_matrix():
    data = cycle_sessions(20)
    matrix = np.arange(13 * 16, dtype=float).reshape(13, 16)
    model = GRU4Rec(SMALL.model_copy(update={"init_projection": "error"}), TRAIN)
    assert model.init_item_embeddings(matrix, data.vocab) == 12
    w = model.net.Wy.detach().numpy()
    assert np.corrcoef(w[1:].ravel(), matrix[1:].ravel())[0, 1] > 0.999  # copied up to the init's scale
    with pytest.raises(ValueError, match="pretrained dim 8 != model embedding dim 16"):
        model.init_item_embeddings(np.ones((13, 8)), data.vocab)


# --------------------------------------------------------------------------- saving and resuming
def test_state_dict_round_trip_through_a_weights_only_checkpoint(tmp_path):
    data = cycle_sessions(50)
    model = GRU4Rec(SMALL.model_copy(update={"epochs": 1}), TRAIN).fit(data)
    save_checkpoint(model.state_dict(), tmp_path / "gru.pt")
    loaded = GRU4Rec.from_state_dict(load_checkpoint(tmp_path / "gru.pt"))
    items, lengths = data.padded(np.arange(5))
    np.testing.assert_array_equal(loaded.score_last(items, lengths), model.score_last(items, lengths))
    assert list(loaded.vocab.ids) == list(data.vocab.ids) and loaded.cfg == model.cfg


class CrashingGRU4Rec(GRU4Rec):
    """Raises inside training step number ``crash_at`` (a simulated kill)."""

    crash_at = 0

    def train_step(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        return super().train_step(batch)


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    data = cycle_sessions(120)
    cfg = SMALL.model_copy(update={"epochs": 2, "dropout_hidden": 0.3})  # dropout: RNG must be restored
    training = TRAIN.model_copy(update={"checkpoint_every_steps": 10})
    ref = GRU4Rec(cfg, training, checkpoint_path=tmp_path / "ref.pt").fit(data)
    steps = ref.batch_stats["steps"]
    crashing = CrashingGRU4Rec(cfg, training, checkpoint_path=tmp_path / "run.pt")
    crashing.crash_at = steps + 15  # epoch 2, 5 steps after its checkpoint at step 10
    with pytest.raises(KeyboardInterrupt):
        crashing.fit(data)
    assert load_checkpoint(tmp_path / "run.pt")["loop"]["step"] == 10
    resumed = GRU4Rec(cfg, training, checkpoint_path=tmp_path / "run.pt").fit(data)
    for name, ref_value in ref.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[name], ref_value, atol=1e-6, rtol=0)
    np.testing.assert_allclose(resumed.history.loss, ref.history.loss, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (AMP path)")
def test_cuda_amp_training_and_scoring():
    model = GRU4Rec(SMALL, TRAIN.model_copy(update={"device": "cuda", "amp": True})).fit(cycle_sessions(300))
    assert hit_rate_at_1(model.score_steps, cycle_sessions(40, seed=1)) > 0.9


@pytest.mark.skipif(not DATA.exists(), reason=f"real data not found at {DATA}")
def test_one_epoch_on_yoochoose_sample_is_far_above_popularity():
    from seqrec.config import EvaluationConfig
    from seqrec.evaluation.metrics import evaluate_model
    from seqrec.data.importers import import_gru4rec_tsv
    from seqrec.sequences import build_sessions

    train, _ = build_sessions(import_gru4rec_tsv(DATA / "yoochoose-clicks-100k_train_full.txt"))
    test, _ = build_sessions(import_gru4rec_tsv(DATA / "yoochoose-clicks-100k_test.txt"), train.vocab)
    model = GRU4Rec(Gru4RecConfig(epochs=1, n_sample=512), TRAIN).fit(train)
    recall = evaluate_model(model, test, EvaluationConfig(cutoffs=(20,)), targets="all").metrics["recall@20"]
    assert recall > 0.4  # popularity: 0.089 (GRU4REC.md); 10 epochs reach ~0.68


@pytest.mark.parametrize("embedding,layers", [("constrained", 1), ("separate", 2), ("onehot", 1)])
def test_score_last_equals_the_last_step_of_score_steps(embedding, layers):
    # score_last runs the whole sequence in one torch.gru call (one step at a time for onehot)
    cfg = SMALL.model_copy(update={"embedding": embedding, "embedding_dim": 6, "layers": layers, "epochs": 1})
    model = GRU4Rec(cfg, TRAIN).fit(cycle_sessions(60))
    items, lengths = np.array([[3, 4, 5, 6], [7, 8, 0, 0], [2, 0, 0, 0]]), np.array([4, 2, 1])
    steps = list(model.score_steps(items, lengths))
    want = np.stack([steps[n - 1][row] for row, n in enumerate(lengths)])
    np.testing.assert_allclose(model.score_last(items, lengths), want, rtol=1e-5, atol=1e-5)
