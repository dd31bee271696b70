"""Publish once to an SFU over WHIP: one RTCPeerConnection fed by the hub's shared encoding.

The :class:`Publisher` is one more consumer of the media hub, like a peer:
its video track reads the shared encoding of the configured tier (no encode
of its own), its audio the shared Opus stream. It runs for as long as
``[publish]`` is set, one WHIP session at a time:

1. read the token (a secret file, read again every time: a new one is
   picked up without a restart);
2. OPTIONS for ICE servers (``Link`` headers; optional), else ``[ice]``'s;
3. make the connection, set the offer (aiortc gathers every candidate
   first: the offer is complete, nothing is trickled) and POST it
   (publish/whip.py), set the answer, bind the tracks;
4. watch it: ``connected`` within ``connect_timeout``; afterwards it ends
   when aiortc says ``failed`` or ``closed``, or when no RTCP arrived for
   :data:`DEAD_AFTER` (an SFU that went away: aiortc needs ~30 s to notice);
5. DELETE the session (always, also on stop and on reload: the SFU frees its
   publisher at once instead of timing it out) and close the connection;
6. wait (capped, jittered back-off from ``reconnect_min`` to
   ``reconnect_max``, afresh after a session that stayed up) and go again.
   aiortc cannot restart ICE, so a new session is the only recovery.

A refused token (401/403) is not retried soon: the publisher waits 7.5-15 s,
then longer and longer up to ``auth_retry``, or until the token file changes.

The SFU's RTCP drives the published encoding like a peer's
(rtc/feedback.py's :class:`~glimpse_edge.rtc.feedback.PeerFeedback`): PLI
and FIR ask the shared encoder for a key frame, receiver reports and REMB
feed a bandwidth estimate whose budget the queue reports to the hub (the
lowest tier follows its worst reader), and the video leaves paced. The
tier itself stays as configured.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from ..config import IceConfig, PublishConfig, read_secret_file
from ..config.errors import SecretFileError
from ..rtc.aio import call_aio, on_aio_event
from ..rtc.bandwidth import Tuning
from ..rtc.closing import close_peer_connection
from ..rtc.connection import Connection, ConnectionEvent, PcStateChanged, TrackEnded
from ..rtc.feedback import PeerFeedback
from ..rtc.manager import ice_servers as configured_ice_servers
from ..rtc.peer import codec_preferences
from ..rtc.sdp import negotiated_codecs
from ..rtc.tracks import PacketTrack
from ..rtc.uplink import Uplink
from ..supervise import Backoff, HealthRegistry, RestartPolicy, RestartTracker
from .state import PublishPhase, PublishState
from .whip import LinkIceServer, WhipAuthError, WhipClient, WhipError, WhipSession, redact

if TYPE_CHECKING:
    from ..media.hub import MediaHub

log = structlog.get_logger(__name__)

__all__ = ["DEAD_AFTER", "PublishState", "Publisher"]

# No RTCP from the SFU for this long: its end is gone (aiortc needs ~30 s).
DEAD_AFTER = 4.0
# A session up this long starts the back-off afresh.
STABLE_AFTER = 10.0
CLOSE_TIMEOUT = 2.0
# On stop (cancelled): the DELETE gets this long at most (SIGTERM's budget is shared).
STOP_DELETE_TIMEOUT = 3.0
# How often a refused token's file is looked at for a new one.
TOKEN_POLL = 1.0
# The first retry of a refused token (then doubling up to publish.auth_retry).
AUTH_FIRST_RETRY = 15.0
# In the state directory: the resource of the session open now (a crash leaves it).
LEFT_FILE = "whip-session"
# The sending rate shown is over this long (sampled once a second).
RATE_WINDOW = 5.0

class _Ended(Exception):
    """The session's connection ended (failed, closed, went silent)."""


class Publisher:
    """One WHIP publisher, for one ``[publish]`` configuration."""

    def __init__(self, config: PublishConfig, hub: MediaHub, ice: IceConfig, *,
                 health: HealthRegistry | None = None,
                 on_change: Callable[[], None] | None = None,
                 uplink: Callable[[], Uplink | None] | None = None,
                 state_dir: Path | None = None) -> None:
        """``uplink``: the peers' shared estimate of the device's upload, when there
        are peers (the room's PeerManager); the publisher takes its share of it.
        ``state_dir``: where the open session's resource is remembered (systemd's
        StateDirectory), so that one left behind by a crash or a power cut is
        DELETEd by the next start; None: not remembered."""
        self.config = config
        self.hub = hub
        self.ice = ice
        self.health = health
        self._on_change = on_change or (lambda: None)
        self._shared_uplink = uplink or (lambda: None)
        self._left_file = state_dir / LEFT_FILE if state_dir is not None else None
        self.url = redact(config.whip_url)
        self.log = log.bind(whip=self.url)
        policy = RestartPolicy(name="whip-publish",
                               backoff=Backoff(initial=config.reconnect_min,
                                               maximum=config.reconnect_max),
                               max_restarts=None, stable_after=STABLE_AFTER)
        self.tracker = RestartTracker("publish", policy)
        # A refused token: never sooner than AUTH_FIRST_RETRY / 2, doubling up to
        # auth_retry (a 403 can be passing: simple-whip-server refuses an endpoint
        # still held by a session that died without its DELETE, a power cut,
        # until Janus lets it go); a new token file is tried at once.
        first = min(AUTH_FIRST_RETRY, config.auth_retry)
        self._auth_tracker = RestartTracker("publish-auth", RestartPolicy(
            name="whip-auth", backoff=Backoff(initial=first, maximum=config.auth_retry,
                                              floor=first / 2),
            max_restarts=None))
        self.phase: PublishPhase = "starting"
        self.since = time.time()
        self.sessions = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self.deletes = 0  # DELETEs the server answered
        self._conn: Connection | None = None
        self._session: WhipSession | None = None
        self._client: WhipClient | None = None
        self._events: trio.MemorySendChannel[ConnectionEvent] | None = None
        self._link_servers: tuple[LinkIceServer, ...] = ()
        self._token_stamp: tuple[int, int, int] | None = None  # the token file when last read
        self._rate: list[tuple[float, int]] = []  # (monotonic, bytes sent) samples
        # an SFU's REMB is a cap it sets, not a receiver's estimate that grows
        # with what arrives (rtc/bandwidth.py, Tuning.remb_always_caps); Janus
        # repeats it every 5 s, so it stays fresh for longer than a browser's
        self.feedback = PeerFeedback(hub, name="whip", log=self.log, post=self._post,
                                     current=lambda: self._conn, peer_id="whip",
                                     tuning=Tuning(remb_always_caps=True, remb_timeout=12.0))

    # -- what observe reads ---------------------------------------------------------

    def state(self) -> PublishState:
        conn = self._conn
        bw = self.feedback.bandwidth
        tier = None
        tiers = self.hub.tiers
        if self.hub.has_video and tiers:
            t = tiers[min(self.config.tier, len(tiers) - 1)]
            tier = f"{t.width}x{t.height}"
        return PublishState(
            url=self.url, state=self.phase, since=self.since,
            codec=conn.codec if conn is not None else None, tier=tier,
            bitrate_bps=self._bitrate(), estimate_bps=self.feedback.estimate_bps,
            rtt_ms=None if bw.rtt_s is None else round(bw.rtt_s * 1000, 1),
            reconnects=self.reconnects, sessions=self.sessions,
            last_error=self.last_error,
            resource=redact(self._session.resource) if self._session else None)

    def _bytes_sent(self) -> int:
        conn = self._conn
        if conn is None:
            return 0
        return conn.released_bytes + sum(q.bytes_delivered for _s, q in conn.subscriptions)

    def _sample(self) -> None:
        """Note the bytes sent so far (the session's task does, once a second)."""
        now = time.monotonic()
        sent = self._bytes_sent()
        self._rate = [(t, b) for t, b in self._rate if now - t <= RATE_WINDOW and b <= sent]
        self._rate.append((now, sent))

    def _bitrate(self) -> int | None:
        """Bits a second sent over the last :data:`RATE_WINDOW` (None: too early)."""
        if self._conn is None or not self._rate:
            return None
        now = time.monotonic()
        t0, b0 = self._rate[0]
        if now - t0 < 0.5:
            return None
        return int((self._bytes_sent() - b0) * 8 / (now - t0))

    def _set_phase(self, phase: PublishPhase, error: str | None = None) -> None:
        if phase != self.phase:
            self.phase, self.since = phase, time.time()
        if error is not None:
            self.last_error = error
        self._on_change()

    # -- running --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish until cancelled; each session ends with a DELETE."""
        task_status.started()
        try:
            while True:
                started = trio.current_time()
                delay: float
                try:
                    await self._session_once()
                    delay = 0.0  # not reached: a session ends with an error
                except WhipAuthError as exc:
                    wait = self._auth_tracker.failed(trio.current_time(), exc)
                    self.log.error("publish.auth_failed", error=str(exc), status=exc.status,
                                   retry_s=round(wait, 1))
                    self._set_phase("auth_failed", str(exc))
                    await self._end_session("token refused")
                    await self._wait_for_token(wait)
                    self.reconnects += 1
                    continue
                except (WhipError, _Ended, SecretFileError) as exc:
                    self.tracker.ran(trio.current_time() - started)
                    delay = self.tracker.failed(trio.current_time(), exc)
                    self.log.warning("publish.session_ended", error=str(exc),
                                     retry_s=round(delay, 2))
                    self._set_phase("retrying", str(exc))
                    await self._end_session(str(exc))
                await trio.sleep(delay)
                self.reconnects += 1
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + STOP_DELETE_TIMEOUT
                await self._end_session("stopped")
            self._set_phase("stopped")

    async def stop(self) -> None:
        """End the session now (DELETE, close); run() is to be cancelled by its owner."""
        await self._end_session("stopped")

    async def _wait_for_token(self, limit: float) -> None:
        """Sleep ``limit`` seconds, or less if the token file changes."""
        path = self.config.token_file
        # the file as it was when the refused token was read: one written since
        # (even before this wait began) is a new token
        stamp = self._token_stamp
        with trio.move_on_after(limit):
            while True:
                await trio.sleep(TOKEN_POLL)
                if _stamp(path) != stamp:
                    self.log.info("publish.token_changed")
                    return

    async def _session_once(self) -> None:
        self._token_stamp = _stamp(self.config.token_file)
        token = (read_secret_file(self.config.token_file)
                 if self.config.token_file is not None else None)
        verify: Any = True
        if self.config.ca_file is not None:
            from ..tls import new_client_context

            verify = new_client_context(self.config.ca_file)
        client = self._client = WhipClient(self.config.whip_url, token,
                                           timeout=self.config.request_timeout, verify=verify)
        self._set_phase("connecting")
        await self._delete_left_over(client)
        links, _allowed = await client.options()
        if links:
            self._link_servers = links
        send, receive = trio.open_memory_channel[ConnectionEvent](64)
        self._events = send
        conn = self._conn = self._new_connection(self._ice_servers())
        self._rate.clear()
        offer = await call_aio(conn.pc.createOffer)
        await call_aio(conn.pc.setLocalDescription, offer)  # gathers every candidate
        # Shielded (the request bounds itself): a stop or reload that comes while
        # the POST is out still learns the session's Location, so that it can be
        # DELETEd; an SFU keeping an orphan would refuse the next POST (simple-
        # whip-server: 403, "endpoint in use").
        with trio.CancelScope(shield=True):
            session = self._session = await client.publish(conn.pc.localDescription.sdp)
        self._remember(session.resource)
        await trio.lowlevel.checkpoint()  # a cancellation meanwhile lands here
        self.sessions += 1
        if session.ice_servers:
            self._link_servers = session.ice_servers  # for the next session's offer
        self.log.info("publish.answered", resource=redact(session.resource),
                      link_ice_servers=len(session.ice_servers), patch=session.can_patch)
        try:
            await call_aio(conn.pc.setRemoteDescription,
                           RTCSessionDescription(session.answer, "answer"))
        except Exception as exc:
            raise WhipError("POST", self.url, f"the answer was refused by aiortc: "
                            f"{type(exc).__name__}: {exc}", 201) from None
        self._bind(conn, session.answer)
        conn.state = "negotiated"
        await self._watch(conn, receive)

    def _ice_servers(self) -> list[RTCIceServer]:
        if self._link_servers:
            return [RTCIceServer(urls=[s.url], username=s.username, credential=s.credential)
                    for s in self._link_servers]
        return configured_ice_servers(self.ice)

    def _new_connection(self, servers: list[RTCIceServer]) -> Connection:
        config = RTCConfiguration(iceServers=servers)
        if self.ice.relay_only:
            from aiortc.rtcconfiguration import RTCIceTransportPolicy

            config.iceTransportPolicy = RTCIceTransportPolicy.RELAY
        pc = RTCPeerConnection(configuration=config)
        conn = Connection(1, pc, "offerer", tracks={}, transceivers={})
        self.feedback.new_connection()
        self._join_uplink()

        def on_state() -> None:
            self._post(PcStateChanged(1, pc.connectionState))

        on_aio_event(pc, "connectionstatechange", on_state)
        kinds = []
        if self.hub.has_video and not self.hub.video_per_peer:
            kinds.append("video")
        if self.config.audio and self.hub.audio_stream() is not None:
            kinds.append("audio")
        for kind in kinds:
            track = PacketTrack("video" if kind == "video" else "audio")
            transceiver = pc.addTransceiver(track, direction="sendonly")
            prefs = codec_preferences(kind, self.hub.video_config.codec)
            if kind == "video":  # only the codec the shared encoder makes (and its RTX)
                name = f"video/{self.hub.video_config.codec}"
                prefs = [c for c in prefs if c.mimeType.lower() in (name, "video/rtx")]
            transceiver.setCodecPreferences(prefs)
            self.feedback.hook(conn, transceiver.sender, kind)
            conn.tracks[kind] = track
            conn.transceivers[kind] = transceiver

            def on_ended(kind: str = kind) -> None:
                self._post(TrackEnded(1, kind))

            on_aio_event(track, "ended", on_ended)
        return conn

    def _bind(self, conn: Connection, answer: str) -> None:
        codecs = negotiated_codecs(answer)
        video_codec = codecs.get("video")
        video, audio = conn.tracks.get("video"), conn.tracks.get("audio")
        if video is not None:
            if video_codec != self.hub.video_config.codec:
                raise WhipError("POST", self.url, f"the SFU did not accept "
                                f"{self.hub.video_config.codec} video (answer: {video_codec})",
                                201)
            stream = self.hub.video_stream(self.hub.video_config.codec, self.config.tier)
            if stream is not None and isinstance(video, PacketTrack):
                queue = stream.subscribe(f"whip/{stream.name}")
                conn.subscriptions.append((stream, queue))
                video.bind(queue, conn.release)
                conn.codec = video_codec
        stream = self.hub.audio_stream()
        if isinstance(audio, PacketTrack) and stream is not None and codecs.get("audio") == "opus":
            queue = stream.subscribe("whip/opus")
            conn.subscriptions.append((stream, queue))
            audio.bind(queue)
        self.feedback.negotiated(conn, answer)
        self.log.info("publish.negotiated", video=conn.codec, audio=codecs.get("audio"),
                      tier=self.config.tier)

    def _post(self, event: ConnectionEvent) -> None:
        """From aiortc's side (or the feedback's hooks): to the session's task."""
        send = self._events
        if send is None:
            return
        with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError,
                                 trio.ClosedResourceError):
            send.send_nowait(event)

    async def _watch(self, conn: Connection,
                     events: trio.MemoryReceiveChannel[ConnectionEvent]) -> None:
        """Until the connection ends: raises _Ended saying why."""
        deadline = trio.current_time() + self.config.connect_timeout
        while True:
            if conn.state == "connected":
                silent = time.monotonic() - conn.last_rtcp
                if silent > DEAD_AFTER:
                    raise _Ended(f"no RTCP from the SFU for {silent:.1f} s")
                timeout = DEAD_AFTER - silent + 0.05
            else:
                timeout = deadline - trio.current_time()
                if timeout <= 0:
                    raise _Ended(f"not connected within {self.config.connect_timeout:g} s "
                                 f"(ICE/DTLS to the SFU)")
            self._sample()
            with trio.move_on_after(min(timeout, 1.0)):
                event = await events.receive()
                if isinstance(event, PcStateChanged):
                    if event.state == "connected" and conn.state != "connected":
                        conn.state = "connected"
                        conn.connected_at = conn.last_rtcp = time.monotonic()
                        self.log.info("publish.connected")
                        self._auth_tracker.reset()
                        self._set_phase("publishing")
                        self._request_keyframe(conn)
                    elif event.state in ("failed", "closed"):
                        raise _Ended(f"the connection to the SFU {event.state}")
                elif isinstance(event, TrackEnded):
                    raise _Ended(f"the {event.kind} track ended")
                # TierChosen: the tier is configured, the estimate only sets the budget

    # -- a session left behind ---------------------------------------------------

    def _remember(self, resource: str | None) -> None:
        """Note the open session's resource (None: none open); never raises."""
        path = self._left_file
        if path is None:
            return
        try:
            if resource is None:
                path.unlink(missing_ok=True)
                return
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"endpoint": self.config.whip_url, "resource": resource}, f)
            os.replace(tmp, path)
        except OSError as exc:
            self.log.warning("publish.state_not_saved", path=str(path), error=str(exc))

    async def _delete_left_over(self, client: WhipClient) -> None:
        """DELETE the session a previous run left open (crash, power cut), if any.

        An SFU may hold the endpoint for it (simple-whip-server refuses new
        POSTs with 403 until then, and Janus keeps a silent publisher).
        """
        path = self._left_file
        if path is None or not path.exists():
            return
        try:
            left = json.loads(path.read_text())
            resource = str(left["resource"])
            same = left.get("endpoint") == self.config.whip_url
        except (OSError, ValueError, KeyError, TypeError):
            self._remember(None)
            return
        if not same:  # another endpoint's: its token is not ours to use there
            self._remember(None)
            return
        try:
            status = await client.delete(resource)
        except WhipError as exc:
            self.log.warning("publish.left_over_delete_failed", error=str(exc))
            if exc.status is not None and exc.status < 500:  # refused: nothing to retry
                self._remember(None)
            return
        self._remember(None)
        self.log.info("publish.left_over_deleted", resource=redact(resource), status=status)

    def _join_uplink(self) -> None:
        """Report to the room's shared uplink estimate, if there is a room with peers
        now (its PeerManager is rebuilt with the room): one upload, one estimate
        shared out over the peers and this session (rtc/uplink.py)."""
        shared = self._shared_uplink()
        if shared is not None and shared is not self.feedback.uplink:
            self.feedback.leave_uplink()
            self.feedback.uplink = shared

    def _request_keyframe(self, conn: Connection) -> None:
        """The SFU's subscribers need a key frame to start from: ask for one now."""
        self.feedback.request_keyframe(conn, "publish")

    async def _end_session(self, reason: str) -> None:
        """DELETE the session (if any) and close the connection; never raises."""
        session, client, conn = self._session, self._client, self._conn
        self._session = self._client = None
        self._conn = None
        if self._events is not None:
            self._events.close()
            self._events = None
        if conn is not None:
            for stream, queue in conn.subscriptions:
                stream.unsubscribe(queue)
            conn.subscriptions.clear()
            self.feedback.leave_uplink()  # its share goes back to the peers
        if session is not None and client is not None:
            try:
                status = await client.delete(session.resource)
                self.deletes += 1
                self._remember(None)
                self.log.info("publish.deleted", resource=redact(session.resource),
                              status=status, reason=reason)
            except WhipError as exc:
                self.log.warning("publish.delete_failed", error=str(exc), reason=reason)
        if client is not None:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await client.aclose()
        if conn is not None:
            conn.state = "closed"
            with trio.move_on_after(CLOSE_TIMEOUT) as timer:
                timer.shield = True
                await call_aio(close_peer_connection, conn.pc)
            if timer.cancelled_caught:
                self.log.error("publish.close_timeout")


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
