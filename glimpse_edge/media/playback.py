"""The speakerphone: remote participants' audio out through ALSA, echo cancelled.

Three parts, each on the thread it must be on:

* **Draining** (asyncio, one task per remote audio track): aiortc decodes
  Opus to s16 stereo 48 kHz frames into an *unbounded* queue per track, so
  every track we receive must be read, whatever the speaker does. Frames are
  downmixed/resampled to mono float at :data:`~.mixer.MIX_RATE` with
  ``av.AudioResampler`` and pushed into the track's mixer input, which is
  bounded. A track that ends (the connection closed) fades out of the mix.
* **Playing** (a worker thread that owns the PCM, via
  :func:`~.source.pump_thread`): mixes a 20 ms block, hands it to the echo
  canceller as the far-end reference, converts it to what the device granted
  and writes it. Underruns (-EPIPE) are counted and the block written again.
  Any device error ends the thread with a SourceError; the supervisor reopens
  the device with back-off (1 to 30 s, forever). Capture, the peers and the
  draining never notice: while the device is away the mixer inputs simply
  stay full, dropping their oldest audio, and the backlog is flushed when the
  device is back.
* **Cancelling** (the capture path): :class:`~.aec.CaptureEchoCanceller`,
  installed as the hub's capture processor.

Like capture, the ``file`` plugin used in tests is not paced: a device that
accepts audio more than :data:`~.alsa.UNPACED_AHEAD` s ahead of real time is
held to real time by the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any, Final

import av
import numpy as np
import structlog
from aiortc.mediastreams import MediaStreamError

from ..config import PlaybackConfig
from ..rtc.aio import spawn_aio
from ..supervise import Backoff, HealthRegistry, RestartPolicy, supervise
from .aec import AecUnavailable, CaptureEchoCanceller, FarEndBuffer
from .alsa import _FORMATS, UNPACED_AHEAD, Granted, PcmConverter, _alsaaudio, _RateLimitedLog
from .mixer import MIX_RATE, Mixer, MixerInput
from .source import Emit, SourceError, pump_thread

__all__ = ["PLAYBACK_POLICY", "Speaker"]

log = structlog.get_logger(__name__)

BLOCK: Final = MIX_RATE // 50  # 20 ms mixed per write
PERIODS: Final = 4
UNDERRUN_LOG_INTERVAL: Final = 10.0
PLAYBACK_POLICY = RestartPolicy(
    name="playback", backoff=Backoff(initial=1.0, maximum=30.0), max_restarts=1_000_000
)


class Speaker:
    """Mixes every remote audio track and plays it; owns the far-end reference."""

    def __init__(self, config: PlaybackConfig, *, health: HealthRegistry | None = None) -> None:
        self.config = config
        self.device = config.device
        self.health = health or HealthRegistry()
        self.mixer = Mixer(MIX_RATE, volume=config.volume / 100)
        self.reference = FarEndBuffer(MIX_RATE)
        self.canceller: CaptureEchoCanceller | None = None
        if config.echo_cancellation:
            try:
                self.canceller = CaptureEchoCanceller(self.reference)
            except AecUnavailable as exc:
                # No echo cancellation is bad; no speaker at all would be worse.
                log.error("media.aec.unavailable", error=str(exc))
        self._tasks: set[asyncio.Future[None]] = set()
        self.granted: Granted | None = None
        self.underruns = 0
        self.blocks_written = 0
        self.opens = 0
        self._aec_failed = _RateLimitedLog("media.aec.failed", UNDERRUN_LOG_INTERVAL)

    # -- remote tracks (asyncio side) -----------------------------------------

    def attach(self, name: str, track: Any) -> None:
        """Drain ``track`` into the mix until it ends; call from the asyncio loop.

        Never raises: it runs inside aiortc's event handlers.
        """
        try:
            task = spawn_aio(self._drain(name, track))
        except Exception as exc:
            log.error("media.playback.attach_failed", peer=name, error=str(exc))
            return
        self._tasks.add(task)  # to cancel them when the speaker stops
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, name: str, track: Any) -> None:
        inp: MixerInput | None = None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=MIX_RATE)
        try:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                if not isinstance(frame, av.AudioFrame):
                    continue
                if inp is None:
                    inp = self.mixer.add(name)
                    log.info("media.playback.peer_started", peer=name,
                             rate=frame.sample_rate, channels=len(frame.layout.channels))
                try:
                    for out in resampler.resample(frame):
                        self.mixer.push(inp, out.to_ndarray().reshape(-1).astype(np.float32))
                except (av.FFmpegError, ValueError) as exc:
                    log.warning("media.playback.bad_frame", peer=name, error=str(exc))
        finally:
            if inp is not None:
                self.mixer.remove(inp)
                log.info("media.playback.peer_ended", peer=name, underruns=inp.underruns,
                         dropped=inp.dropped)

    # -- capture side -----------------------------------------------------------

    def process_capture(self, frame: av.AudioFrame) -> av.AudioFrame:
        """The hub's capture processor: the microphone frame, echo cancelled."""
        if self.canceller is None:
            return frame
        try:
            return self.canceller.process(frame)
        except Exception as exc:
            # An AEC failure must not cost the room its microphone: send the
            # frame as captured (echo and all) and say so, once a while.
            self._aec_failed()
            log.debug("media.aec.error", error=f"{type(exc).__name__}: {exc}")
            return frame

    # -- the device ---------------------------------------------------------------

    async def run(self) -> None:
        """Play until cancelled, reopening the device with back-off after errors."""
        try:
            await supervise("media.playback", self._run_once, policy=PLAYBACK_POLICY,
                            health=self.health)
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def _run_once(self) -> None:
        async def on_opened(granted: Granted) -> None:
            self.granted = granted
            log.info("media.playback.opened", device=self.device, rate=granted.rate,
                     channels=granted.channels, format=granted.format,
                     period_size=granted.period_size, periods=granted.periods,
                     echo_cancellation=self.canceller is not None)

        await pump_thread(f"playback:{self.device}", self._play, on_opened,
                          stall_timeout=None, buffer=1)
        raise SourceError(f"playback device {self.device!r}: the playback thread ended")

    def _open(self, alsa: Any) -> Any:
        try:
            return alsa.PCM(
                type=alsa.PCM_PLAYBACK,
                mode=alsa.PCM_NORMAL,
                device=self.device,
                rate=MIX_RATE,
                channels=1,
                format=alsa.PCM_FORMAT_S16_LE,
                periodsize=BLOCK,
                periods=PERIODS,
            )
        except alsa.ALSAAudioError as exc:
            raise SourceError(
                f"playback device {self.device!r}: open failed: {exc} (playback devices: "
                f"see aplay -L; a busy device is held by another program)") from exc

    def _play(self, emit: Emit[Granted], stop: threading.Event) -> None:
        """Worker thread: open, mix/write until stopped or failed, close."""
        alsa = _alsaaudio()
        pcm = self._open(alsa)
        try:
            info = pcm.info()
            fmt = str(info.get("format_name", "S16_LE"))
            granted = Granted(int(info["rate"]), int(info["channels"]), fmt,
                              int(info.get("period_size", BLOCK)),
                              int(info.get("periods", PERIODS)))
            if fmt != "S16_LE" or granted.channels not in (1, 2):
                raise SourceError(
                    f"playback device {self.device!r} opened as {fmt} x{granted.channels}; "
                    f"glimpse-edge plays S16_LE mono or stereo: use a plughw: device "
                    f"(supported formats: {', '.join(_FORMATS)})")
            self.opens += 1
            emit(granted)
            convert = (None if (granted.rate, granted.channels) == (MIX_RATE, 1)
                       else PcmConverter("s16", MIX_RATE, 1, granted.rate, granted.channels))
            underrun = _RateLimitedLog("media.playback.underrun", UNDERRUN_LOG_INTERVAL,
                                       device=self.device)
            self.mixer.flush()  # whatever piled up while the device was away is stale
            start, written, paced = time.monotonic(), 0, False
            while not stop.is_set():
                ahead = written / granted.rate - (time.monotonic() - start)
                if not paced and ahead > UNPACED_AHEAD:
                    paced = True  # a file plugin or a loopback: nothing blocks us
                    log.warning("media.playback.unpaced_device", device=self.device)
                if paced and ahead > 0.1 and stop.wait(ahead - 0.1):
                    break
                block = self.mixer.mix(BLOCK)
                if self.canceller is not None:
                    self.reference.push(block)
                data = block if convert is None else convert.convert(block.tobytes())
                payload = data.tobytes()
                n = self._write(alsa, pcm, payload)
                if n < 0:  # -EPIPE: underrun; pyalsaaudio re-prepared the PCM
                    self.underruns += 1
                    underrun()
                    start, written = time.monotonic(), 0
                    n = self._write(alsa, pcm, payload)
                written += max(n, 0)
                self.blocks_written += 1
        finally:
            with contextlib.suppress(Exception):
                pcm.drop()  # close() would first play out the buffer
            with contextlib.suppress(Exception):
                pcm.close()

    def _write(self, alsa: Any, pcm: Any, payload: bytes) -> int:
        try:
            return int(pcm.write(payload))
        except alsa.ALSAAudioError as exc:
            raise SourceError(f"playback device {self.device!r}: write failed: {exc} "
                              "(unplugged or reset?)") from exc
