"""Two nights of the nightly retrain flow: night 1 on ``--days`` days, night 2 after one more day arrives; one JSON line.

    .venv/bin/python benchmarks/bench_nights.py --events 1000000 --days 14 --out outputs/bench/nights

Generates ``--days`` + 1 days of marketplace events (``--events`` over all of them), copies the first ``--days``
into a warehouse folder and runs ``retrain_flow`` (Prefect, a temporary local API) with GRU4Rec
(``training.init_from: registry``): night 1 trains from scratch. The last day is then copied in and night 2 runs:
per-day ingest, validation and cleaning for the new day only, sessions and features rebuilt, GRU4Rec fine-tuned
from version 1 for ``training.finetune_epochs``. The in-process baseline: a full retrain from scratch on the same
days as night 2 (``init_from: scratch``, same epochs as night 1), timed and evaluated on the same validation
targets. Printed: wall seconds of each night, the speed-up of night 2 over night 1, both models' validation
metric and the registry's promotion decision.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def parse_args() -> argparse.Namespace:
    """Return the command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=14, help="days of night 1 (night 2 adds one)")
    p.add_argument("--epochs", type=int, default=2, help="GRU4Rec epochs from scratch")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/nights"))
    return p.parse_args()


def copy_days(src: Path, dest: Path, last_day: int) -> None:
    """Copy the catalogue tables and every day partition up to ``last_day`` (mtimes kept: fingerprints see arrivals)."""
    for f in sorted(src.rglob("*.pq")):
        if f.parent.name == "_generator" or (f.stem.isdigit() and int(f.stem) > last_day):
            continue
        target = dest / f.relative_to(src)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)


def night(config) -> tuple[float, dict]:
    """Return (wall seconds, result) of one retrain flow run."""
    from flows.retrain import retrain_flow

    start = time.perf_counter()
    result = retrain_flow(config=config)
    return time.perf_counter() - start, result


def main() -> None:
    """Generate, run two nights and a full retrain, print one JSON line."""
    from prefect.testing.utilities import prefect_test_harness

    from seqrec.config import GeneratorConfig, build_config
    from seqrec.serving import registry as R
    from seqrec.synthetic.generate import generate_tecd

    args = parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    full, warehouse = args.out / "generated", args.out / "warehouse"
    gen = GeneratorConfig(events=args.events, days=args.days + 1, domains=("marketplace",))
    generate_tecd(full, gen)
    first = gen.first_day
    copy_days(full, warehouse, first + args.days - 1)
    base = {"data": {"root": str(warehouse)}, "output": {"root": str(args.out / "out"), "run_name": "nightly"},
            "features": {"build_graph": False}, "models": {"names": ["gru4rec"], "gru4rec": {"epochs": args.epochs}},
            "training": {"progress": False, "patience": 0, "init_from": "registry", "finetune_epochs": 1}}
    reg = args.out / "out" / "registry"
    with prefect_test_harness(server_startup_timeout=180):
        night1_s, first_result = night(build_config(base))
        copy_days(full, warehouse, first + args.days)
        night2_s, second = night(build_config(base))
        scratch = build_config(base, {"training": {"init_from": "scratch"}, "output": {"run_name": "full-retrain"},
                                      "registry": {"max_p": 1e-9}})  # registered for the record, never promoted
        full_s, third = night(scratch)
    v2, v3 = R.read_version(reg, second["version"]), R.read_version(reg, third["version"])
    metric = "recall@20"
    print(json.dumps({"events": args.events, "days_night1": args.days, "days_night2": args.days + 1,
                      "night1_s": round(night1_s, 1), "night2_s": round(night2_s, 1),
                      "night2_vs_night1": round(night1_s / night2_s, 2), "full_retrain_s": round(full_s, 1),
                      "finetuned": {"version": v2.name, "training": v2.meta["training"], f"valid_{metric}": v2.meta["metrics"][metric],
                                    "promotion": v2.meta.get("promotion")},
                      "full_retrain": {"version": v3.name, "training": v3.meta["training"],
                                       f"valid_{metric}": v3.meta["metrics"][metric]},
                      "night1_version": first_result["version"]}, default=str), flush=True)


if __name__ == "__main__":
    main()
