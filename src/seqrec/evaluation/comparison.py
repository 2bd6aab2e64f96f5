"""Model comparison report: a markdown table and a self-contained HTML page with plots."""

from __future__ import annotations

import base64
import html
import io as _io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from seqrec.evaluation import sections as S  # noqa: E402

HEADLINE = ("recall@20", "mrr@20", "ndcg@20", "recall@10", "ndcg@10")


def comparison_rows(results: list[dict[str, Any]], metrics: tuple[str, ...] = HEADLINE) -> list[dict[str, Any]]:
    """Return one row per model: name, the headline metrics, targets and train seconds."""
    rows = []
    for r in results:
        row = {"model": r.get("label", r["model"])}  # extensions named: "gru4rec + repeat mixture"
        row.update({m: round(float(r["metrics"].get(m, float("nan"))), 4) for m in metrics})
        row["targets"] = r.get("n_targets")
        row["train_s"] = round(float(r.get("train_seconds", 0.0)), 1)
        rows.append(row)
    return rows


def protocol_line(protocol: dict[str, Any]) -> str:
    """Return the evaluation protocol as one readable line (always printed with results)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(protocol.items()))


def headline_k(protocol: dict[str, Any]) -> int:
    """Return the cut-off the analyses use: 20 when evaluated, else the largest."""
    cutoffs = tuple(protocol.get("cutoffs", (20,)))
    return 20 if 20 in cutoffs else max(cutoffs)


def analysis_sections(results: list[dict[str, Any]], k: int, paired: list[dict[str, Any]]) -> list[tuple[str, list, str]]:
    """Return (title, rows, note) of every analysis section, in report order."""
    names = sorted({n for r in results for n in r.get("breakdowns", {})})
    served = S.index_rows(results)
    index = [("Serving index", served, S.INDEX_NOTE)] if served else []
    return [
        (f"Recall@{k} and MRR@{k} with 95% bootstrap intervals", S.headline_rows(results, k), "intervals resample targets"),
        ("Against the best baseline", paired, S.PAIRED_NOTE),
        ("Classification view", S.classification_rows(results), S.CLASSIFICATION_NOTE),
        (f"Beyond accuracy at K={k}", S.beyond_rows(results), S.BEYOND_NOTE),
        *[(f"Recall@{k} by {n.replace('_', ' ')}", S.breakdown_rows(results, n, f"recall@{k}"), "") for n in names],
        *index,
    ]


def render_comparison_markdown(results: list[dict[str, Any]], protocol: dict[str, Any], title: str,
                               paired: list[dict[str, Any]] | None = None, embeddings: dict[str, Any] | None = None) -> str:
    """Return a markdown report: protocol line, one metrics row per model, then every analysis section."""
    rows = comparison_rows(results)
    if not rows:
        return f"# {title}\n\nNo models were evaluated.\n"
    lines = [f"# {title}", "", f"**Protocol:** {protocol_line(protocol)}", ""]
    lines.append(S.markdown_table(sorted(rows, key=lambda r: -r.get("recall@20", 0))))
    for heading, section, note in analysis_sections(results, headline_k(protocol), paired or []):
        lines += [f"## {heading}", "", S.markdown_table(section)] + ([f"_{note}_", ""] if note else [])
    if embeddings:
        lines += ["## Item embeddings: nearest neighbours", "", S.markdown_table(embeddings["neighbours"]),
                  f"_{S.NEIGHBOURS_NOTE} The 2-D map is in the HTML report._", ""]
    return "\n".join(lines) + "\n"


def _png(fig) -> str:
    """Return a matplotlib figure as a base64 data URI and close it."""
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plot_metric_curves(results: list[dict[str, Any]], cutoffs: tuple[int, ...]) -> str:
    """Return a PNG data URI of Recall@K and MRR@K against K, one line per model."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for r in results:
        for ax, m in zip(axes, ("recall", "mrr")):
            ax.plot(cutoffs, [r["metrics"].get(f"{m}@{k}", float("nan")) for k in cutoffs], marker="o", label=r.get("label", r["model"]))
    for ax, m in zip(axes, ("Recall@K", "MRR@K")):
        ax.set_xlabel("K")
        ax.set_title(m)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _png(fig)


def plot_epoch_curves(results: list[dict[str, Any]], part: str, series: str, ylabel: str) -> str | None:
    """Return a PNG data URI of one per-epoch series (``result[part][series]``) per model, or None without any."""
    curves = [(S.label_of(r), r[part][series]) for r in results if (r.get(part) or {}).get(series)]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, values in curves:
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_training_curves(results: list[dict[str, Any]]) -> str | None:
    """Return a PNG data URI of per-epoch training loss for neural models, or None."""
    return plot_epoch_curves(results, "history", "loss", "training loss")


def plot_breakdowns(results: list[dict[str, Any]], k: int) -> str | None:
    """Return a PNG data URI of small multiples: one panel per breakdown, Recall@k per group and model."""
    names = sorted({n for r in results for n in r.get("breakdowns", {})})
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    width = 0.8 / max(len(results), 1)
    for ax, name in zip(axes[0], names):
        rows = S.breakdown_rows(results, name, f"recall@{k}")
        x = np.arange(len(rows))
        for i, r in enumerate(results):
            ax.bar(x + i * width, [row[S.label_of(r)] for row in rows], width, label=S.label_of(r))
        ax.set_xticks(x + width * (len(results) - 1) / 2, [str(row["group"]) for row in rows], fontsize=7, rotation=30)
        ax.set_title(name.replace("_", " "), fontsize=9)
    axes[0][0].set_ylabel(f"Recall@{k}")
    axes[0][-1].legend(fontsize=6)
    return _png(fig)


def plot_validation_curves(results: list[dict[str, Any]]) -> str | None:
    """Return a PNG data URI of the validation metric per epoch of the epoch-selection runs, or None."""
    metric = next((r["selection"].get("metric", "") for r in results if (r.get("selection") or {}).get("valid_metric")), "")
    return plot_epoch_curves(results, "selection", "valid_metric", f"validation {metric}")


def render_comparison_html(results: list[dict[str, Any]], protocol: dict[str, Any], title: str,
                           paired: list[dict[str, Any]] | None = None, embeddings: dict[str, Any] | None = None) -> str:
    """Return a self-contained HTML page (no network) with the tables, the analysis sections and plots."""
    rows = sorted(comparison_rows(results), key=lambda r: -r.get("recall@20", 0))
    k = headline_k(protocol)
    sections = "".join(f"<h2>{html.escape(h)}</h2>{S.html_table(rows_)}" + (f'<p class="note">{html.escape(n)}</p>' if n else "")
                       for h, rows_, n in analysis_sections(results, k, paired or []))
    cutoffs = tuple(protocol.get("cutoffs", (1, 5, 10, 20)))
    plots = [plot_metric_curves(results, cutoffs)] if results else []
    plots += [p for p in (plot_breakdowns(results, k), plot_training_curves(results), plot_validation_curves(results)) if p]
    figures = "".join(f'<img alt="plot" src="{src}"/>' for src in plots)
    if embeddings:
        sections += ("<h2>Item embeddings</h2>" + S.html_table(embeddings["neighbours"]) + f'<p class="note">{S.NEIGHBOURS_NOTE}</p>'
                     + '<img alt="embedding map" src="data:image/png;base64,' + base64.b64encode(embeddings["map_png"]).decode() + '"/>')
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin-bottom:.5em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f3f3f3}}.note{{color:#555;font-size:90%;max-width:60em}}
.protocol{{background:#fff8e1;padding:8px;border-left:4px solid #f0b400}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1><p class="protocol"><b>Protocol:</b> {html.escape(protocol_line(protocol))}</p>
{S.html_table(rows)}{figures}{sections}</body></html>"""
