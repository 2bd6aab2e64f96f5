"""Events instead of polling: new days announced once each, promotions announced, the deployment trigger and the
failed-run automation valid for Prefect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from seqrec.pipeline.data import announce_new_days
from seqrec.pipeline.registry import announce_promotion
from seqrec.serving import registry as R

REPO = Path(__file__).resolve().parents[1]


class Collector:
    """Stands in for Prefect's emit_event (the library takes the emitter as an argument)."""

    def __init__(self):
        self.events = []

    def __call__(self, event, resource, payload):
        self.events.append((event, resource, payload))


def test_each_day_is_announced_once_and_again_when_its_files_change(tmp_path):
    days = [{"day": 1082, "fingerprint": "a", "rows": 10}, {"day": 1083, "fingerprint": "b", "rows": 12}]
    emit = Collector()
    assert announce_new_days("/data/root", days, str(tmp_path), emit) == [1082, 1083]
    assert [e[0] for e in emit.events] == ["seqrec.partition.arrived"] * 2
    event, resource, payload = emit.events[1]
    assert resource["prefect.resource.id"].startswith("seqrec.partition.") and resource["prefect.resource.id"].endswith(".1083")
    assert payload == {"root": "/data/root", "day": 1083, "rows": 12, "fingerprint": "b"}
    assert announce_new_days("/data/root", days, str(tmp_path), emit) == []  # nothing new: nothing sent
    days += [{"day": 1084, "fingerprint": "c", "rows": 3}]
    days[0] = {**days[0], "fingerprint": "a2"}  # day 1082's file was replaced
    assert announce_new_days("/data/root", days, str(tmp_path), emit) == [1082, 1084]
    assert len(emit.events) == 4


def test_a_promotion_is_announced_and_a_refusal_is_not(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"w")
    ranks = tmp_path / "r.npy"
    np.save(ranks, np.ones(50))
    reg = tmp_path / "reg"
    R.register_version(reg, [model], "gru4rec", {}, "d", {"recall@20": 1.0}, "v", None, str(ranks))
    R.promote_if_better(reg, "v0001")
    seen = {"version": "v0001", "metrics": {"recall@20": 1.0}, "valid_fingerprint": "v", "ranks": str(ranks)}
    R.register_version(reg, [model], "gru4rec", {}, "d", {"recall@20": 1.0}, "v", seen, str(ranks))
    R.promote_if_better(reg, "v0002")  # a tie: not promoted
    emit = Collector()
    assert announce_promotion(str(reg), "v0001", emit) and not announce_promotion(str(reg), "v0002", emit)
    (event, resource, payload), = emit.events
    assert event == "seqrec.model.promoted" and resource["prefect.resource.id"] == "seqrec.registry.v0001"
    assert payload["version"] == "v0001" and payload["promoted"] and payload["reason"] == "first version"


def test_the_nightly_trigger_and_the_failure_automation_are_valid_prefect_objects():
    from prefect.events.schemas.automations import AutomationCore
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly")
    trigger = DeploymentEventTrigger.model_validate(nightly["triggers"][0])
    assert trigger.expect == {"seqrec.partition.arrived"}
    automations = yaml.safe_load((REPO / "deployments" / "automations.yaml").read_text())["automations"]
    failed = AutomationCore.model_validate(automations[0])
    assert failed.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
