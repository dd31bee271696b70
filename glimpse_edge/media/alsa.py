"""Microphone capture through ALSA (pyalsaaudio), delivering exactly what the config asks.

ALSA sets every hardware parameter to the *nearest* value the device supports, so a
USB microphone asked for 48000 Hz mono may well open at 44100 Hz stereo, and an I2S
MEMS microphone only speaks S32_LE.  The source reads back what was granted
(``PCM.info()``), logs it (``media.alsa.opened``) and converts with libswresample to
the configured rate, channel count and s16, so the rest of the agent can rely on the
config.  Reads are blocking and run in a worker thread that owns the PCM from open to
close (:func:`~glimpse_edge.media.source.pump_thread`).

Failure modes this is built for, from the field:

* overruns (the agent was starved of CPU for longer than the ALSA buffer): pyalsaaudio
  returns ``-EPIPE`` after re-preparing the PCM; we log (rate-limited) and go on;
* a USB microphone unplugged mid-call: reads fail with ENODEV/EIO -> SourceError, the
  supervisor reopens with back-off until it is back;
* a device held by another program: a blocking open of a busy ``hw:`` device *waits*
  in the kernel instead of failing, so the source also fails when no audio arrived
  for ``stall_timeout`` seconds, naming the likely causes;
* the ALSA ``file`` plugin used in tests is not paced (reads return at once), hence
  ``paced=True`` which also holds reads to real time; harmless on hardware, where
  the read itself blocks for a period.

``alsaaudio`` is imported lazily, so boards without pyalsaaudio still run the test
pattern and tone sources.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final, NamedTuple

import av
import numpy as np
import numpy.typing as npt
import structlog

from .source import AudioSink, AudioSource, Emit, SourceError, pump_thread
from .tone import audio_layout

__all__ = [
    "AlsaSource",
    "FrameAssembler",
    "Granted",
    "PcmConverter",
    "list_capture_devices",
]

log = structlog.get_logger(__name__)

PERIODS: Final = 4  # ALSA buffer = 4 periods: 80 ms at 20 ms, room for scheduling hiccups
OVERRUN_LOG_INTERVAL: Final = 10.0  # seconds between media.alsa.overrun lines

# ALSA sample formats we can convert, by PCM.info()["format_name"] -> PyAV format name.
_FORMATS: Final = {"S16_LE": "s16", "S32_LE": "s32", "FLOAT_LE": "flt", "U8": "u8"}
_DTYPES: Final = {"s16": np.int16, "s32": np.int32, "flt": np.float32, "u8": np.uint8}
_LAYOUTS: Final = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1",
                   7: "6.1", 8: "7.1"}


def _alsaaudio() -> Any:
    """Import pyalsaaudio on first use; SourceError (not ImportError) when it is missing."""
    try:
        import alsaaudio
    except ImportError as exc:
        raise SourceError(
            "audio.source = \"alsa\" needs pyalsaaudio, which is not installed: "
            "install glimpse-edge[alsa] (needs libasound2-dev to build), "
            "or set audio.source = \"tone\" or \"none\""
        ) from exc
    return alsaaudio


def list_capture_devices() -> list[str]:
    """Names of the ALSA capture PCMs (for ``audio.device``), as ``arecord -L`` lists them."""
    alsa = _alsaaudio()
    return list(alsa.pcms(alsa.PCM_CAPTURE))


_HINTS: Final = {
    errno.ENOENT: "no such device — is the USB microphone plugged in? "
    "(check audio.device; capture devices: {devices})",
    errno.ENODEV: "no such device — is the USB microphone plugged in? "
    "(capture devices: {devices})",
    errno.ENXIO: "no such device — is the USB microphone plugged in? "
    "(capture devices: {devices})",
    errno.EBUSY: "device busy — another program (PulseAudio, PipeWire, arecord, a second "
    "glimpse-edge) is using it",
    errno.EACCES: "permission denied — is the service user in the 'audio' group?",
    errno.EPERM: "permission denied — is the service user in the 'audio' group?",
    errno.EINVAL: "the device rejected the capture settings — a plughw:/default device "
    "converts formats and rates, a bare hw: device does not",
    errno.EIO: "I/O error — the device was probably unplugged or reset",
    errno.ESTRPIPE: "the device was suspended (system sleep?)",
}
_BY_STRERROR: Final = {os.strerror(code): code for code in _HINTS}


def _errno_of(exc: BaseException) -> int | None:
    """pyalsaaudio errors carry only ``"strerror [device]"``: recover the errno."""
    message = str(exc)
    if message.endswith("]") and " [" in message:
        message = message[: message.rindex(" [")]
    return _BY_STRERROR.get(message.strip())


def _capture_devices_text() -> str:
    try:
        names = list_capture_devices()
    except Exception:  # listing is a courtesy; never mask the real error
        return "unknown"
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return shown or "none found"


def alsa_error(device: str, what: str, exc: BaseException) -> SourceError:
    """A SourceError that names the device, the failed step and what to check."""
    code = _errno_of(exc)
    hint = _HINTS.get(code, str(exc)) if code is not None else str(exc)
    if "{devices}" in hint:
        hint = hint.format(devices=_capture_devices_text())
    return SourceError(f"audio device {device!r}: {what} failed: {hint}")


class PcmConverter:
    """Converts interleaved PCM as the device granted it into s16 as the config asked.

    Pass-through (no copy beyond viewing the bytes) when the device granted exactly
    what was asked, which is the common case on a well-chosen ``plughw:`` device.
    """

    def __init__(self, in_format: str, in_rate: int, in_channels: int,
                 out_rate: int, out_channels: int) -> None:
        if in_format not in _DTYPES:
            raise ValueError(f"unsupported sample format {in_format!r}")
        if in_channels not in _LAYOUTS:
            raise ValueError(f"unsupported channel count {in_channels}")
        self.in_format = in_format
        self.in_rate = in_rate
        self.in_channels = in_channels
        self.out_rate = out_rate
        self.out_channels = out_channels
        self._dtype = _DTYPES[in_format]
        self._in_layout = _LAYOUTS[in_channels]
        self.passthrough = (in_format, in_rate, in_channels) == ("s16", out_rate, out_channels)
        self._resampler = (
            None
            if self.passthrough
            else av.AudioResampler(format="s16", layout=audio_layout(out_channels), rate=out_rate)
        )

    def convert(self, data: bytes) -> npt.NDArray[np.int16]:
        """Interleaved device samples in, interleaved s16 at the asked rate/channels out.

        The resampler keeps a few samples of history, so output lags input slightly;
        it never drops any.
        """
        samples = np.frombuffer(data, dtype=self._dtype)
        if self._resampler is None:
            return samples.astype(np.int16, copy=False)
        if samples.size == 0:
            return np.empty(0, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format=self.in_format,
                                           layout=self._in_layout)
        frame.sample_rate = self.in_rate
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        if not out:
            return np.empty(0, dtype=np.int16)
        return np.concatenate(out).astype(np.int16, copy=False)


class FrameAssembler:
    """Cuts a stream of interleaved s16 samples into whole frames with contiguous pts.

    Reads may be short (or, after a rate conversion, any length): leftovers wait for
    the next push.
    """

    def __init__(self, rate: int, channels: int, samples_per_frame: int,
                 first_pts: int = 0) -> None:
        self.rate = rate
        self.channels = channels
        self.samples_per_frame = samples_per_frame
        self.next_pts = first_pts
        self._layout = audio_layout(channels)
        self._pending = np.empty(0, dtype=np.int16)
        self._time_base = Fraction(1, rate)

    def push(self, samples: npt.NDArray[np.int16]) -> list[av.AudioFrame]:
        """Add interleaved samples; return the frames completed by them (maybe none)."""
        data = np.concatenate((self._pending, samples)) if self._pending.size else samples
        step = self.samples_per_frame * self.channels
        whole = data.size // step
        frames = []
        for i in range(whole):
            chunk = data[i * step : (i + 1) * step]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16",
                                               layout=self._layout)
            frame.sample_rate = self.rate
            frame.pts = self.next_pts
            frame.time_base = self._time_base
            self.next_pts += self.samples_per_frame
            frames.append(frame)
        self._pending = data[whole * step :].copy()
        return frames


class Granted(NamedTuple):
    """What the device actually opened with (ALSA picks the nearest supported values)."""

    rate: int
    channels: int
    format: str  # ALSA name, e.g. "S16_LE"
    period_size: int
    periods: int


class _RateLimitedLog:
    """Counts an event and logs it at most once per ``interval`` with the count since."""

    def __init__(self, event: str, interval: float, **fields: object) -> None:
        self.event = event
        self.interval = interval
        self.fields = fields
        self.total = 0
        self._unlogged = 0
        self._last: float | None = None

    def __call__(self) -> None:
        self.total += 1
        self._unlogged += 1
        now = time.monotonic()
        if self._last is None or now - self._last >= self.interval:
            log.warning(self.event, count=self._unlogged, total=self.total, **self.fields)
            self._unlogged = 0
            self._last = now


@dataclass(frozen=True)
class MixerSettings:
    """Capture gain / mute to set on the device's card each time it is opened."""

    control: str = ""
    gain: int = -1  # percent; -1 leaves it
    switch: str = "unchanged"  # "on" | "off" | "unchanged"

    @property
    def active(self) -> bool:
        return bool(self.control) and (self.gain >= 0 or self.switch != "unchanged")


def apply_mixer(alsa: Any, settings: MixerSettings, info: dict[str, Any], device: str) -> bool:
    """Set capture gain / switch; a failure is logged with the controls that exist.

    A missing or differently named control must not cost the room its
    microphone: capture goes on at the card's current gain.
    """
    card = info.get("card_no")
    kwargs: dict[str, Any] = {"control": settings.control}
    if isinstance(card, int) and card >= 0:
        kwargs["cardindex"] = card
    try:
        mixer = alsa.Mixer(**kwargs)
        if settings.gain >= 0:
            mixer.setvolume(settings.gain, pcmtype=alsa.PCM_CAPTURE)
        if settings.switch != "unchanged":
            mixer.setrec(1 if settings.switch == "on" else 0)
    except alsa.ALSAAudioError as exc:
        try:
            available = alsa.mixers(**({"cardindex": card} if "cardindex" in kwargs else {}))
        except alsa.ALSAAudioError:
            available = []
        log.warning("media.alsa.mixer_failed", device=device, control=settings.control,
                    error=str(exc), available=available or "none (no mixer on this device)",
                    hint="set audio.mixer_control to one of the available controls "
                         "(amixer -c CARD scontrols)")
        return False
    log.info("media.alsa.mixer_applied", device=device, control=settings.control,
             gain=settings.gain, switch=settings.switch)
    return True


# Seconds of audio ahead of real time after which a device is taken as unpaced.
UNPACED_AHEAD = 0.5


class AlsaSource(AudioSource):
    """Captures from an ALSA PCM (``"default"``, ``"plughw:CARD=Device"``, ...).

    ``paced=True`` additionally holds reads to real time, for devices that do not pace
    themselves (the ALSA ``file`` plugin in tests).  ``stall_timeout`` is how long the
    source waits for audio (including a blocking open) before raising SourceError.
    """

    def __init__(self, device: str, rate: int, channels: int, period_ms: int, *,
                 paced: bool = False, stall_timeout: float = 2.0,
                 mixer: MixerSettings | None = None) -> None:
        samples = rate * period_ms // 1000
        if samples < 1:
            raise ValueError(f"a {period_ms} ms period at {rate} Hz has no samples")
        audio_layout(channels)  # validates
        self.name = f"alsa:{device}"
        self.device = device
        self.rate = rate
        self.channels = channels
        self.period_ms = period_ms
        self.samples_per_frame = samples
        self.paced = paced
        self.stall_timeout = stall_timeout
        self._next_pts = 0  # contiguous across restarts, like the tone source
        self.overruns = 0
        self.granted: Granted | None = None  # set once the device is open
        self.mixer = mixer or MixerSettings()
        self.mixer_applied = False

    def _open(self) -> Any:
        alsa = _alsaaudio()
        try:
            # Keywords always: the C keyword order differs from the documentation.
            return alsa.PCM(
                type=alsa.PCM_CAPTURE,
                mode=alsa.PCM_NORMAL,
                device=self.device,
                rate=self.rate,
                channels=self.channels,
                format=alsa.PCM_FORMAT_S16_LE,
                periodsize=self.samples_per_frame,
                periods=PERIODS,
            )
        except alsa.ALSAAudioError as exc:
            raise alsa_error(self.device, "open", exc) from exc

    def _converter(self, info: dict[str, Any]) -> PcmConverter:
        format_name = str(info.get("format_name", "S16_LE"))
        if format_name not in _FORMATS:
            raise SourceError(
                f"audio device {self.device!r}: it delivers {format_name} samples, which "
                f"glimpse-edge cannot convert (supported: {', '.join(_FORMATS)}); "
                "use a plughw: device, which converts"
            )
        rate, channels = int(info["rate"]), int(info["channels"])
        if channels not in _LAYOUTS:
            raise SourceError(
                f"audio device {self.device!r}: it opened with {channels} channels; "
                "glimpse-edge converts from 1 to 8"
            )
        return PcmConverter(_FORMATS[format_name], rate, channels, self.rate, self.channels)

    def _produce(self, emit: Emit[av.AudioFrame], stop: threading.Event) -> None:
        """Worker thread: open, read, convert, cut into frames, close."""
        alsa = _alsaaudio()
        pcm = self._open()
        try:
            if stop.is_set():
                return
            info = pcm.info()
            if self.mixer.active:
                self.mixer_applied = apply_mixer(alsa, self.mixer, info, self.device)
            converter = self._converter(info)
            period = int(info.get("period_size") or self.samples_per_frame)
            self.granted = Granted(converter.in_rate, converter.in_channels,
                                   str(info.get("format_name")), period,
                                   int(info.get("periods") or PERIODS))
            log.info(
                "media.alsa.opened", device=self.device, rate=converter.in_rate,
                channels=converter.in_channels, format=self.granted.format,
                period_size=period, periods=self.granted.periods,
                asked_rate=self.rate, asked_channels=self.channels,
                converting=not converter.passthrough, paced=self.paced,
            )
            assembler = FrameAssembler(self.rate, self.channels, self.samples_per_frame,
                                       self._next_pts)
            overrun = _RateLimitedLog("media.alsa.overrun", OVERRUN_LOG_INTERVAL,
                                      device=self.device)
            start = time.monotonic()
            captured = 0  # device frames read since `start`, for pacing
            paced = self.paced
            while not stop.is_set():
                if not paced and captured / converter.in_rate - (time.monotonic() - start) > (
                    UNPACED_AHEAD
                ):
                    # A live device cannot deliver more than its buffer ahead of
                    # real time; this one does (a file plugin, a loopback): pace it.
                    paced = True
                    log.warning("media.alsa.unpaced_device", device=self.device)
                if paced:
                    wait = start + (captured + period) / converter.in_rate - time.monotonic()
                    if wait > 0 and stop.wait(wait):
                        break
                try:
                    n, data = pcm.read()
                except alsa.ALSAAudioError as exc:
                    raise alsa_error(self.device, "read", exc) from exc
                if n < 0:  # -EPIPE: overrun; pyalsaaudio re-prepared the PCM already
                    self.overruns += 1
                    overrun()
                    start, captured = time.monotonic(), 0
                    continue
                if n == 0:
                    stop.wait(0.001)  # only in non-blocking mode; never spin
                    continue
                captured += n
                for frame in assembler.push(converter.convert(data)):
                    emit(frame)
        finally:
            pcm.close()

    async def run(self, sink: AudioSink) -> None:
        """Capture until cancelled; SourceError names the device and what to check."""
        log.info("media.source.started", source=self.name, rate=self.rate,
                 channels=self.channels, period_ms=self.period_ms)

        async def deliver(frame: av.AudioFrame) -> None:
            if frame.pts is not None:
                self._next_pts = frame.pts + frame.samples
            sink(frame)

        try:
            await pump_thread(
                self.name, self._produce, deliver, stall_timeout=self.stall_timeout,
                stall_message=(
                    f"audio device {self.device!r}: no audio for {self.stall_timeout:g} s — "
                    "is another program holding it, or did it stop (unplugged, reset)?"
                ),
                buffer=8,
            )
        finally:
            log.info("media.source.stopped", source=self.name, next_pts=self._next_pts,
                     overruns=self.overruns)

