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

Quality tiers. With a lower tier in ``video.tiers``, the camera is configured
with a second, smaller "lores" stream too (within what the codec can take:
:mod:`.budget`), and while some peer is on that tier (the hub calls
:meth:`PiCamera2Source.open_tier`) a second H.264 encoder runs on it, at the
rate of the worst link on it (see ``_Lores``). Both encoders' packets of a
camera frame carry the same ``pts``.

Threads. picamera2's calls block (opening a camera takes about a second), so
they run in worker threads, one at a time, each with a deadline and
abandoned on cancel (:meth:`PiCamera2Source._call`): a hung camera never
holds up the hub. The Trio side decides everything (which encoder, which
rate) and hands the worker thread only the picamera2 call, so no state is
shared with it. The encoder calls our ``Output`` from ITS OWN thread (the
V4L2 poll thread; the camera loop for the software encoder):
:meth:`PiCamera2Source._from_encoder` copies the bytes into a bounded deque
and wakes a Trio task with ``run_sync_soon``, which never blocks the encoder
thread. The Trio task turns them into packets.

Time stamps. picamera2 gives microseconds since the first frame after each
encoder start (from the sensor's clock), restarting at 0 on every restart.
Each encoder session is anchored to the monotonic clock at its first packet,
so ``pts`` (1/90000 s) follows real time, stays spaced like the sensor's
frames, and strictly increases across restarts.

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

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import av
import structlog
import trio
from av.packet import Packet

from ...config import CameraConfig, QualityTier, VideoConfig
from ...supervise import Fatal, sole_exception
from ..encoder import KEYFRAME_MIN_INTERVAL
from ..source import (
    VIDEO_TIME_BASE,
    EncodedVideoSource,
    EncodingStats,
    PacketSink,
    SourceError,
    monotonic_pts,
)
from .budget import fit_lores
from .compat import (
    UPGRADE_HINT,
    check_features,
    encoder_class,
    forget_failed_open,
    import_picamera2,
    stop_failed_encoder,
)
from .controls import check_controls, hdr_plan, wanted_controls
from .errors import chain, describe_open_error, missing_text

__all__ = ["CameraHung", "PiCamera2Source"]

log = structlog.get_logger(__name__)

PROFILE: Final = "constrained baseline"  # what every browser decodes (42e0xx)
HW_BITRATE_RANGE: Final = (25_000, 25_000_000)  # the VC4 codec's V4L2 bitrate range
HW_MAX_SIZE: Final = 1920  # largest frame side the VC4 codec encodes
# No packet for this many frame intervals (at least STALL_MIN_SECONDS): act.
STALL_FRAMES: Final = 15
STALL_MIN_SECONDS: Final = 1.0
# A freshly opened camera settles its exposure before the first frame.
FIRST_FRAME_TIMEOUT: Final = 5.0
OPEN_TIMEOUT: Final = 15.0  # Picamera2() + configure, normally about a second
# Any other picamera2 call (start/stop an encoder, start/close the camera)
# normally takes well under a second: the V4L2 poll thread gives up waiting
# for the codec after 0.4 s, the libav encoder flushes a frame or two.
CALL_TIMEOUT: Final = 5.0
# A bitrate change restarts the encoder (new headers and an IDR, ~1 frame
# gap): at most one per interval, and only for changes above the hysteresis.
BITRATE_MIN_INTERVAL: Final = 2.0
BITRATE_HYSTERESIS: Final = 0.1
# Packets the encoder thread may queue for Trio; beyond this Trio is stuck,
# and packets are dropped up to the next IDR (one is asked for).
MAX_PENDING: Final = 30
# A forced IDR normally arrives within a frame or two; ask again after this.
FORCE_PENDING: Final = 0.5
# A lores encoder that will not start or stays silent is given up on for a
# while (its peers keep what they had), doubling up to the maximum.
LORES_RETRY: Final = 5.0
LORES_RETRY_MAX: Final = 60.0

T = TypeVar("T")


class CameraHung(Fatal):
    """picamera2 hung in a call that cannot be cancelled, and the camera cannot be closed.

    The camera (and the threads stuck in it) cannot be had back in this
    process: the agent exits, and systemd starts a fresh one.
    """


class _CallTimedOut(SourceError):
    """A picamera2 call did not return within its deadline (its thread is abandoned)."""

    def __init__(self, what: str, waited: float) -> None:
        super().__init__(f"picamera2's {what} did not return within {waited:g} s")
        self.what = what


class _CameraStalled(Exception):
    """The encoder was restarted and still no packet came: reopen the camera."""

    def __init__(self, delivered: int) -> None:
        super().__init__(f"no packets ({delivered} in this camera session)")
        self.delivered = delivered


# -------------------------------------------------------------------- source


class _KeyframePacer:
    """Forced IDRs for one encoder: at most one per ``KEYFRAME_MIN_INTERVAL``.

    A request inside the interval is kept and served when it ends (checked at
    every packet); one already forced and not yet seen is not repeated.
    ``force`` is how to force one: the running encoder's ``force_key_frame``,
    or (picamera2 before 0.3.32) a request to restart the encoder; None
    while no encoder runs.
    """

    def __init__(self, label: str) -> None:
        self.label = label  # "main" or "lores", for the log
        self.force: Callable[[], None] | None = None
        self.last_keyframe_at = -math.inf
        self.forced_at: float | None = None
        self.deferred = False
        self.forced = 0

    def request(self, urgent: bool) -> bool:
        if self.force is None:
            return True  # a starting encoder begins with an IDR anyway
        now = time.monotonic()
        if self.forced_at is not None and now - self.forced_at < FORCE_PENDING:
            return True
        if urgent or now - self.last_keyframe_at >= KEYFRAME_MIN_INTERVAL:
            self._force(now)
            return True
        self.deferred = True
        return False

    def _force(self, now: float) -> None:
        assert self.force is not None
        try:
            self.force()
        except Exception as exc:  # a PLI handler must never raise
            log.warning("media.picamera2.force_keyframe_failed", stream=self.label,
                        error=str(exc))
            return
        self.forced_at = now
        self.deferred = False
        self.forced += 1
        log.debug("media.picamera2.keyframe_forced", stream=self.label, forced=self.forced)

    def seen(self, keyframe: bool, now: float) -> None:
        """A packet came out: note a key frame, or serve a deferred request."""
        if keyframe:
            self.last_keyframe_at = now
            self.forced_at = None
            self.deferred = False
        elif (self.deferred and self.force is not None
              and now - self.last_keyframe_at >= KEYFRAME_MIN_INTERVAL):
            self._force(now)


@dataclass
class _Timeline:
    """One encoder's packet time stamps (see :meth:`PiCamera2Source._stamp`)."""

    last_pts: int | None = None
    anchor_generation: int = -1  # for encoders that do not say their first time stamp
    anchor: int = 0


@dataclass
class _Lores:
    """The lower quality tier: picamera2's second ("lores") stream, a second encoder.

    Configured with the camera whenever ``video.tiers`` has a lower tier, so
    that it can be started while the camera runs; encoded only while the hub
    has a peer on it (``sink`` set).
    """

    spec: QualityTier
    stats: EncodingStats
    pacer: _KeyframePacer = field(default_factory=lambda: _KeyframePacer("lores"))
    timeline: _Timeline = field(default_factory=_Timeline)
    sink: PacketSink | None = None  # the hub's, while some peer is on this tier
    encoder: Any = None  # the running picamera2 encoder
    generation: int = 0
    skip: int = 1  # the encoder's frame_skip_count: every skip-th camera frame
    want: tuple[int, int] | None = None  # (bitrate, skip) to restart with (Trio thread only)
    idr_restart: bool = False  # restart for a key frame (picamera2 before 0.3.32)
    changed_at: float = -math.inf
    started_at: float = 0.0
    last_packet_at: float = 0.0
    session_packets: int = 0  # since the encoder's last start
    skip_to_keyframe: bool = False
    failures: int = 0  # starts in a row that failed or brought no packet
    retry_at: float = -math.inf


class PiCamera2Source(EncodedVideoSource):
    """The Raspberry Pi camera's own H.264 (hardware on VC4), as packets for the hub.

    Constructing it imports picamera2 (SourceError with the install hint if it
    cannot, or with what to upgrade if it is too old); :meth:`run` opens the
    camera, streams, and closes it again on the way out, whatever the way out.
    """

    codec = "h264"

    def __init__(self, video: VideoConfig, camera: CameraConfig) -> None:
        self.mods = import_picamera2()
        check_features(self.mods.features)
        self._encoder_class = encoder_class(self.mods)
        # picamera2 before 0.3.32 cannot force an IDR in place: restart for one
        self._idr_in_place = callable(getattr(self._encoder_class, "force_key_frame", None))
        self.video = video
        self.camera = camera
        self.width, self.height, self.framerate = video.width, video.height, video.framerate
        self.min_bitrate = max(video.min_bitrate, HW_BITRATE_RANGE[0])
        self.max_bitrate = max(self.min_bitrate, min(video.max_bitrate, HW_BITRATE_RANGE[1]))
        self.bitrate = self.max_bitrate
        self.gop = max(1, round(video.keyframe_interval * video.framerate))
        self.hardware = self.mods.hardware_h264
        kind = ("hardware H.264" if self.hardware
                else "software H.264: a Pi 5 has no H.264 hardware")
        self.name = f"picamera2:{camera.index} ({self.mods.platform}, {kind})"
        self.model: str | None = None
        self.stall_after = max(STALL_MIN_SECONDS, STALL_FRAMES / video.framerate)
        # the hub's last resort, above this source's own escalation
        self.stall_timeout = (2 * (FIRST_FRAME_TIMEOUT + 2 * self.stall_after) + OPEN_TIMEOUT
                              + 4 * CALL_TIMEOUT)
        self._frame_pts = 90_000 // video.framerate
        self.frames_encoded = self.keyframes_encoded = self.bytes_encoded = 0
        self.encode_delay_ms: float | None = None  # sensor time -> encoded, smoothed
        self._top = QualityTier(width=self.width, height=self.height, bitrate=video.max_bitrate)
        self.lores_note: str | None = None  # why the lores tier differs from video.tiers
        self._lores = self._lores_tier(video)
        self._tier_wake = trio.Event()
        self.encoder_restarts = 0
        self.camera_restarts = 0
        self.dropped = 0
        if not self._idr_in_place:
            log.warning("media.picamera2.idr_by_restart", version=self.mods.features.version,
                        detail="this picamera2 cannot force a key frame (0.3.32 added it): "
                        f"the encoder is restarted for one instead; {UPGRADE_HINT}")
        # encoder thread -> Trio
        self._lock = threading.Lock()
        # (tier, generation, access unit, key frame, time stamp, sensor time, delay), in µs
        self._pending: collections.deque[
            tuple[int, int, bytes, bool, int, int | None, int | None]] = collections.deque()
        self._dropping = False  # the encoder thread dropped packets: skip to the next IDR
        self._skip_to_keyframe = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._has_packets: trio.Event | None = None
        # Trio side
        self._generation = 0  # bumped before each main encoder start
        self._timeline = _Timeline()
        self._sensor_anchor: int | None = None  # pts of sensor time 0, per camera session
        self._newest_pts: int | None = None
        self._encoder: Any = None
        self._running: dict[str, Any] = {}  # the encoders picamera2 runs, by stream
        self._restarting = False
        self._session_packets = 0
        self._last_packet_at = 0.0
        self._pacer = _KeyframePacer("main")
        self._want_bitrate: int | None = None
        self._idr_restart = False
        self._bitrate_wake: trio.Event | None = None
        self._last_bitrate_change = -math.inf
        self._limiter: trio.CapacityLimiter | None = None
        self._hung: str | None = None  # the first picamera2 call that did not return

    # -- requests from the hub (Trio thread) --------------------------------

    @property
    def keyframes_forced(self) -> int:
        return self._pacer.forced

    def request_keyframe(self, urgent: bool = False, tier: int = 0) -> bool:
        """Force an IDR (``encoder.force_key_frame()``), at most every 0.5 s."""
        if tier > 0:
            return True if self._lores is None else self._lores.pacer.request(urgent)
        if self._restarting:
            return True
        return self._pacer.request(urgent)

    def set_bitrate(self, bitrate: int) -> None:
        """Aim for ``bitrate`` (clamped to video.min/max_bitrate and the codec's range).

        picamera2 reads the bitrate only when the encoder starts, so a change
        restarts the encoder (the supported way: stop_encoder, start_encoder
        with the new bitrate; it begins with SPS/PPS and an IDR). Hence at
        most one change every BITRATE_MIN_INTERVAL, and none for less than 10%.
        """
        target = min(max(int(bitrate), self.min_bitrate), self.max_bitrate)
        if abs(target - self.bitrate) < BITRATE_HYSTERESIS * self.bitrate:
            self._want_bitrate = None
            return
        self._want_bitrate = target
        if self._bitrate_wake is not None:
            self._bitrate_wake.set()

    def _restart_main_for_idr(self) -> None:
        self._idr_restart = True
        if self._bitrate_wake is not None:
            self._bitrate_wake.set()

    def _restart_lores_for_idr(self) -> None:
        if self._lores is not None:
            self._lores.idr_restart = True
            self._tier_wake.set()

    # -- the lower tier ------------------------------------------------------

    def _lores_tier(self, video: VideoConfig) -> _Lores | None:
        """The first lower tier of ``video.tiers``, made from the camera's lores stream.

        picamera2 has one lores stream, so one lower tier: further ones are
        left out (logged). The encoder takes it like the main stream, at
        no CPU cost on VC4 as long as main + lores fit the codec's
        macroblock rate (:func:`.budget.fit_lores` shrinks or drops it); on a
        Pi 5 it is another libx264 encoder.
        """
        lower = video.quality_tiers()[1:]
        if not lower:
            return None
        if len(lower) > 1:
            log.warning("media.picamera2.tiers_limited", used=f"{lower[0].width}x"
                        f"{lower[0].height}", left_out=[f"{t.width}x{t.height}" for t in lower[1:]],
                        detail="the Pi camera has one second (lores) stream: one lower tier")
        fit = fit_lores(self.mods.platform, self.width, self.height, self.framerate, lower[0])
        self.lores_note = fit.note
        if fit.note is not None:
            log.warning("media.picamera2.lores_limited", detail=fit.note)
        spec = fit.tier
        if spec is None:
            return None
        bitrate = min(max(spec.bitrate, HW_BITRATE_RANGE[0]), HW_BITRATE_RANGE[1])
        return _Lores(spec, EncodingStats(spec.width, spec.height, self.framerate, bitrate))

    @property
    def tiers(self) -> tuple[QualityTier, ...]:
        return (self._top,) if self._lores is None else (self._top, self._lores.spec)

    def open_tier(self, tier: int, sink: PacketSink) -> None:
        if self._lores is None or tier != 1:
            raise ValueError(f"{self.name} has no tier {tier}")
        self._lores.sink = sink
        self._tier_wake.set()

    def close_tier(self, tier: int) -> None:
        if self._lores is not None and tier == 1:
            self._lores.sink = None
            self._tier_wake.set()

    def tier_stats(self, tier: int) -> EncodingStats | None:
        lores = self._lores
        return lores.stats if lores is not None and tier == 1 and lores.sink else None

    def set_tier_rate(self, tier: int, bitrate: int, max_fps: float | None) -> None:
        """Restart the lores encoder at ``bitrate``, skipping camera frames for ``max_fps``.

        Like :meth:`set_bitrate`: picamera2 reads both settings at start, so
        changes under 10 % (and with the same frame skip) are ignored, and
        the restarts are spaced ``BITRATE_MIN_INTERVAL`` apart.
        """
        lores = self._lores
        if lores is None or tier != 1:
            return
        target = min(max(int(bitrate), HW_BITRATE_RANGE[0]), HW_BITRATE_RANGE[1])
        skip = 1 if max_fps is None else max(1, round(self.framerate / max(max_fps, 1.0)))
        current = lores.stats.bitrate
        if skip == lores.skip and abs(target - current) < BITRATE_HYSTERESIS * current:
            lores.want = None
            return
        lores.want = (target, skip)
        self._tier_wake.set()

    async def _lores_loop(self, cam: Any) -> None:
        """Run the lores encoder as the hub asks, for one camera session (a Trio task).

        Started when a peer is on the tier, stopped when none is, restarted
        for a new rate (or a key frame, where picamera2 cannot force one),
        and restarted once it goes silent: its own watchdog, since the main
        encoder's does not look at it. A lores encoder that fails is the
        tier's problem, never the main stream's: it is retried after a
        back-off (``media.picamera2.lores_failed``), and meanwhile a peer
        moving to the tier stays where it is (its switch waits for a key
        frame that does not come). Only a hung call ends the session.
        """
        lores = self._lores
        assert lores is not None
        try:
            while True:
                now = time.monotonic()
                running = lores.encoder is not None
                allowance = (self.stall_after * lores.skip if lores.session_packets
                             else FIRST_FRAME_TIMEOUT)
                try:
                    if lores.sink is not None and not running and now >= lores.retry_at:
                        await self._start_lores(cam, "peer on the tier")
                    elif lores.sink is None and running:
                        await self._stop_lores(cam, "no peer on the tier")
                    elif running and lores.idr_restart:
                        await self._restart_lores(cam, "key frame")
                    elif running and lores.want is not None and (
                            now - lores.changed_at >= BITRATE_MIN_INTERVAL):
                        await self._restart_lores(cam, "rate")
                    elif running and now - max(lores.last_packet_at, lores.started_at) > allowance:
                        log.warning("media.picamera2.stalled", stream="lores",
                                    action="restart_encoder", camera=self.camera.index,
                                    packets=lores.session_packets)
                        if not lores.session_packets:
                            raise SourceError("the lores encoder delivers no packets")
                        await self._restart_lores(cam, "stalled")
                    else:
                        await self._wait_for_tier_request(lores, now)
                except _CallTimedOut:
                    raise
                except SourceError as exc:
                    await self._lores_failed(cam, str(exc))
        finally:
            lores.encoder = None  # the camera session's close stops every encoder
            lores.pacer.force = None

    async def _wait_for_tier_request(self, lores: _Lores, now: float) -> None:
        wait = self.stall_after / 2
        if lores.want is not None:
            wait = min(wait, lores.changed_at + BITRATE_MIN_INTERVAL - now)
        if lores.sink is not None and lores.encoder is None:
            wait = min(wait, lores.retry_at - now)
        with trio.move_on_after(max(wait, 0.01)):
            await self._tier_wake.wait()
        if self._tier_wake.is_set():
            self._tier_wake = trio.Event()

    async def _start_lores(self, cam: Any, reason: str) -> None:
        """Start a lores encoder at the wanted rate (taken here, on the Trio thread)."""
        lores = self._lores
        assert lores is not None
        rate, lores.want = lores.want, None
        if rate is not None:
            lores.stats.bitrate, lores.skip = rate
        lores.idr_restart = False
        encoder = self._new_encoder(lores.stats.bitrate)
        encoder.frame_skip_count = lores.skip
        lores.stats.max_fps = self.framerate / lores.skip if lores.skip > 1 else None
        lores.generation += 1
        lores.skip_to_keyframe = False
        lores.session_packets = 0
        lores.changed_at = lores.started_at = time.monotonic()
        await self._start_encoder(cam, "lores", encoder, lores.generation)
        lores.encoder = encoder
        lores.pacer.force = self._forcer(encoder, self._restart_lores_for_idr)
        log.info("media.picamera2.encoder_started", camera=self.camera.index, stream="lores",
                 width=lores.spec.width, height=lores.spec.height,
                 bitrate=lores.stats.bitrate, max_fps=lores.stats.max_fps, reason=reason,
                 generation=lores.generation)

    async def _stop_lores(self, cam: Any, reason: str) -> None:
        lores = self._lores
        assert lores is not None
        encoder, lores.encoder = lores.encoder, None
        lores.pacer.force = None
        lores.generation += 1  # what it still had queued is stale
        await self._stop_encoder(cam, "lores", encoder)
        log.info("media.picamera2.encoder_stopped", camera=self.camera.index, stream="lores",
                 reason=reason)

    async def _restart_lores(self, cam: Any, reason: str) -> None:
        await self._stop_lores(cam, reason)
        await self._start_lores(cam, reason)

    async def _lores_failed(self, cam: Any, error: str) -> None:
        """Stop a failed lores encoder and wait before the next try."""
        lores = self._lores
        assert lores is not None
        if lores.encoder is not None:
            await self._stop_lores(cam, "failed")
        lores.failures += 1
        retry = min(LORES_RETRY * 2 ** (lores.failures - 1), LORES_RETRY_MAX)
        lores.retry_at = time.monotonic() + retry
        log.error("media.picamera2.lores_failed", camera=self.camera.index, error=error,
                  failures=lores.failures, retry_in=retry)

    # -- encoders (Trio thread decides, a worker thread calls picamera2) ------

    def _new_encoder(self, bitrate: int) -> Any:
        """An H.264 encoder object (no picamera2 call: it only stores its settings)."""
        try:
            return self._encoder_class(bitrate=bitrate, repeat=True, iperiod=self.gop,
                                       framerate=self.framerate, profile=PROFILE)
        except Exception as exc:
            raise SourceError(f"no H.264 encoder: {chain(exc)}") from exc

    def _forcer(self, encoder: Any, restart: Callable[[], None]) -> Callable[[], None]:
        """How to force an IDR from ``encoder``: in place, or by restarting it."""
        force: Callable[[], None] = encoder.force_key_frame if self._idr_in_place else restart
        return force

    async def _start_encoder(self, cam: Any, stream: str, encoder: Any, generation: int) -> None:
        """``cam.start_encoder`` for ``stream`` ("main" or "lores"), bounded."""
        output = _output_class(self.mods.Output)(self, 0 if stream == "main" else 1, generation,
                                                encoder)
        try:
            await self._call(f"start_encoder {stream}", _start_encoder, cam, encoder, output,
                             stream)
        except _CallTimedOut:
            raise
        except Exception as exc:
            raise SourceError(f"camera {self.camera.index}: the {stream} H.264 encoder did not "
                              f"start: {chain(exc)}") from exc
        self._running[stream] = encoder

    async def _stop_encoder(self, cam: Any, stream: str, encoder: Any) -> None:
        """``cam.stop_encoder`` for one encoder, bounded; a failure is logged, not raised."""
        if self._running.pop(stream, None) is None:
            return
        try:
            await self._call(f"stop_encoder {stream}", cam.stop_encoder, encoder)
        except _CallTimedOut:
            raise
        except Exception as exc:
            log.warning("media.picamera2.close_step_failed", step=f"stop_encoder {stream}",
                        error=chain(exc))

    async def _start_main(self, cam: Any, reason: str) -> None:
        self._generation += 1
        encoder = self._new_encoder(self.bitrate)
        await self._start_encoder(cam, "main", encoder, self._generation)
        self._encoder = encoder
        self._pacer.force = self._forcer(encoder, self._restart_main_for_idr)
        log.info("media.picamera2.encoder_started", camera=self.camera.index,
                 bitrate=self.bitrate, iperiod=self.gop, profile=PROFILE,
                 hardware=self.hardware, generation=self._generation, reason=reason)

    async def _restart_main(self, cam: Any, bitrate: int | None, reason: str) -> None:
        """stop_encoder, [new bitrate], start_encoder: picamera2's supported restart."""
        self._restarting = True
        try:
            encoder, self._encoder = self._encoder, None
            self._pacer.force = None
            self._idr_restart = False
            await self._stop_encoder(cam, "main", encoder)
            if bitrate is not None:
                self.bitrate = bitrate
            await self._start_main(cam, reason)
        finally:
            self._last_packet_at = time.monotonic()
            self._restarting = False

    # -- running ------------------------------------------------------------

    async def run(self, sink: PacketSink) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._has_packets = trio.Event()
        self._bitrate_wake = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, sink)
                await self._sessions()
        except BaseExceptionGroup as group:
            raise sole_exception(group) from None

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

    async def _call(self, what: str, fn: Callable[..., T], *args: Any,
                    timeout: float = CALL_TIMEOUT) -> T:
        """A picamera2 call in a worker thread: one at a time, bounded, abandoned on cancel.

        picamera2 is not reentrant, hence one call at a time. A call that
        does not return within ``timeout`` is abandoned (its thread keeps the
        one slot until it returns, so every later call waits for it, and
        times out too) and raises :class:`_CallTimedOut`: the session then
        closes the camera, which is the last word on whether it is hung.
        """
        assert self._limiter is not None
        with trio.move_on_after(timeout):
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter,
                                                 abandon_on_cancel=True)
        self._hung = self._hung or what
        log.error("media.picamera2.call_timeout", camera=self.camera.index, call=what,
                  waited=timeout)
        raise _CallTimedOut(what, timeout)

    async def _camera_session(self) -> None:
        abandoned = threading.Event()
        try:
            with trio.fail_after(OPEN_TIMEOUT):
                cam = await trio.to_thread.run_sync(self._open, abandoned,
                                                    limiter=self._limiter,
                                                    abandon_on_cancel=True)
        except trio.TooSlowError:
            raise SourceError(f"camera {self.camera.index} did not open within "
                              f"{OPEN_TIMEOUT:g} s") from None
        finally:
            abandoned.set()  # if the thread still runs, it closes what it opened
        try:
            self._session_packets = 0
            self._sensor_anchor = None
            await self._start_main(cam, "camera opened")
            try:
                await self._call("start", cam.start)
            except _CallTimedOut:
                raise
            except Exception as exc:
                raise SourceError(f"camera {self.camera.index} did not start: {chain(exc)}"
                                  ) from exc
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._bitrate_loop, cam)
                    if self._lores is not None:
                        nursery.start_soon(self._lores_loop, cam)
                    await self._watchdog(cam)
            except BaseExceptionGroup as group:
                raise sole_exception(group) from None
        finally:
            self._encoder = None
            self._pacer.force = None
            with trio.CancelScope(shield=True):
                await self._close(cam)

    async def _close(self, cam: Any) -> None:
        """Stop each encoder on its own, then close the camera: every step bounded.

        ``stop_encoder()`` without an argument would stop at the first
        failing encoder and leave the rest running; ``close()`` (not
        ``stop()``) because it stops the camera's thread first and then the
        camera directly, which works even when that thread has died, where
        ``stop()`` would wait for it forever. A step that hangs ends the
        steps before ``close``; a ``close`` that does not return in time
        means the camera is lost to this process: :class:`CameraHung`.
        """
        closed = False
        try:
            for stream in ("lores", "main"):
                if stream in self._running:
                    await self._stop_encoder(cam, stream, self._running[stream])
        except _CallTimedOut:
            pass  # the close below says whether the camera can still be had back
        try:
            await self._call("close", cam.close)
            closed = True
        except _CallTimedOut:
            pass
        except Exception as exc:
            log.warning("media.picamera2.close_step_failed", step="close", error=chain(exc))
            closed = True
        finally:
            self._running.clear()
        if closed:
            self._hung = None  # whatever hung has let go
            log.info("media.picamera2.closed", camera=self.camera.index)
            return
        log.critical("media.picamera2.hung", camera=self.camera.index, call=self._hung,
                     detail="the camera cannot be closed; the agent exits so that systemd "
                     "starts it afresh")
        raise CameraHung(f"camera {self.camera.index}: picamera2's {self._hung} hung and the "
                         "camera could not be closed within "
                         f"{CALL_TIMEOUT:g} s; only a new process can use it again")

    async def _watchdog(self, cam: Any) -> None:
        """No packet for ``stall_after``: restart the encoder; still none: the camera."""
        self._last_packet_at = time.monotonic()
        restarted_at_packets: int | None = None  # packets seen when the encoder was restarted
        while True:
            await trio.sleep(self.stall_after / 4)
            if self._restarting:
                continue
            allowance = self.stall_after if self._session_packets else FIRST_FRAME_TIMEOUT
            silent = time.monotonic() - self._last_packet_at
            if silent < allowance:
                if restarted_at_packets is not None and self._session_packets > (
                        restarted_at_packets):
                    restarted_at_packets = None  # the restart cured it
                continue
            fields = dict(camera=self.camera.index, silent_s=round(silent, 1),
                          packets=self._session_packets)
            if restarted_at_packets is None:
                log.warning("media.picamera2.stalled", action="restart_encoder", **fields)
                self.encoder_restarts += 1
                restarted_at_packets = self._session_packets
                await self._restart_main(cam, None, "stalled")
            else:
                log.error("media.picamera2.stalled", action="restart_camera", **fields)
                raise _CameraStalled(self._session_packets)

    async def _bitrate_loop(self, cam: Any) -> None:
        """Restart the main encoder for a new bitrate, or for a key frame."""
        assert self._bitrate_wake is not None
        while True:
            await self._bitrate_wake.wait()
            self._bitrate_wake = trio.Event()
            if self._idr_restart:
                await self._restart_main(cam, None, "key frame")
                if self._want_bitrate is not None:
                    self._bitrate_wake.set()
                continue
            wait = self._last_bitrate_change + BITRATE_MIN_INTERVAL - time.monotonic()
            if wait > 0:
                await trio.sleep(wait)
            want = self._want_bitrate
            self._want_bitrate = None
            if want is None or want == self.bitrate:
                continue
            old = self.bitrate
            self._last_bitrate_change = time.monotonic()
            await self._restart_main(cam, want, "bitrate")
            log.info("media.picamera2.bitrate", camera=self.camera.index, old=old, new=want)


    # -- worker-thread parts --------------------------------------------------

    def _open(self, abandoned: threading.Event) -> Any:
        """Open and configure the camera (a worker thread). SourceError names the cause."""
        index, mods = self.camera.index, self.mods
        try:
            cameras = list(mods.Picamera2.global_camera_info())
        except Exception as exc:
            raise SourceError(f"camera {index}: libcamera cannot list cameras: {chain(exc)}"
                              ) from exc
        if index >= len(cameras):
            raise SourceError(missing_text(index, cameras))
        model = str(cameras[index].get("Model", "unknown"))
        # libcamera's number of the camera: picamera2 sorts its list, so not the index
        num = int(cameras[index].get("Num", index))
        if self.hardware and (self.width > HW_MAX_SIZE or self.height > HW_MAX_SIZE):
            raise SourceError(
                f"video.width x video.height = {self.width}x{self.height} is larger than the "
                f"Pi's H.264 encoder takes (at most {HW_MAX_SIZE} on a side)")
        hdr_by = hdr_plan(mods.platform, model)
        sensor_hdr = self._set_sensor_hdr(num) if hdr_by == "sensor" else False
        try:
            cam = mods.Picamera2(index)
        except Exception as exc:
            forget_failed_open(mods.Picamera2, num)
            raise SourceError(describe_open_error(exc, index, cameras)) from exc
        try:
            available = dict(cam.camera_controls)
            wanted = wanted_controls(self.camera, available, hdr_by=hdr_by)
            check_controls(wanted, available, f"camera {index} ({model})")
            controls: dict[str, Any] = {"FrameRate": self.framerate}
            controls.update({w.control: w.value for w in wanted})
            lores = None
            if self._lores is not None:  # there to start whenever a peer needs it
                lores = {"size": (self._lores.spec.width, self._lores.spec.height),
                         "format": "YUV420"}
            config = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": "YUV420"},
                lores=lores,
                controls=controls,
                buffer_count=self.camera.buffer_count,
                transform=mods.Transform(hflip=self.camera.hflip != (self.camera.rotation == 180),
                                         vflip=self.camera.vflip != (self.camera.rotation == 180)),
            )
            cam.configure(config)
        except SourceError:
            cam.close()
            raise
        except Exception as exc:
            cam.close()
            raise SourceError(f"camera {index} ({model}) refused its configuration: "
                              f"{describe_open_error(exc, index, cameras)}") from exc
        if abandoned.is_set():  # configuring took too long: nobody waits for it
            cam.close()
            raise SourceError(f"camera {index} opened too late")
        self.model = model
        log.info("media.picamera2.opened", camera=index, model=model, platform=mods.platform,
                 picamera2=mods.features.version, encoder="hardware" if self.hardware
                 else "software", width=self.width, height=self.height,
                 framerate=self.framerate, buffers=self.camera.buffer_count,
                 controls={w.control: w.value for w in wanted}, sensor_hdr=sensor_hdr)
        if not self.hardware:
            log.warning("media.picamera2.software_encoder", platform=mods.platform,
                        detail="this Pi (a Pi 5) has no H.264 hardware encoder: picamera2 "
                        "encodes with libx264 on the CPU, about one core at 1280x720@30; "
                        "lower video.width/height/framerate if the CPU runs short")
        return cam

    def _set_sensor_hdr(self, num: int) -> bool:
        """Camera Module 3 on VC4: sensor HDR on or off, as configured (before opening).

        The setting lives in the sensor's V4L2 subdevice and outlives us, so it
        is set either way: a camera that once ran with HDR must not keep it.
        ``num`` is libcamera's camera number, which ``IMX708`` looks cameras up by.
        """
        try:
            from picamera2.devices.imx708 import IMX708

            with IMX708(num) as sensor:
                sensor.set_sensor_hdr_mode(self.camera.hdr)
        except Exception as exc:
            if self.camera.hdr:
                raise SourceError(f"camera.hdr = true: the Camera Module 3's sensor HDR cannot "
                                  f"be switched on: {chain(exc)}") from exc
            log.debug("media.picamera2.sensor_hdr_unset", error=str(exc))
            return False
        return self.camera.hdr

    # -- encoder thread -> Trio -----------------------------------------------

    def _from_encoder(self, tier: int, generation: int, frame: Any, keyframe: bool,
                      timestamp: int | None, first: int | None) -> None:
        """Called in the encoder's thread for every access unit: copy, queue, wake Trio.

        Never blocks and never raises: an exception here would end picamera2's
        poll thread, which is exactly a silent stall.
        """
        try:
            data = bytes(frame)
            with self._lock:
                if len(self._pending) >= MAX_PENDING:
                    self.dropped += 1
                    self._dropping = True
                    return
                was_empty = not self._pending
                sensor = None if first is None else int(first) + int(timestamp or 0)
                # libcamera's sensor time stamps are on CLOCK_MONOTONIC
                delay = None if sensor is None else time.monotonic_ns() // 1000 - sensor
                self._pending.append((tier, generation, data, bool(keyframe),
                                      int(timestamp or 0), sensor, delay))
            if was_empty and self._token is not None:
                self._token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            pass
        except Exception:  # nothing useful can be done in this thread
            pass

    def _wake(self) -> None:
        if self._has_packets is not None:
            self._has_packets.set()

    async def _pump(self, sink: PacketSink) -> None:
        """Turn what the encoder thread queued into packets for ``sink`` (a Trio task)."""
        assert self._has_packets is not None
        while True:
            await self._has_packets.wait()
            self._has_packets = trio.Event()
            with self._lock:
                items = list(self._pending)
                self._pending.clear()
                dropping, self._dropping = self._dropping, False
            if dropping:
                log.warning("media.picamera2.packets_dropped", dropped=self.dropped,
                            reason="the agent fell behind the encoder")
                self._skip_to_keyframe = True
                self.request_keyframe(urgent=True)
                if self._lores is not None and self._lores.encoder is not None:
                    self._lores.skip_to_keyframe = True
                    self.request_keyframe(urgent=True, tier=1)
            for tier, generation, data, keyframe, timestamp_us, sensor_us, delay_us in items:
                if tier == 0:
                    packet = self._packet(generation, data, keyframe, timestamp_us, sensor_us)
                    if delay_us is not None and packet is not None:
                        self._note_delay(delay_us)
                    if packet is not None:
                        sink(packet)
                elif (lores := self._lores) is not None and lores.sink is not None:
                    packet = self._lores_packet(lores, generation, data, keyframe,
                                                timestamp_us, sensor_us)
                    if packet is not None:
                        lores.sink(packet)

    def _note_delay(self, delay_us: int) -> None:
        """Smooth the encoder's delay (sensor time -> packet out), for status and benchmarks."""
        ms = delay_us / 1000
        previous = self.encode_delay_ms
        self.encode_delay_ms = ms if previous is None else previous + (ms - previous) / 16

    def _packet(self, generation: int, data: bytes, keyframe: bool, timestamp_us: int,
                sensor_us: int | None) -> Packet[Any] | None:
        """One access unit as an av.Packet for the fan-out; None for stale or skipped ones."""
        if generation != self._generation:
            return None  # queued by an encoder session that has since been stopped
        if self._skip_to_keyframe:
            if not keyframe:
                return None
            self._skip_to_keyframe = False
        now = time.monotonic()
        packet = self._av_packet(data, keyframe,
                                 self._stamp(self._timeline, generation, timestamp_us, sensor_us))
        self.frames_encoded += 1
        self.bytes_encoded += len(data)
        self._session_packets += 1
        self._last_packet_at = now
        if keyframe:
            self.keyframes_encoded += 1
        self._pacer.seen(keyframe, now)
        return packet

    def _lores_packet(self, lores: _Lores, generation: int, data: bytes, keyframe: bool,
                      timestamp_us: int, sensor_us: int | None) -> Packet[Any] | None:
        """The same for the lores encoder's access units."""
        if generation != lores.generation:
            return None
        if lores.skip_to_keyframe:
            if not keyframe:
                return None
            lores.skip_to_keyframe = False
        now = time.monotonic()
        packet = self._av_packet(data, keyframe,
                                 self._stamp(lores.timeline, generation, timestamp_us, sensor_us))
        lores.stats.frames_encoded += 1
        lores.stats.bytes_encoded += len(data)
        lores.last_packet_at = now
        lores.session_packets += 1
        lores.failures = 0
        if keyframe:
            lores.stats.keyframes_encoded += 1
        lores.pacer.seen(keyframe, now)
        return packet

    def _stamp(self, line: _Timeline, generation: int, timestamp_us: int,
               sensor_us: int | None) -> int:
        """``pts`` (1/90000 s) on the monotonic clock, strictly increasing per encoder.

        picamera2 counts each encoder's time stamps from its own first frame
        (and from 0 again after a restart), but says where that was
        (``encoder.firsttimestamp``): the sensor's time of the frame. Both
        encoders' packets of one camera frame are stamped from that, against
        one anchor per camera session, so they carry the same ``pts``, which a
        peer switching tiers relies on. Without it, each encoder session is
        anchored to the clock at its first packet.
        """
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

    @staticmethod
    def _av_packet(data: bytes, keyframe: bool, pts: int) -> Packet[Any]:
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.time_base = VIDEO_TIME_BASE
        packet.is_keyframe = keyframe
        return packet


def _start_encoder(cam: Any, encoder: Any, output: Any, stream: str) -> None:
    """``cam.start_encoder`` (a worker thread); a failed start leaves nothing running."""
    try:
        cam.start_encoder(encoder, output, name=stream)
    except Exception:
        stop_failed_encoder(encoder)
        raise


def _output_class(base: Any) -> Any:
    """A picamera2 ``Output`` subclass that hands frames to a PiCamera2Source.

    Made on demand because picamera2 is imported lazily; cached per base class.
    """
    cls = _OUTPUT_CLASSES.get(base)
    if cls is None:

        class TrioOutput(base):  # type: ignore[misc]
            def __init__(self, source: PiCamera2Source, tier: int, generation: int,
                         encoder: Any) -> None:
                super().__init__()
                self._source = source
                self._tier = tier
                self._generation = generation
                self._encoder = encoder

            def outputframe(self, frame: Any, keyframe: bool = True,
                            timestamp: int | None = None, packet: Any = None,
                            audio: bool = False) -> None:
                # picamera2 passes all five positionally, from the encoder's thread
                if audio or frame is None:
                    return
                # where this encoder's time stamps count from: the sensor's clock
                first = getattr(self._encoder, "firsttimestamp", None)
                self._source._from_encoder(self._tier, self._generation, frame, keyframe,
                                           timestamp, first)

        cls = _OUTPUT_CLASSES[base] = TrioOutput
    return cls


_OUTPUT_CLASSES: dict[Any, Any] = {}
