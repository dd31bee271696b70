"""Video from a V4L2 camera or a file, decoded by PyAV (FFmpeg) in a worker thread.

Both sources hand out ``yuv420p`` frames at the configured size whatever the input
gives (a camera may grant a different size than asked; a file is whatever it is), so
the encoder is set up once from the config.  Decoding, colour conversion and scaling
run in the worker thread: FFmpeg releases the GIL there, and the Trio thread only
passes frames on.

* :class:`V4l2Source` asks for MJPEG first (USB webcams reach 720p30 only in MJPEG;
  raw YUYV is limited by USB 2 bandwidth), then the driver's default format.  The
  camera paces itself; frames are stamped on arrival.
* :class:`FileSource` loops a file forever (a stand-in camera for demos and soak
  tests), paced by the file's own time stamps on the Trio clock, and never faster
  than the configured frame rate.
"""

from __future__ import annotations

import errno
import glob
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import av
import av.container
import structlog
import trio

from .source import (
    VIDEO_TIME_BASE,
    Emit,
    SourceError,
    StrictlyIncreasing,
    VideoSink,
    VideoSource,
    monotonic_pts,
    pump_thread,
)

__all__ = ["FileSource", "V4l2Source"]

log = structlog.get_logger(__name__)

OPEN_TIMEOUT: Final = 5.0  # seconds FFmpeg may take to open a camera
READ_TIMEOUT: Final = 2.0  # seconds without a frame before a camera read fails
V4L2_STALL: Final = 5.0  # seconds without a frame before the source fails (and restarts)
FILE_STALL: Final = 10.0


def _cameras() -> str:
    found = sorted(glob.glob("/dev/video*"))
    return ", ".join(found) if found else "none"


def _v4l2_error(device: str, what: str, exc: BaseException) -> SourceError:
    code = getattr(exc, "errno", None)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        hint = f"no such device — is the camera plugged in? (video devices here: {_cameras()})"
    elif code == errno.EBUSY:
        hint = "device busy — another program is using the camera"
    elif code in (errno.EACCES, errno.EPERM):
        hint = "permission denied — is the service user in the 'video' group?"
    elif code == errno.ENOTTY:
        hint = "not a V4L2 capture device (check video.device)"
    elif code == errno.EIO:
        hint = "I/O error — the camera was probably unplugged or reset"
    elif isinstance(exc, av.error.ExitError):
        hint = "timed out waiting for a frame — the camera stopped delivering"
    else:
        hint = str(exc)
    return SourceError(f"camera {device!r}: {what} failed: {hint}")


def _reformat(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    if frame.format.name == "yuv420p" and frame.width == width and frame.height == height:
        return frame
    return frame.reformat(width=width, height=height, format="yuv420p")


class V4l2Source(VideoSource):
    """A V4L2 camera (``/dev/video0``), via FFmpeg's v4l2 input."""

    def __init__(self, device: str, width: int, height: int, framerate: int) -> None:
        self.name = f"v4l2:{device}"
        self.device = device
        self.width = width
        self.height = height
        self.framerate = framerate
        self._stamp = StrictlyIncreasing()

    def _open(self) -> av.container.InputContainer:
        options = {"video_size": f"{self.width}x{self.height}", "framerate": str(self.framerate)}
        failures: list[str] = []
        last: Exception | None = None
        for extra in ({"input_format": "mjpeg"}, {}):
            try:
                return av.open(self.device, format="v4l2", options={**options, **extra},
                               timeout=(OPEN_TIMEOUT, READ_TIMEOUT))
            except av.error.FFmpegError as exc:
                code = getattr(exc, "errno", None)
                if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EBUSY,
                            errno.EACCES, errno.EPERM, errno.ENOTTY):
                    raise _v4l2_error(self.device, "open", exc) from exc
                failures.append(f"{extra.get('input_format', 'default format')}: {exc}")
                last = exc
        raise SourceError(
            f"camera {self.device!r}: cannot capture {self.width}x{self.height} at "
            f"{self.framerate} fps ({'; '.join(failures)}); try another video.width/height/"
            "framerate (v4l2-ctl --list-formats-ext shows what it supports)"
        ) from last

    def _produce(self, emit: Emit[av.VideoFrame], stop: threading.Event) -> None:
        container = self._open()
        try:
            if stop.is_set():
                return
            stream = container.streams.video[0]
            ctx = stream.codec_context
            log.info(
                "media.v4l2.opened", device=self.device, width=ctx.width, height=ctx.height,
                codec=ctx.name, pix_fmt=ctx.pix_fmt, rate=str(stream.average_rate or ""),
                asked=f"{self.width}x{self.height}@{self.framerate}",
            )
            try:
                for packet in container.demux(stream):
                    for frame in packet.decode():
                        if stop.is_set():
                            return
                        out = _reformat(frame, self.width, self.height)
                        out.pts = self._stamp(monotonic_pts())
                        out.time_base = VIDEO_TIME_BASE
                        emit(out)
            except av.error.FFmpegError as exc:
                raise _v4l2_error(self.device, "capture", exc) from exc
            raise SourceError(f"camera {self.device!r}: the stream ended — unplugged?")
        finally:
            container.close()

    async def run(self, sink: VideoSink) -> None:
        """Capture until cancelled; SourceError names the device and what to check."""
        log.info("media.source.started", source=self.name, width=self.width,
                 height=self.height, framerate=self.framerate)

        async def deliver(frame: av.VideoFrame) -> None:
            sink(frame)

        try:
            await pump_thread(
                self.name, self._produce, deliver, stall_timeout=V4L2_STALL,
                stall_message=f"camera {self.device!r}: no frame for {V4L2_STALL:g} s — "
                "is another program using it, or did it stop (unplugged, reset)?",
            )
        finally:
            log.info("media.source.stopped", source=self.name)


class FileSource(VideoSource):
    """A video file looped forever, in real time, as if it were a camera."""

    def __init__(self, path: str | Path, width: int, height: int, framerate: int) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"
        self.width = width
        self.height = height
        self.framerate = framerate
        self.loops = 0
        self._stamp = StrictlyIncreasing()

    def _open(self) -> av.container.InputContainer:
        if not self.path.is_file():
            what = "does not exist" if not self.path.exists() else "is not a file"
            raise SourceError(f"video file {str(self.path)!r} {what} (check video.path)")
        try:
            container = av.open(str(self.path))
        except av.error.FFmpegError as exc:
            raise SourceError(
                f"video file {str(self.path)!r}: cannot open it ({exc}); "
                "is it a video file FFmpeg can read?"
            ) from exc
        if not container.streams.video:
            container.close()
            raise SourceError(f"video file {str(self.path)!r} has no video stream")
        return container

    def _frames(self, container: av.container.InputContainer) -> Iterator[tuple[float, Any]]:
        """(seconds since the first frame, decoded frame) in presentation order."""
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or self.framerate
        first: float | None = None
        for index, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else index / float(rate)
            if first is None:
                first = t
            yield t - first, frame

    def _produce(self, emit: Emit[tuple[float, av.VideoFrame]], stop: threading.Event) -> None:
        """Worker thread: decode, thin to the configured rate, scale, loop."""
        min_gap = 0.9 / self.framerate  # tolerate jittery file time stamps
        offset = 0.0  # media time of the start of this loop
        while not stop.is_set():
            container = self._open()
            try:
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate or self.framerate
                interval = 1.0 / float(rate)
                last_sent: float | None = None
                end = 0.0
                count = 0
                try:
                    for t, frame in self._frames(container):
                        if stop.is_set():
                            return
                        count += 1
                        end = max(end, t + interval)
                        if last_sent is not None and t - last_sent < min_gap:
                            continue  # file faster than video.framerate: drop
                        last_sent = t
                        emit((offset + t, _reformat(frame, self.width, self.height)))
                except av.error.FFmpegError as exc:
                    raise SourceError(
                        f"video file {str(self.path)!r}: cannot decode it ({exc})"
                    ) from exc
                if count == 0:
                    raise SourceError(f"video file {str(self.path)!r} has no decodable frames")
                offset += end
                self.loops += 1
                log.debug("media.file.looped", source=self.name, loops=self.loops,
                          frames=count, seconds=round(end, 3))
            finally:
                container.close()

    async def run(self, sink: VideoSink) -> None:
        """Play the file in real time until cancelled.

        Frames go out at ``start + media time`` on the Trio clock.  A frame that is
        late by more than a frame period moves the schedule forward instead of
        letting the following frames burst out to catch up.
        """
        log.info("media.source.started", source=self.name, width=self.width,
                 height=self.height, framerate=self.framerate)
        period = 1.0 / self.framerate
        base: float | None = None

        async def deliver(item: tuple[float, av.VideoFrame]) -> None:
            nonlocal base
            t, frame = item
            now = trio.current_time()
            if base is None:
                base = now - t
            deadline = base + t
            if now > deadline + period:
                base += now - deadline  # skip the missed ticks
            else:
                await trio.sleep_until(deadline)
            frame.pts = self._stamp(monotonic_pts())
            frame.time_base = VIDEO_TIME_BASE
            sink(frame)

        try:
            await pump_thread(
                self.name, self._produce, deliver, stall_timeout=FILE_STALL,
                stall_message=f"video file {str(self.path)!r}: no frame decoded for "
                f"{FILE_STALL:g} s",
            )
        finally:
            log.info("media.source.stopped", source=self.name, loops=self.loops)

