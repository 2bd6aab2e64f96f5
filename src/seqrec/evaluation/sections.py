"""The model report's analysis sections: significance against the best baseline, the classification view,
beyond-accuracy figures, breakdowns as tables and small multiples, validation curves.

Each section is built once as rows (``*_rows``) and rendered as markdown or HTML by the same table
helpers, so both reports say the same thing.
"""

from __future__ import annotations

import html
import re
from typing import Any

import numpy as np

from seqrec.config import NEURAL_MODELS
from seqrec.evaluation.analysis import paired_test

CLASSIFICATION_NOTE = ("accuracy = top-1 hit rate (Recall@1 under the protocol's tie rule); macro precision and macro "
                       "recall average, with equal weight, each item that occurs as a target or as a top-1 prediction: "
                       "precision = hits / times predicted, recall = hits / times a target (0 where never).")
BEYOND_NOTE = ("over every target's top-K list: coverage = distinct recommended items / catalogue; Gini of the "
               "recommendation counts over the catalogue (0 = even, near 1 = a few items take all); popularity "
               "percentile = mean share of catalogue items with at most the recommended item's training support; "
               "novelty = mean -log2 of the item's smoothed share of training events.")
NEIGHBOURS_NOTE = ("InfoNCE item embeddings (the study's section 4.3): the items whose nearest neighbour is closest, "
                   "each with its nearest neighbours and their cosine similarity.")
PAIRED_NOTE = ("per-target differences against the best baseline on the same targets; 95% bootstrap interval of the "
               "mean difference; p from a paired randomisation test (sign flips). A difference is real when the "
               "interval excludes 0 (p < 0.05).")

INDEX_NOTE = ("models served through their approximate index (serving.index): usearch's HNSW graph or FAISS's inverted "
              "lists (serving.ann_kind), built once per model and stored beside it; recall@k = share of the index's "
              "top-k reaching the exact k-th best score, measured on the sample named when the index was built; "
              "breadth = candidates explored (hnsw) or lists probed (ivf) per query, widened until that recall "
              "reached min_recall (serving.ann_min_recall). ranked_through = the metrics above were computed "
              "through the index (evaluation.index: ann), else exactly.")


def label_of(result: dict[str, Any]) -> str:
    """Return the name a model's results are shown under."""
    return result.get("label", result["model"])


def best_baseline(results: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """Return the result of the non-neural model with the highest ``metric``, or None without one."""
    baselines = [r for r in results if r["model"] not in NEURAL_MODELS]
    return max(baselines, key=lambda r: r["metrics"].get(metric, float("-inf")), default=None)


def per_target(ranks: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Return per-target hit@k and reciprocal rank@k (0 beyond k)."""
    return {f"recall@{k}": (ranks <= k).astype(np.float64), f"mrr@{k}": np.where(ranks <= k, 1.0 / ranks, 0.0)}


def paired_rows(results: list[dict[str, Any]], ranks: dict[str, np.ndarray], k: int, seed: int = 0) -> list[dict[str, Any]]:
    """Return one row per (model, metric) compared with the best baseline on recall@k and mrr@k."""
    base = best_baseline(results, f"recall@{k}")
    if base is None or label_of(base) not in ranks:
        return []
    ref = per_target(ranks[label_of(base)], k)
    rows = []
    for r in results:
        name = label_of(r)
        if r is base or name not in ranks or len(ranks[name]) != len(ranks[label_of(base)]):
            continue
        mine = per_target(ranks[name], k)
        for metric in ref:
            t = paired_test(mine[metric], ref[metric], seed)
            rows.append({"model": name, "against": label_of(base), "metric": metric, "difference": t["mean_difference"],
                         "ci_95": f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}]", "p_value": t["p_value"],
                         "real": "yes" if t["p_value"] < 0.05 else "no"})
    return rows


def headline_rows(results: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Return one row per model: recall@k and mrr@k with their bootstrap 95% intervals."""
    rows = []
    for r in results:
        row = {"model": label_of(r)}
        for metric in (f"recall@{k}", f"mrr@{k}"):
            lo, hi = r.get("intervals", {}).get(metric, (float("nan"), float("nan")))
            row[metric] = r["metrics"].get(metric, float("nan"))
            row[f"{metric} 95% CI"] = f"[{lo:.4f}, {hi:.4f}]"
        rows.append(row)
    return sorted(rows, key=lambda row: -row[f"recall@{k}"])


def classification_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return accuracy, macro precision and macro recall per model (full ranking only)."""
    return [{"model": label_of(r), **r["classification"]} for r in results if r.get("classification")]


def beyond_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return coverage, Gini, popularity percentile and novelty per model."""
    return [{"model": label_of(r), **r["beyond"]} for r in results if r.get("beyond")]


def index_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return, per model with an approximate index, its settings, build figures and measured recall."""
    rows = []
    for r in results:
        ix = r.get("index") or {}
        if ix.get("index") != "ann":
            continue
        recall = next((key for key in ix if key.startswith("recall@")), "recall@10")
        rows.append({"model": label_of(r), "index": ix.get("kind"), "items": ix.get("items"), "lists": ix.get("lists"),
                     "breadth": ix.get("breadth"), recall: ix.get(recall), "min_recall": ix.get("min_recall"),
                     "sample": ix.get("recall_sample"),
                     "build_s": ix.get("build_seconds"), "memory_MiB": round(ix.get("memory_bytes", 0) / 2**20, 1),
                     "ranked_through": bool(ix.get("ranked_through"))})
    return rows


def group_order(group: Any) -> tuple:
    """Return a sort key that puts numeric groups in numeric order ('1', '2', '3-4', '10-19', '20+'; '<3' before
    '>=3') ahead of named ones ('head', 'i2i', 'u2i'), which stay alphabetical."""
    number = re.match(r"[<>=]*(\d+)", str(group))
    return (0, int(number.group(1)), str(group)) if number else (1, 0, str(group))


def breakdown_rows(results: list[dict[str, Any]], name: str, metric: str) -> list[dict[str, Any]]:
    """Return one row per group of breakdown ``name``: the group, its targets and each model's ``metric``.

    The group's column is ``group`` (a breakdown may share its name with a model: popularity).
    """
    groups = sorted({g for r in results for g in r.get("breakdowns", {}).get(name, {})}, key=group_order)
    rows = []
    for g in groups:
        cells = [r["breakdowns"].get(name, {}).get(g) for r in results]
        targets = next((c["n_targets"] for c in cells if c), 0)
        rows.append({"group": g, "targets": targets,
                     **{label_of(r): (c or {}).get(metric, float("nan")) for r, c in zip(results, cells)}})
    return rows


def fmt(value: Any) -> str:
    """Return a cell: floats to four decimals, the rest as text."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Return rows as a markdown table (columns of the first row)."""
    if not rows:
        return "_none_\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in cols) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def html_table(rows: list[dict[str, Any]]) -> str:
    """Return rows as an HTML table (columns of the first row)."""
    if not rows:
        return "<p><i>none</i></p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(row.get(c, '')))}</td>" for c in cols) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
