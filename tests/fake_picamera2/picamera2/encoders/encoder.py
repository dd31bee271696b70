"""Encoder base class (as picamera2's ``encoders/encoder.py``, without audio or sync)."""

from __future__ import annotations

import threading
from enum import Enum
from typing import Any

from .. import _hardware
from ..outputs import Output


class Quality(Enum):
    VERY_LOW = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    VERY_HIGH = 4


_FORMATS = ("YUV420", "YVU420", "NV12", "NV21", "XBGR8888", "XRGB8888", "RGB888", "BGR888")
# Encoder.frame_skip_count came with 0.3.19, frames_encoded with 0.3.24; encode()
# leaves a stopped encoder alone from 0.3.25 (before, it called _encode regardless).
_SKIPS_FRAMES = _hardware.version_at_least(0, 3, 19)
_COUNTS_FRAMES = _hardware.version_at_least(0, 3, 24)
_CHECKS_RUNNING = _hardware.version_at_least(0, 3, 25)


class Encoder:
    """Base class: outputs, start/stop, per-frame dispatch and time stamps."""

    def __init__(self, framerate: float | None = 30) -> None:
        self._width = 0
        self._height = 0
        self._stride = 0
        self._format: str | None = None
        self._output: list[Output] = []
        self._running = False
        self._name: str | None = None
        self._framerate = framerate
        self._lock = threading.Lock()
        self.firsttimestamp: int | None = None
        if _SKIPS_FRAMES:
            self.frame_skip_count = 1
            self._skip_count = 0
        self._output_lock = threading.Lock()
        self.audio = False
        if _COUNTS_FRAMES:
            self.frames_encoded = 0

    @property
    def running(self) -> bool:
        return self._running

    @property
    def width(self) -> int:
        return self._width

    @width.setter
    def width(self, value: int) -> None:
        if not isinstance(value, int):
            raise RuntimeError("Width must be integer")
        self._width = value

    @property
    def height(self) -> int:
        return self._height

    @height.setter
    def height(self, value: int) -> None:
        if not isinstance(value, int):
            raise RuntimeError("Height must be integer")
        self._height = value

    @property
    def size(self) -> tuple[int, int]:
        return (self._width, self._height)

    @property
    def stride(self) -> int:
        return self._stride

    @stride.setter
    def stride(self, value: int) -> None:
        if not isinstance(value, int):
            raise RuntimeError("Stride must be integer")
        self._stride = value

    @property
    def format(self) -> str | None:
        return self._format

    @format.setter
    def format(self, value: str) -> None:
        if value not in _FORMATS:
            raise RuntimeError(f"Invalid format {value}")
        self._format = value

    @property
    def output(self) -> Any:
        return self._output[0] if len(self._output) == 1 else self._output

    @output.setter
    def output(self, value: Any) -> None:
        if isinstance(value, list):
            for out in value:
                if not isinstance(out, Output):
                    raise RuntimeError("Must pass Output")
        elif isinstance(value, Output):
            value = [value]
        else:
            raise RuntimeError("Must pass Output")
        self._output = value

    @property
    def name(self) -> str | None:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        if not isinstance(value, str):
            raise RuntimeError("Name must be string")
        self._name = value

    def encode(self, stream: Any, request: Any) -> None:
        """Called by the camera thread, holding the camera's lock, for every frame of the
        encoder's stream. ``_encode`` runs with the encoder's lock held."""
        if not _SKIPS_FRAMES:  # before 0.3.19: every frame, running or not
            with self._lock:
                self._encode(stream, request)
            return
        if self._skip_count == 0:
            with self._lock:
                if _CHECKS_RUNNING and not self._running:
                    return
                self._encode(stream, request)
        self._skip_count = (self._skip_count + 1) % self.frame_skip_count
        if _COUNTS_FRAMES:
            self.frames_encoded += 1

    def _encode(self, stream: Any, request: Any) -> None:
        raise NotImplementedError

    def _fault(self, command: str) -> str:
        """The stand-in's fault command for this encoder: "stall-encoder" for the
        main stream's, "stall-encoder-lores" for the lores stream's (not picamera2's)."""
        return command if self._name in (None, "main") else f"{command}-{self._name}"

    def start(self, quality: Quality | None = None) -> None:
        """Set up, mark running, start the outputs, then ``_start``: a ``_start`` that
        raises leaves the encoder marked running (and whatever it had opened)."""
        with self._lock:
            if self._running:
                raise RuntimeError("Encoder already running")
            if _COUNTS_FRAMES:
                self.frames_encoded = 0
            self._setup(quality)
            self._running = True
            self.firsttimestamp = None
            for out in self._output:
                out.start()
            self._start()

    def _start(self) -> None:
        pass

    def stop(self) -> None:
        """Waits for the encoder's lock: for ever if the camera thread is stuck in _encode."""
        with self._lock:
            if not self._running:
                raise RuntimeError("Encoder already stopped")
            self._running = False
            self._stop()
            for out in self._output:
                out.stop()

    def _stop(self) -> None:
        pass

    def outputframe(
        self, frame: Any, keyframe: bool = True, timestamp: int | None = None,
        packet: Any = None, audio: bool = False,
    ) -> None:
        with self._output_lock:
            for out in self._output:
                out.outputframe(frame, keyframe, timestamp, packet, audio)

    def _setup(self, quality: Quality | None) -> None:
        pass

    def _timestamp(self, request: Any) -> int:
        """Microseconds since this encoder's first frame (the sensor's clock)."""
        ts = int(request.request.metadata["SensorTimestamp"] / 1000)
        if self.firsttimestamp is None:
            self.firsttimestamp = ts
            return 0
        return ts - self.firsttimestamp
