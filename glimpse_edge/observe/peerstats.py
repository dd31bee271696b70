"""Per-peer transport statistics from aiortc: bytes, bitrate, RTT, loss.

aiortc keeps cumulative counters per sender (``outbound-rtp``) and the latest
receiver report from the remote side (``remote-inbound-rtp``); both are read
with ``RTCPeerConnection.getStats()``, an asyncio coroutine. A bitrate needs
two readings some time apart, so the sampler keeps a short history per peer
and stream. It reads:

- at scrape time, when the newest reading is older than ``min_interval``, so
  ``/metrics`` and ``/status`` show live numbers;
- every ``interval`` seconds in the background, so the first scrape after a
  peer connects already has a reading to compute a rate against.

Every peer is read concurrently and bounded by ``timeout``: a peer whose
connection hangs or raises is reported with an ``error`` and never delays or
breaks the answer for the others. Peers that are gone are forgotten at the
next reading.

aiortc's quirks (see the shared brief): ``fractionLost`` is the raw 0..255
value of the receiver report, ``jitter`` is in RTP clock units, and
``roundTripTime`` is None until a report echoes our latest sender report.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from ..rtc.aio import call_aio
from ..rtc.sdp import negotiated_codecs
from ..rtc.tracks import PacketTrack
from .view import PeerView

log = structlog.get_logger(__name__)

STATS_TIMEOUT = 1.0  # one peer's getStats; slower means something is wrong with it
MIN_INTERVAL = 0.25  # callers within this share one reading (a burst of requests)
BACKGROUND_INTERVAL = 5.0
RATE_WINDOW = 10.0  # a bitrate is averaged over about this long
MIN_RATE_SPAN = 0.5  # two readings closer than this give no rate
_CLOCK_RATES = {"video": 90_000, "audio": 48_000}  # RTP clocks of H.264/VP8 and Opus


@dataclass(frozen=True)
class StreamStats:
    """One outgoing stream (audio or video) to one peer."""

    kind: str
    bytes_sent: int  # RTP payload bytes, as aiortc counts them
    packets_sent: int
    bitrate_bps: float | None  # payload bits per second over about RATE_WINDOW
    rtt_s: float | None
    loss_ratio: float | None  # fraction lost in the latest receiver report, 0..1
    packets_lost: int | None  # cumulative, as reported by the receiver
    jitter_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "bytes_sent": self.bytes_sent,
            "packets_sent": self.packets_sent,
            "bitrate_bps": None if self.bitrate_bps is None else round(self.bitrate_bps),
            "rtt_ms": None if self.rtt_s is None else round(self.rtt_s * 1000, 2),
            "loss_ratio": None if self.loss_ratio is None else round(self.loss_ratio, 4),
            "packets_lost": self.packets_lost,
            "jitter_ms": None if self.jitter_s is None else round(self.jitter_s * 1000, 2),
        }


@dataclass(frozen=True)
class PeerStats:
    """One reading of one peer's current connection."""

    peer_id: str
    at: float  # time.monotonic() of the reading
    streams: dict[str, StreamStats] = field(default_factory=dict)  # by kind
    error: str | None = None  # why there are no numbers (no connection is not an error)


@dataclass
class _History:
    """Recent (time, bytes) readings of one stream of one connection."""

    connection: int  # id() of the RTCPeerConnection: a new one restarts the counters
    readings: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    def add(self, at: float, value: int) -> float | None:
        """Record a reading; the bitrate since the oldest one in the window, if any."""
        if self.readings and value < self.readings[-1][1]:
            self.readings.clear()  # counters went back: a rebuilt sender
        self.readings.append((at, value))
        while len(self.readings) > 2 and self.readings[1][0] <= at - RATE_WINDOW:
            self.readings.popleft()
        first_at, first_value = self.readings[0]
        if at - first_at < MIN_RATE_SPAN:
            return None
        return (value - first_value) * 8 / (at - first_at)


class PeerStatsSampler:
    """The latest statistics of every peer, refreshed on demand and periodically."""

    def __init__(self, *, timeout: float = STATS_TIMEOUT, min_interval: float = MIN_INTERVAL
                 ) -> None:
        self.timeout = timeout
        self.min_interval = min_interval
        self.latest: dict[str, PeerStats] = {}
        self._history: dict[tuple[str, str], _History] = {}
        self._failing: dict[str, str] = {}
        self._last_refresh = -float("inf")
        self._lock = trio.Lock()

    async def refresh(self, sessions: Mapping[str, PeerView], *, force: bool = False
                      ) -> dict[str, PeerStats]:
        """Read every peer now, unless the last reading is recent; returns ``latest``.

        Concurrent callers (a scrape and a status request) share one reading.
        """
        async with self._lock:
            if not force and time.monotonic() - self._last_refresh < self.min_interval:
                return self.latest
            results: dict[str, PeerStats] = {}
            async with trio.open_nursery() as nursery:
                for peer_id, session in sessions.items():
                    nursery.start_soon(self._read_peer, peer_id, session, results)
            self.latest = results
            live = set(results)
            for key in [k for k in self._history if k[0] not in live]:
                del self._history[key]
            for peer_id in [p for p in self._failing if p not in live]:
                del self._failing[peer_id]
            self._last_refresh = time.monotonic()
            return results

    async def run(self, sessions: Callable[[], Mapping[str, PeerView]],
                  interval: float = BACKGROUND_INTERVAL) -> None:
        """Refresh every ``interval`` seconds, forever (the rate history's heartbeat)."""
        while True:
            await self.refresh(sessions(), force=True)
            await trio.sleep(interval)

    async def _read_peer(self, peer_id: str, session: PeerView,
                         results: dict[str, PeerStats]) -> None:
        pc = session.connection
        if pc is None or session.state == "closed":
            results[peer_id] = PeerStats(peer_id, time.monotonic())
            return
        error: str | None = None
        streams: dict[str, StreamStats] = {}
        with trio.move_on_after(self.timeout) as timer:
            try:
                report = await call_aio(pc.getStats)
                streams = self._streams(peer_id, id(pc), report.values(), time.monotonic())
            except Exception as exc:  # aiortc in any state: never the endpoint's problem
                error = f"getStats failed: {type(exc).__name__}: {exc}"
        if timer.cancelled_caught:
            error = f"getStats did not answer within {self.timeout:g} s"
        if error is not None and self._failing.get(peer_id) != error:
            log.warning("observe.peer_stats_failed", peer=peer_id, error=error)
        if error is None:
            self._failing.pop(peer_id, None)
        else:
            self._failing[peer_id] = error  # logged once per peer and kind of failure
        results[peer_id] = PeerStats(peer_id, time.monotonic(), streams, error)

    def _streams(self, peer_id: str, connection: int, stats: Any, at: float
                 ) -> dict[str, StreamStats]:
        outbound: dict[str, Any] = {}
        remote: dict[str, Any] = {}
        for item in stats:
            if item.type == "outbound-rtp":
                outbound[item.kind] = item
            elif item.type == "remote-inbound-rtp":
                remote[item.kind] = item
        streams = {}
        for kind, out in outbound.items():
            history = self._history.get((peer_id, kind))
            if history is None or history.connection != connection:
                history = self._history[(peer_id, kind)] = _History(connection)
            bitrate = history.add(at, int(out.bytesSent))
            rr = remote.get(kind)
            clock = _CLOCK_RATES.get(kind, 90_000)
            streams[kind] = StreamStats(
                kind=kind,
                bytes_sent=int(out.bytesSent),
                packets_sent=int(out.packetsSent),
                bitrate_bps=bitrate,
                rtt_s=None if rr is None or rr.roundTripTime is None else float(rr.roundTripTime),
                loss_ratio=None if rr is None else float(rr.fractionLost) / 256,
                packets_lost=None if rr is None else int(rr.packetsLost),
                jitter_s=None if rr is None else float(rr.jitter) / clock,
            )
        return streams


@dataclass(frozen=True)
class FanoutCounts:
    """What the shared encoders' fan-out did for one peer's stream, on this connection."""

    frames_sent: int  # encoded frames (Opus packets for audio) taken by aiortc's sender
    frames_dropped: int  # dropped because this peer fell behind (video: until a key frame)


def fanout_counts(session: PeerView) -> dict[str, FanoutCounts]:
    """Live counters of the peer's packet queues, by kind (none in per-peer encoding).

    Read directly rather than through the sampler: they are plain integers,
    and a scrape should show them as of now.
    """
    pc = session.connection
    if pc is None:
        return {}
    counts = {}
    for sender in pc.getSenders():
        track = sender.track
        if isinstance(track, PacketTrack) and track.queue is not None:
            counts[track.kind] = FanoutCounts(track.delivered, track.dropped)
    return counts


def sending_codecs(session: PeerView) -> dict[str, str | None]:
    """What the current connection sends, by kind ({"video": "h264", "audio": "opus"}).

    Read from the answer (the first codec of each m-line is the one in use),
    so it is empty until negotiation completed.
    """
    pc = session.connection
    if pc is None or pc.signalingState != "stable":
        return {}
    # aiortc types these as always set; before negotiation they are None
    local: Any = pc.localDescription
    remote: Any = pc.remoteDescription
    answer = local if local is not None and local.type == "answer" else remote
    if answer is None:
        return {}
    return negotiated_codecs(answer.sdp)
