"""GRU4Rec (Hidasi et al., ICLR 2016; Hidasi & Karatzoglou, CIKM 2018), re-implemented from the papers.

* Session-parallel mini-batches: B slots, each feeding its session's current item and targeting
  the next; a slot whose session is used up takes the next session (time order) and its hidden
  state is reset to zero. No BPTT: the state is detached after every step.
* Output sampling: the scores of a step are over [the B targets of the batch, ``n_sample`` extra
  items shared by the batch, drawn ∝ support^alpha from a refreshed sample store] -> (B, B + n_sample),
  positive on the diagonal.
* Losses: cross-entropy with logQ correction, BPR-max (+ ``bpreg``), TOP1-max, BPR, TOP1.
* Embeddings: ``onehot`` (a GRU input-weight row per item), ``separate``, ``constrained``
  (the output item matrix Wy is the input embedding too).
* Adagrad with momentum on touched rows (``seqrec.models.kernels.AdagradMomentum``), or AdamW.

The batching lives in ``gru4rec_batches.py`` and the row-sparse speed machinery in ``kernels.py``.

Accidental hits (a sampled negative equal to the target) are not masked, as in the papers;
pairwise losses exclude only the positive's own column (the diagonal).
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seqrec.config import Gru4RecConfig
from seqrec.models.gru4rec_batches import EpochBatches, SampleStore, build_session_parallel_batches
from seqrec.models.kernels import AdagradMomentum, gather_rows
from seqrec.models.neural import NeuralRecommender, Validate
from seqrec.models.repeat import RepeatHead, RepeatTerm, repeat_strength, with_first
from seqrec.models.training import autocast_for, configure_threads, use_amp
from seqrec.sequences import PAD, SessionDataset


# --------------------------------------------------------------------------- losses
# Every loss takes scores O (B, K), positive of row i in column i, and returns per-row losses (B,).
def cross_entropy_loss(scores: torch.Tensor, logq: torch.Tensor | None = None) -> torch.Tensor:
    """Return -log softmax(O - logq)[i, i] per row; ``logq`` (K,) is the per-column correction."""
    if logq is not None:
        scores = scores - logq[None, :]  # (B, K)
    return -torch.log_softmax(scores.float(), dim=1).diagonal()  # (B,)


def negative_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Return softmax weights over each row's negatives (the diagonal gets weight 0)."""
    eye = torch.eye(scores.shape[0], scores.shape[1], dtype=torch.bool, device=scores.device)  # (B, K)
    return torch.softmax(scores.masked_fill(eye, -math.inf), dim=1)  # (B, K)


def bpr_max_loss(scores: torch.Tensor, bpreg: float = 0.0) -> torch.Tensor:
    """Return BPR-max: -log Σ_j s_j σ(r_i - r_j) + bpreg Σ_j s_j r_j², s = softmax over negatives."""
    scores = scores.float()
    w = negative_softmax(scores)  # (B, K)
    pos = scores.diagonal()[:, None]  # (B, 1)
    loss = -torch.log((w * torch.sigmoid(pos - scores)).sum(1) + 1e-24)  # (B,)
    return loss + bpreg * (w * scores * scores).sum(1)


def top1_max_loss(scores: torch.Tensor) -> torch.Tensor:
    """Return TOP1-max: Σ_j s_j (σ(r_j - r_i) + σ(r_j²)), s = softmax over negatives."""
    scores = scores.float()
    w = negative_softmax(scores)  # (B, K)
    pos = scores.diagonal()[:, None]  # (B, 1)
    return (w * (torch.sigmoid(scores - pos) + torch.sigmoid(scores * scores))).sum(1)


def off_diagonal_mean(values: torch.Tensor) -> torch.Tensor:
    """Return each row's mean over all columns but its diagonal one."""
    eye = torch.eye(values.shape[0], values.shape[1], dtype=torch.bool, device=values.device)  # (B, K)
    return values.masked_fill(eye, 0.0).sum(1) / (values.shape[1] - 1)  # (B,)


def bpr_loss(scores: torch.Tensor) -> torch.Tensor:
    """Return the 2016 BPR loss: mean over negatives of -log σ(r_i - r_j)."""
    scores = scores.float()
    return off_diagonal_mean(-F.logsigmoid(scores.diagonal()[:, None] - scores))


def top1_loss(scores: torch.Tensor) -> torch.Tensor:
    """Return the 2016 TOP1 loss: mean over negatives of σ(r_j - r_i) + σ(r_j²)."""
    scores = scores.float()
    return off_diagonal_mean(torch.sigmoid(scores - scores.diagonal()[:, None]) + torch.sigmoid(scores * scores))


def logq_correction(log_support: torch.Tensor, out_items: torch.Tensor, n_batch: int, logq: float, alpha: float) -> torch.Tensor:
    """Return the (K,) logQ term: logq·log(support) for in-batch targets, logq·log(support^alpha) for samples."""
    corr = log_support.index_select(0, out_items) * logq  # (K,)
    corr[n_batch:] *= alpha  # samples were drawn with probability ∝ support^alpha
    return corr


# --------------------------------------------------------------------------- network
def uniform_init(*shape: int, fan_in: int, fan_out: int) -> nn.Parameter:
    """Return a parameter drawn from U(-sqrt(6/(fan_in+fan_out)), +sqrt(...))."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


def gate_init(rows: int, h: int) -> nn.Parameter:
    """Return a (rows, 3h) GRU weight, each gate block initialised on its own fans."""
    return nn.Parameter(torch.cat([uniform_init(rows, h, fan_in=rows, fan_out=h).data for _ in range(3)], 1))


class Gru4RecNet(nn.Module):
    """Item matrices, GRU layers and the output layer of GRU4Rec."""

    def __init__(self, cfg: Gru4RecConfig, n_items: int):
        super().__init__()
        h, v = cfg.hidden, n_items + 1
        self.cfg, self.sparse = cfg, cfg.optimizer == "adagrad"
        # (V, h + 1): the output item matrix Wy and its bias By in one parameter, so a training step
        # gathers, back-propagates and updates the rows it touches once for both
        self.Wyb = nn.Parameter(torch.cat([uniform_init(v, h, fan_in=v, fan_out=h).data, torch.zeros(v, 1)], 1))
        self.repeat = nn.Parameter(torch.zeros(h + 1)) if cfg.repeat_bias else None  # (h + 1,) beta(h) = w.h + c
        self.repeat_head = RepeatHead(h, cfg.repeat_window) if cfg.repeat_mixture else None
        if cfg.embedding == "onehot":
            self.Wx = gate_init(v, h)  # (V, 3h): one-hot input times W_ih == a row of W_ih
        elif cfg.embedding == "separate":
            d = cfg.embedding_dim or h
            self.E = uniform_init(v, d, fan_in=v, fan_out=d)  # (V, d)
        in_dim = {"onehot": 0, "separate": cfg.embedding_dim or h, "constrained": h}[cfg.embedding]
        self.W_ih = nn.ParameterList([gate_init(in_dim if i == 0 else h, h) for i in range(cfg.layers)])
        self.W_hh = nn.ParameterList([gate_init(h, h) for _ in range(cfg.layers)])
        self.b_ih = nn.Parameter(torch.zeros(cfg.layers, 3 * h))
        self.b_hh = nn.Parameter(torch.zeros(cfg.layers, 3 * h))

    @property
    def Wy(self) -> torch.Tensor:
        """The output item matrix (V, h), a view of ``Wyb``."""
        return self.Wyb[:, :-1]

    @property
    def By(self) -> torch.Tensor:
        """The output bias (V, 1), a view of ``Wyb``."""
        return self.Wyb[:, -1:]

    def input_weights(self) -> torch.Tensor:
        """Return the matrix whose rows are the items' input vectors."""
        return {"onehot": getattr(self, "Wx", None), "separate": getattr(self, "E", None), "constrained": self.Wy}[self.cfg.embedding]

    def gru_cell(self, gi: torch.Tensor, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Return the next hidden state (B, h) from input gate pre-activations gi (B, 3h) and state h (B, h)."""
        n = h.shape[1]
        gh = h @ self.W_hh[layer] + self.b_hh[layer]  # (B, 3h)
        rz = torch.sigmoid(gi[:, : 2 * n] + gh[:, : 2 * n])  # (B, 2h) reset and update gates
        r, z = rz[:, :n], rz[:, n:]  # (B, h) each
        cand = torch.tanh(gi[:, 2 * n :] + r * gh[:, 2 * n :])  # (B, h)
        return torch.lerp(cand, h, z)  # (B, h) = (1 - z)·cand + z·h

    def recur(self, emb: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Return the new hidden states (L, B, h) from input vectors emb (B, d) and states (L, B, h)."""
        cfg, x = self.cfg, F.dropout(emb, self.cfg.dropout_emb, self.training)
        out = []
        for layer in range(cfg.layers):
            if layer == 0 and cfg.embedding == "onehot":  # x already holds the item's W_ih row
                h = self.gru_cell(x + self.b_ih[0], hidden[0], 0)  # (B, h)
            else:  # the same cell in one ATen call (gates r, z, n; h' = (1 - z)·n + z·h)
                h = torch.gru_cell(x, hidden[layer], self.W_ih[layer].T, self.W_hh[layer].T, self.b_ih[layer], self.b_hh[layer])
            x = F.dropout(h, cfg.dropout_hidden, self.training)  # dropout on the carried state too
            out.append(x)
        return torch.stack(out)  # (L, B, h)

    def forward(self, items: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Return the new hidden states (L, B, h) after feeding items (B,) to states (L, B, h)."""
        return self.recur(self.input_weights().index_select(0, items), hidden)

    def train_forward(self, x: torch.Tensor, hidden: torch.Tensor, out_items: torch.Tensor,
                      seen_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (new states (L, B, h), scores (B, K) against out_items (K,)); sparse grads touch only used rows.

        ``seen_out`` (B, K) bool: output item k already occurs in slot b's session (repeat bias only).
        """
        n = len(x)
        if self.cfg.embedding == "constrained":  # one gather serves input and output rows of Wy
            rows, pos = gather_rows(self.Wyb, torch.cat([x, out_items]), self.sparse)  # (R, h + 1), (B + K,)
            emb, pos = rows.index_select(0, pos[:n])[:, :-1], pos[n:]  # (B, h), (K,)
        else:
            in_rows, in_pos = gather_rows(self.input_weights(), x, self.sparse)
            emb = in_rows.index_select(0, in_pos)  # (B, d)
            rows, pos = gather_rows(self.Wyb, out_items, self.sparse)  # (R, h + 1), (K,)
        states = self.recur(emb, hidden)  # (L, B, h)
        # score each distinct row once (R <= B + K: repeated samples cost nothing), then spread to K columns
        scores = torch.addmm(rows[:, -1], states[-1], rows[:, :-1].T).index_select(1, pos)  # (B, K) with bias
        if self.repeat is not None:
            scores = scores + self.repeat_beta(states[-1])[:, None] * seen_out  # (B, K)
        return states, self.final_activation(scores)  # (B, K)

    def final_activation(self, scores: torch.Tensor) -> torch.Tensor:
        """Return scores after the configured final activation (linear, elu(elu_param), tanh)."""
        if self.cfg.final_act == "elu":
            return F.elu(scores, alpha=self.cfg.elu_param)
        return torch.tanh(scores) if self.cfg.final_act == "tanh" else scores

    def score_all(self, top: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Return scores (B, V) of the top-layer states against the whole catalogue; ``prefix`` (B, L): items seen."""
        scores = top @ self.Wy.T + self.By.T  # (B, V)
        term = None if prefix is None else self.repeat_term(top, prefix)
        if term is not None:
            scores[:, PAD] = -math.inf  # out of the mixture's normaliser
            scores = term.apply(scores)
        return self.final_activation(scores)

    def repeat_term(self, top: torch.Tensor, items: torch.Tensor) -> RepeatTerm | None:
        """Return the repeat term for top-layer states (B, h) after prefixes (B, L), or None without one."""
        items = items.to(top.device)
        if self.repeat is not None:
            term = RepeatTerm(items, beta=repeat_strength(self.repeat, top))
        else:
            term = None if self.repeat_head is None else self.repeat_head.window_term(top, items, self.Wy)
        return with_first(term, items, self.cfg.repeat_first)

    def repeat_beta(self, top: torch.Tensor) -> torch.Tensor | None:
        """Return the repeat bias beta (B,) for top-layer states (B, h), or None without ``repeat_bias``."""
        return None if self.repeat is None else repeat_strength(self.repeat, top)


# --------------------------------------------------------------------------- the recommender
class GRU4Rec(NeuralRecommender):
    """GRU4Rec trained with session-parallel mini-batches and sampled outputs; scores the full catalogue."""

    name = "gru4rec"
    config_class = Gru4RecConfig
    batch_stats: dict[str, int] = {}

    def make_net(self, n_items: int) -> Gru4RecNet:
        """Return a new GRU4Rec network for ``n_items`` items."""
        return Gru4RecNet(self.cfg, n_items)

    def item_embedding(self) -> nn.Parameter:
        """Return the input item vectors (E, or Wy when constrained); one-hot inputs have none."""
        if self.cfg.embedding == "onehot":
            raise ValueError("GRU4Rec: embedding='onehot' has no item embedding to warm-start; use separate/constrained")
        return self.net.input_weights()

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Return the configured optimiser over the network's parameters."""
        c = self.cfg
        if c.optimizer == "adagrad":
            return AdagradMomentum(self.net.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        return torch.optim.AdamW(self.net.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    def fit(self, train: SessionDataset, validate: Validate | None = None) -> "GRU4Rec":
        """Train for ``cfg.epochs`` (early stopping on ``validate()`` when given); return self."""
        configure_threads(self.training)
        self.build_net(train.vocab)
        c = self.cfg
        plan = build_session_parallel_batches(train, c.batch_size)
        self.batch_stats = {"steps": plan.n_steps, "short_sessions": plan.short_sessions, "unused_pairs": plan.unused_pairs}
        steps = tuple(torch.as_tensor(a, device=self.device) for a in (plan.inputs, plan.targets, plan.resets))
        support = train.item_support()
        self.log_support = torch.log(torch.as_tensor(support, dtype=torch.float32).clamp_min(1.0)).to(self.device)  # (V,)
        scaled = c.sample_alpha * self.log_support  # (V,) log support^alpha: the samples' log probability, normalised
        self.log_q_sample = scaled - torch.logsumexp(scaled[torch.as_tensor(support, device=self.device) > 0], 0)

        def make_batches(epoch: int) -> EpochBatches:
            self.hidden = torch.zeros(c.layers, c.batch_size, c.hidden, device=self.device)  # (L, B, h)
            if c.repeat_bias:  # (B, V + 1) items of each slot's session so far
                self.seen = torch.zeros(c.batch_size, train.vocab.size + 1, dtype=torch.bool, device=self.device)
            if c.repeat_mixture:  # (B, W) each slot's last items, left-padded, the current one last
                self.window = torch.zeros(c.batch_size, c.repeat_window, dtype=torch.int64, device=self.device)
            size = min(c.sample_store, plan.n_steps * c.n_sample)  # an epoch never needs more
            store = SampleStore(support, c.sample_alpha, size, c.n_sample, (self.training.seed, epoch)) if c.n_sample else None
            return EpochBatches(steps, store)

        self.fit_network(self.make_optimizer(), make_batches, self.train_step, validate,
                         loss_reduction="sum", get_loop_state=self.loop_state, set_loop_state=self.set_loop_state)
        return self

    def loop_state(self) -> dict:
        """Return the session-parallel state a resumed epoch needs (hidden states, seen items)."""
        return {"hidden": self.hidden, **({"seen": self.seen} if self.cfg.repeat_bias else {}),
                **({"window": self.window} if self.cfg.repeat_mixture else {})}

    def set_loop_state(self, state: dict) -> None:
        """Restore ``loop_state()`` onto this model's device."""
        self.hidden = state["hidden"].to(self.device)
        if "seen" in state:
            self.seen = state["seen"].to(self.device)
        if "window" in state:
            self.window = state["window"].to(self.device)

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, int]:
        """Return the summed loss of one session-parallel step and its number of targets."""
        x, y, reset, neg = batch  # (B,), (B,), (B,), (n_sample,)
        hidden = self.hidden.masked_fill(reset[None, :, None], 0.0)  # (L, B, h) new sessions start from zero
        out_items = torch.cat([y, neg])  # (K,) K = B + n_sample
        seen_out = None
        if self.cfg.repeat_bias:
            self.seen[reset] = False
            self.seen[torch.arange(len(x), device=x.device), x] = True
            seen_out = self.seen.index_select(1, out_items).float()  # (B, K)
        if self.cfg.repeat_mixture:
            self.window = torch.cat([self.window[:, 1:].masked_fill(reset[:, None], PAD), x[:, None]], 1)  # (B, W)
        states, scores = self.net.train_forward(x, hidden, out_items, seen_out)  # (L, B, h), (B, K) positives on the diagonal
        self.hidden = states.detach()  # no BPTT
        loss = self.loss_rows(scores, out_items)  # (B,)
        if self.cfg.repeat_mixture:  # the paper's loss trains the network; the head learns next to it
            loss = loss + self.mixture_rows(states[-1], scores, out_items, len(y))
        return loss.sum(), len(y)

    def mixture_rows(self, top: torch.Tensor, scores: torch.Tensor, out_items: torch.Tensor, n_batch: int) -> torch.Tensor:
        """Return the repeat head's mixture NLL per slot (B,); network states and scores detached.

        p_explore(y) = exp(s_y) / Z with Z estimated by importance sampling from the step's shared samples:
        Z ~ mean_j exp(s_j) / q_j, q the support^alpha distribution they were drawn from.
        """
        head, s = self.net.repeat_head, scores.detach().float()  # (B, K)
        samples = s[:, n_batch:] - self.log_q_sample.index_select(0, out_items[n_batch:])  # (B, n_sample)
        explore_logp = s.diagonal() - (torch.logsumexp(samples, 1) - math.log(samples.shape[1]))  # (B,)
        h, items = top.detach(), self.window
        log_w, valid = head.window_log_weights(h, items, self.net.Wy.detach())  # (B, 1, W) each
        log_mass = head.target_log_mass(log_w, items, out_items[:n_batch, None], valid)[:, 0]  # (B,)
        return head.mixture_nll(log_mass, head.gate_logit(h), explore_logp)

    def loss_rows(self, scores: torch.Tensor, out_items: torch.Tensor) -> torch.Tensor:
        """Return the configured loss per row (B,) of a (B, K) score matrix."""
        c = self.cfg
        if c.loss == "cross-entropy":
            corr = logq_correction(self.log_support, out_items, len(scores), c.logq, c.sample_alpha) if c.logq else None
            return cross_entropy_loss(scores, corr)
        if c.loss == "bpr-max":
            return bpr_max_loss(scores, c.bpreg)
        return {"top1-max": top1_max_loss, "bpr": bpr_loss, "top1": top1_loss}[c.loss](scores)

    @torch.no_grad()
    def score_steps(self, items: np.ndarray, lengths: np.ndarray) -> Iterator[np.ndarray]:
        """Yield full-catalogue scores (B, n_items + 1) after each position, state from zero per row."""
        if self.net is None:
            raise RuntimeError("GRU4Rec.score_steps called before fit or from_state_dict")
        net, c = self.net, self.cfg
        was_training, x = net.training, torch.as_tensor(np.asarray(items), dtype=torch.int64, device=self.device)  # (B, T)
        net.eval()
        try:
            hidden = torch.zeros(c.layers, x.shape[0], c.hidden, device=self.device)  # (L, B, h)
            for t in range(x.shape[1]):
                with autocast_for(self.training, self.device):
                    hidden = net(x[:, t], hidden)  # (L, B, h)
                    scores = net.score_all(hidden[-1], x[:, : t + 1]).float()  # (B, V)
                scores[:, 0] = -math.inf
                yield scores.cpu().numpy()
        finally:
            net.train(was_training)

    @torch.no_grad()
    def query_vectors(self, items: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        """Return the top-layer state (B, h) float32 after each row's whole prefix (state from zero)."""
        if self.net is None:
            raise RuntimeError("GRU4Rec.query_vectors called before fit or from_state_dict")
        net, c = self.net, self.cfg
        was_training, x = net.training, torch.as_tensor(np.asarray(items), dtype=torch.int64, device=self.device)  # (B, T)
        last = torch.as_tensor(np.asarray(lengths), dtype=torch.int64, device=self.device) - 1  # (B,)
        net.eval()
        try:
            hidden = torch.zeros(c.layers, x.shape[0], c.hidden, device=self.device)  # (L, B, h)
            if c.embedding != "onehot" and len(last) and not use_amp(self.training, self.device):
                # the same cells over the whole (padded) sequence in one call; outputs at t only see items <= t
                params = [w for l in range(c.layers) for w in (net.W_ih[l].T, net.W_hh[l].T, net.b_ih[l], net.b_hh[l])]
                states, _ = torch.gru(net.input_weights()[x], hidden, params, True, c.layers, 0.0, False, False, True)
                return states[torch.arange(len(last), device=self.device), last]  # (B, h)
            out = torch.zeros(x.shape[0], c.hidden, device=self.device)  # (B, h)
            for t in range(int(last.max()) + 1 if len(last) else 0):
                with autocast_for(self.training, self.device):
                    hidden = net(x[:, t], hidden).float()  # (L, B, h)
                done = last == t
                out[done] = hidden[-1][done]
            return out
        finally:
            net.train(was_training)

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the output item matrix Wy (V + 1, h) and bias By (V + 1,)."""
        return self.net.Wy.detach(), self.net.By.detach()[:, 0]

    def final_activation(self, scores: torch.Tensor) -> torch.Tensor:
        """Return scores through the configured (monotone) final activation."""
        return self.net.final_activation(scores)

    @torch.no_grad()
    def repeat_term(self, query: torch.Tensor, items: torch.Tensor) -> RepeatTerm | None:
        """Return the repeat term for queries (B, h) after prefixes (B, L) (``repeat_bias`` / ``repeat_mixture``), else None."""
        return self.net.repeat_term(query, items)

    def score_last(self, items: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Return full-catalogue scores (B, n_items + 1) after each row's prefix: the catalogue is scored once."""
        prefix = torch.as_tensor(np.asarray(items), dtype=torch.int64, device=self.device)  # (B, L) 0-padded
        with torch.no_grad():
            scores = self.net.score_all(self.query_vectors(items, lengths), prefix).float()  # (B, V)
        scores[:, 0] = -math.inf
        return scores.cpu().numpy()
