"""The hardware H.264 encoder (``H264Encoder(V4L2Encoder)``, as picamera2's ``h264_encoder.py``).

Settings are read at ``start()`` (there is no runtime bitrate setter) and
become the codec's V4L2 controls. The ``profile=`` argument came with 0.3.17
(before, ``H264Encoder(profile=...)`` is a TypeError), ``force_key_frame()``
with 0.3.32 (before, there is no such method).
"""

from __future__ import annotations

from typing import Any

from .. import _hardware
from .encoder import Quality
from .v4l2_encoder import V4L2Encoder

_PROFILES = ("baseline", "constrained baseline", "main", "high")


class H264Encoder(V4L2Encoder):
    if _hardware.version_at_least(0, 3, 17):
        def __init__(
            self, bitrate: int | None = None, repeat: bool = True, iperiod: int | None = None,
            framerate: float | None = None, enable_sps_framerate: bool = False,
            qp: int | None = None, profile: str | None = None,
        ) -> None:
            self._init(bitrate, repeat, iperiod, framerate, enable_sps_framerate, qp)
            self.profile = profile
    else:
        def __init__(  # type: ignore[misc]
            self, bitrate: int | None = None, repeat: bool = True, iperiod: int | None = None,
            framerate: float | None = None, enable_sps_framerate: bool = False,
            qp: int | None = None,
        ) -> None:
            self._init(bitrate, repeat, iperiod, framerate, enable_sps_framerate, qp)
            self.profile = None

    def _init(self, bitrate: int | None, repeat: bool, iperiod: int | None,
              framerate: float | None, enable_sps_framerate: bool, qp: int | None) -> None:
        super().__init__(bitrate, "H264")
        self.iperiod = iperiod
        self.repeat = repeat
        self.qp = qp
        self.framerate = framerate
        self._enable_framerate = enable_sps_framerate

    def _start(self) -> None:
        """The H.264 controls (an unknown profile raises before the device is opened)."""
        controls: list[tuple[str, Any]] = []
        if self.profile:
            if not isinstance(self.profile, str):
                raise RuntimeError("Profile should be a string value")
            if self.profile.lower() not in _PROFILES:
                raise RuntimeError("Profile " + self.profile + " not recognised")
            controls.append(("h264_profile", self.profile.lower()))
        if self.iperiod is not None:
            controls.append(("h264_i_period", self.iperiod))
        if self.repeat:
            controls.append(("repeat_sequence_header", 1))
        if self.qp is not None:
            controls += [("h264_min_qp", self.qp), ("h264_max_qp", self.qp)]
        self._controls = controls
        super()._start()

    def _setup(self, quality: Quality | None) -> None:
        if quality is not None or (getattr(self, "bitrate", None) is None
                                   and getattr(self, "qp", None) is None):
            quality = Quality.MEDIUM if quality is None else quality
            mbps = {Quality.VERY_LOW: 2, Quality.LOW: 4, Quality.MEDIUM: 6, Quality.HIGH: 9,
                    Quality.VERY_HIGH: 15}[quality]
            complexity = self.width * self.height * getattr(self, "framerate", 30)
            self.bitrate = int(mbps * 1_000_000 * complexity / (1920 * 1080 * 30))

    if _hardware.version_at_least(0, 3, 32):
        def force_key_frame(self) -> None:
            """Force a key frame to be encoded in the video stream as soon as possible."""
            self._key_frames_requested += 1
