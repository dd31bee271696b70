"""A synthetic camera: scrolling colour bars, a moving box and a frame code.

Used when there is no camera (CI, the demo, a board without one attached) and to
measure the pipeline: every frame carries a :mod:`~glimpse_edge.media.framecode`
with its counter and capture time.  Motion matters: a static picture would let the
encoder coast at a few kbit/s and hide bitrate, freeze and latency problems.

Cost matters too, because the pattern is rendered on the Trio thread: the bars are
one precomputed row per plane (vertical bars are the same on every line), so a frame
is a broadcast copy of a slice of that row, plus a small box and the code, written
straight into the frame's planes.  Measured ~0.06 ms per 1280x720 frame (0.08 ms at
1080p) on the 2-core x86 development VM, against a budget of 3 ms.
"""

from __future__ import annotations

import time
from typing import Final

import av
import numpy as np
import numpy.typing as npt
import structlog
import trio

from .framecode import code_geometry, draw_code
from .source import (
    VIDEO_TIME_BASE,
    StrictlyIncreasing,
    VideoSink,
    VideoSource,
    monotonic_pts,
    plane_view,
)

__all__ = ["TestPatternSource"]

log = structlog.get_logger(__name__)

# 75% colour bars (white, yellow, cyan, green, magenta, red, blue, black) as BT.601
# limited-range YUV, the classic SMPTE/EBU order.
_BARS_YUV: Final = (
    (180, 128, 128),
    (162, 44, 142),
    (131, 156, 44),
    (112, 72, 58),
    (84, 184, 198),
    (65, 100, 212),
    (35, 212, 114),
    (16, 128, 128),
)
_BOX_YUV: Final = (235, 128, 128)
_SCROLL_SECONDS: Final = 4.0  # the bars scroll one full width in this time
_BOX_SECONDS: Final = 3.0  # the box crosses the frame in this time
MAX_NOISE: Final = 20  # grain amplitude: 235 (white) + 20 still fits a byte


def _bars_row(length: int, period: int, column: int) -> npt.NDArray[np.uint8]:
    """One row of bars, ``length`` px, repeating every ``period`` px; ``column`` = Y/U/V."""
    x = np.arange(length)
    index = (x % period) * len(_BARS_YUV) // period
    values = np.array([bar[column] for bar in _BARS_YUV], dtype=np.uint8)
    return values[index]


class TestPatternSource(VideoSource):
    """Real-time synthetic video with a frame code (counter from 0, capture wall time)."""

    __test__ = False  # not a pytest test class, whatever its name says

    def __init__(self, width: int, height: int, framerate: int, noise: int = 0) -> None:
        """``noise`` (0..20): grain added to the luma, as a camera's sensor makes in a dim
        room; it makes the encoder spend its whole bitrate, for bandwidth tests."""
        if width < 16 or height < 16 or width % 2 or height % 2:
            raise ValueError(f"test pattern size must be even and >= 16x16, got {width}x{height}")
        if framerate < 1:
            raise ValueError(f"framerate must be >= 1, got {framerate}")
        self.name = "testpattern"
        self.width = width
        self.height = height
        self.framerate = framerate
        self._counter = 0
        self._stamp = StrictlyIncreasing()
        cw = width // 2
        # Two periods of bars per row, so any window of one period is a plain slice.
        self._row_y = _bars_row(2 * width, width, 0)
        self._row_u = _bars_row(2 * cw, cw, 1)
        self._row_v = _bars_row(2 * cw, cw, 2)
        # Where the code goes (skipped on frames too small to hold a readable one).
        self._code: tuple[int, int] | None = None
        try:
            geo = code_geometry(width)
            if geo.block >= 2 and geo.height <= height // 2:
                self._code = (geo.width, geo.height)
        except ValueError:
            pass
        self._box = max(8, (min(width, height) // 8) & ~1)
        if not 0 <= noise <= MAX_NOISE:
            raise ValueError(f"noise must be 0..{MAX_NOISE}, got {noise}")
        # One grain field a little larger than the frame; each frame adds a window
        # of it at another offset (a copy-free view), so the grain moves like real noise.
        self._grain = (np.random.default_rng(0).integers(0, noise + 1, (height + 32, width + 64),
                                                         dtype=np.uint8)
                       if noise else None)

    def render(self, counter: int, wall_ms: int, pts: int) -> av.VideoFrame:
        """Draw frame number ``counter``; the motion is a function of the counter only."""
        w, h = self.width, self.height
        cw, ch = w // 2, h // 2
        frame = av.VideoFrame(w, h, "yuv420p")
        y = plane_view(frame, 0, w, h)
        u = plane_view(frame, 1, cw, ch)
        v = plane_view(frame, 2, cw, ch)

        # scrolling bars: one full width every _SCROLL_SECONDS
        step = counter / (self.framerate * _SCROLL_SECONDS)
        off = int(step * cw) % cw  # in chroma pixels, so luma and chroma stay aligned
        y[:] = self._row_y[2 * off : 2 * off + w]
        u[:] = self._row_u[off : off + cw]
        v[:] = self._row_v[off : off + cw]

        # a box bouncing diagonally, on even coordinates for 4:2:0
        phase = counter / (self.framerate * _BOX_SECONDS)
        s = self._box
        bx = int(abs((phase % 2.0) - 1.0) * (w - s)) & ~1
        by = int(abs(((phase * 0.7) % 2.0) - 1.0) * (h - s)) & ~1
        y[by : by + s, bx : bx + s] = _BOX_YUV[0]
        u[by // 2 : (by + s) // 2, bx // 2 : (bx + s) // 2] = _BOX_YUV[1]
        v[by // 2 : (by + s) // 2, bx // 2 : (bx + s) // 2] = _BOX_YUV[2]

        if self._grain is not None:  # bars and box top out at 235: no overflow
            gy, gx = (counter * 7) % 32, (counter * 29) % 64
            y += self._grain[gy : gy + h, gx : gx + w]

        if self._code is not None:
            cw_px, ch_px = self._code
            # neutral chroma under the code: pure grey/black/white compresses best
            u[: (ch_px + 1) // 2, : (cw_px + 1) // 2] = 128
            v[: (ch_px + 1) // 2, : (cw_px + 1) // 2] = 128
            draw_code(y, counter, wall_ms)

        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        return frame

    async def run(self, sink: VideoSink) -> None:
        """Render frames on a real-time schedule; late ticks are skipped, never bursted."""
        period = 1.0 / self.framerate
        log.info(
            "media.source.started", source=self.name, width=self.width, height=self.height,
            framerate=self.framerate,
        )
        deadline = trio.current_time()
        skipped = 0
        try:
            while True:
                await trio.sleep_until(deadline)
                frame = self.render(self._counter, int(time.time() * 1000),
                                    self._stamp(monotonic_pts()))
                self._counter += 1
                sink(frame)
                deadline += period
                now = trio.current_time()
                if now > deadline + period:  # more than a whole tick late: skip the missed ones
                    missed = int((now - deadline) / period)
                    deadline += missed * period
                    skipped += missed
                    log.debug("media.source.late", source=self.name, skipped=missed)
        finally:
            log.info("media.source.stopped", source=self.name, frames=self._counter,
                     skipped=skipped)
