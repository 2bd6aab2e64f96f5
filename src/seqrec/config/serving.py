"""Serving settings: which index ranks the catalogue for recommendations, and the HTTP endpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from seqrec.config.base import Section


class ServingConfig(Section):
    """How ``recommend`` (CLI, HTTP, the pipeline's index) ranks a dot-product model's catalogue.

    ``index``: ``exact`` scores every item; ``ann`` uses an approximate index built once per model and
    saved beside it (``ann_kind``: ``hnsw``, usearch's graph, or ``ivf``, FAISS's inverted lists), its
    candidates scored exactly; ``auto`` uses it from ``exact_max_items`` items on. Models without a
    dot-product output layer (the count baselines) are always exact.
    """

    index: Literal["exact", "ann", "auto"] = "auto"
    exact_max_items: int = Field(200_000, gt=0)  # auto: exact below this many items (BENCHMARKS.md, crossover)
    ann_kind: Literal["hnsw", "ivf"] = "hnsw"  # BENCHMARKS.md, "Approximate retrieval": why hnsw
    ann_connectivity: int = Field(16, ge=2)  # hnsw: links per node
    ann_expansion_add: int = Field(64, gt=0)  # hnsw: search breadth while building (build time vs recall)
    ann_expansion_search: int = Field(64, gt=0)  # hnsw: search breadth per query (recall vs speed)
    ann_lists: int = Field(0, ge=0)  # ivf: inverted lists; 0 = 4 sqrt(items)
    ann_probe: int = Field(4, gt=0)  # ivf: lists searched per query, to start with (ann_min_recall widens it)
    ann_extra: int = Field(10, ge=0)  # candidates fetched beyond k (rounding slack: the lifted order is the score order)
    ann_head: int = Field(256, ge=0)  # items of highest bias scored for every query (short queries rank by bias)
    recall_sessions: int = Field(2000, gt=0)  # sessions the index's recall@k is measured on when it is built
    # the search is widened (hnsw expansion, ivf probe: doubled, at most 256 times the asked one) until the measured
    # recall@k reaches this; 0 keeps the asked breadth whatever its recall
    ann_min_recall: float = Field(0.95, ge=0, le=1)
    recall_k: int = Field(10, gt=0)
    host: str = "127.0.0.1"  # seqrec serve
    port: int = Field(8765, ge=0, le=65535)  # 0 = any free port
    max_sessions: int = Field(1024, gt=0)  # per HTTP request
    max_k: int = Field(1000, gt=0)  # largest k an HTTP request may ask
    reload_seconds: float = Field(2.0, gt=0)  # how often seqrec serve REGISTRY looks for a new current version


class RegistryConfig(Section):
    """When a retrained candidate replaces the registry's current version (both ranked on the same validation targets).

    Promoted only when its mean of ``training.valid_metric`` is higher by at least ``min_gain`` (absolute) and
    a paired randomisation test over the per-target values gives p <= ``max_p``: noise and ties keep current.
    """

    min_gain: float = Field(0.0, ge=0)
    max_p: float = Field(0.05, gt=0, le=1)
