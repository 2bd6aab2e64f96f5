"""Great Expectations Data Docs that render offline: the CDN assets are served from the site itself.

GX 1.24's page templates load bootstrap, jquery, bootstrap-table, font-awesome and vega from
CDNs, and its logo from S3; offline, the index table (filled by JavaScript) stays empty and the
pass/fail icons are missing. ``publish_data_docs`` stores the Great Expectations results of the
validation passes themselves (tables and event days: the gate's own results) in a persistent GX
project and builds its Data Docs, then copies the pinned npm packages of
``vendor/datadocs`` (``make datadocs-assets``) into ``<site>/static/vendor/`` and rewrites every
asset URL of every page to a relative path. An asset URL with no local file is an error naming
it: the site never keeps a silent network reference. Great Expectations is imported lazily.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd

from expectations import suites as S
from seqrec import io
from seqrec.config import SuiteParams

if TYPE_CHECKING:
    from seqrec.quality.validate import References, TableValidation

# GX logs one INFO line per store and action; keep run logs readable.
logging.getLogger("great_expectations").setLevel(logging.WARNING)

ASSETS = Path(__file__).resolve().parents[3] / "vendor" / "datadocs" / "node_modules"
VENDOR_DIR = "static/vendor"  # under the site root
GX_LOGO = "static/images/logo-long.png"  # GX copies its own static/images into every site

# CDN URL (query string dropped) -> file under ``assets`` (the npm packages of vendor/datadocs),
# or, prefixed "site:", a file GX already ships inside the site.
CDN_FILES = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap/dist/css/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap/dist/js/bootstrap.min.js",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        "@forevolve/bootstrap-dark/dist/css/bootstrap-prefers-dark.css",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.js/dist/umd/popper.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table/dist/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table/dist/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
    # The templates ask for the 1.19.0 filter-control css: vendored as the npm alias bootstrap-table-1.19.0.
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "bootstrap-table-1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "bootstrap-table-1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "bootstrap-datepicker/dist/css/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "bootstrap-datepicker/dist/js/bootstrap-datepicker.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "@fortawesome/fontawesome-free/css/all.min.css",
    # jsdelivr serves a bare package at its package.json "jsdelivr" entry (build/<name>.min.js).
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/build/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite/build/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed/build/vega-embed.min.js",
    "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png": "site:" + GX_LOGO,
    # Dark-mode navbar logo (inline css); GX ships no local copy, so the light logo stands in.
    "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/full_logo_dark.png": "site:" + GX_LOGO,
}

# Asset URLs in a page: src/href of script, link, img, source tags, and css url(...).
_TAG = re.compile(r"<(?:script|link|img|source)\b[^>]*>", re.IGNORECASE)
_ATTR_URL = re.compile(r"""\b(?:src|href)\s*=\s*(["']?)(https?://[^"'\s>]+)\1""", re.IGNORECASE)
_CSS_URL = re.compile(r"""url\(\s*(["']?)(https?://[^"')\s]+)\1\s*\)""", re.IGNORECASE)
_INTEGRITY = re.compile(r"""\s+(?:integrity\s*=\s*(["'])[^"']*\1|crossorigin(?:\s*=\s*(["'])[^"']*\2)?)""", re.IGNORECASE)
_CSS_LOCAL_URL = re.compile(r"""url\(\s*(["']?)([^"')]+)\1\s*\)""")


class DataDocsError(RuntimeError):
    """Data Docs cannot be made self-contained; the message names the URL, page or file."""


def strip_query(url: str) -> str:
    """Return ``url`` without its query string and fragment (GX adds ``?d=<time>`` to its logo)."""
    return url.split("?", 1)[0].split("#", 1)[0]


def find_asset_urls(html: str) -> list[str]:
    """Return the http(s) URLs a page loads as assets (script/link/img/source src or href, css url())."""
    urls = [m.group(2) for tag in _TAG.finditer(html) for m in _ATTR_URL.finditer(tag.group(0))]
    return urls + [m.group(2) for m in _CSS_URL.finditer(html)]


def localise_cdn_urls(html: str, mapping: dict[str, str]) -> str:
    """Return ``html`` with every asset URL replaced by ``mapping[url without query]``; raise on an unmapped one.

    Tags whose URL is rewritten lose ``integrity`` and ``crossorigin``: a file:// page cannot make
    the CORS request they ask for (``build_data_docs`` checks the hashes before).
    Navigation links (``<a href>``) are not assets and stay as they are.
    """
    missing = sorted({u for u in find_asset_urls(html) if strip_query(u) not in mapping})
    if missing:
        raise DataDocsError(f"no local file for asset URL(s): {', '.join(missing)}")

    def swap(m: re.Match) -> str:
        return m.group(0).replace(m.group(2), mapping[strip_query(m.group(2))])

    def rewrite_tag(tag: re.Match) -> str:
        text, n = _ATTR_URL.subn(swap, tag.group(0))
        return _INTEGRITY.sub("", text) if n else text

    return _CSS_URL.sub(swap, _TAG.sub(rewrite_tag, html))


def find_integrity(html: str) -> dict[str, str]:
    """Return {url without query: sri hash} for the tags of ``html`` that carry an ``integrity`` attribute."""
    out = {}
    for tag in _TAG.finditer(html):
        sri = re.search(r"""integrity\s*=\s*["']([^"']+)["']""", tag.group(0))
        url = _ATTR_URL.search(tag.group(0))
        if sri and url:
            out[strip_query(url.group(2))] = sri.group(1)
    return out


def check_integrity(path: Path, sri: str, url: str) -> None:
    """Raise DataDocsError unless the file at ``path`` matches one of the subresource-integrity hashes."""
    data = path.read_bytes()
    for token in sri.split():
        algo, _, expected = token.partition("-")
        if base64.b64encode(hashlib.new(algo, data).digest()).decode() == expected:
            return
    raise DataDocsError(f"{path} does not match the integrity hash {sri} that the page gives for {url}")


def copy_asset(source: Path, dest: Path) -> None:
    """Copy one asset, and for a css file the relative files its ``url()`` refers to (font-awesome webfonts)."""
    if not source.is_file():
        raise DataDocsError(f"asset file {source} is missing: run `make datadocs-assets`")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    if source.suffix != ".css":
        return
    for m in _CSS_LOCAL_URL.finditer(source.read_text(encoding="utf-8")):
        ref = strip_query(m.group(2))
        if ref.startswith(("data:", "#")):
            continue
        if re.match(r"^[a-z]+:", ref, re.IGNORECASE) or ref.startswith("//"):
            raise DataDocsError(f"{source} loads {ref} from the network")
        if not (dest.parent / ref).is_file():
            copy_asset((source.parent / ref).resolve(), (dest.parent / ref).resolve())


def vendor_site_assets(site: Path, assets: Path) -> dict[str, str]:
    """Copy every file of ``CDN_FILES`` into the site; return {CDN URL: path relative to the site root}."""
    mapping = {}
    for url, rel in CDN_FILES.items():
        if rel.startswith("site:"):
            mapping[url] = rel.removeprefix("site:")
            if not (site / mapping[url]).is_file():
                raise DataDocsError(f"{site / mapping[url]} (local copy of {url}) is missing from the site")
            continue
        mapping[url] = f"{VENDOR_DIR}/{rel}"
        copy_asset(assets / rel, site / mapping[url])
    return mapping


def localise_site(site: Path, assets: Path) -> list[Path]:
    """Make a Data Docs site self-contained: vendor the assets and rewrite every page that loads one from the network
    (pages localised before are left as they are); return the pages."""
    mapping = vendor_site_assets(site, assets)
    pages = sorted(site.rglob("*.html"))
    for page in pages:
        html = page.read_text(encoding="utf-8")
        if not find_asset_urls(html):
            continue
        for url, sri in find_integrity(html).items():
            if url in mapping:
                check_integrity(site / mapping[url], sri, url)
        up = "../" * (len(page.relative_to(site).parts) - 1)
        try:
            io.write_text(localise_cdn_urls(html, {u: up + p for u, p in mapping.items()}), page)
        except DataDocsError as err:
            raise DataDocsError(f"{page}: {err}") from err
    return pages


def store_results(ctx, validations: list["TableValidation"], params: SuiteParams) -> dict:
    """Put the GX results of the validation passes (the gate's own, not a second pass) in the project's validation
    results store, with their suites; return them by key (batch: the partition, run: the stage and the pass's time)."""
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier, ValidationResultIdentifier,
    )

    store, stored = ctx.validation_results_store, {}
    for v in validations:
        if v.gx_result is None:
            raise DataDocsError(f"{v.table} ({v.stage}, {v.partition or 'whole table'}): no Great Expectations result kept")
        suite = ctx.suites.add_or_update(S.build_suite(v.table, v.stage, params, v.skipped))
        result = store.deserialize(v.gx_result)
        run_time = (result.meta.get("run_id") or {}).get("run_time")  # the pass's own (a dict once deserialised)
        key = ValidationResultIdentifier(ExpectationSuiteIdentifier(name=suite.name),
                                         RunIdentifier(run_name=v.stage, run_time=run_time), v.partition or "whole")
        store.set(key, result)
        stored[key] = result
    return stored


def stage_checkpoint(ctx, stage: str, suites: list[str]):
    """Add or update the stage's GX Checkpoint ``seqrec-<stage>``: one validation definition per suite it ever
    validated (a dataframe asset per table of the ``seqrec`` pandas data source) and the Data Docs action.

    seqrec does not call its ``run``: the passes validate every table and event day partition on their own (days in
    parallel, on Dask workers on a cluster), and ``checkpoint_result`` assembles the checkpoint's result from theirs.
    """
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    try:
        source = ctx.data_sources.get("seqrec")
    except KeyError:
        source = ctx.data_sources.add_pandas("seqrec")
    try:  # a run that validated fewer tables (a partial root) keeps the others' definitions
        known = [vd.suite.name for vd in ctx.checkpoints.get(f"seqrec-{stage}").validation_definitions]
    except gx.exceptions.DataContextError:  # no checkpoint of this stage yet
        known = []
    definitions = []
    for name in sorted({*known, *suites}):
        table = name.rsplit(".", 1)[0]  # suites are named <table>.<stage>
        try:
            asset = source.get_asset(table)
        except LookupError:
            asset = source.add_dataframe_asset(table)
        try:
            batch = asset.get_batch_definition("whole")
        except KeyError:
            batch = asset.add_batch_definition_whole_dataframe("whole")
        definitions.append(ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"{name}.whole", data=batch, suite=ctx.suites.get(name))))
    return ctx.checkpoints.add_or_update(gx.Checkpoint(
        name=f"seqrec-{stage}", validation_definitions=definitions, actions=[UpdateDataDocsAction(name="data_docs")]))


def checkpoint_result(checkpoint, stored: dict, stage: str, out_dir: Path) -> Path:
    """Write the stage's ``CheckpointResult`` made of the passes' results (success: every pass succeeded, as the gate
    judges) under ``out_dir/checkpoint_results``; return the file."""
    import datetime as dt

    from great_expectations.checkpoint.checkpoint import CheckpointResult
    from great_expectations.core.run_identifier import RunIdentifier

    now = dt.datetime.now(dt.timezone.utc)
    result = CheckpointResult(run_id=RunIdentifier(run_name=stage, run_time=now), run_results=stored,
                              checkpoint_config=checkpoint)
    described = result.describe_dict()
    passes = [{"suite": key.expectation_suite_identifier.name, "partition": key.batch_identifier,
               "run_time": key.run_id.to_json_dict()["run_time"], "success": bool(r.success),
               "failed": [e.expectation_config.type for e in r.results if not e.success]}
              for key, r in stored.items()]  # the full results are in the project's validation results store
    record = {"checkpoint": checkpoint.name, "run_time": now.isoformat(), "success": bool(result.success),
              "statistics": described["statistics"], "validations": passes}
    return io.write_json(record, Path(out_dir) / "checkpoint_results" / f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}.json")


def publish_data_docs(validations: list["TableValidation"], params: SuiteParams, out_dir: Path,
                      assets: Path = ASSETS) -> Path:
    """Add the GX results of ``validations`` to the Data Docs under ``out_dir``; return the site's index.html.

    The pages show the results of the validation passes that judged the data (and gate the cleaned
    stage): tables and every event day partition, with no second Great Expectations pass. The GX
    project lives in ``out_dir/gx`` and persists: each call updates the suites and the stage's Checkpoint
    (``stage_checkpoint``), adds the new results, so the Data Docs index lists every run's validations side
    by side, and writes the Checkpoint's result made of them (``checkpoint_result``: its success is the
    gate's verdict on these passes). Every new page is made to load its assets locally.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from seqrec.quality.validate import _GX_SETUP

    if not assets.is_dir():
        raise DataDocsError(f"asset directory {assets} is missing: run `make datadocs-assets`")
    if not validations:
        raise DataDocsError(f"no validation to publish into Data Docs under {out_dir}")
    root = Path(out_dir) / "gx"
    with _GX_SETUP:
        ctx = gx.get_context(mode="file", project_root_dir=str(out_dir))  # GX makes out_dir/gx
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        stored = store_results(ctx, validations, params)
        suites = list({k.expectation_suite_identifier.to_tuple(): k.expectation_suite_identifier for k in stored}.values())
        stage = "+".join(sorted({v.stage for v in validations}))  # one stage per call from the flows
        checkpoint_result(stage_checkpoint(ctx, stage, [s.name for s in suites]), stored, stage, out_dir)
        ctx.build_data_docs(resource_identifiers=[*stored, *suites])  # the new pages and the index: older ones stay
    site_url = ctx.get_docs_sites_urls()[0]["site_url"]  # file:///.../data_docs/local_site/index.html
    index = Path(url2pathname(urlparse(site_url).path))
    if not (index.is_absolute() and index.is_file() and root.resolve() in index.resolve().parents):
        raise DataDocsError(f"GX gave the Data Docs site {site_url!r}, not a page under {root}: nothing written outside it")
    localise_site(index.parent, assets)
    return index


def build_data_docs(frames: dict[str, pd.DataFrame], stage: str, params: SuiteParams, out_dir: Path,
                    assets: Path = ASSETS, refs: "References | None" = None) -> Path:
    """Validate ``frames`` (``seqrec.quality.validate.measure_table``) and publish the results into Data Docs;
    return the site's index.html. ``refs`` feeds the referential checks; without it they are skipped."""
    from seqrec.quality.validate import measure_table

    if not frames:
        raise DataDocsError(f"no table to validate into Data Docs under {out_dir}")
    validations = [measure_table(df, table, stage, params, refs) for table, df in frames.items()]
    return publish_data_docs(validations, params, out_dir, assets)
