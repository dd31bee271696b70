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

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import structlog
import trio_asyncio

from . import compat

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

log = structlog.get_logger(__name__)

ErrorListener = Callable[[dict[str, Any]], None]

# A closed connection's senders and receivers are stopped once more this long
# after close(): by then whatever its connect task still had to do is done.
REAP_AFTER: Final = 2.0
REAP_TIMEOUT: Final = 5.0
_reaping: set[asyncio.Task[None]] = set()


async def close_peer_connection(pc: RTCPeerConnection) -> None:
    """``pc.close()``, and a second stop of its senders and receivers a little later.

    For the asyncio side (call it with ``aio_as_trio``). aiortc's connect task
    goes on after ``close()``: when DTLS comes up just then, it starts a
    sender's or receiver's RTP/RTCP tasks on the closed connection, and they
    run forever (3 of 120 closes at random moments, measured). Stopping them
    again once that task is through is harmless when nothing was started
    (``stop()`` only acts on a started sender or receiver).
    """
    await pc.close()
    # Only a weak reference meanwhile: a connection with nothing left running is
    # freed at once, as before; one whose tasks live on is kept alive by them.
    ref = weakref.ref(pc)
    loop = asyncio.get_running_loop()

    def reap() -> None:
        if (closed := ref()) is not None:
            task = loop.create_task(_reap(closed))
            _reaping.add(task)  # asyncio keeps only weak references to tasks
            task.add_done_callback(_reaping.discard)

    loop.call_later(REAP_AFTER, reap)


def _tasks_of(pc: RTCPeerConnection) -> int:
    """asyncio tasks running a method of one of ``pc``'s senders or receivers."""
    owners = {id(part) for t in pc.getTransceivers() for part in (t.sender, t.receiver)}
    count = 0
    for task in asyncio.all_tasks():
        frame = getattr(task.get_coro(), "cr_frame", None)
        if frame is not None and id(frame.f_locals.get("self")) in owners:
            count += 1
    return count


async def _reap(pc: RTCPeerConnection) -> None:
    async def stop_all() -> None:
        for transceiver in pc.getTransceivers():
            await transceiver.sender.stop()
            await transceiver.receiver.stop()

    before = _tasks_of(pc)
    with contextlib.suppress(Exception):  # a closed connection: nothing to report
        await asyncio.wait_for(stop_all(), REAP_TIMEOUT)
    stopped = before - _tasks_of(pc)
    if stopped > 0:
        log.info("rtc.reaped", tasks=stopped,
                 detail="tasks started on a connection after it was closed")


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
    """``trio_asyncio.open_loop()`` with an exception handler that logs, not kills.

    First checks that aiortc, aioice and trio-websocket have every internal
    the agent relies on, and applies the class-wide patches
    (:func:`.compat.install`): an incompatible library raises
    :class:`.compat.IncompatibleLibrary` here, when the agent starts.
    """
    compat.install()
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
