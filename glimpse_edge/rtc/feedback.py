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
- the bandwidth estimate (rtc/bandwidth.py) from receiver reports and REMB;
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

import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRtpfbPacket

from . import compat
from .bandwidth import (
    BandwidthEstimator,
    ChangeGate,
    RateMeter,
    Update,
    remb_bitrate,
    report_blocks,
    report_rtt,
)
from .connection import Connection, ConnectionEvent, PathRevived, TierChosen
from .tiers import TierSelector, link_bps, video_budget
from .tracks import PacketTrack

if TYPE_CHECKING:
    from aiortc import RTCRtpSender
    from structlog.typing import FilteringBoundLogger

    from ..media.hub import MediaHub

__all__ = ["REMB_CATCH_UP", "PeerFeedback"]

# After a move up a tier, a receiver's REMB needs this long beyond the tier's
# trial to follow the new rate (it grows 8 % a second): see BandwidthEstimator.
REMB_CATCH_UP = 6.0


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
    ) -> None:
        self.hub = hub
        self.name = name  # the participant, in queue names
        self.log = log
        self._post = post
        self._current = current
        # One estimate per participant, kept across its connections (a rebuilt
        # connection to the same person usually crosses the same links).
        self.bandwidth = BandwidthEstimator(*self._estimate_bounds())
        self._gate = ChangeGate()
        self._failed = False
        self._sent = RateMeter()
        self.tiers = TierSelector([t.bitrate for t in hub.tiers])

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

    def negotiated(self, conn: Connection) -> None:
        """``conn``'s tracks are bound: the zero of the rate we send it."""
        self._sent.add(time.monotonic(), conn.released_bytes)

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

    def request_keyframe(self, conn: Connection, reason: str) -> None:
        """Ask the encoder of the stream ``conn``'s video reads for a key frame."""
        if conn.codec not in ("h264", "vp8"):
            return
        stream = conn.video_stream()
        if stream is not None:
            stream.on_need_keyframe()
            self.log.debug("peer.keyframe_requested", reason=reason)

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
            # the video we send: what a REMB (for the video SSRC) is compared with
            self._sent.add(now, conn.released_bytes + sum(
                queue.bytes_delivered for stream, queue in conn.subscriptions
                if stream.kind == "video"))
            seen = False
            for block in report_blocks(packet, ssrc):
                rtt = report_rtt(block, *compat.last_sender_report(sender), time.time())
                self._estimate_changed(now, self.bandwidth.on_report(now, block.loss, rtt))
                seen = True
            remb = remb_bitrate(packet, ssrc)
            if remb is not None:
                self._estimate_changed(now, self.bandwidth.on_remb(now, remb,
                                                                   self._sent.rate_bps()))
                seen = True
            if seen:
                self._choose_tier(conn, now)
        except Exception as exc:
            if not self._failed:  # once per session: this runs per packet
                self._failed = True
                self.log.warning("peer.bandwidth_error", error=f"{type(exc).__name__}: {exc}")

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
        budget = video_budget(self.bandwidth.estimate_at(now), "audio" in conn.tracks)
        for stream, queue in conn.subscriptions:
            if stream.kind == "video":
                queue.demand_bps = budget
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
