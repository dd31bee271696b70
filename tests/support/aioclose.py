"""Closing aiortc connections in a test: bounded, and a close that hangs says where.

A CI run saw a sender's ``stop()`` wait more than 10 s for its RTP task on a
loaded machine (the run passed 8 of 8 times under two busy loops here). A
bare ``wait_for`` then reports only ``TimeoutError`` deep in asyncio; this
names the tasks of the connection still running and where each one waits, so
the next such failure can be diagnosed from the log alone.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

from glimpse_edge.rtc.closing import close_peer_connection

__all__ = ["CLOSE_TIMEOUT", "close_all_within"]

# Generous: a close is a handful of task cancellations, but a loaded 2-core CI
# machine runs encoders and decoders on the same cores.
CLOSE_TIMEOUT = 30.0


def _stacks_of(pcs: tuple[Any, ...]) -> str:
    owners = {id(part) for pc in pcs for t in pc.getTransceivers()
              for part in (t.sender, t.receiver)}
    out = io.StringIO()
    for task in asyncio.all_tasks():
        frame = getattr(task.get_coro(), "cr_frame", None)
        if frame is not None and id(frame.f_locals.get("self")) in owners:
            task.print_stack(limit=6, file=out)
    return out.getvalue() or "(no task of these connections is running)"


async def close_all_within(*pcs: Any, timeout: float = CLOSE_TIMEOUT) -> None:
    """Close every connection in ``pcs`` (together) within ``timeout`` seconds, or fail
    with the stacks of their tasks that still run."""
    try:
        await asyncio.wait_for(asyncio.gather(*(close_peer_connection(pc) for pc in pcs)),
                               timeout)
    except TimeoutError:
        raise AssertionError(f"expected {len(pcs)} connection(s) closed within {timeout} s; "
                             f"still running:\n{_stacks_of(pcs)}") from None
