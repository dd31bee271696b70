"""Fan-out: one encoded stream, one bounded queue per peer.

The encoder publishes each packet once; every subscribed peer gets it in its
own small queue. A slow peer loses packets, it never blocks the encoder or
another peer:

- video: when a peer's queue overflows, everything queued is dropped and the
  peer waits for the next key frame (and asks for one), because a decoder
  cannot use frames that follow a gap anyway;
- audio: the oldest packet is dropped.

A new subscriber also starts at a key frame. The queue is filled from Trio
and read by aiortc's sender from asyncio (trio-asyncio runs both on one
thread): the reader parks on an asyncio future that the writer resolves, which
costs far less per packet than crossing the boundary with ``trio_as_aio``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

import structlog
from av.packet import Packet

log = structlog.get_logger(__name__)

MediaKind = Literal["audio", "video"]


class QueueClosed(Exception):
    """The stream ended (the pipeline stopped or the peer unsubscribed)."""


class PacketQueue:
    """One peer's view of one stream."""

    def __init__(
        self,
        kind: MediaKind,
        maxlen: int,
        on_need_keyframe: Callable[[], object] = lambda: None,
        name: str = "",
    ) -> None:
        self.kind: MediaKind = kind
        self.name = name
        self.maxlen = maxlen
        self._packets: deque[Packet[Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._need_keyframe = kind == "video"
        self._on_need_keyframe = on_need_keyframe
        self._closed = False
        self.delivered = 0
        self.dropped = 0

    def put(self, packet: Packet[Any], keyframe: bool) -> None:
        """Called by the stream for every packet (never blocks, never raises)."""
        if self._closed:
            return
        if self._need_keyframe:
            if not keyframe:
                self.dropped += 1
                return
            self._need_keyframe = False
        if len(self._packets) >= self.maxlen:
            if self.kind == "video":
                self.dropped += len(self._packets) + 1
                self._packets.clear()
                self._need_keyframe = True
                log.debug("media.fanout.overflow", queue=self.name, kind=self.kind)
                self._on_need_keyframe()
                return
            self._packets.popleft()
            self.dropped += 1
        self._packets.append(packet)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        self._closed = True
        self._packets.clear()
        self._wake()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._packets)

    async def get_aio(self) -> Packet[Any]:
        """Next packet, from asyncio (aiortc's sender task)."""
        while True:
            if self._packets:
                self.delivered += 1
                return self._packets.popleft()
            if self._closed:
                raise QueueClosed(self.name)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class PacketStream:
    """The packets of one encoder, offered to every subscriber."""

    def __init__(self, kind: MediaKind, name: str, queue_len: int) -> None:
        self.kind: MediaKind = kind
        self.name = name
        self.queue_len = queue_len
        self._queues: list[PacketQueue] = []
        self.on_need_keyframe: Callable[[], object] = lambda: None
        self.published = 0

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def subscribe(self, name: str = "") -> PacketQueue:
        queue = PacketQueue(self.kind, self.queue_len, self._need_keyframe, name or self.name)
        self._queues.append(queue)
        if self.kind == "video":
            self._need_keyframe()
        return queue

    def unsubscribe(self, queue: PacketQueue) -> None:
        queue.close()
        if queue in self._queues:
            self._queues.remove(queue)

    def _need_keyframe(self) -> None:
        self.on_need_keyframe()

    def publish(self, packet: Packet[Any]) -> None:
        self.published += 1
        keyframe = bool(packet.is_keyframe)
        for queue in self._queues:
            queue.put(packet, keyframe)

    def close(self) -> None:
        for queue in self._queues:
            queue.close()
        self._queues.clear()
