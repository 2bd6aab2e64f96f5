"""`seqrec serve` as a real process on 127.0.0.1: answers as `recommend` does, refuses bad input with a 4xx naming
the field, follows a registry's current version."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from seqrec.config import Gru4RecConfig, TrainingConfig
from seqrec.models.gru4rec import GRU4Rec
from seqrec.sequences import ItemVocab, SessionDataset
from seqrec.serving.http import BadRequest, answer, load_served
from seqrec.serving.recommend import load_model, recommend, save_model
from seqrec.serving.registry import register_version, set_current
from seqrec.config import ServingConfig

SEQREC = str(Path(sys.executable).with_name("seqrec"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(tmp: Path, name: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    vocab = ItemVocab(np.array(["<pad>"] + [str(1000 + i) for i in range(200)], dtype=object))
    items = (np.arange(3000) * 3 + rng.integers(0, 2, 3000)) % 200 + 1
    data = SessionDataset(vocab, np.arange(0, 3001, 5), items.astype(np.int64), np.arange(3000), np.arange(600))
    model = GRU4Rec(Gru4RecConfig(epochs=1, hidden=8, batch_size=16), TrainingConfig(device="cpu", progress=False, seed=seed))
    return save_model(model.fit(data), tmp / name)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    return train(tmp, "a.pt", 0), train(tmp, "b.pt", 1)


class Server:
    """A `seqrec serve` process on a free loopback port, stopped by the test."""

    def __init__(self, target: Path, *args: str):
        self.port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([SEQREC, "serve", str(target), "--port", str(self.port), *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.client.get("/health")
                return
            except httpx.TransportError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"seqrec serve exited: {self.proc.stdout.read()}")
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("seqrec serve did not answer within 60 s")

    def stop(self) -> str:
        self.client.close()
        self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


def test_http_answers_as_recommend_and_refuses_bad_input_by_field(models):
    path = models[0]
    server = Server(path)
    try:
        sessions = [["1001", "1004"], ["1100"]]
        r = server.client.post("/recommend", json={"sessions": sessions, "k": 5})
        assert r.status_code == 200
        body = r.json()
        assert body["recommendations"] == [list(x) for x in recommend(load_model(path), sessions, k=5)]
        assert body["model"] == "gru4rec" and body["version"] == "a.pt" and body["index"] == "exact"
        one = server.client.post("/recommend", json={"session": [1001, 1004], "k": 5}).json()  # integer ids too
        assert one["recommendations"] == body["recommendations"][:1]
        ignored = server.client.post("/recommend", json={"session": ["1001", "x"], "unknown_items": "ignore"}).json()
        assert ignored["unknown_items"] == 1 and len(ignored["recommendations"][0]) == 10
        bad = {
            b"{not json": (400, "not valid JSON"),
            b"[1, 2]": (400, "JSON object"),
            b'{"k": 3}': (422, "'sessions'"),
            b'{"sessions": []}': (422, "'sessions'"),
            b'{"sessions": [["1001"], []]}': (422, "'sessions[1]'"),
            b'{"sessions": [["1001", 2.5]]}': (422, "'sessions[0][1]'"),
            b'{"sessions": [["1001", "nope"]]}': (422, "'sessions[0][1]': item 'nope' is not in the model's catalogue"),
            b'{"session": ["nope"], "unknown_items": "ignore"}': (422, "'session': none of its 1 items"),
            b'{"session": ["1001"], "k": 0}': (422, "'k' must be an integer between 1 and 200"),
            b'{"session": ["1001"], "k": 201}': (422, "'k'"),
            b'{"session": ["1001"], "k": true}': (422, "'k'"),
            b'{"session": ["1001"], "exclude_seen": "yes"}': (422, "'exclude_seen'"),
            b'{"session": ["1001"], "colour": 1}': (422, "unknown field 'colour'"),
        }
        for raw, (status, text) in bad.items():
            r = server.client.post("/recommend", content=raw, headers={"content-type": "application/json"})
            assert r.status_code == status, (raw, r.text)
            assert text in r.json()["error"], (raw, r.json())
        assert server.client.get("/health").json()["items"] == 200
    finally:
        server.stop()


def test_http_follows_the_registry_current_version(models, tmp_path):
    registry = tmp_path / "registry"
    for path in models:
        register_version(registry, [path], "gru4rec", {}, "data", {"recall@20": 0.1}, "valid")
    set_current(registry, "v0001")
    server = Server(registry, "--set", "serving.reload_seconds=0.2")
    try:
        first = server.client.post("/recommend", json={"session": ["1001"]}).json()
        assert first["version"] == "v0001"
        set_current(registry, "v0002")
        deadline, now = time.monotonic() + 30, first
        while now["version"] == "v0001" and time.monotonic() < deadline:
            time.sleep(0.2)
            now = server.client.post("/recommend", json={"session": ["1001"]}).json()
        assert now["version"] == "v0002"
        assert now["recommendations"] == [list(x) for x in recommend(load_model(models[1]), [["1001"]])]
    finally:
        server.stop()


def test_answer_through_the_approximate_index_names_it(models):
    served = load_served(models[0], "a.pt", ServingConfig(index="ann"))
    body = answer(served, b'{"session": ["1001"], "k": 3}', ServingConfig())
    assert body["index"] == "ann" and len(body["recommendations"][0]) == 3
    with pytest.raises(BadRequest, match="'k': 200 is more than the catalogue holds"):
        answer(served, b'{"session": ["1001"], "k": 200}', ServingConfig())
