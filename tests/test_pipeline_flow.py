"""End-to-end: the whole Prefect pipeline on small generated data, and the CLI around it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seqrec.config import load_config

pytestmark = pytest.mark.slow


def tiny_config(tmp_path: Path, **extra):
    """Return a config for a fast end-to-end run under ``tmp_path``."""
    overrides = [
        "generator.events=15000", "generator.days=4", "generator.workers=1", "generator.domains=[marketplace, retail]",
        "features.embeddings.epochs=1", "features.embeddings.batch_size=512",
        "models.names=[popularity, markov, gru4rec]", "models.gru4rec.epochs=2", "models.gru4rec.n_sample=256",
        "training.progress=false", "training.threads=1", f"output.root={tmp_path}", "output.run_name=e2e",
    ]
    return load_config(overrides=overrides + [f"{k}={v}" for k, v in extra.items()])


def test_pipeline_runs_end_to_end_and_writes_reports(tmp_path, prefect_harness):
    from flows.pipeline import pipeline_flow

    cfg = tiny_config(tmp_path)
    result = pipeline_flow(config=cfg)
    run_dir = tmp_path / "e2e"
    assert set(result["metrics"]) == {"popularity", "markov", "gru4rec"}
    for metrics in result["metrics"].values():
        assert 0.0 <= metrics["mrr@20"] <= metrics["recall@20"] <= 1.0
    # Markov and GRU4Rec use the sequence; on generated data they must beat popularity.
    assert result["metrics"]["markov"]["recall@20"] > result["metrics"]["popularity"]["recall@20"]
    assert result["metrics"]["gru4rec"]["recall@20"] > result["metrics"]["popularity"]["recall@20"]
    report = (run_dir / "reports" / "models.md").read_text()
    assert "Protocol:" in report and "gru4rec" in report and "conservative" in report
    quality = (run_dir / "reports" / "quality.html").read_text()
    assert "FAIL" in quality  # the generated defects are raw findings
    assert (run_dir / "features" / "embeddings" / "item_embeddings.npz").is_file()
    assert list((run_dir / "clean" / "quarantine").glob("*.parquet"))
    from seqrec.quality.datadocs import ASSETS

    if ASSETS.is_dir():  # GX Data Docs, localised for offline reading (assets from `make datadocs-assets`)
        for stage in ("raw", "cleaned"):
            index = Path(result["reports"][f"data_docs_{stage}"])
            assert index.name == "index.html" and index.is_file()
            assert "cdn.jsdelivr.net" not in index.read_text()
            days = sorted(p.stem for p in index.parent.glob(f"validations/events/*/{stage}/{stage}/*/*.html"))
            summaries = sorted(p.stem.split("_")[1] for p in (run_dir / "quality" / stage).glob("events_?????.parquet"))
            assert days == summaries and len(days) == 4  # a page per event day validated
            runs = sorted((run_dir / "quality" / "datadocs" / stage / "checkpoint_results").glob("*.json"))
            checkpoint = json.loads(runs[-1].read_text())  # the stage's Checkpoint result, made of the passes' results
            assert checkpoint["checkpoint"] == f"seqrec-{stage}"
            assert sorted({v["partition"] for v in checkpoint["validations"]} - {"whole"}) == days
            assert checkpoint["success"] is (stage == "cleaned")  # raw findings fail it; the cleaned gate passed


def test_cli_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "seqrec.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("generate", "run", "load", "import", "validate", "clean", "features", "train", "evaluate", "recommend"):
        assert command in out


def test_cli_rejects_unknown_config_key_before_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "seqrec.cli", "generate", "--out", str(tmp_path / "d"),
                           "--set", "generator.evnts=10"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "generator.evnts" in proc.stderr
    assert not (tmp_path / "d").exists()


def test_cli_train_and_evaluate_on_gru4rec_tsv(tmp_path):
    rows = ["SessionId\tItemId\tTime"]
    t = 1_000_000
    for s in range(60):  # deterministic cycles a -> b -> c: Markov learns them exactly
        for i, item in enumerate(["a", "b", "c", "d"][: 2 + s % 3]):
            rows.append(f"{s}\t{item}\t{t + s * 3600 + i}")
    train, test = tmp_path / "train.tsv", tmp_path / "test.tsv"
    train.write_text("\n".join(rows[:150]) + "\n")
    test.write_text("\n".join([rows[0]] + rows[150:]) + "\n")
    cmd = [sys.executable, "-m", "seqrec.cli"]
    out = tmp_path / "m"
    subprocess.run(cmd + ["train", "markov", "--train", str(train), "--test", str(test), "--out", str(out), "--json"],
                   check=True, capture_output=True, text=True)
    proc = subprocess.run(cmd + ["evaluate", str(out / "markov.pt"), "--json"], check=True, capture_output=True, text=True)
    result = json.loads(proc.stdout)
    assert result["metrics"]["recall@1"] == pytest.approx(1.0)
    assert result["protocol"]["ties"] == "conservative"
