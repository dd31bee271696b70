"""The kiosk's self-view tile (``[display] self_view``): the device's own picture.

Two sources, whichever the video source has:

- raw frames (the test pattern, a webcam, a file): the hub's newest frame,
  the one the encoders read. Nothing is decoded.
- a camera that encodes itself (picamera2, the hardware H.264 encoder): there
  is no raw frame on our side, so the self-view subscribes to the camera's
  lowest tier (the cheapest to decode) and decodes it with the display's
  own decoder (:class:`~glimpse_edge.display.decode.VideoDecoder`: its own
  thread, bounded, ``h264_v4l2m2m`` on a Pi 4). It is subscribed only while
  the tile is shown, so the lower tier's encoder stops again when nobody
  needs it.

Either way the picture is scaled to :data:`SELF_VIEW_WIDTH` with a scaler of
our own on a worker thread and put in the tile at most :data:`SELF_VIEW_FPS`
times a second; a picture older than :data:`STALE_AFTER` is taken away, so
the tile says "no video" instead of freezing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final, cast

import structlog
import trio

if TYPE_CHECKING:
    import av

    from .display.decode import VideoDecoder
    from .display.state import DisplayState
    from .media.fanout import PacketQueue, PacketStream
    from .media.hub import MediaHub

__all__ = ["SELF_VIEW_FPS", "SELF_VIEW_WIDTH", "STALE_AFTER", "CameraPreview", "feed_self_view"]

log = structlog.get_logger(__name__)

# At most this often and this wide (a tile is rarely wider; scaling is on a
# worker thread, ~1 ms at 720p -> 480).
SELF_VIEW_FPS: Final = 10.0
SELF_VIEW_WIDTH: Final = 480
# The device's own picture older than this is not shown ("me · no video").
STALE_AFTER: Final = 2.0


class CameraPreview:
    """The camera's lowest tier, decoded: open while the self-view shows it.

    Polled from the Trio thread (:meth:`pump`), which is where the camera's
    packets are published: each poll hands what is queued to the decoder and
    returns the newest decoded picture. The decoder's key-frame requests come
    from its thread; they are passed on at the next poll (the stream is only
    touched from the Trio thread).
    """

    def __init__(self) -> None:
        self._stream: PacketStream | None = None
        self._queue: PacketQueue | None = None
        self._decoder: VideoDecoder | None = None
        self._latest: av.VideoFrame | None = None  # written by the decoder's thread
        self._want_key = threading.Event()

    @property
    def open(self) -> bool:
        return self._decoder is not None

    def pump(self, hub: MediaHub) -> av.VideoFrame | None:
        """Subscribe if needed, feed the decoder, and return the newest picture."""
        from .display.decode import EncodedFrame, VideoDecoder

        if self._queue is not None and self._queue.closed:  # the source restarted
            self._unsubscribe()
        if self._queue is None:
            preview = hub.camera_preview()
            if preview is None:
                return None
            codec, self._stream = preview
            if codec not in ("h264", "vp8"):
                return None
            self._queue = self._stream.subscribe("self-view")
            if self._decoder is None or self._decoder.codec != codec:
                self.close_decoder()
                self._decoder = VideoDecoder(cast(Any, codec), self._on_frame,
                                             self._want_key.set, name="self-view")
                log.info("display.self_view.decoding", codec=codec,
                         decoder=self._decoder.choice.decoder, stream=self._stream.name)
        queue, decoder = self._queue, self._decoder
        assert decoder is not None
        if self._want_key.is_set():
            self._want_key.clear()
            queue.restart()  # drops what waits, asks the camera (coalesced with the peers')
        while (packet := queue.get_nowait()) is not None:
            decoder.submit(EncodedFrame(bytes(packet), bool(packet.is_keyframe),
                                        int(packet.pts or 0)))
        return self._latest

    def _on_frame(self, frame: av.VideoFrame) -> None:  # on the decoder's thread
        self._latest = frame

    def _unsubscribe(self) -> None:
        if self._stream is not None and self._queue is not None:
            self._stream.unsubscribe(self._queue)
        self._stream = self._queue = None

    def close_decoder(self) -> None:
        """Stop the decoder's thread (waits for the frame it decodes: a worker thread's job)."""
        decoder, self._decoder, self._latest = self._decoder, None, None
        if decoder is not None:
            decoder.close()

    async def close(self) -> None:
        """Unsubscribe (the lower tier may stop) and close the decoder, off the Trio thread."""
        self._unsubscribe()
        if self._decoder is not None:
            await trio.to_thread.run_sync(self.close_decoder)


async def feed_self_view(state: DisplayState, hub: Callable[[], MediaHub | None], *,
                         fps: float = SELF_VIEW_FPS, width: int = SELF_VIEW_WIDTH,
                         stale_after: float = STALE_AFTER) -> None:
    """Put the device's own picture in the self-view tile while one is shown (forever).

    Nothing is done while ``self_view`` is off or no participant has a tile
    (the screen then shows its idle page): the camera preview, if open, is
    closed then.
    """
    from av.video.reformatter import VideoReformatter

    scaler = VideoReformatter()
    camera = CameraPreview()
    last: object | None = None
    last_at = 0.0
    try:
        while True:
            await trio.sleep(1 / fps if state.self_view else 0.5)
            h = hub()
            if h is None or not state.self_view or not state.placement().rects:
                if camera.open:
                    await camera.close()
                continue
            frame = h.latest_frame
            if frame is not None:
                if camera.open:  # the source changed to one with raw frames
                    await camera.close()
            else:
                frame = camera.pump(h)
            now = time.monotonic()
            if frame is None or frame is last:
                if last is not None and now - last_at > stale_after:
                    state.set_self_view(None)
                    last = None
                continue
            last, last_at = frame, now
            w = min(width, frame.width) // 2 * 2
            small = await trio.to_thread.run_sync(partial(
                scaler.reformat, frame, width=w, height=frame.height * w // frame.width // 2 * 2,
                format="yuv420p"))
            state.set_self_view(small)
    finally:
        with trio.CancelScope(shield=True):
            await camera.close()
        state.set_self_view(None)
