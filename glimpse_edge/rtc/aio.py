"""The bridge between Trio and asyncio: the one loop, and every crossing of it.

Trio owns the process. aiortc is asyncio code, run by trio-asyncio on the
same thread, inside Trio. Each way the agent crosses between the two is a
named helper here, so that a reader finds every crossing in one module:

Trio to asyncio
    :func:`call_aio`: await one of aiortc's coroutines from a Trio task
    (negotiation, ``getStats``, close). Cancellation crosses too: a
    cancelled Trio caller cancels the asyncio side and waits for it.

    :func:`aio_future` / :func:`wake_aio`: the per-packet path. aiortc's
    sender task (asyncio) parks on a future that the Trio side resolves when
    it queues a packet: far cheaper than starting a Trio task per packet with
    ``trio_as_aio``. Also how a track waits to be bound to its queue.

asyncio to Trio
    :func:`on_aio_event`: aiortc's events (pyee) become messages for a
    Trio task. pyee runs handlers inside trio-asyncio's loop task, which is a
    Trio task, so a handler may call Trio's non-blocking API (``send_nowait``,
    :class:`~.inbox.Inbox`); it must never block or raise. aiortc's RTCP
    hooks (:mod:`.compat`) post to the same inboxes from the same place.

Unstructured asyncio work
    :func:`spawn_aio`: an asyncio task started for aiortc's sake (draining a
    received track, reaping a closed connection), kept referenced until done.

The loop itself
    :func:`open_aio_loop`: trio-asyncio's loop, whose exception handler logs
    aiortc's stray task errors instead of killing the agent;
    :func:`current_aio_loop` for counting its tasks.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar

import structlog
import trio_asyncio

from . import compat

__all__ = [
    "aio_future",
    "call_aio",
    "current_aio_loop",
    "on_aio_event",
    "open_aio_loop",
    "spawn_aio",
    "spawn_aio_threadsafe",
    "wake_aio",
]

log = structlog.get_logger(__name__)

ErrorListener = Callable[[dict[str, Any]], None]
P = ParamSpec("P")
T = TypeVar("T")

# asyncio keeps only weak references to tasks: spawn_aio's live here until done.
_running: set[asyncio.Task[Any]] = set()


# -- Trio -> asyncio -------------------------------------------------------------


async def call_aio(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Await the asyncio coroutine function ``fn(*args, **kwargs)`` from Trio.

    An aiortc coroutine awaited directly from Trio fails ("unrecognized
    yield message"); trio-asyncio's ``aio_as_trio`` runs it as an asyncio
    task and waits. Cancelling the Trio caller cancels that task and waits
    until the asyncio side has finished; its CancelledError comes back as
    ``trio.Cancelled``. Not for per-packet paths (see :func:`aio_future`).
    """
    result: T = await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)
    return result


def aio_future() -> asyncio.Future[None]:
    """A future for an asyncio reader to park on until the Trio side calls :func:`wake_aio`.

    Call it from asyncio (aiortc's sender task, in a track's ``recv``). Both
    sides run on one thread, so no locking: the cheapest crossing there is,
    used once per packet by the fan-out queues.
    """
    return asyncio.get_running_loop().create_future()


def wake_aio(waiter: asyncio.Future[None] | None) -> None:
    """Wake the asyncio reader parked on ``waiter`` (from Trio; never raises).

    Does nothing without a waiter or when it was already woken or cancelled
    (its reader went away).
    """
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


# -- asyncio -> Trio -------------------------------------------------------------


def on_aio_event(emitter: Any, event: str, handler: Callable[..., object]) -> None:
    """Call ``handler`` on each of ``emitter``'s ``event`` (aiortc's pyee events).

    The handler runs in trio-asyncio's loop task: it may hand the event to a
    Trio task with Trio's non-blocking calls, and must return at once. pyee
    re-raises a handler's exception into aiortc (a raising handler made
    ``pc.close()`` stop half-way, in the shared brief's experiments), so an
    exception is logged (``rtc.event_handler_error``) and goes no further.
    """

    def guarded(*args: Any) -> None:
        try:
            handler(*args)
        except Exception as exc:
            log.error("rtc.event_handler_error", event=event,
                      error=f"{type(exc).__name__}: {exc}")

    emitter.on(event, guarded)


# -- unstructured asyncio work ---------------------------------------------------


def spawn_aio(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run ``coro`` as an asyncio task on the agent's loop, referenced until it ends.

    For asyncio work that aiortc's model imposes and no Trio task can own: a
    received track must be drained by an asyncio reader for as long as it
    lives; a closed connection is reaped by a timer on the loop. Call it
    from the asyncio side (an aiortc event handler, a loop callback). The
    caller keeps the task if it may have to cancel it; an error that
    nobody retrieves goes to :func:`open_aio_loop`'s handler (logged).
    """
    task = asyncio.ensure_future(coro)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


def spawn_aio_threadsafe(loop: asyncio.AbstractEventLoop,
                         make: Callable[[], Coroutine[Any, Any, object]]) -> bool:
    """From any thread: run ``make()`` on ``loop`` as a :func:`spawn_aio` task.

    For work a thread of our own (a display decoder) asks of aiortc, whose
    objects belong to the loop: the coroutine is made and started on the
    loop's thread, never on the caller's. Never blocks; an error in the task
    goes to :func:`open_aio_loop`'s handler (logged). Returns False, and does
    nothing, when the loop is closed (the agent is stopping).
    """
    try:
        loop.call_soon_threadsafe(lambda: spawn_aio(make()))
    except RuntimeError:  # the loop is closed
        return False
    return True


# -- the loop --------------------------------------------------------------------


def current_aio_loop() -> asyncio.AbstractEventLoop | None:
    """The trio-asyncio loop of the running Trio task, or None outside one."""
    loop: asyncio.AbstractEventLoop | None = trio_asyncio.current_loop.get()
    return loop


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
