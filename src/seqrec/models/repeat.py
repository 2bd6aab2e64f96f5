"""Repeat terms: optional extensions for items already in the session (off by default, not in the papers).

E-commerce sessions come back to items they have shown (a third of the targets of the real
T-ECD marketplace day); S-POP scores exactly that, while GRU4Rec and SASRec have to recover
every earlier item from their state, and lose to S-POP there. Two options, each labelled in
results ("+ repeat bias", "+ repeat mixture"):

* ``repeat_bias``: adds ``beta(h) * [item j occurs in the prefix]`` to item j's score, with
  ``beta(h) = w . h + c`` learned with the rest of the network from the same loss (``w``, ``c``
  start at zero, so training starts from the unmodified model).
* ``repeat_mixture`` (a repeat/explore mixture in the spirit of RepeatNet, Ren et al. AAAI 2019):
  the next-item distribution is ``p(i) = g R(i) + (1 - g) softmax(l)_i``, where ``l`` are the
  network's own scores (the explore part), ``g = sigmoid(w . h + c)`` the probability of a revisit,
  and ``R`` an attention over the last ``window`` items of the session: position q gets weight
  ∝ exp(h Q . e_q + r[distance]) (``e_q`` the item's output vector, ``r`` one learned value per
  distance from the end), and an item's mass sums over its positions (so counts matter, as in
  S-POP). The head is trained next to the network by the mixture's likelihood of the target
  with the network's scores and state detached: the network itself trains exactly as published.
  Ranking uses ``log p(i)`` up to a per-row constant: ``l_i`` for other items and
  ``logaddexp(l_i, logit(g) + logsumexp(l) + log R(i))`` for items of the session.

A third, scoring-only option combines with either (or with none):

* ``repeat_first``: the items of the session rank ahead of every other item, by their count in
  the session, ties broken by the model's own scores (with the bias or mixture when on); the
  rest follow in the model's order. S-POP's rule for the session's items, the model for the rest
  and for S-POP's ties. Nothing is trained for it; choose it on validation data (BENCHMARKS.md
  compares the orders on the real marketplace validation part).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.sequences import PAD

MASKED = -1e4  # log-weight of positions that cannot hold the target (finite: no NaN gradients)


def extension_label(cfg) -> str:
    """Return what results of a model with this config are labelled with, e.g. " + repeat mixture + repeat first" or ""."""
    names = [name for key, name in (("repeat_bias", "repeat bias"), ("repeat_mixture", "repeat mixture"),
                                    ("repeat_first", "repeat first")) if getattr(cfg, key, False)]
    return "".join(f" + {name}" for name in names)


def with_first(term: "RepeatTerm | None", items: torch.Tensor, first: bool) -> "RepeatTerm | None":
    """Return ``term`` (or a bare one for ``items`` (B, L)) that also lifts the prefix's items first, when ``first``."""
    if not first:
        return term
    if term is None:
        return RepeatTerm(items, first=True)
    term.first = True
    return term


def repeat_strength(params: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Return beta (N,) = hidden (N, D) . params[:D] + params[D]."""
    return hidden @ params[:-1] + params[-1]


def add_repeat_bias(scores: torch.Tensor, items: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Return scores (B, V) with beta (B,) added once to each item of its row's prefix items (B, L), padding aside."""
    items = items.to(scores.device)
    boosted = scores.gather(1, items) + beta[:, None].to(scores.dtype)  # (B, L); a repeated item gets the same value
    return put_prefix_scores(scores, items, boosted)


def put_prefix_scores(scores: torch.Tensor, items: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Return scores (B, V) with values (B, L) written at the row's prefix items (B, L); padding positions skipped."""
    keep = items != PAD
    return scores.scatter(1, torch.where(keep, items, 0), torch.where(keep, values, scores[:, :1]))  # pads rewrite col 0


def lift_prefix(scores: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Return scores (B, V) with each row's prefix items (B, L) ranked above all its other items.

    Among themselves they rank by their count in the prefix, then by their own score (S-POP's
    order, with the model's scores breaking its ties): item j gets ``high + 1 + (s_j - low) +
    (count_j - 1) * span``, with ``high`` the row's best score, ``low`` / ``span`` the lowest / the
    range (plus one) of its finite prefix scores. Items at -inf (banned) stay there.
    """
    values = scores.gather(1, items)  # (B, L)
    real = (items != PAD) & torch.isfinite(values)
    low = torch.where(real, values, torch.full_like(values, math.inf)).amin(1, keepdim=True)  # (B, 1)
    top = torch.where(real, values, torch.full_like(values, -math.inf)).amax(1, keepdim=True)  # (B, 1)
    high = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -math.inf)).amax(1, keepdim=True)
    counts = torch.zeros_like(scores).scatter_add_(1, items, real.to(scores.dtype)).gather(1, items)  # (B, L)
    lifted = high + 1 + (values - low) + (counts - 1) * (top - low + 1)
    return put_prefix_scores(scores, items, torch.where(real, lifted, values))


def last_window(items: torch.Tensor, window: int) -> torch.Tensor:
    """Return the last ``window`` real items of each left-aligned, 0-padded row (B, L), left-padded (B, W)."""
    lengths = (items != PAD).sum(1)  # (B,)
    width = min(window, items.shape[1])
    src = lengths[:, None] - width + torch.arange(width, device=items.device)[None, :]  # (B, W)
    return items.gather(1, src.clamp(min=0)) * (src >= 0)  # (B, W)


class RepeatHead(nn.Module):
    """Gate and attention over the session's last ``window`` items (``repeat_mixture``); starts uniform, g = 0.5.

    ``distances``: learned recency values (default one per position of the window); farther positions
    share the last one (SASRec trains on windows of max_len items but may attend to more when scoring).
    """

    def __init__(self, dim: int, window: int, distances: int = 0):
        super().__init__()
        self.window = window
        self.query = nn.Parameter(torch.zeros(dim, dim))  # h -> query against the items' output vectors
        self.recency = nn.Parameter(torch.zeros(min(distances or window, window)))  # per distance from the last item
        self.gate = nn.Parameter(torch.zeros(dim + 1))  # logit(g) = w . h + c

    def gate_logit(self, h: torch.Tensor) -> torch.Tensor:
        """Return logit(g) (...,) for states h (..., D)."""
        return h @ self.gate[:-1] + self.gate[-1]

    def log_weights(self, h: torch.Tensor, keys: torch.Tensor, dist: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Return log attention (B, P, Q) of queries h (B, P, D) over positions with keys (B, Q, D).

        ``dist`` (P, Q) or (B, P, Q): distance of position q from query p's last item; ``valid`` (B, P, Q).
        """
        logits = (h @ self.query) @ keys.transpose(1, 2)  # (B, P, Q)
        logits = logits + self.recency[dist.clamp(0, len(self.recency) - 1)]
        return torch.log_softmax(logits.masked_fill(~valid, MASKED), dim=-1)  # (B, P, Q)

    def target_log_mass(self, log_w: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Return log R(target) (B, P): the attention mass (B, P, Q) on positions whose item (B, Q) is the target (B, P)."""
        hit = valid & (items[:, None, :] == targets[:, :, None])  # (B, P, Q)
        return torch.logsumexp(torch.where(hit, log_w, torch.full_like(log_w, MASKED)), dim=-1)  # (B, P)

    def window_log_weights(self, h: torch.Tensor, items: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (log attention (B, 1, W), valid (B, 1, W)) of states h (B, D) over left-padded windows (B, W), last item last."""
        W = items.shape[1]
        dist = (W - 1 - torch.arange(W, device=h.device))[None, :]  # (1, W) distance from the last item
        valid = (items != PAD)[:, None, :]  # (B, 1, W)
        return self.log_weights(h[:, None, :], weight[items], dist, valid), valid

    def window_term(self, h: torch.Tensor, items: torch.Tensor, weight: torch.Tensor) -> "RepeatTerm":
        """Return the scoring term for states h (B, D) after left-aligned prefixes (B, L); item vectors ``weight`` (V, D)."""
        items = last_window(items.to(h.device), self.window)  # (B, W) left-padded, last item at column W - 1
        log_w, _ = self.window_log_weights(h, items, weight)
        return RepeatTerm(items, log_w=log_w[:, 0], gate=self.gate_logit(h))

    def mixture_nll(self, log_mass: torch.Tensor, gate: torch.Tensor, explore_logp: torch.Tensor) -> torch.Tensor:
        """Return -log(g R(y) + (1 - g) p_explore(y)) per target from log R(y), logit(g) and log p_explore(y)."""
        return -torch.logaddexp(F.logsigmoid(gate) + log_mass, F.logsigmoid(-gate) + explore_logp)


@dataclass
class RepeatTerm:
    """What a model adds to the scores of the items of each row's prefix (``apply``), for a batch of rows."""

    items: torch.Tensor  # (B, L) prefix items, 0-padded
    beta: torch.Tensor | None = None  # (B,) additive bias (repeat_bias)
    log_w: torch.Tensor | None = None  # (B, L) log attention over positions (repeat_mixture)
    gate: torch.Tensor | None = None  # (B,) logit(g) (repeat_mixture)
    first: bool = False  # repeat_first: the prefix's items then rank ahead of all others

    def apply(self, scores: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """Return scores (n, V) of rows ``rows`` with the term applied; columns at -inf stay out of the mixture's normaliser."""
        items = self.items[rows].to(scores.device)  # (n, L)
        if self.beta is not None:
            scores = add_repeat_bias(scores, items, self.beta[rows].to(scores.device))
        elif self.log_w is not None:
            scores = self.mixture(scores, items, rows)
        return lift_prefix(scores, items) if self.first else scores

    def mixture(self, scores: torch.Tensor, items: torch.Tensor, rows: slice) -> torch.Tensor:
        """Return scores (n, V) with the prefix items (n, L) at the repeat mixture's log-probability (up to a row constant)."""
        log_w, gate = self.log_w[rows].to(scores.device), self.gate[rows].to(scores.device)  # (n, L), (n,)
        same = (items[:, :, None] == items[:, None, :]) & (items != PAD)[:, None, :]  # (n, L, L)
        log_mass = torch.logsumexp(torch.where(same, log_w[:, None, :], torch.full_like(same, MASKED, dtype=log_w.dtype)), -1)  # (n, L)
        lse = torch.logsumexp(scores, dim=1, keepdim=True)  # (n, 1) explore normaliser
        own = scores.gather(1, items)  # (n, L)
        return put_prefix_scores(scores, items, torch.logaddexp(own, gate[:, None] + lse + log_mass).to(scores.dtype))
