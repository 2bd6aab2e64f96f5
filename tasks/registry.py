"""Registry tasks: read the current version, evaluate on validation data, register, promote, publish."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from seqrec.config import EvaluationConfig, RegistryConfig, SeqrecConfig, TrainingConfig, config_to_dict
from seqrec.pipeline import registry as P
from seqrec.serving import registry as R
from tasks.common import IO_RETRIES


@task(name="current_version", **IO_RETRIES)
def current_version(registry: str) -> dict | None:
    """Return the registry's current version (name, model, model file), or None before the first."""
    return P.current_version_info(registry)


@task(name="evaluate_version", task_run_name="evaluate_version-{part}")
def evaluate_version(model_path: str, split: dict, cfg: EvaluationConfig, part: str = "valid",
                     ranks_path: str | None = None) -> dict:
    """Return a saved model's metrics on the split's ``part`` (aligned to the split's vocabulary), ranks written to ``ranks_path``."""
    return P.evaluate_version(model_path, split["split_dir"], cfg, part, ranks_path)


@task(name="register_version")
def register_version(registry: str, results: list[dict], metric: str, config: SeqrecConfig, data_fingerprint: str,
                     current: dict | None, baseline: dict | None, trained: list | None = None, days: list | None = None) -> dict:
    """Return the registered version of the best candidate on validation data (how it was trained recorded)."""
    return P.register_best(registry, results, metric, config_to_dict(config), data_fingerprint, current, baseline,
                           trained, days)


@task(name="warm_start_plan", **IO_RETRIES)
def warm_start_plan(registry: str, training: TrainingConfig) -> dict | None:
    """Return the registry version tonight's neural model starts from, or None (from scratch)."""
    return P.warm_start_plan(registry, training)


@task(name="promote_if_better")
def promote_if_better(registry: str, version: str, metric: str, rule: RegistryConfig) -> bool:
    """Return whether the candidate became current (better than current on the same targets, by the paired test)."""
    return R.promote_if_better(registry, version, metric, rule.min_gain, rule.max_p)


@task(name="publish_model_comparison")
def publish_model_comparison(results: list[dict], baseline: dict | None, current: dict | None, registered: dict,
                             promoted: bool, metric: str, registry: str | None = None) -> str:
    """Return the candidate-vs-current markdown table; publish it and the rows as artifacts."""
    rows, markdown = P.compare_with_current(results, baseline, current, registered, promoted, metric, registry)
    create_table_artifact(rows, key="retrain-comparison", description=f"Candidates vs current on validation data ({metric})")
    create_markdown_artifact(markdown, key="retrain-decision")
    return markdown


@task(name="announce_promotion")
def announce_promotion(registry: str, version: str) -> bool:
    """Emit seqrec.model.promoted with the decision when ``version`` became current; return whether it did."""
    return P.announce_promotion(registry, version, emit_event)


@task(name="already_trained", **IO_RETRIES)
def already_trained(registry: str, data_fingerprint: str, config: SeqrecConfig) -> dict | None:
    """Return the newest version when it was trained on these data with this config (then nothing retrains)."""
    return P.already_trained(registry, data_fingerprint, config_to_dict(config))
