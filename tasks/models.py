"""Model tasks: split, train one model, evaluate one model, publish the comparison."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from seqrec.pipeline import models as stages
from seqrec.config import EvaluationConfig, Section, ServingConfig, TrainingConfig
from seqrec.evaluation.comparison import comparison_rows
from tasks.common import CACHE


@task(name="split_sessions", **CACHE)
def split_sessions(sessions_path: str, fingerprint: str, cfg: EvaluationConfig, out_dir: str, code: str) -> dict:
    """Return the train / valid / test data sets of the configured protocol."""
    return stages.split_sessions(sessions_path, cfg, out_dir)


@task(name="train_model", **CACHE, tags=["gpu"], task_run_name="train_model-{name}")  # no timeout: THREAD_TASKS
def train_model(name: str, split: dict, section: Section | None, training: TrainingConfig, evaluation: EvaluationConfig,
                out_dir: str, code: str, embeddings: dict | None = None, warm: dict | None = None) -> dict:
    """Return the trained model's file, training time and history (its own section, embeddings and warm start in the key)."""
    return stages.train_model(name, split["split_dir"], section, training, evaluation, out_dir, stages.path_of(embeddings), warm)


@task(name="evaluate_model", **CACHE)  # no timeout: THREAD_TASKS
def evaluate_model(trained: dict, split: dict, cfg: EvaluationConfig, code: str, serving: ServingConfig | None = None) -> dict:
    """Return full-ranking metrics (and breakdowns) of one trained model on the test part (through its index with one)."""
    return stages.evaluate_trained(trained, split["split_dir"], cfg, serving)


@task(name="write_model_report")
def write_model_report(results: list[dict], out_dir: str, embeddings: dict | None = None) -> dict:
    """Return the comparison report's paths; publish metrics as Prefect artifacts."""
    paths = stages.write_model_report(results, out_dir, embeddings=embeddings)
    create_table_artifact(comparison_rows(results), key="model-metrics", description="Full-ranking metrics per model")
    create_markdown_artifact(open(paths["markdown"]).read() + f"\n\nHTML report: `{paths['html']}`\n", key="model-report")
    return paths
