"""One remote participant: negotiation, liveness and restarts of its connection.

A PeerSession is a Trio task that owns every RTCPeerConnection it ever makes
for one participant, one at a time. Everything that can happen to it arrives
as a message on its own channel (signals routed by the PeerManager, aiortc's
state changes and track endings), so its state is only ever touched by that
task, and one peer's trouble never reaches another.

What aiortc does not do, this does:

- ICE restart: aiortc cannot restart ICE. A dead or stuck connection is
  replaced by a fresh RTCPeerConnection and a new offer; a remote offer with
  new ICE credentials likewise replaces ours.
- Liveness: aiortc never reports "disconnected" and needs ~30 s to close a
  dead path. A connection from which no RTCP arrived for ``dead_after``
  seconds, or that is not up ``connect_timeout`` seconds after negotiation,
  is declared dead here.
- Glare: when both sides offer at once, the side with the greater user id
  is polite and answers; the other ignores the incoming offer.

What the connection's RTCP says (liveness, key frame requests, the
bandwidth estimate and the quality tier it picks) is rtc/feedback.py's: the
session owns one :class:`~.feedback.PeerFeedback` and acts on its events.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import structlog
import trio
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)

from ..config import PeersConfig
from ..media.encoder import VideoCodec
from ..media.hub import MediaHub
from ..room import Participant
from ..signaling.messages import IceCandidate, SessionDescription, SignalType, WebRTCSignal
from ..supervise import Backoff, RestartPolicy, RestartTracker
from . import compat
from .aio import call_aio, on_aio_event
from .closing import close_peer_connection
from .connection import (
    Connection,
    ConnectionEvent,
    PathRevived,
    PcStateChanged,
    TierChosen,
    TrackEnded,
)
from .feedback import PeerFeedback
from .inbox import Inbox
from .levels import PeerLevels
from .pacer import PacingState
from .remotevideo import RemoteVideo
from .sdp import BadSignal, check_sdp, ice_credentials, negotiated_codecs, parse_candidate
from .tracks import FrameTrack, PacketTrack
from .uplink import Uplink

if TYPE_CHECKING:

    from ..display.state import DisplayState
    from ..media.playback import Speaker

log = structlog.get_logger(__name__)

SendSignal = Callable[[SignalType, SessionDescription | IceCandidate | None], Awaitable[bool]]
StartMode = Literal["offer", "wait", "answer"]

CLOSE_TIMEOUT = 2.0
MAX_PENDING_CANDIDATES = 64
# Signals from the network queued for one peer's task; more are dropped (a
# flood). The server relays bursts of up to 200 (signaling flood limit).
MAX_QUEUED_SIGNALS = 256
# A connection that stayed up this long resets the restart back-off.
STABLE_AFTER = 10.0


PeerEvent = WebRTCSignal | ConnectionEvent


class PeerGone(Exception):
    """The session's connection ended while its participant is not in the room: stop it."""


def codec_preferences(kind: str, preferred: VideoCodec) -> list[Any]:
    """Codecs in the order we want them, for setCodecPreferences (RTX kept)."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    if kind == "audio":
        return [c for c in caps if c.mimeType.lower() == "audio/opus"]

    def of(name: str) -> list[Any]:
        return [c for c in caps if c.mimeType.lower() == f"video/{name}"]

    order = ["h264", "vp8"] if preferred == "h264" else ["vp8", "h264"]
    return of(order[0]) + of(order[1]) + of("rtx")


class PeerSession:
    """The connection to one participant, across any number of rebuilds."""

    def __init__(
        self,
        participant: Participant,
        *,
        self_id: str,
        hub: MediaHub,
        speaker: Speaker | None = None,
        display: DisplayState | None = None,
        settings: PeersConfig,
        ice_servers: list[RTCIceServer],
        relay_only: bool,
        video_codec: VideoCodec,
        send: SendSignal,
        uplink: Uplink | None = None,
    ) -> None:
        """``uplink``: the device's upload, shared with the other sessions (rtc/uplink.py)."""
        self.participant = participant
        self.peer_id = participant.user_id
        self.self_id = self_id
        self.hub = hub
        # The speakerphone (None unless [playback] is on): remote audio goes to it.
        self.speaker = speaker
        # The kiosk display (None unless [display] is on): the remote video is
        # received, decoded by the display's decoder and shown in a tile.
        self.display = display
        self.settings = settings
        self.ice_servers = ice_servers
        self.relay_only = relay_only
        self.video_codec: VideoCodec = video_codec
        self._send = send
        self._inbox = Inbox[PeerEvent](MAX_QUEUED_SIGNALS)
        self._conn: Connection | None = None
        # The connection whose path was declared dead, kept open beside its
        # replacement until that one is up (see _restart).
        self._lingering: Connection | None = None
        self._generation = 0
        self._offer_due: float | None = None
        self._restart_due: float | None = None
        # A connection restarts for as long as the participant is in the room
        # (the room, not a count, ends a session): no escalation.
        self._restarts = RestartTracker(f"peer {self.peer_id} connection", RestartPolicy(
            name="peer-connection", backoff=Backoff(initial=0.5, maximum=settings.restart_max),
            max_restarts=None))
        self.restarts = 0
        # False while the room does not list the participant but its media
        # still flows (we re-joined after a signaling outage before they
        # did): the connection is kept, but not rebuilt once it ends.
        self.in_room = True
        self.log = log.bind(peer=self.peer_id, username=participant.username)
        self.remote_video = None if display is None else RemoteVideo(
            display, self.peer_id, participant.username or self.peer_id, self.log)
        self.levels = None if display is None else PeerLevels(display, self.peer_id, self.log)
        self.feedback = PeerFeedback(hub, name=participant.username, log=self.log,
                                     post=self._post, current=lambda: self._conn,
                                     uplink=uplink, peer_id=self.peer_id)

    # -- inputs (from the manager; never block) -----------------------------

    @property
    def polite(self) -> bool:
        """The polite side of a glare gives up its own offer."""
        return self.self_id > self.peer_id

    def deliver(self, signal: WebRTCSignal) -> None:
        if not self._inbox.put_signal(signal):
            self.log.warning("peer.signal_dropped", kind=signal.signal_type,
                             dropped=self._inbox.dropped, reason="too many signals queued")

    def _post(self, event: PeerEvent) -> None:
        """One of this peer's own events (state changes...): never dropped."""
        self._inbox.put(event)

    @property
    def state(self) -> str:
        return self._conn.state if self._conn else "idle"

    @property
    def connection(self) -> RTCPeerConnection | None:
        return self._conn.pc if self._conn else None

    @property
    def pacing(self) -> PacingState | None:
        """The current connection's pacer, as of now (None before its negotiation)."""
        conn = self._conn
        return conn.pacer.snapshot() if conn is not None and conn.pacer is not None else None

    @property
    def keyframe_requests(self) -> tuple[int, int]:
        """Key frames this participant asked for, and how many of those were coalesced."""
        return self.feedback.keyframe_requests, self.feedback.keyframe_requests_coalesced

    @property
    def estimate_bps(self) -> int | None:
        """What this peer's link is estimated to carry; None before any receiver report."""
        return self.feedback.estimate_bps

    @property
    def video_tier(self) -> str | None:
        """The quality tier this peer is on (or moving to), as "WIDTHxHEIGHT"."""
        return self.feedback.video_tier

    # -- the task -----------------------------------------------------------

    async def run(self, mode: StartMode) -> None:
        """Negotiate and keep the connection alive until cancelled."""
        if mode == "offer":
            await self._offer("user_joined")
        elif mode == "wait":
            self._offer_due = trio.current_time() + self.settings.offer_wait
        while True:
            deadline = self._next_deadline()
            event: PeerEvent | None = None
            with trio.move_on_at(deadline):
                event = await self._inbox.get()
            if event is None:
                await self._on_timer()
                continue
            try:
                await self._handle(event)
            except BadSignal as exc:
                self.log.warning("peer.bad_signal", reason=str(exc),
                                 kind=getattr(event, "signal_type", None))
                if isinstance(event, WebRTCSignal) and event.signal_type == "offer":
                    # Their negotiation is broken: start over from our side.
                    await self._restart(f"bad offer: {exc}")

    async def close(self) -> None:
        """Close whatever connection is open (safe to call from a shielded finally)."""
        conn, self._conn = self._conn, None
        self.feedback.leave_uplink()
        if conn is not None:
            await self._close_connection(conn, "session closed")
        await self._drop_lingering("session closed")
        if self.remote_video is not None:
            self.remote_video.leave()
        if self.levels is not None:
            self.levels.leave()

    def check_video(self, now: float) -> None:
        """Say "no video" on the tile when the video stopped (kiosk.follow_room, every 0.5 s)."""
        if self.remote_video is not None:
            self.remote_video.check(self._conn, now)
        if self.levels is not None:
            self.levels.check(now)  # the active speaker (rtc/levels.py)

    # -- timers -------------------------------------------------------------

    def _next_deadline(self) -> float:
        now_t, now_m = trio.current_time(), time.monotonic()
        candidates = [now_t + 3600.0]
        if self._offer_due is not None:
            candidates.append(self._offer_due)
        if self._restart_due is not None:
            candidates.append(self._restart_due)
        conn = self._conn
        if conn is not None:
            if conn.state in ("offering", "negotiated"):
                candidates.append(now_t + conn.since + self.settings.connect_timeout - now_m)
            elif conn.state == "connected":
                candidates.append(now_t + conn.last_rtcp + self.settings.dead_after - now_m)
        return min(candidates)

    async def _on_timer(self) -> None:
        now_t, now_m = trio.current_time(), time.monotonic()
        if self._offer_due is not None and now_t >= self._offer_due:
            self._offer_due = None
            if self._conn is None:
                self.log.info("peer.offer_wait_over", waited=self.settings.offer_wait)
                await self._offer("no offer arrived")
            return
        if self._restart_due is not None and now_t >= self._restart_due:
            self._restart_due = None
            await self._offer("restart")
            return
        conn = self._conn
        if conn is None:
            return
        if conn.state in ("offering", "negotiated"):
            if now_m - conn.since >= self.settings.connect_timeout:
                what = "no answer" if conn.state == "offering" else "not connected"
                await self._restart(f"{what} after {self.settings.connect_timeout:g} s")
        elif conn.state == "connected" and now_m - conn.last_rtcp >= self.settings.dead_after:
            await self._restart(f"no RTCP for {now_m - conn.last_rtcp:.1f} s", linger=True)

    async def _restart(self, reason: str, first_delay: float = 0.0,
                       linger: bool = False) -> None:
        """Drop the current connection; offer a fresh one after a back-off.

        ``linger`` (a dead path): the old connection is not closed but kept
        beside the new one until that one is up. A link that was only cut
        for a while then carries media again the moment it returns (aiortc
        keeps a silent connection for ~30 s), whereas the new offer may sit
        in the signaling server's TCP retransmission queue to the same
        unreachable peer for seconds after the link is back.
        """
        if not self.in_room:
            raise PeerGone(reason)
        conn, self._conn = self._conn, None
        if self.remote_video is not None:
            self.remote_video.reconnecting()
        if conn is not None:
            up = conn.connected_at
            if up is not None and time.monotonic() - up > STABLE_AFTER:
                self._restarts.reset()
            if linger and up is not None:
                await self._drop_lingering("superseded")
                conn.lingering, conn.revived, conn.dead_at = True, False, time.monotonic()
                self._lingering = conn
                self.log.info("peer.lingering", generation=conn.generation, reason=reason)
            else:
                await self._close_connection(conn, reason)
        first = self._restarts.attempt == 0
        backoff = self._restarts.failed(trio.current_time())
        delay = first_delay if first else max(first_delay, backoff)
        self.restarts += 1
        self.log.warning("peer.restarting", reason=reason, delay=round(delay, 2),
                         attempt=self._restarts.attempt)
        self._offer_due = None
        self._restart_due = trio.current_time() + delay

    # -- events -------------------------------------------------------------

    async def _handle(self, event: PeerEvent) -> None:
        conn = self._conn
        lingering = self._lingering
        if lingering is not None and getattr(event, "generation", None) == lingering.generation:
            await self._on_lingering_event(lingering, event)
            return
        if isinstance(event, PathRevived):
            return
        if isinstance(event, TierChosen):
            if conn is not None and event.generation == conn.generation:
                self.feedback.switch_tier(conn, event.tier)
            return
        if isinstance(event, PcStateChanged):
            if conn is None or event.generation != conn.generation:
                return
            self.log.info("peer.state", state=event.state, generation=event.generation)
            if event.state == "connected" and conn.state != "connected":
                conn.state = "connected"
                conn.connected_at = conn.last_rtcp = time.monotonic()
                self._restart_due = None
                self.log.info("peer.connected", codec=conn.codec, role=conn.role,
                              ms=round((conn.connected_at - conn.since) * 1000),
                              **compat.selected_candidates(conn.pc))
                self.feedback.request_keyframe(conn, "connected")
                await self._drop_lingering("replaced")
            elif event.state in ("failed", "closed"):
                # The remote may be rebuilding its side (Glimpse browsers do):
                # give its offer a head start before we offer ourselves.
                await self._restart(f"connection {event.state}",
                                    first_delay=self.settings.offer_wait)
        elif isinstance(event, TrackEnded):
            if conn is not None and event.generation == conn.generation:
                sender = conn.transceivers[event.kind].sender
                if sender.transport.state in ("closed", "failed"):
                    # the connection is going away; aiortc stops the tracks
                    # before it reports "closed"
                    await self._restart(f"connection {sender.transport.state}",
                                        first_delay=self.settings.offer_wait)
                    return
                track = conn.tracks.get(event.kind)
                if track is not None and track.source_closed:
                    # the stream it read closed: the hub replaced its video
                    # pipeline (a frame source became a camera that encodes,
                    # found as this peer negotiated) or the source stopped.
                    # Subscribing again is the plan (media/hub.py), not a fault.
                    self.log.info("peer.source_changed", kind=event.kind)
                    await self._restart(f"{event.kind} source changed")
                    return
                # aiortc's RTP task died (its traceback went to the log as a
                # warning); the pc would stay "connected" without media.
                self.log.error("peer.track_ended", kind=event.kind)
                await self._restart(f"{event.kind} track ended")
        elif event.signal_type == "offer":
            assert isinstance(event.signal, SessionDescription)
            await self._on_offer(event.signal.sdp)
        elif event.signal_type == "answer":
            assert isinstance(event.signal, SessionDescription)
            await self._on_answer(event.signal.sdp)
        else:
            assert event.signal is None or isinstance(event.signal, IceCandidate)
            await self._on_candidate(event.signal)

    async def _on_lingering_event(self, conn: Connection, event: PeerEvent) -> None:
        """Events of the connection kept after its path was declared dead."""
        if isinstance(event, PathRevived):
            # The link came back before the new connection was up: media
            # flows on the old one again, from the next key frame. The new
            # offer stands (it is on its way and the peer will act on it).
            self.log.info("peer.path_revived", generation=conn.generation,
                          after_s=None if conn.dead_at is None else round(
                              time.monotonic() - conn.dead_at, 2))
            self.feedback.request_keyframe(conn, "path revived")
        elif isinstance(event, PcStateChanged) and event.state in ("failed", "closed"):
            await self._drop_lingering(f"connection {event.state}")
        # TrackEnded: the connection is going away; its "closed" follows

    async def _drop_lingering(self, reason: str) -> None:
        conn, self._lingering = self._lingering, None
        if conn is not None:
            await self._close_connection(conn, f"lingering: {reason}")

    async def _on_offer(self, sdp: str) -> None:
        check_sdp(sdp)
        creds = ice_credentials(sdp)
        ufrag = creds[0] if creds else None
        conn = self._conn
        self._offer_due = None
        self._restart_due = None
        if conn is not None and conn.state == "offering":
            if not self.polite:
                self.log.info("peer.glare", action="ignoring their offer")
                return
            self.log.info("peer.glare", action="dropping our offer")
        elif (conn is not None and conn.has_remote and conn.remote_ufrag == ufrag
              and conn.pc.signalingState == "stable"):
            await self._renegotiate(conn, sdp)
            return
        elif conn is not None:
            self.log.info("peer.remote_restart", reason="new ICE credentials"
                          if conn.remote_ufrag != ufrag else "offer in unexpected state")
        if conn is not None:
            self._conn = None
            await self._close_connection(conn, "replaced by their offer")
        # the remote rebuilt its side: whatever lingered is gone there too
        await self._drop_lingering("replaced by their offer")
        await self._answer(sdp, ufrag)

    async def _renegotiate(self, conn: Connection, sdp: str) -> None:
        self.log.info("peer.renegotiating")
        try:
            await call_aio(conn.pc.setRemoteDescription, RTCSessionDescription(sdp, "offer"))
            self._refuse_foreign_media(conn)
            answer = await call_aio(conn.pc.createAnswer)
            await call_aio(conn.pc.setLocalDescription, answer)
        except Exception as exc:  # aiortc raises many types for SDP it dislikes
            self.log.warning("peer.renegotiation_failed", error=f"{type(exc).__name__}: {exc}")
            self._conn = None
            await self._close_connection(conn, "renegotiation failed")
            await self._answer(sdp, (ice_credentials(sdp) or (None,))[0])
            return
        await self._send_signal("answer", SessionDescription(type="answer",
                                                      sdp=self._local_sdp(conn)))

    async def _on_answer(self, sdp: str) -> None:
        conn = self._conn
        if conn is not None and conn.state == "negotiated" and conn.role == "offerer":
            # A second answer to one offer: the first one answered an earlier
            # offer of ours that the signaling path delivered late (after a
            # long cut, TCP hands the peer all our queued offers at once, and
            # it answers each). This connection holds the stale one and can
            # never come up: offer again at once instead of waiting
            # connect_timeout for it.
            self.log.warning("peer.stale_answer", generation=conn.generation)
            await self._restart("answered with an earlier offer's answer")
            return
        if conn is None or conn.state != "offering":
            self.log.warning("peer.unexpected_answer", state=self.state)
            return
        check_sdp(sdp)
        try:
            await call_aio(conn.pc.setRemoteDescription, RTCSessionDescription(sdp, "answer"))
        except Exception as exc:
            raise BadSignal(f"answer rejected: {type(exc).__name__}: {exc}") from None
        creds = ice_credentials(sdp)
        conn.remote_ufrag = creds[0] if creds else None
        conn.has_remote = True
        await self._negotiated(conn, sdp)

    async def _on_candidate(self, candidate: IceCandidate | None) -> None:
        conn = self._conn
        if conn is None:
            self.log.debug("peer.candidate_dropped", reason="no connection")
            return
        if (candidate is not None and candidate.username_fragment and conn.remote_ufrag
                and candidate.username_fragment != conn.remote_ufrag):
            self.log.debug("peer.candidate_dropped", reason="stale ufrag")
            return
        if not conn.has_remote:
            if len(conn.pending) < MAX_PENDING_CANDIDATES:
                conn.pending.append(candidate)
            return
        await self._add_candidate(conn, candidate)

    async def _add_candidate(self, conn: Connection, candidate: IceCandidate | None) -> None:
        parsed = parse_candidate(candidate) if candidate is not None else None
        try:
            await call_aio(conn.pc.addIceCandidate, parsed)
        except Exception as exc:
            raise BadSignal(f"candidate rejected: {type(exc).__name__}: {exc}") from None

    # -- building connections ----------------------------------------------

    def _new_connection(self, role: Literal["offerer", "answerer"]) -> Connection:
        self._generation += 1
        gen = self._generation
        config = RTCConfiguration(iceServers=list(self.ice_servers))
        if self.relay_only:
            from aiortc.rtcconfiguration import RTCIceTransportPolicy

            config.iceTransportPolicy = RTCIceTransportPolicy.RELAY
        pc = RTCPeerConnection(configuration=config)
        conn = Connection(gen, pc, role, tracks={}, transceivers={})
        self.feedback.new_connection()

        def on_state() -> None:
            self._post(PcStateChanged(gen, pc.connectionState))

        on_aio_event(pc, "connectionstatechange", on_state)

        speaker, display = self.speaker, self.remote_video

        def on_track(track: Any) -> None:
            # With the speakerphone on, the remote audio on *our* audio
            # transceiver is played: aiortc's receive queue is unbounded, so
            # the speaker drains it from now until the track ends.
            ours = conn.transceivers.get("audio")
            if ((speaker or self.levels) is not None and ours is not None
                    and getattr(track, "kind", None) == "audio" and ours.receiver.track is track):
                if speaker is not None:  # else it is received for its levels only
                    speaker.attach(f"{self.participant.username or self.peer_id}#{gen}", track)
                return
            # With the display on, the remote video on our video transceiver
            # is tapped before aiortc decodes it (RemoteVideo.tap): its track
            # stays empty, nothing to drain.
            video = conn.transceivers.get("video")
            if (display is not None and video is not None
                    and getattr(track, "kind", None) == "video" and video.receiver.track is track):
                return
            # We asked for sendonly; a peer that sends anyway must not grow
            # aiortc's unbounded receive queue: stop its track at once.
            self.log.warning("peer.unwanted_track", kind=getattr(track, "kind", "?"))
            with contextlib.suppress(Exception):
                track.stop()

        on_aio_event(pc, "track", on_track)

        kinds = []
        if self.hub.has_video:
            kinds.append("video")
        if self.hub.audio_stream() is not None:
            kinds.append("audio")
        for kind in kinds:
            track: PacketTrack | FrameTrack
            if kind == "video" and self.hub.video_per_peer:
                # aiortc encodes for this sender itself (comparison mode)
                track = FrameTrack(partial(self.hub.subscribe_frames,
                                           f"{self.participant.username}/frames"))
            else:
                track = PacketTrack("video" if kind == "video" else "audio")
            # sendrecv only for the speakerphone's audio (or the display's speaker
            # levels) and the display's video: everything else stays send-only,
            # so nothing is received that nobody reads.
            receives = (speaker or self.levels) if kind == "audio" else display
            direction = "sendrecv" if receives is not None else "sendonly"
            transceiver = pc.addTransceiver(track, direction=direction)
            if kind == "video" and display is not None:
                display.tap(conn, transceiver.receiver)
            if kind == "audio" and self.levels is not None:
                self.levels.hook(transceiver.receiver, drain=speaker is None)
            transceiver.setCodecPreferences(codec_preferences(kind, self.video_codec))
            self.feedback.hook(conn, transceiver.sender, kind)
            conn.tracks[kind] = track
            conn.transceivers[kind] = transceiver

            def on_ended(kind: str = kind) -> None:
                self._post(TrackEnded(gen, kind))

            on_aio_event(track, "ended", on_ended)
        return conn

    def _refuse_foreign_media(self, conn: Connection) -> None:
        """Transceivers the remote added (a screen share...) are made inactive."""
        ours = {id(t) for t in conn.transceivers.values()}
        for t in conn.pc.getTransceivers():
            if id(t) not in ours and t.direction != "inactive":
                t.direction = "inactive"

    async def _offer(self, reason: str) -> None:
        conn = self._new_connection("offerer")
        self._conn = conn
        self.log.info("peer.offering", reason=reason, generation=conn.generation)
        offer = await call_aio(conn.pc.createOffer)
        await call_aio(conn.pc.setLocalDescription, offer)
        conn.since = time.monotonic()
        await self._send_signal("offer", SessionDescription(type="offer",
                                                     sdp=self._local_sdp(conn)))

    async def _answer(self, sdp: str, ufrag: str | None) -> None:
        conn = self._new_connection("answerer")
        self._conn = conn
        self.log.info("peer.answering", generation=conn.generation)
        try:
            await call_aio(conn.pc.setRemoteDescription, RTCSessionDescription(sdp, "offer"))
        except Exception as exc:
            self._conn = None
            await self._close_connection(conn, "bad offer")
            raise BadSignal(f"offer rejected: {type(exc).__name__}: {exc}") from None
        conn.remote_ufrag = ufrag
        conn.has_remote = True
        self._refuse_foreign_media(conn)
        answer = await call_aio(conn.pc.createAnswer)
        await call_aio(conn.pc.setLocalDescription, answer)
        local_sdp = self._local_sdp(conn)
        await self._send_signal("answer", SessionDescription(type="answer", sdp=local_sdp))
        await self._negotiated(conn, local_sdp)

    def _local_sdp(self, conn: Connection) -> str:
        """Our description; with the display on, it caps the remote's video (remotevideo.py)."""
        sdp: str = conn.pc.localDescription.sdp
        return sdp if self.remote_video is None else self.remote_video.describe(sdp)

    async def _negotiated(self, conn: Connection, answer_sdp: str) -> None:
        """Both descriptions are set: bind tracks to streams, apply queued candidates."""
        conn.state = "negotiated"
        conn.since = time.monotonic()
        codecs = negotiated_codecs(answer_sdp)
        video_codec = codecs.get("video")
        video_track, audio_track = conn.tracks.get("video"), conn.tracks.get("audio")
        if isinstance(video_track, FrameTrack) and video_codec in ("h264", "vp8"):
            conn.codec = video_codec  # aiortc's encoder; the track subscribes itself
        elif isinstance(video_track, PacketTrack) and video_codec in ("h264", "vp8"):
            stream = self.hub.video_stream(video_codec, self.feedback.tier)  # type: ignore[arg-type]
            if stream is not None:
                queue = stream.subscribe(f"{self.participant.username}/{stream.name}")
                conn.subscriptions.append((stream, queue))
                video_track.bind(queue, conn.release)
                conn.codec = video_codec
        elif video_track is not None:
            self.log.warning("peer.no_video_codec", negotiated=video_codec)
        audio = self.hub.audio_stream()
        if (isinstance(audio_track, PacketTrack) and audio is not None
                and codecs.get("audio") == "opus"):
            queue = audio.subscribe(f"{self.participant.username}/opus")
            conn.subscriptions.append((audio, queue))
            audio_track.bind(queue)
        self.feedback.negotiated(conn, answer_sdp)  # the sending rate's zero; pacing
        self.log.info("peer.negotiated", role=conn.role, video=conn.codec,
                      audio=codecs.get("audio"))
        pending, conn.pending = conn.pending, []
        for candidate in pending:
            try:
                await self._add_candidate(conn, candidate)
            except BadSignal as exc:
                self.log.warning("peer.bad_signal", reason=str(exc), kind="ice-candidate")

    async def _close_connection(self, conn: Connection, reason: str) -> None:
        conn.state = "closed"
        for stream, queue in conn.subscriptions:
            stream.unsubscribe(queue)
        conn.subscriptions.clear()
        self.log.info("peer.connection_closed", reason=reason, generation=conn.generation)
        with trio.move_on_after(CLOSE_TIMEOUT) as timer:
            timer.shield = True
            await call_aio(close_peer_connection, conn.pc)
        if timer.cancelled_caught:
            self.log.error("peer.close_timeout", generation=conn.generation)
        if self.remote_video is not None:
            await self.remote_video.close(conn)

    async def _send_signal(self, kind: SignalType,
                           payload: SessionDescription | IceCandidate | None) -> None:
        if not await self._send(kind, payload):
            self.log.warning("peer.signal_not_sent", kind=kind, reason="signaling down")

