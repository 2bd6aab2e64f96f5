"""``seqrec serve``: recommendations over HTTP (Starlette on uvicorn), for a model file or a registry's current version.

``POST /recommend`` takes JSON ``{"sessions": [[item, ...], ...], "k": 10, "exclude_seen": true,
"unknown_items": "error"}`` (or ``"session": [...]`` for one) and answers ``{"recommendations":
[[item, ...], ...], "k", "model", "version", "index", "unknown_items"}`` with item ids in the
original id space. ``GET /health`` names the model, version and index. Bad input never reaches the
model: malformed JSON is a 400; a missing or wrongly typed field, an empty session, an item the
model does not know (unless ``"unknown_items": "ignore"``), ``k`` out of range or too many sessions
is a 422 whose ``error`` names the field (``sessions[2][0]``).

Serving a registry directory follows its ``current`` pointer: a background thread looks every
``serving.reload_seconds`` and, when the pointer names another version, loads it (and its index)
before swapping it in, so requests never wait for a load and never see half a model.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqrec.config import ServingConfig
from seqrec.models.base import Recommender
from seqrec.serving.ann import AnnIndex
from seqrec.serving.indexes import index_for
from seqrec.serving.recommend import load_model, model_vocab, recommend, vocab_index
from seqrec.serving.registry import POINTER, current_version

log = logging.getLogger(__name__)
FIELDS = ("sessions", "session", "k", "exclude_seen", "unknown_items")


class BadRequest(ValueError):
    """A request the server refuses; ``status`` 400 (not JSON) or 422 (a field), the message names the field."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Served:
    """What answers requests: the model, its id look-up, its index and which version it is."""

    model: Recommender
    ids: dict[str, int]
    index: AnnIndex | None
    version: str
    path: Path

    def describe(self) -> dict[str, Any]:
        """Return the model, version, catalogue size and index that answer now."""
        return {"model": self.model.name, "version": self.version, "path": str(self.path), "items": len(self.ids),
                "index": self.index.describe() if self.index is not None else {"index": "exact"}}


def load_served(model_path: Path, version: str, serving: ServingConfig) -> Served:
    """Return a model file's ``Served`` with its index (loaded from beside the file, or built and saved there)."""
    model = load_model(model_path)
    ids = vocab_index(model_vocab(model))
    return Served(model, ids, index_for(model, model_path, serving), version, model_path)


class ModelSource:
    """The model being served: a model file, or a registry's current version followed as it changes."""

    def __init__(self, target: Path | str, serving: ServingConfig):
        self.target, self.serving = Path(target), serving
        self.registry = self.target.is_dir()
        self.stop = threading.Event()
        self.served = self.load()

    def load(self) -> Served:
        """Return the model file's, or the registry's current version's, ``Served``."""
        if not self.registry:
            if not self.target.is_file():
                raise FileNotFoundError(f"model file {self.target} does not exist")
            return load_served(self.target, self.target.name, self.serving)
        version = current_version(self.target)
        if version is None:
            raise FileNotFoundError(f"registry {self.target} has no current version ({self.target / POINTER} is missing)")
        return load_served(version.model_path, version.name, self.serving)

    def follow(self) -> None:
        """Swap in the registry's current version whenever its pointer changes, until ``stop`` is set."""
        while not self.stop.wait(self.serving.reload_seconds):
            try:
                version = current_version(self.target)
                if version is not None and version.name != self.served.version:
                    log.info("registry %s: loading %s", self.target, version.name)
                    self.served = load_served(version.model_path, version.name, self.serving)
                    log.info("registry %s: now serving %s", self.target, version.name)
            except Exception as err:  # keep serving the loaded version; say why the new one was not taken
                log.warning("registry %s: kept %s, could not load the current version: %s", self.target,
                            self.served.version, err)


def item_id(value: Any, field: str) -> str:
    """Return an item id as the vocabulary spells it (a string); ints are accepted, other types are not."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise BadRequest(f"field '{field}': an item id must be a non-empty string or an integer, got {json.dumps(value)}")


def parse_sessions(body: dict, ids: dict[str, int], strict: bool, max_sessions: int) -> tuple[list[list[str]], int]:
    """Return the request's sessions (lists of known original ids) and how many unknown ids were dropped."""
    if ("sessions" in body) == ("session" in body):
        raise BadRequest("field 'sessions' (a list of sessions, each a list of item ids) or 'session' (one list) is required, not both")
    raw, name = (body["sessions"], "sessions") if "sessions" in body else ([body["session"]], "session")
    if not isinstance(raw, list) or not raw or len(raw) > max_sessions:
        raise BadRequest(f"field '{name}' must be a list of 1 to {max_sessions} sessions, got "
                         f"{len(raw) if isinstance(raw, list) else type(raw).__name__}")
    sessions, unknown = [], 0
    for i, session in enumerate(raw):
        field = f"sessions[{i}]" if name == "sessions" else "session"
        if not isinstance(session, list) or not session:
            raise BadRequest(f"field '{field}' must be a non-empty list of item ids, got {json.dumps(session)[:80]}")
        items = [item_id(v, f"{field}[{j}]") for j, v in enumerate(session)]
        known = [v for v in items if v in ids]
        if strict and len(known) < len(items):
            j = next(j for j, v in enumerate(items) if v not in ids)
            raise BadRequest(f"field '{field}[{j}]': item {items[j]!r} is not in the model's catalogue "
                             "(send \"unknown_items\": \"ignore\" to skip such items)")
        if not known:
            raise BadRequest(f"field '{field}': none of its {len(items)} items is in the model's catalogue")
        unknown += len(items) - len(known)
        sessions.append(known)
    return sessions, unknown


def parse_options(body: dict, n_items: int, max_k: int) -> tuple[int, bool, bool]:
    """Return (k, exclude_seen, strict about unknown items) from the request."""
    extra = sorted(set(body) - set(FIELDS))
    if extra:
        raise BadRequest(f"unknown field '{extra[0]}'; the fields are {', '.join(FIELDS)}")
    k, exclude_seen, unknown = body.get("k", 10), body.get("exclude_seen", True), body.get("unknown_items", "error")
    top = min(max_k, n_items)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= top:
        raise BadRequest(f"field 'k' must be an integer between 1 and {top}, got {json.dumps(k)}")
    if not isinstance(exclude_seen, bool):
        raise BadRequest(f"field 'exclude_seen' must be true or false, got {json.dumps(exclude_seen)}")
    if unknown not in ("error", "ignore"):
        raise BadRequest(f"field 'unknown_items' must be \"error\" or \"ignore\", got {json.dumps(unknown)}")
    return k, exclude_seen, unknown == "error"


def answer(served: Served, raw: bytes, serving: ServingConfig) -> dict[str, Any]:
    """Return the response to one request body; raise ``BadRequest`` naming what is wrong with it."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise BadRequest(f"the request body is not valid JSON: {err}", status=400) from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}", status=400)
    k, exclude_seen, strict = parse_options(body, len(served.ids), serving.max_k)
    sessions, unknown = parse_sessions(body, served.ids, strict, serving.max_sessions)
    if exclude_seen and k > len(served.ids) - max(len(set(s)) for s in sessions):
        raise BadRequest(f"field 'k': {k} is more than the catalogue holds once a session's own items are excluded")
    recs = recommend(served.model, sessions, k=k, exclude_seen=exclude_seen, index=served.index)
    return {"recommendations": [list(r) for r in recs], "k": k, "model": served.model.name,
            "version": served.version, "index": recs.index["index"], "unknown_items": unknown}


def build_app(source: ModelSource):
    """Return the Starlette app answering from ``source`` (its registry thread runs while the app does)."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def post_recommend(request: Request) -> JSONResponse:
        try:
            return JSONResponse(answer(source.served, await request.body(), source.serving))
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)

    async def get_health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", **source.served.describe()})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        thread = threading.Thread(target=source.follow, name="registry-follow", daemon=True) if source.registry else None
        if thread is not None:
            thread.start()
        try:
            yield
        finally:
            source.stop.set()

    return Starlette(routes=[Route("/recommend", post_recommend, methods=["POST"]), Route("/health", get_health)],
                     lifespan=lifespan)


def serve(target: Path | str, serving: ServingConfig) -> None:
    """Serve ``target`` (a model file or a registry directory) on ``serving.host``:``serving.port`` until interrupted."""
    import sys

    import uvicorn

    print(f"seqrec serve: loading {target} (index {serving.index}; an approximate index missing beside the model is "
          "built now, minutes for millions of items)", file=sys.stderr, flush=True)
    source = ModelSource(target, serving)
    d = source.served.describe()
    index = d["index"]
    recall = next((f"{key} {value}" for key, value in index.items() if key.startswith("recall@")), "")
    print(f"seqrec serve: {d['model']} {d['version']} ({d['items']} items, index {index['index']}"
          f"{', ' + recall if recall else ''}) on http://{serving.host}:{serving.port}", flush=True)
    uvicorn.run(build_app(source), host=serving.host, port=serving.port, log_level="warning", access_log=False)

