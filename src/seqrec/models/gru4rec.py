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
* Adagrad with momentum on touched rows (``seqrec.models.training.AdagradMomentum``), or AdamW.

Accidental hits (a sampled negative equal to the target) are not masked, as in the papers;
pairwise losses exclude only the positive's own column (the diagonal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seqrec.config import EvaluationConfig, Gru4RecConfig, TrainingConfig, config_to_dict
from seqrec.models.base import Recommender
from seqrec.models.repeat import RepeatHead, RepeatTerm, repeat_strength, with_first
from seqrec.sequences import PAD, ItemVocab, SessionDataset
from seqrec.models.training import (make_validator, neural_state, AdagradMomentum, autocast_for, configure_threads, fit_epochs, resolve_device,
                             set_seed, use_amp, warm_start_embedding)


# --------------------------------------------------------------------------- batching
@dataclass(frozen=True)
class SessionParallelBatches:
    """Per-step index arrays of one epoch of session-parallel training.

    Tail policy (as in the papers' implementation): the epoch ends at the first step after
    which an emptied slot cannot be refilled; the remaining events of the other slots'
    sessions are not trained on in that epoch (their count is ``unused_pairs``).
    """

    inputs: np.ndarray  # (S, B) item fed to each slot at step t
    targets: np.ndarray  # (S, B) next item, the slot's positive
    resets: np.ndarray  # (S, B) bool: the slot's hidden state is zeroed before step t
    short_sessions: int  # sessions of length 1: no training pair
    unused_pairs: int  # pairs of sessions cut by the tail policy

    @property
    def n_steps(self) -> int:
        return len(self.inputs)


def build_session_parallel_batches(data: SessionDataset, batch_size: int) -> SessionParallelBatches:
    """Return the session-parallel step arrays for ``data`` in its (start-time) session order."""
    usable = np.flatnonzero(data.lengths >= 2)  # length-1 sessions give no pair
    if len(usable) < batch_size:
        raise ValueError(f"GRU4Rec: {len(usable)} sessions of length >= 2 cannot fill batch_size={batch_size} slots")
    pos = data.offsets[usable[:batch_size]].copy()  # (B,) current event per slot
    end = data.offsets[usable[:batch_size] + 1].copy()  # (B,) one past the slot's last event
    reset = np.ones(batch_size, dtype=bool)
    nxt, ins, tgts, resets = batch_size, [], [], []
    while True:
        ins.append(data.items[pos]), tgts.append(data.items[pos + 1]), resets.append(reset)
        pos = pos + 1
        done = np.flatnonzero(pos + 1 >= end)  # slots whose session has no pair left
        if len(done) > len(usable) - nxt:
            break
        new = usable[nxt : nxt + len(done)]
        pos[done], end[done], nxt = data.offsets[new], data.offsets[new + 1], nxt + len(done)
        reset = np.zeros(batch_size, dtype=bool)
        reset[done] = True
    unused = int((end - pos - 1).clip(min=0).sum() + (data.lengths[usable[nxt:]] - 1).sum())
    return SessionParallelBatches(np.stack(ins), np.stack(tgts), np.stack(resets),
                                  int((data.lengths == 1).sum()), unused)


class SampleStore:
    """Item indices drawn ∝ support^alpha, ``size`` at a time, served ``n`` per step; refilled when used up."""

    def __init__(self, support: np.ndarray, alpha: float, size: int, n: int, seed: tuple[int, ...]):
        weights = np.asarray(support, dtype=np.float64) ** alpha
        weights[0] = 0.0  # never sample padding
        weights[np.asarray(support) == 0] = 0.0  # 0**0 == 1: items unseen in training stay out
        if weights.sum() <= 0:
            raise ValueError("SampleStore: every item has zero support; nothing to sample")
        self.cdf = np.cumsum(weights) / weights.sum()  # (V + 1,)
        self.size, self.n = max(size, n), n
        self.rng = np.random.default_rng(list(seed))
        self.store, self.pos = torch.zeros(0, dtype=torch.int64), 0

    def draw(self, count: int) -> np.ndarray:
        """Return ``count`` fresh samples (int64) from the distribution."""
        idx = np.searchsorted(self.cdf, self.rng.random(count), side="right")
        return np.minimum(idx, len(self.cdf) - 1).astype(np.int64)

    def take(self) -> torch.Tensor:
        """Return the next ``n`` items (int64 tensor) of the store, refilling it first if too few are left."""
        if self.pos + self.n > len(self.store):
            self.store, self.pos = torch.from_numpy(self.draw(self.size)), 0
        self.pos += self.n
        return self.store[self.pos - self.n : self.pos]


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


class RowGather(torch.autograd.Function):
    """weight[rows] for distinct sorted rows; backward writes a coalesced row-sparse gradient into weight.grad.

    Autograd's own accumulation would drop the "coalesced" flag and make the optimiser re-sort
    the rows every step, so the gradient is accumulated here (added when one already exists).
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        ctx.weight = weight
        return weight.index_select(0, rows)  # (R, D)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rows,) = ctx.saved_tensors
        w = ctx.weight
        g = torch.sparse_coo_tensor(rows[None], grad.to(w.dtype), w.shape, is_coalesced=True, check_invariants=False)
        w.grad = g if w.grad is None else w.grad + g
        return None, None


def distinct_rows(items: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (sorted distinct items (R,), position of each item among them (N,)), like torch.unique."""
    if n_rows > 64 * len(items):  # large catalogue: sorting the few items is cheaper than a bitmap
        return torch.unique(items, return_inverse=True)
    seen = torch.zeros(n_rows, dtype=torch.bool, device=items.device).index_fill_(0, items, True)  # (V,)
    rows = seen.nonzero()[:, 0]  # (R,) sorted
    lookup = torch.empty(n_rows, dtype=torch.int64, device=items.device)
    lookup.index_copy_(0, rows, torch.arange(len(rows), device=items.device))  # (V,) row -> position
    return rows, lookup.index_select(0, items)


def gather_rows(weight: torch.Tensor, items: torch.Tensor, sparse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (rows (R, D), positions (N,)) with rows[positions] == weight[items]; row-sparse gradient with ``sparse``."""
    rows, inverse = distinct_rows(items, weight.shape[0])  # sorted distinct rows, (N,) positions
    return (RowGather.apply(weight, rows) if sparse else weight.index_select(0, rows)), inverse


# --------------------------------------------------------------------------- network
def merge_output_bias(module, state_dict, prefix, *args) -> None:
    """Load-state hook: checkpoints with separate ``Wy`` (V, h) and ``By`` (V, 1) load into ``Wyb``."""
    if prefix + "Wy" in state_dict and prefix + "Wyb" not in state_dict:
        state_dict[prefix + "Wyb"] = torch.cat([state_dict.pop(prefix + "Wy"), state_dict.pop(prefix + "By")], 1)


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
        self.register_load_state_dict_pre_hook(merge_output_bias)
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
class EpochBatches:
    """One epoch's steps as device tensors (x (B,), y (B,), reset (B,), negatives (n_sample,))."""

    def __init__(self, steps: tuple[torch.Tensor, torch.Tensor, torch.Tensor], store: SampleStore | None):
        self.steps, self.store = steps, store
        self.empty = torch.zeros(0, dtype=torch.int64, device=steps[0].device)

    def __len__(self) -> int:
        return len(self.steps[0])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        x, y, reset = self.steps  # (S, B) each
        for t in range(len(x)):
            neg = self.empty if self.store is None else self.store.take().to(x.device)  # (n_sample,)
            yield x[t], y[t], reset[t], neg


class GRU4Rec(Recommender):
    """GRU4Rec trained with session-parallel mini-batches and sampled outputs; scores the full catalogue."""

    name = "gru4rec"

    def __init__(self, cfg: Gru4RecConfig, training: TrainingConfig, eval_cfg: EvaluationConfig | None = None,
                 *, checkpoint_path=None, device: torch.device | None = None):
        self.cfg, self.training, self.eval_cfg = cfg, training, eval_cfg
        self.checkpoint_path = checkpoint_path
        self.device = device or resolve_device(training)
        self.vocab: ItemVocab | None = None
        self.net: Gru4RecNet | None = None
        self.history = None
        self.batch_stats: dict[str, int] = {}

    def build_net(self, vocab: ItemVocab) -> Gru4RecNet:
        """Return the network for ``vocab``, creating it (seeded) on first use."""
        if self.net is not None:
            if not np.array_equal(self.vocab.ids, vocab.ids):
                raise ValueError(f"GRU4Rec was built for {self.vocab.size} items; got a vocabulary of {vocab.size} other items")
            return self.net
        set_seed(self.training.seed)
        self.vocab, self.net = vocab, Gru4RecNet(self.cfg, vocab.size).to(self.device)
        return self.net

    def init_item_embeddings(self, matrix: np.ndarray, vocab: ItemVocab) -> int:
        """Warm-start the input item vectors from ``matrix`` (rows aligned to ``vocab``); return rows set."""
        net = self.build_net(vocab)
        if self.cfg.embedding == "onehot":
            raise ValueError("GRU4Rec: embedding='onehot' has no item embedding to warm-start; use separate/constrained")
        return warm_start_embedding(net.input_weights(), matrix, mode=self.cfg.init_projection)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Return the configured optimiser over the network's parameters."""
        c = self.cfg
        if c.optimizer == "adagrad":
            return AdagradMomentum(self.net.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        return torch.optim.AdamW(self.net.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    def make_validate(self, valid: SessionDataset | None):
        """Return a callable giving ``training.valid_metric`` on ``valid``, or None without it."""
        return make_validator(self, valid, self.eval_cfg, self.training.valid_metric)

    def fit(self, train: SessionDataset, valid: SessionDataset | None = None) -> "GRU4Rec":
        """Train for ``cfg.epochs`` (early stopping on valid when given); return self."""
        configure_threads(self.training)
        net, c = self.build_net(train.vocab), self.cfg
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

        self.history = fit_epochs(
            net, self.make_optimizer(), make_batches, self.train_step, self.training, c.epochs,
            validate=self.make_validate(valid), checkpoint_path=self.checkpoint_path,
            extra_state={"config": {**config_to_dict(c), "seed": self.training.seed}, "vocab": [str(i) for i in self.vocab.ids]},
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

    def state_dict(self) -> dict:
        """Return config dicts, vocabulary ids (list[str]) and CPU weights."""
        return neural_state(self)

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | None = None) -> "GRU4Rec":
        """Return a fitted GRU4Rec rebuilt from ``state_dict()`` (on ``device``, default from its config)."""
        if state.get("name") != cls.name:
            raise ValueError(f"state is for model {state.get('name')!r}, not {cls.name!r}")
        ev = EvaluationConfig.model_validate(state["evaluation"]) if state.get("evaluation") else None
        model = cls(Gru4RecConfig.model_validate(state["config"]), TrainingConfig.model_validate(state["training"]), ev, device=device)
        model.vocab = ItemVocab(np.array(state["vocab"], dtype=object))
        model.net = Gru4RecNet(model.cfg, model.vocab.size).to(model.device)
        model.net.load_state_dict(state["net"])
        return model
