"""The live dashboard: a Starlette app driving a ``ReplayRunner``, and a uvicorn runner.

Endpoints: ``GET /`` the page; ``GET /api/state`` the replay's state as JSON; ``POST
/api/start``, ``/api/stop``, ``/api/rate`` (``{"rate": events_per_s}``) and ``/api/model``
(``{"model": name}``, a name of ``models``). POST bodies must be JSON (``Content-Type:
application/json``): a cross-site HTML form cannot send that, so a page elsewhere cannot
drive the dashboard. Only ``allowed_hosts`` may appear in the ``Host`` header (no DNS
rebinding); the server binds 127.0.0.1 unless told otherwise, and has no authentication.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from seqrec import io
from seqrec.serving.dashboard.replay import Replay, ReplayRunner
from seqrec.models.base import Recommender
from seqrec.serving.recommend import load_model
from seqrec.sequences import SessionDataset

log = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "static" / "index.html"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_RATE = 20.0  # events per second


class Dashboard:
    """The registered models, the test data and the runner; model switches are serialised."""

    def __init__(self, models: dict[str, Path], data: SessionDataset, k: int, rate: float):
        if not models:
            raise ValueError("dashboard: no model files given")
        missing = [f"{name}={path}" for name, path in models.items() if not Path(path).is_file()]
        if missing:
            raise FileNotFoundError(f"dashboard: model files do not exist: {', '.join(missing)}")
        self.models, self.data, self.k = {n: Path(p) for n, p in models.items()}, data, k
        self.loaded: dict[str, Recommender] = {}
        self.selected = next(iter(self.models))
        self.runner = ReplayRunner(self.new_replay(self.selected), rate)
        self.switch = threading.Lock()

    def new_replay(self, name: str) -> Replay:
        """Return a fresh replay of the test data against model ``name`` (loaded once)."""
        if name not in self.models:
            raise KeyError(f"unknown model {name!r}; registered: {sorted(self.models)}")
        if name not in self.loaded:
            self.loaded[name] = load_model(self.models[name])
        return Replay(self.loaded[name], self.data, k=self.k)

    def start(self) -> None:
        """Start or resume; a finished replay starts again from the first event."""
        with self.switch:
            if self.runner.replay.finished:
                self.runner.replace(self.new_replay(self.selected))
            self.runner.start()

    def stop(self) -> None:
        """Pause the replay."""
        with self.switch:
            self.runner.stop()

    def select(self, name: str) -> None:
        """Replay model ``name`` from the first event; keep running if the replay was running."""
        with self.switch:
            replay = self.new_replay(name)  # raises before anything changes
            was_running = self.runner.running
            self.runner.replace(replay)
            self.selected = name
            if was_running:
                self.runner.start()

    def state(self) -> dict[str, Any]:
        """Return the runner's state with the selected model's name and the choices."""
        state = self.runner.state()
        state.update(model_name=self.selected, model_path=str(self.models[self.selected]), models=list(self.models))
        return state


async def read_json_body(request: Request) -> dict[str, Any]:
    """Return the request's JSON object; raise ValueError unless it is JSON (and an object)."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise PermissionError("POST bodies must be JSON (Content-Type: application/json)")
    body = await request.body()
    data = json.loads(body) if body.strip() else {}
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data


def error_response(err: Exception) -> JSONResponse:
    """Return a JSON error: 415 for a non-JSON body, 404 for an unknown model, else 400."""
    status = 415 if isinstance(err, PermissionError) else 404 if isinstance(err, KeyError) else 400
    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return JSONResponse({"error": message}, status_code=status)


def build_routes(board: Dashboard, page: str) -> list[Route]:
    """Return the page and API routes bound to ``board``."""

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def state(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(board.state))

    def action(apply):
        async def endpoint(request: Request) -> JSONResponse:
            try:
                body = await read_json_body(request)
                await run_in_threadpool(apply, body)
            except (ValueError, KeyError, PermissionError) as err:
                return error_response(err)
            return JSONResponse(await run_in_threadpool(board.state))
        return endpoint

    return [
        Route("/", index),
        Route("/api/state", state),
        Route("/api/start", action(lambda body: board.start()), methods=["POST"]),
        Route("/api/stop", action(lambda body: board.stop()), methods=["POST"]),
        Route("/api/rate", action(lambda body: board.runner.set_rate(body.get("rate"))), methods=["POST"]),
        Route("/api/model", action(lambda body: board.select(str(body.get("model")))), methods=["POST"]),
    ]


def create_app(models: dict[str, Path], data_path: Path, k: int = 20, rate: float = DEFAULT_RATE,
               allowed_hosts: tuple[str, ...] | list[str] = LOOPBACK_HOSTS) -> Starlette:
    """Return the dashboard app replaying the test set at ``data_path`` against ``models``."""
    data_path = Path(data_path)
    if not data_path.is_file():
        raise FileNotFoundError(f"dashboard: test data {data_path} does not exist (a .npz from save_sessions)")
    if not PAGE.is_file():
        raise FileNotFoundError(f"dashboard page {PAGE} is missing from the package")
    board = Dashboard(models, io.load_sessions(data_path), k, rate)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await run_in_threadpool(board.stop)  # the replay thread ends with the server

    app = Starlette(routes=build_routes(board, PAGE.read_text(encoding="utf-8")), lifespan=lifespan,
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))])
    app.state.board = board
    return app


def discover_models(run_dir: Path) -> dict[str, Path]:
    """Return model files by name: the registry's current version first, then ``<run_dir>/models/*.pt``."""
    from seqrec.serving.registry import current_version, default_registry_dir

    run_dir = Path(run_dir)
    models: dict[str, Path] = {}
    registry = default_registry_dir(run_dir.parent)  # run_dir = <output.root>/<run_name>
    current = current_version(registry) if registry.is_dir() else None
    if current is not None:
        models[f"current:{current.name}"] = current.model_path
    files = sorted((run_dir / "models").glob("*.pt")) or sorted(run_dir.glob("*.pt"))  # pipeline or `seqrec train`
    models.update({p.stem: p for p in files})
    if not models:
        raise FileNotFoundError(f"dashboard: no model files in {run_dir / 'models'} (*.pt), {run_dir} (*.pt) "
                                f"nor a registry at {registry}")
    return models


def run_dashboard(run_dir: Path, host: str = "127.0.0.1", port: int = 8050, k: int = 20) -> None:
    """Serve the dashboard for a run directory (its models and ``split/test.npz``) until interrupted."""
    import uvicorn

    run_dir = Path(run_dir)
    if host not in LOOPBACK_HOSTS:
        log.warning("dashboard: binding %s - it has no authentication; anyone who can reach it can drive it", host)
    app = create_app(discover_models(run_dir), run_dir / "split" / "test.npz", k=k,
                     allowed_hosts=tuple(dict.fromkeys([*LOOPBACK_HOSTS, host])))
    log.info("dashboard: http://%s:%d/", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
