"""Live dashboard: the replay equals offline evaluation; the server and page show the same numbers."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.config import EvaluationConfig
from seqrec.serving.dashboard.app import create_app, discover_models
from seqrec.serving.dashboard.replay import Replay, ReplayRunner, order_events, rank_in_list, replay_all
from seqrec.evaluation.metrics import TargetRanker, TargetRecords, batch_sessions, evaluate_model, rank_all_targets
from seqrec.io import load_sessions, save_sessions
from seqrec.models.baselines import Markov, Popularity, SessionPopularity
from seqrec.serving.recommend import load_model, save_model
from seqrec.sequences import ItemVocab, SessionDataset, reencode_sessions

torch.set_num_threads(1)

K = 3
N_ITEMS = 12
VOCAB = ItemVocab(np.array(["<pad>"] + [f"sku-{i}" for i in range(1, N_ITEMS + 1)], dtype=object))
TEST_VOCAB = ItemVocab(np.array(list(VOCAB.ids) + ["sku-99"], dtype=object))  # sku-99: unknown to the models
# Training support with ties around the cut-off: at K = 3, item 1 is rank 1 and items 2-4 all rank 4
# (conservative), so a replay that counted membership in torch.topk's first K would report hits.
POP_COUNTS = [9, 7, 7, 7, 5, 5, 3, 3, 2, 2, 1, 1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def make_sessions(sessions: list[list[int]], vocab: ItemVocab, starts: list[int]) -> SessionDataset:
    """Return a dataset of dense-item sessions; session i starts at starts[i], one event every 5 ticks."""
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sessions])]).astype(np.int64)
    times = np.concatenate([start + 5 * np.arange(len(s)) for s, start in zip(sessions, starts)]).astype(np.int64)
    keys = np.array([f"s{i}" for i in range(len(sessions))], dtype=object)
    return SessionDataset(vocab, offsets, np.concatenate(sessions).astype(np.int64), times, keys)


def cycle_sessions(rng: np.random.Generator, n: int, n_items: int) -> list[list[int]]:
    """Return sessions that mostly step item i -> i + 1 (mod n_items), sometimes jump or repeat."""
    out = []
    for _ in range(n):
        s = [int(rng.integers(1, n_items + 1))]
        for _ in range(int(rng.integers(1, 7))):
            r = rng.random()
            nxt = s[-1] % n_items + 1 if r < 0.6 else s[-1] if r < 0.7 else int(rng.integers(1, n_items + 1))
            s.append(nxt)
        out.append(s)
    return out


@pytest.fixture(scope="module")
def models() -> dict[str, object]:
    rng = np.random.default_rng(0)
    markov_train = make_sessions(cycle_sessions(rng, 80, N_ITEMS), VOCAB, list(range(80)))
    tied = rng.permutation(np.repeat(np.arange(1, N_ITEMS + 1), POP_COUNTS)).tolist()
    pop_train = make_sessions([tied[i : i + 5] for i in range(0, len(tied), 5)], VOCAB, list(range(0, len(tied), 5)))
    return {"markov": Markov().fit(markov_train), "popularity": Popularity().fit(pop_train),
            "spop": SessionPopularity().fit(pop_train)}


@pytest.fixture(scope="module")
def test_data() -> SessionDataset:
    """Test sessions in their own vocabulary (one item unknown to the models), overlapping in time."""
    sessions = cycle_sessions(np.random.default_rng(1), 40, N_ITEMS)
    sessions[3] = sessions[3] + [N_ITEMS + 1]  # an unknown item: removed by re-encoding, as offline
    sessions[5] = [N_ITEMS + 1, 2]  # a session left with one event: dropped, no target
    return make_sessions(sessions, TEST_VOCAB, [3 * i for i in range(40)])


def offline_ranks(model, data: SessionDataset, exclude_seen: bool) -> dict[int, float]:
    """Return the offline conservative full-ranking rank of every target, by global event index."""
    ranker = TargetRanker("conservative", exclude_seen, "full", 100, np.random.default_rng(0))
    records = TargetRecords()
    for idx in batch_sessions(data, 7):
        rank_all_targets(model, data, idx, ranker, records)
    return dict(zip(records.column("events").astype(int).tolist(), records.column("ranks").tolist()))


# --------------------------------------------------------------------------- library
@pytest.mark.parametrize(
    "indices, scores, target, expected",
    [
        ([1, 2, 3, 4], [9.0, 7.0, 5.0, 3.0], 1, 1.0),  # unique top score: rank 1
        ([1, 2, 3, 4], [9.0, 7.0, 5.0, 3.0], 3, 3.0),  # last of K, no tie beyond: hit at K
        ([1, 2, 3, 4], [9.0, 7.0, 7.0, 7.0], 2, math.inf),  # ties with the (K+1)-th: 4 items >= it, a miss
        ([1, 3, 2, 4], [9.0, 7.0, 7.0, 3.0], 2, 3.0),  # tie inside K: conservative rank 3, whatever the order
        ([1, 2, 3, 4], [9.0, 7.0, 5.0, 3.0], 4, math.inf),  # listed only as the (K+1)-th: a miss
        ([1, 2, 3, 4], [9.0, 7.0, 5.0, 3.0], 8, math.inf),  # not listed: a miss
        ([1, 2, 0, 0], [9.0, -np.inf, -np.inf, -np.inf], 2, math.inf),  # excluded (-inf): a miss, as offline
    ],
)
def test_rank_in_list_is_the_conservative_rank_within_k(indices, scores, target, expected):
    assert rank_in_list(np.array(indices), np.array(scores, dtype=np.float32), target, K) == expected


def test_events_are_replayed_in_time_order_with_sessions_interleaved():
    data = make_sessions([[1, 2, 3], [4, 5], [6, 7]], VOCAB, [0, 2, 2])  # times 0 5 10 | 2 7 | 2 7
    stream = order_events(data)
    assert stream.sessions.tolist() == [0, 1, 2, 0, 1, 2, 0]  # equal times: lower session first
    assert stream.positions.tolist() == [0, 0, 0, 1, 1, 1, 2]


def test_sessions_in_flight_and_batches_that_never_hold_a_session_twice(models):
    data = make_sessions([[1, 2, 3], [4, 5], [6, 7]], VOCAB, [0, 2, 2])
    replay = Replay(models["markov"], data, k=K)
    assert replay.step(limit=10) == 3  # the 4th event is session 0's second: it waits for the first's list
    state = replay.state()
    assert state["sessions_in_flight"] == 3 and state["metrics"]["targets"] == 0
    assert [r["hit"] for r in state["sessions"]] == [None, None, None]  # no list judged yet
    assert len(state["sessions"][0]["recommendations"]) == K
    replay_all(replay)
    state = replay.state()
    assert state["sessions_in_flight"] == 0 and state["metrics"]["targets"] == 4 and state["finished"]
    assert state["sessions"][0] == {"session": "s0", "events": 3, "length": 3, "in_flight": False,
                                    "last_items": ["sku-1", "sku-2", "sku-3"], "judged": state["sessions"][0]["judged"],
                                    "hit": True, "rank": 1, "recommendations": []}  # Markov learnt 2 -> 3


@pytest.mark.parametrize("name", ["markov", "popularity", "spop"])
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_full_replay_equals_offline_evaluation(models, test_data, name, exclude_seen):
    model = models[name]
    replay = replay_all(Replay(model, test_data, k=K, exclude_seen=exclude_seen), batch=6)
    data, _ = reencode_sessions(test_data, model.vocab)
    cfg = EvaluationConfig(protocol="session", candidates="full", ties="conservative", cutoffs=(K,))
    offline = evaluate_model(model, data, cfg, exclude_seen=exclude_seen).metrics
    state = replay.state()["metrics"]
    assert replay.finished and state["targets"] == int((data.lengths - 1).sum()) == replay.metrics.n
    assert state["hr"] == offline[f"recall@{K}"]  # exactly: hit counts over the same targets
    assert math.isclose(state["mrr"], offline[f"mrr@{K}"], rel_tol=1e-12)  # summed in another order
    expected = {e: (r if r <= K else math.inf) for e, r in offline_ranks(model, data, exclude_seen).items()}
    got = dict(zip(replay.metrics.events.tolist(), replay.metrics.ranks.tolist()))
    assert got == expected  # target by target


def test_popularity_ties_at_the_cut_off_are_misses(models, test_data):
    """Support 9, 7, 7, 7, ...: only item 1 ranks within K = 3; items 2-4 rank 4, though topk lists two of them."""
    replay = replay_all(Replay(models["popularity"], test_data, k=K))
    targets = replay.data.items[replay.metrics.events]  # dense target items, in replay order
    assert np.isin(targets, [2, 3, 4]).sum() > 10  # the ties are exercised
    assert replay.metrics.summary()["hr"] == (targets == 1).mean()
    assert set(replay.metrics.ranks[: replay.metrics.n].tolist()) == {1.0, math.inf}


def test_replay_reports_reencoding_and_rejects_k_beyond_the_catalogue(models, test_data):
    replay = Replay(models["markov"], test_data, k=K)
    assert replay.reencoding == {"unknown_items_removed": 2, "short_sessions_dropped": 1,
                                 "events_in_dropped_sessions": 1}
    with pytest.raises(ValueError, match="k=13 must be between 1 and the model's catalogue size 12"):
        Replay(models["markov"], test_data, k=13)


def test_runner_paces_and_stops(models, test_data):
    runner = ReplayRunner(Replay(models["markov"], test_data, k=K), rate=40.0)
    runner.start()
    time.sleep(0.5)
    runner.stop()
    done = runner.replay.cursor
    assert 5 <= done <= 40 and not runner.running  # ~20 events at 40/s, not the whole stream
    assert runner.throughput()["events_per_s"] == pytest.approx(40.0, rel=0.5)
    with pytest.raises(ValueError, match="rate=-1"):
        runner.set_rate(-1)


# --------------------------------------------------------------------------- server + page
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, models, test_data) -> Path:
    """A run directory laid out as the pipeline writes it: models/*.pt and split/test.npz."""
    root = tmp_path_factory.mktemp("run")
    for name in ("markov", "popularity"):
        save_model(models[name], root / "models" / f"{name}.pt")
    save_sessions(test_data, root / "split" / "test.npz")
    return root


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """Return (status, JSON) of a GET, or of a JSON POST when ``body`` is given."""
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})} if body is not None else dict(headers or {})
    req = urllib.request.Request(url, data=data, headers=hdrs, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        return err.code, json.loads(text) if text.startswith("{") else {"text": text}


@pytest.fixture()
def server(run_dir):
    """Serve the dashboard on a free loopback port in a thread; stop it afterwards."""
    import uvicorn

    app = create_app(discover_models(run_dir), run_dir / "split" / "test.npz", k=K)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not srv.started:
            assert time.monotonic() < deadline and thread.is_alive(), "dashboard server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", app
    finally:
        srv.should_exit = True
        thread.join(20)
    assert not thread.is_alive() and not app.state.board.runner.running


def replay_to_end(base: str) -> dict:
    """Start the replay fast and return the state once it has finished."""
    assert call(f"{base}/api/rate", {"rate": 100000})[0] == 200
    assert call(f"{base}/api/start", {})[0] == 200
    deadline = time.monotonic() + 20
    while True:
        status, state = call(f"{base}/api/state")
        if state["finished"] and not state["running"]:
            return state
        assert time.monotonic() < deadline, f"replay did not finish: {state['events_done']}/{state['events_total']}"
        time.sleep(0.05)


def offline_metrics(run_dir: Path, name: str) -> dict[str, float]:
    """Return evaluate_model's metrics for a saved model on the saved test split (re-encoded)."""
    model = load_model(run_dir / "models" / f"{name}.pt")
    data, _ = reencode_sessions(load_sessions(run_dir / "split" / "test.npz"), model.vocab)
    return evaluate_model(model, data, EvaluationConfig(protocol="session", cutoffs=(K,))).metrics


def chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run headless chromium with the flags that work offline here; return the finished process."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1400,900", "--virtual-time-budget=5000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=45, check=True)


def test_server_api_controls_and_guards(server):
    base, app = server
    status, state = call(f"{base}/api/state")
    assert status == 200 and state["models"] == ["markov", "popularity"] and state["model_name"] == "markov"
    status, body = call(f"{base}/api/model", {"model": "nope"})
    assert (status, body) == (404, {"error": "unknown model 'nope'; registered: ['markov', 'popularity']"})
    assert call(f"{base}/api/rate", {"rate": "fast"})[0] == 400
    req = urllib.request.Request(f"{base}/api/start", data=b"rate=5", method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})  # a cross-site form
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 415 and not app.state.board.runner.running
    assert call(f"{base}/api/state", headers={"Host": "evil.example"})[0] == 400  # DNS rebinding refused
    status, state = call(f"{base}/api/model", {"model": "popularity"})
    assert status == 200 and state["model_name"] == "popularity" and state["events_done"] == 0


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make chromium)")
def test_page_shows_the_offline_hit_rate_after_a_full_replay(server, run_dir, tmp_path):
    base, app = server
    state = replay_to_end(base)
    offline = offline_metrics(run_dir, "markov")
    assert state["metrics"]["hr"] == offline[f"recall@{K}"]
    assert math.isclose(state["metrics"]["mrr"], offline[f"mrr@{K}"], rel_tol=1e-12)

    dom = chromium(["--dump-dom", f"{base}/"], tmp_path).stdout
    shown = {key: text_of(dom, key) for key in ("hr", "mrr", "p50", "p95", "p99", "throughput", "targets")}
    assert shown["hr"] == f"{offline[f'recall@{K}']:.4f}" and shown["mrr"] == f"{offline[f'mrr@{K}']:.4f}"
    assert all(float(shown[key]) >= 0 for key in ("p50", "p95", "p99", "throughput")), shown
    assert int(shown["targets"]) == state["metrics"]["targets"] > 0
    assert 'class="badge hit"' in dom and "session ended" in dom  # the sessions table is filled

    png = tmp_path / "dashboard.png"
    chromium([f"--screenshot={png}", f"{base}/"], tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000  # a rendered page, not blank


def text_of(dom: str, element_id: str) -> str:
    """Return the text of the element with ``id`` in a dumped DOM (its first text run)."""
    start = dom.index(f'id="{element_id}"')
    return dom[dom.index(">", start) + 1 : dom.index("<", start + 1)].strip()
