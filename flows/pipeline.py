"""The seqrec flows: ingest, quality, clean, features, train, evaluate, and the parent pipeline.

Flows only compose tasks; every parameter is the typed config (``SeqrecConfig``), so the
Prefect UI, deployments and the CLI all override the same defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger

from flows.cluster import day_cluster, on_cluster
from seqrec.config import SeqrecConfig
from seqrec.models.factory import model_section
from seqrec.pipeline.models import embeddings_for
from seqrec.pipeline.features import fingerprint_sessions
from seqrec.pipeline.quality import fingerprint_catalogue, fingerprint_raw_tables, stage_results
from seqrec.pipeline.runlock import run_lock
from tasks import data as D
from tasks import features as F
from tasks import models as M
from tasks import quality as Q
from tasks.common import bind, code_version


def stage_dir(cfg: SeqrecConfig, name: str) -> str:
    """Return the absolute output directory of a stage inside the run directory."""
    return str((cfg.output.run_dir / name).resolve())


@flow(name="ingest", log_prints=True)
def ingest_flow(config: SeqrecConfig = SeqrecConfig()) -> dict:
    """Resolve (or generate) the raw data and load its event partitions into per-day files (the window's days)."""
    source = bind(D.resolve_data_root, config)(config)
    out, code = stage_dir(config, "ingest"), code_version()
    plan = D.plan_days(source["root"], config.data)
    futures = [bind(D.ingest_day, config).submit(source["root"], d["day"], d["fingerprint"], config.data, out, code)
               for d in plan["days"]]  # one task per day, cached on that day's files: a new day reads that day only
    ingest = D.settle_days([f.result() for f in futures], plan, config.data, out)
    return {"root": source["root"], **ingest}


@flow(name="quality", log_prints=True)
def quality_flow(ingested: dict, config: SeqrecConfig = SeqrecConfig()) -> dict:
    """Validate the raw tables and every raw event day partition (in parallel): findings, not gates."""
    code, out, root = code_version(), stage_dir(config, "quality"), ingested["root"]
    fp, catalogue = fingerprint_raw_tables(root), fingerprint_catalogue(root, config.data.domains)
    tables = bind(Q.validate_tables, config).submit(root, fp, "raw", config.quality, config.cleaning, config.data, out,
                                                    code)  # beside the days
    days = [bind(Q.validate_events_day, config).submit(d, "raw", config.quality, config.cleaning, out, code, root,
                                                       config.data.domains, catalogue) for d in ingested["days"]]
    checked = {"days": [d.result() for d in days], "tables": tables.result()}
    checked["data_docs"] = Q.publish_data_docs(stage_results(checked["days"], checked["tables"]), "raw", config.quality,
                                               config.cleaning, out)
    return checked


@flow(name="clean", log_prints=True)
def clean_flow(ingested: dict, config: SeqrecConfig = SeqrecConfig()) -> dict:
    """Clean every event day partition and the other tables, gate on the cleaned suites, write the report."""
    code, out, qdir, root = code_version(), stage_dir(config, "clean"), stage_dir(config, "quality"), ingested["root"]
    fp, catalogue = fingerprint_raw_tables(root), fingerprint_catalogue(root, config.data.domains)
    cleaning = bind(Q.clean_tables, config).submit(root, fp, config.cleaning, config.data, out, code)  # beside the days
    futures = [bind(Q.clean_events_day, config).submit(d, config.cleaning, out, code) for d in ingested["days"]]
    tables = cleaning.result()
    checked = bind(Q.validate_tables, config).submit(tables["clean_root"], fp, "cleaned", config.quality, config.cleaning,
                                                     config.data, qdir, code, root)
    days = [f.result() for f in futures]
    gates = [bind(Q.validate_events_day, config).submit(d, "cleaned", config.quality, config.cleaning, qdir, code, root,
                                                        config.data.domains, catalogue) for d in days]
    cleaned = {"days": days, "tables": tables, "gates": [g.result() for g in gates], "checked_tables": checked.result()}
    cleaned["report"] = Q.write_quality_report(qdir, cleaned, stage_dir(config, "reports"))
    cleaned["data_docs"] = Q.publish_data_docs(stage_results(cleaned["gates"], cleaned["checked_tables"]), "cleaned",
                                               config.quality, config.cleaning, qdir)
    Q.check_cleaned_gate(cleaned["gates"] + [cleaned["checked_tables"]], config.quality)  # after the report and Data Docs
    return cleaned


@flow(name="features", log_prints=True)
def features_flow(cleaned: dict, root: str, config: SeqrecConfig = SeqrecConfig(), address: str | None = None) -> dict:
    """Build sessions, the item co-occurrence graph and (optionally) InfoNCE item embeddings (``address``: the Dask
    scheduler whose workers run the sessions' days and buckets and the graph's parts and buckets)."""
    code, f = code_version(), config.features
    days = cleaned["days"]
    sessions = bind(F.sessionize_events, config)([d["path"] for d in days], [d["fingerprint"] for d in days],
                                                 f.sessions, stage_dir(config, "features/sessions"), code, address)
    out = {"sessions": sessions, "fingerprint": fingerprint_sessions(days, f.sessions)}
    if f.build_graph:
        out["graph"] = bind(F.build_item_graph, config)(sessions["sessions"], out["fingerprint"], root, f.graph, config.data,
                                                        stage_dir(config, "features/graph"), code, address)
    if f.build_graph and f.build_embeddings:
        out["embeddings"] = bind(F.train_item_embeddings, config)(out["graph"], f.embeddings, config.training,
                                                                  stage_dir(config, "features/embeddings"), code)
    return out


@flow(name="train", log_prints=True)
def train_flow(features: dict, config: SeqrecConfig = SeqrecConfig(), warm: dict | None = None) -> dict:
    """Split the sessions by the evaluation protocol and train every configured model (``warm``: the registry version
    the model of its name starts from)."""
    code = code_version()
    split = bind(M.split_sessions, config)(features["sessions"]["sessions"], features["fingerprint"], config.evaluation,
                                           stage_dir(config, "split"), code)
    sections = {name: model_section(config.models, name) for name in config.models.names}
    futures = [bind(M.train_model, config).submit(name, split, section, config.training, config.evaluation,
                                                  stage_dir(config, "models"), code, embeddings_for(name, section, features),
                                                  warm if warm and warm["model"] == name else None)
               for name, section in sections.items()]
    return {"split": split, "trained": [f.result() for f in futures]}


@flow(name="evaluate", log_prints=True)
def evaluate_flow(trained: dict, config: SeqrecConfig = SeqrecConfig(), embeddings: dict | None = None) -> dict:
    """Evaluate every trained model with full ranking and publish the comparison report (with the embeddings' map)."""
    code = code_version()
    futures = [bind(M.evaluate_model, config).submit(t, trained["split"], config.evaluation, code, config.serving)
               for t in trained["trained"]]
    results = [f.result() for f in futures]
    report = M.write_model_report(results, stage_dir(config, "reports"), embeddings)
    return {"results": results, "report": report}


@flow(name="pipeline", log_prints=True)
def pipeline_flow(config: SeqrecConfig = SeqrecConfig()) -> dict:
    """Run the whole DAG: ingest, quality, clean, features, train, evaluate (holding the run directory's lock)."""
    with run_lock(config.output.run_dir, config.output.lock_wait_seconds):
        return pipeline_body(config)


def data_flows(config: SeqrecConfig, through: Literal["quality", "features"] = "features") -> dict:
    """Run ingest, quality, clean and features (stopping after ``through``), the per-day tasks, the sessions' and the
    graph's buckets on the Dask cluster the config names (``flows.cluster``); return each stage's result by name."""
    if through not in ("quality", "features"):
        raise ValueError(f"data_flows: through={through!r}, expected 'quality' or 'features'")
    with day_cluster(config) as address:
        ingested = on_cluster(ingest_flow, address)(config=config)
        quality = on_cluster(quality_flow, address)(ingested=ingested, config=config)
        if through == "quality":
            return {"ingested": ingested, "quality": quality}
        cleaned = on_cluster(clean_flow, address)(ingested=ingested, config=config)
        features = features_flow(cleaned=cleaned, root=ingested["root"], config=config, address=address)
    return {"ingested": ingested, "quality": quality, "cleaned": cleaned, "features": features}


def pipeline_body(config: SeqrecConfig) -> dict:
    """Return the pipeline's reports, metrics and run directory (``pipeline_flow`` under the run lock)."""
    log = get_run_logger()
    staged = data_flows(config)
    quality, cleaned, features = staged["quality"], staged["cleaned"], staged["features"]
    trained = train_flow(features=features, config=config)
    evaluated = evaluate_flow(trained=trained, config=config, embeddings=features.get("embeddings"))
    reports = {"quality": cleaned["report"]["html"], **evaluated["report"],
               "data_docs_raw": quality["data_docs"], "data_docs_cleaned": cleaned["data_docs"]}
    log.info("Reports: %s", reports)
    return {"reports": reports, "metrics": {r["model"]: r["metrics"] for r in evaluated["results"]},
            "run_dir": str(Path(config.output.run_dir).resolve())}
