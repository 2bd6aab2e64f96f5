"""A local model registry: numbered versions, a ``current`` pointer, and the promotion rule.

Layout under the registry directory (default ``<output.root>/registry``)::

    v0001/  model file(s) + meta.json (model, config, data fingerprints, validation metrics, time)
    v0002/  ...
    current  a text file naming the production version ("v0002")

A version directory is built under a dot-prefixed staging name and renamed into place, so it
appears complete or not at all; the pointer is written to a temporary file and moved with
``os.replace``, so a reader sees the old or the new version, never half a name. A lock file
serialises numbering and promotion between concurrent retrains.

Promotion compares the candidate with the current version on the SAME validation data: the
caller evaluates both on one split and records the current version's metrics and per-target ranks
in the candidate's ``meta.json`` (``compared_with``); ``promote_if_better`` checks that both come
from the same validation file and the same current version, then promotes only a candidate whose
mean is higher by ``registry.min_gain`` with a paired test's p <= ``registry.max_p`` (ties and noise
keep current), and records the decision.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from seqrec import io

POINTER = "current"
META = "meta.json"
LOCK = ".lock"
VERSION_RE = re.compile(r"^v(\d{4,})$")


class RegistryError(RuntimeError):
    """The registry is in a state that forbids the operation; the message names file and value."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: its name (``v0003``), directory and metadata."""

    name: str
    path: Path
    meta: dict[str, Any]

    @property
    def model_path(self) -> Path:
        """Path of the version's (first) model file."""
        return self.path / self.meta["files"][0]


# --------------------------------------------------------------------------- layout
def default_registry_dir(output_root: Path | str) -> Path:
    """Return the default registry directory, ``<output.root>/registry``."""
    return Path(output_root) / "registry"


def version_name(number: int) -> str:
    """Return the directory name of version ``number`` (``v0001``)."""
    return f"v{number:04d}"


def now_utc() -> str:
    """Return the current UTC time as an ISO 8601 string (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def registry_lock(registry: Path | str) -> Iterator[None]:
    """Hold an exclusive lock on the registry for numbering and promotion."""
    path = Path(registry) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- reading
def read_version(registry: Path | str, name: str) -> ModelVersion:
    """Return version ``name`` of the registry; raise if it or its meta.json is missing."""
    path = Path(registry) / name
    if not VERSION_RE.match(name) or not (path / META).is_file():
        raise RegistryError(f"registry {registry}: version {name!r} has no {path / META}")
    return ModelVersion(name, path, io.read_json(path / META))


def list_versions(registry: Path | str) -> list[ModelVersion]:
    """Return every complete version of the registry, oldest first (empty if none)."""
    base = Path(registry)
    if not base.is_dir():
        return []
    names = sorted((p.name for p in base.iterdir() if VERSION_RE.match(p.name)), key=lambda n: int(n[1:]))
    return [read_version(base, n) for n in names]


def current_version(registry: Path | str) -> ModelVersion | None:
    """Return the version the ``current`` pointer names, or None before the first promotion."""
    pointer = Path(registry) / POINTER
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    if not VERSION_RE.match(name):
        raise RegistryError(f"registry pointer {pointer} holds {name!r}, not a version name")
    return read_version(registry, name)


# --------------------------------------------------------------------------- writing
def set_current(registry: Path | str, name: str) -> ModelVersion:
    """Point ``current`` at version ``name`` atomically (temp file + os.replace); return it."""
    version = read_version(registry, name)
    io.write_text(name + "\n", Path(registry) / POINTER)
    return version


def register_version(registry: Path | str, files: list[Path | str], model: str, config: dict[str, Any],
                     data_fingerprint: str, metrics: dict[str, float], valid_fingerprint: str,
                     compared_with: dict[str, Any] | None = None, ranks: str | None = None,
                     training: dict[str, Any] | None = None) -> ModelVersion:
    """Copy model files and write meta.json into the next version directory; return the version.

    ``compared_with`` is ``{"version", "metrics", "valid_fingerprint", "ranks"}`` of the current version
    evaluated on the candidate's validation data (None when there is no current version); ``ranks`` is the
    file of the candidate's per-target validation ranks (both for the paired test of ``promote_if_better``);
    ``training`` how it was trained (fine-tuned from which version or from scratch, on which days).
    """
    base = Path(registry)
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=base))
    try:
        for f in map(Path, files):
            if not f.is_file():
                raise FileNotFoundError(f"register_version: model file {f} does not exist")
            shutil.copy2(f, staging / f.name)
        meta = {"model": model, "files": [Path(f).name for f in files], "config": config,
                "data_fingerprint": data_fingerprint, "valid_fingerprint": valid_fingerprint,
                "metrics": metrics, "compared_with": compared_with, "ranks": ranks, "training": training,
                "created": now_utc()}
        with registry_lock(base):
            name = version_name(max((int(v.name[1:]) for v in list_versions(base)), default=0) + 1)
            io.write_json({**meta, "version": name}, staging / META)
            os.rename(staging, base / name)  # fails if the name exists: a version is never overwritten
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return read_version(base, name)


# --------------------------------------------------------------------------- promotion
def metric_value(metrics: dict[str, float], metric: str, owner: str) -> float:
    """Return ``metrics[metric]`` as a float; raise naming the owner if it is missing or NaN."""
    if metric not in metrics:
        raise KeyError(f"{owner}: metric {metric!r} not in {sorted(metrics)}")
    value = float(metrics[metric])
    if math.isnan(value):
        raise ValueError(f"{owner}: metric {metric!r} is NaN")
    return value


def check_same_data(candidate: ModelVersion, current: ModelVersion) -> dict[str, Any]:
    """Return the candidate's ``compared_with`` record; raise unless it is current on the same data."""
    seen = candidate.meta.get("compared_with")
    if not seen:
        raise RegistryError(f"{candidate.path / META}: compared_with is empty but {current.name} is current; "
                            f"evaluate {current.name} on the candidate's validation data first")
    if seen.get("version") != current.name:
        raise RegistryError(f"{candidate.path / META}: compared_with.version={seen.get('version')!r} "
                            f"but current is {current.name!r}")
    if seen.get("valid_fingerprint") != candidate.meta["valid_fingerprint"]:
        raise RegistryError(f"{candidate.path / META}: compared_with.valid_fingerprint={seen.get('valid_fingerprint')!r} "
                            f"differs from valid_fingerprint={candidate.meta['valid_fingerprint']!r}")
    return seen


def promote_if_better(registry: Path | str, candidate: str, metric: str = "recall@20", min_gain: float = 0.0,
                      max_p: float = 0.05) -> bool:
    """Make ``candidate`` current when it beats current on the same validation targets; return whether it did.

    The first version is promoted. Otherwise both per-target rank files (the candidate's ``ranks`` and its
    ``compared_with.ranks``) give each target's ``metric``; the candidate needs a mean higher by ``min_gain``
    and a paired randomisation test with p <= ``max_p``. The decision (both means, the difference and its 95%
    interval, p, the rule) goes into the candidate's meta.json as ``promotion``.
    """
    with registry_lock(registry):
        cand, current = read_version(registry, candidate), current_version(registry)
        value = metric_value(cand.meta["metrics"], metric, f"{cand.path / META}")
        decision = {"metric": metric, "candidate_value": value, "current": None, "current_value": None,
                    "min_gain": min_gain, "max_p": max_p}
        if current is not None and current.name != cand.name:
            decision.update(paired_decision(cand, check_same_data(cand, current), metric, min_gain, max_p),
                            current=current.name)
        else:
            decision.update(promoted=True, reason="first version" if current is None else "already current")
        if decision["promoted"]:
            set_current(registry, cand.name)
        io.write_json({**cand.meta, "promotion": {**decision, "decided": now_utc()}}, cand.path / META)
    return decision["promoted"]


def paired_decision(cand: ModelVersion, seen: dict[str, Any], metric: str, min_gain: float, max_p: float) -> dict[str, Any]:
    """Return the paired comparison of the candidate and current per-target ``metric`` values, and the decision."""
    from seqrec.evaluation.analysis import paired_test, per_target_values

    files = {"candidate": cand.meta.get("ranks"), "current": seen.get("ranks")}
    for who, path in files.items():
        if not path or not Path(path).is_file():
            raise RegistryError(f"{cand.path / META}: the {who}'s per-target validation ranks ({path!r}) are missing; "
                                "the paired test needs both")
    mine, theirs = (per_target_values(np.load(files[w], allow_pickle=False), metric) for w in ("candidate", "current"))
    if mine.shape != theirs.shape:
        raise RegistryError(f"{cand.path / META}: candidate ranked {len(mine)} validation targets, current {len(theirs)}")
    test = paired_test(mine, theirs)
    gain = test["mean_difference"]
    promoted = gain > 0 and gain >= min_gain and test["p_value"] <= max_p
    reason = ("better, and the paired test says so" if promoted else
              "not higher" if gain <= 0 else f"gain {gain:+.4f} below min_gain {min_gain}" if gain < min_gain else
              f"p = {test['p_value']:.4f} > max_p {max_p}: the difference may be noise")
    return {"candidate_value": float(mine.mean()), "current_value": float(theirs.mean()), "difference": gain,
            "ci_low": test["ci_low"], "ci_high": test["ci_high"], "p_value": test["p_value"], "targets": len(mine),
            "promoted": promoted, "reason": reason}


def select_best(results: list[dict[str, Any]], metric: str) -> int:
    """Return the index of the result with the highest validation ``metric`` (first on ties)."""
    if not results:
        raise ValueError("select_best: no results to choose from")
    values = [metric_value(r["metrics"], metric, f"model {r.get('model')!r}") for r in results]
    return int(np.argmax(values))


def comparison_rows(candidates: list[dict[str, Any]], current: dict[str, Any] | None, metric: str,
                    chosen: int, promoted: bool) -> list[dict[str, Any]]:
    """Return one row per candidate plus the current version, all on the same validation data."""
    rows = [{"role": "candidate" + (" (registered)" if i == chosen else ""), "model": r["model"],
             metric: round(float(r["metrics"][metric]), 4), "promoted": "yes" if i == chosen and promoted else "no"}
            for i, r in enumerate(candidates)]
    if current is not None:
        rows.append({"role": f"current ({current['version']})", "model": current["model"],
                     metric: round(float(current["metrics"][metric]), 4), "promoted": "-"})
    return rows


def render_comparison_markdown(rows: list[dict[str, Any]], version: str, promoted: bool, metric: str,
                               decision: dict[str, Any] | None = None) -> str:
    """Return the candidate-vs-current table as markdown, with the rule and the decision line."""
    cols = list(rows[0]) if rows else ["role", "model", metric, "promoted"]
    d = decision or {}
    lines = [f"# Retrain: candidate {version} {'promoted' if promoted else 'NOT promoted'}", "",
             f"Promotion rule: the candidate's mean `{metric}` over the same validation targets is higher than current's "
             f"by at least {d.get('min_gain', 0.0)} and a paired randomisation test gives p <= {d.get('max_p', 0.05)}.", ""]
    if "p_value" in d:
        lines += [f"Decision: difference {d['difference']:+.4f} (95% interval [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]) "
                  f"over {d['targets']} targets, p = {d['p_value']:.4f}: {d['reason']}.", ""]
    elif d.get("reason"):
        lines += [f"Decision: {d['reason']}.", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
