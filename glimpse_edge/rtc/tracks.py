"""A media track that hands aiortc packets from the shared encoders.

aiortc's sender calls ``recv()`` and, seeing an ``av.Packet`` instead of a
frame, only packetizes it. The track is created before negotiation and bound
to a queue once the codec is known; until then ``recv()`` waits.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.packet import Packet

from ..media.fanout import MediaKind, PacketQueue, QueueClosed


class PacketTrack(MediaStreamTrack):
    """One peer's audio or video track, fed by a PacketQueue."""

    def __init__(self, kind: MediaKind) -> None:
        super().__init__()
        self.kind = kind
        self._queue: PacketQueue | None = None
        self._bound: asyncio.Event | None = None

    @property
    def queue(self) -> PacketQueue | None:
        return self._queue

    def bind(self, queue: PacketQueue) -> None:
        """Start feeding from ``queue`` (called once the codec is negotiated)."""
        self._queue = queue
        if self._bound is not None:
            self._bound.set()

    async def recv(self) -> Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if self._queue is None:
            if self._bound is None:
                self._bound = asyncio.Event()
            await self._bound.wait()
        assert self._queue is not None
        try:
            return await self._queue.get_aio()
        except QueueClosed:
            self.stop()
            raise MediaStreamError from None
