"""The root nursery: wires configuration, signaling, the room and systemd together.

The agent owns every long-lived task through one nursery; each runs under a
restart policy (:mod:`.supervise`). Signals are handled here: SIGTERM/SIGINT
leave the room and stop within a few seconds; SIGHUP re-reads the
configuration and applies it, or keeps the running one and says exactly what
is wrong with the new one.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import structlog
import trio

from . import __version__, testhooks
from .config import Config, ConfigError, load_checked
from .logs import configure_logging
from .media.hub import MediaHub
from .media.source import AnyVideoSource, AudioSource
from .room import Reconciled, Room, RoomEvent
from .rtc.aio import open_aio_loop
from .rtc.manager import PeerManager
from .rtc.peer import PeerSession
from .signaling.messages import WebRTCSignal
from .signaling.session import SignalingSession, hand_over
from .signaling.tokens import LoginTokenSource, TokenSource, token_source
from .supervise import HealthRegistry, supervise
from .systemd import Notifier, feed_watchdog, watchdog_interval

log = structlog.get_logger(__name__)

STOP_TIMEOUT = 4.0
# A replacement session (new server or credentials) gets this long to join
# before the old one is dropped anyway (at least twice its connect_timeout).
HANDOVER_TIMEOUT = 15.0
# What reload() can apply by itself; anything else needs a restart (logged).
_APPLIED = ("server", "auth", "room", "video", "camera", "audio", "ice", "peers", "log")


@dataclass
class _Link:
    """One signaling session and what it needs: its token source, its signals, its scope."""

    session: SignalingSession
    tokens: TokenSource
    signals: trio.MemoryReceiveChannel[WebRTCSignal]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


@dataclass
class _Signaling:
    """One room: its model, its peer connections, and the session that serves it.

    The session can be replaced underneath (a new server or new credentials)
    while the room model and the peers stay; the peers can be rebuilt (new
    ICE settings, a different set of tracks) while the session stays. A new
    room replaces all of it.
    """

    config: Config
    room: Room
    scope: trio.CancelScope
    nursery: trio.Nursery
    link: _Link
    peers: PeerManager | None = None
    peers_scope: trio.CancelScope | None = None
    # where signals for the current PeerManager go
    to_peers: trio.MemorySendChannel[WebRTCSignal] | None = None
    # a session on new settings that has not taken over yet, and its timer
    pending: _Link | None = None
    handover: trio.CancelScope | None = None

    @property
    def session(self) -> SignalingSession:
        return self.link.session


def _source_factories(
    config: Config,
) -> tuple[Callable[[], AnyVideoSource], Callable[[], AudioSource] | None]:
    from .media.factory import make_audio_source, make_video_source

    video, audio = config.video, config.audio
    make_audio = None if audio.source == "none" else partial(make_audio_source, audio)
    return (partial(make_video_source, video, config.camera),
            make_audio)  # type: ignore[return-value]


def build_media_hub(config: Config, health: HealthRegistry) -> MediaHub:
    """The media hub for the configured sources (video is always on; audio may be off)."""
    make_video, make_audio = _source_factories(config)
    return MediaHub(config.video, config.audio, make_video, make_audio, health=health,
                    playback=config.playback)


class Agent:
    """One device in one room."""

    def __init__(self, config_path: Path, config: Config, notifier: Notifier) -> None:
        self.config_path = config_path
        self.config = config
        self.notifier = notifier
        self.health = HealthRegistry()
        self.started_at = time.time()
        self.loaded_at = time.time()
        self._signaling: _Signaling | None = None
        self._config_problem: str | None = None
        self.hub: MediaHub | None = None

    # -- status -------------------------------------------------------------

    def status_line(self) -> str:
        sig = self._signaling
        line = sig.session.state_detail if sig else "starting"
        if sig and sig.session.state == "joined":
            n = len(sig.room.participants)
            line = (f"joined room {sig.room.name or sig.room.room_id} with {n} participant"
                    + ("" if n == 1 else "s"))
        if self._config_problem:
            line += f"; configuration error, running on the previous one: {self._config_problem}"
        return line

    def _publish_status(self, _text: str = "") -> None:
        self.notifier.status(self.status_line())

    # -- what observe reads (observe.view.AgentView) --------------------------

    @property
    def config_problem(self) -> str | None:
        """Why the last reload was refused (the previous configuration still runs)."""
        return self._config_problem

    @property
    def session(self) -> SignalingSession | None:
        """The signaling session serving the room (None before the first one starts)."""
        return self._signaling.session if self._signaling is not None else None

    @property
    def room(self) -> Room | None:
        """The room model (None before the first session starts)."""
        return self._signaling.room if self._signaling is not None else None

    @property
    def peers(self) -> Mapping[str, PeerSession]:
        """The peer sessions, by participant id."""
        sig = self._signaling
        return sig.peers.sessions if sig is not None and sig.peers is not None else {}

    @property
    def peers_refused(self) -> int:
        """Participants refused a session because ``peers.max_peers`` was reached (since
        the peers were last rebuilt)."""
        sig = self._signaling
        return sig.peers.refused if sig is not None and sig.peers is not None else 0

    # -- lifecycle ----------------------------------------------------------

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT; raises only for fatal errors."""
        t0 = time.monotonic()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with open_aio_loop(), trio.open_nursery() as nursery:
                self.hub = build_media_hub(self.config, self.health)
                await nursery.start(self.hub.run)
                await nursery.start(self._run_signaling, self.config)
                if self.config.observe.address is not None:
                    from .observe import run_observe  # its web stack only when it is on

                    nursery.start_soon(run_observe, self, self.config.observe.address)
                interval = watchdog_interval()
                if interval is not None:
                    nursery.start_soon(
                        feed_watchdog, self.notifier, interval, lambda: not self.health.failed()
                    )
                hang_file = testhooks.block_loop_file()  # test-only; None unless set
                if hang_file is not None:
                    nursery.start_soon(testhooks.block_loop_when_file_appears, hang_file)
                log.info("agent.ready", version=__version__, config=str(self.config_path),
                         room=self.config.room.id,
                         startup_ms=round((time.monotonic() - t0) * 1000))
                self.notifier.ready(self.status_line())
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        await self.reload(nursery)
                        continue
                    log.info("agent.stopping", signal=signal.Signals(signum).name)
                    self.notifier.stopping()
                    await self._stop()
                    nursery.cancel_scope.cancel()
                    break
        log.info("agent.stopped")

    async def _stop(self) -> None:
        with trio.move_on_after(STOP_TIMEOUT):
            if self._signaling is not None:
                await self._signaling.session.leave(timeout=STOP_TIMEOUT - 0.5)

    async def _run_signaling(
        self, config: Config, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """One room for as long as ``config``'s room stays: session, room model, peers.

        Cancelled through ``self._signaling.scope`` when a reload moves the
        agent to another room (or it has to start over on new settings).
        """
        with trio.CancelScope() as scope:
            room = Room(config.room.id)
            events = room.subscribe()
            async with trio.open_nursery() as nursery:
                link = self._new_link(config, room)
                sig = _Signaling(config, room, scope, nursery, link)
                await nursery.start(self._run_link, sig, link)
                await nursery.start(self._run_peers, sig)
                self._signaling = sig
                task_status.started()
                async with events:
                    async for _event in events:
                        self._publish_status()

    def _new_link(
        self, config: Config, room: Room, on_status: Callable[[str], None] | None = None
    ) -> _Link:
        tokens = token_source(config.server, config.auth)
        signals_in, signals_out = trio.open_memory_channel[WebRTCSignal](256)
        session = SignalingSession(config.server, room, tokens,
                                   on_status=on_status or self._publish_status,
                                   signals=signals_in)
        return _Link(session, tokens, signals_out)

    async def _run_link(
        self, sig: _Signaling, link: _Link, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run one session (and its token refresh) until its scope is cancelled.

        Its WebRTC signals reach the peers only while it is ``sig``'s current
        session: during a handover both sessions are in the room and the
        server relays every signal to both sockets, so the other copy is dropped.
        """
        with link.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(supervise, "signaling", link.session.run,
                                           health=self.health))
                if isinstance(link.tokens, LoginTokenSource):
                    nursery.start_soon(partial(supervise, "auth.refresh",
                                               link.tokens.refresh_loop, health=self.health))
                task_status.started()
                async with link.signals:
                    async for signal in link.signals:
                        if sig.link is not link or sig.to_peers is None:
                            continue
                        hand_over(sig.to_peers, signal)

    async def _run_peers(
        self, sig: _Signaling, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """One PeerManager for ``sig``'s room, until cancelled (to rebuild the peers).

        A manager started while the room is already joined is told who is
        there (a Reconciled event), so it reaches them like after a re-join.
        """
        assert self.hub is not None  # built by run() before any room
        config = sig.config
        with trio.CancelScope() as scope:
            peers = PeerManager(sig.session, self.hub, config.peers, config.ice,
                                config.video.codec)
            events_in, events_out = trio.open_memory_channel[RoomEvent](256)
            signals_in, signals_out = trio.open_memory_channel[WebRTCSignal](256)
            if sig.room.joined:
                events_in.send_nowait(Reconciled(tuple(sig.room.participants)))
            room_events = sig.room.subscribe()
            sig.peers, sig.peers_scope, sig.to_peers = peers, scope, signals_in

            async def forward() -> None:
                async with room_events, events_in:
                    async for event in room_events:
                        await events_in.send(event)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward)
                nursery.start_soon(peers.run, events_out, signals_out)
                task_status.started()

    # -- reload ---------------------------------------------------------------

    async def reload(self, nursery: trio.Nursery) -> None:
        """SIGHUP: validate the files again; apply what changed, or keep going as is.

        Validation comes first and covers everything (secrets included), so a
        bad edit never half-applies: the agent keeps the running configuration,
        and the log and systemd's STATUS say which file, key and why. A good one
        is applied part by part, touching only what the change concerns (see
        docs/decisions.md, "Device service and live reconfiguration").
        """
        self.notifier.reloading()
        log.info("config.reloading", path=str(self.config_path))
        try:
            new = load_checked(self.config_path)
        except ConfigError as exc:
            self._config_problem = "; ".join(str(e) for e in exc.errors)
            log.error("config.reload_failed", error=str(exc),
                      file=str(exc.file) if exc.file else None, key=exc.key, reason=exc.reason,
                      problems=len(exc.errors))
            self.notifier.ready(self.status_line())
            return
        old, self.config = self.config, new
        self._config_problem = None
        self.loaded_at = time.time()
        changed = [name for name in (*_APPLIED, "observe")
                   if getattr(old, name) != getattr(new, name)]
        log.info("config.reloaded", changed=changed, sources=[str(f) for f in new.sources])
        if "log" in changed:
            configure_logging(new.log.level, new.log.format)
        peers_rebuild = self._apply_media(old, new)
        sig = self._signaling
        if sig is not None:
            if old.room.id != new.room.id:
                await self._change_room(sig, new, nursery)
            else:
                if {"server", "auth"} & set(changed):
                    await self._start_handover(sig, new, nursery)
                self._apply_peers(sig, old, new, rebuild=peers_rebuild)
        if "observe" in changed:
            log.warning("config.restart_required", keys=["observe"],
                        reason="the observe endpoint is set up at start")
        if old.playback != new.playback:
            log.warning("config.restart_required", keys=["playback"],
                        reason="the speaker and the connections' audio direction are set up "
                               "at start")
        self.notifier.ready(self.status_line())

    def _apply_media(self, old: Config, new: Config) -> bool:
        """New video/audio settings into the running hub; True if peers must renegotiate."""
        assert self.hub is not None  # built by run() before any reload
        if old.video == new.video and old.audio == new.audio and old.camera == new.camera:
            return False
        make_video, make_audio = _source_factories(new)
        self.hub.reconfigure(new.video, new.audio, make_video, make_audio)
        if old.camera != new.camera and new.video.source == "picamera2" and (
                old.video.source == "picamera2"):
            self.hub.restart_video("camera settings changed")
        # The tracks a connection carries: per-peer raw frames or shared
        # packets, audio or none. Only a new negotiation can change those.
        return (old.video.encode != new.video.encode
                or (old.audio.source == "none") != (new.audio.source == "none"))

    def _apply_peers(self, sig: _Signaling, old: Config, new: Config, *, rebuild: bool) -> None:
        """Peer settings for the same room: rebuild the peers only when they must."""
        sig.config = new
        if sig.peers is None:
            return
        if rebuild or old.ice != new.ice:
            # ICE servers and relay policy are fixed for a connection's life,
            # and so are its tracks: new connections for everyone.
            log.info("peers.rebuilding", reason="ice" if old.ice != new.ice else "tracks",
                     peers=len(sig.peers.sessions))
            assert sig.peers_scope is not None
            sig.peers_scope.cancel()
            sig.to_peers = None
            sig.nursery.start_soon(self._run_peers, sig)
            return
        # Limits and timers apply from now on; new codec preference to new
        # connections (established ones keep what they negotiated).
        sig.peers.settings = new.peers
        sig.peers.video_codec = new.video.codec
        for session in sig.peers.sessions.values():
            session.settings = new.peers
            session.video_codec = new.video.codec

    async def _change_room(self, sig: _Signaling, new: Config, nursery: trio.Nursery) -> None:
        """Leave the old room (politely, bounded), then join the new one from scratch."""
        log.info("room.changing", old=sig.room.room_id, new=new.room.id)
        with trio.move_on_after(STOP_TIMEOUT):
            await sig.session.leave(timeout=STOP_TIMEOUT - 0.5)
        sig.scope.cancel()
        await nursery.start(self._run_signaling, new)

    async def _start_handover(self, sig: _Signaling, new: Config, nursery: trio.Nursery) -> None:
        """New server or credentials, same room: make the new session before breaking the old.

        The new session connects, authenticates and joins beside the old one;
        the moment it has joined as the same user it takes over (synchronously,
        in its status callback) and the old socket closes. The server still
        sees the user online, so nobody is told ``user_offline`` and the peer
        connections (which never depended on signaling) carry on untouched.

        Joined as someone else (the credentials belong to another account),
        or not joined within HANDOVER_TIMEOUT: start over on the new settings,
        peers included.
        """
        if sig.handover is not None:
            sig.handover.cancel()  # a reload during a handover: the newest wins
        if sig.pending is not None:
            sig.pending.scope.cancel()
        old_link = sig.link
        # Who the peers were negotiated as (None: never authenticated, so no peers).
        identity = old_link.session.user_id
        verdict: list[str] = []
        decided = trio.Event()

        def on_status(_text: str) -> None:
            if not decided.is_set() and link.session.state == "joined":
                if identity is None or link.session.user_id == identity:
                    link.session.room = sig.room
                    sig.link = link
                    if sig.peers is not None:
                        sig.peers.signaling = link.session
                    old_link.scope.cancel()
                    verdict.append("switched")
                else:
                    verdict.append("other user")
                decided.set()
            self._publish_status()

        staging = Room(new.room.id)  # the old session keeps the real one current
        link = self._new_link(new, staging, on_status)
        sig.pending = link
        await sig.nursery.start(self._run_link, sig, link)
        sig.config = new
        if old_link.session.state != "joined":
            # The old session serves nobody right now (it is reconnecting,
            # or its credentials were rejected): nothing to keep, drop it now.
            old_link.scope.cancel()

        async def settle() -> None:
            with trio.CancelScope() as scope:
                sig.handover = scope
                timeout = max(HANDOVER_TIMEOUT, 2 * new.server.connect_timeout)
                with trio.move_on_after(timeout):
                    await decided.wait()
                if verdict == ["switched"]:
                    log.info("signaling.handover", connects=link.session.connects,
                             user_id=link.session.user_id)
                    return
                reason = verdict[0] if verdict else f"not joined within {timeout:g} s"
                log.warning("signaling.handover_failed", reason=reason)
                link.scope.cancel()
                if self._signaling is sig:
                    sig.scope.cancel()
                    nursery.start_soon(self._run_signaling, self.config)
            if sig.handover is scope:
                sig.handover = None
            if sig.pending is link:
                sig.pending = None

        sig.nursery.start_soon(settle)

async def run_agent(config_path: Path, notifier: Notifier | None = None) -> None:
    """Load the configuration and run the agent (raises ConfigError when it is unusable)."""
    config = load_checked(config_path)
    configure_logging(config.log.level, config.log.format)
    agent = Agent(config_path, config, notifier or Notifier())
    await agent.run()
