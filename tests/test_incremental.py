"""Incremental runs: unchanged data is all cache hits, one new day reruns only that day, and a
retrain with a worse candidate leaves the registry's current model in place."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from seqrec.config import GeneratorConfig, build_config
from seqrec.synthetic.generate import generate_tecd

FIRST_DAY, DAYS = 1082, 4
PER_DAY = ("ingest_day-{d}", "validate_events_day-raw-{d}", "clean_events_day-{d}", "validate_events_day-cleaned-{d}")
UNCACHED = ("resolve_data_root", "write_quality_report", "check_cleaned_gate", "plan_days", "settle_days",
            "publish_data_docs")  # cheap, or publish artifacts and Data Docs


@pytest.fixture(scope="module")
def full_root(tmp_path_factory) -> Path:
    """Generate 4 days of tiny marketplace data once (the 4th day 'arrives' later)."""
    root = tmp_path_factory.mktemp("full")
    generate_tecd(root, GeneratorConfig(events=5000, days=DAYS, workers=1, domains=("marketplace",)))
    return root


def copy_days(src: Path, dest: Path, days: list[int]) -> None:
    """Copy the catalogue and the given days' partitions, keeping mtimes (fingerprints see arrival only)."""
    for f in sorted(src.rglob("*.pq")):
        if f.parent.name == "_generator" or (f.stem.isdigit() and int(f.stem) not in days):
            continue
        target = dest / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copy2(f, target)


def task_states(flow_run_ids: list) -> dict[str, str]:
    """Return task run name -> state name for the task runs of the given flow runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)))
    return {r.name: r.state.name for r in runs}


def run_ingest_quality_clean(cfg) -> dict[str, str]:
    """Run the ingest, quality and clean flows; return the states of all their task runs."""
    from flows.pipeline import clean_flow, ingest_flow, quality_flow

    ingest = ingest_flow(config=cfg, return_state=True)
    ingested = ingest.result()
    quality = quality_flow(ingested=ingested, config=cfg, return_state=True)
    clean = clean_flow(ingested=ingested, config=cfg, return_state=True)
    assert all(s.is_completed() for s in (ingest, quality, clean))
    return task_states([s.state_details.flow_run_id for s in (ingest, quality, clean)])


def test_new_partition_reruns_only_its_tasks(prefect_harness, full_root, tmp_path):
    root, first_days = tmp_path / "raw", [FIRST_DAY, FIRST_DAY + 1, FIRST_DAY + 2]
    copy_days(full_root, root, first_days)
    cfg = build_config({"data": {"root": str(root)}, "output": {"root": str(tmp_path / "out")}})
    before = {p: p.read_bytes() for p in root.rglob("*.pq")}

    first = run_ingest_quality_clean(cfg)
    assert {first[t.format(d=d)] for t in PER_DAY for d in first_days} == {"Completed"}

    again = run_ingest_quality_clean(cfg)  # unchanged data: every cached task is a cache hit
    cached = {k: v for k, v in again.items() if not k.startswith(UNCACHED)}
    assert len(cached) >= 4 * len(first_days) + 3 and set(cached.values()) == {"Cached"}, again

    new_day = FIRST_DAY + 3
    copy_days(full_root, root, first_days + [new_day])  # the 4th day's partitions arrive
    assert all(p.read_bytes() == b for p, b in before.items())  # days 1-3 byte-identical
    third = run_ingest_quality_clean(cfg)
    assert {third[t.format(d=new_day)] for t in PER_DAY} == {"Completed"}
    assert {third[t.format(d=d)] for t in PER_DAY for d in first_days} == {"Cached"}  # ingest too: one task per day


def test_worse_retrain_keeps_current_model(prefect_harness, full_root, tmp_path):
    from flows.retrain import retrain_flow
    from seqrec.serving import registry as R

    base = {"data": {"root": str(full_root)}, "output": {"root": str(tmp_path / "out")},
            "features": {"build_graph": False}, "training": {"progress": False}}
    good = retrain_flow(config=build_config(base, {"models": {"names": ["markov"]}}))
    assert good["version"] == "v0001" and good["promoted"]

    worse = retrain_flow(config=build_config(base, {"models": {"names": ["popularity"]}}))
    reg = tmp_path / "out" / "registry"
    assert worse == {**worse, "version": "v0002", "promoted": False, "previous": "v0001"}
    assert R.current_version(reg).name == "v0001" and R.current_version(reg).meta["model"] == "markov"
    decision = R.read_version(reg, "v0002").meta["promotion"]
    assert decision["candidate_value"] < decision["current_value"]  # both measured on the same validation file
    assert "| candidate (registered) | popularity |" in worse["table"] and "| current (v0001) | markov |" in worse["table"]


def test_an_unrelated_setting_leaves_trained_models_cached(prefect_harness, full_root, tmp_path):
    """Train tasks get only their sections: editing quality thresholds or another model's settings retrains nothing."""
    from flows.pipeline import clean_flow, features_flow, ingest_flow, quality_flow, train_flow

    base = {"data": {"root": str(full_root)}, "output": {"root": str(tmp_path / "out")}, "features": {"build_graph": False},
            "models": {"names": ["markov", "popularity"]}, "training": {"progress": False}}
    cfg = build_config(base)
    ingested = ingest_flow(config=cfg)
    quality_flow(ingested=ingested, config=cfg)  # the raw findings the clean flow's report reads
    features = features_flow(cleaned=clean_flow(ingested=ingested, config=cfg), root=ingested["root"], config=cfg)
    first = train_flow(features=features, config=cfg, return_state=True)
    edited = build_config(base, {"quality": {"mostly": {"users.region": 0.5}}, "models": {"gru4rec": {"hidden": 8}}})
    second = train_flow(features=features, config=edited, return_state=True)
    states = task_states([second.state_details.flow_run_id])
    assert {states[f"train_model-{m}"] for m in ("markov", "popularity")} == {"Cached"}, states
    assert second.result()["trained"] == first.result()["trained"]
    changed = build_config(base, {"models": {"itemknn": {"neighbours": 7}, "names": ["markov", "itemknn"]}})
    third = task_states([train_flow(features=features, config=changed, return_state=True).state_details.flow_run_id])
    assert third["train_model-markov"] == "Cached" and third["train_model-itemknn"] == "Completed"


def test_nightly_retrain_fine_tunes_from_the_current_version_and_retrains_from_scratch_on_schedule(
        prefect_harness, full_root, tmp_path):
    from flows.retrain import retrain_flow
    from seqrec.serving import registry as R

    root = tmp_path / "raw"
    copy_days(full_root, root, [FIRST_DAY, FIRST_DAY + 1, FIRST_DAY + 2])
    base = {"data": {"root": str(root)}, "output": {"root": str(tmp_path / "out")}, "features": {"build_graph": False},
            "models": {"names": ["gru4rec"], "gru4rec": {"hidden": 16, "epochs": 1, "n_sample": 32}},
            "training": {"progress": False, "patience": 0, "init_from": "registry", "finetune_epochs": 1,
                         "full_retrain_every": 3}, "registry": {"max_p": 1.0}}  # promote any gain: the lineage is the point
    reg = tmp_path / "out" / "registry"
    first = retrain_flow(config=build_config(base))
    assert first["version"] == "v0001" and R.read_version(reg, "v0001").meta["training"]["mode"] == "scratch"
    copy_days(full_root, root, [FIRST_DAY + 3])  # night 2: a new day arrives
    second = retrain_flow(config=build_config(base))
    meta = R.read_version(reg, second["version"]).meta["training"]
    assert meta["mode"] == "finetune" and meta["from"] == "v0001" and meta["nights_since_full"] == 1
    assert meta["days"] == [FIRST_DAY, FIRST_DAY + 3] and meta["kept"] > 0
    R.set_current(reg, second["version"])  # whatever the test said: the lineage goes on from it
    third = retrain_flow(config=build_config(base, {"training": {"seed": 1}}))  # a changed input: it trains again
    assert R.read_version(reg, third["version"]).meta["training"]["mode"] == "finetune"
    R.set_current(reg, third["version"])
    fourth = retrain_flow(config=build_config(base, {"training": {"seed": 2}}))  # 3 nights since scratch: full retrain
    assert R.read_version(reg, fourth["version"]).meta["training"] == {"mode": "scratch", "nights_since_full": 0,
                                                                       "days": [FIRST_DAY, FIRST_DAY + 3]}


def test_per_day_ingest_equals_the_one_step_ingest_and_keeps_to_its_window(full_root, tmp_path):
    import pandas as pd

    from seqrec.config import DataConfig
    from seqrec.data.ingest import ingest_events
    from seqrec.data.ingest_days import ingest_one_day, plan_days, settle_days

    data = DataConfig(domains=("marketplace",))
    whole = ingest_events(str(full_root), data, str(tmp_path / "whole"))
    plan = plan_days(str(full_root), data)
    days = settle_days([ingest_one_day(str(full_root), d["day"], data, str(tmp_path / "days")) for d in plan["days"]],
                       plan, data, str(tmp_path / "days"))
    assert [d["day"] for d in days["days"]] == [d["day"] for d in whole["days"]] == list(range(FIRST_DAY, FIRST_DAY + DAYS))
    assert [d["rows"] for d in days["days"]] == [d["rows"] for d in whole["days"]] and days["rows"] == whole["rows"]
    for a, b in zip(days["days"], whole["days"]):
        left, right = pd.read_parquet(a["path"]), pd.read_parquet(b["path"])
        key = list(left.columns)
        pd.testing.assert_frame_equal(left.sort_values(key, ignore_index=True), right.sort_values(key, ignore_index=True))
    windowed = plan_days(str(full_root), data.model_copy(update={"window_days": 2}))
    assert [d["day"] for d in windowed["days"]] == [FIRST_DAY + 2, FIRST_DAY + 3] and windowed["window"] == [FIRST_DAY + 2, FIRST_DAY + 3]


def flow_runs_since(start) -> list:
    """Return the ids of every flow run (sub-flows included) that started after ``start``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=start)), limit=200)
    return [r.id for r in runs]


def test_three_nights(prefect_harness, full_root, tmp_path):
    """Night 1 trains from scratch; night 2 (one new day) reruns that day's tasks only and fine-tunes version 1, the
    promotion decided by the paired test; night 3 (nothing new) retrains nothing and registers nothing."""
    from datetime import datetime, timezone

    from flows.retrain import retrain_flow
    from seqrec.serving import registry as R

    root = tmp_path / "raw"
    old_days, new_day = [FIRST_DAY, FIRST_DAY + 1, FIRST_DAY + 2], FIRST_DAY + 3
    copy_days(full_root, root, old_days)
    cfg = build_config({"data": {"root": str(root)}, "output": {"root": str(tmp_path / "out")}, "features": {"build_graph": False},
                        "models": {"names": ["gru4rec"], "gru4rec": {"hidden": 16, "epochs": 1, "n_sample": 32}},
                        "training": {"progress": False, "patience": 0, "init_from": "registry"}})
    reg = tmp_path / "out" / "registry"
    assert retrain_flow(config=cfg)["version"] == "v0001"

    copy_days(full_root, root, old_days + [new_day])
    start = datetime.now(timezone.utc)
    second = retrain_flow(config=cfg)
    states = task_states(flow_runs_since(start))
    assert {states[t.format(d=new_day)] for t in PER_DAY} == {"Completed"}
    assert {states[t.format(d=d)] for t in PER_DAY for d in old_days} == {"Cached"}
    version = R.read_version(reg, second["version"])
    assert version.name == "v0002" and version.meta["training"]["mode"] == "finetune" and version.meta["training"]["from"] == "v0001"
    decision = version.meta["promotion"]
    assert decision["current"] == "v0001" and 0 < decision["p_value"] <= 1 and "reason" in decision

    start = datetime.now(timezone.utc)
    third = retrain_flow(config=cfg)
    assert third["skipped"] == "no new data" and third["version"] == "v0002" and not third["promoted"]
    assert [v.name for v in R.list_versions(reg)] == ["v0001", "v0002"]
    names = task_states(flow_runs_since(start))
    assert not [n for n in names if n.startswith(("train_model", "evaluate_version", "register"))]  # nothing retrained
