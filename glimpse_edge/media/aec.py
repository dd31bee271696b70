"""Acoustic echo cancellation of the microphone against what the speaker plays.

WebRTC's AEC3 (``pywebrtc-audio``; see docs/decisions.md, "Speakerphone",
for why this library) removes from each captured frame the part that is the
speaker's sound coming back through the room. It needs the *far-end
reference*: exactly what was sent to the speaker. The playback thread pushes
every mixed block into a :class:`FarEndBuffer` just before it writes it to
ALSA; the capture path (the hub's Trio task) takes as many reference samples
as each captured frame holds and hands both to AEC3.

Alignment: AEC3 estimates the delay between reference and echo itself (the
ALSA buffers, the DAC/ADC and the room add tens of ms that we cannot know),
but only for echoes that come *after* their reference. A reference pushed
when its block is written reaches AEC3 at least a playback buffer before its
echo can be captured, as long as the buffer between the two threads stays
short: it is trimmed to :data:`MAX_REFERENCE_S` (the two threads run on
different clocks, so it would otherwise drift), and it pads with silence when
the speaker is not playing.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Final

import av
import numpy as np
import numpy.typing as npt
import structlog

from .alsa import PcmConverter
from .mixer import MIX_RATE
from .tone import audio_layout

__all__ = ["AecUnavailable", "CaptureEchoCanceller", "FarEndBuffer"]

log = structlog.get_logger(__name__)

MAX_REFERENCE_S: Final = 0.08

Int16s = npt.NDArray[np.int16]


class AecUnavailable(Exception):
    """The echo canceller library is not installed."""


class FarEndBuffer:
    """What the speaker played (mono s16 at :data:`MIX_RATE`), from the playback thread."""

    def __init__(self, rate: int = MIX_RATE, max_seconds: float = MAX_REFERENCE_S) -> None:
        self.rate = rate
        self._chunks: deque[Int16s] = deque()
        self._buffered = 0
        self._max = int(rate * max_seconds)
        self._lock = threading.Lock()
        self.trimmed = 0  # samples dropped because capture fell behind playback
        self.padded = 0  # samples of silence given because playback fell behind

    def push(self, samples: Int16s) -> None:
        with self._lock:
            self._chunks.append(samples)
            self._buffered += samples.size
            excess = self._buffered - self._max
            while excess > 0:
                head = self._chunks[0]
                cut = min(head.size, excess)
                if cut == head.size:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = head[cut:]
                self._buffered -= cut
                self.trimmed += cut
                excess -= cut

    def take(self, n: int) -> Int16s:
        """The oldest ``n`` samples, padded with silence when fewer are there."""
        out = np.zeros(n, dtype=np.int16)
        filled = 0
        with self._lock:
            while filled < n and self._chunks:
                head = self._chunks[0]
                k = min(n - filled, head.size)
                out[filled : filled + k] = head[:k]
                if k == head.size:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = head[k:]
                filled += k
            self._buffered -= filled
        self.padded += n - filled
        return out


def _load_aec3() -> Any:
    try:
        import pywebrtc_audio
    except ImportError as exc:
        raise AecUnavailable(
            "playback.echo_cancellation needs pywebrtc-audio, which is not installed: "
            "install glimpse-edge[alsa]"
        ) from exc
    return pywebrtc_audio


class CaptureEchoCanceller:
    """Cancels the speaker's echo in captured frames (runs on the capture path).

    The AEC3 instance is built for the rate and channel count of the frames it
    sees, and rebuilt if they change (an ``[audio]`` reload); the reference is
    converted to that rate, mono duplicated to every channel.
    """

    def __init__(self, reference: FarEndBuffer) -> None:
        self._lib = _load_aec3()
        self.reference = reference
        self._aec: Any = None
        self._format: tuple[int, int] | None = None
        self._converter: PcmConverter | None = None
        self._pending = np.empty(0, dtype=np.int16)
        self.frames = 0

    def _setup(self, rate: int, channels: int) -> None:
        self._aec = self._lib.EchoCanceller(sample_rate=rate, num_channels=channels)
        self._format = (rate, channels)
        self._converter = (None if rate == self.reference.rate
                           else PcmConverter("s16", self.reference.rate, 1, rate, 1))
        self._pending = np.empty(0, dtype=np.int16)
        log.info("media.aec.started", rate=rate, channels=channels, engine="webrtc-aec3")

    def _reference(self, n: int, rate: int) -> Int16s:
        if self._converter is None:
            return self.reference.take(n)
        while self._pending.size < n:
            want = max(1, (n - self._pending.size) * self.reference.rate // rate + 1)
            raw = self.reference.take(want)
            self._pending = np.concatenate((self._pending, self._converter.convert(raw.tobytes())))
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    def process(self, frame: av.AudioFrame) -> av.AudioFrame:
        """The frame with the echo removed (same pts, rate and layout)."""
        rate, channels = frame.sample_rate, len(frame.layout.channels)
        if self._format != (rate, channels):
            self._setup(rate, channels)
        near = frame.to_ndarray().reshape(-1).astype(np.int16, copy=False)
        far = self._reference(frame.samples, rate)
        if channels > 1:
            far = np.repeat(far, channels)
        clean = np.asarray(self._aec.process(near, far), dtype=np.int16)
        out = av.AudioFrame.from_ndarray(clean.reshape(1, -1), format="s16",
                                         layout=audio_layout(channels))
        out.sample_rate = rate
        out.pts = frame.pts
        out.time_base = frame.time_base
        self.frames += 1
        return out
