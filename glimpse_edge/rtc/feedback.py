"""What a participant's RTCP tells the agent, and what the agent does about it.

A receiver's RTCP is the only view a sender has of the path to it: aiortc
offers no transport-cc, no probing and no pacing (the shared brief, section
3). :class:`PeerFeedback` turns it into decisions, for one participant
across all of its connections:

- liveness: the time of the last RTCP packet of each connection (the
  session declares a path dead after ``peers.dead_after`` without one), and
  the first packet on a lingering connection whose path came back;
- key frames: a PLI or FIR asks the shared encoder of the stream the peer
  reads (aiortc's own key-frame flag is never read for encoded packets);
- the bandwidth estimate (rtc/bandwidth.py) from receiver reports and REMB,
  and what each report tells the shared uplink (rtc/uplink.py), what the
  receiver counted arriving included;
- repair: resends its reports show lost are sent again (rtc/repair.py);
- the quality tier (rtc/tiers.py): the estimate picks which of the hub's
  shared encodings the peer receives and tells the lowest one what the link
  takes; a change of tier moves the video track to the other stream at that
  stream's next key frame.

The hooks run inside aiortc's DTLS receive loop (asyncio): they never raise
or block, and what needs the session's task (a revived path, a tier choice)
is posted to it as an event. The session (rtc/peer.py) owns one
PeerFeedback and keeps negotiation and the connection's lifecycle.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRtpfbPacket

from . import compat
from .arrivals import ReceiverSpans
from .bandwidth import (
    BandwidthEstimator,
    ChangeGate,
    RateMeter,
    ReportBlock,
    Tuning,
    Update,
    remb_bitrate,
    report_blocks,
    report_rtt,
)
from .connection import Connection, ConnectionEvent, PathRevived, TierChosen
from .pacer import ABS_SEND_TIME_URI, Pacer
from .probe import Probe, pad
from .repair import RepairLedger, filler_payload, key_frame_would_help
from .sdp import header_extension_id
from .tiers import AUDIO_ON_WIRE_BPS, TierSelector, link_bps, video_budget
from .tracks import PacketTrack
from .uplink import Uplink

if TYPE_CHECKING:
    from aiortc import RTCRtpSender
    from structlog.typing import FilteringBoundLogger

    from ..media.hub import MediaHub

__all__ = ["REMB_CATCH_UP", "PeerFeedback"]

# After a move up a tier, a receiver's REMB needs this long beyond the tier's
# trial to follow the new rate (it grows 8 % a second): see BandwidthEstimator.
REMB_CATCH_UP = 6.0
# After the shared uplink lets go of its limit, a browser's REMB still shows
# the bottleneck: it fell to what got through and climbs back ~8 % a second
# (51 -> 250 kbit/s in 30 s, seen with Chromium). For this long only a falling
# REMB complains, as after a move up a tier.
REMB_AFTER_UPLINK = 20.0
# A PLI within this long (plus two round trips and the pacer's queue) after a
# key frame was sent to the peer is answered by that key frame.
KEYFRAME_WINDOW = 0.3
# Under this much loss a PLI is coalesced for at least this long: NACKs repair.
CONGESTED_LOSS = 0.02
CONGESTED_KEYFRAME_WINDOW = 1.0
# What a repair is taken to cost when checking the resend budget: a filler (RTP
# header, extensions, the RTX original sequence number, two bytes), a full packet.
FILLER_BYTES = 40
RESEND_BYTES = 1200
# The repair asks for a key frame at most once this long (plus two round trips):
# the one it asked for takes that long to be sent and reported whole.
REPAIR_KEYFRAME_INTERVAL = 1.0


class PeerFeedback:
    """RTCP in, liveness, key frames, bandwidth estimate and quality tier out.

    ``post`` hands an event to the session's task (never blocks);
    ``current`` returns the session's current connection: only its reports
    feed the estimate (a lingering one describes a path being left).
    """

    def __init__(
        self,
        hub: MediaHub,
        *,
        name: str,
        log: FilteringBoundLogger,
        post: Callable[[ConnectionEvent], None],
        current: Callable[[], Connection | None],
        uplink: Uplink | None = None,
        peer_id: str = "",
        tuning: Tuning | None = None,
    ) -> None:
        """``uplink``: the device's upload shared with other peers (None: this peer's own).
        ``tuning``: the estimator's (an SFU's REMB is a cap: ``remb_always_caps``)."""
        self.hub = hub
        self.name = name  # the participant, in queue names
        self.log = log
        self._post = post
        self._current = current
        # One estimate per participant, kept across its connections (a rebuilt
        # connection to the same person usually crosses the same links).
        self.bandwidth = BandwidthEstimator(*self._estimate_bounds(), tuning=tuning or Tuning())
        self._gate = ChangeGate()
        self._failed = False
        self._uplink_limited = False  # the shared uplink limited us at the last report
        self._repair_keyframe_at = -math.inf  # when the repair last asked for a key frame
        self._restarts = 0  # the current connection's restarts logged (rtc/restart.py)
        self._sent = RateMeter()  # the video we send, new and resent
        self._padded = RateMeter()  # ... of it, a probe's padding (rtc/probe.py)
        self._spans = ReceiverSpans()  # what its reports say arrived (rtc/arrivals.py)
        self.tiers = TierSelector([t.bitrate for t in hub.tiers])
        self.uplink = uplink if uplink is not None else Uplink()
        self._cap_cuts = self.uplink.cap_cuts  # the uplink's cap onsets answered
        self.peer_id = peer_id or name
        self.uplink.on_probe(self.peer_id, self._pad_now)
        self.keyframe_requests = 0  # PLI/FIR received (and other reasons to ask)
        self.keyframe_requests_coalesced = 0  # ... answered by a key frame on its way

    # -- what it knows ------------------------------------------------------------

    @property
    def estimate_bps(self) -> int | None:
        """What this peer's link is estimated to carry; None before any receiver report.

        It picks the peer's quality tier; the shared encoders never follow it
        (except the lowest tier, which follows the worst peer on it).
        """
        if self.bandwidth.reports == 0:
            return None
        return self.bandwidth.estimate_at(time.monotonic())

    @property
    def tier(self) -> int:
        """The quality tier chosen for this peer (0 is the best)."""
        return self.tiers.tier

    @property
    def video_tier(self) -> str | None:
        """The quality tier this peer is on (or moving to), as "WIDTHxHEIGHT"."""
        tiers = self.hub.tiers
        if not self.hub.has_video or not tiers:
            return None
        tier = tiers[min(self.tiers.tier, len(tiers) - 1)]
        return f"{tier.width}x{tier.height}"

    def _estimate_bounds(self) -> tuple[int, int]:
        """From video.min_bitrate up to what the best tier needs on the wire with audio."""
        video = self.hub.video_config
        top = self.hub.tiers[0].bitrate if self.hub.has_video else video.max_bitrate
        return video.min_bitrate, link_bps(top, self.hub.audio_stream() is not None)

    # -- a connection's life -------------------------------------------------------

    def new_connection(self) -> None:
        """A new connection: bounds as configured now; RTT base and REMB start afresh."""
        self.bandwidth.set_bounds(*self._estimate_bounds())
        self.bandwidth.new_path()

    def negotiated(self, conn: Connection, sdp: str) -> None:
        """``conn``'s tracks are bound: the zero of the rate we send it; its video paced.

        ``sdp``: either description (both carry the header extensions' ids).
        """
        self._sent.add(time.monotonic(), conn.released_bytes)
        transceiver = conn.transceivers.get("video")
        if transceiver is not None and conn.codec is not None:
            conn.pacer = Pacer(self._pacing_target(conn, None), abs_send_time_id=(
                header_extension_id(sdp, "video", ABS_SEND_TIME_URI)), codec=conn.codec)
            conn.pacer.repair = RepairLedger(compat.RTP_HISTORY)
            conn.pacer.follow_onsets(lambda: self.uplink.cap_cuts)
            self._restarts = 0
            compat.pace_rtp(transceiver.sender, conn.pacer)

    def _pacing_target(self, conn: Connection, budget: int | None,
                       shared: bool = False) -> int:
        """What the pacer paces for: the nominal rate of the peer's tier, or its budget
        if higher (the pacer smooths bursts; it must never be the bottleneck).

        Under a shared uplink limit (``shared``), the budget: every peer's pacer
        releases the same shared key frame at once, and at 2.5 x the tier's
        nominal rate three of them sent 4.7 Mbit/s into a 1 Mbit/s uplink
        (53 % of the packets dropped at its queue, key frames lost, asked for
        again). Paced at 2.5 x the shares, their sum is 2.5 x the estimate, and
        a key frame sized for the rate (media/encoder.py's VBV) fits the queue.
        """
        if shared and budget is not None:
            return budget
        tiers = self.hub.tiers
        if not self.hub.has_video or not tiers:
            return max(self.hub.video_config.max_bitrate, budget or 0)
        return max(tiers[min(self.tiers.tier, len(tiers) - 1)].bitrate, budget or 0)

    def hook(self, conn: Connection, sender: RTCRtpSender, kind: str) -> None:
        """Observe RTCP (liveness, bandwidth) and PLI/FIR (key frames) on a sender.

        aiortc has no public hook and in passthrough mode its own key-frame
        flag is never read (rtc/compat.py). Both run in aiortc's DTLS receive
        loop: they must never raise or block.
        """

        def on_rtcp(packet: Any) -> bool:
            conn.last_rtcp = time.monotonic()
            if conn.lingering:
                if not conn.revived:
                    conn.revived = True
                    self._post(PathRevived(conn.generation))
                if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                    # After seconds of silence the receiver asks for everything
                    # it missed; resending aiortc's 128-packet history (~140 kB
                    # measured) then only floods a link that just came back
                    # with video too old to show. It needs a key frame, which
                    # the revival asks for.
                    return False
            self.observe(conn, sender, kind, packet)
            return True

        def on_rtcp_error(exc: Exception) -> None:
            self.log.warning("peer.rtcp_error", error=str(exc))

        def on_keyframe_error(exc: Exception) -> None:
            self.log.warning("peer.keyframe_hook_error", error=str(exc))

        compat.hook_rtcp(sender, on_rtcp, on_rtcp_error)
        compat.hook_keyframe_request(
            sender, partial(self.request_keyframe, conn, "pli"), on_keyframe_error)

    def request_keyframe(self, conn: Connection, reason: str,
                         window: float | None = None) -> None:
        """The receiver asks for a key frame: pass it on unless one answers it already.

        Coalesced (media/fanout.py) when a key frame is on its way to this
        peer or already asked for by another reader of the same encoding.
        The window grows with the path's round trip and the pacer's queue
        (the time a key frame takes to arrive), and under loss to at least
        :data:`CONGESTED_KEYFRAME_WINDOW`: then the lost packets are NACKed
        and resent (from aiortc's history, sized for it in rtc/compat.py)
        rather than answered with an IDR that the congested link loses too.
        ``window``, if given, replaces that window (0: ask unless a key frame
        is already on its way to this peer).
        """
        if conn.codec not in ("h264", "vp8"):
            return
        track = conn.tracks.get("video")
        queue = track.queue if isinstance(track, PacketTrack) else None
        if queue is None:
            return
        self.keyframe_requests += 1
        if queue.ask_keyframe(self.keyframe_window(conn) if window is None else window):
            self.log.debug("peer.keyframe_requested", reason=reason)
        else:
            self.keyframe_requests_coalesced += 1

    def _key_frame_after_onset(self, conn: Connection) -> None:
        """The uplink cut its estimate to what the link carries after a cap's onset:
        the receiver lost a burst (of the top tier's packets, resends and all), and
        the link now has room for a key frame. Ask for one at once: the pacer
        restarts the receiver at it (rtc/restart.py, :meth:`Pacer.follow_onsets`),
        whether or not the repair has heard yet what it lacks.

        Left to the repair, each receiver waited for its next report (aiortc's
        come every 0.5-1.5 s) and a round trip more, while resends of what the
        overload lost went on filling the link; a key frame due anyway then
        brought the pictures back, 0.7-1.3 s after the estimate was right
        (scenario f). The restart also refuses the resends of anything older.
        """
        if conn.pacer is not None and conn.pacer.repair is not None:
            self.request_keyframe(conn, "onset", window=0.0)

    def keyframe_window(self, conn: Connection) -> float:
        """How long after a key frame was sent a PLI is taken to predate its arrival."""
        rtt = self.bandwidth.rtt_s or 0.0
        window = KEYFRAME_WINDOW + 2 * rtt + (conn.pacer.queue_delay_s if conn.pacer else 0.0)
        loss = self.bandwidth.last_loss
        if loss is not None and loss >= CONGESTED_LOSS:
            window = max(window, CONGESTED_KEYFRAME_WINDOW)
        return window

    # -- estimate -> tier -----------------------------------------------------------

    def observe(self, conn: Connection, sender: RTCRtpSender, kind: str, packet: Any) -> None:
        """Feed the bandwidth estimate from one RTCP packet; never raises.

        Only the stream the estimate is for counts (video; audio when there is
        no video): the two streams' reports describe the same path, and
        counting both would double every decrease. The round trip needs the
        NTP time of our last sender report, which aiortc keeps privately
        (compat.last_sender_report); without it the estimate works from loss
        alone.
        """
        if conn is not self._current() or kind != ("video" if "video" in conn.transceivers
                                                    else "audio"):
            return
        try:
            ssrc = compat.sender_ssrc(sender)
            now = time.monotonic()
            # the video we send, resends included (what the link carries): what a
            # REMB (for the video SSRC) is compared with, and what the uplink adds
            # up (uncounted, RTX resends kept a 1 Mbit/s uplink overloaded for 24 s
            # at the peers' floor: Chromium viewers NACK every loss)
            pacing = conn.pacer.stats if conn.pacer is not None else None
            resent = pacing.resent_bytes + pacing.padding_bytes if pacing is not None else 0
            sent_bytes = conn.released_bytes + resent + sum(
                queue.bytes_delivered for stream, queue in conn.subscriptions
                if stream.kind == "video")
            self._sent.add(now, sent_bytes)
            self._padded.add(now, pacing.padding_bytes if pacing is not None else 0)
            seen = False
            uplink = self.uplink
            blocks = report_blocks(packet, ssrc)
            # the resends' own report block (RTX): what arrived, what to repair
            rtx = report_blocks(packet, compat.rtx_ssrc(sender)) if blocks and kind == "video" \
                else []
            for block in blocks:
                if conn.pacer is not None:
                    block = self._spans.unskipped(conn.generation, conn.pacer.shift, block)
                rtt = report_rtt(block, *compat.last_sender_report(sender), time.time())
                span = self._spans.span(conn.generation, now, block, rtx[0] if rtx else None,
                                        sent_bytes, pacing, "audio" in conn.tracks)
                if span is not None:
                    self._report_uplink(conn, now, span.loss, rtt, span.arrived_bps)
                # a shared bottleneck's loss and queue are the uplink's to answer
                self._estimate_changed(now, self.bandwidth.on_report(
                    now, uplink.own_loss(self.peer_id, block.loss), self._own_rtt(rtt)))
                seen = True
            if blocks and conn.pacer is not None and conn.pacer.repair is not None:
                self._repair(conn, sender, rtx, now)
            if blocks and kind == "video":
                self._probe(conn, sender, now)
            remb = remb_bitrate(packet, ssrc)
            if remb is not None:  # every one: the peers' falling together is a cap's onset
                probe, before = uplink.probe, uplink.estimate_bps
                uplink.remb(self.peer_id, now, remb)
                self._log_decrease(now, before, "remb")
                self._log_probe_end(probe, now)
                seen = True
            if uplink.cap_cuts != self._cap_cuts:  # restarted at it (Pacer.follow_onsets)
                self._cap_cuts = uplink.cap_cuts
                self._key_frame_after_onset(conn)
            if self._uplink_limited and not uplink.limited:  # the uplink let go
                self.bandwidth.expect_rise(now, REMB_AFTER_UPLINK)
            elif uplink.limited and not self._uplink_limited:  # it takes the REMB over
                self.bandwidth.hand_over(now)
            self._uplink_limited = uplink.limited
            # while the uplink sets the limit, the REMB follows the share it gave,
            # and after a shared bottleneck it climbs back slower than the
            # uplink's estimate (a browser's REMB grew 51 -> 250 kbit/s in 30 s):
            # no news of this link for the peer's own estimate
            if remb is not None and not uplink.limited:
                self._estimate_changed(now, self.bandwidth.on_remb(now, remb,
                                                                   self._sent.rate_bps()))
            if seen:
                self._choose_tier(conn, now)
        except Exception as exc:
            if not self._failed:  # once per session: this runs per packet
                self._failed = True
                self.log.warning("peer.bandwidth_error", error=f"{type(exc).__name__}: {exc}")

    def _own_rtt(self, rtt: float | None) -> float | None:
        """The round trip this peer's own estimator hears: all of it, or, while the
        shared uplink is congested, the path's base plus the queue that is this
        peer's own (:meth:`Uplink.own_queue`). Ignored whole there, a viewer behind
        its own slow downlink never heard its own queue: with the lowest tier
        sending its share exactly, 450 ms of it and 13-37 % loss (scenario h)."""
        base = self.bandwidth.base_rtt_s
        if not self.uplink.congested:
            return rtt
        if rtt is None or base is None:
            return None
        return base + self.uplink.own_queue(self.peer_id, max(rtt - base, 0.0))

    def _repair(self, conn: Connection, sender: RTCRtpSender, rtx: list[ReportBlock],
                now: float) -> None:
        """Send again the resends a receiver report shows lost (rtc/repair.py).

        ``rtx``: the report's blocks for our RTX stream (none: the receiver got
        no resend yet). Once per receiver report, one batch at a
        time per connection, in a task of aiortc's loop: this runs in its
        RTCP path, which must not wait.
        """
        pacer = conn.pacer
        assert pacer is not None and pacer.repair is not None
        ledger = pacer.repair
        # a receiver stuck behind old holes is restarted at the next key frame
        # (rtc/restart.py) while the repair acts
        pacer.restarts_allowed = self.uplink.limited
        if pacer.shift.restarts != self._restarts:
            self._restarts = pacer.shift.restarts
            self.log.info("peer.video_restarted", restarts=self._restarts,
                          start=pacer.shift.start, cleared=ledger.stats.cleared)
        for block in rtx:
            ledger.report(block.highest % 65536, block.packets_lost, now, self.bandwidth.rtt_s)
        if not rtx:
            ledger.unreported(now, self.bandwidth.rtt_s)
        if not ledger.owed or (conn.repair_task is not None and not conn.repair_task.done()):
            return
        # only while the shared uplink limits: its overloads lose bursts that
        # outlast a receiver's asking. A viewer's own lossy link loses at random,
        # and its NACKs, repeated at each new gap, repair that; repairing there
        # too (10 % random loss) froze that viewer 6.7-7.9 s where it froze
        # 0.4-1.7 s without (tests/system/faults, scenario c)
        newest = pacer.newest(compat.sender_ssrc(sender)) if self.uplink.limited else None
        again, fill = ledger.take_owed(newest, pacer.key_frames, now=now,
                                       rtt_s=self.bandwidth.rtt_s)
        if (again and now - self._repair_keyframe_at >= REPAIR_KEYFRAME_INTERVAL
                + 2 * (self.bandwidth.rtt_s or 0.0)
                and key_frame_would_help(again, pacer.key_frames,
                                         pacer.resend_budget / RESEND_BYTES)):
            self._repair_keyframe_at = now
            self.request_keyframe(conn, "repair")
        if again or fill:
            self.log.debug("peer.resends_repaired", again=len(again), fillers=len(fill),
                           owed=ledger.owed, pending=ledger.pending,
                           abandoned=ledger.stats.abandoned)
            conn.repair_task = asyncio.get_running_loop().create_task(
                self._resend(sender, pacer, again, fill, filler_payload(conn.codec or "")))

    async def _resend(self, sender: RTCRtpSender, pacer: Pacer, again: list[int],
                      fill: list[int], filler: bytes) -> None:
        """Fillers first (tiny, and they unblock the receiver), then the others,
        one at a time as the pacer's bucket drains (200 fillers at once, ~12 kB
        from each of three peers, overflowed the uplink's queue, and most of
        them were lost three times over); what the resend budget has
        no room for waits for the next report (sent anyway, aiortc would number
        it on the RTX stream, and the pacer would drop it)."""
        assert pacer.repair is not None
        ledger = pacer.repair
        try:
            for n, sequence in enumerate(fill):
                if (wait := pacer.queue_delay_s) > 0.0:
                    await asyncio.sleep(wait)
                if not pacer.resend_room(FILLER_BYTES):
                    ledger.put_back(fill[n:], fillers=True)
                    ledger.put_back(again, fillers=False)
                    return
                await compat.resend(sender, sequence, filler=filler)
            for n, sequence in enumerate(again):
                if (wait := pacer.queue_delay_s) > 0.0:
                    await asyncio.sleep(wait)
                if not pacer.resend_room(RESEND_BYTES):
                    ledger.put_back(again[n:], fillers=False)
                    return
                await compat.resend(sender, sequence)
        except Exception as exc:  # a connection closing under it: nothing to repair
            self.log.debug("peer.repair_failed", error=f"{type(exc).__name__}: {exc}")

    def _probe(self, conn: Connection, sender: RTCRtpSender, now: float) -> None:
        """Pad what we send this peer while the shared uplink probes (rtc/uplink.py).

        In a task of aiortc's loop, one at a time per connection; only with
        RTX, whose stream carries the padding (compat.sends_rtx).
        """
        pacer = conn.pacer
        if (pacer is None or self.uplink.padding_bps(self.peer_id, now) is None
                or not compat.sends_rtx(sender)
                or (conn.padding_task is not None and not conn.padding_task.done())):
            return
        conn.padding_task = asyncio.get_running_loop().create_task(self._pad(sender, pacer))

    def _pad_now(self) -> None:
        """The shared uplink started a probe that pads this peer: from now
        (:meth:`.uplink.Uplink.on_probe` says why). Runs in another peer's RTCP
        path, in aiortc's loop: nothing raised here reaches it."""
        conn = self._current()
        transceiver = conn.transceivers.get("video") if conn is not None else None
        if conn is None or transceiver is None:
            return
        try:
            self._probe(conn, transceiver.sender, time.monotonic())
        except Exception as exc:
            self.log.debug("peer.padding_failed", error=f"{type(exc).__name__}: {exc}")

    async def _pad(self, sender: RTCRtpSender, pacer: Pacer) -> None:
        """The padding (rtc/probe.py) while the uplink's probes last, at each one's rate."""
        try:
            await pad(sender, pacer, lambda: self.uplink.padding_bps(
                self.peer_id, time.monotonic()))
        except Exception as exc:  # a connection closing under it: nothing to pad
            self.log.debug("peer.padding_failed", error=f"{type(exc).__name__}: {exc}")

    def _report_uplink(self, conn: Connection, now: float, loss: float,
                       rtt: float | None, arrived_bps: float | None = None) -> None:
        """Tell the shared uplink what this peer's report says (rtc/uplink.py)."""
        base = self.bandwidth.base_rtt_s
        audio = "audio" in conn.tracks
        video_sent = self._sent.rate_bps()
        padded = self._padded.rate_bps()
        was, before = self.uplink.congested, self.uplink.estimate_bps
        probes, passed, jumps = self.uplink.probes, self.uplink.probes_passed, self.uplink.jumps
        probe = self.uplink.probe
        self.uplink.report(
            self.peer_id, now, loss=loss,
            queue_s=None if rtt is None or base is None else max(rtt - base, 0.0),
            sent_bps=None if video_sent is None else link_bps(int(video_sent), audio),
            wants_bps=self.bandwidth.estimate_at(now),
            audio_bps=AUDIO_ON_WIRE_BPS if audio else 0,
            floor_bps=link_bps(self.bandwidth.min_bps, audio), arrived_bps=arrived_bps,
            ceiling_bps=self.bandwidth.max_bps,
            padding_bps=link_bps(int(padded or 0), False))
        after = self.uplink.estimate_bps
        self._log_decrease(now, before, "reports")
        if before is not None and after is None:
            self.log.info("uplink.released", reason=self.uplink.released,
                          previous_bps=int(before), sent_bps=self.uplink.state(now).sent_bps)
        if self.uplink.probes != probes and (started := self.uplink.probe) is not None:
            self.log.info("uplink.probing", padding_bps=started.total_bps,
                          sent_bps=int(started.sent_bps), carried_bps=int(started.carried_bps),
                          seconds=round(started.until - started.start, 1), jump=started.jump)
        if self.uplink.probes_passed != passed:
            self.log.info("uplink.probe_passed", result=self.uplink.last_pass,
                          estimate_bps=int(self.uplink.estimate_bps or 0),
                          through_bps=int(self.uplink.through_bps(now)))
        elif self.uplink.jumps != jumps:  # without a probe (nothing to pad, or no room)
            self.log.info("uplink.jumped", estimate_bps=int(self.uplink.estimate_bps or 0),
                          through_bps=int(self.uplink.through_bps(now)))
        self._log_probe_end(probe, now)
        if self.uplink.congested != was:
            state = self.uplink.state(now)
            self.log.info("uplink.congested" if state.congested else "uplink.clear",
                          estimate_bps=state.estimate_bps, sent_bps=state.sent_bps,
                          peers=state.peers, episodes=state.episodes)

    def _log_decrease(self, now: float, before: float | None, cause: str) -> None:
        """Log ``uplink.decreased`` if the estimate is now under ``before`` (or new);
        ``cause``: "reports" (receiver reports) or "remb" (falling REMBs)."""
        after = self.uplink.estimate_bps
        if after is not None and (before is None or after < before):
            state = self.uplink.state(now)
            self.log.info("uplink.decreased", estimate_bps=state.estimate_bps,
                          previous_bps=None if before is None else int(before),
                          sent_bps=state.sent_bps, through_bps=int(self.uplink.through_bps(now)),
                          peers=state.peers, cause=cause)

    def _log_probe_end(self, probe: Probe | None, now: float) -> None:
        """``probe`` (the one running before this peer's feedback) ended without
        passing: say why (a pass says so itself)."""
        up = self.uplink
        if probe is not None and up.probe is not probe and up.probe_ended != "passed":
            self.log.info("uplink.probe_ended", reason=up.probe_ended, jump=probe.jump,
                          through_bps=int(up.through_bps(now)))

    def leave_uplink(self) -> None:
        """The session ends: its share of the uplink goes to the others."""
        self.uplink.forget(self.peer_id)

    def _estimate_changed(self, now: float, update: Update) -> None:
        previous = self._gate.logged
        if self._gate.check(now, update.estimate_bps):
            bw = self.bandwidth
            rtt = bw.rtt_s
            self.log.info("peer.bandwidth", estimate_bps=update.estimate_bps,
                          previous_bps=previous, reason=update.reason,
                          loss=None if bw.last_loss is None else round(bw.last_loss, 3),
                          rtt_ms=None if rtt is None else round(rtt * 1000, 1),
                          remb_bps=bw.remb_bps)

    def _choose_tier(self, conn: Connection, now: float) -> None:
        """Tell the video queues what this link takes; ask for another tier if it
        no longer fits (runs in aiortc's RTCP path: the switch is an event)."""
        if conn.codec is None or not isinstance(conn.tracks.get("video"), PacketTrack):
            return
        before = self.tiers.tier
        rates = [t.bitrate for t in self.hub.tiers]
        if rates != list(self.tiers.bitrates):  # a reload changed the tiers
            self.tiers.set_bitrates(rates)
        estimate = self.bandwidth.estimate_at(now)
        share = self.uplink.share(self.peer_id, now)
        budget = video_budget(estimate if share is None else min(estimate, share),
                              "audio" in conn.tracks)
        for stream, queue in conn.subscriptions:
            if stream.kind == "video":
                queue.demand_bps = budget
        if conn.pacer is not None:
            conn.pacer.set_target(self._pacing_target(conn, budget, share is not None))
            conn.pacer.rtt_s = self.bandwidth.rtt_s  # a packet is resent once per round trip
        if self.tiers.update(now, budget) is not None or self.tiers.tier != before:
            if self.tiers.tier < before:  # a try of the tier above: the REMB will lag
                self.bandwidth.expect_rise(now, self.tiers.tuning.trial_window + REMB_CATCH_UP)
            self.log.info("peer.tier_chosen", tier=self.tiers.tier, previous=before,
                          budget_bps=budget, probe_wait=self.tiers.probe_wait)
            self._post(TierChosen(conn.generation, self.tiers.tier))

    def switch_tier(self, conn: Connection, tier: int) -> None:
        """Subscribe the video track to ``tier``'s stream; it moves at its key frame.

        In the session's task (a :class:`~.connection.TierChosen` event).
        """
        track = conn.tracks.get("video")
        if not isinstance(track, PacketTrack) or conn.codec not in ("h264", "vp8"):
            return
        stream = self.hub.video_stream(conn.codec, tier)  # type: ignore[arg-type]
        current = conn.video_stream()
        if stream is not None and stream is current:  # back before a switch completed
            if track.pending is not None:
                track.cancel_switch()
                self.log.info("peer.tier_switch_cancelled", stream=stream.name)
            return
        if stream is None or any(s is stream and q is track.pending
                                 for s, q in conn.subscriptions):
            return  # already on its way there
        queue = stream.subscribe(f"{self.name}/{stream.name}")
        queue.demand_bps = next((q.demand_bps for s, q in conn.subscriptions
                                 if s is current), None)
        conn.subscriptions.append((stream, queue))
        track.switch(queue, conn.release)
        self.log.info("peer.tier_changed", stream=stream.name,
                      previous=current.name if current else None,
                      estimate_bps=self.estimate_bps)
