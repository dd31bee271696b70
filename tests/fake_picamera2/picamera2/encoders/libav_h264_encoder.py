"""The software H.264 encoder (``LibavH264Encoder``), encoding in the camera's thread.

On a Pi 5 (PiSP) ``picamera2.encoders.H264Encoder`` is this class: there is
no H.264 hardware. Note its signature has no ``enable_sps_framerate``.
"""

from __future__ import annotations

import math
from typing import Any

from .. import _hardware
from . import _x264
from .encoder import Encoder, Quality

_PROFILES = ("Baseline", "Constrained Baseline", "Main", "High", "High 10", "High 4:2:2")


class LibavH264Encoder(Encoder):
    def __init__(
        self, bitrate: int | None = None, repeat: bool = True, iperiod: int | None = 30,
        framerate: float = 30, qp: int | None = None, profile: str | None = None,
    ) -> None:
        super().__init__()
        self._codec = "h264"
        self.repeat = repeat
        self.bitrate = bitrate
        self.iperiod = iperiod
        self.framerate = framerate
        self.qp = qp
        self.profile = profile
        self._key_frames_requested = 0
        self._key_frames_generated = 0

    def _setup(self, quality: Quality | None) -> None:
        if quality is not None or (self.bitrate is None and self.qp is None):
            quality = Quality.MEDIUM if quality is None else quality
            table = {Quality.VERY_LOW: 3, Quality.LOW: 4, Quality.MEDIUM: 7, Quality.HIGH: 10,
                     Quality.VERY_HIGH: 14}
            complexity = self.width * self.height * (self.framerate or 30)
            self.bitrate = int(table[quality] * 1_000_000 * math.sqrt(
                complexity / (1920 * 1080 * 30)))

    def _start(self) -> None:
        if self.profile is not None:
            if not isinstance(self.profile, str):
                raise RuntimeError("Profile should be a string value")
            if not any(self.profile.lower() == p.lower() for p in _PROFILES):
                raise RuntimeError("Profile " + self.profile + " not recognised")
        gop = self.iperiod or (1 << 31) - 1
        self._ctx = _x264.open_x264(
            self.width, self.height, bitrate=self.bitrate, gop=min(gop, 1 << 16),
            repeat=self.repeat, profile=self.profile, framerate=self.framerate, qp=self.qp)
        self._wedged = False
        _hardware.record(f"encoder.start bitrate={self.bitrate} iperiod={self.iperiod} "
                         f"profile={self.profile} repeat={self.repeat} software=1 "
                         f"stream={self.name}")

    def _stop(self) -> None:
        self._ctx = None
        _hardware.record(f"encoder.stop stream={self.name}")

    def _encode(self, stream: Any, request: Any) -> None:
        timestamp_us = self._timestamp(request)
        if not self._wedged and _hardware.take_command(self._fault("stall-encoder")):
            self._wedged = True
        if self._wedged:
            return
        force = False
        if self._key_frames_requested > self._key_frames_generated:
            self._key_frames_generated += 1
            force = True
            _hardware.record(f"encoder.force_key_frame ts={timestamp_us}")
        for packet in _x264.encode(self._ctx, request.make_array(stream), timestamp_us,
                                   force):
            self.outputframe(bytes(packet), packet.is_keyframe, timestamp=packet.pts,
                             packet=packet)

    def force_key_frame(self) -> None:
        """Force a key frame to be encoded in the video stream as soon as possible."""
        self._key_frames_requested += 1
