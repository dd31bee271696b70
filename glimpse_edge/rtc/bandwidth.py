"""Per-peer bandwidth estimate from what aiortc lets a sender see: RTCP.

aiortc has no transport-wide congestion control: no transport-cc feedback,
no probing, no pacing (see the shared brief, section 3). What does reach a
sender is the receiver's RTCP: receiver report blocks (fraction lost,
interarrival jitter, and the LSR/DLSR pair that gives a round-trip time)
and, from browsers and aiortc receivers, REMB (the receiver's own estimate).
:class:`BandwidthEstimator` turns those into one number per peer, in the
spirit of the loss-based half of Google Congestion Control
(draft-ietf-rmcat-gcc-02, section 6):

- more than 10 % loss in a report: ``A *= 1 - loss / 2``;
- 2 to 10 % loss: hold;
- under 2 % loss: increase by 8 % per second (GCC's 5 % per report, made
  independent of how often a receiver reports: aiortc reports about once a
  second per stream, Chrome more often);
- a rising round-trip time is the early signal that a queue is building in
  front of a bottleneck, seconds before the queue overflows into loss: the
  queueing delay (RTT above the lowest RTT of the last 30 s) stops increases
  once it passes a hold threshold, and backs off by 15 % when it is well
  above it and still growing;
- REMB, when the receiver sends it, is a cap (GCC's ``min(As, Ar)``) when
  it complains: it is well below the video we send the peer (a receiver
  that saw its queue grow answers with 0.85 times what reached it). A REMB
  above that is not: a receiver's estimate only grows with what arrives (to
  1.5 times the incoming rate), so a peer we send little to (a lower
  quality tier) reports little while its link may carry much more. Right
  after we raise our rate (:meth:`BandwidthEstimator.expect_rise`), a REMB
  lags below it for seconds (it grows 8 % a second): then only a falling
  REMB complains;
- the result always lies within the bounds given: ``video.min_bitrate`` and
  what the best quality tier needs on the wire (rtc/tiers.py).

The estimate starts at the maximum: the shared encoder already sends at its
target whatever a peer's link is like, and nothing probes upwards, so
starting low would only mean "unknown" for half a minute. Evidence (loss,
queueing delay, REMB) brings it down.

The controller is pure and deterministic: time is passed in (``now``,
monotonic seconds), nothing here reads a clock, does I/O or raises on odd
input, so a recorded report sequence replays to the same estimates, and the
RTCP hook that feeds it inside aiortc's DTLS loop cannot be broken by it.
The helpers at the bottom pull observations out of aiortc's RTCP packet
objects; reading aiortc's private sender state is rtc/compat.py's.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)

Reason = Literal["start", "increase", "hold", "loss", "rtt_hold", "rtt", "remb", "bounds"]


@dataclass(frozen=True)
class Tuning:
    """The controller's constants; the defaults follow GCC where GCC has one."""

    low_loss: float = 0.02  # below: increase
    high_loss: float = 0.10  # above: decrease; in between: hold
    increase_per_s: float = 0.08  # multiplicative increase per second of good reports
    # A long silence between reports is no evidence of spare capacity: an
    # increase never counts more than this many seconds.
    max_increase_span: float = 2.0
    # Two decreases are at least this far apart (plus one RTT), so one loss
    # episode seen in several report blocks is punished once.
    decrease_interval: float = 0.3
    rtt_window: float = 30.0  # the base RTT is the lowest RTT sample of this window
    # Queueing delay (RTT above base) that stops increases: this much plus a
    # share of the base (jittery long paths need more room than a LAN).
    rtt_hold: float = 0.030
    rtt_hold_share: float = 0.25
    rtt_decrease_factor: float = 4.0  # queueing delay > factor x hold threshold: back off...
    rtt_backoff: float = 0.85  # ...to this share, if the RTT is still rising
    rtt_smoothing: float = 0.4  # weight of a new RTT sample in the smoothed RTT
    remb_timeout: float = 5.0  # a REMB older than this no longer caps
    # A REMB below this share of the video we send is the receiver asking for less
    # (a receiver that overuses answers with 0.85 x what reached it, and lower);
    # while it catches up with a rise of ours, one below this share of its last.
    remb_complaint: float = 0.8
    remb_drop: float = 0.9
    # Every fresh REMB caps (plain GCC), not only one that complains: for an SFU,
    # whose REMB is a cap it sets (Janus: the publisher's configured bitrate,
    # sent every 5 s), not an estimate that grows with what arrives. With the
    # browser rule the published rate climbed 8 %/s past the cap between two
    # REMBs and sawed around it (0.65-1.45 x).
    remb_always_caps: bool = False


@dataclass
class Update:
    """What one input did to the estimate (for logs and tests)."""

    estimate_bps: int
    previous_bps: int
    reason: Reason


@dataclass
class BandwidthEstimator:
    """One peer's estimate of what its link carries, in bits per second."""

    min_bps: int
    max_bps: int
    tuning: Tuning = field(default_factory=Tuning)

    def __post_init__(self) -> None:
        self.min_bps, self.max_bps = _sane_bounds(self.min_bps, self.max_bps)
        self._loss_based = float(self.max_bps)  # GCC's As
        self._remb: float | None = None
        self._remb_limits = False  # the last REMB complained (see on_remb)
        self._rise_until = -math.inf  # until then a REMB below our rate is no complaint
        self._remb_at = -math.inf
        self._last_report: float | None = None
        self._last_decrease = -math.inf
        self._rtt_samples: deque[tuple[float, float]] = deque()
        self._srtt: float | None = None
        self._prev_srtt: float | None = None
        self.reports = 0  # receiver reports seen (0: the estimate is only the start value)
        self.last_loss: float | None = None
        self.last_reason: Reason = "start"

    # -- reading ------------------------------------------------------------

    @property
    def estimate_bps(self) -> int:
        """The estimate as of the last input (see :meth:`estimate_at`)."""
        return self._estimate(self._remb_limits)

    def estimate_at(self, now: float) -> int:
        """The estimate as of ``now``: a REMB that went stale no longer caps it."""
        return self._estimate(self._remb_limits
                              and now - self._remb_at <= self.tuning.remb_timeout)

    def _estimate(self, remb_caps: bool) -> int:
        value = self._loss_based
        if remb_caps and self._remb is not None:
            value = min(value, self._remb)
        return int(min(max(value, self.min_bps), self.max_bps))

    @property
    def rtt_s(self) -> float | None:
        """Smoothed round-trip time, once a report carried one."""
        return self._srtt

    @property
    def base_rtt_s(self) -> float | None:
        return min(r for _t, r in self._rtt_samples) if self._rtt_samples else None

    @property
    def remb_bps(self) -> int | None:
        return None if self._remb is None else int(self._remb)

    # -- inputs -------------------------------------------------------------

    def set_bounds(self, min_bps: int, max_bps: int) -> None:
        """New ``video.min_bitrate``/``max_bitrate`` (a reload); the estimate is clamped."""
        self.min_bps, self.max_bps = _sane_bounds(min_bps, max_bps)
        self._loss_based = min(max(self._loss_based, self.min_bps), self.max_bps)

    def new_path(self) -> None:
        """A new connection: forget what described the old path (RTT, REMB), keep the rate.

        The estimate itself is the best guess for the same participant on a
        fresh connection; the old base RTT or REMB would be wrong for it.
        """
        self._rtt_samples.clear()
        self._srtt = self._prev_srtt = None
        self._remb = None
        self._remb_limits = False
        self._remb_at = -math.inf
        self._last_report = None

    def on_report(self, now: float, loss: float, rtt_s: float | None = None) -> Update:
        """One receiver report block for the stream we estimate for.

        ``loss`` is the report's fraction lost as 0..1 (the raw field / 256);
        ``rtt_s`` the round trip it yields, if it echoed our latest sender report.
        """
        before = self.estimate_at(now)
        t = self.tuning
        loss = min(max(loss, 0.0), 1.0) if math.isfinite(loss) else 0.0
        span = 0.0 if self._last_report is None else min(max(now - self._last_report, 0.0),
                                                         t.max_increase_span)
        self._last_report = now
        self.reports += 1
        self.last_loss = loss
        rising = self._add_rtt(now, rtt_s)
        queue, hold_at = self._queueing()
        reason: Reason
        if loss > t.high_loss:
            reason = "loss"
            if self._may_decrease(now):
                self._decrease(now, 1.0 - loss / 2)
        elif loss >= t.low_loss:
            reason = "hold"
        elif queue is not None and queue > t.rtt_decrease_factor * hold_at and rising:
            reason = "rtt"
            if self._may_decrease(now):
                self._decrease(now, t.rtt_backoff)
        elif queue is not None and queue > hold_at:
            reason = "rtt_hold"
        else:
            reason = "increase"
            self._loss_based *= (1.0 + t.increase_per_s) ** span
        self._loss_based = min(max(self._loss_based, self.min_bps), self.max_bps)
        self.last_reason = reason
        return Update(self.estimate_at(now), before, reason)

    def on_remb(self, now: float, bitrate_bps: float,
                sending_bps: float | None = None) -> Update:
        """A REMB for our stream: it caps our estimate while fresh if it complains.

        ``sending_bps`` is the video we send the peer now (None: unknown, and
        any REMB caps, as in plain GCC); see the module docstring for when a
        REMB complains.
        """
        before = self.estimate_at(now)
        if math.isfinite(bitrate_bps) and bitrate_bps >= 0:
            t, previous = self.tuning, self._remb
            self._remb = float(bitrate_bps)
            self._remb_at = now
            self.last_reason = "remb"
            if t.remb_always_caps:
                self._remb_limits = True
            elif now < self._rise_until:
                self._remb_limits = previous is not None and bitrate_bps < t.remb_drop * previous
            else:
                self._remb_limits = (sending_bps is None
                                     or bitrate_bps < t.remb_complaint * sending_bps)
            if not self._remb_limits:
                return Update(self.estimate_at(now), before, "remb")
            # Climb back from the receiver's view, not from far above it: once
            # the REMB rises or goes stale, the estimate grows at the normal pace.
            self._loss_based = min(self._loss_based, max(self._remb, float(self.min_bps)))
        return Update(self.estimate_at(now), before, "remb")

    def hand_over(self, now: float) -> None:
        """Another controller takes over the REMB (the shared uplink, rtc/uplink.py).

        The estimate as it stands, a REMB cap included, becomes the
        loss-based one, and the REMB stops capping. Without this a REMB
        that capped before the hand-over went stale while ignored, and the
        estimate jumped back to the loss-based one (2.8 Mbit/s: a viewer on
        a 1 Mbit/s shared uplink was moved to the top tier).
        """
        self._loss_based = float(self.estimate_at(now))
        self._remb_limits = False
        # and the REMB heard before is forgotten: it described the link before
        # the limit, and the first REMB after it (what the receiver saw of the
        # limited rate) compared with it looked like a fall, which complains:
        # three viewers that tried the top tier when a 1 Mbit/s cap was lifted
        # were sent back within 0.2 s (their REMB ~150 kbit/s against ~3 Mbit/s)
        self._remb = None

    def expect_rise(self, now: float, seconds: float) -> None:
        """We are about to send more (a higher tier): for ``seconds``, a REMB below
        our new rate is the receiver catching up, not a complaint (a falling one is)."""
        self._rise_until = now + seconds

    # -- internals ----------------------------------------------------------

    def _may_decrease(self, now: float) -> bool:
        return now - self._last_decrease >= self.tuning.decrease_interval + (self._srtt or 0.0)

    def _decrease(self, now: float, factor: float) -> None:
        self._loss_based *= factor
        self._last_decrease = now

    def _add_rtt(self, now: float, rtt_s: float | None) -> bool:
        """Record an RTT sample; True if the smoothed RTT went up with it."""
        if rtt_s is None or not math.isfinite(rtt_s) or rtt_s < 0 or rtt_s > 60:
            return False
        samples = self._rtt_samples
        samples.append((now, rtt_s))
        while samples and samples[0][0] < now - self.tuning.rtt_window:
            samples.popleft()
        self._prev_srtt = self._srtt
        a = self.tuning.rtt_smoothing
        self._srtt = rtt_s if self._srtt is None else (1 - a) * self._srtt + a * rtt_s
        return self._prev_srtt is not None and self._srtt > self._prev_srtt

    def _queueing(self) -> tuple[float | None, float]:
        """(queueing delay, hold threshold): smoothed RTT above the window's lowest."""
        base = self.base_rtt_s
        if base is None or self._srtt is None:
            return None, math.inf
        t = self.tuning
        return max(self._srtt - base, 0.0), t.rtt_hold + t.rtt_hold_share * base


def _sane_bounds(min_bps: int, max_bps: int) -> tuple[int, int]:
    low = max(int(min_bps), 1)
    return low, max(int(max_bps), low)


class ChangeGate:
    """Whether an estimate moved enough, and long enough after the last line, to log it.

    Reports arrive about once a second per stream; logging each would drown
    the journal, logging none would hide the one change that matters.
    """

    def __init__(self, min_ratio: float = 0.15, min_interval: float = 2.0) -> None:
        self.min_ratio = min_ratio
        self.min_interval = min_interval
        self._value: int | None = None
        self._at = -math.inf

    def check(self, now: float, value: int) -> bool:
        """True (and remembered as logged) if ``value`` deserves a log line now."""
        if self._value is not None:
            moved = abs(value - self._value) / max(self._value, 1)
            if moved < self.min_ratio or now - self._at < self.min_interval:
                return False
        self._value, self._at = value, now
        return True

    @property
    def logged(self) -> int | None:
        return self._value


# -- reading aiortc's RTCP packets ---------------------------------------------


class RateMeter:
    """A sending rate from a growing byte counter, over the last ``window`` seconds."""

    def __init__(self, window: float = 2.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, total_bytes: int) -> None:
        samples = self._samples
        if samples and total_bytes < samples[-1][1]:
            samples.clear()  # a new counter (a rebuilt connection): start over
        samples.append((now, total_bytes))
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()

    def rate_bps(self) -> float | None:
        """Bits per second between the oldest and newest sample (None: not yet known)."""
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) * 8 / (t1 - t0) if t1 - t0 >= 0.5 else None


@dataclass(frozen=True)
class ReportBlock:
    """The parts of one RR/SR report block about our SSRC that the estimate uses."""

    loss: float  # fraction lost, 0..1
    packets_lost: int  # cumulative
    highest: int  # extended highest sequence number received
    jitter: int  # RTP clock units
    lsr: int  # middle 32 bits of the NTP time of our last SR it saw (0: none)
    dlsr: int  # delay since that SR at the receiver, 1/65536 s


def arrivals(before: ReportBlock, after: ReportBlock) -> int:
    """Packets a receiver counted arriving on one stream between two of its reports:
    the growth of its highest sequence number less that of its cumulative loss."""
    return (after.highest - before.highest) - (after.packets_lost - before.packets_lost)


def without_skipped(block: ReportBlock, before: ReportBlock | None, skipped: int,
                    newly: int, counted_lost: bool = True) -> ReportBlock:
    """``block`` as if the sequence numbers a restart skipped (rtc/restart.py) had
    never been. ``skipped``: how many its reports have passed so far, ``newly``
    of them first by this one; ``before``: the previous report's block,
    corrected alike.

    ``counted_lost``: the receiver counts them lost (aiortc's: its loss is
    the numbers it expected less those it got). The fraction lost of a report
    that newly passes some is then recomputed from the two (none before: 0).
    libwebrtc's takes a jump that large for the sender restarting its
    numbers and counts none of them (``counted_lost`` False): only its
    highest number moved, and its own fraction stands. Taken out of its loss
    as well, they read as 512 packets arrived in one report: 11 Mbit/s
    "through" a 1 Mbit/s uplink.
    """
    if not skipped:
        return block
    highest = block.highest - skipped
    if not counted_lost:
        return replace(block, highest=highest)
    lost = block.packets_lost - skipped
    loss = block.loss
    if newly:
        expected = highest - before.highest if before is not None else 0
        loss = min(max((lost - before.packets_lost) / expected, 0.0), 1.0) \
            if before is not None and expected > 0 else 0.0
    return replace(block, loss=loss, packets_lost=lost, highest=highest)


def report_blocks(packet: Any, ssrc: int) -> list[ReportBlock]:
    """Report blocks about ``ssrc`` in an RR or SR packet (others: none)."""
    if not isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
        return []
    return [ReportBlock(r.fraction_lost / 256.0, r.packets_lost, r.highest_sequence, r.jitter,
                        r.lsr, r.dlsr)
            for r in packet.reports if r.ssrc == ssrc]


def remb_bitrate(packet: Any, ssrc: int) -> int | None:
    """The REMB bitrate a PSFB/APP packet gives for ``ssrc``, if it is a REMB for it."""
    if not isinstance(packet, RtcpPsfbPacket) or packet.fmt != RTCP_PSFB_APP:
        return None
    try:
        bitrate, ssrcs = unpack_remb_fci(packet.fci)
    except (ValueError, IndexError, TypeError):  # another APP message, or a short one
        return None
    return bitrate if ssrc in ssrcs else None


def report_rtt(block: ReportBlock, our_lsr: int | None, our_lsr_wall: float | None,
               wall_now: float) -> float | None:
    """Round trip from a report that echoes our latest sender report (RFC 3550 6.4.1).

    ``our_lsr``/``our_lsr_wall`` are what we put in our last SR and when (wall
    clock, like aiortc keeps it); a report echoing an older SR gives nothing.
    """
    if our_lsr is None or our_lsr_wall is None or block.lsr != our_lsr or block.dlsr == 0:
        return None
    rtt = wall_now - our_lsr_wall - block.dlsr / 65536.0
    return rtt if 0.0 <= rtt < 60.0 else None


def replay(estimator: BandwidthEstimator,
           events: Iterable[tuple[float, str, float, float | None]]) -> list[Update]:
    """Feed ``(now, "report", loss, rtt)`` / ``(now, "remb", bps, None)`` events in order.

    For tests and for replaying a recorded sequence from a log.
    """
    out = []
    for now, kind, value, rtt in events:
        if kind == "report":
            out.append(estimator.on_report(now, value, rtt))
        elif kind == "remb":
            out.append(estimator.on_remb(now, value))
    return out
