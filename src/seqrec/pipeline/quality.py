"""Quality and cleaning stages: validate and clean T-ECD tables and event day partitions on disk.

Each function reads its inputs, writes its outputs (summaries, cleaned data, quarantine)
under an output directory and returns a small JSON-able summary; ``tasks/quality.py``
wraps them one to one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqrec import columns as C
from seqrec import io
from seqrec.config import CleaningConfig, DataConfig, QualityConfig, SuiteParams, config_to_dict
from seqrec.data.ingest import ingest_events

# GX logs one INFO line per ephemeral context (one per validation); keep run logs readable.
logging.getLogger("great_expectations").setLevel(logging.WARNING)

SINGLE_TABLES = {"users": "users.pq", "brands": "brands.pq"}
# event columns of a few distinct values, validated as categoricals: GX's filters and set checks then work on codes
LOW_CARDINALITY = (C.ACTION, C.SUBDOMAIN, C.OS)
DAY_TABLES = {"payments": "payments/events", "receipts": "payments/receipts", "reviews": "reviews"}


def fingerprint_raw_tables(root: str) -> str:
    """Return a fingerprint (names, sizes, mtimes) of a raw root's non-event tables."""
    base = Path(root)
    single = [base / rel for rel in SINGLE_TABLES.values()] + list(base.glob("*/items.pq"))
    days = [f for rel in DAY_TABLES.values() for f in (base / rel).glob("*.pq")]
    return io.fingerprint_files(sorted(f for f in single + days if f.is_file()))


def read_raw_tables(root: str, data: DataConfig) -> dict[str, pd.DataFrame]:
    """Return every non-event table present under a raw T-ECD root (embeddings repaired, lengths kept)."""
    from seqrec.data.reader import load_day_tables, read_table_safe

    base, frames = Path(root), {}
    for name, rel in SINGLE_TABLES.items():
        if (base / rel).is_file():
            frames[name] = read_table_safe(base / rel, embeddings="repair")
    for domain in data.domains:
        if (base / domain / "items.pq").is_file():
            frames[f"items.{domain}"] = read_table_safe(base / domain / "items.pq", embeddings="repair")
    for name, rel in DAY_TABLES.items():
        if (base / rel).is_dir():
            frames[name] = load_day_tables(base, rel, data.model_copy(update={"embeddings": "repair"})).table
    return frames


def absent_tables(frames: dict[str, pd.DataFrame], data: DataConfig) -> list[str]:
    """Return the T-ECD tables the root does not hold (a partial root is normal: what is there is validated)."""
    expected = [*SINGLE_TABLES, *(f"items.{d}" for d in data.domains), *DAY_TABLES]
    return [t for t in expected if t not in frames]


def read_clean_tables(clean_root: str) -> dict[str, pd.DataFrame]:
    """Return the cleaned tables written by ``clean_tables`` (one parquet file per table)."""
    return {p.stem: io.read_table(p) for p in sorted(Path(clean_root).glob("*.parquet"))}


_REFERENCES = threading.Lock()


def fingerprint_catalogue(root: str, domains: tuple[str, ...]) -> str:
    """Return a fingerprint (names, sizes, mtimes) of the catalogue files the referential checks read."""
    base = Path(root)
    return io.fingerprint_files(sorted(f for f in [base / d / "items.pq" for d in domains] + [base / "brands.pq"]
                                       if f.is_file()))


def references_of(root: str, domains: tuple[str, ...]):
    """Return the raw catalogue's item ids and brand ids, for referential checks: built once per root and catalogue
    files (a long-lived Dask worker sees a changed catalogue), by one thread while the others wait for it."""
    with _REFERENCES:
        return build_references_of(root, domains, fingerprint_catalogue(root, domains))


@functools.lru_cache(maxsize=4)
def build_references_of(root: str, domains: tuple[str, ...], fingerprint: str):
    """Return the references of ``references_of`` (``fingerprint``: of the catalogue files, the cache key)."""
    from seqrec.quality.validate import build_references
    from seqrec.data.reader import read_table_safe

    base, frames = Path(root), {}
    for d in domains:
        if (base / d / "items.pq").is_file():
            frames[f"items.{d}"] = read_table_safe(base / d / "items.pq")
    if (base / "brands.pq").is_file():
        frames["brands"] = read_table_safe(base / "brands.pq")
    return build_references(frames)


def validate_tables(table_root: str, stage: str, quality: QualityConfig, cleaning: CleaningConfig, data: DataConfig,
                    out_dir: str, raw_root: str | None = None) -> dict[str, Any]:
    """Validate every non-event table (raw root, or cleaned tables); write the check summary.

    The suites check the cleaning policy's row keys and accept its sentinels (``SuiteParams``).
    """
    from seqrec.quality.validate import measure_missingness, measure_table, summarise_validations

    frames = read_raw_tables(table_root, data) if stage == "raw" else read_clean_tables(table_root)
    refs = references_of(raw_root or table_root, tuple(data.domains))
    params = SuiteParams.of(quality, cleaning)
    validations = [measure_table(df, table, stage, params, refs) for table, df in frames.items()]
    summary = summarise_validations(validations)
    out = Path(out_dir)
    io.write_table(summary, out / f"{stage}_tables.parquet")
    io.write_table(measure_missingness(frames, stage), out / f"{stage}_tables_missing.parquet")
    return {"stage": stage, "tables": sorted(frames), "absent": absent_tables(frames, data) if stage == "raw" else [],
            "checks": len(summary),
            "failed": int((~summary["success"].astype(bool)).sum()), "summary": str(out / f"{stage}_tables.parquet"),
            "failures": gate_failures(validations), "gx_results": keep_gx_results(validations, out)}


def keep_gx_results(validations: list, quality_dir: Path) -> list[str]:
    """Write each validation's GX result (with what ``publish_data_docs`` needs) under ``quality_dir/gx_results/<stage>``;
    return the files."""
    paths = []
    for v in validations:
        name = f"{v.table}.{v.partition}" if v.partition else v.table
        record = {"table": v.table, "stage": v.stage, "partition": v.partition, "rows": v.rows, "skipped": v.skipped,
                  "result": v.gx_result}
        paths.append(str(io.write_json(record, quality_dir / "gx_results" / v.stage / f"{name}.json")))
    return paths


def publish_data_docs(results: list[str], stage: str, quality: QualityConfig, cleaning: CleaningConfig, out_dir: str) -> str:
    """Return the offline GX Data Docs index of a stage, showing the GX results the passes kept (``results``: their
    files, tables and event days), or why none were built."""
    from seqrec.quality.datadocs import ASSETS, publish_data_docs as publish
    from seqrec.quality.validate import TableValidation

    if not quality.build_data_docs:
        return "not built: quality.build_data_docs is false"
    if not results:
        return f"not built: no {stage} table to validate"
    if not ASSETS.is_dir():
        logging.getLogger(__name__).warning("GX Data Docs skipped: %s missing (run `make datadocs-assets`)", ASSETS)
        return f"not built: {ASSETS} is missing (run `make datadocs-assets`)"
    kept = [io.read_json(p) for p in results]
    validations = [TableValidation(k["table"], k["stage"], k["partition"], k["rows"], [], k["skipped"], gx_result=k["result"])
                   for k in kept]
    return str(publish(validations, SuiteParams.of(quality, cleaning), Path(out_dir) / "datadocs" / stage))


def events_by_domain(path: str, categorical: tuple[str, ...] = ()) -> dict[str, pd.DataFrame]:
    """Return a canonical event day file split by domain, as ``events.<domain>`` tables (domains sorted, rows in file
    order; split in Arrow: a pandas group-by would gather every string column row by row); ``categorical`` columns
    present come as pandas categoricals."""
    table = pq.read_table(path, read_dictionary=[c for c in categorical if c in pq.read_schema(path).names])
    domain = table[C.DOMAIN]
    names = sorted(d for d in pc.unique(domain).to_pylist() if d is not None)
    return {f"events.{d}": table.filter(pc.equal(domain, d)).drop_columns([C.DOMAIN]).to_pandas() for d in names}


def validate_events_day(day: dict[str, Any], stage: str, quality: QualityConfig, cleaning: CleaningConfig, out_dir: str,
                        raw_root: str | None = None, domains: tuple[str, ...] = ("marketplace",)) -> dict[str, Any]:
    """Validate one event day partition per domain; write its check summary and missingness.

    A failed cleaned pass is returned (``failures``), not raised: ``check_cleaned_gate`` judges
    every day and table at once, so its error names them all.
    """
    from seqrec.quality.validate import measure_missingness, measure_table, summarise_validations

    frames = events_by_domain(day["path"], categorical=LOW_CARDINALITY)
    refs = references_of(raw_root, tuple(domains)) if raw_root else None
    name = f"{int(day['day']):05d}"
    params = SuiteParams.of(quality, cleaning)
    validations = [measure_table(df, t, stage, params, refs, partition=name) for t, df in frames.items()]
    summary = summarise_validations(validations)
    out = Path(out_dir) / stage
    io.write_table(summary, out / f"events_{name}.parquet")
    io.write_table(measure_missingness(frames, stage).assign(partition=name), out / f"events_{name}_missing.parquet")
    return {"day": day["day"], "stage": stage, "rows": int(sum(len(f) for f in frames.values())),
            "failed": int((~summary["success"].astype(bool)).sum()), "summary": str(out / f"events_{name}.parquet"),
            "failures": gate_failures(validations), "gx_results": keep_gx_results(validations, Path(out_dir))}


def gate_failures(validations: list) -> list[str]:
    """Return one line per failed check of a cleaned pass (the raw pass's failures are findings, not gates)."""
    return [c.describe() for v in validations if v.stage == "cleaned" for c in v.failures()]


def check_cleaned_gate(results: list[dict[str, Any]], quality: QualityConfig) -> list[str]:
    """Return the cleaned pass's failures over every day and table; in "fail" mode raise naming all of them."""
    from seqrec.quality.validate import QualityGateError

    failures = [line for r in results for line in r.get("failures", [])]
    if failures and quality.on_cleaned_failure == "fail":
        raise QualityGateError(f"cleaned data failed {len(failures)} check(s):\n  " + "\n  ".join(failures), [])
    for line in failures:
        logging.getLogger(__name__).warning("cleaned pass (quality.on_cleaned_failure=warn): %s", line)
    return failures


def clean_events_day(day: dict[str, Any], cleaning: CleaningConfig, out_dir: str) -> dict[str, Any]:
    """Clean one event day partition; write cleaned rows, quarantined rows and the step counts."""
    from seqrec.quality.cleaning import clean_table

    frames = events_by_domain(day["path"])
    name = f"{int(day['day']):05d}"
    results = [clean_table(df, t, cleaning, source_file=Path(day["path"]).name) for t, df in frames.items()]
    clean = pd.concat([r.clean.assign(**{C.DOMAIN: r.table.split(".")[1]}) for r in results], ignore_index=True)
    clean = clean.sort_values([C.TIMESTAMP, C.USER], kind="stable")[pq.read_schema(day["path"]).names]
    out = Path(out_dir)
    path = io.write_table(clean, out / "events" / f"{name}.parquet")
    quarantine = pd.concat([r.quarantine.assign(table=r.table) for r in results], ignore_index=True)
    io.write_table(quarantine.astype({c: str for c in quarantine.columns if quarantine[c].dtype == object}),
                   out / "quarantine" / f"events_{name}.parquet")
    steps = [dataclasses.asdict(s) for r in results for s in r.steps]
    rows_in = sum(len(f) for f in frames.values())
    assert rows_in == len(clean) + len(quarantine), f"day {name}: {rows_in} rows in != {len(clean)} kept + {len(quarantine)} quarantined"
    return {"day": day["day"], "path": str(path), "rows_in": rows_in, "rows_kept": len(clean),
            "rows_quarantined": len(quarantine), "steps": steps,
            "fingerprint": io.fingerprint_obj([day["fingerprint"], config_to_dict(cleaning)])}


def clean_tables(root: str, cleaning: CleaningConfig, data: DataConfig, out_dir: str) -> dict[str, Any]:
    """Clean every non-event table of a raw root; write cleaned tables and quarantine; return counts."""
    from seqrec.quality.cleaning import clean_table, write_quarantine

    out, steps, counts = Path(out_dir), [], {}
    for table, df in read_raw_tables(root, data).items():
        result = clean_table(df, table, cleaning)
        io.write_table(result.clean, out / "tables" / f"{table}.parquet")
        write_quarantine(result, out / "quarantine")
        steps += [dataclasses.asdict(s) for s in result.steps]
        counts[table] = {"rows_in": len(df), "rows_kept": len(result.clean), "rows_quarantined": len(result.quarantine)}
    return {"clean_root": str(out / "tables"), "steps": steps, "counts": counts}


def collect_summaries(quality_dir: str, stage: str) -> pd.DataFrame:
    """Return every check summary of a stage written under the quality directory."""
    base = Path(quality_dir)
    files = [base / f"{stage}_tables.parquet", *sorted((base / stage).glob("events_?????.parquet"))]
    frames = [io.read_table(f) for f in files if f.is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def collect_missingness(quality_dir: str) -> pd.DataFrame:
    """Return missing-value counts per (table, column, stage), summed over day partitions."""
    base = Path(quality_dir)
    files = sorted(base.glob("*_tables_missing.parquet")) + sorted(base.glob("*/events_*_missing.parquet"))
    frame = pd.concat([io.read_table(f) for f in files], ignore_index=True)
    grouped = frame.groupby(["table", "stage", "column"], as_index=False)[["rows", "missing"]].sum()
    return grouped.assign(rate=grouped["missing"] / grouped["rows"].where(grouped["rows"] > 0))


def write_quality_report(quality_dir: str, cleaned: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Write the offline HTML and markdown data-quality reports from both passes and the cleaning steps."""
    from seqrec.quality.cleaning import CleanStep
    from seqrec.quality.report import render_quality_markdown, render_quality_report

    raw, clean = collect_summaries(quality_dir, "raw"), collect_summaries(quality_dir, "cleaned")
    step_dicts = [s for d in cleaned["days"] for s in d["steps"]] + cleaned["tables"]["steps"]
    steps = [CleanStep(**s) for s in step_dicts]
    page = io.write_text(render_quality_report(raw, clean, steps, collect_missingness(quality_dir)), Path(out_dir) / "quality.html")
    md = render_quality_markdown(raw, clean, steps)
    io.write_text(md, Path(out_dir) / "quality.md")
    failed = lambda s: int((~s["success"].astype(bool)).sum()) if len(s) else 0  # noqa: E731
    return {"html": str(page), "markdown": md, "raw_failed": failed(raw), "cleaned_failed": failed(clean)}


def validate_root(root: str, stage: str, cfg, out_dir: str) -> dict[str, Any]:
    """Validate a whole T-ECD root outside the pipeline: tables and every event day partition."""
    ingested = ingest_events(root, cfg.data, str(Path(out_dir) / "_ingest"))
    days = [validate_events_day(d, stage, cfg.quality, cfg.cleaning, out_dir, root, tuple(cfg.data.domains)) for d in ingested["days"]]
    tables = validate_tables(root, stage, cfg.quality, cfg.cleaning, cfg.data, out_dir)
    docs = publish_data_docs(stage_results(days, tables), stage, cfg.quality, cfg.cleaning, out_dir)
    return {"tables": tables, "days": days, "failed": tables["failed"] + sum(d["failed"] for d in days),
            "partitions": ingested["partitions"], "data_docs": docs}


def stage_results(days: list[dict[str, Any]], *tables: dict[str, Any]) -> list[str]:
    """Return the GX result files the day and table passes of one stage kept (tables first)."""
    return [p for t in tables for p in t["gx_results"]] + [p for d in days for p in d["gx_results"]]


def clean_root(root: str, cfg, out_dir: str) -> dict[str, Any]:
    """Clean a whole T-ECD root outside the pipeline; write cleaned data, quarantine and the DQ report."""
    ingested = ingest_events(root, cfg.data, str(Path(out_dir) / "_ingest"))
    qdir = str(Path(out_dir) / "quality")
    raw = [validate_events_day(d, "raw", cfg.quality, cfg.cleaning, qdir, root, tuple(cfg.data.domains)) for d in ingested["days"]]
    raw_docs = publish_data_docs(stage_results(raw, validate_tables(root, "raw", cfg.quality, cfg.cleaning, cfg.data, qdir)),
                                 "raw", cfg.quality, cfg.cleaning, qdir)
    cleaned = {"days": [clean_events_day(d, cfg.cleaning, out_dir) for d in ingested["days"]],
               "tables": clean_tables(root, cfg.cleaning, cfg.data, out_dir)}
    gates = [validate_events_day(d, "cleaned", cfg.quality, cfg.cleaning, qdir, root, tuple(cfg.data.domains))
             for d in cleaned["days"]]
    gates.append(validate_tables(cleaned["tables"]["clean_root"], "cleaned", cfg.quality, cfg.cleaning, cfg.data, qdir, root))
    report = write_quality_report(qdir, cleaned, out_dir)
    docs = {"raw": raw_docs, "cleaned": publish_data_docs(stage_results(gates), "cleaned", cfg.quality, cfg.cleaning, qdir)}
    check_cleaned_gate(gates, cfg.quality)  # after the report and the Data Docs: they show what failed
    return {"days": [{k: d[k] for k in ("day", "rows_in", "rows_kept", "rows_quarantined")} for d in cleaned["days"]],
            "tables": cleaned["tables"]["counts"], "report": report["html"], "raw_failed": report["raw_failed"],
            "cleaned_failed": report["cleaned_failed"], "data_docs": docs}


def accounting_rows(cleaned: dict[str, Any]) -> list[dict[str, Any]]:
    """Return one row per cleaned day and table: rows in, kept and quarantined (in = kept + quarantined)."""
    rows = [{k: d[k] for k in ("day", "rows_in", "rows_kept", "rows_quarantined")} for d in cleaned["days"]]
    return rows + [{"table": t, **c} for t, c in cleaned["tables"]["counts"].items()]
