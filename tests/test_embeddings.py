"""Contrastive item embeddings: the loss against numpy, pair sampling, training and reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from seqrec import columns as C
from seqrec.config import EmbeddingConfig, GraphConfig, SessionConfig
from seqrec.features.embeddings import (
    ItemEmbeddings,
    edge_arrays,
    epoch_pairs,
    group_recovery,
    info_nce_loss,
    nearest_neighbours,
    plot_embedding_map,
    train_item_embeddings,
)
from seqrec.features.graph import ItemGraph, build_cooccurrence_graph
from seqrec.sequences import ItemVocab

torch.set_num_threads(1)


def numpy_info_nce(a: np.ndarray, b: np.ndarray, t: float, a_ids=None, b_ids=None) -> float:
    """Return the symmetric InfoNCE loss written out row by row."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(a)):
        # a_i against every b_j, excluding other b_j that are the same item as b_i
        keep_b = [j for j in range(len(b)) if j == i or b_ids is None or b_ids[j] != b_ids[i]]
        s = np.array([a[i] @ b[j] for j in keep_b]) / t
        total += -(a[i] @ b[i] / t) + np.log(np.exp(s).sum())
        keep_a = [j for j in range(len(a)) if j == i or a_ids is None or a_ids[j] != a_ids[i]]
        s = np.array([b[i] @ a[j] for j in keep_a]) / t
        total += -(b[i] @ a[i] / t) + np.log(np.exp(s).sum())
    return total / (2 * len(a))


@pytest.mark.parametrize("with_ids", [False, True])
def test_info_nce_matches_numpy(with_ids: bool) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    a_ids, b_ids = np.array([1, 2, 1, 3, 4, 5]), np.array([7, 7, 8, 9, 7, 6])  # duplicates to mask
    ids = (torch.from_numpy(a_ids), torch.from_numpy(b_ids)) if with_ids else (None, None)
    got = info_nce_loss(torch.from_numpy(a), torch.from_numpy(b), 0.2, *ids)
    want = numpy_info_nce(a, b, 0.2, *((a_ids, b_ids) if with_ids else (None, None)))
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_info_nce_known_value_for_orthonormal_pairs() -> None:
    eye = torch.eye(4, dtype=torch.float64)  # a_i = b_i, orthogonal to every other row
    want = -np.log(np.exp(10) / (np.exp(10) + 3))  # logits: 1/0.1 on the diagonal, 0 elsewhere
    assert float(info_nce_loss(eye * 3.0, eye, 0.1)) == pytest.approx(want)


def tiny_graph(edges: dict[tuple[str, str], float], extra: tuple[str, ...] = ()) -> ItemGraph:
    """Return an ItemGraph from {(a, b): weight}."""
    vocab = ItemVocab.from_items(np.array([x for e in edges for x in e] + list(extra)))
    a, b = vocab.encode(np.array([e[0] for e in edges])), vocab.encode(np.array([e[1] for e in edges]))
    w = np.array(list(edges.values()), dtype=np.float64)
    n = vocab.size + 1
    matrix = sp.csr_matrix((np.r_[w, w], (np.r_[a, b], np.r_[b, a])), shape=(n, n))
    frame = pd.DataFrame({"item_a": [e[0] for e in edges], "item_b": [e[1] for e in edges], "weight": w})
    return ItemGraph(vocab, frame, matrix)


def test_all_pairs_epoch_covers_every_edge_in_both_directions() -> None:
    graph = tiny_graph({("a", "b"): 1.0, ("b", "c"): 5.0, ("a", "d"): 2.0})
    left, right = epoch_pairs(edge_arrays(graph), EmbeddingConfig(sampling="all", batch_size=3), np.random.default_rng(0))
    got = sorted(zip(graph.vocab.decode(left), graph.vocab.decode(right)))
    assert got == sorted([("a", "b"), ("b", "a"), ("b", "c"), ("c", "b"), ("a", "d"), ("d", "a")])


def test_weighted_epoch_draws_edges_in_proportion_to_weight() -> None:
    graph = tiny_graph({("a", "b"): 1.0, ("c", "d"): 3.0})
    cfg = EmbeddingConfig(sampling="weighted", batch_size=1000, steps_per_epoch=40)
    left, right = epoch_pairs(edge_arrays(graph), cfg, np.random.default_rng(0))
    on_cd = np.isin(graph.vocab.decode(left), ["c", "d"]).mean()
    assert len(left) == 40_000 and on_cd == pytest.approx(0.75, abs=0.01)
    assert (graph.vocab.decode(left) == "b").mean() == pytest.approx(0.125, abs=0.01)  # both directions


def clique_graph(groups: int, size: int) -> ItemGraph:
    """Return a graph of disjoint weighted cliques: item g<i> links to every other item of group g."""
    edges = {}
    for g in range(groups):
        for i in range(size):
            for j in range(i + 1, size):
                edges[(f"g{g}_{i:02d}", f"g{g}_{j:02d}")] = 1.0 + (i + j) % 3
    return tiny_graph(edges, extra=("lonely",))


def test_training_recovers_cliques_and_outputs_unit_vectors() -> None:
    graph = clique_graph(groups=6, size=12)
    cfg = EmbeddingConfig(dim=16, hidden=32, batch_size=128, epochs=6, lr=5e-3)
    emb = train_item_embeddings(graph, cfg, device="cpu", progress=False)
    assert emb.vectors.shape == (graph.vocab.size + 1, 16) and emb.vectors.dtype == np.float32
    assert np.all(emb.vectors[0] == 0) and np.allclose(np.linalg.norm(emb.vectors[1:], axis=1), 1, atol=1e-5)
    losses = [e["loss"] for e in emb.history["epochs"]]
    assert losses[-1] < losses[0]
    labels = pd.Series({item: item.split("_")[0] for item in graph.vocab.ids[1:] if item != "lonely"})
    rec = group_recovery(emb, labels, k=5)
    assert rec["random_share"] == pytest.approx(6 * 12 * 11 / (72 * 71))  # exact: one group per item
    assert rec["same_group_share"] > 0.9 and rec["unlabelled_items"] == 1


def hand_embeddings() -> ItemEmbeddings:
    """Return 4 items: a and b point the same way, c and d the other way (groups x and y)."""
    vocab = ItemVocab.from_items(np.array(["a", "b", "c", "d"]))
    v = np.array([[0, 0], [1, 0], [0.8, 0.6], [-1, 0], [-0.6, -0.8]], dtype=np.float32)
    return ItemEmbeddings(v, vocab)


def test_nearest_neighbours_and_group_recovery_known_answer() -> None:
    emb = hand_embeddings()
    nn = nearest_neighbours(emb, k=2)
    assert nn[nn["rank"] == 1].set_index(C.ITEM)["neighbour"].to_dict() == {"a": "b", "b": "a", "c": "d", "d": "c"}
    assert nn.loc[(nn[C.ITEM] == "a") & (nn["rank"] == 1), "similarity"].item() == pytest.approx(0.8)
    assert nearest_neighbours(emb, k=1, items=["d"])["neighbour"].tolist() == ["c"]
    sampled = nearest_neighbours(emb, k=3, max_queries=2)
    assert len(sampled) == 6 and sampled[C.ITEM].nunique() == 2
    with pytest.raises(ValueError, match="k=4"):
        nearest_neighbours(emb, k=4)
    groups = pd.Series(["x", "x", "y", "y"], index=["a", "b", "c", "d"])
    rec = group_recovery(emb, groups, k=1)
    assert rec["same_group_share"] == 1.0 and rec["random_share"] == pytest.approx(4 / 12)
    # b also belongs to y: a random pair shares a group with probability 8/12 (estimated)
    multi = pd.concat([groups, pd.Series(["y"], index=["b"])])
    assert group_recovery(emb, multi, k=1)["random_share"] == pytest.approx(8 / 12, abs=0.01)


def test_save_load_and_map(tmp_path: Path) -> None:
    emb = hand_embeddings()
    path = emb.save(tmp_path / "emb.npz")
    back = ItemEmbeddings.load(path)
    assert np.array_equal(back.vectors, emb.vectors) and list(back.vocab.ids) == ["<pad>", "a", "b", "c", "d"]
    png = plot_embedding_map(emb, tmp_path / "map.png", labels=pd.Series(["x", "x", "y", "y"], index=list("abcd")))
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        ItemEmbeddings.load(tmp_path / "nothing.npz")


def test_graph_without_edges_is_an_error() -> None:
    empty = tiny_graph({("a", "b"): 1.0})
    empty = ItemGraph(empty.vocab, empty.edges.iloc[:0], sp.csr_matrix(empty.matrix.shape))
    with pytest.raises(ValueError, match="no edges"):
        train_item_embeddings(empty, EmbeddingConfig(), device="cpu", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_training_runs() -> None:
    emb = train_item_embeddings(clique_graph(3, 8), EmbeddingConfig(dim=8, hidden=16, batch_size=32, epochs=2), device="cuda")
    assert emb.history["device"].startswith("cuda") and np.isfinite(emb.vectors).all()


def test_generated_data_end_to_end_recovers_latent_groups(tmp_path: Path) -> None:
    generate = pytest.importorskip("seqrec.synthetic.generate")
    reader = pytest.importorskip("seqrec.data.reader")
    from seqrec.config import DataConfig, GeneratorConfig
    from seqrec.features.sessions import sessionize_partitions

    root = tmp_path / "tecd"
    generate.generate_tecd(root, GeneratorConfig(events=20_000, days=3, domains=("marketplace", "retail"), intents=20, workers=1))
    data = DataConfig(root=root, domains=("marketplace", "retail"))
    events = reader.load_events(root, data).events
    parts = [day for _, day in events.groupby(events[C.TIMESTAMP] // C.MICROS_PER_DAY, sort=True)]
    sessions = sessionize_partitions(parts, SessionConfig())
    assert sessions.report["events_out"] == len(events) and sessions.report["sessions_stitched_across_partitions"] > 0
    receipts = reader.load_day_tables(root, "payments/receipts", data).table
    catalogue = pd.concat([pd.read_parquet(root / d / "items.pq", columns=[C.ITEM])[C.ITEM] for d in ("marketplace", "retail")])
    graph = build_cooccurrence_graph(sessions.events, receipts, catalogue, GraphConfig(), tmp_path / "graph")
    assert graph.report["copurchase_chunks"] == 1 and graph.report["receipt_lines_linked"] > 0
    emb = train_item_embeddings(graph, EmbeddingConfig(dim=32, hidden=64, batch_size=512, epochs=3), progress=False)
    truth = pd.read_parquet(root / "_generator" / "item_groups.pq")
    groups = pd.Series((truth[C.DOMAIN] + ":" + truth["group"].astype(str)).to_numpy(), index=truth[C.ITEM])
    rec = group_recovery(emb, groups, k=10)
    assert rec["labelled_items"] == graph.vocab.size
    assert rec["same_group_share"] > 3 * rec["random_share"]  # far above chance


@pytest.mark.parametrize("with_ids", [False, True])
def test_info_nce_gradient_matches_autograd_of_the_plain_formula(with_ids: bool) -> None:
    """The fused loss's hand-written gradient equals autograd through the loss written with masked copies."""
    import torch.nn.functional as F

    from seqrec.features.embeddings import SymmetricInfoNCE, same_item_pairs

    rng = np.random.default_rng(1)
    a = torch.tensor(rng.normal(size=(7, 5)), requires_grad=True)
    b = torch.tensor(rng.normal(size=(7, 5)), requires_grad=True)
    a_ids, b_ids = (torch.tensor([1, 2, 1, 3, 1, 5, 6]), torch.tensor([7, 7, 8, 9, 7, 6, 6])) if with_ids else (None, None)

    def plain(x, y):
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
        logits = x @ y.T / 0.2
        target = torch.arange(len(x))
        rows, cols = logits.clone(), logits.T.clone()
        for ids, m in ((b_ids, rows), (a_ids, cols)):
            if ids is not None:
                same = ids[:, None] == ids[None, :]
                same.fill_diagonal_(False)
                m.masked_fill_(same, float("-inf"))
        return (F.cross_entropy(rows, target) + F.cross_entropy(cols, target)) / 2

    want = torch.autograd.grad(plain(a, b), (a, b))
    x, y = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    got = torch.autograd.grad(SymmetricInfoNCE.apply(x, y, 0.2, same_item_pairs(b_ids), same_item_pairs(a_ids)), (a, b))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
