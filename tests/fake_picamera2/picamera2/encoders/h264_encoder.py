"""The hardware (V4L2, VC4) H.264 encoder, emulated with libx264 in its own poll thread.

Mirrors picamera2's ``H264Encoder(V4L2Encoder)``: settings are read at
``start()`` (there is no runtime bitrate setter), frames are queued to the
codec (16 input buffers: a slow codec stalls the camera thread), the codec's
output is picked up by ``thread_poll`` and handed to the outputs from THAT
thread, buffers that hold only SPS/PPS are dropped, and ``force_key_frame()``
marks the next queued frame.
"""

from __future__ import annotations

import errno
import queue
import threading
from typing import Any

from .. import _hardware
from . import _x264
from .encoder import Encoder, Quality

_PROFILES = ("baseline", "constrained baseline", "main", "high")
NUM_OUTPUT_BUFFERS = 16
MAX_SIZE = 1920
BITRATE_RANGE = (25_000, 25_000_000)


class V4L2Encoder(Encoder):
    def __init__(self, bitrate: int | None, pixformat: str) -> None:
        super().__init__()
        self.bitrate = bitrate
        self._pixformat = pixformat
        self.vd: Any = None
        self.framerate: float | None = None
        self._enable_framerate = False
        self._key_frames_requested = 0
        self._key_frames_generated = 0

    @staticmethod
    def _check_for_picture(buf: bytes) -> bool:
        """As V4L2Encoder._check_for_picture: a buffer of SPS/PPS alone is no picture."""
        if len(buf) > 64:
            return True
        start_code = b"\x00\x00\x00\x01"
        pos = 0
        while (pos := buf.find(start_code, pos)) != -1:
            pos += 4
            if pos < len(buf) and buf[pos] & 15 in {5, 1}:
                return True
        return False


class H264Encoder(V4L2Encoder):
    def __init__(
        self, bitrate: int | None = None, repeat: bool = True, iperiod: int | None = None,
        framerate: float | None = None, enable_sps_framerate: bool = False,
        qp: int | None = None, profile: str | None = None,
    ) -> None:
        super().__init__(bitrate, "H264")
        self.iperiod = iperiod
        self.repeat = repeat
        self.qp = qp
        self.profile = profile
        self.framerate = framerate
        self._enable_framerate = enable_sps_framerate

    def _setup(self, quality: Quality | None) -> None:
        if quality is not None or (self.bitrate is None and self.qp is None):
            quality = Quality.MEDIUM if quality is None else quality
            table = {Quality.VERY_LOW: 2, Quality.LOW: 4, Quality.MEDIUM: 6, Quality.HIGH: 9,
                     Quality.VERY_HIGH: 15}
            complexity = self.width * self.height * (self.framerate or 30)
            self.bitrate = int(table[quality] * 1_000_000 * complexity / (1920 * 1080 * 30))

    def _start(self) -> None:
        if self.profile:
            if not isinstance(self.profile, str):
                raise RuntimeError("Profile should be a string value")
            if self.profile.lower() not in _PROFILES:
                raise RuntimeError("Profile " + self.profile + " not recognised")
        if self.format != "YUV420" and self.format not in ("XBGR8888", "XRGB8888", "RGB888",
                                                           "BGR888"):
            raise RuntimeError("Unrecognised format", self.format, "for V4L2")
        if self.width > MAX_SIZE or self.height > MAX_SIZE:
            raise OSError(errno.EINVAL, "Invalid argument (VIDIOC_S_FMT)")
        if self.bitrate is not None and not BITRATE_RANGE[0] <= self.bitrate <= BITRATE_RANGE[1]:
            raise OSError(errno.ERANGE, "Numerical result out of range (VIDIOC_S_CTRL bitrate)")
        if self.format != "YUV420":
            raise RuntimeError("the picamera2 stand-in only encodes YUV420")
        gop = self.iperiod if self.iperiod is not None else 60  # the driver's default
        self._ctx = _x264.open_x264(
            self.width, self.height, bitrate=self.bitrate, gop=gop, repeat=self.repeat,
            profile=self.profile, framerate=self.framerate or 30, qp=self.qp)
        self.vd = object()  # "/dev/video11" is open
        self._wedged = False
        self.buf_frame: queue.Queue[tuple[Any, str, int, bool]] = queue.Queue(
            NUM_OUTPUT_BUFFERS)
        self.thread = threading.Thread(target=self.thread_poll, name="v4l2-encoder",
                                       daemon=True)
        self.thread.start()
        _hardware.record(f"encoder.start bitrate={self.bitrate} iperiod={gop} "
                         f"profile={self.profile} repeat={self.repeat} stream={self.name}")

    def _stop(self) -> None:
        self.thread.join()
        self.vd = None
        self._ctx = None
        _hardware.record(f"encoder.stop stream={self.name}")

    def thread_poll(self) -> None:
        """The codec's output side: encodes queued frames and outputs them, in this thread."""
        while self._running or self.buf_frame.qsize() > 0:
            try:
                request, stream, timestamp_us, force = self.buf_frame.get(timeout=0.4)
            except queue.Empty:
                if not self._running:
                    break
                continue
            try:
                if not self._wedged and _hardware.take_command(self._fault("stall-encoder")):
                    self._wedged = True
                if self._wedged:
                    continue  # a frozen codec: frames go in, nothing comes out
                for packet in _x264.encode(self._ctx, request.make_array(stream), timestamp_us,
                                           force):
                    b = bytes(packet)
                    keyframe = bool(packet.is_keyframe)
                    if self._check_for_picture(b):
                        self.outputframe(b, keyframe, timestamp_us)
            finally:
                request.release()

    def _encode(self, stream: Any, request: Any) -> None:
        if self.vd is None:
            return
        force = False
        timestamp_us = self._timestamp(request)
        if self._key_frames_requested > self._key_frames_generated:
            self._key_frames_generated += 1
            force = True
            _hardware.record(f"encoder.force_key_frame ts={timestamp_us}")
        request.acquire()
        self.buf_frame.put((request, stream, timestamp_us, force))  # blocks when all 16 are queued

    def force_key_frame(self) -> None:
        """Force a key frame to be encoded in the video stream as soon as possible."""
        self._key_frames_requested += 1
