"""Raspberry Pi camera through picamera2: the camera's H.264, untouched, to every peer.

A Pi cannot encode 720p30 in software for even one viewer, but its camera
stack feeds a hardware H.264 encoder (VC4 boards: Pi 4 and older). So this
source asks picamera2 for H.264 and hands each access unit to the hub as an
``av.Packet``; the hub publishes it to the shared H.264 stream, and aiortc
only packetizes it for each peer: nothing is decoded or re-encoded on the CPU.
On a Pi 5 (PiSP) there is no H.264 hardware: picamera2's ``H264Encoder`` is
then its libx264 software encoder; that works (about one core at 720p30) and
is said in the log (``media.picamera2.software_encoder``) and in the source
name that ``glimpse-edge status`` shows.

Quality tiers. With a lower tier in ``video.tiers``, the camera is configured
with a second, smaller "lores" stream too, and while some peer is on that
tier (the hub calls :meth:`PiCamera2Source.open_tier`) a second H.264
encoder runs on it, at the rate of the worst link on it (see ``_Lores``).
Both encoders' packets of a camera frame carry the same ``pts``.

Threads. picamera2's calls block (opening a camera takes about a second), so
they run in worker threads, one at a time. The encoder calls our ``Output``
from ITS OWN thread (the V4L2 poll thread; the camera loop for the software
encoder): :meth:`PiCamera2Source._from_encoder` copies the bytes into a
bounded deque and wakes a Trio task with ``run_sync_soon``, which never
blocks the encoder thread. The Trio task turns them into packets.

Time stamps. picamera2 gives microseconds since the first frame after each
encoder start (from the sensor's clock), restarting at 0 on every restart.
Each encoder session is anchored to the monotonic clock at its first packet,
so ``pts`` (1/90000 s) follows real time, stays spaced like the sensor's
frames, and strictly increases across restarts.

Failures designed for (picamera2 issues in brackets):

* camera busy: "Camera __init__ sequence did not complete" (another process
  holds it; 587, 627) and camera missing (IndexError / "No camera"; a ribbon
  cable): a :class:`SourceError` naming the cause; the hub retries with
  back-off while the room session stays up audio-only;
* silent stalls after hours (1090, 1392, 1004) and H.264 freezes (1228, 1230):
  a watchdog restarts the encoder after ``STALL_FRAMES`` frame intervals
  without a packet, then reopens the camera, then gives up to the hub's
  back-off;
* CMA memory exhaustion (ENOMEM; 972, 887): the error says to lower
  ``camera.buffer_count``.

The camera is always closed on the way out (cancellation included), and
picamera2 is imported only when a picamera2 source is made.
"""

from __future__ import annotations

import collections
import errno
import math
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, TypeVar

import av
import structlog
import trio
from av.packet import Packet

from ..config import CameraConfig, QualityTier, VideoConfig
from ..supervise import sole_exception
from .encoder import KEYFRAME_MIN_INTERVAL
from .source import (
    VIDEO_TIME_BASE,
    EncodedVideoSource,
    EncodingStats,
    PacketSink,
    SourceError,
    monotonic_pts,
)

__all__ = [
    "INSTALL_HINT",
    "PiCamera2Source",
    "Picamera2Modules",
    "WantedControl",
    "check_controls",
    "describe_open_error",
    "import_picamera2",
    "wanted_controls",
]

log = structlog.get_logger(__name__)

INSTALL_HINT: Final = (
    'on Raspberry Pi OS install it with "sudo apt install python3-picamera2", and run '
    "glimpse-edge from a virtualenv created with --system-site-packages (python3 -m venv "
    "--system-site-packages VENV) so that it sees the OS's picamera2 and libcamera; a "
    "picamera2 installed with pip does not match the OS's libcamera"
)
PROFILE: Final = "constrained baseline"  # what every browser decodes (42e0xx)
HW_BITRATE_RANGE: Final = (25_000, 25_000_000)  # the VC4 codec's V4L2 bitrate range
HW_MAX_SIZE: Final = 1920  # largest frame side the VC4 codec encodes
# No packet for this many frame intervals (at least STALL_MIN_SECONDS): act.
STALL_FRAMES: Final = 15
STALL_MIN_SECONDS: Final = 1.0
# A freshly opened camera settles its exposure before the first frame.
FIRST_FRAME_TIMEOUT: Final = 5.0
OPEN_TIMEOUT: Final = 15.0  # Picamera2() + configure, normally about a second
CLOSE_TIMEOUT: Final = 5.0
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

# libcamera enum values (control_ids_core.yaml); picamera2 accepts plain ints.
_AF_MODES: Final = {"manual": 0, "auto": 1, "continuous": 2}
_AF_RANGES: Final = {"normal": 0, "macro": 1, "full": 2}
_EXPOSURE_MODES: Final = {"normal": 0, "short": 1, "long": 2}
_AWB_MODES: Final = {"auto": 0, "incandescent": 1, "tungsten": 2, "fluorescent": 3,
                     "indoor": 4, "daylight": 5, "cloudy": 6}
_FLICKER_PERIOD_US: Final = {"50hz": 10_000, "60hz": 8_333}  # lights flicker at 2x mains
_AE_FLICKER_MANUAL: Final = 1
_HDR_SINGLE_EXPOSURE: Final = 3  # what picamera2's Pi 5 HDR example uses

T = TypeVar("T")


class Picamera2Modules(NamedTuple):
    """What this module needs from picamera2, imported once per source."""

    Picamera2: Any
    H264Encoder: Any
    Output: Any
    Transform: Any
    platform: str  # "VC4" (Pi 4 and older) or "PISP" (Pi 5)

    @property
    def hardware_h264(self) -> bool:
        """picamera2 makes ``H264Encoder`` the V4L2 hardware class only on VC4."""
        return self.platform == "VC4"


def import_picamera2() -> Picamera2Modules:
    """Import picamera2 (and libcamera) on first use, or say how to get them.

    Raises SourceError rather than ImportError: on a machine without them
    (x86: "No module named 'libcamera'") the message must say what to install.
    """
    try:
        import picamera2
        from libcamera import Transform
        from picamera2.encoders import H264Encoder
        from picamera2.outputs import Output
    except Exception as exc:  # ImportError, or libcamera failing to load its library
        raise SourceError(
            f'video.source = "picamera2" needs the picamera2 library, which {sys.executable} '
            f"cannot import ({type(exc).__name__}: {exc}): {INSTALL_HINT}"
        ) from exc
    platform = picamera2.get_platform()
    return Picamera2Modules(picamera2.Picamera2, H264Encoder, Output, Transform,
                            str(getattr(platform, "name", platform)))


# ------------------------------------------------------------------- controls


@dataclass(frozen=True)
class WantedControl:
    """One libcamera control the configuration asks for, and which key asked."""

    key: str  # "camera.af_mode"
    shown: str  # the value as written in the file
    control: str  # "AfMode"
    value: Any


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else f"{value:g}" if isinstance(
        value, float) else str(value)


def wanted_controls(
    camera: CameraConfig, available: Mapping[str, Any], *, sensor_hdr: bool = False
) -> list[WantedControl]:
    """The controls to send for ``camera``: only settings that differ from the defaults.

    ``af_mode = "default"`` becomes continuous autofocus on cameras that have
    autofocus (``AfMode`` in ``available``) and nothing elsewhere. ``hdr``
    becomes ``HdrMode`` on a Pi 5; ``sensor_hdr`` says the sensor does HDR
    itself (Camera Module 3 on VC4), which needs no control. What the camera
    does not support is not filtered out here: :func:`check_controls` refuses it.
    """
    out: list[WantedControl] = []

    def want(key: str, value: object, control: str, sent: object) -> None:
        out.append(WantedControl(f"camera.{key}", _toml(value), control, sent))

    af_mode = camera.af_mode
    if af_mode == "default":
        af_mode = "continuous" if "AfMode" in available else "default"
    if af_mode != "default":
        want("af_mode", camera.af_mode if camera.af_mode != "default" else af_mode, "AfMode",
             _AF_MODES[af_mode])
        if af_mode == "manual":
            want("lens_position", camera.lens_position, "LensPosition", camera.lens_position)
        elif camera.af_range != "normal":
            want("af_range", camera.af_range, "AfRange", _AF_RANGES[camera.af_range])
    if camera.exposure_value != 0.0:
        want("exposure_value", camera.exposure_value, "ExposureValue", camera.exposure_value)
    if camera.exposure_mode != "normal":
        want("exposure_mode", camera.exposure_mode, "AeExposureMode",
             _EXPOSURE_MODES[camera.exposure_mode])
    if camera.flicker != "off":
        want("flicker", camera.flicker, "AeFlickerMode", _AE_FLICKER_MANUAL)
        want("flicker", camera.flicker, "AeFlickerPeriod", _FLICKER_PERIOD_US[camera.flicker])
    if camera.awb_mode != "auto":
        want("awb_mode", camera.awb_mode, "AwbMode", _AWB_MODES[camera.awb_mode])
    for key, default, control in (("brightness", 0.0, "Brightness"),
                                  ("contrast", 1.0, "Contrast"),
                                  ("saturation", 1.0, "Saturation"),
                                  ("sharpness", 1.0, "Sharpness")):
        value = getattr(camera, key)
        if value != default:
            want(key, value, control, value)
    if camera.hdr and not sensor_hdr:
        want("hdr", True, "HdrMode", _HDR_SINGLE_EXPOSURE)
    return out


_WHY_MISSING: Final = {
    "AfMode": "it has no autofocus (a Camera Module 3 has; set camera.af_mode = \"default\")",
    "LensPosition": "its lens has no motor to focus with",
    "AfRange": "it has no autofocus",
    "HdrMode": "HDR needs a Pi 5 (HDR in its ISP) or a Camera Module 3 (sensor HDR)",
}


def check_controls(
    wanted: list[WantedControl], available: Mapping[str, Any], camera_name: str
) -> None:
    """Refuse, all at once and by config key, what this camera cannot do.

    ``available`` is ``Picamera2.camera_controls``: ``{name: (min, max, default)}``.
    A number outside the camera's own range is refused too (libcamera would
    clamp it silently, and the picture would not be what the file says).
    """
    problems = []
    for w in wanted:
        if w.control not in available:
            why = _WHY_MISSING.get(w.control, f"it has no {w.control} control")
            problems.append(f"{w.key} = {w.shown} is not supported by {camera_name}: {why}")
            continue
        low, high = [*available[w.control], None, None][:2]
        numbers = (int, float)
        if (isinstance(w.value, numbers) and not isinstance(w.value, bool)
                and isinstance(low, numbers) and isinstance(high, numbers)
                and not low <= w.value <= high):
            problems.append(f"{w.key} = {w.shown} is outside the range of {camera_name}'s "
                            f"{w.control} ({low:g} .. {high:g})")
    if problems:
        supported = ", ".join(sorted(available))
        raise SourceError("; ".join(problems) + f" (the camera's controls: {supported})")


# -------------------------------------------------------------------- errors


def _chain(exc: BaseException) -> str:
    """The message of ``exc`` and of each cause behind it."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 5:
        parts.append(f"{seen}" or type(seen).__name__)
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return ": ".join(dict.fromkeys(parts))


def _missing_text(index: int, cameras: list[Mapping[str, Any]]) -> str:
    if not cameras:
        return (f"no camera {index} found: libcamera sees no camera at all. Is one connected, "
                "with the ribbon cable fully inserted and the right way round at both ends "
                "(connect it only while the Pi is off)? `rpicam-hello --list-cameras` shows "
                "what libcamera sees")
    seen = ", ".join(f"{c.get('Num', i)}: {c.get('Model', '?')}" for i, c in enumerate(cameras))
    return (f"no camera {index} found: libcamera sees {len(cameras)} camera(s) ({seen}); "
            f"set camera.index to one of 0..{len(cameras) - 1}")


def describe_open_error(exc: BaseException, index: int, cameras: list[Mapping[str, Any]]) -> str:
    """What went wrong opening camera ``index``, with the likely cause and the fix."""
    text = _chain(exc)
    lowered = text.lower()
    if isinstance(exc, IndexError) or "no camera" in lowered or "camera(s) not found" in lowered:
        return _missing_text(index, cameras)
    if (isinstance(exc, OSError) and exc.errno == errno.ENOMEM) or (
            "cannot allocate memory" in lowered):
        return (f"camera {index}: not enough CMA memory for its buffers ({text}); lower "
                "camera.buffer_count or the video size, or give the kernel more CMA "
                "(dtoverlay=vc4-kms-v3d,cma-512 in /boot/firmware/config.txt)")
    if "busy" in lowered or "-16" in lowered or "did not complete" in lowered:
        certain = "busy" in lowered or "-16" in lowered
        return (f"camera {index} is busy: {'another' if certain else 'usually another'} "
                "process holds it (a second glimpse-edge, an rpicam-/libcamera- app, motion, "
                "a Python script); only one program can use a camera at a time. Find it with "
                f"`sudo fuser -v /dev/media* /dev/video*`. (picamera2: {text})")
    return f"camera {index} cannot be opened: {text}"


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
    """

    def __init__(self, label: str) -> None:
        self.label = label  # "main" or "lores", for the log
        self.last_keyframe_at = -math.inf
        self.forced_at: float | None = None
        self.deferred = False
        self.forced = 0

    def request(self, encoder: Any, urgent: bool) -> bool:
        now = time.monotonic()
        if self.forced_at is not None and now - self.forced_at < FORCE_PENDING:
            return True
        if urgent or now - self.last_keyframe_at >= KEYFRAME_MIN_INTERVAL:
            self.force(encoder, now)
            return True
        self.deferred = True
        return False

    def force(self, encoder: Any, now: float) -> None:
        try:
            encoder.force_key_frame()
        except Exception as exc:  # a PLI handler must never raise
            log.warning("media.picamera2.force_keyframe_failed", stream=self.label,
                        error=str(exc))
            return
        self.forced_at = now
        self.deferred = False
        self.forced += 1
        log.debug("media.picamera2.keyframe_forced", stream=self.label, forced=self.forced)

    def seen(self, encoder: Any, keyframe: bool, now: float) -> None:
        """A packet came out: note a key frame, or serve a deferred request."""
        if keyframe:
            self.last_keyframe_at = now
            self.forced_at = None
            self.deferred = False
        elif (self.deferred and encoder is not None
              and now - self.last_keyframe_at >= KEYFRAME_MIN_INTERVAL):
            self.force(encoder, now)


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
    want: tuple[int, int] | None = None  # (bitrate, skip) to restart with
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
    cannot); :meth:`run` opens the camera, streams, and closes it again on the
    way out, whatever the way out.
    """

    codec = "h264"

    def __init__(self, video: VideoConfig, camera: CameraConfig) -> None:
        self.mods = import_picamera2()
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
        self.stall_timeout = 2 * (FIRST_FRAME_TIMEOUT + 2 * self.stall_after) + OPEN_TIMEOUT
        self._frame_pts = 90_000 // video.framerate
        self.frames_encoded = self.keyframes_encoded = self.bytes_encoded = 0
        self._top = QualityTier(width=self.width, height=self.height, bitrate=video.max_bitrate)
        self._lores = self._lores_tier(video)
        self._tier_wake = trio.Event()
        self.encoder_restarts = 0
        self.camera_restarts = 0
        self.dropped = 0
        # encoder thread -> Trio
        self._lock = threading.Lock()
        # (tier, generation, access unit, key frame, time stamp, sensor time stamp)
        self._pending: collections.deque[tuple[int, int, bytes, bool, int, int | None]] = (
            collections.deque())
        self._dropping = False  # the encoder thread dropped packets: skip to the next IDR
        self._skip_to_keyframe = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._has_packets: trio.Event | None = None
        self._generation = 0  # bumped before each encoder start
        # Trio side
        self._timeline = _Timeline()
        self._sensor_anchor: int | None = None  # pts of sensor time 0, per camera session
        self._newest_pts: int | None = None
        self._encoder: Any = None
        self._restarting = False
        self._session_packets = 0
        self._last_packet_at = 0.0
        self._pacer = _KeyframePacer("main")
        self._want_bitrate: int | None = None
        self._bitrate_wake: trio.Event | None = None
        self._last_bitrate_change = -math.inf
        self._limiter: trio.CapacityLimiter | None = None

    # -- requests from the hub (Trio thread) --------------------------------

    @property
    def keyframes_forced(self) -> int:
        return self._pacer.forced

    def request_keyframe(self, urgent: bool = False, tier: int = 0) -> bool:
        """Force an IDR with ``encoder.force_key_frame()``, at most every 0.5 s."""
        if tier > 0:
            lores = self._lores
            if lores is None or lores.encoder is None:
                return True  # a starting encoder begins with an IDR anyway
            return lores.pacer.request(lores.encoder, urgent)
        if self._encoder is None or self._restarting:
            return True
        return self._pacer.request(self._encoder, urgent)

    def set_bitrate(self, bitrate: int) -> None:
        """Aim for ``bitrate`` (clamped to video.min/max_bitrate and the codec's range).

        picamera2 reads the bitrate only when the encoder starts, so a change
        restarts the encoder (the supported way: stop_encoder, new bitrate,
        start_encoder; it begins with SPS/PPS and an IDR). Hence at most one
        change every BITRATE_MIN_INTERVAL, and none for less than 10%.
        """
        target = min(max(int(bitrate), self.min_bitrate), self.max_bitrate)
        if abs(target - self.bitrate) < BITRATE_HYSTERESIS * self.bitrate:
            self._want_bitrate = None
            return
        self._want_bitrate = target
        if self._bitrate_wake is not None:
            self._bitrate_wake.set()

    # -- the lower tier ------------------------------------------------------

    def _lores_tier(self, video: VideoConfig) -> _Lores | None:
        """The first lower tier of ``video.tiers``, made from the camera's lores stream.

        picamera2 has one lores stream, so one lower tier: further ones are
        left out (logged). The encoder takes it like the main stream, at
        no CPU cost on VC4; on a Pi 5 it is another libx264 encoder.
        """
        lower = video.quality_tiers()[1:]
        if not lower:
            return None
        if len(lower) > 1:
            log.warning("media.picamera2.tiers_limited", used=f"{lower[0].width}x"
                        f"{lower[0].height}", left_out=[f"{t.width}x{t.height}" for t in lower[1:]],
                        detail="the Pi camera has one second (lores) stream: one lower tier")
        spec = lower[0]
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
        for a new rate, and restarted once it goes silent: its own watchdog,
        since the main encoder's does not look at it. A lores encoder that
        fails is the tier's problem, never the main stream's: it is retried
        after a back-off (``media.picamera2.lores_failed``), and meanwhile a
        peer moving to the tier stays where it is (its switch waits for a key
        frame that does not come).
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
                        await self._blocking(self._start_lores, cam)
                    elif lores.sink is None and running:
                        await self._blocking(self._stop_lores, cam)
                    elif running and lores.want is not None and (
                            now - lores.changed_at >= BITRATE_MIN_INTERVAL):
                        await self._blocking(self._restart_lores, cam, "rate")
                    elif running and now - max(lores.last_packet_at, lores.started_at) > allowance:
                        log.warning("media.picamera2.stalled", stream="lores",
                                    action="restart_encoder", camera=self.camera.index,
                                    packets=lores.session_packets)
                        if not lores.session_packets:
                            raise SourceError("the lores encoder delivers no packets")
                        await self._blocking(self._restart_lores, cam, "stalled")
                    else:
                        await self._wait_for_tier_request(lores, now)
                except SourceError as exc:
                    await self._blocking(self._lores_failed, cam, str(exc))
        finally:
            lores.encoder = None  # the camera session's close stops every encoder

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

    def _lores_failed(self, cam: Any, error: str) -> None:
        """Stop a failed lores encoder and wait before the next try (a worker thread)."""
        lores = self._lores
        assert lores is not None
        if lores.encoder is not None:
            self._stop_lores(cam, "failed")
        lores.failures += 1
        retry = min(LORES_RETRY * 2 ** (lores.failures - 1), LORES_RETRY_MAX)
        lores.retry_at = time.monotonic() + retry
        log.error("media.picamera2.lores_failed", camera=self.camera.index, error=error,
                  failures=lores.failures, retry_in=retry)

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

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """A picamera2 call in a worker thread, one at a time (picamera2 is not reentrant)."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

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
            await self._blocking(self._start, cam)
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
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT) as timer:
                await trio.to_thread.run_sync(self._close, cam, abandon_on_cancel=True)
            if timer.cancelled_caught:
                log.error("media.picamera2.close_timeout", camera=self.camera.index,
                          waited=CLOSE_TIMEOUT)

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
                await self._blocking(self._restart_encoder, cam, None)
            else:
                log.error("media.picamera2.stalled", action="restart_camera", **fields)
                raise _CameraStalled(self._session_packets)

    async def _bitrate_loop(self, cam: Any) -> None:
        assert self._bitrate_wake is not None
        while True:
            await self._bitrate_wake.wait()
            self._bitrate_wake = trio.Event()
            wait = self._last_bitrate_change + BITRATE_MIN_INTERVAL - time.monotonic()
            if wait > 0:
                await trio.sleep(wait)
            want = self._want_bitrate
            self._want_bitrate = None
            if want is None or want == self.bitrate:
                continue
            old = self.bitrate
            self._last_bitrate_change = time.monotonic()
            await self._blocking(self._restart_encoder, cam, want)
            log.info("media.picamera2.bitrate", camera=self.camera.index, old=old, new=want)

    # -- worker-thread parts --------------------------------------------------

    def _open(self, abandoned: threading.Event) -> Any:
        """Open and configure the camera (a worker thread). SourceError names the cause."""
        index, mods = self.camera.index, self.mods
        try:
            cameras = list(mods.Picamera2.global_camera_info())
        except Exception as exc:
            raise SourceError(f"camera {index}: libcamera cannot list cameras: {_chain(exc)}"
                              ) from exc
        if index >= len(cameras):
            raise SourceError(_missing_text(index, cameras))
        model = str(cameras[index].get("Model", "unknown"))
        if self.hardware and (self.width > HW_MAX_SIZE or self.height > HW_MAX_SIZE):
            raise SourceError(
                f"video.width x video.height = {self.width}x{self.height} is larger than the "
                f"Pi's H.264 encoder takes (at most {HW_MAX_SIZE} on a side)")
        sensor_hdr = self._set_sensor_hdr(model)
        try:
            cam = mods.Picamera2(index)
        except Exception as exc:
            raise SourceError(describe_open_error(exc, index, cameras)) from exc
        try:
            available = dict(cam.camera_controls)
            wanted = wanted_controls(self.camera, available, sensor_hdr=sensor_hdr)
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
                 encoder="hardware" if self.hardware else "software", width=self.width,
                 height=self.height, framerate=self.framerate,
                 controls={w.control: w.value for w in wanted}, sensor_hdr=sensor_hdr)
        if not self.hardware:
            log.warning("media.picamera2.software_encoder", platform=mods.platform,
                        detail="this Pi (a Pi 5) has no H.264 hardware encoder: picamera2 "
                        "encodes with libx264 on the CPU, about one core at 1280x720@30; "
                        "lower video.width/height/framerate if the CPU runs short")
        return cam

    def _set_sensor_hdr(self, model: str) -> bool:
        """Camera Module 3 on VC4: sensor HDR on or off, as configured (before opening).

        The setting lives in the sensor's V4L2 subdevice and outlives us, so it
        is set either way: a camera that once ran with HDR must not keep it.
        """
        if self.mods.platform != "VC4" or model != "imx708":
            return False
        try:
            from picamera2.devices.imx708 import IMX708

            with IMX708(self.camera.index) as sensor:
                sensor.set_sensor_hdr_mode(self.camera.hdr)
        except Exception as exc:
            if self.camera.hdr:
                raise SourceError(f"camera.hdr = true: the Camera Module 3's sensor HDR cannot "
                                  f"be switched on: {_chain(exc)}") from exc
            log.debug("media.picamera2.sensor_hdr_unset", error=str(exc))
            return False
        return self.camera.hdr

    def _start(self, cam: Any) -> None:
        """Make the encoder and start it and the camera (a worker thread)."""
        self._encoder = self.mods.H264Encoder(
            bitrate=self.bitrate, repeat=True, iperiod=self.gop, framerate=self.framerate,
            profile=PROFILE)  # no enable_sps_framerate: the Pi 5's software class lacks it
        try:
            self._start_encoder(cam)
            cam.start()
        except Exception as exc:
            raise SourceError(f"camera {self.camera.index}: the H.264 encoder did not start: "
                              f"{_chain(exc)}") from exc

    def _start_encoder(self, cam: Any) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
        output = _output_class(self.mods.Output)(self, 0, generation, self._encoder)
        cam.start_encoder(self._encoder, output, name="main")
        log.info("media.picamera2.encoder_started", camera=self.camera.index,
                 bitrate=self.bitrate, iperiod=self.gop, profile=PROFILE,
                 hardware=self.hardware, generation=generation)

    def _restart_encoder(self, cam: Any, bitrate: int | None) -> None:
        """stop_encoder, [new bitrate], start_encoder: picamera2's supported restart."""
        self._restarting = True
        try:
            cam.stop_encoder(self._encoder)
            if bitrate is not None:
                self._encoder.bitrate = self.bitrate = bitrate
            self._start_encoder(cam)
        except Exception as exc:
            raise SourceError(f"camera {self.camera.index}: restarting the H.264 encoder "
                              f"failed: {_chain(exc)}") from exc
        finally:
            self._last_packet_at = time.monotonic()
            self._restarting = False

    def _start_lores(self, cam: Any) -> None:
        """Make the lores encoder and start it on the running camera (a worker thread)."""
        lores = self._lores
        assert lores is not None
        try:
            lores.encoder = self.mods.H264Encoder(
                bitrate=lores.stats.bitrate, repeat=True, iperiod=self.gop,
                framerate=self.framerate, profile=PROFILE)
        except Exception as exc:
            raise SourceError(f"no lores H.264 encoder: {_chain(exc)}") from exc
        self._start_lores_encoder(cam, "peer on the tier")

    def _start_lores_encoder(self, cam: Any, reason: str) -> None:
        lores = self._lores
        assert lores is not None and lores.encoder is not None
        if lores.want is not None:
            lores.stats.bitrate, lores.skip = lores.want
            lores.want = None
        lores.encoder.bitrate = lores.stats.bitrate
        lores.encoder.frame_skip_count = lores.skip
        lores.stats.max_fps = self.framerate / lores.skip if lores.skip > 1 else None
        lores.generation += 1
        lores.skip_to_keyframe = False
        lores.session_packets = 0
        lores.changed_at = lores.started_at = time.monotonic()
        output = _output_class(self.mods.Output)(self, 1, lores.generation, lores.encoder)
        try:
            cam.start_encoder(lores.encoder, output, name="lores")
        except Exception as exc:
            lores.encoder = None
            raise SourceError(f"camera {self.camera.index}: the lores H.264 encoder did not "
                              f"start: {_chain(exc)}") from exc
        log.info("media.picamera2.encoder_started", camera=self.camera.index, stream="lores",
                 width=lores.spec.width, height=lores.spec.height,
                 bitrate=lores.stats.bitrate, max_fps=lores.stats.max_fps, reason=reason,
                 generation=lores.generation)

    def _stop_lores(self, cam: Any, reason: str = "no peer on the tier") -> None:
        lores = self._lores
        assert lores is not None
        encoder, lores.encoder = lores.encoder, None
        lores.generation += 1  # what it still had queued is stale
        try:
            cam.stop_encoder(encoder)
        except Exception as exc:
            log.warning("media.picamera2.close_step_failed", step="stop_encoder lores",
                        error=str(exc))
        log.info("media.picamera2.encoder_stopped", camera=self.camera.index, stream="lores",
                 reason=reason)

    def _restart_lores(self, cam: Any, reason: str) -> None:
        lores = self._lores
        assert lores is not None and lores.encoder is not None
        try:
            cam.stop_encoder(lores.encoder)
        except Exception as exc:
            lores.encoder = None
            raise SourceError(f"camera {self.camera.index}: restarting the lores H.264 encoder "
                              f"failed: {_chain(exc)}") from exc
        self._start_lores_encoder(cam, reason)

    def _close(self, cam: Any) -> None:
        """Stop everything and close the camera, whatever state it is in (a worker thread)."""
        for step in ("stop_encoder", "stop", "close"):
            try:
                getattr(cam, step)()
            except Exception as exc:
                log.warning("media.picamera2.close_step_failed", step=step, error=str(exc))
        log.info("media.picamera2.closed", camera=self.camera.index)

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
                self._pending.append((tier, generation, data, bool(keyframe),
                                      int(timestamp or 0), sensor))
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
            for tier, generation, data, keyframe, timestamp_us, sensor_us in items:
                if tier == 0:
                    packet = self._packet(generation, data, keyframe, timestamp_us, sensor_us)
                    if packet is not None:
                        sink(packet)
                elif (lores := self._lores) is not None and lores.sink is not None:
                    packet = self._lores_packet(lores, generation, data, keyframe,
                                                timestamp_us, sensor_us)
                    if packet is not None:
                        lores.sink(packet)

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
        self._pacer.seen(self._encoder, keyframe, now)
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
        lores.pacer.seen(lores.encoder, keyframe, now)
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
