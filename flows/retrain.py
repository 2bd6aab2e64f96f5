"""Operations flows: nightly retrain with promotion by a paired test, data-quality check of new partitions, backfill.

Each flow holds its run directory's lock (``seqrec.pipeline.runlock``) while it writes there: a second run on the
same directory waits ``output.lock_wait_seconds`` for it, then is refused; runs never interleave.

Every flow takes the typed config (``SeqrecConfig``) like the pipeline's flows; deployments
(``deployments/prefect.yaml``, ``deployments/serve.py``) only override its values.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.pipeline import data_flows, pipeline_flow, train_flow
from seqrec.config import SeqrecConfig, build_config, config_to_dict
from seqrec.pipeline.runlock import run_lock
from seqrec.serving.registry import default_registry_dir
from tasks import data as D
from tasks import registry as R


def registry_dir(cfg: SeqrecConfig) -> str:
    """Return the absolute registry directory of the config's output root."""
    return str(default_registry_dir(cfg.output.root).resolve())


@flow(name="promote", log_prints=True)
def promote_flow(trained: dict, data_fingerprint: str, config: SeqrecConfig = SeqrecConfig(), days: list | None = None) -> dict:
    """Evaluate the new models and the current one on the same validation targets; register the best; promote it only
    when it is better by ``registry.min_gain`` and a paired test over the targets says so (``registry.max_p``)."""
    registry, metric, split = registry_dir(config), config.training.valid_metric, trained["split"]
    ranks = Path(config.output.run_dir).resolve() / "promotion"  # per-target ranks for the paired test
    current = R.current_version(registry)
    futures = [R.evaluate_version.submit(t["path"], split, config.evaluation, "valid",
                                         str(ranks / f"{Path(t['path']).stem}.valid_ranks.npy")) for t in trained["trained"]]
    baseline = (R.evaluate_version(current["model_path"], split, config.evaluation, "valid",
                                   str(ranks / f"current-{current['version']}.valid_ranks.npy")) if current else None)
    results = [f.result() for f in futures]
    registered = R.register_version(registry, results, metric, config, data_fingerprint, current, baseline,
                                    trained["trained"], days)
    promoted = R.promote_if_better(registry, registered["version"], metric, config.registry)
    R.announce_promotion(registry, registered["version"])
    table = R.publish_model_comparison(results, baseline, current, registered, promoted, metric, registry)
    return {"registry": registry, "version": registered["version"], "model": registered["model"],
            "promoted": promoted, "previous": current["version"] if current else None, "table": table}


@flow(name="retrain", log_prints=True)
def retrain_flow(config: SeqrecConfig = SeqrecConfig()) -> dict:
    """Ingest, check, clean, build features and train (warm-started from the registry's current version when
    ``training.init_from`` is ``registry``), then register and promote only a better candidate."""
    with run_lock(config.output.run_dir, config.output.lock_wait_seconds):
        staged = data_flows(config)
        ingested, features = staged["ingested"], staged["features"]
        done = R.already_trained(registry_dir(config), features["fingerprint"], config)
        if done is not None:  # an unchanged warehouse: nothing to retrain, no new version
            get_run_logger().info("%s was trained on these data with this config: nothing to retrain", done["version"])
            return {**done, "registry": registry_dir(config), "promoted": False, "skipped": "no new data"}
        warm = R.warm_start_plan(registry_dir(config), config.training)
        trained = train_flow(features=features, config=config, warm=warm)
        decision = promote_flow(trained=trained, data_fingerprint=features["fingerprint"], config=config,
                                days=[d["day"] for d in ingested["days"]])
    get_run_logger().info("Candidate %s (%s): promoted=%s", decision["version"], decision["model"], decision["promoted"])
    return decision


@flow(name="quality-check", log_prints=True)
def quality_check_flow(config: SeqrecConfig = SeqrecConfig()) -> dict:
    """Validate newly arrived day partitions (per-day caching: days seen before are cache hits) and announce each new
    day as a ``seqrec.partition.arrived`` event (the nightly deployment's trigger)."""
    with run_lock(config.output.run_dir, config.output.lock_wait_seconds):
        staged = data_flows(config, through="quality")
        ingested, quality = staged["ingested"], staged["quality"]
        arrived = D.announce_new_days(ingested, str(Path(config.output.run_dir).resolve()))
    return {"root": ingested["root"], "days": [d["day"] for d in ingested["days"]], "quality": quality, "arrived": arrived}


def with_day_range(cfg: SeqrecConfig, first_day: int, last_day: int) -> SeqrecConfig:
    """Return ``cfg`` (validated again) over days first..last, writing to its own run directory."""
    run_name = f"{cfg.output.run_name}-backfill-{first_day}-{last_day}"
    return build_config(config_to_dict(cfg), {"data": {"first_day": first_day, "last_day": last_day},
                                              "output": {"run_name": run_name}})


@flow(name="backfill", log_prints=True)
def backfill_flow(config: SeqrecConfig, first_day: int, last_day: int) -> dict:
    """Run the whole pipeline over days first..last (inclusive) into ``<run_name>-backfill-<first>-<last>``."""
    cfg = with_day_range(config, first_day, last_day)
    result = pipeline_flow(config=cfg)
    return {**result, "days": [first_day, last_day], "run_dir": str(Path(cfg.output.run_dir).resolve())}
