"""Raspberry Pi camera through picamera2: the camera's H.264, untouched, to every peer.

A Pi cannot encode 720p30 in software for even one viewer, but its camera
stack feeds a hardware H.264 encoder (VC4 boards: Pi 4 and older). So this
source asks picamera2 for H.264 and hands each access unit to the hub as an
``av.Packet``; the hub publishes it to the shared H.264 stream, and aiortc
only packetizes it for each peer: nothing is decoded or re-encoded on the CPU.
On a Pi 5 (PiSP) there is no H.264 hardware: picamera2's ``H264Encoder`` is
then its libx264 software encoder, which this package fixes up
(:mod:`.compat`: key frames, slice threads); it works (about one core at
720p30) and is said in the log (``media.picamera2.software_encoder``) and in
the source name that ``glimpse-edge status`` shows.

Streams. The camera's main stream always has an encoder; with a lower tier
in ``video.tiers`` the camera is configured with a second, smaller "lores"
stream too (within what the codec can take: :mod:`.budget`), encoded while
some peer is on that tier (the hub calls :meth:`PiCamera2Source.open_tier`),
at the rate of the worst link on it. Each is an :class:`.stream.EncoderStream`
run by the same task (:mod:`.driver`); they differ only in data, above all
in what a failure does: the main encoder's stall is this source's watchdog's
(restart the encoder, then reopen the camera, then the hub's back-off), a
failing lores encoder is retried after a back-off and never touches the main
one. Both encoders' packets of a camera frame carry the same ``pts``
(:mod:`.clock`).

Threads. Every picamera2 call runs in a worker thread, one at a time, with
a deadline, abandoned on cancel (:mod:`.calls`): a hung camera never holds
up the hub. That includes importing picamera2 (:meth:`PiCamera2Source.prepare`,
which the hub awaits before it reads the name and tiers; the constructor
only reads the configuration) and ``force_key_frame()`` (the hub's request
only sets a flag; the stream's task makes the call). The Trio side decides
everything (which encoder, which rate) and hands the worker thread only the
call, whose result comes back to Trio: no state is shared with it. The
encoders hand their access units over from their own threads (:mod:`.bridge`).

Failures designed for (picamera2 issues in brackets):

* camera busy: "Camera __init__ sequence did not complete" (another process
  holds it; 587, 627) and camera missing (IndexError / "No camera"; a ribbon
  cable): a :class:`SourceError` naming the cause; the hub retries with
  back-off while the room session stays up audio-only; what a failed open
  leaves behind is closed;
* silent stalls after hours (1090, 1392, 1004) and H.264 freezes (1228, 1230):
  a watchdog restarts the encoder after ``STALL_FRAMES`` frame intervals
  without a packet, then reopens the camera, then gives up to the hub's
  back-off;
* a codec that hangs (the camera thread blocked inside it, holding the
  encoder's lock): the call that waits on it times out; if the camera then
  cannot be closed either, :class:`CameraHung` (a
  :class:`~glimpse_edge.supervise.Fatal` error) ends the process, since
  only a fresh one gets the camera back (systemd restarts it);
* CMA memory exhaustion (ENOMEM; 972, 887): the error says to lower
  ``camera.buffer_count``.

The camera is always closed on the way out (cancellation included): each
encoder stopped on its own, then the camera, every step bounded.
"""

from __future__ import annotations

import time
from typing import Final

import structlog
import trio

from ...config import CameraConfig, QualityTier, VideoConfig
from ...supervise import Backoff, raise_sole
from ..source import EncodedVideoSource, EncodingStats, PacketSink, SourceError
from .bridge import AccessUnit, EncoderBridge
from .budget import fit_lores
from .calls import (
    CALL_TIMEOUT,
    IMPORT_TIMEOUT,
    OPEN_TIMEOUT,
    CallTimedOut,
    CameraCalls,
    CameraHung,
)
from .clock import CameraClock
from .compat import UPGRADE_HINT, Picamera2Modules, check_features, encoder_class, import_picamera2
from .driver import EncoderDriver, EncoderSettings
from .errors import chain
from .opening import CameraPlan
from .stream import FIRST_FRAME_TIMEOUT, EncoderStream

__all__ = ["CameraHung", "PiCamera2Source"]

log = structlog.get_logger(__name__)

HW_BITRATE_RANGE: Final = (25_000, 25_000_000)  # the VC4 codec's V4L2 bitrate range
# No packet for this many frame intervals (at least STALL_MIN_SECONDS): act.
STALL_FRAMES: Final = 15
STALL_MIN_SECONDS: Final = 1.0
# A lores encoder that will not start or stays silent is given up on for a
# while (its peers keep what they had): supervise's Backoff, first try after
# LORES_RETRY, then a jittered, doubling delay up to the maximum. No
# escalation: the main stream serves everyone meanwhile.
LORES_RETRY: Final = 5.0
LORES_RETRY_MAX: Final = 60.0


class _CameraStalled(Exception):
    """The encoder was restarted and still no packet came: reopen the camera."""

    def __init__(self, delivered: int) -> None:
        super().__init__(f"no packets ({delivered} in this camera session)")
        self.delivered = delivered


def _lores_retry(failures: int) -> float:
    """Seconds before the lores encoder is started again after ``failures`` in a row."""
    backoff = Backoff(initial=LORES_RETRY, maximum=LORES_RETRY_MAX, floor=LORES_RETRY)
    return backoff.delay(failures - 1)


class PiCamera2Source(EncodedVideoSource):
    """The Raspberry Pi camera's own H.264 (hardware on VC4), as packets for the hub.

    Constructing it reads the configuration only. :meth:`prepare` imports
    picamera2 (SourceError with the install hint if it cannot, or with what
    to upgrade if it is too old) and settles the name and tiers; :meth:`run`
    prepares if that was not done, opens the camera, streams, and closes it
    again on the way out, whatever the way out.
    """

    codec = "h264"
    max_fps: float | None = None  # the main encoder takes every camera frame

    def __init__(self, video: VideoConfig, camera: CameraConfig) -> None:
        self.video = video
        self.camera = camera
        self.width, self.height, self.framerate = video.width, video.height, video.framerate
        self.min_bitrate = max(video.min_bitrate, HW_BITRATE_RANGE[0])
        self.max_bitrate = max(self.min_bitrate, min(video.max_bitrate, HW_BITRATE_RANGE[1]))
        self.bitrate = self.max_bitrate
        self.gop = max(1, round(video.keyframe_interval * video.framerate))
        self.name = f"picamera2:{camera.index}"  # and the platform, once prepared
        self.hardware = False  # the platform has H.264 hardware (known once prepared)
        self.model: str | None = None
        self.stall_after = max(STALL_MIN_SECONDS, STALL_FRAMES / video.framerate)
        # the hub's last resort, above this source's own escalation
        self.stall_timeout = (2 * (FIRST_FRAME_TIMEOUT + 2 * self.stall_after) + OPEN_TIMEOUT
                              + 4 * CALL_TIMEOUT)
        self.frames_encoded = self.keyframes_encoded = self.bytes_encoded = 0
        self.lores_note: str | None = None  # why the lores tier differs from video.tiers
        self.encoder_restarts = 0
        self.camera_restarts = 0
        top = QualityTier(width=self.width, height=self.height, bitrate=video.max_bitrate)
        self._main = EncoderStream("main", 0, top, self, self.framerate)
        self._lores: EncoderStream | None = None  # the lower tier, once prepared
        self._streams: tuple[EncoderStream, ...] = (self._main,)
        self._mods: Picamera2Modules | None = None
        self._settings: EncoderSettings | None = None  # how encoders are made, once prepared
        self._clock = CameraClock(self.framerate)
        self._bridge = EncoderBridge()
        self._calls = CameraCalls(camera.index)

    @property
    def mods(self) -> Picamera2Modules:
        """picamera2's modules and features (after :meth:`prepare`)."""
        if self._mods is None:
            raise RuntimeError(f"{self.name}: picamera2 is imported by prepare(), not yet run")
        return self._mods

    async def prepare(self) -> None:
        """Import picamera2 in a worker thread, check it, and settle what depends on it.

        The platform decides the name (hardware or software H.264) and the
        lores tier (VC4's codec budget); a picamera2 without
        ``force_key_frame`` means IDRs by encoder restarts. Raises SourceError
        like :meth:`run`; once it has succeeded it returns at once.
        """
        if self._mods is not None:
            return
        mods = await self._calls("import picamera2", import_picamera2, timeout=IMPORT_TIMEOUT)
        check_features(mods.features)
        h264 = encoder_class(mods)
        # picamera2 before 0.3.32 cannot force an IDR in place: restart for one
        idr_in_place = callable(getattr(h264, "force_key_frame", None))
        self.hardware = mods.hardware_h264
        self._settings = EncoderSettings(h264, mods.Output, self.gop, self.framerate,
                                         self.hardware, idr_in_place)
        kind = ("hardware H.264" if self.hardware
                else "software H.264: a Pi 5 has no H.264 hardware")
        self.name = f"picamera2:{self.camera.index} ({mods.platform}, {kind})"
        self._lores = self._lores_stream(mods.platform)
        self._streams = (self._main,) if self._lores is None else (self._main, self._lores)
        if not idr_in_place:
            log.warning("media.picamera2.idr_by_restart", version=mods.features.version,
                        detail="this picamera2 cannot force a key frame (0.3.32 added it): "
                        f"the encoder is restarted for one instead; {UPGRADE_HINT}")
        self._mods = mods

    def _lores_stream(self, platform: str) -> EncoderStream | None:
        """The first lower tier of ``video.tiers``, made from the camera's lores stream.

        picamera2 has one lores stream, so one lower tier: further ones are
        left out (logged). The encoder takes it like the main stream, at
        no CPU cost on VC4 as long as main + lores fit the codec's
        macroblock rate (:func:`.budget.fit_lores` shrinks or drops it); on a
        Pi 5 it is another libx264 encoder.
        """
        lower = self.video.quality_tiers()[1:]
        if not lower:
            return None
        if len(lower) > 1:
            log.warning("media.picamera2.tiers_limited", used=f"{lower[0].width}x"
                        f"{lower[0].height}", left_out=[f"{t.width}x{t.height}" for t in lower[1:]],
                        detail="the Pi camera has one second (lores) stream: one lower tier")
        fit = fit_lores(platform, self.width, self.height, self.framerate, lower[0])
        self.lores_note = fit.note
        if fit.note is not None:
            log.warning("media.picamera2.lores_limited", detail=fit.note)
        spec = fit.tier
        if spec is None:
            return None
        bitrate = min(max(spec.bitrate, HW_BITRATE_RANGE[0]), HW_BITRATE_RANGE[1])
        stats = EncodingStats(spec.width, spec.height, self.framerate, bitrate)
        return EncoderStream("lores", 1, spec, stats, self.framerate, retry_after=_lores_retry)

    # -- requests from the hub (Trio thread; none of them blocks) -------------

    @property
    def keyframes_forced(self) -> int:
        return self._main.pacer.forced

    @property
    def encode_delay_ms(self) -> float | None:
        """The main encoder's delay, sensor time to packet, smoothed (status, benchmarks)."""
        return self._main.encode_delay_ms

    @property
    def dropped(self) -> int:
        """Access units dropped because the agent fell behind the encoders."""
        return self._bridge.dropped

    def request_keyframe(self, urgent: bool = False, tier: int = 0) -> bool:
        """Force an IDR (``encoder.force_key_frame()``), at most every 0.5 s."""
        stream = self._main if tier <= 0 else self._lores
        return True if stream is None else stream.pacer.request(urgent)

    def set_bitrate(self, bitrate: int) -> None:
        """Aim for ``bitrate`` (clamped to video.min/max_bitrate and the codec's range).

        picamera2 reads the bitrate only when the encoder starts, so a change
        restarts the encoder (the supported way: stop_encoder, start_encoder
        with the new bitrate; it begins with SPS/PPS and an IDR). Hence none
        for less than 10 %, and none within ``BITRATE_MIN_INTERVAL`` of the
        encoder's last start (:class:`.stream.EncoderStream`).
        """
        self._main.aim(min(max(int(bitrate), self.min_bitrate), self.max_bitrate))

    @property
    def pending_bitrate(self) -> int | None:
        """The main encoder's rate for its next start (None: no change pending).

        A change waits for the restart :meth:`set_bitrate` explains; this is what
        status and tests see of it before the encoder restarts.
        """
        want = self._main.want
        return None if want is None else want[0]

    @property
    def tiers(self) -> tuple[QualityTier, ...]:
        return tuple(stream.spec for stream in self._streams)

    def open_tier(self, tier: int, sink: PacketSink) -> None:
        if self._lores is None or tier != 1:
            raise ValueError(f"{self.name} has no tier {tier}")
        self._lores.sink = sink
        self._lores.wake()

    def close_tier(self, tier: int) -> None:
        if self._lores is not None and tier == 1:
            self._lores.sink = None
            self._lores.wake()

    def tier_stats(self, tier: int) -> EncodingStats | None:
        lores = self._lores
        if lores is None or tier != 1 or lores.sink is None:
            return None
        assert isinstance(lores.stats, EncodingStats)
        return lores.stats

    def set_tier_rate(self, tier: int, bitrate: int, max_fps: float | None) -> None:
        """Restart the lores encoder at ``bitrate``, skipping camera frames for ``max_fps``.

        Like :meth:`set_bitrate`: picamera2 reads both settings at start, so
        changes under 10 % (and with the same frame skip) are ignored, and
        the restarts are spaced ``BITRATE_MIN_INTERVAL`` apart.
        """
        if self._lores is None or tier != 1:
            return
        target = min(max(int(bitrate), HW_BITRATE_RANGE[0]), HW_BITRATE_RANGE[1])
        skip = 1 if max_fps is None else max(1, round(self.framerate / max(max_fps, 1.0)))
        self._lores.aim(target, skip)

    # -- running ------------------------------------------------------------

    async def run(self, sink: PacketSink) -> None:
        await self.prepare()
        self._main.sink = sink
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._bridge.pump, self._deliver, self._resync)
                await self._sessions()
        except BaseExceptionGroup as group:
            raise_sole(group)

    def _deliver(self, unit: AccessUnit) -> None:
        """An access unit from an encoder thread, to its stream's sink as a packet."""
        stream = self._streams[unit.tier] if unit.tier < len(self._streams) else None
        if stream is None or stream.sink is None:
            return
        packet = stream.packet(unit, self._clock)
        if packet is not None:
            stream.sink(packet)

    def _resync(self) -> None:
        for stream in self._streams:
            stream.resync()

    async def _sessions(self) -> None:
        """Camera sessions: a stalled one is closed and the camera opened again, once."""
        barren_stall = False
        while True:
            try:
                await self._camera_session()
            except _CameraStalled as stall:
                if barren_stall and stall.delivered == 0:
                    raise SourceError(
                        f"camera {self.camera.index} delivers no frames, even after restarting "
                        "its encoder and reopening it: check the ribbon cable and the power "
                        "supply (an undervoltage stalls cameras; see `vcgencmd get_throttled`)"
                    ) from None
                barren_stall = stall.delivered == 0
                self.camera_restarts += 1
                log.warning("media.picamera2.camera_restarting", camera=self.camera.index,
                            restarts=self.camera_restarts)

    async def _camera_session(self) -> None:
        """Open the camera, run its encoders until it stalls or fails, close it."""
        lores = self._lores
        plan = CameraPlan(self.mods, self.camera, self.width, self.height, self.framerate,
                          None if lores is None else (lores.spec.width, lores.spec.height))
        cam, self.model = await self._calls.open(plan)
        assert self._settings is not None
        driver = EncoderDriver(cam, self._calls, self._bridge, self._settings, self.stall_after)
        try:
            self._clock.new_session()
            await driver.start(self._main, "camera opened")
            try:
                await self._calls("start", cam.start)
            except CallTimedOut:
                raise
            except Exception as exc:
                raise SourceError(f"camera {self.camera.index} did not start: {chain(exc)}"
                                  ) from exc
            try:
                async with trio.open_nursery() as nursery:
                    for stream in self._streams:
                        nursery.start_soon(driver.drive, stream)
                    await self._watchdog()
            except BaseExceptionGroup as group:
                raise_sole(group)
        finally:
            with trio.CancelScope(shield=True):
                await self._close(driver)

    async def _close(self, driver: EncoderDriver) -> None:
        """Stop each encoder on its own (lores, then main), then close the camera.

        Every step is bounded; one that hangs ends the steps before
        ``close``, which says whether the camera can still be had back
        (:meth:`.calls.CameraCalls.close`).
        """
        try:
            for stream in reversed(self._streams):
                await driver.stop(stream)
        except CallTimedOut:
            pass
        finally:
            for stream in self._streams:
                stream.stopping()  # whatever still runs goes with the camera
        await self._calls.close(driver.cam)

    async def _watchdog(self) -> None:
        """No packet from the main encoder for ``stall_after``: restart it; still none:
        reopen the camera (:class:`_CameraStalled`)."""
        main = self._main
        before = main.stats.frames_encoded  # packets of earlier camera sessions
        watching_since = time.monotonic()
        restarted_at: int | None = None  # packets delivered when the encoder was restarted
        while True:
            await trio.sleep(self.stall_after / 4)
            if not main.running or main.restart_for is not None:
                continue  # a restart is due or under way
            delivered = main.stats.frames_encoded - before
            allowance = self.stall_after if delivered else FIRST_FRAME_TIMEOUT
            silent = time.monotonic() - max(main.last_packet_at, main.started_at,
                                            watching_since)
            if silent < allowance:
                if restarted_at is not None and delivered > restarted_at:
                    restarted_at = None  # the restart cured it
                continue
            fields = dict(camera=self.camera.index, silent_s=round(silent, 1),
                          packets=delivered)
            if restarted_at is None:
                log.warning("media.picamera2.stalled", action="restart_encoder", **fields)
                self.encoder_restarts += 1
                restarted_at = delivered
                main.restart("stalled")
            else:
                log.error("media.picamera2.stalled", action="restart_camera", **fields)
                raise _CameraStalled(delivered)
