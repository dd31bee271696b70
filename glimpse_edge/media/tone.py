"""A synthetic microphone: a continuous sine at -12 dBFS.

Used without a microphone (CI, the demo) and to check the audio path by ear and by
analysis: a pure tone makes clicks (phase jumps at frame boundaries), dropouts and
resampling errors obvious.  -12 dBFS leaves head-room for Opus and is clearly audible
without being unpleasant.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Final

import av
import numpy as np
import structlog
import trio

from .source import AudioSink, AudioSource

__all__ = ["TONE_LEVEL_DBFS", "ToneSource", "audio_layout"]

log = structlog.get_logger(__name__)

TONE_LEVEL_DBFS: Final = -12.0
_AMPLITUDE: Final = 32767 * 10 ** (TONE_LEVEL_DBFS / 20)  # peak, in s16 units
_MAX_LAG: Final = 0.2  # seconds behind schedule before we skip instead of catching up


def audio_layout(channels: int) -> str:
    """The PyAV layout name for 1 or 2 channels (all the agent sends)."""
    if channels == 1:
        return "mono"
    if channels == 2:
        return "stereo"
    raise ValueError(f"channels must be 1 or 2, got {channels}")


class ToneSource(AudioSource):
    """A sine of ``frequency`` Hz, the same on every channel, with contiguous phase and pts."""

    def __init__(self, rate: int, channels: int, frequency: float, period_ms: int) -> None:
        if not 0 < frequency < rate / 2:
            raise ValueError(f"tone frequency {frequency} Hz must be in (0, {rate / 2}) Hz")
        samples = rate * period_ms // 1000
        if samples < 1:
            raise ValueError(f"a {period_ms} ms period at {rate} Hz has no samples")
        self.name = "tone"
        self.rate = rate
        self.channels = channels
        self.frequency = frequency
        self.period_ms = period_ms
        self.samples_per_frame = samples
        self._layout = audio_layout(channels)
        self._step = frequency / rate  # phase advance per sample, in cycles
        self._cycles = 0.0  # phase of the next sample, in cycles (0 <= x < 1)
        self._next_pts = 0  # samples produced so far (kept across restarts of run())

    def next_frame(self) -> av.AudioFrame:
        """The next frame: phase and pts continue exactly where the last frame ended."""
        n = self.samples_per_frame
        cycles = self._cycles + self._step * np.arange(n, dtype=np.float64)
        # Phase is kept in cycles modulo 1, so float64 stays exact however long we run.
        self._cycles = (self._cycles + self._step * n) % 1.0
        phase = 2 * np.pi * cycles
        mono = np.rint(_AMPLITUDE * np.sin(phase)).astype(np.int16)
        packed = np.repeat(mono, self.channels) if self.channels > 1 else mono
        frame = av.AudioFrame.from_ndarray(packed.reshape(1, -1), format="s16",
                                           layout=self._layout)
        frame.sample_rate = self.rate
        frame.pts = self._next_pts
        frame.time_base = Fraction(1, self.rate)
        self._next_pts += n
        return frame

    async def run(self, sink: AudioSink) -> None:
        """Emit one frame per period on a real-time schedule.

        A little lateness is caught up (the long-run sample rate must be exact for
        the receiver's jitter buffer); more than ``_MAX_LAG`` behind, the schedule is
        reset instead of bursting.  pts and phase stay contiguous either way.
        """
        period = self.samples_per_frame / self.rate
        log.info("media.source.started", source=self.name, rate=self.rate,
                 channels=self.channels, frequency=self.frequency, period_ms=self.period_ms)
        deadline = trio.current_time()
        try:
            while True:
                await trio.sleep_until(deadline)
                sink(self.next_frame())
                deadline += period
                lag = trio.current_time() - deadline
                if lag > _MAX_LAG:
                    log.debug("media.source.late", source=self.name, lag=round(lag, 3))
                    deadline += lag
        finally:
            log.info("media.source.stopped", source=self.name, samples=self._next_pts)
