"""SASRec: self-attentive sequential recommendation (Kang & McAuley 2018).

A stack of causal self-attention blocks over item + learnable position embeddings; the
output at position t scores the item that follows ``items[: t + 1]``. Defaults follow
SASRec+ (Klenitskiy & Vasilev 2023): full cross-entropy over the catalogue, which beats
the paper's one-negative BCE under full ranking. ``sampled-softmax`` (shared negatives,
logQ-corrected) is for catalogues too large for a full softmax; ``bce`` only reproduces
the paper.

Layout and positions. The network accepts padding anywhere: pad keys are masked out and a
position's index counts the real items before it (0 = first real item), so left padding
(``score_last``: the last column is the prediction point) and right padding (the
``Recommender`` contract, used by ``score_steps``) give the same outputs for real positions.
Training windows are left-padded, width ``max_len + 1``; a longer sequence gives its last
window only (``long_sequences="last"``, as the paper) or windows overlapping by one item so
that every transition is trained once (``"slide"``). Scoring sees the last ``max_len`` items.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seqrec.config import SasRecConfig
from seqrec.models import kernels
from seqrec.models.neural import NeuralRecommender, Validate
from seqrec.models.repeat import RepeatHead, RepeatTerm, repeat_strength, with_first
from seqrec.models.training import autocast_for, configure_threads
from seqrec.sequences import PAD, SessionDataset


# --------------------------------------------------------------------------- network
def attention_mask(seq: torch.Tensor) -> torch.Tensor:
    """Return the boolean mask (B, 1, L, L): query i may attend key j <= i that is a real item."""
    L = seq.shape[1]
    real = seq != PAD  # (B, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()  # (L, L)
    # Every position also sees itself, so a pad query never has an empty (NaN) softmax row.
    keys = real[:, None, :] | torch.eye(L, dtype=torch.bool, device=seq.device)  # (B, L, L)
    return (causal & keys).unsqueeze(1)  # (B, 1, L, L)


def item_positions(seq: torch.Tensor) -> torch.Tensor:
    """Return each position's index among the real items of its row, 0 for leading pads (B, L)."""
    return ((seq != PAD).long().cumsum(1) - 1).clamp(min=0)  # (B, L)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SasRecConfig):
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, n_queries: int = 0) -> torch.Tensor:
        """Return (B, Q, D) for the last Q = ``n_queries`` positions (0: all L) attending over all of x (B, L, D)."""
        B, L, D = x.shape
        Q = n_queries or L
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (B, L, D)
        q = q[:, L - Q :]  # (B, Q, D)
        q, k, v = (t.reshape(B, -1, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, H, ·, Dh)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, :, L - Q :], dropout_p=p)  # (B, H, Q, Dh)
        return self.proj(y.transpose(1, 2).reshape(B, Q, D))  # (B, Q, D)


class Block(nn.Module):
    def __init__(self, cfg: SasRecConfig):
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.ln1, self.ln2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn = CausalSelfAttention(cfg)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.ffn, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, n_queries: int = 0) -> torch.Tensor:
        """Return the block's output (B, Q, D) for the last ``n_queries`` positions (0: all)."""
        res = x[:, x.shape[1] - (n_queries or x.shape[1]) :]  # (B, Q, D) residual stream of the kept positions
        if self.pre:
            x = res + self.drop(self.attn(self.ln1(x), mask, n_queries))  # (B, Q, D)
            return x + self.drop(self.ffn(self.ln2(x)))
        x = self.ln1(res + self.drop(self.attn(x, mask, n_queries)))  # (B, Q, D)
        return self.ln2(x + self.drop(self.ffn(x)))


class SasRecNet(nn.Module):
    """Item and position embeddings, causal blocks, and the item output matrix."""

    def __init__(self, n_items: int, cfg: SasRecConfig):
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, cfg.dim, padding_idx=PAD)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.blocks))
        self.ln_f = nn.LayerNorm(cfg.dim) if cfg.norm == "pre" else nn.Identity()
        self.out = None if cfg.tied else nn.Parameter(torch.empty(n_items + 1, cfg.dim))
        self.repeat = nn.Parameter(torch.zeros(cfg.dim + 1)) if cfg.repeat_bias else None  # beta(h) = w.h + c
        self.repeat_head = RepeatHead(cfg.dim, cfg.repeat_window, cfg.max_len) if cfg.repeat_mixture else None
        self.apply(init_weights)
        if self.out is not None:
            nn.init.normal_(self.out, std=0.02)

    def output_weight(self) -> torch.Tensor:
        """Return the item output matrix (V + 1, D): the input embeddings when tied."""
        return self.item_emb.weight if self.out is None else self.out

    def forward(self, seq: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Return hidden states (B, L, D) for item sequences (B, L) padded with 0 anywhere; (B, 1, D) ``last_only``.

        ``last_only``: the last block computes only the last position (all a next-item query needs).
        """
        assert seq.shape[1] <= self.pos_emb.num_embeddings, f"sequence length {seq.shape[1]} > max_len"
        real = (seq != PAD).unsqueeze(-1)  # (B, L, 1)
        x = self.drop(self.item_emb(seq) + self.pos_emb(item_positions(seq))) * real  # (B, L, D)
        mask = attention_mask(seq)  # (B, 1, L, L)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, 1 if last_only and i == len(self.blocks) - 1 else 0)  # (B, L, D) or (B, 1, D)
        return self.ln_f(x)


def init_weights(module: nn.Module) -> None:
    """Initialise linear and embedding weights N(0, 0.02) and biases 0 (GPT-2 style)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- losses
def full_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       boost: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None, reduction: str = "mean") -> torch.Tensor:
    """Return the softmax cross-entropy over every real item (padding column excluded), mean or per row (``"none"``).

    ``boost`` = (rows (M,), items (M,), values (M,)): distinct (row, item) pairs whose logit gets + value.
    The plain mean on CPU runs in row chunks (``ChunkedCrossEntropy``): same value and gradients, no (N, V) matrix.
    """
    if (boost is None and reduction == "mean" and hidden.device.type == "cpu" and kernels.CHUNK_ELEMENTS
            and hidden.dtype == weight.dtype == torch.float32):
        return kernels.ChunkedCrossEntropy.apply(hidden, weight, targets, PAD)
    logits = (hidden @ weight.T).float()  # (N, V + 1)
    if boost is not None:
        rows, items, values = boost
        logits = logits.index_put((rows, items), values.float(), accumulate=True)
    logits[:, PAD] = float("-inf")
    return F.cross_entropy(logits, targets, reduction=reduction)


def prefix_pairs(inputs: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return distinct (row, item) pairs: for each kept position (row of ``hidden[keep]``), the items up to it."""
    B, L = inputs.shape
    upto = torch.ones(L, L, dtype=torch.bool, device=inputs.device).tril()  # (p, q): q <= p
    pairs = keep[:, :, None] & upto[None] & (inputs != PAD)[:, None, :]  # (B, L, L) over (b, p, q)
    row_of = (keep.flatten().cumsum(0) - 1).view(B, L)  # (B, L) row of position (b, p) in hidden[keep]
    b, p, q = pairs.nonzero(as_tuple=True)
    base = int(inputs.max()) + 1  # (row, item) -> row * base + item, unique per pair
    key = torch.unique(row_of[b, p] * base + inputs[b, q])  # dedupe repeated items
    return key // base, key % base


def sampled_softmax_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor, log_q: torch.Tensor
) -> torch.Tensor:
    """Return the mean logQ-corrected softmax loss of each target against shared negatives."""
    pos = (hidden * weight[targets]).sum(-1).float() - log_q[targets]  # (N,)
    neg = (hidden @ weight[negatives].T).float() - log_q[negatives]  # (N, K)
    neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))  # accidental hits
    logits = torch.cat([pos[:, None], neg], dim=1)  # (N, 1 + K)
    return F.cross_entropy(logits, torch.zeros_like(targets))


def bce_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Return the mean binary cross-entropy of each target against its own single negative."""
    pos = (hidden * weight[targets]).sum(-1).float()  # (N,)
    neg = (hidden * weight[negatives]).sum(-1).float()  # (N,)
    return -(F.logsigmoid(pos) + F.logsigmoid(-neg)).mean()


# --------------------------------------------------------------------------- data
def build_training_windows(data: SessionDataset, width: int, mode: str = "last") -> np.ndarray:
    """Return left-padded training windows (N, width) int64 of every session with >= 2 items."""
    starts, ends = data.offsets[:-1], data.offsets[1:]
    keep = ends - starts >= 2
    starts, ends = starts[keep], ends[keep]
    if mode == "slide":  # windows overlap by one item: each transition is in exactly one window
        n_win = -(-(ends - starts - 1) // (width - 1))  # ceil
        owner = np.repeat(np.arange(len(ends)), n_win)
        step = np.arange(n_win.sum()) - np.repeat(np.cumsum(n_win) - n_win, n_win)
        starts, ends = starts[owner], ends[owner] - step * (width - 1)
    elif mode != "last":
        raise ValueError(f"long_sequences={mode!r}: expected 'last' or 'slide'")
    starts = np.maximum(starts, ends - width)
    lens = ends - starts
    rows = np.repeat(np.arange(len(lens)), lens)
    within = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    out = np.zeros((len(lens), width), dtype=np.int64)
    out[rows, width - lens[rows] + within] = data.items[np.repeat(starts, lens) + within]
    return out


def right_align(items: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Return the last ``width`` items of each left-aligned row, left-padded (B, width)."""
    src = lengths[:, None] - width + torch.arange(width, device=items.device)[None, :]  # (B, W)
    return items.gather(1, src.clamp(min=0)) * (src >= 0)  # (B, W)


class WindowBatches:
    """One epoch of training windows in a seeded order: (B, max_len + 1) tensors."""

    def __init__(self, windows: np.ndarray, order: np.ndarray, batch_size: int, device: torch.device):
        self.windows, self.order, self.batch_size, self.device = windows, order, batch_size, device

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(0, len(self.order), self.batch_size):
            seq = torch.as_tensor(self.windows[self.order[i : i + self.batch_size]], device=self.device)  # (B, L + 1)
            yield seq[:, int((seq != PAD).any(0).long().argmax()) :]  # all-pad columns off: positions are relative


# --------------------------------------------------------------------------- model
class SASRec(NeuralRecommender):
    """SASRec behind the ``Recommender`` interface, built from its config sections."""

    name = "sasrec"
    config_class = SasRecConfig
    log_q: torch.Tensor | None = None  # (V + 1,) log sampling probability of each negative, set by fit

    def make_net(self, n_items: int) -> SasRecNet:
        """Return a new SASRec network for ``n_items`` items."""
        return SasRecNet(n_items, self.cfg)

    def item_embedding(self) -> nn.Parameter:
        """Return the input item embeddings (also the output matrix when tied)."""
        return self.net.item_emb.weight

    def fit(self, train: SessionDataset, validate: Validate | None = None) -> "SASRec":
        """Train on every next-item transition of ``train`` (early stopping on ``validate()``); return self."""
        configure_threads(self.training)
        net, c = self.build_net(train.vocab), self.cfg
        windows = build_training_windows(train, c.max_len + 1, c.long_sequences)  # (N, max_len + 1)
        if not len(windows):
            raise ValueError(f"SASRec.fit: none of the {train.n_sessions} training sessions has 2 or more items")
        self.log_q = self.negative_log_probs(train).to(self.device)  # (V + 1,)

        def make_batches(epoch: int) -> WindowBatches:
            order = np.random.default_rng((self.training.seed, epoch)).permutation(len(windows))
            return WindowBatches(windows, order, c.batch_size, self.device)

        self.fit_network(torch.optim.AdamW(net.parameters(), lr=c.lr, weight_decay=c.weight_decay), make_batches,
                         self.train_step, validate)
        net.eval()
        return self

    def negative_log_probs(self, train: SessionDataset) -> torch.Tensor:
        """Return log sampling probabilities of negatives (V + 1,), -inf for padding and unsampled items."""
        counts = torch.as_tensor(train.item_support(), dtype=torch.float64)  # (V + 1,)
        if self.cfg.negatives == "uniform":
            counts = torch.ones_like(counts)
        counts[PAD] = 0
        return (counts / counts.sum()).log().float()

    def train_step(self, seq: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Return the mean configured loss of one batch of windows (B, L + 1) and its number of targets."""
        inputs, targets = seq[:, :-1], seq[:, 1:]  # (B, L) each
        hidden = self.net(inputs)  # (B, L, D)
        keep = (inputs != PAD) & (targets != PAD)  # (B, L): pads never produce loss
        h, y, w = hidden[keep], targets[keep], self.net.output_weight()  # (N, D), (N,), (V + 1, D)
        if self.cfg.loss == "cross-entropy":
            boost = None
            if self.net.repeat is not None:  # + beta(h) for every item already in the prefix
                rows, items = prefix_pairs(inputs, keep)
                boost = (rows, items, repeat_strength(self.net.repeat, h)[rows])
            if self.net.repeat_head is None:
                loss = full_cross_entropy(h, w, y, boost)
            else:  # the network's loss as published, plus the repeat head's mixture likelihood
                nll = full_cross_entropy(h, w, y, reduction="none")  # (N,) = -log p_explore(y)
                loss = nll.mean() + self.mixture_loss(hidden, inputs, targets, keep, -nll.detach())
        elif self.cfg.loss == "bce":
            loss = bce_loss(h, w, y, torch.randint(1, w.shape[0], y.shape, device=y.device))  # (N,) uniform
        else:
            negatives = torch.multinomial(self.log_q.exp(), self.cfg.n_negatives, replacement=True)  # (K,)
            loss = sampled_softmax_loss(h, w, y, negatives, self.log_q)
        return loss, len(y)

    def mixture_loss(self, hidden: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor,
                     explore_logp: torch.Tensor) -> torch.Tensor:
        """Return the repeat head's mean mixture NLL over kept positions; the network's states detached."""
        head, L = self.net.repeat_head, inputs.shape[1]
        pos = torch.arange(L, device=inputs.device)
        dist = pos[:, None] - pos[None, :]  # (P, Q) distance of item q from query p
        valid = ((dist >= 0) & (dist < head.window))[None] & (inputs != PAD)[:, None, :]  # (B, P, Q)
        h, w = hidden.detach(), self.net.output_weight().detach()
        log_w = head.log_weights(h, w[inputs], dist, valid)  # (B, P, Q) over (B, L, D) states
        log_mass = head.target_log_mass(log_w, inputs, targets, valid)[keep]  # (N,)
        return head.mixture_nll(log_mass, head.gate_logit(h[keep]), explore_logp).mean()

    # ----------------------------------------------------------------- scoring
    @torch.no_grad()
    def score_hidden(self, seq: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Return hidden states (B, L, D) as float32 ((B, 1, D) ``last_only``), in eval mode (autocast on CUDA)."""
        if self.net is None:
            raise RuntimeError("SASRec is not fitted: call fit() or SASRec.from_state_dict() first")
        if self.net.training:  # (eval() walks every module: skipped on the per-request path)
            self.net.eval()
        with autocast_for(self.training, self.device):
            return self.net(seq.to(self.device), last_only).float()

    @torch.no_grad()
    def scores_from_hidden(self, hidden: torch.Tensor, prefix: torch.Tensor | None = None) -> np.ndarray:
        """Return item scores (B, V + 1) float32 for hidden states (B, D); ``prefix`` (B, L): items seen so far."""
        scores = hidden @ self.net.output_weight().float().T  # (B, V + 1)
        term = None if prefix is None else self.repeat_term(hidden, prefix)
        if term is not None:
            scores[:, PAD] = float("-inf")  # out of the mixture's normaliser
            scores = term.apply(scores)
        return scores.cpu().numpy()

    @torch.no_grad()
    def repeat_term(self, query: torch.Tensor, items: torch.Tensor) -> RepeatTerm | None:
        """Return the repeat term for queries (B, D) after prefixes (B, L) (``repeat_bias`` / ``repeat_mixture``), else None."""
        items = items.to(query.device)
        term = None
        if self.net.repeat is not None:
            term = RepeatTerm(items, beta=repeat_strength(self.net.repeat.float(), query))
        elif self.net.repeat_head is not None:
            term = self.net.repeat_head.window_term(query, items, self.net.output_weight().float())
        return with_first(term, items, self.cfg.repeat_first)

    def query_vectors(self, items: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        """Return the hidden state (B, D) float32 at each row's last item (its last max_len items seen)."""
        items, lengths = torch.as_tensor(items), torch.as_tensor(lengths)  # (B, L), (B,)
        if len(lengths) and int(lengths.min()) < 1:
            raise ValueError(f"SASRec: a row has length {int(lengths.min())}; every row needs >= 1 item")
        seq = right_align(items, lengths, min(items.shape[1], self.cfg.max_len))  # (B, W) left-padded
        return self.score_hidden(seq, last_only=True)[:, -1]  # (B, D)

    def output_layer(self) -> tuple[torch.Tensor, None]:
        """Return the item output matrix (V + 1, D); SASRec has no output bias."""
        return self.net.output_weight().detach(), None

    def score_last(self, items: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Return next-item scores (B, V + 1) after each row's prefix, in one forward pass."""
        return self.scores_from_hidden(self.query_vectors(items, lengths), torch.as_tensor(items))  # (B, V + 1)

    def score_steps(self, items: np.ndarray, lengths: np.ndarray) -> Iterator[np.ndarray]:
        """Yield next-item scores (B, V + 1) after each position: one forward for the first max_len."""
        items, M = torch.as_tensor(items), self.cfg.max_len  # (B, L)
        hidden = self.score_hidden(items[:, :M])  # (B, min(L, M), D): causal, so every prefix at once
        for t in range(hidden.shape[1]):
            yield self.scores_from_hidden(hidden[:, t], items[:, : t + 1])
        for t in range(M, items.shape[1]):  # beyond max_len each step sees its own last-M window
            yield self.scores_from_hidden(self.score_hidden(items[:, t - M + 1 : t + 1], last_only=True)[:, -1], items[:, : t + 1])
