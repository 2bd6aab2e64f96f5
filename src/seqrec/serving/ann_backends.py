"""The two approximate-search libraries behind ``AnnIndex``: usearch's HNSW graph and FAISS's inverted lists.

Both answer "the m items of highest ``q . w_j + b_j``" over items 1..V-1 (padding left out) with
rows of item indices, -1 where fewer were found; ``AnnIndex`` scores what they return exactly.

* ``hnsw`` (default; usearch ``Index``, metric ``ip``): a navigable small-world graph over the items'
  ``[w_j, b_j]``, searched greedily for the largest inner product with ``[q, 1]``. On trained GRU4Rec
  and BPR-MF vectors it keeps recall@10 at 0.99 where the lists lose 7-40% (BENCHMARKS.md,
  "Approximate retrieval"); its build costs more.
* ``ivf`` (FAISS ``IndexIVFFlat``): k-means lists over the items lifted to an equivalent
  nearest-neighbour problem (Bachrach et al., RecSys 2014): ``x_j = [w_j, b_j, sqrt(M - |w_j|^2 - b_j^2)]``
  (``M`` the largest squared norm) lies on a sphere of radius ``sqrt(M)``; the query ``[q, 1, 0]``,
  scaled onto that sphere (same order, and the lists' centroids are then ranked by direction), has
  ``|x - y_j|^2 = const - 2 s (q . w_j + b_j)``. Fast to build, weaker on vectors without clusters.

The files are the libraries' own formats (no pickle).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

TRAIN_PER_LIST = 40  # ivf: k-means training points per list (FAISS warns below 39)


def import_library(name: str):
    """Return ``faiss`` or ``usearch.index``, with an error that says how to get it."""
    try:
        if name == "faiss":
            import faiss as module
        else:
            import usearch.index as module
    except ImportError as err:  # pragma: no cover - both are dependencies of the project
        raise RuntimeError(f"serving.ann_kind needs the {name} package (make install)") from err
    return module


def item_rows(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Return ``[w_j, b_j]`` (V - 1, D + 1) float32 of items 1..V-1 (bias 0 without one)."""
    w = weight.detach().float().cpu()[1:]
    b = torch.zeros(len(w)) if bias is None else bias.detach().float().cpu().reshape(-1)[1:]
    return torch.cat([w, b[:, None]], 1)


def lifted_items(weight: torch.Tensor, bias: torch.Tensor | None) -> np.ndarray:
    """Return the items 1..V-1 as points (V - 1, D + 2) whose Euclidean neighbours are the best-scored items."""
    x = torch.cat([item_rows(weight, bias), torch.zeros(len(weight) - 1, 1)], 1)  # (V - 1, D + 2)
    norms = (x[:, :-1] ** 2).sum(1)
    x[:, -1] = (norms.max() - norms).clamp(min=0).sqrt()
    return np.ascontiguousarray(x.numpy())


def lifted_queries(q: torch.Tensor, radius: float = 1.0) -> np.ndarray:
    """Return queries (B, D) as points (B, D + 2): ``[q, 1, 0]`` scaled to norm ``radius``."""
    x = torch.cat([q.detach().float().cpu(), torch.ones(len(q), 1), torch.zeros(len(q), 1)], 1)
    return np.ascontiguousarray((x * (radius / x.norm(dim=1, keepdim=True))).numpy())


def default_lists(n_items: int) -> int:
    """Return the number of inverted lists for ``n_items`` items: 4 sqrt(V), with enough items to train each."""
    return int(max(1, min(round(4 * math.sqrt(n_items)), n_items // TRAIN_PER_LIST)))


class Hnsw:
    """usearch's HNSW graph with the inner-product metric over ``[w_j, b_j]``."""

    kind = "hnsw"

    def __init__(self, index, params: dict):
        self.index, self.params = index, params

    @classmethod
    def build(cls, weight, bias, params: dict, threads: int) -> "Hnsw":
        """Return the graph over every item; ``params``: connectivity, expansion_add, expansion_search."""
        rows = np.ascontiguousarray(item_rows(weight, bias).numpy())
        index = import_library("usearch").Index(ndim=rows.shape[1], metric="ip", dtype="f32",
                                                connectivity=params["connectivity"],
                                                expansion_add=params["expansion_add"],
                                                expansion_search=params["expansion_search"])
        index.add(np.arange(len(rows), dtype=np.uint64), rows, threads=threads)
        return cls(index, {**params, "breadth": params["expansion_search"], "dim": rows.shape[1],
                           "memory_bytes": int(index.memory_usage)})

    def set_breadth(self, breadth: int) -> int:
        """Search ``breadth`` candidates per query from now on (usearch's expansion_search); return the breadth used."""
        self.index.expansion_search = self.params["breadth"] = int(breadth)
        return self.params["breadth"]

    def max_breadth(self) -> int:
        """Return the widest search worth trying: every item."""
        return len(self.index)

    def search(self, q: torch.Tensor, m: int, threads: int) -> np.ndarray:
        """Return item rows (B, m) int64 of the best inner products, -1 where fewer were found."""
        x = torch.cat([q.detach().float().cpu(), torch.ones(len(q), 1)], 1).numpy()
        found = self.index.search(np.ascontiguousarray(x), m, threads=threads)
        out = np.full((len(q), m), -1, dtype=np.int64)
        if not hasattr(found, "counts"):  # one query: a flat list of its matches
            keys = np.asarray(found.keys, dtype=np.int64)[:m]
            out[0, : len(keys)] = keys
            return out
        keys = np.asarray(found.keys, dtype=np.int64).reshape(len(q), -1)[:, :m]
        out[:, : keys.shape[1]] = keys
        out[np.arange(m)[None, :] >= np.asarray(found.counts).reshape(-1, 1)] = -1
        return out

    def save(self, path: Path) -> None:
        """Write the graph in usearch's format."""
        self.index.save(str(path))

    @classmethod
    def load(cls, path: Path, params: dict) -> "Hnsw":
        """Read a saved graph (its search breadth from ``params``)."""
        index = import_library("usearch").Index.restore(str(path))
        if index is None:
            raise ValueError(f"{path} is not a usearch index")
        index.expansion_search = params["breadth"]
        return cls(index, params)

    def size(self) -> tuple[int, int]:
        """Return (items held, dimension)."""
        return len(self.index), self.index.ndim


class Ivf:
    """FAISS's inverted lists over the lifted items (``IndexIVFFlat``, Euclidean)."""

    kind = "ivf"

    def __init__(self, index, params: dict):
        self.index, self.params = index, params

    @classmethod
    def build(cls, weight, bias, params: dict, threads: int) -> "Ivf":
        """Return lists trained by k-means on a sample, every item added; ``params``: lists (0 = default), probe, seed."""
        faiss = import_library("faiss")
        faiss.omp_set_num_threads(threads)
        x = lifted_items(weight, bias)  # (V - 1, D + 2)
        lists = params["lists"] or default_lists(len(x))
        if not 0 < lists <= len(x):
            raise ValueError(f"serving.ann_lists={lists} must be between 1 and the catalogue size {len(x)}")
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(x.shape[1]), x.shape[1], lists, faiss.METRIC_L2)
        index.cp.seed = params["seed"]
        sample = np.random.default_rng(params["seed"]).choice(len(x), min(len(x), TRAIN_PER_LIST * lists), replace=False)
        index.train(x[np.sort(sample)])
        index.add(x)
        probe = min(params["probe"], lists)
        return cls(index, {**params, "lists": lists, "probe": probe, "breadth": probe, "dim": x.shape[1],
                           "radius": float(np.linalg.norm(x[0])),
                           "memory_bytes": int(len(x) * (x.shape[1] * 4 + 8) + lists * x.shape[1] * 4)})

    def search(self, q: torch.Tensor, m: int, threads: int) -> np.ndarray:
        """Return item rows (B, m) int64 of the nearest lifted items in the probed lists, -1 where fewer were found."""
        import_library("faiss").omp_set_num_threads(threads)
        self.index.nprobe = self.params["breadth"]
        return self.index.search(lifted_queries(q, self.params["radius"]), m)[1]

    def set_breadth(self, breadth: int) -> int:
        """Probe ``breadth`` lists per query from now on (at most every list); return the breadth used."""
        self.params["breadth"] = min(int(breadth), self.params["lists"])
        return self.params["breadth"]

    def max_breadth(self) -> int:
        """Return the widest search worth trying: every list (the lifted order is then the exact order)."""
        return self.params["lists"]

    def save(self, path: Path) -> None:
        """Write the lists in FAISS's format."""
        import_library("faiss").write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, params: dict) -> "Ivf":
        """Read saved lists."""
        return cls(import_library("faiss").read_index(str(path)), params)

    def size(self) -> tuple[int, int]:
        """Return (items held, dimension)."""
        return self.index.ntotal, self.index.d


BACKENDS = {"hnsw": Hnsw, "ivf": Ivf}
