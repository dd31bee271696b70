"""Closing an aiortc connection so that nothing of it keeps running.

aiortc's connect task goes on after ``RTCPeerConnection.close()``: when DTLS
comes up just then, it starts a sender's or receiver's RTP/RTCP tasks on the
closed connection, and they run forever (3 of 120 closes at random moments
of a connect, measured; the soak test's own process collected one task per
churn cycle). The agent closes connections mid-connect all the time (a
viewer who leaves while connecting, a timeout, glare, a restart), so every
close goes through :func:`close_peer_connection`. Its companion on the ICE
side, aioice's connect that outlives its close, is patched in
:func:`.compat.guard_ice_connect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import TYPE_CHECKING, Final

import structlog

from .aio import spawn_aio

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

__all__ = ["REAP_AFTER", "close_peer_connection"]

log = structlog.get_logger(__name__)

# A closed connection's senders and receivers are stopped once more this long
# after close(): by then whatever its connect task still had to do is done.
REAP_AFTER: Final = 2.0
REAP_TIMEOUT: Final = 5.0


async def close_peer_connection(pc: RTCPeerConnection) -> None:
    """``pc.close()``, and a second stop of its senders and receivers a little later.

    For the asyncio side (from Trio: ``call_aio(close_peer_connection, pc)``).
    Stopping them again once the connect task is through is harmless when
    nothing was started (``stop()`` is public, idempotent, and only acts on a
    started sender or receiver).
    """
    await pc.close()
    # Only a weak reference meanwhile: a connection with nothing left running is
    # freed at once, as before; one whose tasks live on is kept alive by them.
    ref = weakref.ref(pc)

    def reap() -> None:
        if (closed := ref()) is not None:
            spawn_aio(_reap(closed))

    asyncio.get_running_loop().call_later(REAP_AFTER, reap)


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
