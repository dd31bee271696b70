"""Mixing the remote participants' audio for the speaker.

Each remote audio track feeds one :class:`MixerInput` (mono float32 at
:data:`MIX_RATE`, pushed from the asyncio side as aiortc decodes it); the
playback thread pulls fixed blocks with :meth:`Mixer.mix`, which is the only
clock. Inputs and the playback thread run on different threads and clocks, so
every input is a small jitter buffer:

* it starts playing only once :data:`PREBUFFER_S` is buffered (network jitter
  would otherwise turn into a gap every few packets);
* when it runs dry it fades out over what it still has and waits to refill,
  and when it starts it fades in: a join, a leave or a late packet never
  produces a step in the waveform (a click), only a 10 ms ramp;
* it holds at most :data:`MAX_BUFFER_S`; older audio is dropped, so a sender
  whose clock runs fast, or a playback device that is down, costs bounded
  memory and bounded latency.

The sum is taken in float32 (no int16 wrap-around), scaled by the volume and
passed through a soft clipper: linear below -1.9 dBFS, a tanh knee above, so
two people shouting at once saturate smoothly instead of clipping hard.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["MIX_RATE", "Mixer", "MixerInput", "soft_clip"]

MIX_RATE: Final = 48_000  # what aiortc's Opus decoder delivers: no resampling in the common case
FADE_S: Final = 0.010
PREBUFFER_S: Final = 0.040
MAX_BUFFER_S: Final = 0.200
CLIP_KNEE: Final = 0.8  # -1.9 dBFS: everything quieter passes untouched

Samples = npt.NDArray[np.float32]


def soft_clip(x: Samples, knee: float = CLIP_KNEE) -> Samples:
    """Identity below ``knee``, then a tanh curve that approaches (never reaches) 1.0.

    The slope is 1 at the knee, so the curve has no corner there (no added
    harmonics for signals that just touch it).
    """
    out = x.copy()
    over = np.abs(x) > knee
    if over.any():
        head = 1.0 - knee
        mag = np.abs(x[over])
        out[over] = np.sign(x[over]) * (knee + head * np.tanh((mag - knee) / head))
    return out


class MixerInput:
    """One remote participant's audio on its way to the speaker."""

    def __init__(self, name: str, rate: int) -> None:
        self.name = name
        self._chunks: deque[Samples] = deque()
        self._buffered = 0
        self._prebuffer = int(rate * PREBUFFER_S)
        self._max = int(rate * MAX_BUFFER_S)
        self._fade = max(1, int(rate * FADE_S))
        self.playing = False
        self.gain = 0.0
        self.closing = False
        self.underruns = 0
        self.dropped = 0  # samples dropped because the buffer was full
        self.samples_in = 0
        self._last = 0.0  # the last sample this input contributed

    @property
    def buffered(self) -> int:
        return self._buffered

    def _push(self, samples: Samples) -> None:
        self._chunks.append(samples)
        self._buffered += samples.size
        self.samples_in += samples.size
        excess = self._buffered - self._max
        while excess > 0 and self._chunks:
            head = self._chunks[0]
            if head.size <= excess:
                self._chunks.popleft()
                cut = head.size
            else:
                self._chunks[0] = head[excess:]
                cut = excess
            self._buffered -= cut
            self.dropped += cut
            excess -= cut

    def _pop(self, n: int) -> Samples:
        out = np.zeros(n, dtype=np.float32)
        filled = 0
        while filled < n and self._chunks:
            head = self._chunks[0]
            take = min(n - filled, head.size)
            out[filled : filled + take] = head[:take]
            if take == head.size:
                self._chunks.popleft()
            else:
                self._chunks[0] = head[take:]
            filled += take
        self._buffered -= filled
        return out[:filled]

    def _take(self, n: int) -> Samples:
        """The next ``n`` samples with fades applied (zeros while not playing)."""
        block = np.zeros(n, dtype=np.float32)
        if not self.playing:
            if self._buffered < self._prebuffer and not (self.closing and self._buffered):
                return block
            self.playing = True
        data = self._pop(n)
        have = data.size
        # fade toward 1 (playing) at 1/fade per sample
        ramp = np.minimum(1.0, self.gain + np.arange(1, have + 1, dtype=np.float32) / self._fade)
        data *= ramp
        if have:
            self.gain = float(ramp[-1])
        if have < n or (self.closing and self._buffered == 0):
            # ran dry (or the track ended): fade out over the tail we have,
            # then wait to refill
            tail = min(have, self._fade)
            if tail:
                data[have - tail :] *= np.linspace(1.0, 0.0, tail, dtype=np.float32)
            elif self._last:
                # the previous block ended exactly where the audio did: decay
                # from its last sample rather than stepping to zero
                k = min(n, self._fade)
                block[:k] = self._last * np.linspace(1.0, 0.0, k, dtype=np.float32)
            self.playing = False
            self.gain = 0.0
            if not self.closing:
                self.underruns += 1
        self._last = float(data[-1]) if have else 0.0
        block[:have] = data
        return block


class Mixer:
    """Sums every input into mono s16 for the speaker; thread-safe."""

    def __init__(self, rate: int = MIX_RATE, volume: float = 1.0) -> None:
        self.rate = rate
        self.volume = volume
        self._inputs: list[MixerInput] = []
        self._lock = threading.Lock()
        self.clipped_blocks = 0

    @property
    def inputs(self) -> list[MixerInput]:
        with self._lock:
            return list(self._inputs)

    def add(self, name: str) -> MixerInput:
        inp = MixerInput(name, self.rate)
        with self._lock:
            self._inputs.append(inp)
        return inp

    def push(self, inp: MixerInput, samples: Samples) -> None:
        """Append mono float32 samples (-1..1) to ``inp``; never blocks for long."""
        with self._lock:
            if not inp.closing:
                inp._push(samples)

    def remove(self, inp: MixerInput) -> None:
        """The input ended: it plays out what it has, fades, and is dropped."""
        with self._lock:
            inp.closing = True
            if inp.buffered == 0:
                self._drop(inp)

    def flush(self) -> None:
        """Drop every backlog (after the device was away: play from now, not from then)."""
        with self._lock:
            for inp in self._inputs:
                inp._pop(inp.buffered)
                inp.playing, inp.gain = False, 0.0

    def _drop(self, inp: MixerInput) -> None:
        if inp in self._inputs:
            self._inputs.remove(inp)

    def mix(self, n: int) -> npt.NDArray[np.int16]:
        """The next ``n`` samples of the mix, as s16 (called by the playback thread)."""
        total = np.zeros(n, dtype=np.float32)
        with self._lock:
            for inp in list(self._inputs):
                total += inp._take(n)
                if inp.closing and inp.buffered == 0 and not inp.playing:
                    self._drop(inp)
        total *= self.volume
        if np.abs(total).max(initial=0.0) > CLIP_KNEE:
            self.clipped_blocks += 1
            total = soft_clip(total)
        out: npt.NDArray[np.int16] = np.rint(total * 32767.0).astype(np.int16)
        return out
