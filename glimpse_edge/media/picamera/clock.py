"""Packet time stamps for one camera's encoders: real time, and one ``pts`` per camera frame.

picamera2 gives each access unit microseconds since its encoder's first
frame, from 0 again after every restart of that encoder, and says where
that first frame was on the sensor's clock (``encoder.firsttimestamp``,
CLOCK_MONOTONIC). Stamping from the sensor's time, against one anchor per
camera session, gives both encoders' packets of one camera frame the same
``pts``, which a peer switching between the tiers relies on (no step back
in time). An encoder that does not say its first frame's time is anchored
to the clock at its first packet instead, session by session. Either way
``pts`` (1/90000 s) follows real time across gaps, keeps the sensor's
spacing, and strictly increases per stream, across restarts and reopens.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..source import VIDEO_CLOCK_RATE, monotonic_pts

__all__ = ["CameraClock", "Timeline"]


@dataclass
class Timeline:
    """One stream's time stamps so far."""

    last_pts: int | None = None
    anchor_generation: int = -1  # for encoders that do not say their first time stamp
    anchor: int = 0


class CameraClock:
    """The ``pts`` of every packet of one camera, whichever of its encoders made it."""

    def __init__(self, framerate: int) -> None:
        self._frame_pts = VIDEO_CLOCK_RATE // framerate
        self._sensor_anchor: int | None = None  # pts of sensor time 0, per camera session
        self._newest_pts: int | None = None

    def new_session(self) -> None:
        """The camera was (re)opened: anchor the sensor's clock again at the next packet."""
        self._sensor_anchor = None

    def stamp(self, line: Timeline, generation: int, timestamp_us: int,
              sensor_us: int | None) -> int:
        """``pts`` of an access unit of encoder session ``generation`` on ``line``."""
        if sensor_us is not None:
            offset = sensor_us * 9 // 100  # microseconds -> 1/90000 s
            if self._sensor_anchor is None:
                self._sensor_anchor = monotonic_pts() - offset
                if self._newest_pts is not None:  # a reopened camera: after what was sent
                    self._sensor_anchor = max(self._sensor_anchor,
                                              self._newest_pts + self._frame_pts - offset)
            pts = self._sensor_anchor + offset
        else:
            offset = timestamp_us * 9 // 100
            if generation != line.anchor_generation:
                # A new encoder session counts from 0 again: anchor it to the
                # clock, after the last packet of the previous one.
                line.anchor_generation = generation
                line.anchor = monotonic_pts() - offset
                if line.last_pts is not None:
                    line.anchor = max(line.anchor, line.last_pts + self._frame_pts - offset)
            pts = line.anchor + offset
        if line.last_pts is not None and pts <= line.last_pts:
            pts = line.last_pts + 1
        line.last_pts = pts
        self._newest_pts = pts if self._newest_pts is None else max(self._newest_pts, pts)
        return pts
