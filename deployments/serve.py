"""Serve the seqrec operations flows from this process (no work pool, no worker): the simplest case.

    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python -m deployments.serve

Schedules and the nightly run's trigger (a ``seqrec.partition.arrived`` event) match ``deployments/prefect.yaml``;
stop with Ctrl-C.
"""

from __future__ import annotations

from prefect import serve
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

from flows.retrain import backfill_flow, quality_check_flow, retrain_flow
from flows.tune import tune_flow
from seqrec.config import SeqrecConfig, build_config

NIGHTLY_CRON = "0 2 * * *"
HOURLY_CRON = "15 * * * *"
PARTITION_ARRIVED = DeploymentEventTrigger(match={"prefect.resource.id": "seqrec.partition.*"},
                                           expect={"seqrec.partition.arrived"})


def build_deployments(config: SeqrecConfig):
    """Return the nightly retrain, hourly quality check, on-demand backfill and tune (on the run's split) deployments."""
    params = {"config": config.model_dump(mode="json", exclude_defaults=True)}
    return [
        retrain_flow.to_deployment(name="nightly", cron=NIGHTLY_CRON, parameters=params, concurrency_limit=1,
                                   triggers=[PARTITION_ARRIVED]),
        quality_check_flow.to_deployment(name="new-partitions", cron=HOURLY_CRON, parameters=params, concurrency_limit=1),
        backfill_flow.to_deployment(name="on-demand", parameters=params),
        tune_flow.to_deployment(name="tune", concurrency_limit=1, parameters={
            "model": "gru4rec", "split_dir": str(config.output.root / config.output.run_name / "split"),
            "config": {"output": {"run_name": "tune"}}}),
    ]


if __name__ == "__main__":
    serve(*build_deployments(build_config({"output": {"run_name": "nightly", "lock_wait_seconds": 3600}})))
