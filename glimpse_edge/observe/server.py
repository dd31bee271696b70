"""The observe endpoint: a small Starlette app on hypercorn's Trio worker.

Hypercorn + Starlette are what the dev server already runs on, both well kept
and Trio-native through hypercorn's worker, so the agent gains no new web
stack. The endpoint is for local tools and a Prometheus scraper: loopback by
default, no authentication, nothing that changes state.

Observation must never cost the device its job: the server runs under
supervision that retries forever with back-off (a port that is taken is
logged as ``observe.bind_failed`` and retried, the agent keeps streaming),
every handler turns its own failure into a 500 with a log line, and the slow
parts (aiortc stats, JPEG) are bounded and off the media path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial, wraps
from typing import cast

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGIFramework
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..supervise import Backoff, RestartPolicy, sole_exception, supervise
from .metrics import build_registry
from .peerstats import PeerStatsSampler
from .snapshot import NoPicture, Snapshotter
from .status import build_status, iso
from .statusview import url_for
from .view import AgentView

log = structlog.get_logger(__name__)

# Retry a failed bind (port taken, address gone) forever, slowly.
OBSERVE_POLICY = RestartPolicy(name="observe", backoff=Backoff(initial=2.0, maximum=60.0),
                               max_restarts=1_000_000)

INDEX = """glimpse-edge observe endpoint

/metrics       Prometheus metrics (text format)
/status        status as JSON (glimpse-edge status shows it as a table)
/snapshot.jpg  the latest camera picture
"""

Handler = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Handler) -> Handler:
    """A handler's bug becomes a logged 500, never a broken server."""

    @wraps(handler)
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            log.error("observe.request_failed", path=request.url.path, exc_info=exc)
            return PlainTextResponse(f"internal error: {type(exc).__name__}: {exc}\n",
                                     status_code=500)

    return run


def create_app(agent: AgentView, sampler: PeerStatsSampler, snapshots: Snapshotter) -> Starlette:
    """The ASGI app: /metrics, /status, /snapshot.jpg (and an index at /)."""
    registry = build_registry(agent, sampler)

    async def index(_request: Request) -> Response:
        return PlainTextResponse(INDEX)

    async def metrics(request: Request) -> Response:
        await sampler.refresh(agent.peers)
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(registry), headers={"Content-Type": content_type})

    async def status(_request: Request) -> Response:
        stats = await sampler.refresh(agent.peers)
        return JSONResponse(build_status(agent, stats))

    async def snapshot(_request: Request) -> Response:
        try:
            shot = await snapshots.take()
        except NoPicture as exc:
            return PlainTextResponse(f"{exc}\n", status_code=503, headers={"Retry-After": "1"})
        return Response(shot.jpeg, media_type="image/jpeg", headers={
            "Cache-Control": "no-store",
            "X-Snapshot-Time": iso(shot.taken_at) or "",
        })

    routes = [
        Route("/", _guarded(index)),
        Route("/metrics", _guarded(metrics)),
        Route("/status", _guarded(status)),
        Route("/snapshot.jpg", _guarded(snapshot)),
    ]
    return Starlette(routes=routes)


def hypercorn_config(host: str, port: int) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    # hypercorn's own messages go through stdlib logging into our log stream;
    # its "Running on ..." chatter is ours to say (observe.listening).
    errorlog = logging.getLogger("glimpse_edge.observe.http")
    errorlog.setLevel(logging.WARNING)
    config.errorlog = errorlog
    config.graceful_timeout = 1.0  # SIGTERM must stop the agent within 5 s
    config.include_server_header = False
    return config


async def run_observe_server(
    agent: AgentView,
    address: tuple[str, int],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled, retrying a failed start with back-off (task "observe")."""
    await supervise("observe", partial(_serve, agent, address), policy=OBSERVE_POLICY,
                    health=agent.health, task_status=task_status)


async def _serve(agent: AgentView, address: tuple[str, int]) -> None:
    host, port = address
    sampler = PeerStatsSampler()
    snapshots = Snapshotter(lambda: agent.hub)
    # Starlette's and hypercorn's ASGI type aliases differ only nominally.
    app = cast(ASGIFramework, create_app(agent, sampler, snapshots))
    listening = False
    try:
        async with trio.open_nursery() as nursery:
            bound: list[str] = await nursery.start(
                partial(hypercorn_serve, app, hypercorn_config(host, port)))
            listening = True
            actual = int(bound[0].rsplit(":", 1)[1])  # "http://127.0.0.1:9750", "http://[::1]:…"
            log.info("observe.listening", host=host, port=actual, url=url_for(host, actual))
            nursery.start_soon(sampler.run, lambda: agent.peers)
    except BaseExceptionGroup as group:
        # hypercorn nests nurseries: hand supervise the one real error
        error = sole_exception(group)
        if not listening and isinstance(error, OSError):
            log.error("observe.bind_failed", host=host, port=port, error=str(error))
        raise error from error.__cause__  # siblings stay (see sole_exception)
