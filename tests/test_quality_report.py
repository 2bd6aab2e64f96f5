"""The self-contained quality report: content from tiny validations, and rendering in headless Chromium."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from seqrec.quality import validate as Q  # noqa: E402
from seqrec.quality.cleaning import clean_table, count_reasons  # noqa: E402
from seqrec.config import CleaningConfig, QualityConfig, SuiteParams  # noqa: E402
from seqrec.quality.report import render_quality_markdown, render_quality_report  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report_inputs():
    """Users with missing codes (raw FAIL, cleaned PASS) and brands with a duplicate (raw FAIL)."""
    frames = {
        "users": pd.DataFrame({"user_id": [1, 2, 3, 4], "socdem_cluster": [1.0, np.nan, 3.0, 4.0], "region": [1, 2, 3, 4]}),
        "brands": pd.DataFrame({"brand_id": [7, 7, 8], "embedding": [np.ones(300), np.ones(300), np.ones(300)]}),
    }
    params = SuiteParams.of(QualityConfig(on_cleaned_failure="warn"), CleaningConfig())
    results = [clean_table(df, t, CleaningConfig()) for t, df in frames.items()]
    clean = {r.table: r.clean for r in results}
    raw = Q.summarise_validations([Q.validate_table(df, t, "raw", params) for t, df in frames.items()])
    cleaned = Q.summarise_validations([Q.validate_table(df, t, "cleaned", params) for t, df in clean.items()])
    missing = pd.concat([Q.measure_missingness(frames, "raw"), Q.measure_missingness(clean, "cleaned")])
    steps = [s for r in results for s in r.steps]
    return raw, cleaned, steps, missing, count_reasons(results)


def test_report_holds_markers_numbers_and_nothing_remote(report_inputs):
    page = render_quality_report(*report_inputs)
    # overview: 2 raw tables; findings: 2 failed checks, listed again under "All checks"
    assert page.count('class="status-fail">FAIL<') == 2 + 2 + 2
    assert 'class="status-pass">PASS<' in page
    assert "observed 0.75" not in page and ">0.75<" in page  # users.socdem_cluster observed share
    assert "duplicate brand_id" in page and "data:image/png;base64," in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing loads from the network
    assert "<script" not in page


def test_markdown_digest_lists_status_and_findings(report_inputs):
    raw, cleaned, steps, _, reasons = report_inputs
    md = render_quality_markdown(raw, cleaned, steps, reasons)
    assert "| users | FAIL | 1 | PASS | 0 | 4 | 4 | 0 | 1 |" in md
    assert "| brands | key_unique | repeat_key | 0.666667 | 1 | 1 |" in md


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
def test_report_renders_offline_in_headless_chromium(report_inputs, tmp_path):
    page = tmp_path / "quality.html"
    page.write_text(render_quality_report(*report_inputs), encoding="utf-8")
    base = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'class="status-fail">FAIL</span>' in dom and 'class="status-pass">PASS</span>' in dom
    shot = tmp_path / "quality.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1400,900", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a blank 1400x900 page is a few KB
