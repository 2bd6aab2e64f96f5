"""Offline Great Expectations Data Docs: CDN URLs rewritten to vendored files, pages render in headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from seqrec.config import CleaningConfig, QualityConfig, SuiteParams
from seqrec.quality.datadocs import ASSETS, DataDocsError, check_integrity, copy_asset, localise_cdn_urls

CHROMIUM = Path("/usr/bin/chromium")
needs_assets = pytest.mark.skipif(not ASSETS.is_dir(), reason=f"{ASSETS} missing: run `make datadocs-assets` (needs npm)")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (make chromium)")

PAGE = """<html><head>
<link rel="stylesheet" href="https://cdn.example/lib@1/lib.min.css"/>
<script src="https://cdn.example/lib@1/lib.min.js" integrity="sha384-abc" crossorigin="anonymous"></script>
<style>.brand a { background: url('https://s3.example/logo.png') 0 0 no-repeat; }</style>
</head><body>
<img class="NO-CACHE"
     src="https://s3.example/logo.png?d=20250101T000000Z&dataContextId=42" alt="logo"/>
<a href="https://docs.example/guide">docs</a>
</body></html>"""
MAPPING = {
    "https://cdn.example/lib@1/lib.min.css": "../static/vendor/lib/lib.min.css",
    "https://cdn.example/lib@1/lib.min.js": "../static/vendor/lib/lib.min.js",
    "https://s3.example/logo.png": "../static/images/logo.png",
}


def test_localise_cdn_urls_rewrites_every_asset_and_keeps_links():
    out = localise_cdn_urls(PAGE, MAPPING)
    assert '<link rel="stylesheet" href="../static/vendor/lib/lib.min.css"/>' in out
    # a file:// page cannot make the CORS request that integrity/crossorigin ask for
    assert '<script src="../static/vendor/lib/lib.min.js"></script>' in out
    assert "url('../static/images/logo.png')" in out
    assert 'src="../static/images/logo.png"' in out  # the query string goes with the CDN URL
    assert '<a href="https://docs.example/guide">' in out  # a navigation link is not an asset
    assert out.count("https://") == 1


def test_localise_cdn_urls_names_an_unmapped_url():
    with pytest.raises(DataDocsError, match=r"https://s3\.example/logo\.png"):
        localise_cdn_urls(PAGE, {k: v for k, v in MAPPING.items() if "logo" not in k})


def test_copy_asset_brings_the_files_a_stylesheet_refers_to(tmp_path):
    src = tmp_path / "pkg"
    (src / "css").mkdir(parents=True)
    (src / "webfonts").mkdir()
    (src / "webfonts" / "icons.woff2").write_bytes(b"font")
    (src / "css" / "all.css").write_text("@font-face{src:url(../webfonts/icons.woff2) format('woff2')}"
                                         ".x{background:url(\"data:image/png;base64,AAAA\")}")
    copy_asset(src / "css" / "all.css", tmp_path / "site" / "css" / "all.css")
    assert (tmp_path / "site" / "webfonts" / "icons.woff2").read_bytes() == b"font"
    (src / "css" / "net.css").write_text("@import url(https://fonts.example/f.css);")
    with pytest.raises(DataDocsError, match="fonts.example"):
        copy_asset(src / "css" / "net.css", tmp_path / "site" / "css" / "net.css")


def test_check_integrity_accepts_the_pinned_file_only(tmp_path):
    js = tmp_path / "lib.min.js"
    js.write_bytes(b"console.log(1)")
    sri = "sha384-" + base64.b64encode(hashlib.sha384(b"console.log(1)").digest()).decode()
    check_integrity(js, sri, "https://cdn.example/lib.min.js")
    js.write_bytes(b"console.log(2)")  # another version than the page asks for
    with pytest.raises(DataDocsError, match="lib.min.js"):
        check_integrity(js, sri, "https://cdn.example/lib.min.js")


class AssetRefs(HTMLParser):
    """Collect the URLs a page loads: script/img src, link href, css url() in style blocks."""

    def __init__(self):
        super().__init__()
        self.urls, self._in_style = [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        url = attrs.get("href") if tag == "link" else attrs.get("src") if tag in ("script", "img") else None
        if url:
            self.urls.append(url)
        self._in_style = tag == "style"

    def handle_data(self, data):
        if self._in_style:
            self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", data)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Data Docs of two tiny raw tables: users passes every check, brands has a null and a repeated id."""
    from seqrec.quality.datadocs import build_data_docs

    frames = {"users": pd.DataFrame({"user_id": [1, 2, 3], "socdem_cluster": [0, 4, 21], "region": [1, 2, 90]}),
              "brands": pd.DataFrame({"brand_id": [7.0, 7.0, None]})}
    index = build_data_docs(frames, "raw", SuiteParams.of(QualityConfig(), CleaningConfig()), tmp_path_factory.mktemp("docs"))
    return index.parent


def pages_of(site: Path) -> dict[str, Path]:
    """Return {"index"|"users"|"brands": page} of the validation results and the index."""
    found = {p.parts[len(site.parts) + 1]: p for p in site.glob("validations/*/raw/*/*/*.html")}
    return {"index": site / "index.html", **found}


@needs_assets
def test_data_docs_load_no_asset_from_the_network(site):
    pages = list(site.rglob("*.html"))
    assert len(pages) == 5  # index, 2 suites, 2 validation results
    for page in pages:
        refs = AssetRefs()
        refs.feed(page.read_text(encoding="utf-8"))
        assert refs.urls, page
        remote = [u for u in refs.urls if re.match(r"(https?:)?//", u)]
        assert not remote, f"{page} loads {remote}"
        local = [u.split("?")[0] for u in refs.urls if not u.startswith("data:")]
        vendored = [u for u in local if "static/vendor/" in u]
        assert len(vendored) >= 15, page
        assert all((page.parent / u).resolve().is_file() for u in vendored), page


def run_chromium(*args: str) -> str:
    """Return headless Chromium's stdout for ``args`` (no network services, a throwaway profile)."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=8000", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True).stdout


@needs_assets
@needs_chromium
def test_index_lists_both_validations_with_their_outcome(site):
    dom = run_chromium("--dump-dom", pages_of(site)["index"].as_uri())
    # bootstrap-table builds these rows from JSON at load time: offline without vendored JS there are none
    rows = re.findall(r'<tr class="clickable-row" data-href="validations/(\w+)/.*?</tr>', dom, re.S)
    assert rows == ["brands", "users"] or rows == ["users", "brands"], rows
    status = dict(re.findall(r'data-href="validations/(\w+)/.*?ge-(success|failed)-icon', dom, re.S))
    assert status == {"users": "success", "brands": "failed"}


PROBE = """<pre id="probe"></pre><script>
document.fonts.ready.then(() => {
  const icon = (cls) => getComputedStyle(document.querySelector(cls), '::before').content;
  document.getElementById('probe').textContent = JSON.stringify({
    jquery: typeof jQuery, table: typeof jQuery.fn.bootstrapTable, vega: typeof vegaEmbed,
    fonts: [...document.fonts].filter(f => f.family.includes('Font Awesome') && f.status === 'loaded').length,
    check: icon('.fa-check-circle'), times: icon('.fa-times')});
});</script></body>"""


@needs_assets
@needs_chromium
def test_validation_page_shows_pass_and_fail_icons_offline(site):
    page = pages_of(site)["brands"]
    probe = page.with_name("probe.html")  # beside the page: same relative asset paths
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE), encoding="utf-8")
    dom = run_chromium("--dump-dom", probe.as_uri())
    found = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    assert found["jquery"] == found["table"] == found["vega"] == "function"
    assert found["fonts"] >= 1  # the solid webfont was fetched from the site
    assert found["check"] not in ("none", "normal", "") and found["times"] not in ("none", "normal", "")
    assert "fa-times text-danger" in dom and "fa-check-circle text-success" in dom


@needs_assets
def test_data_docs_keep_every_run_side_by_side(tmp_path):
    from seqrec.quality.datadocs import build_data_docs

    params = SuiteParams.of(QualityConfig(), CleaningConfig())
    first = {"users": pd.DataFrame({"user_id": [1, 2], "socdem_cluster": [0, 4], "region": [1, 2]})}
    second = {"users": pd.DataFrame({"user_id": [1, 1], "socdem_cluster": [0, None], "region": [1, 2]})}  # a later night
    index = build_data_docs(first, "raw", params, tmp_path)
    assert build_data_docs(second, "raw", params, tmp_path) == index  # one persistent project per directory
    runs = sorted(index.parent.glob("validations/users/raw/*/*/*.html"))  # one page per run, under its run time
    assert len(runs) == 2, runs
    html = index.read_text(encoding="utf-8")
    assert all(p.parent.name in html for p in runs)  # the index links both runs
    refs = AssetRefs()
    refs.feed(runs[0].read_text(encoding="utf-8"))  # the first run's page was localised again: its assets are still local
    assert refs.urls and not [u for u in refs.urls if re.match(r"(https?:)?//", u)]


@needs_assets
def test_pages_show_the_passes_own_results_one_per_partition(tmp_path):
    """Data Docs publish the results the validation passes kept (no second GX pass): one page per partition, under
    the pass's own run time, with its outcome; a pass that kept no result is an error naming it."""
    import dataclasses
    import datetime as dt

    from seqrec.pipeline.quality import keep_gx_results, publish_data_docs
    from seqrec.quality.datadocs import publish_data_docs as publish
    from seqrec.quality.validate import measure_table

    params = SuiteParams.of(QualityConfig(), CleaningConfig())
    good = pd.DataFrame({"user_id": [1, 2], "socdem_cluster": [0, 4], "region": [1, 2]})
    bad = pd.DataFrame({"user_id": [3, 3], "socdem_cluster": [0, None], "region": [1, 2]})
    passes = [measure_table(df, "users", "cleaned", params, partition=p) for p, df in (("01082", good), ("01083", bad))]
    assert [v.success for v in passes] == [True, False]
    kept = keep_gx_results(passes, tmp_path / "quality")
    index = Path(publish_data_docs(kept, "cleaned", QualityConfig(), CleaningConfig(), str(tmp_path / "quality")))
    pages = {p.stem: p for p in index.parent.glob("validations/users/cleaned/cleaned/*/*.html")}
    assert sorted(pages) == ["01082", "01083"]
    for v in passes:  # filed under the pass's own run time: the result was stored, not made again
        result = json.loads(v.gx_result)
        run_time = dt.datetime.fromisoformat(result["meta"]["run_id"]["run_time"])
        assert pages[v.partition].parent.name == run_time.strftime("%Y%m%dT%H%M%S.%fZ")
        assert result["success"] == v.success
    with pytest.raises(DataDocsError, match=r"users \(cleaned, 01082\): no Great Expectations result kept"):
        publish([dataclasses.replace(passes[0], gx_result=None)], params, tmp_path / "other")


@needs_assets
def test_each_stage_has_a_checkpoint_whose_result_is_the_gates_verdict(tmp_path):
    """The persistent project holds a Checkpoint per stage (a validation definition per table suite, the Data Docs
    action), and each publication writes its CheckpointResult made of the passes' results: unsuccessful when a day
    failed, naming each partition's outcome; a later all-clear run adds a successful one beside it."""
    import great_expectations as gx

    from seqrec.quality.datadocs import publish_data_docs as publish
    from seqrec.quality.validate import measure_table

    params = SuiteParams.of(QualityConfig(), CleaningConfig())
    good = pd.DataFrame({"user_id": [1, 2], "socdem_cluster": [0, 4], "region": [1, 2]})
    bad = pd.DataFrame({"user_id": [3, 3], "socdem_cluster": [0, None], "region": [1, 2]})
    brands = pd.DataFrame({"brand_id": [7, 8], "embedding": [[0.5] * 300] * 2})  # 300: the default dimension
    night = [measure_table(df, "users", "cleaned", params, partition=p) for p, df in (("01082", good), ("01083", bad))]
    night.append(measure_table(brands, "brands", "cleaned", params))
    publish(night, params, tmp_path)
    publish([measure_table(good, "users", "cleaned", params, partition="01084")], params, tmp_path)

    ctx = gx.get_context(mode="file", project_root_dir=str(tmp_path))
    checkpoint = ctx.checkpoints.get("seqrec-cleaned")
    assert sorted(vd.suite.name for vd in checkpoint.validation_definitions) == ["brands.cleaned", "users.cleaned"]
    assert [type(a).__name__ for a in checkpoint.actions] == ["UpdateDataDocsAction"]
    first, second = [json.loads(p.read_text()) for p in sorted((tmp_path / "checkpoint_results").glob("*.json"))]
    assert first["checkpoint"] == second["checkpoint"] == "seqrec-cleaned"
    assert first["success"] is False and second["success"] is True  # the gate's verdict on each night's passes
    assert first["statistics"]["evaluated_validations"] == 3 and first["statistics"]["success_percent"] == pytest.approx(200 / 3)
    outcomes = {(r["suite"], r["partition"]): (r["success"], r["failed"]) for r in first["validations"]}
    assert outcomes == {("users.cleaned", "01082"): (True, []), ("brands.cleaned", "whole"): (True, []),
                        ("users.cleaned", "01083"): (False, ["expect_column_values_to_be_in_set",
                                                             "expect_column_values_to_not_be_null"])}, outcomes
