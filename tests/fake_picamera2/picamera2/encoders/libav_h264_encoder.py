"""The software H.264 encoder (``LibavH264Encoder``, as picamera2's ``libav_h264_encoder.py``).

On a Pi 5 (PiSP) ``picamera2.encoders.H264Encoder`` is this class. It
encodes in the camera thread with the installed PyAV, set up as picamera2
sets it up: a null container's stream, frame threads at an automatic count
(so packets come out a few frames late), one camera request held back, and a
requested key frame marked with ``frame.pict_type = "I"``, which PyAV 13 and
newer refuse with TypeError: raised in the camera thread, it ends it.

Releases: ``profile=`` came with 0.3.17, ``force_key_frame()`` with 0.3.32
(before, an ``iperiod`` of 0 or None went to libav as it was).
"""

from __future__ import annotations

import collections
import math
import time
from fractions import Fraction
from typing import Any

from .. import _hardware
from ..request import MappedArray
from .encoder import Encoder, Quality

_PROFILE_ARG = _hardware.version_at_least(0, 3, 17)
_FORCE_KEY_FRAME = _hardware.version_at_least(0, 3, 32)
_PIX_FMTS = {"YUV420": "yuv420p", "BGR888": "rgb24", "RGB888": "bgr24", "XBGR8888": "rgba",
             "XRGB8888": "bgra"}


class LibavH264Encoder(Encoder):
    if _PROFILE_ARG:
        def __init__(self, bitrate: int | None = None, repeat: bool = True,
                     iperiod: int | None = 30, framerate: float = 30, qp: int | None = None,
                     profile: str | None = None) -> None:
            self._init(bitrate, repeat, iperiod, framerate, qp)
            self.profile = profile
    else:
        def __init__(self, bitrate: int | None = None, repeat: bool = True,  # type: ignore[misc]
                     iperiod: int | None = 30, framerate: float = 30,
                     qp: int | None = None) -> None:
            self._init(bitrate, repeat, iperiod, framerate, qp)
            self.profile = None

    def _init(self, bitrate: int | None, repeat: bool, iperiod: int | None, framerate: float,
              qp: int | None) -> None:
        super().__init__()
        self._codec = "h264"
        self.repeat = repeat
        self.bitrate = bitrate
        self.iperiod = iperiod
        self.framerate = framerate
        self.qp = qp
        self.preset: str | None = None
        self.drop_final_frames = False
        self.threads = 0  # libav's choice
        self._lasttimestamp: tuple[int, int] | None = None
        self._request_release_delay = 1
        self._request_release_queue: collections.deque[Any] | None = None
        self._stalled = False  # the stand-in's stall-encoder fault
        if _FORCE_KEY_FRAME:
            self._key_frames_requested = 0
            self._key_frames_generated = 0

    def _setup(self, quality: Quality | None) -> None:
        if quality is not None or (getattr(self, "bitrate", None) is None
                                   and getattr(self, "qp", None) is None):
            quality = Quality.MEDIUM if quality is None else quality
            mbps = {Quality.VERY_LOW: 3, Quality.LOW: 4, Quality.MEDIUM: 7, Quality.HIGH: 10,
                    Quality.VERY_HIGH: 14}[quality]
            complexity = self.width * self.height * getattr(self, "framerate", 30)
            self.bitrate = int(mbps * 1_000_000 * math.sqrt(complexity / (1920 * 1080 * 30)))

    def _start(self) -> None:
        import av

        self._stalled = False  # a new start cures the stand-in's stall-encoder
        self._container = av.open("/dev/null", "w", format="null")
        # as picamera2: PyAV 18 takes no float rate (AttributeError: 'float' object has
        # no attribute 'numerator'), so a framerate such as 29.97 fails here
        self._stream = self._container.add_stream(  # type: ignore[call-overload]
            self._codec, rate=self.framerate)
        context = self._stream.codec_context
        context.thread_count = self.threads
        context.thread_type = av.codec.context.ThreadType.FRAME
        self._stream.width = self.width
        self._stream.height = self.height
        self._stream.pix_fmt = "yuv420p"
        preset = "ultrafast"
        if self.profile is not None:
            if not isinstance(self.profile, str):
                raise RuntimeError("Profile should be a string value")
            wanted = self.profile.lower()
            found = next((p for p in self._stream.profiles if p.lower() == wanted), None)
            if not found:
                raise RuntimeError("Profile " + self.profile + " not recognised")
            self._stream.profile = found
            if "baseline" not in found.lower():  # ultrafast always makes baseline
                preset = "superfast"
        if self.bitrate is not None:
            context.bit_rate = self.bitrate
        if _FORCE_KEY_FRAME:
            context.gop_size = self.iperiod or (1 << 31) - 1
        else:
            context.gop_size = self.iperiod
        context.options["preset"] = self.preset or preset
        context.options["deblock"] = "1"
        if not self.repeat:  # as picamera2: PyAV 14+ spells it global_header (AttributeError)
            context.flags |= av.codec.context.Flags.GLOBAL_HEADER  # type: ignore[attr-defined]
        if self.qp is not None:
            context.qmin = context.qmax = self.qp
        context.time_base = Fraction(1, 1_000_000)
        context.options["tune"] = "zerolatency"
        self._av_input_format = _PIX_FMTS[str(self._format)]
        self._request_release_queue = collections.deque()
        _hardware.record(f"encoder.start bitrate={self.bitrate} iperiod={self.iperiod} "
                         f"profile={self.profile} repeat={self.repeat} software=1 "
                         f"stream={self.name}")

    def _stop(self) -> None:
        if not self.drop_final_frames:
            # what libav still holds comes out now, paced for outputs that need it
            for packet in self._stream.encode():
                if any(out.needs_pacing for out in self._output) and self._lasttimestamp:
                    then_ns, then_pts = self._lasttimestamp
                    wait_us = packet.pts - then_pts - (time.monotonic_ns() - then_ns) / 1000
                    if wait_us > 0:
                        time.sleep(wait_us / 1_000_000)
                self._lasttimestamp = (time.monotonic_ns(), packet.pts)
                self._output_packet(packet)
        while self._request_release_queue:
            self._request_release_queue.popleft().release()
        self._container.close()
        _hardware.record(f"encoder.stop stream={self.name}")

    def _output_packet(self, packet: Any) -> None:
        if self._stalled:
            return  # the stand-in's stall-encoder: nothing comes out any more
        self.outputframe(bytes(packet), packet.is_keyframe, timestamp=packet.pts, packet=packet)

    def _encode(self, stream: Any, request: Any) -> None:
        import av

        assert self._request_release_queue is not None
        request.acquire()
        self._request_release_queue.append(request)
        timestamp_us = self._timestamp(request)
        if not self._stalled and _hardware.take_command(self._fault("stall-encoder")):
            self._stalled = True
        with MappedArray(request, stream) as m:
            assert m.array is not None
            frame = av.VideoFrame.from_numpy_buffer(m.array, format=self._av_input_format,
                                                    width=self.width)
            frame.pts = timestamp_us
            if _FORCE_KEY_FRAME and self._key_frames_requested > self._key_frames_generated:
                self._key_frames_generated += 1
                _hardware.record(f"encoder.force_key_frame ts={timestamp_us}")
                frame.pict_type = "I"  # type: ignore[assignment]  # TypeError with PyAV 13+
            for packet in self._stream.encode(frame):
                self._lasttimestamp = (time.monotonic_ns(), packet.pts)
                self._output_packet(packet)
        while len(self._request_release_queue) > self._request_release_delay:
            self._request_release_queue.popleft().release()

    if _FORCE_KEY_FRAME:
        def force_key_frame(self) -> None:
            """Force a key frame to be encoded in the video stream as soon as possible."""
            self._key_frames_requested += 1
