"""Model comparison report: a markdown table and a self-contained HTML page with plots."""

from __future__ import annotations

import base64
import html
import io as _io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HEADLINE = ("recall@20", "mrr@20", "ndcg@20", "recall@10", "ndcg@10")


def _fmt(value: Any) -> str:
    """Return a metric formatted to four decimals (or as text)."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


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


def render_comparison_markdown(results: list[dict[str, Any]], protocol: dict[str, Any], title: str) -> str:
    """Return a markdown report: protocol line and one metrics row per model."""
    rows = comparison_rows(results)
    if not rows:
        return f"# {title}\n\nNo models were evaluated.\n"
    cols = list(rows[0])
    lines = [f"# {title}", "", f"**Protocol:** {protocol_line(protocol)}", ""]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for row in sorted(rows, key=lambda r: -r.get("recall@20", 0)):
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
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


def plot_training_curves(results: list[dict[str, Any]]) -> str | None:
    """Return a PNG data URI of per-epoch training loss for neural models, or None."""
    curves = [(r.get("label", r["model"]), r["history"]) for r in results if r.get("history", {}).get("loss")]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, hist in curves:
        ax.plot(range(1, len(hist["loss"]) + 1), hist["loss"], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def render_comparison_html(results: list[dict[str, Any]], protocol: dict[str, Any], title: str) -> str:
    """Return a self-contained HTML page (no network) with the table and plots."""
    rows = comparison_rows(results)
    cols = list(rows[0]) if rows else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in cols) + "</tr>"
        for r in sorted(rows, key=lambda r: -r.get("recall@20", 0))
    )
    cutoffs = tuple(protocol.get("cutoffs", (1, 5, 10, 20)))
    imgs = [plot_metric_curves(results, cutoffs)] if results else []
    curves = plot_training_curves(results)
    imgs += [curves] if curves else []
    figures = "".join(f'<img alt="plot" src="{src}"/>' for src in imgs)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f3f3f3}}
.protocol{{background:#fff8e1;padding:8px;border-left:4px solid #f0b400}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1><p class="protocol"><b>Protocol:</b> {html.escape(protocol_line(protocol))}</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{figures}</body></html>"""
