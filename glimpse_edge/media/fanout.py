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
thread): the reader parks on an asyncio future that the writer resolves
(:func:`~glimpse_edge.rtc.aio.aio_future`, :func:`~glimpse_edge.rtc.aio.wake_aio`),
which costs far less per packet than crossing the boundary with ``trio_as_aio``.

Raw frames (``video.encode = "per-peer"``, where aiortc encodes for every
sender itself) go through a :class:`FrameSlot` instead: one frame deep,
because an encoder that falls behind must skip to the newest picture, not
work through a backlog.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, cast

import av
import numpy as np
import structlog
from av.packet import Packet

from ..rtc.aio import aio_future, wake_aio

log = structlog.get_logger(__name__)

MediaKind = Literal["audio", "video"]


# A key frame asked for and not published within this long is asked for again.
KEYFRAME_ASK_EXPIRY = 1.0


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
        self.started = not self._need_keyframe  # has had its first key frame
        self._on_need_keyframe = on_need_keyframe
        self._closed = False
        self.delivered = 0
        self.bytes_delivered = 0
        self.dropped = 0
        # What this peer's link can carry for this stream (bits/s), set by the
        # peer from its bandwidth estimate; an adaptive encoder follows the
        # lowest demand among its queues (None: no opinion).
        self.demand_bps: int | None = None
        self.overflows = 0  # times the reader fell a whole queue behind (skipped to a key frame)
        self.keyframe_taken_at: float | None = None  # when the reader last took a key frame
        self.keyframe_asks = 0  # PLI/FIR from this queue's receiver (:meth:`ask_keyframe`)
        self.keyframe_asks_coalesced = 0  # ... answered by a key frame already on its way

    def put(self, packet: Packet[Any], keyframe: bool) -> None:
        """Called by the stream for every packet (never blocks, never raises)."""
        if self._closed:
            return
        if self._need_keyframe:
            if not keyframe:
                self.dropped += 1
                return
            self._need_keyframe = False
            self.started = True
        if len(self._packets) >= self.maxlen:
            if self.kind == "video":
                self.dropped += len(self._packets) + 1
                self.overflows += 1
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
        wake_aio(self._waiter)

    def close(self) -> None:
        self._closed = True
        self._packets.clear()
        self._wake()

    def restart(self) -> None:
        """Drop what is queued and wait for (and ask for) the next key frame."""
        self._packets.clear()
        if self.kind == "video":
            self._need_keyframe = True
            self._on_need_keyframe()

    @property
    def closed(self) -> bool:
        return self._closed

    def ask_keyframe(self, window: float, now: float | None = None) -> bool:
        """The receiver asks for a key frame (PLI, FIR); False if one already answers it.

        Coalesced when a key frame is on its way to this receiver: the queue
        waits for one (its first, or after an overflow), or the reader took
        one less than ``window`` seconds ago (the request left the receiver
        before that one arrived; it decodes from it, and NACKs repair what of
        it was lost). Otherwise the stream is asked, which coalesces the
        requests of all its readers (:meth:`PacketStream.keyframe_wanted`).
        """
        self.keyframe_asks += 1
        now = time.monotonic() if now is None else now
        taken = self.keyframe_taken_at
        if self._need_keyframe or (taken is not None and now - taken < window):
            self.keyframe_asks_coalesced += 1
            return False
        self._on_need_keyframe()
        return True

    def peek(self) -> Packet[Any] | None:
        """The packet :meth:`get_aio` would return next, without taking it."""
        return self._packets[0] if self._packets else None

    def __len__(self) -> int:
        return len(self._packets)

    async def wait_aio(self) -> None:
        """Until a packet is queued or the queue closes, without taking it."""
        if self._packets or self._closed:
            return
        self._waiter = aio_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def get_nowait(self) -> Packet[Any] | None:
        """The next packet if one is queued (for a reader on the publishing thread,
        which polls: the self-view's decoder feed)."""
        if not self._packets:
            return None
        self.delivered += 1
        packet = self._packets.popleft()
        self.bytes_delivered += packet.size
        if packet.is_keyframe:
            self.keyframe_taken_at = time.monotonic()
        return packet

    async def get_aio(self) -> Packet[Any]:
        """Next packet, from asyncio (aiortc's sender task)."""
        while True:
            if (packet := self.get_nowait()) is not None:
                return packet
            if self._closed:
                raise QueueClosed(self.name)
            self._waiter = aio_future()
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
        self.last_keyframe: Packet[Any] | None = None
        self.keyframe_requests = 0  # asks from readers (joins, overflows, PLIs passed on)
        self.keyframe_requests_coalesced = 0  # ... served by a key frame already asked for
        self._keyframe_asked_at: float | None = None  # asked, and none published since

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    @property
    def has_new_subscribers(self) -> bool:
        """Someone subscribed and is still waiting for a first key frame."""
        return any(not queue.started for queue in self._queues)

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
        self.keyframe_wanted()

    def keyframe_wanted(self, now: float | None = None) -> bool:
        """A reader needs a key frame; False if one asked for is still to come.

        One key frame serves every reader that asks before it is published:
        three viewers losing the same burst send three PLIs, and three IDRs
        back to back on a congested uplink are how the key-frame spiral
        starts. An ask older than :data:`KEYFRAME_ASK_EXPIRY` is not waited
        on (an encoder that restarted may have forgotten it).
        """
        now = time.monotonic() if now is None else now
        self.keyframe_requests += 1
        asked = self._keyframe_asked_at
        if asked is not None and now - asked < KEYFRAME_ASK_EXPIRY:
            self.keyframe_requests_coalesced += 1
            return False
        self._keyframe_asked_at = now
        self.on_need_keyframe()
        return True

    def lowest_demand(self) -> int | None:
        """The least any subscriber's link can carry (None: nobody said)."""
        demands = [q.demand_bps for q in self._queues if q.demand_bps is not None]
        return min(demands) if demands else None

    def publish(self, packet: Packet[Any]) -> None:
        self.published += 1
        keyframe = bool(packet.is_keyframe)
        if keyframe:
            self.last_keyframe = packet  # for snapshots where there is no raw frame
            self._keyframe_asked_at = None
        for queue in self._queues:
            queue.put(packet, keyframe)

    def close(self) -> None:
        for queue in self._queues:
            queue.close()
        self._queues.clear()


def private_copy(frame: av.VideoFrame) -> av.VideoFrame:
    """A copy of ``frame`` that one encoder may mutate.

    aiortc's encoders write ``pict_type`` into the frame they are given, and
    PyAV rebases its pts/time_base to the encoder's time base (1/30 s for
    aiortc's H.264). Several senders encode the same picture at once in
    worker threads, so each gets its own frame, with the 90 kHz pts the hub
    received. Plane by plane, row by row (strides may differ): ~0.05 ms at
    1280x720.
    """
    out = av.VideoFrame(frame.width, frame.height, frame.format.name)
    for src, dst in zip(frame.planes, out.planes, strict=True):
        width = min(src.line_size, dst.line_size)
        rows_in = np.frombuffer(cast(Any, src), dtype=np.uint8).reshape(-1, src.line_size)
        rows_out = np.frombuffer(cast(Any, dst), dtype=np.uint8).reshape(-1, dst.line_size)
        rows_out[: src.height, :width] = rows_in[: src.height, :width]
    out.pts = frame.pts
    if frame.time_base is not None:
        out.time_base = frame.time_base
    return out


class FrameSlot:
    """One subscriber's view of the raw video: only the newest frame, never a backlog.

    Filled from Trio by the hub (:meth:`put` never blocks), read from asyncio
    by aiortc's sender, like :class:`PacketQueue`. Each frame is handed out
    once, so pts stay strictly increasing for the reader.
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._frame: av.VideoFrame | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.delivered = 0
        self.skipped = 0  # replaced by a newer frame before the reader took them

    def put(self, frame: av.VideoFrame) -> None:
        if self._closed:
            return
        if self._frame is not None:
            self.skipped += 1
        self._frame = frame
        wake_aio(self._waiter)

    def close(self) -> None:
        self._closed = True
        self._frame = None
        wake_aio(self._waiter)

    @property
    def closed(self) -> bool:
        return self._closed

    async def get_aio(self) -> av.VideoFrame:
        """The newest frame not yet taken (a private copy), from asyncio."""
        while True:
            if self._closed:
                raise QueueClosed(self.name)
            frame, self._frame = self._frame, None
            if frame is not None:
                self.delivered += 1
                return private_copy(frame)
            self._waiter = aio_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
