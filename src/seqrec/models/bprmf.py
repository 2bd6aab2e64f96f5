"""BPR-MF (Rendle et al. 2009) as the session baseline of the GRU4Rec paper.

Training: each training session is a user; one step samples (session, item of the
session, uniform random item) triples and maximises log sigmoid(x_ui - x_uj), with
x_ui = <p_u, q_i> + b_i and L2 regularisation ``reg`` on the factors and biases touched.
Scoring anonymous sessions (GRU4Rec paper, section 4): the session's feature vector is
the average of the item factors q of the items in its prefix, so
score(i) = <mean(q_prefix), q_i> + b_i. Session factors are not kept after training.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from seqrec.config import BprMfConfig
from seqrec.models.base import Recommender, Validate
from seqrec.sequences import SessionDataset


class BPRMF(Recommender):
    """Matrix factorisation with the BPR loss; sessions scored by their averaged item factors."""

    name = "bprmf"

    def __init__(self, cfg: BprMfConfig | None = None) -> None:
        self.cfg = cfg or BprMfConfig()
        self.item_factors: torch.Tensor | None = None  # (V + 1, F)
        self.item_bias: torch.Tensor | None = None  # (V + 1,)
        self.losses: list[float] = []  # mean training loss per epoch

    def build_parameters(self, n_sessions: int, n_items: int, gen: torch.Generator) -> list[torch.nn.Embedding]:
        """Return sparse embeddings (session factors, item factors, item biases), seeded."""
        tables = [
            torch.nn.Embedding(n_sessions, self.cfg.factors, sparse=True),
            torch.nn.Embedding(n_items + 1, self.cfg.factors, sparse=True),
            torch.nn.Embedding(n_items + 1, 1, sparse=True),
        ]
        with torch.no_grad():
            tables[0].weight.normal_(0.0, 0.1, generator=gen)
            tables[1].weight.normal_(0.0, 0.1, generator=gen)
            tables[2].weight.zero_()
        return tables

    def build_optimizer(self, tables: list[torch.nn.Embedding]) -> torch.optim.Optimizer:
        """Return the configured optimiser over the (sparse) tables."""
        params = [p for t in tables for p in t.parameters()]
        if self.cfg.optimizer == "adagrad":
            return torch.optim.Adagrad(params, lr=self.cfg.lr)
        return torch.optim.SparseAdam(params, lr=self.cfg.lr)

    def bpr_loss(
        self, tables: list[torch.nn.Embedding], u: torch.Tensor, i: torch.Tensor, j: torch.Tensor
    ) -> torch.Tensor:
        """Return the mean BPR loss plus L2 regularisation for a batch of (session, pos, neg)."""
        users, items, bias = tables
        p, qi, qj = users(u), items(i), items(j)  # (B, F) each
        bi, bj = bias(i)[:, 0], bias(j)[:, 0]  # (B,)
        x = (p * (qi - qj)).sum(1) + bi - bj  # (B,)
        penalty = (p.pow(2) + qi.pow(2) + qj.pow(2)).sum(1) + bi.pow(2) + bj.pow(2)  # (B,)
        return -F.logsigmoid(x).mean() + self.cfg.reg * penalty.mean()

    def fit(self, train: SessionDataset, validate: Validate | None = None) -> "BPRMF":
        """Train with BPR for ``cfg.epochs`` epochs over all training events; return self."""
        self.vocab = train.vocab
        if train.n_events == 0:
            raise ValueError(f"{self.name}: training data has no events")
        gen = torch.Generator().manual_seed(self.cfg.seed)
        tables = self.build_parameters(train.n_sessions, train.vocab.size, gen)
        opt = self.build_optimizer(tables)
        sessions = torch.from_numpy(np.repeat(np.arange(train.n_sessions), train.lengths))  # (N,)
        positives = torch.from_numpy(train.items.copy())  # (N,)
        self.losses = []
        for _ in range(self.cfg.epochs):
            order = torch.randperm(len(positives), generator=gen)  # (N,)
            total = 0.0
            for batch in order.split(self.cfg.batch_size):
                negatives = torch.randint(1, train.vocab.size + 1, (len(batch),), generator=gen)  # (B,)
                loss = self.bpr_loss(tables, sessions[batch], positives[batch], negatives)
                opt.zero_grad()
                loss.backward()
                with torch.sparse.check_sparse_tensor_invariants(enable=False):  # explicit: no per-step checks
                    opt.step()
                total += float(loss.detach()) * len(batch)
            self.losses.append(total / len(positives))
        self.item_factors = tables[1].weight.detach().clone()
        self.item_bias = tables[2].weight.detach()[:, 0].clone()
        return self

    def score_steps(self, items: np.ndarray, lengths: np.ndarray) -> Iterator[np.ndarray]:
        """Yield <mean item factor of the prefix, q_i> + b_i (B, V + 1) after each position."""
        if self.item_factors is None:
            raise RuntimeError(f"{self.name}: score called before fit")
        q, b = self.item_factors, self.item_bias  # (V + 1, F), (V + 1,)
        x = torch.as_tensor(items)  # (B, L)
        total = torch.zeros(len(x), q.shape[1])  # (B, F)
        # q and b are detached: no graph is built. (Never yield inside ``torch.no_grad()``: the
        # grad mode would leak to the caller while this generator is suspended.)
        for t in range(x.shape[1]):
            total += q[x[:, t]]  # padding rows add q[0]; their scores are ignored
            yield ((total / (t + 1)) @ q.T + b).numpy()  # (B, V + 1)

    def query_vectors(self, items: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        """Return the mean item factor (B, F) of each whole 0-padded prefix."""
        if self.item_factors is None:
            raise RuntimeError(f"{self.name}: score called before fit")
        x, n = torch.as_tensor(items), torch.as_tensor(lengths)  # (B, L), (B,)
        mask = (torch.arange(x.shape[1])[None, :] < n[:, None]).float()  # (B, L)
        return (self.item_factors[x] * mask[:, :, None]).sum(1) / n[:, None].float()  # (B, F)

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the item factors (V + 1, F) and item biases (V + 1,)."""
        return self.item_factors, self.item_bias

    def score_last(self, items: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Return <mean item factor of each whole 0-padded prefix, q_i> + b_i (B, V + 1)."""
        return (self.query_vectors(items, lengths) @ self.item_factors.T + self.item_bias).numpy()  # (B, V + 1)

    def state_dict(self) -> dict:
        """Return config, item factors and item biases."""
        return {"config": self.cfg.model_dump(), "item_factors": self.item_factors, "item_bias": self.item_bias}

    @classmethod
    def from_state_dict(cls, state: dict) -> "BPRMF":
        """Rebuild from ``state_dict()``."""
        model = cls(BprMfConfig(**state["config"]))
        model.item_factors = state["item_factors"]
        model.item_bias = state["item_bias"]
        return model
