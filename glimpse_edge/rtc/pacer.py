"""Pacing: a peer's video leaves at a steady rate, not a frame at a time.

aiortc sends every RTP packet of a frame back to back (the shared brief,
"No pacing"): a 720p key frame is tens of kilobytes handed to a Wi-Fi queue
in one go. A queue of a few frames' worth (a tbf's 16 kB, a home router's)
drops the tail, the receiver loses the key frame it asked for and asks
again: the key-frame spiral of issue 15. libwebrtc never does this: its
pacer releases packets at a multiple (2.5) of the target rate, in 5 ms
steps, audio first.

:class:`Pacer` is that leaky bucket for one connection's video. It sits
where aiortc's sender task awaits each packet's send (rtc/compat.py,
:func:`~.compat.pace_rtp`), so a packet that must wait holds the video
sender, and nothing else: audio has its own sender task and SSRC and is
never delayed behind video; RTCP is never paced. While the sender waits,
later frames wait in the peer's bounded video queue
(:class:`~glimpse_edge.media.fanout.PacketQueue`), which skips to the next
key frame if it overflows: the pacer holds at most one packet, and memory
stays bounded.

Retransmissions (a NACK's answer: a sequence number not newer than the
last one sent, or any packet of the video's RTX stream, RFC 4588, which is
how aiortc resends once RTX is negotiated, as browsers always do) go at
once, as libwebrtc's pacer sends them first, but are charged to the
bucket, so new video yields to them. And, as libwebrtc's
sender does, they are bounded: a packet is resent at most once per round
trip (a browser repeats its NACK for a packet every ~RTT, up to ten times,
and on a congested uplink each copy adds to the congestion), and resending
takes at most half the target rate over a second. aiortc answers every NACK
from its history, with neither bound; a retransmission over them is skipped.

A packet that waited gets a new abs-send-time (aiortc stamps it before the
send): a receiver's delay-based estimate must see when a packet really
left, or the pacer's own delay looks like a congested path.

A probe's padding (rtc/probe.py) is RTX resends of recent packets too,
marked in :attr:`Pacer.padding` before they are sent: free of those
bounds (it resends the same few packets again and again), not watched by
the repair, counted apart, and sent only into an idle bucket, so video
never waits behind it.

Every new video packet passes :meth:`Pacer.renumbered` first: the number it
goes out with, which differs from aiortc's once a receiver stuck behind old
holes was restarted at a key frame (rtc/restart.py).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from .repair import RepairLedger
from .restart import SequenceShift, with_sequence

__all__ = [
    "ABS_SEND_TIME_URI",
    "BURST_S",
    "PACING_FACTOR",
    "Pacer",
    "PacerStats",
    "PacingState",
    "abs_send_time_now",
    "rtp_sequence",
    "rtp_ssrc",
    "rtx_original_sequence",
    "set_abs_send_time",
    "starts_key_frame",
]

PACING_FACTOR: Final = 2.5  # libwebrtc's: the pacer runs at 2.5 x the target rate
# Credit the bucket keeps: 20 ms at the pacing rate (50 ms of the target), so a
# frame of an ordinary size leaves at once and only a key frame (or a stream
# above its target) is spread out. Every wait is a timer, and a timer costs
# ~0.2 ms of CPU on a small machine (scripts/bench_pacer.py): the pacer must
# wait rarely, not for every packet.
BURST_S: Final = 0.020
# A packet due less than this from now goes now (libwebrtc's pacer works in
# 5 ms steps too): one timer per step, not per packet.
STEP_S: Final = 0.005
MIN_RATE_BPS: Final = 200_000  # never slower than this (a key frame at the lowest rates)
# Retransmission bounds (libwebrtc: once per RTT per packet, a rate limiter)
RESEND_MIN_INTERVAL_S: Final = 0.05  # a packet resent again no sooner (or one RTT if longer)
RESEND_SHARE: Final = 0.5  # resending takes at most this share of the target rate...
RESEND_WINDOW_S: Final = 1.0  # ...over this window
_RESENT_KEEP: Final = 1024  # packets whose last resend is remembered
KEY_FRAMES_KEPT: Final = 8  # key frames whose sequence numbers are remembered (for repair)
ABS_SEND_TIME_URI: Final = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
NTP_EPOCH_OFFSET: Final = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)
_ONE_BYTE_PROFILE: Final = 0xBEDE
_WAIT_SMOOTHING: Final = 1 / 16  # weight of a packet's wait in the running average


def rtp_ssrc(data: bytes) -> int | None:
    """The SSRC of an RTP packet (None for RTCP or a runt)."""
    if len(data) < 12 or 192 <= data[1] <= 223:  # RTCP's packet types 192..223
        return None
    return int.from_bytes(data[8:12], "big")


def rtp_sequence(data: bytes) -> int:
    return int.from_bytes(data[2:4], "big")


def _payload_offset(data: bytes) -> int:
    """Where an RTP packet's payload starts (after CSRCs and header extensions)."""
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10 and len(data) >= offset + 4:  # header extension
        offset += 4 + 4 * int.from_bytes(data[offset + 2:offset + 4], "big")
    return offset


def rtx_original_sequence(data: bytes) -> int | None:
    """The sequence number an RTX packet resends (RFC 4588: the payload's first two
    bytes), or None for a runt."""
    offset = _payload_offset(data)
    if len(data) < offset + 2:
        return None
    return int.from_bytes(data[offset:offset + 2], "big")


def starts_key_frame(data: bytes, codec: str) -> bool:
    """Whether an RTP packet of ``codec`` ("h264", "vp8") starts a key frame's data.

    H.264 (RFC 6184): an IDR slice or an SPS alone, first in a STAP-A (aiortc
    aggregates SPS and PPS ahead of the IDR), or starting an FU-A; a frame
    of several slices has several such packets (the first of the frame is
    the one with a new timestamp). VP8
    (RFC 7741): the start of partition 0 whose payload header's P bit is 0.
    """
    pos = _payload_offset(data)
    payload = data[pos:pos + 8]
    if len(payload) < 2:
        return False
    if codec == "h264":
        nal = payload[0] & 0x1F
        if nal == 24 and len(payload) >= 4:  # STAP-A: the first aggregated NAL unit
            return payload[3] & 0x1F in (5, 7)
        if nal == 28:  # FU-A: its start
            return bool(payload[1] & 0x80) and payload[1] & 0x1F == 5
        return nal in (5, 7)
    if codec == "vp8":
        first, at = payload[0], 1
        if not first & 0x10 or first & 0x0F:  # not the start of partition 0
            return False
        if first & 0x80:  # extended control bits
            ext, at = payload[1], 2
            if ext & 0x80:  # PictureID, 7 or 15 bits
                at += 2 if len(payload) > at and payload[at] & 0x80 else 1
            at += bool(ext & 0x40) + bool(ext & 0x30)  # TL0PICIDX; TID/KEYIDX
        return len(payload) > at and not payload[at] & 0x01
    return False


def abs_send_time_now(now: float | None = None) -> int:
    """abs-send-time for ``now`` (Unix seconds): NTP seconds, 6.18 fixed point, 24 bits."""
    ntp = (time.time() if now is None else now) + NTP_EPOCH_OFFSET
    return int(ntp * (1 << 18)) & 0xFFFFFF


def set_abs_send_time(data: bytes, ext_id: int, value: int) -> bytes:
    """``data`` with its abs-send-time header extension (``ext_id``) set to ``value``.

    aiortc writes RFC 8285 one-byte-header extensions (ids up to 14, values
    up to 16 bytes); a packet without the extension, or with two-byte
    headers, comes back unchanged.
    """
    first = data[0]
    if not first & 0x10:  # no extension
        return data
    offset = 12 + 4 * (first & 0x0F)
    if len(data) < offset + 4 or int.from_bytes(data[offset:offset + 2], "big") != (
        _ONE_BYTE_PROFILE
    ):
        return data
    end = offset + 4 + 4 * int.from_bytes(data[offset + 2:offset + 4], "big")
    pos = offset + 4
    while pos < min(end, len(data)):
        header = data[pos]
        if header == 0:  # padding
            pos += 1
            continue
        element_id, length = header >> 4, (header & 0x0F) + 1
        if element_id == 15:
            break
        if element_id == ext_id and length == 3 and pos + 4 <= len(data):
            out = bytearray(data)
            out[pos + 1:pos + 4] = value.to_bytes(3, "big")
            return bytes(out)
        pos += 1 + length
    return data


@dataclass
class PacerStats:
    """What the pacer did, for /metrics and /status."""

    packets: int = 0  # new video packets through the pacer
    delayed: int = 0  # ... of which waited
    retransmissions: int = 0  # NACK answers (sent at once, charged)
    resent_bytes: int = 0  # ... their bytes (on the wire beside the new video)
    resends_skipped: int = 0  # NACK answers skipped (again within a round trip, or over budget)
    resends_refused: int = 0  # resends of packets sent before a restart (rtc/restart.py)
    padding_packets: int = 0  # resends sent as a probe's padding (rtc/uplink.py)
    padding_bytes: int = 0  # ... their bytes
    wait_s: float = 0.0  # total time packets waited
    wait_avg_s: float = 0.0  # running average of a packet's wait (recent packets)
    wait_max_s: float = 0.0  # the longest wait of a packet so far


@dataclass(frozen=True)
class PacingState:
    """A pacer as of one moment (observe/)."""

    rate_bps: int
    queue_delay_s: float
    packets: int
    delayed: int
    retransmissions: int
    wait_s: float
    wait_avg_s: float
    wait_max_s: float
    resends_skipped: int = 0
    repaired: int = 0  # resends found lost and sent again (rtc/repair.py)
    repair_filled: int = 0  # ... answered with a filler (older than the last key frame)
    repair_expired: int = 0  # ... found lost once no longer in the history
    receiver_restarts: int = 0  # key frames sent after a skip of sequence numbers (rtc/restart.py)
    padding_bytes: int = 0  # a probe's padding sent (rtc/uplink.py)


class Pacer:
    """A leaky bucket for one connection's video packets.

    ``rate_bps`` is the pacing rate (:meth:`set_target` sets it from the
    video's target rate). Virtual time: ``_free_at`` is when the link the
    bucket models is free again; an idle bucket holds :data:`BURST_S` of
    credit, and a packet due within :data:`STEP_S` goes at once.
    """

    def __init__(self, target_bps: int, *, abs_send_time_id: int | None = None,
                 codec: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_bps = 0.0
        self.set_target(target_bps)
        self.abs_send_time_id = abs_send_time_id
        self.ssrcs: set[int] = set()
        self.rtx_ssrcs: set[int] = set()  # their RTX streams: every packet is a resend
        self.stats = PacerStats()
        self._clock = clock
        self._free_at = clock() - BURST_S  # idle: the burst credit is there
        self._last_sequence: dict[int, int] = {}
        self.rtt_s: float | None = None  # the path's round trip, when known (set by feedback)
        self._resent_at: dict[tuple[int, int], float] = {}  # (ssrc, seq) -> last resend
        self._resend_window_start = -math.inf
        self._resend_bytes = 0
        self._skip_reason: str | None = None
        # resends on the RTX stream watched until the receiver's reports show
        # them arrived (rtc/repair.py); None: not watched
        self.repair: RepairLedger | None = None
        self.codec = codec  # "h264", "vp8": key frames are noted for the repair
        # the last few key frames sent, as [first, last] sequence numbers
        self.key_frames: deque[list[int]] = deque(maxlen=KEY_FRAMES_KEPT)
        self._key_frame_timestamp = b""
        self._frame_timestamp = b""
        # restarting a receiver stuck behind old holes (rtc/restart.py): allowed
        # while the repair acts (set by feedback); ``renumber(original, sent_as)``
        # moves the sender's history entry to the number sent
        self.shift = SequenceShift()
        self.restarts_allowed = False
        # how many cap onsets the shared uplink has answered (rtc/uplink.py's
        # ``cap_cuts``), read at each key frame: one more than seen restarts the
        # receiver there, whatever the repair waits for (set by feedback; shared,
        # so every peer's next key frame restarts, not only the peer whose
        # feedback heard the cut first)
        self.onsets: Callable[[], int] | None = None
        self._onsets_seen = 0
        # original sequence numbers whose next RTX resend is a probe's padding:
        # free of the resend bounds, and not watched by the repair
        self.padding: set[int] = set()
        self.renumber: Callable[[int, int], None] | None = None
        self._renumber_timestamp = b""

    def newest(self, ssrc: int) -> int | None:
        """The sequence number of the last new packet of ``ssrc`` (None: none yet)."""
        return self._last_sequence.get(ssrc)

    def set_target(self, target_bps: float) -> None:
        """Pace at :data:`PACING_FACTOR` x ``target_bps`` (the video's target rate)."""
        self.rate_bps = max(MIN_RATE_BPS, PACING_FACTOR * float(target_bps))

    @property
    def queue_delay_s(self) -> float:
        """How long a packet handed over now would wait (the bucket's backlog)."""
        return max(0.0, self._free_at - BURST_S - self._clock())

    def snapshot(self) -> PacingState:
        stats = self.stats
        repair = self.repair.stats if self.repair is not None else None
        return PacingState(round(self.rate_bps), self.queue_delay_s, stats.packets,
                           stats.delayed, stats.retransmissions, stats.wait_s,
                           stats.wait_avg_s, stats.wait_max_s, stats.resends_skipped,
                           repair.repaired if repair else 0, repair.filled if repair else 0,
                           repair.expired if repair else 0, self.shift.restarts,
                           stats.padding_bytes)

    def _is_new(self, ssrc: int, sequence: int) -> bool:
        last = self._last_sequence.get(ssrc)
        if last is None or 0 < (sequence - last) % 65536 < 32768:
            self._last_sequence[ssrc] = sequence
            return True
        return False

    @property
    def resend_budget(self) -> float:
        """Bytes resending may take per :data:`RESEND_WINDOW_S`."""
        return RESEND_SHARE * self.rate_bps / PACING_FACTOR * RESEND_WINDOW_S / 8

    def resend_room(self, size: int) -> bool:
        """Whether a resend of ``size`` bytes fits the resend budget now."""
        if self._clock() - self._resend_window_start >= RESEND_WINDOW_S:
            return True
        return self._resend_bytes + size <= self.resend_budget

    def _may_resend(self, key: tuple[int, int], size: int, now: float) -> str | None:
        """Why a retransmission of ``key`` is over its bounds ("again" within a round
        trip, or "budget"); None if it fits (and it is booked)."""
        last = self._resent_at.get(key)
        if last is not None and now - last < max(RESEND_MIN_INTERVAL_S, self.rtt_s or 0.0):
            return "again"
        if now - self._resend_window_start >= RESEND_WINDOW_S:
            self._resend_window_start, self._resend_bytes = now, 0
        if self._resend_bytes + size > self.resend_budget:
            return "budget"
        self._resend_bytes += size
        self._resent_at.pop(key, None)
        self._resent_at[key] = now
        if len(self._resent_at) > _RESENT_KEEP:  # forget the oldest (insertion order)
            del self._resent_at[next(iter(self._resent_at))]
        return None

    def admit(self, data: bytes) -> float | None:
        """Charge one packet to the bucket; how long it must wait before it goes (s).

        None: a retransmission over its bounds, not to be sent. Packets of
        other SSRCs (audio, RTX) and RTCP pass at once, free.
        """
        ssrc = rtp_ssrc(data)
        if ssrc is None:
            return 0.0
        now = self._clock()
        if ssrc in self.rtx_ssrcs:
            original = rtx_original_sequence(data)
            if original is None:
                return 0.0
            if original in self.padding:
                self.padding.discard(original)
                self.stats.padding_packets += 1
                self.stats.padding_bytes += len(data)
                return 0.0
            wait = self._resend((ssrc, original), data, now)
            if self.repair is not None:
                if wait is None:
                    self.repair.skipped(original, rtp_sequence(data), now,
                                        owed=self._skip_reason == "budget")
                else:
                    self.repair.resent(original, rtp_sequence(data), now)
            return wait
        if ssrc not in self.ssrcs:
            return 0.0
        sequence = rtp_sequence(data)
        if not self._is_new(ssrc, sequence):
            return self._resend((ssrc, sequence), data, now)
        if self.repair is not None and self.codec:
            timestamp = data[4:8]
            if timestamp == self._key_frame_timestamp:  # a key frame's later packet
                self.key_frames[-1][1] = sequence
            elif timestamp != self._frame_timestamp:  # a frame's first: parse only that
                self._frame_timestamp = timestamp
                if starts_key_frame(data, self.codec):
                    self._key_frame_timestamp = timestamp
                    self.key_frames.append([sequence, sequence])
        start = max(self._free_at, now - BURST_S)
        self._free_at = start + len(data) * 8 / self.rate_bps
        wait = start - now
        if wait < STEP_S:
            wait = 0.0
        stats = self.stats
        stats.packets += 1
        if wait > 0.0:
            stats.delayed += 1
            stats.wait_s += wait
            stats.wait_max_s = max(stats.wait_max_s, wait)
        stats.wait_avg_s += (wait - stats.wait_avg_s) * _WAIT_SMOOTHING
        return wait

    def _resend(self, key: tuple[int, int], data: bytes, now: float) -> float | None:
        """A retransmission: at once and charged, or None when over its bounds (or
        of a packet sent before a restart)."""
        if self.shift.before_restart(key[1]):
            self._skip_reason = "restart"
            self.stats.resends_refused += 1
            return None
        self._skip_reason = self._may_resend(key, len(data), now)
        if self._skip_reason is not None:
            self.stats.resends_skipped += 1
            return None
        self._free_at = max(self._free_at, now - BURST_S) + len(data) * 8 / self.rate_bps
        self.stats.retransmissions += 1
        self.stats.resent_bytes += len(data)
        return 0.0

    def follow_onsets(self, onsets: Callable[[], int]) -> None:
        """Restart the receiver at the first key frame after each cap onset that
        ``onsets`` counts from now on (rtc/uplink.py's ``cap_cuts``)."""
        self.onsets = onsets
        self._onsets_seen = onsets()

    def renumbered(self, data: bytes) -> bytes:
        """``data`` with the sequence number it goes out with (rtc/restart.py): a new
        video packet's is aiortc's plus the shift, which grows when a key frame
        starts while the receiver may wait for something older. Anything else
        comes back unchanged.

        A restart needs a resend the repair ledger watches, and it watches
        RTX resends only: once there is a shift, RTX is negotiated, and aiortc
        then resends on the RTX stream only, so every packet of the video
        stream is a new one.
        """
        repair = self.repair
        if repair is None or len(data) < 12 or rtp_ssrc(data) not in self.ssrcs:
            return data
        original = rtp_sequence(data)
        timestamp = data[4:8]
        shift = self.shift
        if timestamp != self._renumber_timestamp:  # a frame's first packet
            self._renumber_timestamp = timestamp
            onsets = self._onsets_seen if self.onsets is None else self.onsets()
            if self.codec and (onsets != self._onsets_seen
                               or (self.restarts_allowed and repair.waits())) \
                    and starts_key_frame(data, self.codec):
                self._onsets_seen = onsets
                repair.restart()
                shift.restart(original)
        sequence = shift.sent_as(original)
        shift.sent(sequence)
        if sequence == original:
            return data
        if self.renumber is not None:
            self.renumber(original, sequence)
        return with_sequence(data, sequence)

    async def send(self, data: bytes, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Send ``data`` with ``send`` once the bucket allows (from aiortc's sender task)."""
        data = self.renumbered(data)
        wait = self.admit(data)
        if wait is None:
            return
        if wait > 0.0:
            await asyncio.sleep(wait)
            if self.abs_send_time_id is not None:
                data = set_abs_send_time(data, self.abs_send_time_id, abs_send_time_now())
        await send(data)
