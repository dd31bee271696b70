"""One of the camera's streams and its H.264 encoder, as the Trio side keeps track of it.

picamera2 gives a camera two streams an encoder can take: "main" (the
configured size) and "lores" (the lower tier, when there is one). Both
live the same life, kept here once: an encoder started and stopped by the
source, a new generation at each start and stop (so what a stopped encoder
still had queued is known for stale), packets stamped on the stream's own
timeline, key frames forced at most every ``KEYFRAME_MIN_INTERVAL``, and a
rate the hub wants, applied at the encoder's next start (picamera2 reads
its settings only then). They differ in data only: the name, the counters
(main's are the source's own, which status shows as the top tier; lores'
an :class:`~glimpse_edge.media.source.EncodingStats`), and what a failure
does (``retry_after``).

Everything here runs on the Trio thread and calls nothing of picamera2:
the stream's task (:mod:`.driver`) makes those calls, in a worker thread,
with what was decided here. Even a key frame is only asked for here
(``force_pending``), so that the hub's request never blocks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import av
import structlog
import trio
from av.packet import Packet

from ...config import QualityTier
from ..encoder import KEYFRAME_MIN_INTERVAL
from ..source import VIDEO_TIME_BASE, PacketSink
from .bridge import AccessUnit
from .clock import CameraClock, Timeline

__all__ = [
    "BITRATE_HYSTERESIS",
    "BITRATE_MIN_INTERVAL",
    "FIRST_FRAME_TIMEOUT",
    "FORCE_PENDING",
    "Counters",
    "EncoderStream",
    "KeyframePacer",
]

log = structlog.get_logger(__name__)

# A new rate restarts the encoder (new headers and an IDR, ~1 frame gap):
# not within this long of its last start, and not for changes under the
# hysteresis.
BITRATE_MIN_INTERVAL: Final = 2.0
BITRATE_HYSTERESIS: Final = 0.1
# A forced IDR normally arrives within a frame or two; ask again after this.
FORCE_PENDING: Final = 0.5
# A freshly started encoder (a freshly opened camera settles its exposure
# first) may take this long to its first packet.
FIRST_FRAME_TIMEOUT: Final = 5.0


class Counters(Protocol):
    """A stream's settings and counters, where status and metrics read them."""

    bitrate: int
    max_fps: float | None
    frames_encoded: int
    keyframes_encoded: int
    bytes_encoded: int


class KeyframePacer:
    """Forced IDRs for one encoder: at most one per ``KEYFRAME_MIN_INTERVAL``.

    A request inside the interval is kept and served when it ends (checked at
    every packet); one already forced and not yet seen is not repeated within
    ``FORCE_PENDING``. ``force`` asks for one, on the Trio thread and without
    blocking; None while no encoder runs (a starting one begins with an IDR).
    """

    def __init__(self, label: str) -> None:
        self.label = label  # "main" or "lores", for the log
        self.force: Callable[[], None] | None = None
        self.last_keyframe_at = -math.inf
        self.forced_at: float | None = None
        self.deferred = False
        self.forced = 0

    def request(self, urgent: bool) -> bool:
        """True if an IDR is on its way (or the encoder starts anyway); False: deferred."""
        if self.force is None:
            return True
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
        self.force()
        self.forced_at = now
        self.deferred = False
        self.forced += 1
        log.debug("media.picamera2.keyframe_forced", stream=self.label, forced=self.forced)

    def failed(self) -> None:
        """The forced IDR was not had: the next request asks again at once."""
        self.forced_at = None
        self.forced -= 1

    def seen(self, keyframe: bool, now: float) -> None:
        """A packet came out: note a key frame, or serve a deferred request."""
        if keyframe:
            self.last_keyframe_at = now
            self.forced_at = None
            self.deferred = False
        elif (self.deferred and self.force is not None
              and now - self.last_keyframe_at >= KEYFRAME_MIN_INTERVAL):
            self._force(now)


class EncoderStream:
    """One camera stream ("main" or "lores") and the encoder the source runs on it.

    ``sink`` set means the stream is wanted (main: while the source runs;
    lores: while a peer is on its tier). ``encoder`` is the running
    picamera2 encoder, set once its start has returned and cleared before it
    is stopped. ``retry_after`` is the failure policy: None (main) means a
    failure ends the camera session and the source's watchdog watches for
    stalls (restart the encoder, then reopen the camera); otherwise (lores)
    the stream watches itself and a failure waits ``retry_after(failures)``
    seconds before the next start, never touching the main stream.
    """

    def __init__(self, name: str, tier: int, spec: QualityTier, stats: Counters,
                 framerate: int, retry_after: Callable[[int], float] | None = None) -> None:
        self.name = name  # picamera2's name of the stream
        self.tier = tier
        self.spec = spec  # the size (and configured bitrate) of the tier it serves
        self.stats = stats
        self.framerate = framerate  # the camera's
        self.retry_after = retry_after
        self.pacer = KeyframePacer(name)
        self.timeline = Timeline()
        self.sink: PacketSink | None = None
        self.encoder: Any = None
        self.generation = 0
        self.skip = 1  # the encoder's frame_skip_count: every skip-th camera frame
        self.want: tuple[int, int] | None = None  # (bitrate, skip) for the next start
        self.restart_for: str | None = None  # why the encoder is to be restarted
        self.force_pending = False  # force_key_frame() asked for, not yet called
        self.changed_at = -math.inf  # the last start (a new rate waits for the interval)
        self.started_at = 0.0  # the last start that returned
        self.last_packet_at = 0.0
        self.session_packets = 0  # since the encoder's last start
        self.skip_to_keyframe = False
        self.failures = 0  # starts in a row that failed or brought no packet
        self.retry_at = -math.inf
        self.encode_delay_ms: float | None = None  # sensor time -> packet, smoothed
        self._wake = trio.Event()

    @property
    def running(self) -> bool:
        return self.encoder is not None

    # -- what the hub wants ---------------------------------------------------

    def aim(self, bitrate: int, skip: int = 1) -> None:
        """Want the encoder at ``bitrate``, taking every ``skip``-th camera frame.

        picamera2 reads both only when an encoder starts, so a change means a
        restart: none for the same frame skip and a bitrate within the
        hysteresis of the current one.
        """
        current = self.stats.bitrate
        if skip == self.skip and abs(bitrate - current) < BITRATE_HYSTERESIS * current:
            self.want = None
            return
        self.want = (bitrate, skip)
        self.wake()

    def restart(self, reason: str) -> None:
        """Ask for the encoder to be restarted (the source's task for the stream does it)."""
        if self.restart_for is None:
            self.restart_for = reason
        self.wake()

    def _ask_force(self) -> None:
        self.force_pending = True
        self.wake()

    def resync(self) -> None:
        """Access units were dropped: skip to the next IDR, and ask for one now."""
        if self.running:
            self.skip_to_keyframe = True
            self.pacer.request(urgent=True)

    # -- the source's task for the stream --------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def wait(self, now: float, longest: float) -> None:
        """Until something is asked of the stream, or something becomes due, or ``longest``."""
        wait = longest
        if self.want is not None:
            wait = min(wait, self.changed_at + BITRATE_MIN_INTERVAL - now)
        if self.sink is not None and self.encoder is None:
            wait = min(wait, self.retry_at - now)
        with trio.move_on_after(max(wait, 0.01)):
            await self._wake.wait()
        if self._wake.is_set():
            self._wake = trio.Event()

    def restart_reason(self, now: float) -> str | None:
        """Why the running encoder should be restarted now, if it should."""
        if self.restart_for is not None:
            return self.restart_for
        if self.want == (self.stats.bitrate, self.skip):
            self.want = None
        if self.want is not None and now - self.changed_at >= BITRATE_MIN_INTERVAL:
            return "rate"
        return None

    def stalled(self, now: float, stall_after: float) -> bool:
        """Silent for longer than the running encoder may be: ``stall_after`` for each
        camera frame it takes, or ``FIRST_FRAME_TIMEOUT`` before its first packet."""
        allowance = stall_after * self.skip if self.session_packets else FIRST_FRAME_TIMEOUT
        return now - max(self.last_packet_at, self.started_at) > allowance

    def starting(self) -> int:
        """An encoder is about to start: take the wanted rate; its generation."""
        rate, self.want = self.want, None
        if rate is not None:
            self.stats.bitrate, self.skip = rate
        self.stats.max_fps = self.framerate / self.skip if self.skip > 1 else None
        self.restart_for = None
        self.force_pending = False
        self.generation += 1
        self.skip_to_keyframe = False
        self.session_packets = 0
        self.changed_at = time.monotonic()
        return self.generation

    def started(self, encoder: Any, idr_in_place: bool) -> None:
        """The encoder's start returned: it runs. ``idr_in_place``: it can force an IDR
        (``force_key_frame``, picamera2 0.3.32); else it is restarted for one."""
        self.encoder = encoder
        self.started_at = time.monotonic()
        self.pacer.force = self._ask_force if idr_in_place else self._restart_for_idr

    def _restart_for_idr(self) -> None:
        self.restart("key frame")

    def stopping(self) -> Any:
        """The encoder is about to be stopped (or is gone with the camera): the one it was.

        What it still had queued is stale from now on.
        """
        encoder, self.encoder = self.encoder, None
        self.pacer.force = None
        self.force_pending = False
        self.generation += 1
        return encoder

    # -- packets ---------------------------------------------------------------

    def packet(self, unit: AccessUnit, clock: CameraClock) -> Packet[Any] | None:
        """``unit`` as an ``av.Packet``, counted; None for a stale or skipped one."""
        if unit.generation != self.generation:
            return None  # queued by an encoder session that has since been stopped
        if self.skip_to_keyframe:
            if not unit.keyframe:
                return None
            self.skip_to_keyframe = False
        now = time.monotonic()
        packet = av.Packet(unit.data)
        packet.pts = packet.dts = clock.stamp(self.timeline, unit.generation,
                                              unit.timestamp_us, unit.sensor_us)
        packet.time_base = VIDEO_TIME_BASE
        packet.is_keyframe = unit.keyframe
        stats = self.stats
        stats.frames_encoded += 1
        stats.bytes_encoded += len(unit.data)
        if unit.keyframe:
            stats.keyframes_encoded += 1
        self.session_packets += 1
        self.last_packet_at = now
        self.failures = 0
        self.pacer.seen(unit.keyframe, now)
        if unit.delay_us is not None:
            ms = unit.delay_us / 1000
            previous = self.encode_delay_ms
            self.encode_delay_ms = ms if previous is None else previous + (ms - previous) / 16
        return packet
