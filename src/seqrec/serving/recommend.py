"""Batched top-k recommendation for any ``Recommender``, and saving/loading model files.

Input sessions hold original item ids (strings, or anything that ``str()`` maps onto the
vocabulary's ids). Ids unknown to the model's vocabulary are ignored and counted; a session
left with no known item gets an empty recommendation list and is counted too (models need
at least one item). Both counts are attributes of the returned ``Recommendations`` list and
are logged as a warning when non-zero.

The hot path is array code: sessions are encoded once and handled ``batch_size`` rows at a
time. Dot-product models (``Recommender.output_layer``) never materialise the score matrix:
their query vectors go to a cached ``seqrec.serving.topk.DotProductIndex`` (blocked scoring into a
reused buffer, group-max pruned exact top-k). Other models
with sparse scores over a back-off (``Recommender.sparse_scores``: Markov, Item-KNN, S-POP)
go to ``seqrec.serving.topk.sparse_candidates``: their rows' best stored entries and the back-off's best
items, never a dense block. Other models
give ``score_last`` (B, V + 1), cut by ``seqrec.serving.topk.group_topk``; seen items are excluded
without writing into the score matrix: take the top ``k + L + 1`` (L = the batch's width,
+ 1 for padding), drop banned candidates, keep the first ``k``.

A model file is a ``weights_only`` torch checkpoint: ``model.state_dict()`` plus a
``model_type`` key naming the class (``Recommender.name``). Classes are found in
``MODEL_TYPES``, filled by ``register_model_type`` or discovered in ``MODEL_MODULES``.
Models that keep no vocabulary of their own (the count baselines) get one passed to
``recommend`` / ``save_model``; it is stored under ``vocab`` and set on the loaded model.
"""

from __future__ import annotations

import importlib
import logging
import math
import pickle
import re
import weakref
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from seqrec.io import load_checkpoint, save_checkpoint
from seqrec.models.base import Recommender
from seqrec.sequences import PAD, ItemVocab
from seqrec.serving.ann import AnnIndex
from seqrec.serving.topk import NUMPY_MIN_ROWS, DotProductIndex, group_topk, sparse_candidates, torch_threads

log = logging.getLogger(__name__)

MODEL_MODULES = ("seqrec.models.sasrec", "seqrec.models.gru4rec", "seqrec.models.baselines", "seqrec.models.bprmf")
MODEL_TYPES: dict[str, type[Recommender]] = {}
_VOCAB_INDEX: dict[int, tuple[np.ndarray, dict[str, int]]] = {}  # id(vocab.ids) -> (ids, id -> dense index)
SCORE_ROWS = 64  # sessions scored per block by models without a dot-product output layer
_DOT_INDEX: "weakref.WeakKeyDictionary[Recommender, tuple[tuple, DotProductIndex]]" = weakref.WeakKeyDictionary()


class Recommendations(list):
    """Top-k original ids per session (a list of lists), with the input problems counted."""

    def __init__(self, rows: list[list[str]], unknown_items: int = 0, empty_sessions: int = 0, index: dict | None = None):
        super().__init__(rows)
        self.unknown_items = unknown_items  # input item ids not in the model's vocabulary
        self.empty_sessions = empty_sessions  # sessions with no known item: empty list returned
        self.index = index or {"index": "exact"}  # what ranked the catalogue: exact, or an ANN index and its recall


@dataclass(frozen=True)
class EncodedSessions:
    """Sessions in model space: items (B, L) left-aligned, 0-padded; lengths (B,); unknown ids dropped."""

    items: np.ndarray
    lengths: np.ndarray
    unknown_items: int


# --------------------------------------------------------------------------- registry
def register_model_type(name: str, cls: type[Recommender]) -> None:
    """Register ``cls`` as the class that loads checkpoints whose ``model_type`` is ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Recommender)):
        raise TypeError(f"register_model_type({name!r}): {cls!r} is not a Recommender subclass")
    MODEL_TYPES[name] = cls


def discover_model_types() -> None:
    """Register every Recommender subclass (by its ``name``) of the model modules that exist."""
    for module_name in MODEL_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:  # that model file is not written yet
                continue
            raise
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Recommender) and obj.__module__ == module_name:
                MODEL_TYPES.setdefault(obj.name, obj)


def resolve_model_class(model_type: str) -> type[Recommender]:
    """Return the class registered (or discovered) for ``model_type``."""
    if model_type not in MODEL_TYPES:
        discover_model_types()
    if model_type not in MODEL_TYPES:
        raise KeyError(f"unknown model_type {model_type!r}; known: {sorted(MODEL_TYPES)}")
    return MODEL_TYPES[model_type]


def save_model(model: Recommender, path: Path | str, vocab: ItemVocab | None = None) -> Path:
    """Write ``model.state_dict()``, its ``model_type`` and vocabulary as a weights-only checkpoint; return the path."""
    state = dict(model.state_dict())
    model_type = state.setdefault("model_type", model.name)
    state.setdefault("vocab", [str(i) for i in model_vocab(model, vocab).ids])
    if resolve_model_class(model_type) is not type(model):
        raise TypeError(f"save_model: model_type {model_type!r} loads as {MODEL_TYPES[model_type]}, not {type(model)}")
    return save_checkpoint(state, path)


class ModelFileError(ValueError):
    """A file given as a model is not a seqrec model file; the message names it."""


def load_model(path: Path | str) -> Recommender:
    """Return the model saved at ``path``, refusing anything that is not a weights-only checkpoint."""
    try:
        state = load_checkpoint(path)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as err:
        raise ModelFileError(f"{path} is not a weights-only seqrec model file (refused to unpickle): {err}") from err
    except Exception as err:  # torch's reader fails in many ways on bytes that are no checkpoint
        raise ModelFileError(f"{path} is not a seqrec model file ({type(err).__name__}: {one_line_of(err)})") from err
    if not isinstance(state, dict) or "model_type" not in state:
        raise ModelFileError(f"{path} holds no 'model_type' key; not a seqrec model file")
    model = resolve_model_class(state["model_type"]).from_state_dict(state)
    if getattr(model, "vocab", None) is None:  # a model that keeps no vocabulary itself
        model.vocab = ItemVocab(np.array(state["vocab"], dtype=object))
    return model


# --------------------------------------------------------------------------- encoding
def one_line_of(err: BaseException) -> str:
    """Return the first line of an error's message."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def model_vocab(model: Recommender, vocab: ItemVocab | None = None) -> ItemVocab:
    """Return ``vocab`` if given, else the fitted model's item vocabulary (``model.vocab``)."""
    vocab = vocab if vocab is not None else getattr(model, "vocab", None)
    if not isinstance(vocab, ItemVocab):
        raise AttributeError(f"{type(model).__name__} has no fitted 'vocab' (ItemVocab): fit or load it, or pass vocab=")
    return vocab


def vocab_index(vocab: ItemVocab) -> dict[str, int]:
    """Return a dict (original id -> dense index) of the vocabulary's real ids, built once per vocabulary."""
    cached = _VOCAB_INDEX.get(id(vocab.ids))
    if cached is None or cached[0] is not vocab.ids:
        if len(_VOCAB_INDEX) > 8:
            _VOCAB_INDEX.clear()
        ids = vocab.ids[1:].astype(str)
        cached = _VOCAB_INDEX[id(vocab.ids)] = (vocab.ids, dict(zip(ids.tolist(), range(1, len(ids) + 1))))
    return cached[1]


def encode_ids(flat: list[str], vocab: ItemVocab) -> np.ndarray:
    """Return dense indices (N,) of original ids, 0 where unknown.

    A dict look-up per id: cheaper than pandas' hashed ``Index.get_indexer`` on arrow strings (BENCHMARKS.md).
    """
    return np.fromiter(map(vocab_index(vocab).get, flat, repeat(PAD)), dtype=np.int64, count=len(flat))


def encode_sessions(sessions: Sequence[Sequence[str]] | Sequence[np.ndarray], vocab: ItemVocab) -> EncodedSessions:
    """Return sessions as dense left-aligned arrays, unknown ids removed and counted."""
    sizes = np.fromiter(map(len, sessions), dtype=np.int64, count=len(sessions))
    flat = list(chain.from_iterable(sessions))
    codes = encode_ids(flat, vocab)  # (N,), 0 = unknown; ids are looked up as given, strings being the common case
    miss = np.flatnonzero(codes == PAD)
    retry = [j for j in miss.tolist() if type(flat[j]) is not str]  # numbers (int ids, numpy scalars): as text
    if retry:
        codes[retry] = encode_ids([str(flat[j]) for j in retry], vocab)
    known = codes > PAD
    rows = np.repeat(np.arange(len(sizes)), sizes)[known]
    lengths = np.bincount(rows, minlength=len(sizes)).astype(np.int64)  # (B,)
    cols = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    items = np.zeros((len(sizes), int(lengths.max(initial=0))), dtype=np.int64)  # (B, L)
    items[rows, cols] = codes[known]
    return EncodedSessions(items, lengths, int((~known).sum()))


# --------------------------------------------------------------------------- top-k
def top_k_unseen(scores: torch.Tensor, items: torch.Tensor, k: int, exclude_seen: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (indices (B, k) int64, scores (B, k)) of the best items, never padding; 0 / -inf where none is left."""
    values, idx = group_topk(scores, candidate_count(k, items, exclude_seen, scores.shape[1]))  # (B, n)
    return drop_banned(values, idx, items, k, exclude_seen)


def candidate_count(k: int, items: torch.Tensor, exclude_seen: bool, width: int) -> int:
    """Return how many best items to take so that k remain after dropping padding and the seen items."""
    return min(k + 1 + (items.shape[1] if exclude_seen else 0), width)


def drop_banned(values: torch.Tensor, idx: torch.Tensor, items: torch.Tensor, k: int, exclude_seen: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the first k of ranked candidates (B, n) that are not padding (nor seen in ``items``), order kept."""
    banned = idx == PAD  # (B, n)
    if exclude_seen:
        banned |= (idx[:, :, None] == items[:, None, :]).any(-1)  # (B, n, L) -> (B, n)
    order = torch.argsort(banned.to(torch.int8), dim=1, stable=True)[:, :k]  # allowed first, rank kept
    banned = banned.gather(1, order)  # (B, k)
    return idx.gather(1, order).masked_fill(banned, PAD), values.gather(1, order).masked_fill(banned, float("-inf"))


def top_k_rows(scores: np.ndarray, items: np.ndarray, k: int, exclude_seen: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``top_k_unseen`` of a (B, V + 1) score array, ranked once when every row is the same."""
    items = torch.as_tensor(items)  # (B, L)
    if len(scores) > 1 and scores.strides[0] == 0:  # one broadcast row (popularity): rank it once for all
        values, idx = group_topk(torch.from_numpy(scores[:1].copy()), candidate_count(k, items, exclude_seen, scores.shape[1]))
        return drop_banned(values.expand(len(items), -1), idx.expand(len(items), -1), items, k, exclude_seen)
    return top_k_unseen(torch.from_numpy(np.require(scores, requirements=["C", "W"])), items, k, exclude_seen)  # copy if read-only


def dot_product_index(model: Recommender) -> DotProductIndex | None:
    """Return the model's cached ``DotProductIndex`` (rebuilt when its weights change), or None for other models."""
    layer = model.output_layer()
    if layer is None:
        return None
    weight, bias = layer
    key = (weight.data_ptr(), weight._version, None if bias is None else (bias.data_ptr(), bias._version))
    cached = _DOT_INDEX.get(model)
    if cached is None or cached[0] != key:
        cached = _DOT_INDEX[model] = (key, DotProductIndex(weight, bias))
    return cached[1]


def check_k(k: int, width: int) -> None:
    """Raise unless 1 <= k <= the catalogue size (``width`` columns: the items plus padding)."""
    if not 0 < k < width:
        raise ValueError(f"k={k} must be between 1 and the catalogue size {width - 1}")


def recommend_topk(
    model: Recommender, items: np.ndarray, lengths: np.ndarray, k: int = 10, exclude_seen: bool = True,
    index: AnnIndex | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (dense indices (B, k) int64, scores (B, k) float32) for encoded sessions, all of length >= 1.

    ``index``: an approximate index over a dot-product model's output layer (else the exact one).
    """
    index = index or dot_product_index(model)
    if index is not None:
        check_k(k, index.n_items)
        banned = torch.as_tensor(items) if exclude_seen else None  # (B, L); padding (0) is banned anyway
        query = model.query_vectors(items, lengths)  # (B, D)
        repeat = None if exclude_seen else model.repeat_term(query, torch.as_tensor(items))  # seen excluded: nothing to boost
        values, idx = index.search(query, k, banned, repeat=repeat)
        none_left = values == float("-inf")  # (B, k) fewer than k allowed items (before the activation maps -inf)
        values = model.final_activation(values).float().masked_fill(none_left, float("-inf"))
        return idx.masked_fill(none_left, PAD).cpu().numpy(), values.cpu().numpy()
    sparse = model.sparse_scores(items, lengths)
    if sparse is not None:  # stored entries over a back-off: the best of both, no dense block
        stored, background = sparse
        check_k(k, stored.shape[1])
        seen = torch.as_tensor(items)
        values, idx = sparse_candidates(stored, background, candidate_count(k, seen, exclude_seen, stored.shape[1]))
        idx, values = drop_banned(values, idx.masked_fill(values == -math.inf, PAD), seen, k, exclude_seen)
        return idx.numpy(), values.numpy()
    parts = []
    for r in range(0, len(lengths), SCORE_ROWS):  # a (SCORE_ROWS, V + 1) block at a time stays in cache
        rows = slice(r, r + SCORE_ROWS)
        scores = np.asarray(model.score_last(items[rows], lengths[rows]), dtype=np.float32)  # (n, V + 1)
        if scores.ndim != 2 or len(scores) != len(lengths[rows]):
            raise ValueError(f"{type(model).__name__}.score_last returned {scores.shape} for {len(lengths[rows])} sessions")
        check_k(k, scores.shape[1])
        parts.append(top_k_rows(scores, items[rows], k, exclude_seen))
    return torch.cat([p[0] for p in parts]).numpy(), torch.cat([p[1] for p in parts]).numpy()


def recommend_indices(model: Recommender, items: np.ndarray, lengths: np.ndarray, k: int = 10, exclude_seen: bool = True,
                      index: AnnIndex | None = None) -> np.ndarray:
    """Return the top-k dense item indices (B, k) int64 (0 where fewer than k items are allowed)."""
    return recommend_topk(model, items, lengths, k, exclude_seen, index)[0]


def decode_rows(vocab: ItemVocab, indices: np.ndarray) -> list[list[str]]:
    """Return original ids per row of dense indices (B, k), padding slots left out."""
    rows = vocab.ids[indices].tolist()
    for r in np.flatnonzero((indices == PAD).any(1)):  # only rows that ran out of allowed items
        rows[r] = [str(i) for i in vocab.ids[indices[r][indices[r] != PAD]]]
    return rows


def recommend(
    model: Recommender,
    sessions: list[list[str]] | list[np.ndarray],
    k: int = 10,
    exclude_seen: bool = True,
    batch_size: int = 1024,
    vocab: ItemVocab | None = None,
    index: AnnIndex | None = None,
) -> Recommendations:
    """Return the top-k original item ids for every session, in input order (``vocab``: default ``model.vocab``).

    ``index``: an approximate index of the model's output layer (``seqrec.serving.indexes.index_for``);
    None ranks the whole catalogue exactly. The result names which (``Recommendations.index``).
    """
    vocab = model_vocab(model, vocab)
    enc = encode_sessions(sessions, vocab)
    out = np.zeros((len(enc.lengths), k), dtype=np.int64)  # (B, k); empty sessions stay all padding
    live = np.flatnonzero(enc.lengths > 0)
    live = live[np.argsort(enc.lengths[live], kind="stable")]  # similar lengths per batch: less padding
    # a request of a few sessions runs on one thread: waking the pool costs more than it saves (p99 latency)
    with torch_threads(1 if len(live) < NUMPY_MIN_ROWS else None):
        for start in range(0, len(live), batch_size):
            rows = live[start : start + batch_size]
            width = int(enc.lengths[rows].max())
            out[rows] = recommend_indices(model, enc.items[rows, :width], enc.lengths[rows], k, exclude_seen, index)
    empty = len(enc.lengths) - len(live)
    if enc.unknown_items or empty:
        log.warning("recommend: ignored %d unknown item ids; %d sessions had no known item", enc.unknown_items, empty)
    return Recommendations(decode_rows(vocab, out), enc.unknown_items, empty, None if index is None else index.describe())


# --------------------------------------------------------------------------- files
def read_sessions_file(path: Path | str) -> list[list[str]]:
    """Return the sessions of a text file: one per line, or a TSV with SessionId and ItemId columns.

    Plain text: item ids separated by spaces and/or commas; a blank line is an empty
    session (kept, so output lines match input lines). TSV (header line holding
    ``SessionId`` and ``ItemId``, GRU4Rec's layout): sessions in order of first appearance,
    items in file order, or by ``Time`` when that column exists (stable).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sessions file {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    if "SessionId" in header and "ItemId" in header:
        return read_sessions_tsv(path)
    return [[t for t in re.split(r"[,\s]+", line.strip()) if t] for line in lines]


def read_sessions_tsv(path: Path) -> list[list[str]]:
    """Return the sessions of a GRU4Rec-style TSV (SessionId, ItemId[, Time])."""
    df = pd.read_csv(path, sep="\t", dtype={"SessionId": str, "ItemId": str})
    for col in ("SessionId", "ItemId"):
        if df[col].isna().any():
            raise ValueError(f"sessions file {path}: column '{col}' has {int(df[col].isna().sum())} empty values")
    order = pd.unique(df["SessionId"])  # first appearance in the file
    if "Time" in df.columns:
        df = df.sort_values("Time", kind="stable")
    groups = df.groupby("SessionId", sort=False)["ItemId"].agg(list)
    return [groups[s] for s in order]
