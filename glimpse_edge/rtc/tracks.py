"""Media tracks that feed aiortc's senders from the media hub.

:class:`PacketTrack` hands aiortc packets from the shared encoders: aiortc's
sender calls ``recv()`` and, seeing an ``av.Packet`` instead of a frame, only
packetizes it. The track is created before negotiation and bound to a queue
once the codec is known; until then ``recv()`` waits.

:class:`FrameTrack` hands aiortc raw frames instead, which it encodes itself,
once per sender (``video.encode = "per-peer"``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.packet import Packet

from ..media.fanout import FrameSlot, MediaKind, PacketQueue, QueueClosed


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


class FrameTrack(MediaStreamTrack):
    """One peer's video as raw frames, for aiortc's own encoder in its sender.

    It subscribes to the hub when the sender first pulls (the connection is
    up) and unsubscribes when aiortc stops it, which the sender always does
    when its RTP task ends: the hub feeds no slot that nobody reads. Needs
    no binding: whatever codec was negotiated, aiortc encodes to it.
    """

    kind = "video"

    def __init__(self, subscribe: Callable[[], FrameSlot]) -> None:
        super().__init__()
        self._subscribe = subscribe
        self._slot: FrameSlot | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._slot is None:
            self._slot = self._subscribe()
        try:
            return await self._slot.get_aio()
        except QueueClosed:
            self.stop()
            raise MediaStreamError from None

    def stop(self) -> None:
        super().stop()
        if self._slot is not None:
            self._slot.close()
