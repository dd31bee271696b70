"""The encoders of an open camera: one Trio task per stream, every picamera2 call in a worker.

For one camera session, :meth:`EncoderDriver.drive` keeps a stream's
encoder as the hub wants it: started while the stream has a sink, stopped
while it has none, restarted for a new rate or (picamera2 before 0.3.32)
for a key frame, or when the source's watchdog asks. A key frame the hub
asked for is forced here too, so ``force_key_frame()`` runs in a worker
thread like every other picamera2 call (:mod:`.calls`), never on the Trio
thread the request came on. The Trio side decides from the stream's state
(:mod:`.stream`) and takes the wanted rate before the call, so a rate set
meanwhile is never lost; the worker thread only makes the call.

Failures follow the stream's policy. The main stream's end the camera
session (its stalls are the watchdog's: restart the encoder, then reopen
the camera). A stream with a retry policy (lores) restarts itself once it
goes silent, and a failure waits ``retry_after(failures)`` before the next
start (``media.picamera2.lores_failed``), never touching the main stream;
meanwhile a peer moving to it stays where it is. A call that times out ends
the session whatever the stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import structlog

from ..source import SourceError
from .bridge import EncoderBridge
from .calls import CallTimedOut, CameraCalls
from .compat import stop_failed_encoder
from .errors import chain
from .stream import EncoderStream

__all__ = ["PROFILE", "EncoderDriver", "EncoderSettings"]

log = structlog.get_logger(__name__)

PROFILE: Final = "constrained baseline"  # what every browser decodes (42e0xx)


@dataclass(frozen=True)
class EncoderSettings:
    """How a source's encoders are made (settled once picamera2 is imported)."""

    encoder_class: Any  # picamera2's H264Encoder, or compat's fixed libav one
    output_base: Any  # picamera2's Output
    gop: int  # frames from one IDR to the next
    framerate: int
    hardware: bool
    idr_in_place: bool  # force_key_frame() (picamera2 0.3.32); else a restart for an IDR


class EncoderDriver:
    """Starts, stops, restarts and forces IDRs from the encoders of one open camera."""

    def __init__(self, cam: Any, calls: CameraCalls, bridge: EncoderBridge,
                 settings: EncoderSettings, stall_after: float) -> None:
        self.cam = cam
        self.calls = calls
        self.bridge = bridge
        self.settings = settings
        self.stall_after = stall_after
        self.camera_index = calls.camera_index

    async def drive(self, stream: EncoderStream) -> None:
        """Run ``stream``'s encoder as wanted, for the camera session (a Trio task)."""
        while True:
            now = time.monotonic()
            try:
                if not await self._step(stream, now):
                    await stream.wait(now, self.stall_after / 2)
            except CallTimedOut:
                raise
            except SourceError as exc:
                if stream.retry_after is None:
                    raise
                await self._retry_later(stream, str(exc))

    async def _step(self, stream: EncoderStream, now: float) -> bool:
        """Do the one thing due for ``stream``, if any (False: nothing was)."""
        running = stream.running
        if running and stream.force_pending:
            await self._force_key_frame(stream)
        elif stream.sink is not None and not running and now >= stream.retry_at:
            await self.start(stream, "peer on the tier")
        elif stream.sink is None and running:
            await self.stop(stream, "no peer on the tier")
        elif running and (reason := stream.restart_reason(now)) is not None:
            await self._restart(stream, reason)
        elif running and stream.retry_after is not None and stream.stalled(now,
                                                                           self.stall_after):
            log.warning("media.picamera2.stalled", stream=stream.name,
                        action="restart_encoder", camera=self.camera_index,
                        packets=stream.session_packets)
            if not stream.session_packets:
                raise SourceError(f"the {stream.name} encoder delivers no packets")
            await self._restart(stream, "stalled")
        else:
            return False
        return True

    async def start(self, stream: EncoderStream, reason: str) -> None:
        """Start an encoder on ``stream`` at its wanted rate (taken here, on the Trio thread)."""
        settings = self.settings
        generation = stream.starting()
        try:
            encoder = settings.encoder_class(bitrate=stream.stats.bitrate, repeat=True,
                                             iperiod=settings.gop,
                                             framerate=settings.framerate, profile=PROFILE)
        except Exception as exc:
            raise SourceError(f"no H.264 encoder: {chain(exc)}") from exc
        encoder.frame_skip_count = stream.skip
        output = self.bridge.output(settings.output_base, stream.tier, generation, encoder)
        try:
            await self.calls(f"start_encoder {stream.name}", _start_encoder, self.cam, encoder,
                             output, stream.name)
        except CallTimedOut:
            raise
        except Exception as exc:
            raise SourceError(f"camera {self.camera_index}: the {stream.name} H.264 encoder "
                              f"did not start: {chain(exc)}") from exc
        stream.started(encoder, settings.idr_in_place)
        log.info("media.picamera2.encoder_started", camera=self.camera_index,
                 stream=stream.name, width=stream.spec.width, height=stream.spec.height,
                 bitrate=stream.stats.bitrate, max_fps=stream.stats.max_fps,
                 iperiod=settings.gop, profile=PROFILE, hardware=settings.hardware,
                 generation=generation, reason=reason)

    async def stop(self, stream: EncoderStream, reason: str | None = None) -> None:
        """``cam.stop_encoder`` for ``stream``'s encoder, if one runs.

        Each encoder on its own: ``stop_encoder()`` without one stops at the
        first that fails and leaves the rest running. A failure is logged,
        not raised; ``reason`` is logged too (none on the way out).
        """
        encoder = stream.stopping()
        if encoder is None:
            return
        try:
            await self.calls(f"stop_encoder {stream.name}", self.cam.stop_encoder, encoder)
        except CallTimedOut:
            raise
        except Exception as exc:
            log.warning("media.picamera2.close_step_failed", step=f"stop_encoder {stream.name}",
                        error=chain(exc))
        if reason is not None:
            log.info("media.picamera2.encoder_stopped", camera=self.camera_index,
                     stream=stream.name, reason=reason)

    async def _restart(self, stream: EncoderStream, reason: str) -> None:
        """stop_encoder, start_encoder (at the wanted rate): picamera2's supported restart."""
        old = stream.stats.bitrate
        await self.stop(stream, reason)
        await self.start(stream, reason)
        if stream.stats.bitrate != old:
            log.info("media.picamera2.bitrate", camera=self.camera_index, stream=stream.name,
                     old=old, new=stream.stats.bitrate)

    async def _force_key_frame(self, stream: EncoderStream) -> None:
        """``encoder.force_key_frame()``, bounded like every call; a failure is logged."""
        stream.force_pending = False
        try:
            await self.calls(f"force_key_frame {stream.name}", stream.encoder.force_key_frame)
        except CallTimedOut:
            raise
        except Exception as exc:
            log.warning("media.picamera2.force_keyframe_failed", stream=stream.name,
                        error=chain(exc))
            stream.pacer.failed()

    async def _retry_later(self, stream: EncoderStream, error: str) -> None:
        """Stop a failed encoder and wait before the next try (the lores stream's policy)."""
        assert stream.retry_after is not None
        await self.stop(stream, "failed")
        stream.failures += 1
        retry = stream.retry_after(stream.failures)
        stream.retry_at = time.monotonic() + retry
        log.error("media.picamera2.lores_failed", camera=self.camera_index, stream=stream.name,
                  error=error, failures=stream.failures, retry_in=retry)


def _start_encoder(cam: Any, encoder: Any, output: Any, stream: str) -> None:
    """``cam.start_encoder`` (a worker thread); a failed start leaves nothing running."""
    try:
        cam.start_encoder(encoder, output, name=stream)
    except Exception:
        stop_failed_encoder(encoder)
        raise
