"""Approximate top-k over a large catalogue for dot-product models, scored exactly on what it finds.

The models score ``q . w_j + b_j`` (GRU4Rec, SASRec, BPR-MF: ``Recommender.output_layer``), a
maximum-inner-product search. A library index (``seqrec.serving.ann_backends``: usearch's HNSW graph
by default, FAISS's inverted lists as the alternative) returns ``k + extra`` candidates (plus the
session's length when seen items are excluded); the ``head`` items of highest bias join them for
every query (a query whose own vector is short ranks by bias, and those items are spread over the
whole index); all candidates are then scored exactly in float32 and the best k kept: returned
scores are the model's own, only the candidate set is approximate. A model's repeat terms
(``Recommender.repeat_term``) are applied to the candidates plus the session's own items, which
are always candidates; the repeat mixture's normaliser is then taken over that set (an
approximation, covered by the measured recall).

The index is built once per model version and saved beside the model file (``<model>.ann`` and
``<model>.ann.json``); the JSON names the fingerprint of the output layer it was built from, so a
changed model rebuilds it. Its recall@k against the exact top-k, build time and memory are
measured at build time and stored with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from seqrec.config import ServingConfig
from seqrec.models.repeat import RepeatTerm
from seqrec.sequences import PAD
from seqrec.serving.ann_backends import BACKENDS

log = logging.getLogger(__name__)

FORMAT = 4  # 4: the meta holds the search breadth kept ("breadth"); older files are rebuilt


def kind_params(serving: ServingConfig) -> dict:
    """Return the settings of ``serving.ann_kind``'s library (``AnnIndex.build``'s ``params``)."""
    if serving.ann_kind == "hnsw":
        return {"connectivity": serving.ann_connectivity, "expansion_add": serving.ann_expansion_add,
                "expansion_search": serving.ann_expansion_search}
    return {"lists": serving.ann_lists, "probe": serving.ann_probe, "seed": 0}


DEFAULTS = {kind: kind_params(ServingConfig(ann_kind=kind)) for kind in ("hnsw", "ivf")}  # the config's defaults


def threads() -> int:
    """Return the threads a batch of searches may use: torch's."""
    return max(torch.get_num_threads(), 1)


def layer_fingerprint(weight: torch.Tensor, bias: torch.Tensor | None) -> str:
    """Return a hash of an output layer's values (V, D) and bias (V,): what the index was built from."""
    h = hashlib.blake2b(digest_size=12)
    for t in (weight, bias):
        if t is not None:
            h.update(np.ascontiguousarray(t.detach().float().cpu().numpy()).data)
    return h.hexdigest()


def first_positions(items: torch.Tensor) -> torch.Tensor:
    """Return, for each position of rows (B, L), the first position of the same item in its row."""
    same = items[:, :, None] == items[:, None, :]  # (B, L, L)
    return same.to(torch.int8).argmax(2)  # first True along the row


class AnnIndex:
    """Approximate top-k of ``q @ W.T + b`` over items 1..V-1 (padding never returned); same contract as
    ``seqrec.serving.topk.DotProductIndex.search``."""

    def __init__(self, backend, weight: torch.Tensor, bias: torch.Tensor | None, meta: dict):
        self.backend, self.meta = backend, meta
        self.weight = weight.detach().float()
        self.bias = None if bias is None else bias.detach().float().reshape(-1)
        self.n_items = len(self.weight)
        self.extra = int(meta["extra"])
        n_head = int(meta.get("head", 0)) if self.bias is not None else 0
        self.head = torch.sort(torch.topk(self.bias[1:], n_head).indices + 1).values if n_head else torch.zeros(0, dtype=torch.int64)
        self.head_rows = self.weight[self.head]  # (T, D)
        self.is_head = torch.zeros(self.n_items, dtype=torch.bool)
        self.is_head[self.head] = True

    @classmethod
    def build(cls, weight: torch.Tensor, bias: torch.Tensor | None, *, kind: str = ServingConfig().ann_kind,
              extra: int = ServingConfig().ann_extra, head: int = ServingConfig().ann_head, **params) -> "AnnIndex":
        """Return an index over the output layer (V, D) / (V,) built by ``kind``'s library with ``params``.

        hnsw: connectivity, expansion_add, expansion_search; ivf: lists (0 = 4 sqrt(V)), probe, seed.
        """
        params = {**DEFAULTS[kind], **params}
        start = time.perf_counter()
        backend = BACKENDS[kind].build(weight, bias, params, threads())
        meta = {"format": FORMAT, "kind": kind, "items": len(weight) - 1, **backend.params, "extra": extra,
                "head": 0 if bias is None else min(head, len(weight) - 1),
                "fingerprint": layer_fingerprint(weight, bias), "build_seconds": round(time.perf_counter() - start, 3),
                "built_at": datetime.now(timezone.utc).isoformat()}  # microseconds: names this build among others
        return cls(backend, weight, bias, meta)

    def set_breadth(self, breadth: int) -> None:
        """Search this wide from now on (hnsw: ``breadth`` candidates explored, ivf: ``breadth`` lists probed)."""
        self.meta["breadth"] = self.backend.set_breadth(breadth)

    def describe(self) -> dict:
        """Return what results name: the index kind, its settings, build figures and measured recall."""
        return {"index": "ann", **{k: v for k, v in self.meta.items() if k not in ("format", "fingerprint")}}

    def search(self, q: torch.Tensor, k: int, banned: torch.Tensor | None = None,
               repeat: RepeatTerm | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (exact scores (B, k) float32, item indices (B, k) int64) of the best candidates per query row.

        ``banned`` (B, L): items never returned (the session's, padding 0 aside); ``repeat``: the model's
        term for the session's items, applied over the candidates plus those items. A row with fewer
        than k candidates left gets -inf in its last slots.
        """
        if not 0 < k < self.n_items:
            raise ValueError(f"k={k} must be between 1 and the catalogue size {self.n_items - 1}")
        q = q.detach().float().cpu()  # (B, D)
        want = min(k + self.extra + (banned.shape[1] if banned is not None else 0), self.n_items - 1)
        found = self.backend.search(q, want, threads() if len(q) > 1 else 1)  # (B, m) item rows, -1 = none
        cand, scores = self.scored_candidates(q, torch.from_numpy(found + 1).clamp(min=PAD))
        scores, term = self.candidate_scores(q, cand, scores, repeat)
        if term is not None:
            cand = torch.cat([torch.zeros(len(q), 1, dtype=torch.int64), term.items_seen, cand], 1)
            scores = term.term.apply(scores)
        # the best k + L first, then the session's items out of those (each item holds one finite column)
        values, pos = torch.topk(scores, min(k + (banned.shape[1] if banned is not None else 0), scores.shape[1]), dim=1)
        idx = cand.gather(1, pos)
        if banned is not None:
            hit = (idx[:, :, None] == banned.cpu()[:, None, :]).any(-1)  # (B, k + L)
            order = torch.argsort(hit.to(torch.int8), dim=1, stable=True)[:, :k]  # allowed first, rank kept
            values, idx = values.gather(1, order).masked_fill(hit.gather(1, order), -math.inf), idx.gather(1, order)
        return pad_columns(values, k, -math.inf), pad_columns(idx, k, PAD)

    def scored_candidates(self, q: torch.Tensor, found: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (candidates (B, T + m), their exact scores) from the lists' items (B, m) and the head's T items.

        The head (the ``head`` items of highest bias) is scored by one matrix product for every query:
        a query whose own vector is short ranks by bias, and those items lie in every list.
        """
        if not len(self.head):
            return found, self.exact_scores(q, found)
        found = found.masked_fill(self.is_head[found], PAD)  # scored once, as head items
        head_scores = torch.addmm(self.bias[self.head], q, self.head_rows.T)  # (B, T)
        cand = torch.cat([self.head.expand(len(q), -1), found], 1)
        return cand, torch.cat([head_scores, self.exact_scores(q, found)], 1)

    def exact_scores(self, q: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Return float32 scores (B, C) of candidate items (B, C) for queries (B, D); padding scores -inf."""
        scores = torch.bmm(self.weight[cand], q[:, :, None])[:, :, 0]
        if self.bias is not None:
            scores += self.bias[cand]
        return scores.masked_fill(cand == PAD, -math.inf)

    def candidate_scores(self, q: torch.Tensor, cand: torch.Tensor, scores: torch.Tensor, repeat: RepeatTerm | None):
        """Return (scores (B, C), the term remapped to candidate columns or None) for the candidates and their scores.

        With a repeat term the columns are [padding, the term's items (L), the candidates (m)]: an item
        of the session is scored at the column of its first position; its later copies and the
        candidates that repeat it score -inf, so each item is scored once.
        """
        if repeat is None:
            return scores, None
        seen = repeat.items.cpu()  # (B, L)
        first = first_positions(seen)
        pos = torch.arange(seen.shape[1])[None, :]
        copy = (first != pos) | (seen == PAD)  # (B, L) not the item's first position
        dup = (cand[:, :, None] == seen[:, None, :]).any(-1)  # (B, m) candidate already in the session
        scores = torch.cat([torch.full((len(q), 1), -math.inf), self.exact_scores(q, seen).masked_fill(copy, -math.inf),
                            scores.masked_fill(dup, -math.inf)], 1)
        mapped = torch.where(seen != PAD, first + 1, PAD)  # term items as candidate columns
        return scores, _Remapped(replace(repeat, items=mapped), seen)

    def save(self, path: Path | str) -> Path:
        """Write the index (``path``, its library's own format) and its description (``path`` + ``.json``)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        self.backend.save(tmp)
        tmp.replace(path)
        meta_path = path.with_name(path.name + ".json")
        meta_path.with_name(meta_path.name + ".tmp").write_text(json.dumps(self.meta, indent=2))
        meta_path.with_name(meta_path.name + ".tmp").replace(meta_path)
        return path

    @classmethod
    def load(cls, path: Path | str, weight: torch.Tensor, bias: torch.Tensor | None) -> "AnnIndex | None":
        """Return the saved index at ``path`` when it was built from this output layer, else None (stale or absent)."""
        path = Path(path)
        meta_path = path.with_name(path.name + ".json")
        if not (path.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("format") != FORMAT or meta.get("kind") not in BACKENDS or meta.get("items") != len(weight) - 1:
            return None
        if meta.get("fingerprint") != layer_fingerprint(weight, bias):
            return None
        try:
            backend = BACKENDS[meta["kind"]].load(path, meta)
        except (OSError, RuntimeError, ValueError) as err:  # unreadable or corrupt: the caller builds it again
            log.warning("approximate index %s could not be read (%s); it will be rebuilt", path, err)
            return None
        if backend.size() != (meta["items"], meta["dim"]):
            return None
        return cls(backend, weight, bias, meta)


class _Remapped:
    """A repeat term whose items point at candidate columns (``term``), and the session's items (``items_seen``)."""

    def __init__(self, term: RepeatTerm, items_seen: torch.Tensor):
        self.term, self.items_seen = term, items_seen


def pad_columns(t: torch.Tensor, k: int, fill) -> torch.Tensor:
    """Return t (B, n) widened to (B, k) with ``fill`` (n < k when the candidates ran out)."""
    if t.shape[1] >= k:
        return t
    return torch.cat([t, torch.full((len(t), k - t.shape[1]), fill, dtype=t.dtype)], 1)


def tie_aware_recall(ann_values: torch.Tensor, exact_values: torch.Tensor) -> float:
    """Return recall@k of the index: the share of its k items whose exact score reaches the exact k-th best.

    Both (B, k) hold exact scores; an item tied with the exact k-th counts as found (ties can be
    returned in any order, so a set comparison would count them as misses).
    """
    kth = exact_values[:, -1:]
    tol = 1e-5 * kth.abs().clamp(min=1.0)
    found = (ann_values >= kth - tol) & torch.isfinite(ann_values)
    possible = torch.isfinite(exact_values).sum(1).clamp(min=1)
    return float((found.sum(1).clamp(max=possible) / possible).mean())
