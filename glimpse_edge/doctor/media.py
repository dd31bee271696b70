"""Do the camera and the microphone deliver: the configured video source opens
and gives frames (or H.264 packets), the ALSA device gives audio that is not
silence. A device busy because the running agent holds it is a warning.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import trio

from ..config import Config

if TYPE_CHECKING:
    from .run import Doctor

__all__ = ["check_camera", "check_microphone"]

VIDEO_FRAMES: Final = 10  # frames (or packets) a camera must deliver
AUDIO_SECONDS: Final = 0.6
SILENT_DBFS: Final = -60.0


async def check_camera(doctor: Doctor, config: Config) -> None:
    from ..media.factory import make_video_source
    from ..media.picamera import PiCamera2Source
    from ..media.source import EncodedVideoSource, SourceError

    video = config.video
    if video.source == "testpattern":
        doctor.add("camera", "skip", 'video.source = "testpattern": no camera is used')
        return
    try:
        source = make_video_source(video, config.camera)
        await source.prepare()
    except SourceError as exc:
        doctor.add("camera", "fail", str(exc), _camera_fix(str(exc)))
        return
    received = 0
    first_at: float | None = None
    done = trio.Event()
    started = time.monotonic()

    def sink(_item: object) -> None:
        nonlocal received, first_at
        received += 1
        first_at = first_at or time.monotonic()
        if received >= VIDEO_FRAMES:
            done.set()

    error = await _run_until(source.run, sink, done, doctor.timeout + 5)
    took = time.monotonic() - started
    if received >= VIDEO_FRAMES:
        what = "packets of H.264" if isinstance(source, EncodedVideoSource) else "frames"
        detail = f"{source.name} delivered {received} {what} in {took:.1f} s " + (
            f"({video.width}x{video.height}@{video.framerate})")
        note = None
        if isinstance(source, PiCamera2Source):
            detail += f"; picamera2 {source.mods.features.describe()}"
            if source.encode_delay_ms is not None:
                detail += f", encoder delay {source.encode_delay_ms:.0f} ms"
            note = source.lores_note
        if note is not None:
            doctor.add("camera", "warn", f"{detail}; {note}",
                       "lower video.width/height/framerate, or the lower tier in video.tiers")
            return
        doctor.add("camera", "pass", detail)
        return
    message = str(error) if error is not None else (
        f"{source.name} opened but delivered {received} of {VIDEO_FRAMES} frames within "
        f"{doctor.timeout + 5:g} s")
    if error is not None and "busy" in message and doctor.agent_is_running():
        doctor.add("camera", "warn", "the camera is busy: the running glimpse-edge has it, "
                   "as it should", "to test the camera from here, stop the service first: "
                   "sudo systemctl stop glimpse-edge")
        return
    doctor.add("camera", "fail", message, _camera_fix(message))


async def check_microphone(doctor: Doctor, config: Config) -> None:
    from ..media.factory import make_audio_source
    from ..media.source import SourceError

    audio = config.audio
    if audio.source != "alsa":
        doctor.add("microphone", "skip", f'audio.source = "{audio.source}": no microphone '
                   "is used")
        return
    try:
        source = make_audio_source(audio)
    except SourceError as exc:
        doctor.add("microphone", "fail", str(exc), "install what the message names")
        return
    assert source is not None
    frames: list[Any] = []
    enough = max(1, round(AUDIO_SECONDS * 1000 / audio.period_ms))
    done = trio.Event()

    def sink(frame: Any) -> None:
        frames.append(frame.to_ndarray().copy())
        if len(frames) >= enough:
            done.set()

    error = await _run_until(source.run, sink, done, doctor.timeout)
    if len(frames) < enough:
        message = str(error) if error is not None else (
            f"{source.name} delivered no audio within {doctor.timeout:g} s")
        if "busy" in message and doctor.agent_is_running():
            doctor.add("microphone", "warn", "the microphone is busy: the running "
                       "glimpse-edge has it", "stop the service to test it from here")
            return
        doctor.add("microphone", "fail", message,
                   "check audio.device against `glimpse-edge devices` (or arecord -L)")
        return
    peak, rms_dbfs = _levels(frames)
    if peak == 0 or rms_dbfs < SILENT_DBFS:
        level = "all zero" if peak == 0 else f"level {rms_dbfs:.0f} dBFS"
        doctor.add("microphone", "warn", f"{source.name} opened, but its audio is silent "
                   f"({level})", "is it muted, or its capture gain at "
                   "zero? alsamixer -c CARD (F4 shows capture controls, M unmutes, "
                   "space turns capture on); is the right device configured?")
        return
    doctor.add("microphone", "pass", f"{source.name} delivers audio (level "
               f"{rms_dbfs:.0f} dBFS over {len(frames) * audio.period_ms} ms)")


def _camera_fix(message: str) -> str:
    if "apt install" in message:
        return "install picamera2 as the message says"
    if "busy" in message:
        return "stop the other program (sudo fuser -v /dev/media* /dev/video* finds it)"
    if "no camera" in message:
        return "connect the camera with the Pi switched off, then check again"
    if "camera." in message:
        return "change or remove the [camera] setting named above"
    return "see the message; `glimpse-edge devices` lists what this machine has"


def _levels(frames: list[Any]) -> tuple[int, float]:
    import numpy as np

    samples = np.concatenate([f.reshape(-1) for f in frames]).astype(np.float64)
    peak = int(np.max(np.abs(samples))) if samples.size else 0
    rms = float(np.sqrt(np.mean(samples ** 2))) if samples.size else 0.0
    dbfs = 20 * math.log10(rms * math.sqrt(2) / 32767) if rms > 0 else -math.inf
    return peak, dbfs


async def _run_until(run: Callable[[Any], Any], sink: Callable[[Any], None], done: trio.Event,
                     timeout: float) -> BaseException | None:
    """Run a media source into ``sink`` until ``done`` is set or ``timeout`` passes;
    the error the source failed with, if it did (a doctor reports it, never raises)."""
    from ..supervise import sole_exception

    with trio.move_on_after(timeout):
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, sink)
                await done.wait()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            return sole_exception(group)
        except Exception as exc:
            return exc
    return None
