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
from .aio import aio_future, wake_aio

Release = Callable[[PacketQueue], object]


class PacketTrack(MediaStreamTrack):
    """One peer's audio or video track, fed by a PacketQueue.

    :meth:`switch` moves it to another stream (a quality tier) without a
    gap: the old queue keeps feeding until the new one holds its first key
    frame, which then continues the same RTP stream (both encoders encode
    the same source frames, so their time stamps agree). That key frame must
    be of a later picture than the last one sent: the hub publishes every
    tier's packets of a picture together, and the track looks for a pending
    switch after each wake-up, before taking the old stream's packet, so
    the new key frame takes the place of the old stream's packet of the
    same picture.
    """

    def __init__(self, kind: MediaKind) -> None:
        super().__init__()
        self.kind = kind
        self._queue: PacketQueue | None = None
        self._release: Release | None = None
        self._next: tuple[PacketQueue, Release] | None = None
        self._bound: asyncio.Future[None] | None = None  # recv waits for bind()
        self._last_pts: int | None = None
        self._retired_delivered = 0
        self._retired_dropped = 0
        self.switches = 0
        # it ended because its stream closed (the hub's video pipeline was
        # replaced, or the source stopped), not because aiortc's RTP task died
        self.source_closed = False

    @property
    def queue(self) -> PacketQueue | None:
        return self._queue

    @property
    def delivered(self) -> int:
        """Packets handed to aiortc, across every queue this track read."""
        return self._retired_delivered + (self._queue.delivered if self._queue is not None else 0)

    @property
    def dropped(self) -> int:
        """Packets dropped for this peer (it fell behind), across every queue."""
        return self._retired_dropped + (self._queue.dropped if self._queue is not None else 0)

    def bind(self, queue: PacketQueue, release: Release | None = None) -> None:
        """Start feeding from ``queue`` (called once the codec is negotiated).

        ``release`` is called with the queue once the track stops reading it
        (after a :meth:`switch`), to unsubscribe it.
        """
        self._queue, self._release = queue, release
        wake_aio(self._bound)

    def switch(self, queue: PacketQueue, release: Release) -> None:
        """Feed from ``queue`` from its first key frame on; release the old one then."""
        if self._queue is None:
            self.bind(queue, release)
            return
        self.cancel_switch()  # one that never completed
        self._next = (queue, release)

    @property
    def pending(self) -> PacketQueue | None:
        """The queue of a switch waiting for its key frame, if any."""
        return self._next[0] if self._next is not None else None

    def cancel_switch(self) -> None:
        """Stay on the current queue after all (releases the pending one)."""
        if self._next is not None:
            pending, release = self._next
            self._next = None
            release(pending)

    def _take_next(self) -> bool:
        """Swap to the queued switch if its key frame is there; True if swapped."""
        assert self._next is not None
        queue = self._next[0]
        head = queue.peek()
        if head is None:
            return False
        if self._last_pts is not None and head.pts is not None and head.pts <= self._last_pts:
            # a picture already sent: going back in time would confuse the
            # receiver's jitter buffer; take a later key frame
            queue.restart()
            return False
        self._adopt_next()
        return True

    def _adopt_next(self) -> None:
        """Read the switched-to queue from now on; count and release the old one."""
        assert self._next is not None
        old, old_release = self._queue, self._release
        (self._queue, self._release), self._next = self._next, None
        self.switches += 1
        if old is not None:
            self._retired_delivered += old.delivered
            self._retired_dropped += old.dropped
            if old_release is not None:
                old_release(old)

    async def recv(self) -> Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if self._queue is None:
            self._bound = aio_future()
            try:
                await self._bound
            finally:
                self._bound = None
        while True:
            if self._next is not None:
                self._take_next()
            queue = self._queue
            assert queue is not None
            if queue.peek() is None and not queue.closed:
                await queue.wait_aio()
                continue  # a switch may have become possible with this picture
            try:
                packet = await queue.get_aio()
            except QueueClosed:
                if self._next is not None and not self._next[0].closed:
                    # the old stream ended (its encoder stopped): wait on the new one
                    self._adopt_next()
                    continue
                self.source_closed = True
                self.stop()
                raise MediaStreamError from None
            if packet.pts is not None:
                self._last_pts = packet.pts
            return packet

    def stop(self) -> None:
        super().stop()
        self.cancel_switch()


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
        self.source_closed = False  # as PacketTrack's

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._slot is None:
            self._slot = self._subscribe()
        try:
            return await self._slot.get_aio()
        except QueueClosed:
            self.source_closed = True
            self.stop()
            raise MediaStreamError from None

    def stop(self) -> None:
        super().stop()
        if self._slot is not None:
            self._slot.close()
