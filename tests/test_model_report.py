"""The model report people read: every analysis section, from a tiny split trained and evaluated by the pipeline's stages."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from seqrec.config import EvaluationConfig, TrainingConfig
from seqrec.data.importers import import_gru4rec_tsv
from seqrec.evaluation.splits import split_by_time
from seqrec.pipeline.models import evaluate_trained, save_split, train_model, write_model_report

CHROMIUM = Path("/usr/bin/chromium")
DAY = 86_400


def cycle_tsv(path: Path, sessions: int = 240, n_items: int = 12, seed: int = 0) -> Path:
    """Write sessions walking the cycle 1 -> 2 -> ... -> n_items over three days, as a GRU4Rec TSV."""
    rng = np.random.default_rng(seed)
    lines = ["SessionId\tItemId\tTime"]
    for s, start in enumerate(np.sort(rng.integers(0, 3 * DAY - 3600, sessions))):
        first = int(rng.integers(0, n_items))
        lines += [f"{s}\t{(first + i) % n_items + 1}\t{start + 60 * i}" for i in range(int(rng.integers(3, 7)))]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """Train popularity and markov on the split, evaluate both on test, write the report; return its paths."""
    tmp = tmp_path_factory.mktemp("report")
    events = import_gru4rec_tsv(cycle_tsv(tmp / "cycles.tsv"), time_unit="s")
    split = save_split(split_by_time(events, test_days=1, valid_days=1), str(tmp / "split"))
    cfg, training = EvaluationConfig(), TrainingConfig(device="cpu", progress=False)
    results = [evaluate_trained(train_model(name, split["split_dir"], None, training, cfg, str(tmp / "models")),
                                split["split_dir"], cfg) for name in ("popularity", "markov")]
    return write_model_report(results, str(tmp / "reports"), embeddings=fake_embeddings(tmp / "emb"))


def fake_embeddings(out: Path) -> dict:
    """Write what the embeddings stage leaves for the report: neighbours of 3 items and a map PNG."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from seqrec import io

    rows = [(item, rank, f"n{item}{rank}", sim - rank / 100) for item, sim in (("a", 0.9), ("b", 0.99), ("c", 0.95))
            for rank in (1, 2)]
    io.write_table(pd.DataFrame(rows, columns=["item_id", "rank", "neighbour", "similarity"]), out / "nearest_neighbours.parquet")
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(out / "embedding_map.png")
    plt.close(fig)
    return {"path": str(out / "item_embeddings.npz"), "map": str(out / "embedding_map.png")}


def test_the_report_holds_every_analysis_with_its_definition(report):
    md = Path(report["markdown"]).read_text()
    for heading in ("Recall@20 and MRR@20 with 95% bootstrap intervals", "Against the best baseline", "Classification view",
                    "Beyond accuracy at K=20", "Recall@20 by prefix length", "Recall@20 by popularity", "Recall@20 by target"):
        assert f"## {heading}" in md, heading
    assert "macro precision and macro recall average" in md and "Gini of the recommendation counts" in md
    results = json.loads(Path(report["json"]).read_text())
    markov = next(r for r in results if r["model"] == "markov")
    assert markov["classification"]["accuracy"] > 0.9  # the cycle's next item is always the successor
    assert markov["beyond"]["coverage"] == 1.0  # every item is some item's successor


def test_the_embedding_neighbours_closest_first(report):
    md = Path(report["markdown"]).read_text()
    section = md.split("## Item embeddings: nearest neighbours")[1]
    assert section.index("| b | nb1 (0.980)") < section.index("| c |") < section.index("| a |")  # b's neighbour is closest
    assert "embedding map" in Path(report["html"]).read_text()


def test_the_paired_test_finds_the_real_gap_and_not_the_tie(report):
    lines = Path(report["markdown"]).read_text().splitlines()
    mrr = [line for line in lines if line.startswith("| markov | popularity | mrr@20")]
    assert len(mrr) == 1 and mrr[0].rstrip(" |").endswith("yes"), mrr  # the successor ranks first: a real gap
    recall = [line for line in lines if line.startswith("| markov | popularity | recall@20")]
    assert recall == ["| markov | popularity | recall@20 | 0.0000 | [+0.0000, +0.0000] | 1.0000 | no |"]  # 12 items: both hit


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
def test_the_html_report_renders_offline_in_headless_chromium(report, tmp_path):
    page = Path(report["html"])
    base = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "Classification view" in dom and dom.count("<img") >= 2
    shot = tmp_path / "models.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1400,1800", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_breakdown_groups_read_in_numeric_order():
    from seqrec.evaluation.sections import breakdown_rows

    groups = ["1", "10-19", "2", "20+", "3-4", "5-9"]  # as strings sort (the report's order before)
    results = [{"model": "spop", "breakdowns": {"prefix_length": {g: {"n_targets": i, "recall@20": 0.1} for i, g in enumerate(groups)},
                                                 "session_length": {">=3": {"n_targets": 5}, "<3": {"n_targets": 2}},
                                                 "subdomain": {g: {"n_targets": 1} for g in ("u2i", "search", "i2i", "catalog")}}}]
    assert [r["group"] for r in breakdown_rows(results, "prefix_length", "recall@20")] == ["1", "2", "3-4", "5-9", "10-19", "20+"]
    assert [r["group"] for r in breakdown_rows(results, "session_length", "recall@20")] == ["<3", ">=3"]
    assert [r["group"] for r in breakdown_rows(results, "subdomain", "recall@20")] == ["catalog", "i2i", "search", "u2i"]


def test_a_breakdown_named_like_a_model_keeps_its_groups(report):
    from seqrec.evaluation.sections import breakdown_rows

    results = json.loads(Path(report["json"]).read_text())
    rows = breakdown_rows(results, "popularity", "recall@20")  # "popularity" is a model too
    assert {row["group"] for row in rows} <= {"head", "tail", "unseen"} and all("popularity" in row for row in rows)
