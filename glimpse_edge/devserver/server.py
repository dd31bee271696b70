"""Run the dev server: the ASGI app on hypercorn's Trio worker.

The server announces itself twice: a structlog event ``devserver.listening``
for people and log collectors, and one plain line on stdout,
``glimpse-devserver listening on http://HOST:PORT``, for a parent process
(the demo, the subprocess tests) that started it with ``--port 0`` and needs
to learn the port the kernel picked.
"""

from __future__ import annotations

import logging
import signal
from functools import partial
from pathlib import Path
from typing import cast

import structlog
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGIFramework

from ..supervise import sole_exception
from .app import create_app
from .hub import Hub
from .store import Store

log = structlog.get_logger(__name__)

# Largest WebSocket message accepted; bigger ones close that socket with 1009.
MAX_FRAME_BYTES = 1024 * 1024
LISTENING_PREFIX = "glimpse-devserver listening on "


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port_of(bound_url: str) -> int:
    # hypercorn reports e.g. "http://127.0.0.1:43127" or "http://[::1]:43127".
    return int(bound_url.rsplit(":", 1)[1])


def hypercorn_config(host: str, port: int) -> Config:
    """Hypercorn settings for the dev server (exposed for tests and embedding)."""
    config = Config()
    config.bind = [_bind(host, port)]
    config.websocket_max_message_size = MAX_FRAME_BYTES
    config.accesslog = None
    # Route hypercorn's own messages through stdlib logging (and from there
    # into structlog when glimpse_edge.logs is configured), not raw stderr.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 2.0
    return config


async def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    db_path: str | Path = ":memory:",
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the Glimpse-compatible API and WebSocket until cancelled.

    ``port=0`` picks a free port; ``task_status.started`` receives the real
    one. Loopback is the default on purpose: the server has no TLS and no
    rate limits, so exposing it is an explicit ``host=`` choice.
    """
    store = Store(db_path)
    actual: int | None = None
    try:
        hub = Hub()
        # Starlette's and hypercorn's ASGI type aliases differ only nominally.
        app = cast(ASGIFramework, create_app(store, hub))
        config = hypercorn_config(host, port)
        async with trio.open_nursery() as nursery:
            bound: list[str] = await nursery.start(partial(hypercorn_serve, app, config))
            actual = _port_of(bound[0])
            url = f"http://{_bind(host, actual)}"
            log.info("devserver.listening", host=host, port=actual, url=url, db=str(db_path))
            print(f"{LISTENING_PREFIX}{url}", flush=True)
            task_status.started(actual)
    except BaseExceptionGroup as group:
        # hypercorn's nested nurseries wrap a bind failure ("address in use")
        # in several groups; callers deserve the plain OSError.
        raise _sole_oserror(group) or group from None
    finally:
        store.close()
        if actual is not None:
            log.info("devserver.stopped", host=host, port=actual)


def _sole_oserror(group: BaseExceptionGroup[BaseException]) -> OSError | None:
    """The group's only real error if it is an OSError (Cancelled does not count)."""
    exc = sole_exception(group)
    return exc if isinstance(exc, OSError) else None


async def serve_until_signal(
    host: str = "127.0.0.1", port: int = 8080, db_path: str | Path = ":memory:"
) -> None:
    """Run :func:`serve` until SIGTERM or SIGINT, then stop cleanly.

    For a process whose only job is the dev server (``python -m
    glimpse_edge.devserver``, the CLI): systemd and test harnesses stop it
    with SIGTERM, and the database should be closed properly when they do.
    Must run in the main thread (signal handling).
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(serve, host, port, db_path))
                async for signum in signals:
                    log.info("devserver.signal_received", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
        except BaseExceptionGroup as group:
            raise _sole_oserror(group) or group from None
