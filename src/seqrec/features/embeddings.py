"""Contrastive item embeddings: InfoNCE over co-occurrence edges with in-batch negatives.

Each positive pair (a, b) is an edge of the item graph, drawn with probability proportional
to its weight ("weighted") or every edge once per epoch ("all"), in a random direction. An
embedding table (row 0 = padding) feeds a 2-layer MLP projection head; the loss is the
symmetric cross-entropy over the (B, B) cosine-similarity matrix divided by the
temperature, where a column holding the same item as the positive is masked (it is not a
negative). The embedding table is sparse (SparseAdam), the head uses Adam; both learning
rates follow ReduceLROnPlateau on the epoch's mean training loss (there is no held-out set
of edges). Returned vectors are unit-norm, (n_items + 1, dim), row 0 zeros.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from seqrec import columns as C  # noqa: E402
from seqrec.config import EmbeddingConfig  # noqa: E402
from seqrec.features.graph import ItemGraph  # noqa: E402
from seqrec.io import atomic_path, write_figure  # noqa: E402
from seqrec.sequences import ItemVocab  # noqa: E402


@dataclass(frozen=True)
class ItemEmbeddings:
    """Unit-norm item vectors by dense index (row 0 = padding, zeros) and their vocabulary."""

    vectors: np.ndarray  # (n_items + 1, dim) float32
    vocab: ItemVocab
    history: dict[str, Any] = field(default_factory=dict)  # config, per-epoch loss and lr

    def save(self, path: Path | str) -> Path:
        """Write vectors, ids (strings) and history to an .npz file atomically; return its path."""
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, vectors=self.vectors, ids=np.asarray(self.vocab.ids, dtype=str),
                     history=np.asarray(json.dumps(self.history, default=str)))
        return Path(path)

    @classmethod
    def load(cls, path: Path | str) -> "ItemEmbeddings":
        """Return embeddings saved by ``save`` (no pickle)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"embeddings file {path} does not exist")
        with np.load(path, allow_pickle=False) as z:
            vocab = ItemVocab(z["ids"].astype(object))
            return cls(z["vectors"], vocab, json.loads(str(z["history"])))

    def aligned_to(self, vocab: ItemVocab) -> np.ndarray:
        """Return the vectors as rows of ``vocab`` (n + 1, dim) float32: zeros for padding and for items without a vector."""
        aligned = np.zeros((vocab.size + 1, self.vectors.shape[1]), dtype=np.float32)
        idx = self.vocab.encode(vocab.ids[1:])  # (n,) 0 where unknown
        aligned[1:][idx > 0] = self.vectors[idx[idx > 0]]
        return aligned


class ItemEncoder(nn.Module):
    """Embedding table (index 0 = padding) followed by a 2-layer MLP projection head."""

    def __init__(self, n_items: int, cfg: EmbeddingConfig):
        super().__init__()
        self.embedding = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0, sparse=True)
        nn.init.normal_(self.embedding.weight, std=0.1)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.head = nn.Sequential(nn.Linear(cfg.dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.dim))

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Return projected vectors (B, dim) for dense indices (B,)."""
        return self.head(self.embedding(items))  # (B, dim) -> (B, hidden) -> (B, dim)


def same_item_pairs(ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (rows, cols) of every ordered pair i != j with ids[i] == ids[j] (empty without ids or duplicates)."""
    none = torch.zeros(0, dtype=torch.int64, device=None if ids is None else ids.device)
    if ids is None:
        return none, none
    _, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    repeated = torch.nonzero(counts[inverse] > 1).flatten()  # (P,) positions of items seen twice or more
    if not len(repeated):
        return none, none
    same = ids[repeated][:, None] == ids[repeated][None, :]  # (P, P)
    same.fill_diagonal_(False)
    i, j = torch.nonzero(same, as_tuple=True)
    return repeated[i], repeated[j]


class SymmetricInfoNCE(torch.autograd.Function):
    """The symmetric InfoNCE loss of unit rows a, b (B, D) in one (B, B) buffer, with its gradient.

    logits = a b^T / t lie in [-1/t, 1/t], so exp(logits - 1/t) cannot overflow: one exponentiated matrix serves
    both directions. Row i (a_i against every b_j) leaves out the pairs where b_j is b_i's item; column j (b_j
    against every a_i) those where a_i is a_j's item; both are subtracted from the sums, never masked in a copy.
    The gradient (softmax over rows + softmax over columns - 2 I) / 2B is written into the same buffer.
    """

    @staticmethod
    def forward(ctx, a, b, temperature: float, row_pairs, col_pairs):
        shift = 1.0 / temperature
        diag = (a * b).sum(1) * shift  # (B,) positives' logits
        e = torch.addmm(a.new_full((1, 1), -shift).expand(len(a), len(b)), a, b.T, alpha=shift).exp_()  # exp(logits - 1/t)
        (ri, rj), (ci, cj) = row_pairs, col_pairs
        row_left, col_left = e[ri, rj], e[ci, cj]  # the masked entries' values
        row = e.sum(1).index_add_(0, ri, -row_left)  # (B,) sum over the row's candidates
        col = e.sum(0).index_add_(0, cj, -col_left)  # (B,) sum over the column's candidates
        loss = ((row.log() + shift - diag) + (col.log() + shift - diag)).mean() / 2
        ctx.save_for_backward(a, b, e, row, col, ri, rj, ci, cj, row_left, col_left)
        ctx.temperature = temperature
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        a, b, e, row, col, ri, rj, ci, cj, row_left, col_left = ctx.saved_tensors
        n, t = len(a), ctx.temperature
        g = e * row.reciprocal()[:, None]  # (B, B) softmax over each row ...
        g.addcmul_(e, col.reciprocal()[None, :])  # ... plus softmax over each column
        del e
        g.index_put_((ri, rj), -row_left / row[ri], accumulate=True)  # masked entries: out of the row's softmax
        g.index_put_((ci, cj), -col_left / col[cj], accumulate=True)
        g.diagonal().sub_(2.0)
        g.mul_(grad_out / (2 * n * t))  # d loss / d (a b^T)
        return torch.mm(g, b), torch.mm(g.T, a), None, None, None


def info_nce_loss(
    a: torch.Tensor, b: torch.Tensor, temperature: float,
    a_ids: torch.Tensor | None = None, b_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the symmetric InfoNCE loss of rows a[i] <-> b[i] against in-batch negatives.

    With ids, off-diagonal entries holding the same item as the positive are left out of both softmaxes.
    """
    dtype = torch.promote_types(a.dtype, torch.float32)  # half precision (AMP) is upcast for the softmax
    a = F.normalize(a.to(dtype), dim=-1)  # (B, D)
    b = F.normalize(b.to(dtype), dim=-1)  # (B, D)
    return SymmetricInfoNCE.apply(a, b, temperature, same_item_pairs(b_ids), same_item_pairs(a_ids))


def resolve_device(device: str) -> torch.device:
    """Return the torch device for "auto" | "cpu" | "cuda" (auto = cuda when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but torch.cuda.is_available() is False")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu' or 'cuda'")
    return torch.device(device)


def edge_arrays(graph: ItemGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (a, b, weight) of every undirected edge (a < b) from the graph matrix."""
    upper = sp.triu(graph.matrix, k=1).tocoo()
    if upper.nnz == 0:
        raise ValueError(f"item graph has no edges ({graph.vocab.size} items): nothing to train embeddings on")
    return upper.row.astype(np.int64), upper.col.astype(np.int64), upper.data.astype(np.float64)


def epoch_pairs(
    edges: tuple[np.ndarray, np.ndarray, np.ndarray], cfg: EmbeddingConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return one epoch's directed positive pairs (left, right), shuffled."""
    a, b, w = edges
    steps = cfg.steps_per_epoch or int(np.ceil(2 * len(a) / cfg.batch_size))
    n = steps * cfg.batch_size
    if cfg.sampling == "all":
        left, right = np.concatenate([a, b]), np.concatenate([b, a])  # both directions
        order = rng.permutation(len(left))[:n]
        return left[order], right[order]
    cdf = np.cumsum(w)
    pick = np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(a) - 1)
    flip = rng.random(n) < 0.5
    return np.where(flip, b[pick], a[pick]), np.where(flip, a[pick], b[pick])


def make_optimizers(model: ItemEncoder, cfg: EmbeddingConfig) -> list[torch.optim.Optimizer]:
    """Return [SparseAdam for the embedding table, Adam for the head]."""
    return [
        torch.optim.SparseAdam(list(model.embedding.parameters()), lr=cfg.lr),
        torch.optim.Adam(model.head.parameters(), lr=cfg.lr),
    ]


def train_step(model: ItemEncoder, left: torch.Tensor, right: torch.Tensor, cfg: EmbeddingConfig,
               opts: list[torch.optim.Optimizer], scaler: torch.amp.GradScaler) -> float:
    """Run one optimisation step on a batch of pairs; return the loss."""
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=left.device.type, dtype=torch.float16, enabled=scaler.is_enabled()):
        za, zb = model(left), model(right)  # (B, dim), (B, dim)
    loss = info_nce_loss(za, zb, cfg.temperature, left, right)
    scaler.scale(loss).backward()
    for opt in opts:
        scaler.step(opt)
    scaler.update()
    return float(loss.detach())


def run_epoch(model: ItemEncoder, pairs: tuple[np.ndarray, np.ndarray], cfg: EmbeddingConfig,
              opts: list[torch.optim.Optimizer], scaler: torch.amp.GradScaler, desc: str, progress: bool) -> float:
    """Train on one epoch's pairs in batches; return the mean batch loss."""
    device = next(model.parameters()).device
    left, right = (torch.from_numpy(x).to(device) for x in pairs)
    losses = []
    for lo in tqdm(range(0, len(left), cfg.batch_size), desc=desc, disable=None if progress else True, leave=False):
        hi = min(lo + cfg.batch_size, len(left))
        if hi - lo >= 2:  # a trailing batch of one pair has no negatives: skipped
            losses.append(train_step(model, left[lo:hi], right[lo:hi], cfg, opts, scaler))
    return float(np.mean(losses))


@torch.no_grad()
def export_vectors(model: ItemEncoder, n_items: int, cfg: EmbeddingConfig, chunk: int = 65536) -> np.ndarray:
    """Return unit-norm vectors (n_items + 1, dim) float32 with row 0 zeros."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for lo in range(0, n_items + 1, chunk):
        ids = torch.arange(lo, min(lo + chunk, n_items + 1), device=device)  # (c,)
        z = model(ids) if cfg.output == "projection" else model.embedding(ids)  # (c, dim)
        out.append(F.normalize(z.float(), dim=-1).cpu().numpy())
    vectors = np.concatenate(out).astype(np.float32)
    vectors[0] = 0.0
    return vectors


def train_item_embeddings(graph: ItemGraph, cfg: EmbeddingConfig, device: str = "auto", progress: bool = True) -> ItemEmbeddings:
    """Return item embeddings trained with InfoNCE on the graph's edges."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = resolve_device(device)
    edges = edge_arrays(graph)
    model = ItemEncoder(graph.vocab.size, cfg).to(dev)
    opts = make_optimizers(model, cfg)
    plateaus = [torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=cfg.plateau_factor, patience=cfg.plateau_patience) for o in opts]
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and dev.type == "cuda")
    epochs = []
    for epoch in range(cfg.epochs):
        model.train()
        loss = run_epoch(model, epoch_pairs(edges, cfg, rng), cfg, opts, scaler, f"embeddings epoch {epoch + 1}", progress)
        for plateau in plateaus:
            plateau.step(loss)
        epochs.append({"epoch": epoch + 1, "loss": loss, "lr": opts[1].param_groups[0]["lr"]})
    history = {"config": cfg.model_dump(), "device": str(dev), "edges": len(edges[0]), "epochs": epochs}
    return ItemEmbeddings(export_vectors(model, graph.vocab.size, cfg), graph.vocab, history)


def top_neighbours(vectors: torch.Tensor, queries: np.ndarray, k: int, cells: int = 1 << 25) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, similarities), each (Q, k), of the k most similar rows to each query row (self excluded).

    Queries go in batches of ``cells // rows`` so one score block stays near ``cells`` floats (128 MiB).
    """
    idx, sim = [], []
    batch = max(1, cells // len(vectors))
    for lo in range(0, len(queries), batch):
        q = torch.from_numpy(queries[lo : lo + batch])  # (b,)
        scores = vectors[q] @ vectors.T  # (b, N)
        scores[torch.arange(len(q)), q] = float("-inf")
        top = torch.topk(scores, k, dim=1)
        idx.append(top.indices.numpy())
        sim.append(top.values.numpy())
    return np.concatenate(idx), np.concatenate(sim)


def nearest_neighbours(emb: ItemEmbeddings, k: int = 10, items: list[str] | None = None,
                       max_queries: int | None = 10_000, seed: int = 0) -> pd.DataFrame:
    """Return the k nearest items (cosine) of each query item: item_id, rank, neighbour, similarity.

    Queries are ``items``, else every item, or a seeded sample of ``max_queries`` of them when the
    vocabulary is larger (exact search costs queries x items).
    """
    if not 0 < k < emb.vocab.size:
        raise ValueError(f"nearest_neighbours: k={k} must be in 1..{emb.vocab.size - 1} (vocabulary of {emb.vocab.size})")
    queries = np.arange(1, emb.vocab.size + 1) if items is None else emb.vocab.encode(np.asarray(items))
    if (queries == 0).any():
        raise KeyError(f"nearest_neighbours: items not in the vocabulary: {list(np.asarray(items)[queries == 0][:5])}")
    if items is None and max_queries is not None and len(queries) > max_queries:
        queries = np.sort(np.random.default_rng(seed).choice(queries, size=max_queries, replace=False))
    vectors = torch.from_numpy(emb.vectors[1:])  # (n_items, D): padding is never a neighbour
    idx, sim = top_neighbours(vectors, queries - 1, k)
    return pd.DataFrame({
        C.ITEM: np.repeat(emb.vocab.decode(queries), k).astype(str), "rank": np.tile(np.arange(1, k + 1), len(queries)),
        "neighbour": emb.vocab.decode(idx.ravel() + 1).astype(str), "similarity": sim.ravel(),
    })


def group_membership(vocab: ItemVocab, groups: pd.Series) -> tuple[np.ndarray, sp.csr_matrix]:
    """Return (dense indices of vocabulary items with a group, their (L, G) 0/1 membership matrix)."""
    pairs = pd.DataFrame({"item": groups.index.astype(str), "group": groups.to_numpy()}).dropna().drop_duplicates()
    dense = vocab.encode(pairs["item"].to_numpy())  # (P,) 0 = not in the vocabulary
    labelled, row = np.unique(dense[dense > 0], return_inverse=True)
    col = pd.factorize(pairs["group"][dense > 0])[0]
    n_groups = int(col.max()) + 1 if len(col) else 0
    return labelled, sp.csr_matrix((np.ones(len(row)), (row, col)), shape=(len(labelled), n_groups))


def share_group(member: sp.csr_matrix, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Return whether rows i[p] and j[p] of the membership matrix share at least one group, per p."""
    return np.asarray(member[i].multiply(member[j]).sum(axis=1)).ravel() > 0


def chance_share(member: sp.csr_matrix, rng: np.random.Generator, pairs: int = 200_000) -> float:
    """Return the probability that two distinct random labelled items share a group.

    Exact when every item has one group; estimated from ``pairs`` random pairs otherwise.
    """
    n = member.shape[0]
    if (np.diff(member.indptr) == 1).all():
        sizes = np.asarray(member.sum(axis=0)).ravel()
        return float((sizes * (sizes - 1)).sum() / (n * (n - 1)))
    i = rng.integers(0, n, pairs)
    j = (i + rng.integers(1, n, pairs)) % n  # uniform over the other items
    return float(share_group(member, i, j).mean())


def group_recovery(emb: ItemEmbeddings, groups: pd.Series, k: int = 10, max_queries: int = 5000, seed: int = 0) -> dict[str, Any]:
    """Return the share of items' k nearest labelled neighbours that share a group with them, and the random rate.

    ``groups`` maps item id (index, repeated for an item in several groups) to a latent group;
    neighbours are searched among labelled vocabulary items only.
    """
    labelled, member = group_membership(emb.vocab, groups)
    if len(labelled) <= k:
        raise ValueError(f"group_recovery: only {len(labelled)} vocabulary items have a group; need more than k={k}")
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(len(labelled), size=min(max_queries, len(labelled)), replace=False))
    idx, _ = top_neighbours(torch.from_numpy(emb.vectors[labelled]), queries, k)  # (Q, k) rows of labelled
    same = float(share_group(member, np.repeat(queries, k), idx.ravel()).mean())
    chance = chance_share(member, rng)
    return {"k": k, "queries": len(queries), "labelled_items": len(labelled),
            "unlabelled_items": emb.vocab.size - len(labelled), "groups": member.shape[1],
            "same_group_share": same, "random_share": chance, "lift": same / chance if chance > 0 else float("inf")}


def project_2d(vectors: np.ndarray) -> np.ndarray:
    """Return the (N, 2) projection of rows onto their top two principal components."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)  # (N, D)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)  # vt: (D, D)
    return centred @ vt[:2].T  # (N, 2)


def plot_embedding_map(emb: ItemEmbeddings, path: Path | str, labels: pd.Series | None = None,
                       max_points: int = 20000, seed: int = 0) -> Path:
    """Write a 2-D PCA map of (a sample of) the item vectors, coloured by label; return its path."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(emb.vocab.size, size=min(max_points, emb.vocab.size), replace=False)) + 1
    xy = project_2d(emb.vectors[rows].astype(np.float64))
    fig, ax = plt.subplots(figsize=(7, 6))
    colour = None
    if labels is not None:
        colour = pd.factorize(labels.reindex(emb.vocab.ids[rows].astype(str)), use_na_sentinel=True)[0]
    ax.scatter(xy[:, 0], xy[:, 1], c=colour, s=3, cmap="tab20" if colour is not None else None, alpha=0.7)
    ax.set(xlabel="PC 1", ylabel="PC 2", title=f"item embeddings: {len(rows)} of {emb.vocab.size} items")
    fig.tight_layout()
    return write_figure(fig, path)
