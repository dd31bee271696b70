"""``/snapshot.jpg``: what the camera sees, without touching the media path.

The hub keeps the newest raw frame for its encoders; a snapshot copies from
it (scaled to the configured size) and encodes a JPEG with FFmpeg's mjpeg
encoder through PyAV, in a worker thread, one at a time. The result is kept
for a second: a dashboard polling every camera, or several people opening
the page at once, cost one encode a second at most (~2 ms at 720p), and the
encoders never wait for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import structlog
import trio
from av.video.reformatter import VideoReformatter

from .view import HubView

log = structlog.get_logger(__name__)

MIN_INTERVAL = 1.0  # seconds between two encodes
JPEG_QSCALE = 5  # FFmpeg's -q:v scale, 2 (best) .. 31: ~35 kB at 720p, no visible loss


class NoPicture(Exception):
    """There is no picture to show (video is off, or no frame has arrived yet)."""


@dataclass(frozen=True)
class Snapshot:
    jpeg: bytes
    width: int
    height: int
    frame_number: int  # the hub's frame counter when it was taken
    taken_at: float  # Unix time


def encode_jpeg(frame: av.VideoFrame, width: int, height: int,
                reformatter: VideoReformatter | None = None, qscale: int = JPEG_QSCALE) -> bytes:
    """One baseline JPEG of ``frame`` scaled to ``width`` x ``height`` (full-range YUV).

    Runs in a worker thread while the hub's encoders may be reading the same
    frame, so the frame is only ever read: not ``frame.reformat()``, which
    keeps a scaler on the frame object itself (shared, not thread-safe), but
    a reformatter of our own; and a copy when the frame needs no conversion,
    because encoding re-stamps the frame it is given.
    """
    reformatter = reformatter or VideoReformatter()
    picture = reformatter.reformat(frame, width=width, height=height, format="yuvj420p",
                                   threads=1)
    if picture is frame:
        picture = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuvj420p")
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuvj420p"
    ctx.time_base = Fraction(1, 1)
    ctx.qmin = ctx.qmax = qscale
    packets = [*ctx.encode(picture), *ctx.encode(None)]
    return b"".join(bytes(p) for p in packets)


def decode_keyframe(codec: str, packet: Any) -> av.VideoFrame:
    """Decode one key frame on its own (SPS/PPS travel with every IDR)."""
    ctx = av.CodecContext.create("h264" if codec == "h264" else "vp8", "r")
    frames = [*ctx.decode(packet), *ctx.decode(None)]
    if not frames:
        raise NoPicture(f"the latest {codec} key frame did not decode")
    frame: av.VideoFrame = frames[-1]
    return frame


def keyframe_jpeg(codec: str, packet: Any, width: int, height: int,
                  reformatter: VideoReformatter) -> bytes:
    return encode_jpeg(decode_keyframe(codec, packet), width, height, reformatter)


class Snapshotter:
    """The latest JPEG, re-encoded at most once per ``min_interval``."""

    def __init__(self, hub: Callable[[], HubView | None], min_interval: float = MIN_INTERVAL
                 ) -> None:
        self._hub = hub  # looked up per request: the agent creates its hub after we start
        self.min_interval = min_interval
        self._cached: Snapshot | None = None
        self._cached_at = -float("inf")
        self._lock = trio.Lock()
        self._reformatter = VideoReformatter()  # its scaler is reused between snapshots
        self.encodes = 0

    async def take(self) -> Snapshot:
        """The cached picture if recent enough, else a fresh one; raises NoPicture."""
        async with self._lock:  # concurrent requests share one encode
            hub = self._hub()
            if hub is None or not hub.has_video:
                raise NoPicture("video is off in this agent's configuration ([video])")
            frame = hub.latest_frame
            keyframe = hub.latest_keyframe if frame is None else None
            if frame is None and keyframe is None:
                raise NoPicture("no camera picture yet: the video source has not delivered a "
                                "frame (it may be starting, or failing: see /status)")
            width, height = hub.video_config.width, hub.video_config.height
            # a hardware encoder has no raw frames: the newest key frame stands in
            number = hub.frames_in if keyframe is None else id(keyframe[1])
            cached = self._cached
            if (cached is not None and (cached.width, cached.height) == (width, height)
                    and (time.monotonic() - self._cached_at < self.min_interval
                         or cached.frame_number == number)):
                return cached
            t0 = time.perf_counter()
            if keyframe is not None:
                jpeg = await trio.to_thread.run_sync(keyframe_jpeg, *keyframe, width, height,
                                                     self._reformatter)
            else:
                assert frame is not None
                jpeg = await trio.to_thread.run_sync(encode_jpeg, frame, width, height,
                                                     self._reformatter)
            self.encodes += 1
            log.debug("observe.snapshot", width=width, height=height, bytes=len(jpeg),
                      ms=round((time.perf_counter() - t0) * 1000, 1))
            self._cached = Snapshot(jpeg, width, height, number, time.time())
            self._cached_at = time.monotonic()
            return self._cached
