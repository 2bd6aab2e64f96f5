"""The approximate index: exact when every list is probed, repeat terms and banned items as the exact path,
recall measured against exact, stored beside the model and rebuilt when the model changes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from seqrec.config import Gru4RecConfig, ServingConfig, TrainingConfig
from seqrec.models.gru4rec import GRU4Rec
from seqrec.models.repeat import RepeatTerm
from seqrec.sequences import ItemVocab, SessionDataset
from seqrec.serving.ann import AnnIndex, tie_aware_recall
from seqrec.serving.ann_backends import lifted_items, lifted_queries
from seqrec.serving.indexes import index_for, index_path, uses_ann
from seqrec.serving.recommend import recommend, save_model
from seqrec.serving.topk import DotProductIndex


def layer(n_items=3000, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_items, dim, generator=g)
    bias = torch.randn(n_items, generator=g) * 0.5
    return weight, bias


def test_lifted_points_nearest_is_best_scored():
    weight, bias = layer(50, 4)
    q0 = torch.randn(3, 4)
    x = lifted_items(weight, bias)
    q = lifted_queries(q0, float(np.linalg.norm(x[0])))
    dist = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # (3, 49)
    scores = (q0 @ weight[1:].T + bias[1:]).numpy()
    assert np.array_equal(dist.argsort(1)[:, :10], (-scores).argsort(1)[:, :10])
    assert np.allclose((x ** 2).sum(1), (x ** 2).sum(1).max(), rtol=1e-5)  # every lifted item on one sphere
    assert np.allclose((q ** 2).sum(1), (x[0] ** 2).sum(), rtol=1e-5)  # queries scaled onto it


def test_every_list_probed_is_exact_with_bias_and_banned_items():
    weight, bias = layer()
    ann = AnnIndex.build(weight, bias, kind="ivf", lists=16, probe=16, extra=20)
    exact = DotProductIndex(weight, bias)
    q = torch.randn(40, 8)
    banned = torch.randint(0, 3000, (40, 6))
    banned[:, 4:] = 0  # padding in the banned rows
    ev, ei = exact.search(q, 10, banned)
    av, ai = ann.search(q, 10, banned)
    assert torch.equal(ai, ei)
    assert torch.allclose(av, ev, atol=1e-4)
    assert not (ai[:, :, None] == banned[:, None, :4]).any()
    best = exact.search(q, 13)[1]  # ban each row's own best items: the lists must reach past them
    top = torch.cat([best[:, [0, 2, 5]], torch.zeros(40, 1, dtype=torch.int64)], 1)  # 1st, 3rd, 6th and padding
    av, ai = ann.search(q, 10, top)
    assert torch.equal(ai, best[:, [1, 3, 4, 6, 7, 8, 9, 10, 11, 12]]) and torch.isfinite(av).all()


def test_a_row_with_fewer_allowed_items_than_k_ends_at_minus_infinity():
    torch.manual_seed(1)
    weight, bias = torch.randn(13, 4), torch.randn(13)  # 12 items and padding
    for head in (0, 256):  # the lists' candidates alone, and every item as a head item
        ann = AnnIndex.build(weight, bias, kind="ivf", lists=1, probe=1, head=head)
        q = torch.randn(2, 4)
        banned = torch.tensor([[1, 2, 3, 4, 5], [12, 0, 0, 0, 0]])
        values, idx = ann.search(q, 10, banned)
        exact_values, exact_idx = DotProductIndex(weight, bias).search(q, 10, banned)
        assert torch.isinf(values[0, 7:]).all() and sorted(idx[0, :7].tolist()) == list(range(6, 13))  # slots past -inf: any index
        assert torch.equal(idx[0, :7], exact_idx[0, :7]) and torch.equal(idx[1], exact_idx[1])
        assert torch.isfinite(values[1]).all() and 12 not in idx[1].tolist()
        assert torch.allclose(values[torch.isfinite(values)], exact_values[torch.isfinite(exact_values)], atol=1e-5)


def test_repeat_terms_match_the_exact_path_when_every_list_is_probed():
    weight, bias = layer()
    ann = AnnIndex.build(weight, bias, kind="ivf", lists=8, probe=8, extra=30)
    exact = DotProductIndex(weight, bias)
    q = torch.randn(20, 8)
    items = torch.randint(1, 3000, (20, 5))
    items[:, 3] = items[:, 0]  # a repeated item: scored once, counted twice by repeat_first
    items[::2, 4] = 0
    for term in (RepeatTerm(items, beta=torch.full((20,), 3.0)), RepeatTerm(items, first=True)):
        ev, ei = exact.search(q, 10, repeat=term)
        av, ai = ann.search(q, 10, repeat=term)
        assert torch.equal(ai, ei)
        assert torch.allclose(av, ev, atol=1e-4)
    first = ann.search(q, 3, repeat=RepeatTerm(items, first=True))[1]
    assert (first[:, 0] == items[:, 0]).all()  # the item seen twice ranks first


def test_few_lists_probed_lose_some_items_and_recall_says_how_many():
    weight, bias = layer(20_000, 16)
    q = torch.randn(200, 16)
    exact_values = DotProductIndex(weight, bias).search(q, 10)[0]
    narrow = AnnIndex.build(weight, bias, kind="ivf", lists=200, probe=1, extra=0)
    wide = AnnIndex.build(weight, bias, kind="ivf", lists=200, probe=200, extra=0)
    r_narrow = tie_aware_recall(narrow.search(q, 10)[0], exact_values)
    assert tie_aware_recall(wide.search(q, 10)[0], exact_values) == 1.0
    assert 0.0 < r_narrow < 0.9


def test_tie_aware_recall_known_answers():
    exact = torch.tensor([[5.0, 4.0, 3.0], [2.0, 1.0, 1.0]])
    assert tie_aware_recall(exact.clone(), exact) == 1.0
    assert tie_aware_recall(torch.tensor([[5.0, 4.0, 2.0], [2.0, 1.0, 0.0]]), exact) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert tie_aware_recall(torch.tensor([[5.0, 3.0, -np.inf], [1.0, 1.0, 2.0]]), exact) == pytest.approx((2 / 3 + 1) / 2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rng = np.random.default_rng(0)
    n_items = 400
    vocab = ItemVocab(np.array(["<pad>"] + [f"i{i}" for i in range(n_items)], dtype=object))
    items = (np.arange(6000) * 7 + rng.integers(0, 3, 6000)) % n_items + 1
    data = SessionDataset(vocab, np.arange(0, 6001, 6), items.astype(np.int64), np.arange(6000), np.arange(1000))
    model = GRU4Rec(Gru4RecConfig(epochs=1, hidden=16, batch_size=32), TrainingConfig(device="cpu", progress=False))
    model.fit(data)
    path = save_model(model, tmp_path_factory.mktemp("m") / "gru4rec.pt")
    return model, path


def test_index_is_stored_beside_the_model_loaded_again_and_rebuilt_when_the_model_changes(trained):
    model, path = trained
    serving = ServingConfig(index="ann", ann_kind="ivf", ann_lists=4, ann_probe=4)
    first = index_for(model, path, serving)
    assert index_path(path).is_file() and first.meta["recall@10"] == 1.0  # every list probed
    again = index_for(model, path, serving)
    assert again.meta["built_at"] == first.meta["built_at"]  # loaded, not rebuilt
    assert again.meta["recall_sample"] == first.meta["recall_sample"]
    weight = model.output_layer()[0]
    kept = weight.detach().clone()
    with torch.no_grad():
        weight[5] += 1.0  # a new model version in the same file's place
    try:
        rebuilt = AnnIndex.load(index_path(path), *model.output_layer())
        assert rebuilt is None  # stale: its fingerprint names other weights
    finally:
        with torch.no_grad():
            weight.copy_(kept)  # bit for bit (w + 1 - 1 is not w in float32): later tests serve the file's model


def test_a_narrow_index_widens_its_search_until_its_recall_reaches_the_floor_and_keeps_that_breadth(trained, tmp_path):
    import shutil

    model, path = trained
    mine = tmp_path / "gru4rec.pt"
    shutil.copy(path, mine)
    asked = ServingConfig(index="ann", ann_kind="ivf", ann_lists=16, ann_probe=1, ann_min_recall=1.0)
    built = index_for(model, mine, asked)
    trials = built.meta["calibration"]
    assert [t["breadth"] for t in trials] == [2**i for i in range(len(trials))] and trials[0]["recall"] < 1.0
    recalls = [t["recall"] for t in trials]
    assert recalls == sorted(recalls) and recalls[-1] == 1.0 and max(recalls[:-1]) < 1.0  # stops at the first that reaches it
    assert built.meta["breadth"] == trials[-1]["breadth"] <= 16 and built.meta["probe"] == 1 and built.meta["recall@10"] == 1.0
    loaded = index_for(model, mine, asked)  # stored with the breadth it was widened to
    assert loaded.meta["built_at"] == built.meta["built_at"] and loaded.meta["breadth"] == built.meta["breadth"]
    q = torch.randn(50, 16)
    assert torch.equal(loaded.search(q, 10)[1], built.search(q, 10)[1])
    kept = index_for(model, mine, ServingConfig(**{**asked.model_dump(), "ann_min_recall": 0.0}))  # another floor: rebuilt
    assert kept.meta["built_at"] != built.meta["built_at"] and kept.meta["breadth"] == 1 and len(kept.meta["calibration"]) == 1
    assert kept.meta["recall@10"] == trials[0]["recall"]  # the same lists, searched as asked


def test_a_floor_the_widest_search_misses_is_said_and_the_widest_breadth_kept(trained, caplog):
    from seqrec.serving.indexes import measure_recall, random_sessions, sample_queries

    model, _ = trained
    ann = index_for(model, None, ServingConfig(index="ann", ann_kind="ivf", ann_lists=100, ann_probe=1, ann_head=0,
                                               ann_min_recall=0.0))
    queries = sample_queries(model, random_sessions(model.vocab.size, 500, seed=0))
    with caplog.at_level(logging.WARNING, logger="seqrec.serving.indexes"):
        figures = measure_recall(ann, queries, 10, min_recall=1.0, max_widen=32)
    assert [t["breadth"] for t in figures["calibration"]] == [1, 2, 4, 8, 16, 32]  # 32 times the asked probe, no more
    assert ann.meta["breadth"] == 32 and figures["recall@10"] < 1.0
    assert "below serving.ann_min_recall 1.0" in caplog.text and f"recall@10 {figures['recall@10']:.4f}" in caplog.text
    ann.set_breadth(1)
    wider = measure_recall(ann, queries, 10, min_recall=1.0)  # the default cap (256 times) goes on to the floor
    assert [t["recall"] for t in wider["calibration"]][:6] == [t["recall"] for t in figures["calibration"]]  # same tries
    assert ann.meta["breadth"] == 64 and wider["recall@10"] == 1.0 and wider["calibration"][-1]["breadth"] == 64


def test_widening_stops_at_the_floor_at_the_widest_or_when_doubling_gains_nothing_and_keeps_the_narrower():
    from seqrec.serving.indexes import kept_trial, next_breadth

    def tries(*pairs):
        return [{"breadth": b, "recall": r} for b, r in pairs]

    assert next_breadth(tries((32, 0.90)), 0.95, 1024) == 64
    assert next_breadth(tries((32, 0.90), (64, 0.93)), 0.95, 1024) == 128
    assert next_breadth(tries((32, 0.90), (64, 0.96)), 0.95, 1024) is None  # floor reached
    assert next_breadth(tries((512, 0.90)), 0.95, 600) == 600 and next_breadth(tries((600, 0.9)), 0.95, 600) is None
    plateau = tries((32, 0.9422), (64, 0.9425))  # +0.0003: the misses are not where a wider search looks
    assert next_breadth(plateau, 0.95, 1024) is None and kept_trial(plateau, 0.95) == plateau[0]
    assert kept_trial(tries((32, 0.90), (64, 0.93)), 0.95)["breadth"] == 64  # stopped at the widest: still gaining
    assert kept_trial(tries((32, 0.9495), (64, 0.9501)), 0.95)["breadth"] == 64  # a small gain that reaches the floor
    assert kept_trial(tries((32, 0.90)), 0.0)["breadth"] == 32


def test_recommend_through_the_index_names_it_and_matches_exact_when_every_list_is_probed(trained):
    model, path = trained
    sessions = [["i1", "i8", "i15"], ["i200"], ["i3", "nope"], []]
    ann = index_for(model, None, ServingConfig(index="ann", ann_kind="ivf", ann_lists=4, ann_probe=4))
    exact = recommend(model, sessions, k=5)
    approx = recommend(model, sessions, k=5, index=ann)
    assert list(approx) == list(exact)
    assert approx.index["index"] == "ann" and approx.index["kind"] == "ivf" and approx.index["lists"] == 4 and exact.index == {"index": "exact"}
    assert approx.unknown_items == 1 and approx.empty_sessions == 1


def test_auto_picks_the_index_by_catalogue_size(trained):
    model, _ = trained
    assert uses_ann(model, ServingConfig(index="auto", exact_max_items=400))
    assert not uses_ann(model, ServingConfig(index="auto", exact_max_items=401))
    assert not uses_ann(model, ServingConfig(index="exact"))


def test_evaluation_through_an_index_that_probes_every_list_matches_exact_evaluation(trained):
    from seqrec.config import EvaluationConfig
    from seqrec.evaluation.metrics import evaluate_model
    from seqrec.serving.indexes import IndexedRecommender

    model, _ = trained
    rng = np.random.default_rng(3)
    vocab = model.vocab
    items = (np.arange(600) * 7 + rng.integers(0, 3, 600)) % 400 + 1
    data = SessionDataset(vocab, np.arange(0, 601, 6), items.astype(np.int64), np.arange(600), np.arange(100))
    cfg = EvaluationConfig(cutoffs=(1, 5, 10))
    exact = evaluate_model(model, data, cfg, lists=False).metrics
    full = AnnIndex.build(*model.output_layer(), kind="ivf", lists=4, probe=4)
    through = evaluate_model(IndexedRecommender(model, full, 10), data, cfg, lists=False).metrics
    assert through == pytest.approx(exact)
    narrow = AnnIndex.build(*model.output_layer(), kind="ivf", lists=40, probe=1, extra=0)
    worse = evaluate_model(IndexedRecommender(model, narrow, 10), data, cfg, lists=False).metrics
    assert worse["recall@10"] < exact["recall@10"]


def test_cli_index_recommend_and_evaluate_through_the_index(tmp_path):
    import json
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    rows = ["SessionId\tItemId\tTime"]
    for s in range(400):
        start = int(rng.integers(0, 200))
        rows += [f"{s}\t{(start + 3 * i) % 200}\t{1_000_000 + s * 3600 + i}" for i in range(4)]
    train, test = tmp_path / "train.tsv", tmp_path / "test.tsv"
    train.write_text("\n".join(rows[:1401]) + "\n")
    test.write_text("\n".join([rows[0]] + rows[1401:]) + "\n")
    (tmp_path / "sessions.txt").write_text("3 6\n10\n")
    cmd, out = [sys.executable, "-m", "seqrec.cli"], tmp_path / "m"

    def run(*args):
        return json.loads(subprocess.run(cmd + list(args) + ["--json"], check=True, capture_output=True, text=True).stdout)

    run("train", "bprmf", "--train", str(train), "--test", str(test), "--out", str(out), "--set", "models.bprmf.epochs=2")
    every = ["--set", "serving.ann_kind=ivf", "--set", "serving.ann_lists=2", "--set", "serving.ann_probe=2"]
    built = run("index", str(out / "bprmf.pt"), *every)
    assert built["index"] == "ann" and built["recall@10"] == 1.0 and (out / "bprmf.pt.ann").is_file()
    recs = run("recommend", str(out / "bprmf.pt"), str(tmp_path / "sessions.txt"), "--index", "ann", *every)
    assert recs["index"]["index"] == "ann" and recs["index"]["built_at"] == built["built_at"]  # stored one
    exact = run("recommend", str(out / "bprmf.pt"), str(tmp_path / "sessions.txt"), "--index", "exact")
    assert exact["index"] == {"index": "exact"} and exact["recommendations"] == recs["recommendations"]
    plain = run("evaluate", str(out / "bprmf.pt"))
    through = run("evaluate", str(out / "bprmf.pt"), "--set", "evaluation.index=ann", *every)
    assert plain["index"] == {"index": "exact"} and through["index"]["ranked_through"] is True
    assert through["label"] == "bprmf (ann index)"
    assert through["metrics"]["recall@20"] == pytest.approx(plain["metrics"]["recall@20"])


def test_head_items_catch_queries_that_rank_by_bias():
    g = torch.Generator().manual_seed(1)  # item vectors in 50 tight groups (the lists follow them), bias across groups
    centres = torch.randn(50, 16, generator=g) * 3
    weight = centres[torch.randint(0, 50, (20_000,), generator=g)] + torch.randn(20_000, 16, generator=g) * 0.3
    bias = torch.randn(20_000, generator=g) * 2
    q = torch.randn(100, 16, generator=g) * 0.05  # short queries: the best items are those of highest bias, in any list
    exact_values = DotProductIndex(weight, bias).search(q, 10)[0]
    without = AnnIndex.build(weight, bias, kind="ivf", lists=200, probe=1, extra=0, head=0)
    with_head = AnnIndex.build(weight, bias, kind="ivf", lists=200, probe=1, extra=0, head=256)
    assert tie_aware_recall(without.search(q, 10)[0], exact_values) < 0.5
    assert tie_aware_recall(with_head.search(q, 10)[0], exact_values) == 1.0
    values, items = with_head.search(q, 10)
    assert all(len(set(row)) == 10 for row in items.tolist())  # a head item the lists also return is not doubled


def test_hnsw_graph_finds_the_best_items_and_survives_a_save(tmp_path):
    weight, bias = layer(5000, 16)
    q = torch.randn(200, 16)
    exact_values, exact_items = DotProductIndex(weight, bias).search(q, 10)
    ann = AnnIndex.build(weight, bias, kind="hnsw", expansion_search=128)
    values, items = ann.search(q, 10)
    assert tie_aware_recall(values, exact_values) >= 0.98
    assert torch.allclose(values[items == exact_items], exact_values[items == exact_items])  # exact scores
    ann.save(tmp_path / "m.pt.ann")
    loaded = AnnIndex.load(tmp_path / "m.pt.ann", weight, bias)
    assert loaded.meta == ann.meta and torch.equal(loaded.search(q, 10)[1], items)
    assert AnnIndex.load(tmp_path / "m.pt.ann", weight * 2, bias) is None  # another model's weights: stale


def test_a_registered_version_carries_its_index_and_serving_it_loads_that_one(trained, tmp_path, caplog):
    from seqrec.pipeline.registry import register_best
    from seqrec.serving.http import ModelSource
    from seqrec.serving.registry import current_version, set_current

    model, path = trained
    serving = ServingConfig(index="ann", ann_kind="ivf", ann_lists=4, ann_probe=4)
    built = index_for(model, path, serving)
    result = {"model_path": str(path), "model": "gru4rec", "metrics": {"recall@20": 0.5}, "data_fingerprint": "v"}
    name = register_best(str(tmp_path / "reg"), [result], "recall@20", {}, "d", None, None)["version"]
    set_current(tmp_path / "reg", name)
    version = current_version(tmp_path / "reg")
    assert sorted(version.meta["files"]) == ["gru4rec.pt", "gru4rec.pt.ann", "gru4rec.pt.ann.json"]
    with caplog.at_level(logging.INFO, logger="seqrec.serving.indexes"):
        served = ModelSource(tmp_path / "reg", serving).served
    assert not [r for r in caplog.records if "building the approximate index" in r.getMessage()]  # loaded, not rebuilt
    assert served.version == name and served.index.meta == built.meta


def test_a_corrupt_stored_index_is_rebuilt_and_a_markov_model_has_no_index(trained, tmp_path):
    import subprocess
    import sys

    from seqrec.models.baselines import Markov

    model, path = trained
    serving = ServingConfig(index="ann", ann_kind="hnsw")
    built = index_for(model, path, serving)
    index_path(path).write_bytes(b"not an index")
    again = index_for(model, path, serving)  # unreadable: built again, not a crash
    assert again.meta["fingerprint"] == built.meta["fingerprint"] and len(again.search(torch.randn(2, 16), 5)[1]) == 2
    markov = Markov().fit(SessionDataset(model.vocab, np.array([0, 3]), np.array([1, 2, 3]), np.arange(3), np.array([0])))
    mpath = save_model(markov, tmp_path / "markov.pt")
    assert index_for(markov, mpath, serving) is None  # count models are always exact
    proc = subprocess.run([sys.executable, "-m", "seqrec.cli", "index", str(mpath), "--json"], capture_output=True, text=True)
    assert proc.returncode == 1 and "no dot-product output layer" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_sample_without_known_items_falls_back_to_random_sessions_and_the_cli_says_which_file(trained, tmp_path, caplog):
    import subprocess
    import sys

    model, path = trained
    nothing = (np.zeros((3, 2), dtype=np.int64), np.zeros(3, dtype=np.int64))  # three sessions, no known item
    with caplog.at_level(logging.WARNING, logger="seqrec.serving.indexes"):
        ann = index_for(model, None, ServingConfig(index="ann", ann_kind="ivf", ann_lists=4), sample=nothing, sample_name="x")
    assert ann.meta["recall_sample"].endswith("random items") and ann.meta["recall_queries"] == 2000
    assert "no session of the sample (x) holds a known item" in caplog.text
    (tmp_path / "unknown.txt").write_text("nope zilch\nnada\n")
    proc = subprocess.run([sys.executable, "-m", "seqrec.cli", "index", str(path), "--sessions", str(tmp_path / "unknown.txt")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "unknown.txt: no session holds an item of the model's catalogue (3 unknown ids)" in proc.stderr
