"""Repeat bias: an optional learned boost for items already in the session (an extension, off by default).

E-commerce sessions come back to items they have shown (a third of the targets of the real
T-ECD marketplace day); S-POP scores exactly that, while GRU4Rec and SASRec have to recover
every earlier item from their state, and lose to S-POP there. With ``repeat_bias: true`` a
model adds ``beta(h) * [item j occurs in the prefix]`` to item j's score, where
``beta(h) = w . h + c`` is learned with the rest of the network from the same loss. ``w`` and
``c`` start at zero, so training starts from the unmodified model. Neither paper has this term:
results with it are labelled "+ repeat bias".
"""

from __future__ import annotations

import torch

from seqrec.sequences import PAD


def repeat_strength(params: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Return beta (N,) = hidden (N, D) . params[:D] + params[D]."""
    return hidden @ params[:-1] + params[-1]


def add_repeat_bias(scores: torch.Tensor, items: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Return scores (B, V) with beta (B,) added once to each item of its row's prefix items (B, L), padding aside."""
    items = items.to(scores.device)
    boosted = scores.gather(1, items) + beta[:, None].to(scores.dtype)  # (B, L); a repeated item gets the same value
    keep = items != PAD
    return scores.scatter(1, torch.where(keep, items, 0), torch.where(keep, boosted, scores[:, :1]))  # pads rewrite col 0
