"""What one receiver's reports say arrived, in spans the shared uplink can use.

The shared uplink (rtc/uplink.py) reads a receiver's reports for what got
through to it. Three things stand between a report's counters and that:

- **how often it reports.** aiortc's receiver reports every 0.5-1.5 s; a
  browser sends a report with each NACK, every 10-30 ms under loss. Heard
  report by report, a browser's reports never spanned enough to count what
  arrived (the uplink read what we sent less the loss, 2.6 Mbit/s through
  a 1 Mbit/s cap 1.6 s after its onset), and each one's loss, over a few
  packets, was 0 as often as not: the shared congestion held a decrease
  back for seconds. So a span lasts at least :data:`ARRIVAL_SPAN`;
- **restarts** (rtc/restart.py) skip 512 sequence numbers, which aiortc's
  receiver counts lost and libwebrtc's takes for a restarted stream and
  counts nowhere (:meth:`ReceiverSpans.unskipped`);
- **resends** on the RTX stream, whose numbers jump where the pacer dropped
  some (:meth:`ReceiverSpans.span`).

Pure: time comes in as ``now``; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from .bandwidth import ReportBlock, arrivals, without_skipped
from .pacer import PacerStats
from .restart import SequenceShift
from .tiers import link_bps

__all__ = ["ARRIVAL_SPAN", "ReceiverSpans", "Span"]

# What the receiver counted arriving is measured over at least this long (its
# reports' counters are whole packets: over less, one packet is a large rate).
ARRIVAL_SPAN = 0.2


@dataclass(frozen=True)
class Span:
    """What a receiver's reports say since the last span."""

    loss: float  # the fraction lost over it
    arrived_bps: float | None  # what arrived, on the wire (None: not known)


@dataclass(frozen=True)
class _Mark:
    """A receiver's report that ended a span, and what we had sent by then."""

    generation: int  # the connection's
    at: float
    block: ReportBlock  # the video's (restarts' skips taken out)
    rtx: ReportBlock | None  # the resends' own, if it reported one
    sent_bytes: int  # video, new and resent
    packets: int  # video packets sent, new and resent
    resends: int  # of them, on the RTX stream (NACK answers and padding)


class ReceiverSpans:
    """One peer's receiver, across its connections (each has a ``generation``)."""

    def __init__(self) -> None:
        self._mark: _Mark | None = None
        # (generation, the video block as received) at the last report, and whether
        # this connection's receiver counts a restart's skipped numbers lost
        self._raw_block: tuple[int, ReportBlock] | None = None
        self._skip_lost: tuple[int, bool] | None = None

    def unskipped(self, generation: int, shift: SequenceShift,
                  block: ReportBlock) -> ReportBlock:
        """The video's report ``block`` without the sequence numbers restarts skipped:
        512 lost in one report would read as a collapsed link, and 512 arrived
        (a receiver that does not count them lost) as a link eight times wider.

        Which receiver this is shows at the first report past a skip: its
        cumulative loss grew by most of it (aiortc's) or not (libwebrtc's,
        :func:`~.bandwidth.without_skipped`)."""
        raw = self._raw_block[1] if self._raw_block is not None \
            and self._raw_block[0] == generation else None
        self._raw_block = (generation, block)
        if not shift.restarts:
            return block
        newly = shift.passed(block.highest % 65536)
        if newly and (self._skip_lost is None or self._skip_lost[0] != generation):
            grew = block.packets_lost - (raw.packets_lost if raw is not None else 0)
            self._skip_lost = (generation, grew >= newly // 2)
        counted = self._skip_lost is None or self._skip_lost[1]
        last = self._mark
        before = last.block if last is not None and last.generation == generation else None
        return without_skipped(block, before, shift.reported, newly, counted)

    def span(self, generation: int, now: float, block: ReportBlock, rtx: ReportBlock | None,
             sent_bytes: int, stats: PacerStats | None, audio: bool) -> Span | None:
        """What the reports say since the last span, if it began at least
        :data:`ARRIVAL_SPAN` before; None within it. ``block`` and ``rtx``: this
        report's blocks for the video and its resends; ``sent_bytes``: the video
        we sent so far (new and resent); ``stats``: the connection's pacer's.

        The first report of a connection only starts a span: its own fraction
        lost, nothing known arrived."""
        last = self._mark
        if last is not None and last.generation == generation and now - last.at < ARRIVAL_SPAN:
            return None
        resends = stats.retransmissions + stats.padding_packets if stats is not None else 0
        this = self._mark = _Mark(generation, now, block, rtx, sent_bytes,
                                  stats.packets + resends if stats is not None else 0, resends)
        if last is None or last.generation != generation:
            return Span(block.loss, None)
        expected = block.highest - last.block.highest
        loss = min(max((block.packets_lost - last.block.packets_lost) / expected, 0.0), 1.0) \
            if expected > 0 else block.loss
        return Span(loss, _arrived_bps(last, this, audio))


def _arrived_bps(last: _Mark, this: _Mark, audio: bool) -> float | None:
    """What the receiver counted arriving between two marks, on the wire.

    Packets: the growth of its highest sequence number less that of its
    cumulative loss, on the video stream and on its RTX stream (the resends'
    own block, when the receiver reports one); bytes: those times the mean
    size of what we sent meanwhile (new and resent). None when it makes no
    sense (a counter that went back). Without the resends, what got through
    read 730-770 kbit/s on a 1 Mbit/s uplink whose overloads are answered
    with NACKs: the uplink's estimate settled at the peers' floor and each
    climb from there looked like a grown link.
    """
    packets = this.packets - last.packets
    arrived = arrivals(last.block, this.block)
    if this.rtx is not None and last.rtx is not None:
        # no more than we resent meanwhile: the pacer drops resends (the
        # budget, a resend within a round trip), and libwebrtc takes a jump
        # of hundreds in their numbers for a restart of the stream and counts
        # none lost, which read as 600 resends arrived in 0.2 s
        arrived += min(max(arrivals(last.rtx, this.rtx), 0), this.resends - last.resends)
    if packets <= 0 or arrived < 0 or this.sent_bytes < last.sent_bytes:
        return None
    size = (this.sent_bytes - last.sent_bytes) / packets
    return float(link_bps(int(arrived * size * 8 / (this.at - last.at)), audio))
