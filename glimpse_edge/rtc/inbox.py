"""A peer's inbox: signals from the network bounded, its own events never dropped.

A peer's task handles two kinds of events: signals relayed by the server
(offers, answers, candidates: untrusted, and a flood of them must not grow
memory without bound) and what its own connection reports (state changes,
ended tracks, a revived path, a tier choice). Dropping one of the latter
leaves the task with a wrong picture of its connection (a "connected" it
never saw), so only signals count against the bound; the peer's own events
are few and always queued. One queue keeps them in the order they came.
"""

from __future__ import annotations

import math
from typing import Generic, TypeVar

import trio

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox(Generic[T]):
    """FIFO of events; at most ``max_signals`` of them queued signals."""

    def __init__(self, max_signals: int) -> None:
        self.max_signals = max_signals
        self._send, self._receive = trio.open_memory_channel[tuple[bool, T]](math.inf)
        self._signals = 0  # signals queued and not yet taken
        self.dropped = 0

    def put_signal(self, event: T) -> bool:
        """Queue a signal from the network; False (and counted) when too many wait."""
        if self._signals >= self.max_signals:
            self.dropped += 1
            return False
        if self._put(True, event):
            self._signals += 1
            return True
        return False

    def put(self, event: T) -> None:
        """Queue one of the peer's own events: never dropped while the inbox is open."""
        self._put(False, event)

    def _put(self, signal: bool, event: T) -> bool:
        try:
            self._send.send_nowait((signal, event))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def get(self) -> T:
        signal, event = await self._receive.receive()
        if signal:
            self._signals -= 1
        return event
