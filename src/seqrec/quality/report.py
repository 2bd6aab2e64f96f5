"""The data-quality report: one self-contained HTML page (inline CSS, base64 PNG) and a Markdown digest.

Inputs are plain frames: ``seqrec.quality.validate.summarise_validations`` of the raw and cleaned passes,
the cleaning steps, ``seqrec.quality.validate.measure_missingness`` of raw and cleaned tables, and
optionally ``seqrec.quality.cleaning.count_reasons``. Nothing on the page loads from the network.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Callable

import pandas as pd

from seqrec.quality.cleaning import CleanStep, retention_by_table, steps_frame

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2433;background:#fafbfc}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d8dde6;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;background:#fff;margin:6px 0}
th,td{border:1px solid #d8dde6;padding:4px 8px;text-align:left} th{background:#eef1f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.status-pass,.status-fail{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:12px}
.status-pass{background:#d7f5dd;color:#11632a} .status-fail{background:#fbd9d7;color:#8f1a12}
.muted{color:#667085;font-size:13px} img{max-width:100%;border:1px solid #d8dde6;background:#fff}
"""


def status_badge(success: object) -> str:
    """Return the PASS/FAIL marker element (a dash where the table was not validated)."""
    if success is None or (isinstance(success, float) and pd.isna(success)):
        return "-"
    return '<span class="status-pass">PASS</span>' if success else '<span class="status-fail">FAIL</span>'


def format_value(value: object) -> str:
    """Return a short text for a cell (floats to 6 significant digits, missing as a dash)."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def html_table(df: pd.DataFrame, special: dict[str, Callable[[object], str]] | None = None) -> str:
    """Return an HTML table of ``df``; columns in ``special`` are rendered by their function (already safe HTML)."""
    special = special or {}
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for record in df.itertuples(index=False):
        cells = []
        for col, value in zip(df.columns, record):
            if col in special:
                cells.append(f"<td>{special[col](value)}</td>")
            else:
                cls = ' class="num"' if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
                cells.append(f"<td{cls}>{html.escape(format_value(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def table_overview(raw: pd.DataFrame, cleaned: pd.DataFrame, steps: list[CleanStep]) -> pd.DataFrame:
    """Return one row per table: raw and cleaned pass status, failed checks, rows before/after, retention."""
    def status(summary: pd.DataFrame, name: str) -> pd.DataFrame:
        g = summary.groupby("table", sort=False)["success"]
        return pd.DataFrame({name: g.all(), f"{name}_failed": g.apply(lambda s: int((~s.astype(bool)).sum()))})

    out = status(raw, "raw").join(status(cleaned, "cleaned"), how="outer")
    if steps:
        out = out.join(retention_by_table(steps).set_index("table"), how="outer")
    return out.rename_axis("table").reset_index()


def plot_missingness(missingness: pd.DataFrame, top: int = 30) -> str:
    """Return a base64 PNG bar chart of missing rates per table.column, raw vs cleaned (worst ``top``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = missingness.assign(key=missingness["table"] + "." + missingness["column"])
    wide = m.pivot_table(index="key", columns="stage", values="rate", aggfunc="max").fillna(0.0)
    wide = wide[wide.max(axis=1) > 0].sort_values(wide.columns[0], ascending=True).tail(top)
    fig, ax = plt.subplots(figsize=(9, 0.32 * max(len(wide), 3) + 1.2), dpi=100)
    wide.mul(100).plot.barh(ax=ax, width=0.8, color=["#d9534f", "#5b8def"][: len(wide.columns)])
    ax.set_xlabel("missing values, % of rows")
    ax.set_ylabel("")
    ax.set_title("Missing values by column, raw vs cleaned")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


CHECK_COLUMNS = ["table", "partition", "check", "column", "success", "observed", "threshold",
                 "unexpected_count", "unexpected_percent", "element_count"]


def checks_section(title: str, summary: pd.DataFrame, note: str) -> str:
    """Return a section listing failed checks, then every check in a collapsible block."""
    failed = summary[~summary["success"].astype(bool)]
    body = html_table(failed[CHECK_COLUMNS], {"success": status_badge}) if len(failed) else "<p>No failed checks.</p>"
    full = html_table(summary[CHECK_COLUMNS], {"success": status_badge})
    return (f"<h2>{html.escape(title)}</h2><p class='muted'>{html.escape(note)}</p>{body}"
            f"<details><summary>All {len(summary)} checks</summary>{full}</details>")


def render_quality_report(raw: pd.DataFrame, cleaned: pd.DataFrame, steps: list[CleanStep],
                          missingness: pd.DataFrame, reasons: pd.DataFrame | None = None,
                          title: str = "seqrec data-quality report") -> str:
    """Return one self-contained HTML page: pass/fail per table, findings, cleaning accounting, missingness."""
    overview = table_overview(raw, cleaned, steps)
    badge = {"raw": status_badge, "cleaned": status_badge}
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='muted'>raw pass: {int((~raw['success'].astype(bool)).sum())} finding(s) over {len(raw)} checks; "
        f"cleaned pass: {int((~cleaned['success'].astype(bool)).sum())} failure(s) over {len(cleaned)} checks.</p>",
        "<h2>Tables</h2>", html_table(overview, badge),
        checks_section("Raw pass: findings", raw, "Observed = share of judged rows that pass; threshold = required share (mostly)."),
        checks_section("Cleaned pass: gate", cleaned, "Every failure here blocks the pipeline unless quality.on_cleaned_failure=warn."),
        "<h2>Cleaning steps</h2>", html_table(steps_frame(steps)),
    ]
    if reasons is not None:
        parts += ["<h2>Quarantined rows by reason</h2>", html_table(reasons)]
    if len(missingness):
        parts += ["<h2>Missing values</h2>",
                  f"<img alt='missing values by column' src='data:image/png;base64,{plot_missingness(missingness)}'>",
                  "<details><summary>Missing values table</summary>", html_table(missingness[missingness["missing"] > 0]), "</details>"]
    body = "\n".join(parts)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def markdown_table(df: pd.DataFrame) -> str:
    """Return a GitHub-flavoured Markdown table of ``df``."""
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    rows = ["| " + " | ".join(format_value(v).replace("|", "\\|") for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def render_quality_markdown(raw: pd.DataFrame, cleaned: pd.DataFrame, steps: list[CleanStep],
                            reasons: pd.DataFrame | None = None) -> str:
    """Return a Markdown digest (for a Prefect artifact): per-table status, findings, retention."""
    overview = table_overview(raw, cleaned, steps)
    for stage in ("raw", "cleaned"):
        overview[stage] = overview[stage].map(lambda ok: "-" if pd.isna(ok) else "PASS" if ok else "FAIL")
    cols = ["table", "check", "column", "observed", "threshold", "unexpected_count"]
    parts = ["# Data quality", "## Tables", markdown_table(overview)]
    for name, summary in (("Raw findings", raw), ("Cleaned failures", cleaned)):
        failed = summary[~summary["success"].astype(bool)]
        parts += [f"## {name}", markdown_table(failed[cols]) if len(failed) else "None."]
    if reasons is not None and len(reasons):
        parts += ["## Quarantined rows by reason", markdown_table(reasons)]
    return "\n\n".join(parts) + "\n"
