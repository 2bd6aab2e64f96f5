"""Compare session-based recommenders (baselines vs GRU4Rec / SASRec) on T-ECD data.

    # generated T-ECD root (split by time like the pipeline: test = last day, valid = the day before)
    .venv/bin/python benchmarks/compare_models.py --tecd-root outputs/demo/data --work-dir /tmp/cmp_gen \\
        --models popularity,spop,markov,itemknn,sknn,bprmf,gru4rec,sasrec --set training.threads=1

    # real marketplace partitions: day 1272 trains (its last 0.15 day validates), day 1302 tests
    .venv/bin/python benchmarks/compare_models.py --link-events ../shared/data/tecd_marketplace/events \\
        --test-from-day 1302 --valid-days 0.15 --work-dir /tmp/cmp_mp --models markov,gru4rec

    # pre-split canonical files (parquet with session_id/item_id/timestamp, or GRU4Rec TSVs)
    .venv/bin/python benchmarks/compare_models.py --train train.tsv --test test.tsv --work-dir /tmp/cmp_rsc

Data preparation follows the pipeline: seqrec.data.reader.load_events -> per-domain cleaning
(seqrec.quality.cleaning.clean_table, unless --no-clean) -> seqrec.features.sessions.sessionize_partitions
(30-minute gap from the config) -> seqrec.evaluation.splits.split_by_time (or split_presplit with
--test-from-day / --train+--test) -> seqrec.pipeline.models.save_split. The split is cached in
<work-dir>/split and reused when its inputs are the same.

Modes:
  * default ("test"): every model goes through seqrec.pipeline.models.train_model (neural models pick
    their epoch count by early stopping on ``valid``, then retrain on ``train_full``) and
    seqrec.pipeline.models.evaluate_trained_model on ``test``.
  * ``--mode valid`` (tuning): models are fit on ``train`` only (early stopping on ``valid``, the
    best epoch's weights kept) and evaluated on ``valid``; the test part is never read. Use it
    for model selection; then run the chosen config in test mode.

Prints a markdown table and one JSON line (prefixed by nothing; the last line of stdout).
Per-model overrides: ``--set models.gru4rec.hidden=224`` etc. (same syntax as the CLI).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from seqrec import columns as C  # noqa: E402
from seqrec import io  # noqa: E402
from seqrec.data.ingest import day_of  # noqa: E402
from seqrec.models.factory import model_section  # noqa: E402
from seqrec.pipeline import models as stages  # noqa: E402
from seqrec.config import config_to_dict, load_config  # noqa: E402

BASELINES = ["popularity", "spop", "markov", "itemknn", "sknn", "bprmf"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("data (one of)")
    src.add_argument("--tecd-root", type=Path, help="a T-ECD root (e.g. outputs/demo/data)")
    src.add_argument("--link-events", type=Path,
                     help="a folder of T-ECD event day files (NNNNN.pq): symlinked into <work-dir>/tecd/<domain>/events")
    src.add_argument("--train", type=Path, help="pre-split training events (canonical parquet or GRU4Rec TSV)")
    src.add_argument("--test", type=Path, help="pre-split test events")
    p.add_argument("--domain", default="marketplace", help="domain for --link-events (default marketplace)")
    p.add_argument("--test-from-day", type=int,
                   help="T-ECD root: sessions starting on or after this day are test, the rest train (split_presplit)")
    p.add_argument("--test-days", type=float, help="split_by_time: test = sessions ending in the last N days "
                   "(default evaluation.test_days)")
    p.add_argument("--valid-days", type=float, help="validation = sessions ending in the last N days of train "
                   "(default evaluation.valid_days)")
    p.add_argument("--no-clean", action="store_true", help="skip the per-domain event cleaning step")
    p.add_argument("--work-dir", type=Path, required=True, help="split, models and results go here")
    p.add_argument("--models", default=",".join(BASELINES + ["gru4rec", "sasrec"]), help="comma-separated model names")
    p.add_argument("--mode", choices=["test", "valid"], default="test",
                   help="test: train_full -> test (final); valid: train -> valid (tuning, never reads test)")
    p.add_argument("--tag", default="", help="suffix of the model directory, to keep several configs apart")
    p.add_argument("--config", type=Path, help="YAML config (e.g. configs/tuned_generated.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--results", type=Path, help="append every result as a JSON line to this file")
    p.add_argument("--summarize", type=Path, help="only print the table of a --results file for --work-dir and "
                   "--mode (last row per model and tag) and exit")
    return p.parse_args(argv)


def summarize(path: Path, work_dir: Path, mode: str) -> int:
    """Print the table of every result recorded for ``work_dir`` / ``mode`` (latest per model and tag)."""
    latest: dict[tuple, dict] = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if Path(row["work_dir"]) == Path(work_dir) and row["mode"] == mode:
            latest[(row["model"], row.get("tag", ""))] = row
    rows = list(latest.values())
    for r in rows:
        r["model"] = r["label"] = r.get("label", r["model"]) + (f" [{r['tag']}]" if r.get("tag") else "")
    base = [r for r in rows if r["model"] in BASELINES]
    best = {k: (max(base, key=lambda r: r[k])["model"], max(r[k] for r in base)) for k in ("recall@20", "mrr@20")} if base else {}
    print(f"## {mode} part: {work_dir}\n")
    print(markdown(rows, best))
    print(json.dumps({"mode": mode, "work_dir": str(work_dir), "rows": rows, "best_baseline": best}, default=str, sort_keys=True))
    return 0


# --------------------------------------------------------------------------- data
def link_events(src: Path, work: Path, domain: str) -> Path:
    """Return a T-ECD-shaped root whose <domain>/events/ holds symlinks to the day files of ``src``."""
    root = work / "tecd"
    events = root / domain / "events"
    events.mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(src).glob("*.pq")):
        link = events / f.name
        if not link.exists():
            os.symlink(f.resolve(), link)
    return root


def clean_events(events: pd.DataFrame, cfg) -> tuple[pd.DataFrame, dict]:
    """Clean the canonical events per domain as the pipeline's clean stage does; return them and counts."""
    from seqrec.quality.cleaning import clean_table

    frames, counts = [], {}
    for domain, part in events.groupby(C.DOMAIN, sort=True):
        res = clean_table(part.drop(columns=[C.DOMAIN]), f"events.{domain}", cfg.cleaning)
        frames.append(res.clean.assign(**{C.DOMAIN: domain}))
        counts[domain] = {"rows_in": len(part), "rows_kept": len(res.clean), "quarantined": len(res.quarantine)}
    out = pd.concat(frames, ignore_index=True).sort_values([C.TIMESTAMP, C.USER], kind="stable")
    return out[list(events.columns)].reset_index(drop=True), counts


def sessionize_days(events: pd.DataFrame, cfg) -> tuple[pd.DataFrame, dict]:
    """Sessionize the events day partition by day partition (stitched across midnight), like the pipeline."""
    from seqrec.features.sessions import sessionize_partitions

    days = day_of(events[C.TIMESTAMP])
    parts = [events[days == d].reset_index(drop=True) for d in np.unique(days)]
    result = sessionize_partitions(parts, cfg.features.sessions)
    return result.events, result.report


def build_split(args: argparse.Namespace, cfg):
    """Return (Split, preparation report) from the data options."""
    from seqrec.evaluation.splits import split_by_time, split_presplit

    ev = cfg.evaluation
    valid_days = args.valid_days if args.valid_days is not None else ev.valid_days
    if args.train is not None:
        from seqrec.cli import read_events_arg

        if args.test is None:
            raise SystemExit("--train needs --test (pre-split files)")
        train, test = read_events_arg(args.train, "auto"), read_events_arg(args.test, "auto")
        return split_presplit(train, test, valid_days), {"source": "files", "train": str(args.train), "test": str(args.test)}
    root = args.tecd_root or link_events(args.link_events, args.work_dir, args.domain)
    from seqrec.data.reader import load_events

    data_cfg = cfg.data.model_copy(update={"domains": (args.domain,)}) if args.link_events else cfg.data
    loaded = load_events(Path(root), data_cfg)
    events, prep = loaded.events, {"source": str(root), "raw_events": len(loaded.events),
                                   "days": sorted({int(p["day"]) for p in loaded.partitions})}
    if not args.no_clean:
        events, prep["cleaning"] = clean_events(events, cfg)
    sessions, prep["sessionize"] = sessionize_days(events, cfg)
    if args.test_from_day is not None:
        start = sessions.groupby(C.SESSION)[C.TIMESTAMP].transform("min").to_numpy()
        is_test = start // C.MICROS_PER_DAY >= args.test_from_day
        split = split_presplit(sessions[~is_test], sessions[is_test], valid_days)
    else:
        split = split_by_time(sessions, args.test_days if args.test_days is not None else ev.test_days, valid_days)
    return split, prep


def prepare_split(args: argparse.Namespace, cfg) -> tuple[str, dict]:
    """Return the split directory (cached under the work dir when the inputs match) and its report."""
    key = {"tecd_root": str(args.tecd_root), "link_events": str(args.link_events), "train": str(args.train),
           "test": str(args.test), "test_from_day": args.test_from_day, "test_days": args.test_days,
           "valid_days": args.valid_days, "no_clean": args.no_clean, "domain": args.domain,
           "data": config_to_dict(cfg.data), "sessions": config_to_dict(cfg.features.sessions),
           "evaluation": config_to_dict(cfg.evaluation)}
    split_dir = args.work_dir / "split"
    stamp = split_dir / "inputs.json"
    if stamp.is_file() and io.read_json(stamp) == key and (split_dir / "report.json").is_file():
        return str(split_dir), io.read_json(split_dir / "prepare.json")
    split, prep = build_split(args, cfg)
    saved = stages.save_split(split, str(split_dir))
    prep = {**prep, "split": saved["report"]}
    io.write_json(prep, split_dir / "prepare.json")
    io.write_json(key, stamp)
    return str(split_dir), prep


def session_stats(split_dir: str) -> dict:
    """Return session-length facts of train_full (how much sequence signal there is)."""
    full = io.load_sessions(Path(split_dir) / "train_full.npz")
    lengths = np.diff(np.asarray(full.offsets))
    return {"train_full_sessions": int(len(lengths)), "mean_len": round(float(lengths.mean()), 2),
            "share_len1": round(float((lengths == 1).mean()), 3), "median_len": float(np.median(lengths))}


# --------------------------------------------------------------------------- models
def train_on_train(name: str, split_dir: str, cfg, out: Path) -> dict:
    """Tuning mode: fit on ``train`` (early stopping on ``valid`` for neural models) and save."""
    from seqrec.evaluation.metrics import make_validator
    from seqrec.models.factory import NEURAL_MODELS, build_model, model_section
    from seqrec.serving.recommend import save_model

    train = io.load_sessions(Path(split_dir) / "train.npz")
    valid = io.load_sessions(Path(split_dir) / "valid.npz")
    start = time.perf_counter()
    model = build_model(name, model_section(cfg.models, name), cfg.training)
    model.fit(train, make_validator(model, valid, cfg.evaluation, cfg.training.valid_metric) if name in NEURAL_MODELS else None)
    seconds = time.perf_counter() - start
    path = save_model(model, out / f"{name}.pt")
    hist = stages.history_of(model)
    return {"path": str(path), "train_seconds": round(seconds, 2), "history": hist,
            "selection": {"best_epoch": int(hist["best_epoch"]) + 1} if "best_epoch" in hist else {}}


def run_model(name: str, split_dir: str, cfg, mode: str, out: Path) -> tuple[dict, dict]:
    """Train and evaluate one model; return the full evaluation result (for the report) and a flat result row."""
    if mode == "test":
        trained = stages.train_model(name, split_dir, model_section(cfg.models, name), cfg.training, cfg.evaluation, str(out))
    else:
        trained = train_on_train(name, split_dir, cfg, out)
    part = "test" if mode == "test" else "valid"
    res = stages.evaluate_trained_model(trained["path"], split_dir, cfg.evaluation, part=part, keep_ranks=True)
    m = res["metrics"]
    hist = trained.get("history") or {}
    epochs = len(hist.get("loss", [])) if isinstance(hist, dict) else None
    sel = trained.get("selection") or {}
    model_cfg = config_to_dict(getattr(cfg.models, name)) if hasattr(cfg.models, name) else {}
    res = {**res, "train_seconds": trained["train_seconds"], "history": hist, "selection": sel}
    return res, {"model": name, "label": res.get("label", name), "part": part, "recall@20": round(m["recall@20"], 4), "mrr@20": round(m["mrr@20"], 4),
            "ndcg@20": round(m.get("ndcg@20", float("nan")), 4), "targets": res["n_targets"],
            "train_s": trained["train_seconds"], "eval_s": res["eval_seconds"], "epochs_run": epochs,
            "best_epoch": sel.get("best_epoch"), "valid_metric": sel.get("valid_metric"), "config": model_cfg,
            "valid_curve": [round(v, 4) for v in hist.get("valid_metric", [])] if isinstance(hist, dict) else None}


def markdown(rows: list[dict], baseline_best: dict) -> str:
    """Return the results table (best baseline per metric marked) and the verdict lines."""
    lines = ["| model | Recall@20 | MRR@20 | targets | train s | epochs (best) |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["recall@20"]):
        ep = "" if r["best_epoch"] is None and not r["epochs_run"] else f"{r['epochs_run']} ({r['best_epoch']})"
        lines.append(f"| {r.get('label', r['model'])} | {r['recall@20']:.4f} | {r['mrr@20']:.4f} | {r['targets']} | {r['train_s']} | {ep} |")
    if baseline_best:
        lines.append("")
        lines.append(f"Best baseline: Recall@20 {baseline_best['recall@20'][1]:.4f} ({baseline_best['recall@20'][0]}), "
                     f"MRR@20 {baseline_best['mrr@20'][1]:.4f} ({baseline_best['mrr@20'][0]})")
        for r in rows:
            if r["model"].split(" ")[0] in ("gru4rec", "sasrec"):
                ok = {k: r[k] > baseline_best[k][1] for k in ("recall@20", "mrr@20")}
                lines.append(f"- {r.get('label', r['model'])}: beats best baseline on Recall@20: {'yes' if ok['recall@20'] else 'NO'}, "
                             f"on MRR@20: {'yes' if ok['mrr@20'] else 'NO'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summarize:
        return summarize(args.summarize, args.work_dir, args.mode)
    if sum(x is not None for x in (args.tecd_root, args.link_events, args.train)) != 1:
        raise SystemExit("give exactly one of --tecd-root, --link-events, --train/--test")
    cfg = load_config(args.config, args.set)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    split_dir, prep = prepare_split(args, cfg)
    print(f"split ready in {time.perf_counter() - t0:.1f}s: {split_dir}", file=sys.stderr, flush=True)
    out = args.work_dir / f"models_{args.mode}{('_' + args.tag) if args.tag else ''}"
    rows, results = [], []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        t = time.perf_counter()
        result, row = run_model(name, split_dir, cfg, args.mode, out)
        results.append(result)
        row["tag"] = args.tag
        rows.append(row)
        print(f"{row['label']}: R@20 {row['recall@20']:.4f} MRR@20 {row['mrr@20']:.4f} ({time.perf_counter() - t:.0f}s)",
              file=sys.stderr, flush=True)
        if args.results:
            with open(args.results, "a") as fh:
                fh.write(json.dumps({**row, "mode": args.mode, "work_dir": str(args.work_dir), "sets": args.set,
                                     "config_file": str(args.config) if args.config else None}) + "\n")
    base = [r for r in rows if r["model"] in BASELINES]
    best = {k: (max(base, key=lambda r: r[k])["model"], max(r[k] for r in base)) for k in ("recall@20", "mrr@20")} if base else {}
    split_report = {**prep.get("split", {}), "train_full_lengths": session_stats(split_dir)}
    print(f"## {args.mode} part: {split_dir}\n")
    print(f"split: {json.dumps({k: split_report.get(k) for k in ('train', 'valid', 'train_full', 'test', 'train_full_lengths')})}\n")
    print(markdown(rows, best))
    report = stages.write_model_report(results, str(out / "reports"), title=f"Model comparison ({args.mode} part)")
    print(f"report: {report['html']} and {report['markdown']}", file=sys.stderr)
    summary = {"mode": args.mode, "split_dir": split_dir, "prepare": {k: v for k, v in prep.items() if k != "split"},
               "split": split_report, "rows": rows, "best_baseline": best, "sets": args.set,
               "config_file": str(args.config) if args.config else None}
    print(json.dumps(summary, default=str, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
