"""The hyperparameter search's report: the trial table, setting importances, the search plot, markdown and HTML."""

from __future__ import annotations

import base64
import html
import io as _io
import math
from typing import Any

import optuna
from optuna.trial import TrialState

from seqrec.evaluation.comparison import protocol_line
from seqrec.evaluation.sections import html_table, markdown_table

TEST_METRICS = ("recall", "mrr", "ndcg")


def trial_rows(study: optuna.Study, interrupted: str) -> list[dict[str, Any]]:
    """Return one row per trial: number, state (``interrupted``: the user attribute of a trial a killed search left
    running), value, best epoch, epochs, seconds, then every setting."""
    rows = []
    keys = sorted({k for t in study.trials for k in t.params})
    for t in study.trials:
        value = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                                      if t.intermediate_values else math.nan)
        state = t.state.name + (" (interrupted)" if t.user_attrs.get(interrupted) else "")
        rows.append({"trial": t.number, "state": state, "valid": float(value), "best epoch": t.user_attrs.get("best_epoch", ""),
                     "epochs": len(t.intermediate_values), "seconds": t.user_attrs.get("seconds", ""),
                     **{k: t.params.get(k, "") for k in keys}, "error": t.user_attrs.get("error", "")})
    return rows


def importances(study: optuna.Study) -> dict[str, float]:
    """Return each setting's importance for the validation metric (PED-ANOVA over finished trials; empty with < 2)."""
    from optuna.importance import PedAnovaImportanceEvaluator

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator()).items()}
    except (ValueError, RuntimeError):  # e.g. every finished trial had the same value
        return {}


def plot_search(study: optuna.Study, metric: str) -> bytes:
    """Return a PNG: the validation metric per trial with the running best, and each trial's metric per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    best, run = -math.inf, []
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            left.scatter(t.number, t.value, color="tab:blue", s=18)
            best = max(best, t.value)
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            left.scatter(t.number, t.intermediate_values[max(t.intermediate_values)], color="tab:red", marker="x", s=18)
        run.append(best if best > -math.inf else math.nan)
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            right.plot([s + 1 for s in steps], [t.intermediate_values[s] for s in steps], alpha=0.6,
                       color="tab:red" if t.state == TrialState.PRUNED else "tab:blue")
    left.plot(range(len(run)), run, color="black", drawstyle="steps-post", label="best so far")
    left.set_xlabel("trial"), left.set_ylabel(f"valid {metric}"), left.legend(fontsize=8)
    left.set_title("finished (dots), pruned at their last epoch (x)")
    right.set_xlabel("epoch"), right.set_ylabel(f"valid {metric}"), right.set_title("per epoch (pruned in red)")
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def test_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the test table: the best settings retrained on train + valid (Recall, MRR and NDCG at each K)."""
    final = summary["test"]
    if not final:
        return []
    return [{"model": f"{summary['model']} (trial {final['trial']}, retrained on train + valid)",
             **{k: v for k, v in final["metrics"].items() if k.split("@")[0] in TEST_METRICS}}]


def intro(summary: dict[str, Any]) -> str:
    """Return the report's first paragraph: where the study is, what chose, how many trials of which state."""
    st = summary["states"]
    return (f"Study `{summary['study']}` in `{summary['storage']}`; trials trained on train and chosen on valid "
            f"{summary['metric']}; {summary['trials']} trials: {st['COMPLETE']} finished, {st['PRUNED']} pruned, "
            f"{st['FAIL']} failed ({summary['counted']} of the budget of {summary['budget']} counted); "
            f"sampler {summary['sampler']}, pruner {summary['pruner']}.")


def render_markdown(summary: dict[str, Any], rows: list[dict[str, Any]], best_yaml: str | None, plot_name: str) -> str:
    """Return the report as markdown (the plot by file name)."""
    lines = [f"# Hyperparameter search: {summary['model']}", "", intro(summary), ""]
    best = summary["best"]
    if best:
        lines += ["## Best trial", "", f"Trial {best['number']}: valid {summary['metric']} **{best['value']:.4f}**. "
                  f"As a config file (`{summary['best_config']}`):", "", "```yaml", best_yaml.rstrip(), "```", ""]
    if summary["test"]:
        lines += ["## Test (touched once: the best settings retrained on train + valid)", "",
                  f"Protocol: {protocol_line(summary['test']['protocol'])}", "", markdown_table(test_rows(summary))]
    weights = [{"setting": k, "importance": v} for k, v in summary["importances"].items()]
    lines += ["## Setting importances (PED-ANOVA over finished trials)", "", markdown_table(weights),
              "## Trials", "", markdown_table(rows), f"![search]({plot_name})", ""]
    return "\n".join(lines)


def render_html(summary: dict[str, Any], rows: list[dict[str, Any]], best_yaml: str | None, png: bytes) -> str:
    """Return the report as a self-contained HTML page (the plot inlined)."""
    body, best = f"<p>{html.escape(intro(summary))}</p>", summary["best"]
    if best:
        body += (f"<h2>Best trial</h2><p>Trial {best['number']}: valid {html.escape(summary['metric'])} "
                 f"<b>{best['value']:.4f}</b></p><pre>{html.escape(best_yaml)}</pre>")
    if summary["test"]:
        body += ("<h2>Test (touched once: the best settings retrained on train + valid)</h2>"
                 f"<p>Protocol: {html.escape(protocol_line(summary['test']['protocol']))}</p>{html_table(test_rows(summary))}")
    weights = [{"setting": k, "importance": v} for k, v in summary["importances"].items()]
    body += (f"<h2>Setting importances (PED-ANOVA)</h2>{html_table(weights)}<h2>Trials</h2>{html_table(rows)}"
             f'<img alt="search" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>')
    title = html.escape(f"Hyperparameter search: {summary['model']}")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:right}}th{{background:#f3f3f3}}img{{max-width:100%}}</style></head>
<body><h1>{title}</h1>{body}</body></html>"""
