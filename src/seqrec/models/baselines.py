"""Count- and neighbourhood-based baselines of the GRU4Rec paper (Hidasi et al., ICLR 2016).

All scores follow ``Recommender``'s contract: float32 (B, n_items + 1), column 0 = padding.
Popularity back-off: items the model has no evidence for are ranked by training
popularity, below every item it has evidence for. ``normalise_popularity`` scales support
into [0, 0.5], so that ``count + popularity`` orders by count, then by popularity: exact in
float32 while counts stay below 2**23, and popularity tie-breaks are resolved while
counts * 2**-24 is below the popularity step 1 / (2 * max support).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from seqrec.config import ItemKnnConfig, SessionKnnConfig
from seqrec.models.base import Recommender, Validate
from seqrec.sequences import SessionDataset


def normalise_popularity(support: np.ndarray) -> np.ndarray:
    """Return float32 popularity scaled into [0, 0.5] (column 0 = 0)."""
    support = np.asarray(support, dtype=np.float64)
    top = support.max() if support.size and support.max() > 0 else 1.0
    out = (0.5 * support / top).astype(np.float32)
    out[0] = 0.0
    return out


def session_item_matrix(data: SessionDataset, binary: bool = True) -> sp.csr_matrix:
    """Return the (n_sessions, n_items + 1) session-item matrix (1 per distinct item if binary)."""
    rows = np.repeat(np.arange(data.n_sessions), data.lengths)
    values = np.ones(data.n_events, dtype=np.float64)
    m = sp.csr_matrix((values, (rows, data.items)), shape=(data.n_sessions, data.vocab.size + 1))
    m.sum_duplicates()
    if binary:
        m.data[:] = 1.0
    return m


def count_transitions(data: SessionDataset) -> sp.csr_matrix:
    """Return the (V + 1, V + 1) CSR count of consecutive pairs prev -> next within sessions."""
    same_session = np.ones(max(data.n_events - 1, 0), dtype=bool)
    same_session[data.offsets[1:-1] - 1] = False  # pair (last of session i, first of i + 1)
    prev, nxt = data.items[:-1][same_session], data.items[1:][same_session]
    n = data.vocab.size + 1
    m = sp.csr_matrix((np.ones(len(prev)), (prev, nxt)), shape=(n, n))
    m.sum_duplicates()
    return m


def keep_top_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Return ``m`` keeping the ``k`` largest values of each row (ties: lower column first)."""
    m = m.tocsr()
    m.sort_indices()
    row = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((-m.data, row))  # by row, then value descending; stable by column
    pos = np.arange(len(order)) - m.indptr[row[order]]
    keep = np.sort(order[pos < k])
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row[keep], minlength=m.shape[0]))])
    return sp.csr_matrix((m.data[keep], m.indices[keep], indptr), shape=m.shape)


def item_cosine(data: SessionDataset, cfg: ItemKnnConfig) -> sp.csr_matrix:
    """Return the item-item similarity c_ij / (s_i^a s_j^(1-a) + lambda), top ``neighbours`` per row."""
    x = session_item_matrix(data)  # (S, V + 1) binary
    co = (x.T @ x).tocsr()  # (V + 1, V + 1): sessions holding both items
    support = co.diagonal().copy()  # sessions holding each item
    co.setdiag(0)
    co.eliminate_zeros()
    coo = co.tocoo()
    denom = support[coo.row] ** cfg.alpha * support[coo.col] ** (1 - cfg.alpha) + cfg.shrinkage
    sim = sp.csr_matrix((coo.data / denom, (coo.row, coo.col)), shape=co.shape)
    return keep_top_per_row(sim, cfg.neighbours)


def last_items(items: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Return each left-aligned prefix's last item (B,) from items (B, L) and lengths (B,)."""
    return items[np.arange(len(items)), np.asarray(lengths) - 1]


def tensor(a: np.ndarray) -> torch.Tensor:
    """Return a CPU tensor copy of an array (safe for ``weights_only`` checkpoints)."""
    return torch.from_numpy(np.ascontiguousarray(a).copy())


def csr_state(m: sp.csr_matrix) -> dict:
    """Return a CSR matrix as tensors and its shape."""
    return {"data": tensor(m.data), "indices": tensor(m.indices), "indptr": tensor(m.indptr), "shape": list(m.shape)}


def csr_from_state(state: dict) -> sp.csr_matrix:
    """Return the CSR matrix saved by ``csr_state``."""
    parts = (state["data"].numpy(), state["indices"].numpy(), state["indptr"].numpy())
    return sp.csr_matrix(parts, shape=tuple(state["shape"]))


class CountModel(Recommender):
    """Shared parts of the baselines: fitted support, its normalised popularity, state checks."""

    support: np.ndarray | None = None

    def fitted_popularity(self) -> np.ndarray:
        """Return normalised popularity; raise if the model is not fitted."""
        if self.support is None:
            raise RuntimeError(f"{self.name}: score called before fit")
        return normalise_popularity(self.support)

    def fit_support(self, train: SessionDataset) -> None:
        """Store training support counts (events per item)."""
        if train.n_events == 0:
            raise ValueError(f"{self.name}: training data has no events")
        self.support = train.item_support()
        self.vocab = train.vocab


class LastItemModel(CountModel):
    """A model whose scores depend only on the current (last) item of the prefix."""

    def score_items(self, last: np.ndarray) -> np.ndarray:
        """Return scores (B, V + 1) given the last item (B,) of each prefix."""
        raise NotImplementedError

    def score_steps(self, items: np.ndarray, lengths: np.ndarray) -> Iterator[np.ndarray]:
        """Yield scores (B, V + 1) from the item at each position."""
        for t in range(items.shape[1]):
            yield self.score_items(items[:, t])

    def score_last(self, items: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Return scores (B, V + 1) from each row's last item, in one step."""
        return self.score_items(last_items(items, lengths))


class Popularity(LastItemModel):
    """Scores every item by its number of training events, whatever the session."""

    name = "popularity"

    def fit(self, train: SessionDataset, validate: Validate | None = None) -> "Popularity":
        """Count training events per item; return self."""
        self.fit_support(train)
        return self

    def score_items(self, last: np.ndarray) -> np.ndarray:
        """Return the support counts (B, V + 1), whatever the item, as a read-only broadcast view."""
        self.fitted_popularity()
        row = self.support.astype(np.float32)  # (V + 1,)
        return np.broadcast_to(row, (len(last), len(row)))  # (B, V + 1), no copy

    def state_dict(self) -> dict:
        """Return the support counts."""
        return {"support": tensor(self.support)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Popularity":
        """Rebuild from ``state_dict()``."""
        model = cls()
        model.support = state["support"].numpy()
        return model


class SessionPopularity(Popularity):
    """S-POP: items seen most often in the current prefix first, then by training popularity."""

    name = "spop"

    def score_steps(self, items: np.ndarray, lengths: np.ndarray) -> Iterator[np.ndarray]:
        """Yield count-in-prefix + normalised popularity (B, V + 1) after each position."""
        pop = self.fitted_popularity()  # (V + 1,)
        counts = np.zeros((len(items), len(pop)), dtype=np.float32)  # (B, V + 1)
        rows = np.arange(len(items))
        for t in range(items.shape[1]):
            np.add.at(counts, (rows, items[:, t]), 1.0)  # padding adds to column 0 only
            yield counts + pop  # (B, V + 1)

    def score_last(self, items: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Return count-in-prefix + normalised popularity (B, V + 1) for whole 0-padded prefixes."""
        pop = self.fitted_popularity()  # (V + 1,)
        counts = np.zeros((len(items), len(pop)), dtype=np.float32)  # (B, V + 1)
        np.add.at(counts, (np.repeat(np.arange(len(items)), items.shape[1]), items.ravel()), 1.0)
        return counts + pop  # (B, V + 1); padding counted in column 0 only

    def sparse_scores(self, items: np.ndarray, lengths: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        """Return (count in prefix + popularity, stored for the prefix's items (B, V + 1); popularity (V + 1,))."""
        pop = self.fitted_popularity()
        rows = np.repeat(np.arange(len(items)), items.shape[1])
        keep = items.ravel() != 0  # padding
        counts = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], items.ravel()[keep])),
                               shape=(len(items), len(pop)))  # duplicates summed
        counts.data += pop[counts.indices]  # >= 1 > 0.5 >= any popularity
        return counts, pop


class Markov(LastItemModel):
    """First-order Markov chain: counts of last item -> next item, popularity back-off."""

    name = "markov"
    transitions: sp.csr_matrix | None = None

    def fit(self, train: SessionDataset, validate: Validate | None = None) -> "Markov":
        """Count consecutive item pairs in training sessions; return self."""
        self.fit_support(train)
        self.transitions = count_transitions(train)
        return self

    def score_items(self, last: np.ndarray) -> np.ndarray:
        """Return transition counts from the last item + normalised popularity (B, V + 1)."""
        pop = self.fitted_popularity()  # (V + 1,)
        return self.transitions[last].toarray().astype(np.float32) + pop  # (B, V + 1)

    def sparse_scores(self, items: np.ndarray, lengths: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        """Return (transition counts + popularity, stored for the last item's successors; popularity (V + 1,))."""
        pop = self.fitted_popularity()
        rows = self.transitions[last_items(items, lengths)].astype(np.float32)  # (B, V + 1)
        rows.eliminate_zeros()
        rows.data += pop[rows.indices]  # counts >= 1 > 0.5 >= any popularity
        return rows, pop

    def state_dict(self) -> dict:
        """Return support and transition counts."""
        return {"support": tensor(self.support), "transitions": csr_state(self.transitions)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Markov":
        """Rebuild from ``state_dict()``."""
        model = cls()
        model.support = state["support"].numpy()
        model.transitions = csr_from_state(state["transitions"])
        return model


class ItemKNN(LastItemModel):
    """Item-KNN: similarity row of the last item (session co-occurrence cosine), popularity back-off."""

    name = "itemknn"
    similarity: sp.csr_matrix | None = None

    def __init__(self, cfg: ItemKnnConfig | None = None) -> None:
        self.cfg = cfg or ItemKnnConfig()

    def fit(self, train: SessionDataset, validate: Validate | None = None) -> "ItemKNN":
        """Compute the top-``neighbours`` similarity matrix; return self."""
        self.fit_support(train)
        self.similarity = item_cosine(train, self.cfg)
        return self

    def score_items(self, last: np.ndarray) -> np.ndarray:
        """Return similarity to the last item; items without similarity get popularity below it."""
        pop = self.fitted_popularity()  # (V + 1,)
        sim = self.similarity[last].toarray().astype(np.float32)  # (B, V + 1)
        return np.where(sim > 0, sim, pop * self.backoff_floor())  # (B, V + 1)

    def backoff_floor(self) -> np.float32:
        """Return the popularity scale of the back-off: pop <= 0.5, so pop * floor stays below every kept similarity."""
        return np.float32(self.similarity.data.min() if self.similarity.nnz else 1.0)

    def sparse_scores(self, items: np.ndarray, lengths: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        """Return (similarity rows of the last items, stored where > 0; popularity scaled below the smallest similarity)."""
        sim = self.similarity[last_items(items, lengths)].astype(np.float32)  # (B, V + 1)
        sim.data[sim.data < 0] = 0  # score_items keeps only positive similarities
        sim.eliminate_zeros()
        return sim, self.fitted_popularity() * self.backoff_floor()

    def state_dict(self) -> dict:
        """Return config, support and similarity matrix."""
        return {
            "config": self.cfg.model_dump(),
            "support": tensor(self.support),
            "similarity": csr_state(self.similarity),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "ItemKNN":
        """Rebuild from ``state_dict()``."""
        model = cls(ItemKnnConfig(**state["config"]))
        model.support = state["support"].numpy()
        model.similarity = csr_from_state(state["similarity"])
        return model


class SessionKNN(CountModel):
    """Session-KNN (Jannach & Ludewig 2017): items of the most similar recent training sessions.

    For a prefix, candidate neighbours are the ``sample`` most recent training sessions
    (by start order) sharing an item with it; similarity is the cosine of binary item sets,
    |p & n| / sqrt(|p| |n|); the ``neighbours`` most similar are kept and an item scores the
    sum of the similarities of the kept sessions holding it. Popularity back-off below.
    """

    name = "sknn"
    sessions: sp.csr_matrix | None = None

    def __init__(self, cfg: SessionKnnConfig | None = None) -> None:
        self.cfg = cfg or SessionKnnConfig()

    def fit(self, train: SessionDataset, validate: Validate | None = None) -> "SessionKNN":
        """Store the binary session-item matrix; return self."""
        self.fit_support(train)
        self.sessions = session_item_matrix(train)  # (S, V + 1), rows in start order
        return self

    def score_row(self, prefix: np.ndarray, index: tuple[sp.csc_matrix, np.ndarray, np.ndarray]) -> np.ndarray:
        """Return summed neighbour similarity (V + 1,) for one prefix, popularity back-off below."""
        item_sessions, sizes, pop = index
        prefix = np.unique(prefix)  # a set of items
        overlap = np.asarray(item_sessions[:, prefix].sum(1)).ravel()  # (S,) shared items
        cand = np.flatnonzero(overlap)[-self.cfg.sample :]  # most recent sessions sharing an item
        sim = overlap[cand] / np.sqrt(sizes[cand] * len(prefix))  # (C,)
        top = np.argsort(-sim, kind="stable")[: self.cfg.neighbours]
        raw = np.asarray(self.sessions[cand[top]].T @ sim[top]).ravel().astype(np.float32)  # (V + 1,)
        floor = raw[raw > 0].min(initial=1.0)  # back-off stays below every neighbour item: pop <= 0.5
        return np.where(raw > 0, raw, pop * floor)

    def build_index(self) -> tuple[sp.csc_matrix, np.ndarray, np.ndarray]:
        """Return (item -> sessions CSC matrix, session sizes, normalised popularity) for scoring."""
        pop = self.fitted_popularity()  # (V + 1,)
        return self.sessions.tocsc(), np.asarray(self.sessions.sum(1)).ravel(), pop

    def score_steps(self, items: np.ndarray, lengths: np.ndarray) -> Iterator[np.ndarray]:
        """Yield summed neighbour similarity (B, V + 1) after each position."""
        index = self.build_index()
        for t in range(items.shape[1]):
            out = np.zeros((len(items), self.sessions.shape[1]), dtype=np.float32)  # (B, V + 1)
            for b in np.flatnonzero(lengths > t):
                out[b] = self.score_row(items[b, : t + 1], index)
            yield out

    def score_last(self, items: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Return summed neighbour similarity (B, V + 1) for whole prefixes."""
        index = self.build_index()
        return np.stack([self.score_row(items[b, :n], index) for b, n in enumerate(lengths)])  # (B, V + 1)

    def state_dict(self) -> dict:
        """Return config, support and the session-item matrix."""
        return {
            "config": self.cfg.model_dump(),
            "support": tensor(self.support),
            "sessions": csr_state(self.sessions),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "SessionKNN":
        """Rebuild from ``state_dict()``."""
        model = cls(SessionKnnConfig(**state["config"]))
        model.support = state["support"].numpy()
        model.sessions = csr_from_state(state["sessions"])
        return model
