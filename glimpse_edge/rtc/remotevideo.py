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

What is shown decides what is received (docs/decisions.md, "Kiosk display",
third slice). The participant follows its place in the layout
(:meth:`DisplayState.add_layout_listener`): beyond ``max_tiles`` it has no
tile, its decoders are hidden (``set_shown(False)``: nothing decoded) and
its sender is asked for :data:`MIN_BPS` only; with a tile, the decoders are
shown (a key frame is asked for) and the sender is asked for what the
tile's pixels need (:func:`tile_bitrate`): by REMB at once (compat.cap_remb,
with the receiver's next estimate, within 0.5 s) and by ``b=AS``/``b=TIAS``
in the descriptions the agent sends (:meth:`RemoteVideo.describe`), which
only the next negotiation carries.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from . import compat
from .aio import current_aio_loop, spawn_aio_threadsafe
from .connection import Connection
from .sdp import with_video_bitrate

if TYPE_CHECKING:
    import av
    from structlog.typing import FilteringBoundLogger

    from ..display.layout import Rect
    from ..display.state import DisplayState, Placement

__all__ = ["BITS_PER_PIXEL", "MAX_BPS", "MIN_BPS", "NO_VIDEO_AFTER", "RemoteVideo",
           "tile_bitrate"]

# A tile whose connection is up but showed no frame for this long says "no video".
NO_VIDEO_AFTER = 2.0

# What a sender is asked for, from its tile: 0.1 bit per shown pixel per frame
# at 30 fps (H.264/VP8 real-time encoders look clean from ~0.08 bpp on camera
# content; 640x360 gets ~690 kbit/s, what Chromium itself sends at that size),
# between a floor that keeps a small tile (and the tile-less) recognisable and
# a ceiling past which a Pi's decoder, not the picture, is the limit.
BITS_PER_PIXEL = 0.1
FPS = 30
MIN_BPS = 150_000
MAX_BPS = 2_500_000


def tile_bitrate(rect: Rect | None) -> int:
    """The most a participant shown in ``rect`` is asked to send (None: no tile, the floor)."""
    if rect is None:
        return MIN_BPS
    return max(MIN_BPS, min(MAX_BPS, int(rect.w * rect.h * FPS * BITS_PER_PIXEL)))


class RemoteVideo:
    """One participant's tile: its state, and the decoders of each connection's video."""

    def __init__(self, display: DisplayState, key: str, name: str,
                 log: FilteringBoundLogger) -> None:
        self.display = display
        self.key = key  # the tile, by participant id
        self.name = name  # on the tile
        self.log = log
        self.shown = True  # has a tile (within max_tiles)
        self.cap_bps: int | None = None  # what the sender is asked for (None: before a tile)
        self._conns: list[Connection] = []  # whose decoders follow ``shown``
        self._listening = False

    # -- the layout: shown or not, and how big -------------------------------------

    def _on_layout(self, placement: Placement) -> None:
        """The tiles moved (any thread): follow this participant's place."""
        rect = placement.rect(self.key)
        shown, cap = rect is not None, tile_bitrate(rect)
        if (shown, cap) == (self.shown, self.cap_bps):
            return
        changed = shown != self.shown
        self.shown, self.cap_bps = shown, cap
        if changed:
            for conn in list(self._conns):
                for decoder in list(conn.decoders.values()):
                    decoder.set_shown(shown)
        self.log.info("display.tile_cap", shown=shown, cap_bps=cap,
                      tile=None if rect is None else f"{rect.w}x{rect.h}")

    def describe(self, sdp: str) -> str:
        """A description the agent sends, with the tile's bitrate on its video."""
        return with_video_bitrate(sdp, self.cap_bps)

    def tap(self, conn: Connection, receiver: Any) -> None:
        """Receive ``conn``'s video into the tile (before negotiation: the tap must
        be in place when aiortc's receiver starts)."""
        from ..display.decode import EncodedFrame, VideoDecoder, is_keyframe

        display, key, name = self.display, self.key, self.name
        display.set_tile(key, name, "connecting" if conn.generation == 1 else "reconnecting")
        if not self._listening:  # after the tile exists: its place is known at once
            self._listening = True
            display.add_layout_listener(self._on_layout)
        self._conns.append(conn)
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
                if not self.shown:
                    decoder.set_shown(False)
            decoder.submit(EncodedFrame(data, is_keyframe(codec, data), timestamp))  # type: ignore[arg-type]

        def on_error(exc: Exception) -> None:
            log.warning("display.frame_failed", error=f"{type(exc).__name__}: {exc}")

        compat.tap_encoded_video(receiver, sink, on_error)
        compat.cap_remb(receiver, lambda: self.cap_bps)

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
        if conn in self._conns:
            self._conns.remove(conn)
        decoders = list(conn.decoders.values())
        conn.decoders.clear()
        for decoder in decoders:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(decoder.close)

    def leave(self) -> None:
        """The participant's session ended: its tile goes (and the next one is shown)."""
        if self._listening:
            self._listening = False
            self.display.remove_layout_listener(self._on_layout)
        self.display.remove_tile(self.key)
