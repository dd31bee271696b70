"""The asyncio side of the house: a trio-asyncio loop that cannot be killed by aiortc.

aiortc starts unstructured asyncio tasks (connect, RTP, RTCP, DTLS). When
one of them fails and nobody retrieves its exception, asyncio calls the
loop's exception handler, and trio-asyncio's default handler re-raises it
into the loop's nursery, which would take the whole agent down because of
one peer's closed transport. We log it instead, as a structured error event
(``rtc.asyncio_error``); the affected peer notices through its own liveness
checks and is rebuilt, and nobody else is touched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
import trio_asyncio

log = structlog.get_logger(__name__)

ErrorListener = Callable[[dict[str, Any]], None]


def _describe(context: dict[str, Any]) -> dict[str, Any]:
    exc = context.get("exception")
    where = context.get("task") or context.get("future") or context.get("handle")
    fields: dict[str, Any] = {"message": context.get("message", "")}
    if where is not None:
        fields["where"] = repr(where)[:200]
    if exc is not None:
        fields["error"] = f"{type(exc).__name__}: {exc}"
    return fields


@asynccontextmanager
async def open_aio_loop(on_error: ErrorListener | None = None) -> AsyncIterator[Any]:
    """``trio_asyncio.open_loop()`` with an exception handler that logs, not kills."""
    async with trio_asyncio.open_loop() as loop:

        def handler(_loop: Any, context: dict[str, Any]) -> None:
            try:
                exc = context.get("exception")
                log.error("rtc.asyncio_error", **_describe(context),
                          exc_info=exc if isinstance(exc, BaseException) else None)
                if on_error is not None:
                    on_error(context)
            except Exception:
                pass

        loop.set_exception_handler(handler)
        yield loop
