"""Replay a test set as a live event stream against a model, with rolling next-item metrics.

The stream: every event of the test sessions, ordered by (timestamp, session, position), so
sessions that overlap in time are in flight together and the order is deterministic. After
each event the model is asked for its top K through the serving API (``recommend_topk``,
the function behind ``recommend_indices``), one batched call per replay step; when the
session's next event arrives, the earlier list is judged: hit if the item is within K, and
its reciprocal rank.

Protocol, chosen so that a full replay equals ``evaluate_model(model, data, cfg)`` with
``protocol: session`` (targets = every event after the first), ``candidates: full``:

* **ties** conservative, as offline: rank = number of items scoring >= the target. The
  replay fetches the top ``K + 1`` items with their scores. If the target is among them and
  at most K listed items score >= it, every unlisted item scores below it (they score <= the
  (K+1)-th, which is below the target), so that count is the full-ranking rank; otherwise
  K + 1 items score >= the target and it is a miss at K. Membership in ``torch.topk``'s
  first K alone would count a hit where a tie at the boundary makes it a miss offline.
* **exclude_seen** ``False`` by default, GRU4Rec's protocol and the config's default: items
  of the prefix stay candidates. With ``True`` the replay matches ``evaluate_model(...,
  exclude_seen=True)`` (a repeated target is then a miss in both).
* **vocabulary**: the data is re-encoded to the model's vocabulary with ``reencode_sessions``
  (unknown items removed, sessions shorter than 2 dropped), as ``evaluate_trained_model``
  does, and the counts are part of the state.

Count baselines agree exactly, target by target. Neural models score a prefix with
``score_last`` here and step by step offline: the same up to float rounding.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from seqrec.evaluation.metrics import metrics_from_ranks
from seqrec.models.base import Recommender
from seqrec.serving.recommend import model_vocab, recommend_topk
from seqrec.sequences import SessionDataset, reencode_sessions

SHOWN_ITEMS = 5  # last items of a session shown in the state
MAX_RATE = 1e6  # events per second


@dataclass(frozen=True)
class EventStream:
    """Test events in replay order: the session (index) and position in it of each event."""

    sessions: np.ndarray  # (N,) int64
    positions: np.ndarray  # (N,) int64


def order_events(data: SessionDataset) -> EventStream:
    """Return every event ordered by (timestamp, session index, position in the session)."""
    lengths = data.lengths
    sessions = np.repeat(np.arange(data.n_sessions), lengths)  # (N,)
    positions = np.arange(data.n_events) - np.repeat(data.offsets[:-1], lengths)  # (N,)
    order = np.lexsort((positions, sessions, data.times))  # last key sorts first
    return EventStream(sessions[order], positions[order])


def rank_in_list(indices: np.ndarray, scores: np.ndarray, target: int, k: int) -> float:
    """Return the conservative full-ranking rank of ``target`` from the top K + 1 list, or inf beyond K."""
    where = np.flatnonzero(indices == target)
    if len(where) == 0 or np.isneginf(scores[where[0]]):
        return float("inf")
    rank = int((scores >= scores[where[0]]).sum())  # listed items scoring >= the target, itself included
    return float(rank) if rank <= k else float("inf")


@dataclass
class SessionView:
    """What the dashboard shows of one session: its latest items, pending list and latest outcome."""

    key: str
    length: int
    events: int = 0  # events replayed so far
    tail: list[int] = field(default_factory=list)  # the last SHOWN_ITEMS items
    pending: np.ndarray | None = None  # (K + 1,) dense indices recommended after the latest event
    pending_scores: np.ndarray | None = None  # (K + 1,)
    judged: np.ndarray | None = None  # the list the latest event was judged against
    last_rank: float | None = None  # rank of the latest event in ``judged`` (inf = miss)
    touched: int = 0  # stream position of the latest event

    @property
    def in_flight(self) -> bool:
        """Whether the session has events still to come."""
        return self.events < self.length


class RollingMetrics:
    """HR@K / MRR@K over all targets and a recent window; request latencies and their times."""

    def __init__(self, k: int, n_targets: int, window: int, latency_window: int):
        self.k, self.window = k, window
        self.ranks = np.empty(n_targets, dtype=np.float64)  # in replay order
        self.events = np.empty(n_targets, dtype=np.int64)  # global event index of each target
        self.n = 0
        self.latencies: deque[float] = deque(maxlen=latency_window)  # seconds per request
        self.requests = 0

    def add_rank(self, rank: float, event: int) -> None:
        """Record the rank of one target event."""
        self.ranks[self.n], self.events[self.n] = rank, event
        self.n += 1

    def add_request(self, seconds: float, batch: int) -> None:
        """Record one batched call: each of its ``batch`` requests waited ``seconds``."""
        self.latencies.extend([seconds] * batch)
        self.requests += batch

    def summary(self) -> dict:
        """Return hit rate and MRR (all, recent) and latency percentiles in milliseconds."""
        k = self.k
        out: dict = {"k": k, "targets": self.n, "hr": None, "mrr": None,
                     "recent": {"window": self.window, "targets": min(self.n, self.window), "hr": None, "mrr": None}}
        if self.n:
            every = metrics_from_ranks(self.ranks[: self.n], [k])  # the offline formula
            recent = metrics_from_ranks(self.ranks[max(0, self.n - self.window) : self.n], [k])
            out.update(hr=every[f"hr@{k}"], mrr=every[f"mrr@{k}"])
            out["recent"].update(hr=recent[f"hr@{k}"], mrr=recent[f"mrr@{k}"])
        out["curve"] = self.curve()
        lat = np.array(self.latencies) * 1e3
        out["latency_ms"] = {f"p{q}": (float(np.percentile(lat, q)) if len(lat) else None) for q in (50, 95, 99)}
        out["latency_ms"]["window"] = len(lat)
        return out


    def curve(self, points: int = 120) -> dict:
        """Return HR@K over all targets and over the recent window after n targets, at up to ``points`` n."""
        if self.n == 0:
            return {"targets": [], "hr": [], "recent_hr": []}
        hits = np.concatenate([[0], np.cumsum(self.ranks[: self.n] <= self.k)])  # (n + 1,) hits among first n
        at = np.unique(np.linspace(1, self.n, min(points, self.n)).round().astype(np.int64))
        start = np.maximum(at - self.window, 0)
        return {"targets": at.tolist(), "hr": (hits[at] / at).tolist(),
                "recent_hr": ((hits[at] - hits[start]) / (at - start)).tolist()}


class Replay:
    """A deterministic replay of ``data`` against ``model``: call ``step`` until ``finished``."""

    def __init__(self, model: Recommender, data: SessionDataset, k: int = 20, exclude_seen: bool = False,
                 window: int = 500, latency_window: int = 2000, shown: int = 12):
        vocab = model_vocab(model)
        if not 0 < k <= vocab.size:
            raise ValueError(f"replay: k={k} must be between 1 and the model's catalogue size {vocab.size}")
        self.model, self.k, self.exclude_seen, self.shown = model, k, exclude_seen, shown
        self.data, self.reencoding = reencode_sessions(data, vocab)  # same targets as evaluate_trained_model
        self.stream = order_events(self.data)
        self.metrics = RollingMetrics(k, int((self.data.lengths - 1).sum()), window, latency_window)
        self.views: dict[int, SessionView] = {}  # session index -> view, every session seen so far
        self.cursor = 0  # events replayed
        self.in_flight = 0  # sessions started and not ended
        self.lock = threading.Lock()

    @property
    def n_events(self) -> int:
        """Number of events in the stream."""
        return len(self.stream.sessions)

    @property
    def finished(self) -> bool:
        """Whether every event has been replayed."""
        return self.cursor >= self.n_events

    def next_batch(self, limit: int) -> np.ndarray:
        """Return stream positions of the next events, at most ``limit``, no session twice."""
        end = min(self.cursor + max(limit, 1), self.n_events)
        sessions = self.stream.sessions[self.cursor : end]
        _, first = np.unique(sessions, return_index=True)
        repeated = np.setdiff1d(np.arange(len(sessions)), first)  # a session's later event waits for its list
        stop = int(repeated.min()) if len(repeated) else len(sessions)
        return np.arange(self.cursor, self.cursor + stop)

    def prefixes(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (items (B, L) left-aligned, lengths (B,)): each session up to and including its event."""
        sessions, lengths = self.stream.sessions[batch], self.stream.positions[batch] + 1
        items = np.zeros((len(batch), int(lengths.max())), dtype=np.int64)  # (B, L)
        for row, (s, n) in enumerate(zip(sessions, lengths)):
            items[row, :n] = self.data.items[self.data.offsets[s] : self.data.offsets[s] + n]
        return items, lengths

    def step(self, limit: int = 256) -> int:
        """Replay up to ``limit`` events (one batched model call); return how many were replayed."""
        if self.finished:
            return 0
        batch = self.next_batch(limit)
        items, lengths = self.prefixes(batch)
        fetch = min(self.k + 1, self.data.vocab.size)  # one more than K: ties at the boundary
        start = time.perf_counter()
        with torch.no_grad():
            top, scores = recommend_topk(self.model, items, lengths, fetch, self.exclude_seen)  # (B, K + 1) each
        seconds = time.perf_counter() - start
        with self.lock:
            for row, pos in enumerate(batch):
                self.record_event(int(pos), items[row, : lengths[row]], top[row], scores[row])
            self.metrics.add_request(seconds, len(batch))
            self.cursor = int(batch[-1]) + 1
        return len(batch)

    def record_event(self, pos: int, prefix: np.ndarray, top: np.ndarray, scores: np.ndarray) -> None:
        """Judge the session's pending list against this event, then store the new list."""
        s = int(self.stream.sessions[pos])
        view = self.views.get(s)
        if view is None:
            view = self.views[s] = SessionView(str(self.data.session_keys[s]), int(self.data.lengths[s]))
        if view.pending is not None:  # this event is the target of the previous list
            rank = rank_in_list(view.pending, view.pending_scores, int(prefix[-1]), self.k)
            self.metrics.add_rank(rank, int(self.data.offsets[s]) + len(prefix) - 1)
            view.judged, view.last_rank = view.pending, rank
        view.events, view.tail, view.touched = len(prefix), prefix[-SHOWN_ITEMS:].tolist(), pos
        view.pending, view.pending_scores = (top, scores) if view.in_flight else (None, None)  # ended: no target
        self.in_flight += (len(prefix) == 1) - (not view.in_flight)

    def session_rows(self) -> list[dict]:
        """Return the most recently active sessions as JSON-safe rows, newest first."""
        ids = self.data.vocab.ids
        recent = heapq.nlargest(self.shown, self.views.values(), key=lambda v: v.touched)
        rows = []
        for v in recent:
            hit = None if v.last_rank is None else bool(np.isfinite(v.last_rank))
            rows.append({
                "session": v.key, "events": v.events, "length": v.length, "in_flight": v.in_flight,
                "last_items": [str(ids[i]) for i in v.tail],
                "judged": None if v.judged is None else [str(ids[i]) for i in v.judged[: self.k] if i > 0],
                "hit": hit, "rank": int(v.last_rank) if hit else None,
                "recommendations": [str(ids[i]) for i in v.pending[: self.k] if i > 0] if v.in_flight else [],
            })
        return rows

    def state(self) -> dict:
        """Return a JSON-safe snapshot: progress, rolling metrics, latencies and recent sessions."""
        with self.lock:
            return {
                "model": self.model.name, "k": self.k, "exclude_seen": self.exclude_seen,
                "events_done": self.cursor, "events_total": self.n_events, "finished": self.finished,
                "requests": self.metrics.requests, "sessions_in_flight": self.in_flight,
                "sessions_seen": len(self.views), "sessions_total": self.data.n_sessions,
                "metrics": self.metrics.summary(), "sessions": self.session_rows(), "reencoding": self.reencoding,
                "protocol": "session targets, full ranking, conservative ties, exclude_seen="
                            f"{self.exclude_seen} (= evaluate_model, protocol 'session')",
            }


def replay_all(replay: Replay, batch: int = 256) -> Replay:
    """Replay every remaining event as fast as possible; return the replay."""
    while replay.step(batch):
        pass
    return replay


class ReplayRunner:
    """Paces a ``Replay`` at ``rate`` events per second in a background thread."""

    def __init__(self, replay: Replay, rate: float = 20.0, max_batch: int = 256):
        self.replay, self.max_batch = replay, max_batch
        self.rate = check_rate(rate)
        self.thread: threading.Thread | None = None
        self.halt = threading.Event()
        self.error: str | None = None
        self.active_seconds = 0.0  # time spent running, pauses excluded
        self.marks: deque[tuple[float, int]] = deque(maxlen=64)  # (monotonic time, events done)

    @property
    def running(self) -> bool:
        """Whether the background thread is replaying."""
        return self.thread is not None and self.thread.is_alive()

    def set_rate(self, rate: float) -> float:
        """Change the pace (events per second); return it."""
        self.rate = check_rate(rate)
        return self.rate

    def start(self) -> None:
        """Start (or resume) replaying in a daemon thread; a finished replay is left as is."""
        if self.running or self.replay.finished:
            return
        self.halt.clear()
        self.error = None
        self.thread = threading.Thread(target=self.loop, name="seqrec-replay", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for it (at most ``timeout`` seconds)."""
        self.halt.set()
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                raise RuntimeError(f"replay thread did not stop within {timeout} s")
        self.thread = None

    def replace(self, replay: Replay) -> None:
        """Stop, then replay ``replay`` from its start (throughput counters reset)."""
        self.stop()
        self.replay, self.active_seconds, self.error = replay, 0.0, None
        self.marks.clear()

    def loop(self) -> None:
        """Replay events as the rate allows until stopped or finished; keep an error for the state."""
        last, credit = time.monotonic(), 0.0
        try:
            while not self.halt.is_set() and not self.replay.finished:
                now = time.monotonic()
                credit = min(credit + (now - last) * self.rate, float(self.max_batch))  # no bursts after a stall
                self.active_seconds += now - last
                last = now
                if credit < 1.0:
                    self.halt.wait(min((1.0 - credit) / self.rate, 0.05))
                    continue
                credit -= self.replay.step(int(credit))
                self.marks.append((time.monotonic(), self.replay.cursor))
            self.active_seconds += time.monotonic() - last
        except Exception as err:  # shown on the page; the thread must not die silently
            self.error = f"{type(err).__name__}: {err}"
            raise

    def throughput(self) -> dict:
        """Return events per second over the running time and over the last marks (about 2 s)."""
        done = self.replay.cursor
        overall = done / self.active_seconds if self.active_seconds > 0 else None
        marks = [m for m in list(self.marks) if m[0] >= time.monotonic() - 2.0]  # copy: the thread appends
        recent = None
        if len(marks) > 1 and marks[-1][0] > marks[0][0]:
            recent = (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])
        return {"events_per_s": overall, "recent_events_per_s": recent, "active_seconds": self.active_seconds}

    def state(self) -> dict:
        """Return the replay's state plus running flag, rate, throughput and any error."""
        return {**self.replay.state(), "running": self.running, "rate": self.rate,
                "throughput": self.throughput(), "error": self.error}


def check_rate(rate: float) -> float:
    """Return ``rate`` as a float if it is a positive number of events per second (at most 1e6)."""
    try:
        value = float(rate)
    except (TypeError, ValueError) as err:
        raise ValueError(f"rate={rate!r} is not a number of events per second") from err
    if not 0 < value <= MAX_RATE:
        raise ValueError(f"rate={rate!r} must be > 0 and <= {MAX_RATE:g} events per second")
    return value
