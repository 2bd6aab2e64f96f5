"""Security: servers bind 127.0.0.1, checkpoints load weights-only, no pickle of user files."""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.config import DataConfig
from seqrec.io import load_checkpoint, load_sessions
from seqrec.data.reader import make_dask_client
from seqrec.serving.recommend import load_model

REPO = Path(__file__).resolve().parents[2]
CODE_DIRS = ("src", "flows", "tasks", "deployments")


class Payload:
    """Unpickling this creates ``marker``: proof that arbitrary code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_local_dask_cluster_binds_loopback_only(tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_TEMPORARY_DIRECTORY", str(tmp_path))
    with make_dask_client(DataConfig(dask_workers=1)) as client:
        info = client.scheduler_info()
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert info["address"].startswith("tcp://127.0.0.1:")
        assert list(info["workers"]) and all(a.startswith("tcp://127.0.0.1:") for a in info["workers"])
        assert "127.0.0.1" in client.dashboard_link


@pytest.mark.parametrize("load", [load_model, load_checkpoint], ids=["load_model", "load_checkpoint"])
def test_checkpoint_with_a_pickled_object_is_refused_without_running_it(tmp_path, load):
    marker, path = tmp_path / "code-ran", tmp_path / "evil.pt"
    torch.save({"model_type": "gru4rec", "format": 1, "payload": Payload(marker)}, path)
    with pytest.raises((ValueError, pickle.UnpicklingError), match="weights.only|Weights only"):
        load(path)
    assert not marker.exists()


def test_session_file_with_object_arrays_is_refused(tmp_path):
    path = tmp_path / "sessions.npz"
    np.savez(path, vocab=np.array([Payload(tmp_path / "code-ran")], dtype=object), offsets=np.zeros(1))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_sessions(path)
    assert not (tmp_path / "code-ran").exists()


def unsafe_calls(tree: ast.AST) -> list[str]:
    """Return descriptions of loader calls that could unpickle: pickle/dill/joblib/marshal, yaml.load,
    pd.read_pickle, torch.load without weights_only=True, np.load without allow_pickle=False."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        base = ast.unparse(node.func.value)
        kw = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
        name = f"{base}.{node.func.attr}"
        if base in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve") and "load" in node.func.attr:
            found.append(name)
        elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "pd.read_pickle", "pandas.read_pickle"):
            found.append(name)
        elif name == "torch.load" and kw.get("weights_only") is not True:
            found.append(f"{name} without weights_only=True")
        elif name in ("np.load", "numpy.load") and kw.get("allow_pickle") is not False:
            found.append(f"{name} without allow_pickle=False")
    return found


def python_files() -> list[Path]:
    """Return the project's own Python files (library, tasks, flows, deployments)."""
    return sorted(p for d in CODE_DIRS for p in (REPO / d).rglob("*.py"))


def test_no_code_path_unpickles_files():
    assert len(python_files()) > 20
    problems = []
    for path in python_files():
        text = path.read_text()
        problems += [f"{path.relative_to(REPO)}: {c}" for c in unsafe_calls(ast.parse(text))]
        problems += [f"{path.relative_to(REPO)}: {m}" for m in re.findall(r"allow_pickle\s*=\s*True|weights_only\s*=\s*False", text)]
    assert problems == []


def test_unsafe_call_detector_catches_each_pattern():
    bad = ("pickle.load(f)\ntorch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p)\nyaml.load(s)\n"
           "pd.read_pickle(p)\n")
    assert len(unsafe_calls(ast.parse(bad))) == 6
    good = "torch.load(p, weights_only=True)\nnp.load(p, allow_pickle=False)\nyaml.safe_load(s)\n"
    assert unsafe_calls(ast.parse(good)) == []


def test_no_server_binds_all_interfaces():
    pattern = re.compile(r"0\.0\.0\.0|host\s*=\s*['\"]['\"]|\[::\]")
    files = python_files() + sorted((REPO / "configs").glob("*.y*ml"))
    hits = [f"{p.relative_to(REPO)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert hits == []


def test_prefect_server_defaults_to_loopback(monkeypatch):
    monkeypatch.delenv("PREFECT_SERVER_API_HOST", raising=False)
    from prefect.settings import get_current_settings

    assert get_current_settings().server.api.host == "127.0.0.1"  # `prefect server start` and the ephemeral API
