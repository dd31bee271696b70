"""A participant's video on the kiosk display: received, decoded by us, shown in a tile.

With ``[display]`` on, each connection's video transceiver receives too. Its
receiver is tapped before aiortc decodes (compat.tap_encoded_video): aiortc's
decoder would decode everything, in software, into unbounded queues. Here a
:class:`~glimpse_edge.display.decode.VideoDecoder` per codec, made on the
first frame, decodes on its own thread into the participant's
:class:`~glimpse_edge.display.state.DisplayState` tile; its key frame
requests become PLIs on the receiver, sent on the asyncio loop. The
decoders end with their connection. :class:`RemoteVideo` is that, for one
participant across its connections; the session (rtc/peer.py) calls it at
a connection's birth, restart and close, and the kiosk's room task asks it
every half second whether the video stopped.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from . import compat
from .aio import current_aio_loop, spawn_aio_threadsafe
from .connection import Connection

if TYPE_CHECKING:
    import av
    from structlog.typing import FilteringBoundLogger

    from ..display.state import DisplayState

__all__ = ["NO_VIDEO_AFTER", "RemoteVideo"]

# A tile whose connection is up but showed no frame for this long says "no video".
NO_VIDEO_AFTER = 2.0


class RemoteVideo:
    """One participant's tile: its state, and the decoders of each connection's video."""

    def __init__(self, display: DisplayState, key: str, name: str,
                 log: FilteringBoundLogger) -> None:
        self.display = display
        self.key = key  # the tile, by participant id
        self.name = name  # on the tile
        self.log = log

    def tap(self, conn: Connection, receiver: Any) -> None:
        """Receive ``conn``'s video into the tile (before negotiation: the tap must
        be in place when aiortc's receiver starts)."""
        from ..display.decode import EncodedFrame, VideoDecoder, is_keyframe

        display, key, name = self.display, self.key, self.name
        display.set_tile(key, name, "connecting" if conn.generation == 1 else "reconnecting")
        loop = current_aio_loop()
        log = self.log.bind(generation=conn.generation)
        unsupported: set[str] = set()

        def on_frame(frame: av.VideoFrame) -> None:  # on the decoder's thread
            if display.show_frame(key, frame):
                conn.shown_at = time.monotonic()

        def request_keyframe() -> None:  # on the decoder's thread
            if loop is not None and conn.state != "closed":
                spawn_aio_threadsafe(loop, partial(compat.send_pli, receiver))

        def sink(codec: str, data: bytes, timestamp: int) -> None:  # on the asyncio loop
            if conn.state == "closed":
                return
            decoder = conn.decoders.get(codec)
            if decoder is None:
                if codec not in ("h264", "vp8"):
                    if codec not in unsupported:
                        unsupported.add(codec)
                        log.warning("display.unsupported_codec", codec=codec)
                    return
                decoder = conn.decoders[codec] = VideoDecoder(
                    codec, on_frame, request_keyframe,  # type: ignore[arg-type]
                    name=f"{name}#{conn.generation}")
            decoder.submit(EncodedFrame(data, is_keyframe(codec, data), timestamp))  # type: ignore[arg-type]

        def on_error(exc: Exception) -> None:
            log.warning("display.frame_failed", error=f"{type(exc).__name__}: {exc}")

        compat.tap_encoded_video(receiver, sink, on_error)

    def reconnecting(self) -> None:
        self.display.set_tile(self.key, self.name, "reconnecting")

    def check(self, conn: Connection | None, now: float) -> None:
        """Say "no video" once the connection is up but shows nothing.

        A connection up for :data:`NO_VIDEO_AFTER` seconds with no decoded
        frame, or whose frames stopped that long ago, shows "no video" (never
        the last picture, frozen); its next frame makes the tile live again.
        """
        if conn is None or conn.state != "connected":
            return
        last = conn.shown_at if conn.shown_at is not None else conn.connected_at
        if last is None or now - last < NO_VIDEO_AFTER or conn.no_video_at == last:
            return
        conn.no_video_at = last
        self.log.info("display.no_video", generation=conn.generation,
                      for_s=round(now - last, 1), frames=conn.shown_at is not None)
        self.display.set_tile(self.key, self.name, "no video")

    async def close(self, conn: Connection) -> None:
        """``conn`` closed: end its decoders (each after the frame it is decoding)."""
        decoders = list(conn.decoders.values())
        conn.decoders.clear()
        for decoder in decoders:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(decoder.close)

    def leave(self) -> None:
        """The participant's session ended: its tile goes."""
        self.display.remove_tile(self.key)
