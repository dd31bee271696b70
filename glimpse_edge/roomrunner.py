"""One room: its model, the signaling link that serves it, and the peers in it.

The :class:`RoomRunner` owns all three for as long as the agent stays in a
room, and is the one place that changes them:

- :meth:`RoomRunner.apply` takes a reloaded configuration and does what it
  asks of the room: a new room is a :meth:`~RoomRunner.rebuild`, a new server
  or credentials a :meth:`~RoomRunner.hand_over`, new ICE settings or tracks a
  rebuild of the peers, new limits and timers one call to
  :meth:`PeerManager.apply <glimpse_edge.rtc.manager.PeerManager.apply>`;
- :meth:`~RoomRunner.hand_over` makes a session on the new settings before it
  breaks the old one: peer connections carry on untouched;
- :meth:`~RoomRunner.rebuild` leaves the room and starts over (a new room, or
  a handover that could not complete);
- :attr:`~RoomRunner.joined` is the serving session's joined state, to await.

The agent keeps what belongs to the process (the media hub, observe, systemd,
the reload itself) and hands the room to its runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import structlog
import trio

from .config import Config
from .media.hub import MediaHub
from .room import Reconciled, Room, RoomEvent
from .rtc.manager import PeerManager
from .signaling.messages import WebRTCSignal
from .signaling.session import JoinedState, SignalingSession, hand_over
from .signaling.tokens import LoginTokenSource, token_source
from .supervise import HealthRegistry, supervise

if TYPE_CHECKING:
    from .display.state import DisplayState
    from .media.playback import Speaker

log = structlog.get_logger(__name__)

STOP_TIMEOUT = 4.0
# A replacement session (new server or credentials) gets this long to join
# before the old one is dropped anyway (at least twice its connect_timeout).
HANDOVER_TIMEOUT = 15.0

# Makes the signaling session of one link: ``config``'s server and credentials,
# serving ``room``, its WebRTC signals to ``signals``. The runner's default is a
# real SignalingSession; unit tests pass stand-ins they join and drop at will.
SignalingFactory = Callable[[Config, Room, trio.MemorySendChannel[WebRTCSignal]],
                            SignalingSession]


@dataclass
class _Link:
    """One signaling session and what it needs: its signals, its scope."""

    session: SignalingSession
    signals: trio.MemoryReceiveChannel[WebRTCSignal]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class RoomRunner:
    """The agent's presence in one room: the room model, its signaling link, its peers.

    The link can be replaced underneath (:meth:`hand_over`) while the room
    model and the peers stay; the peers can be rebuilt (new ICE settings, a
    different set of tracks) while the link stays; :meth:`rebuild` replaces
    all of it.
    """

    def __init__(self, config: Config, hub: MediaHub, health: HealthRegistry,
                 on_status: Callable[[], None], *, speaker: Speaker | None = None,
                 display: DisplayState | None = None,
                 signaling_factory: SignalingFactory | None = None) -> None:
        self.config = config
        self._new_signaling: SignalingFactory = signaling_factory or self._signaling
        self._hub = hub
        self._speaker = speaker
        # The kiosk display the peers show remote video on (None: [display] off).
        # The agent replaces it before an apply() that turns the display on or off.
        self.display = display
        self._health = health
        self._on_status = on_status
        self.room = Room(config.glimpse.room.id)
        self._link: _Link | None = None
        self.peers: PeerManager | None = None
        self._scope = trio.CancelScope()  # the current room's
        self._nursery: trio.Nursery | None = None
        self._up = trio.Event()  # set once the current room's tasks run
        self._peers_scope: trio.CancelScope | None = None
        # where signals for the current PeerManager go
        self._to_peers: trio.MemorySendChannel[WebRTCSignal] | None = None
        # a session on new settings that has not taken over yet, and its timer
        self._pending: _Link | None = None
        self._handover: trio.CancelScope | None = None

    # -- what the agent reads -------------------------------------------------

    @property
    def session(self) -> SignalingSession | None:
        """The session serving the room (None before the first one starts)."""
        return self._link.session if self._link is not None else None

    @property
    def joined(self) -> JoinedState:
        """The serving session's joined state (``await runner.joined.wait()``)."""
        assert self._link is not None, "run() has not started"
        return self._link.session.joined

    # -- lifecycle ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The room of ``self.config``, then the next one after every :meth:`rebuild`."""
        while True:
            await self._run_room(self.config, task_status)
            task_status = trio.TASK_STATUS_IGNORED

    async def _run_room(self, config: Config, task_status: trio.TaskStatus[None]) -> None:
        """One room, until :meth:`rebuild` cancels its scope."""
        with trio.CancelScope() as scope:
            self._scope = scope
            room = self.room = Room(config.glimpse.room.id)
            events = room.subscribe()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                link = self._link = self._new_link(config, room)
                self._peers_scope = self._to_peers = self.peers = None
                self._pending = self._handover = None
                await nursery.start(self._run_link, link)
                await nursery.start(self._run_peers, config)
                self._up.set()
                task_status.started()
                async with events:
                    async for _event in events:
                        self._on_status()

    async def leave(self, timeout: float = STOP_TIMEOUT - 0.5) -> None:
        """Leave the room politely (bounded): on shutdown and before a rebuild."""
        if self._link is not None:
            await self._link.session.leave(timeout=timeout)

    async def rebuild(self, config: Config) -> None:
        """Leave the room (politely, bounded), then join ``config``'s from scratch."""
        log.info("room.changing", old=self.room.room_id, new=config.glimpse.room.id)
        with trio.move_on_after(STOP_TIMEOUT):
            await self.leave()
        up = self._start_over(config)
        await up.wait()

    def _start_over(self, config: Config) -> trio.Event:
        """End the current room; run() starts ``config``'s. Set once it runs."""
        self.config = config
        self._up = trio.Event()
        self._scope.cancel()
        return self._up

    # -- reload ---------------------------------------------------------------

    async def apply(self, old: Config, new: Config, *, new_tracks: bool) -> None:
        """What a reload from ``old`` to ``new`` changes for the room.

        ``new_tracks``: the connections must carry other tracks (the media
        changed), so every peer is negotiated afresh; so must they when the
        display is turned on or off (the video's direction changes; the agent
        has set :attr:`display` already).
        """
        if old.glimpse.room.id != new.glimpse.room.id:
            await self.rebuild(new)
            return
        if old.server != new.server or old.auth != new.auth:
            await self.hand_over(new)
        self.config = new
        if self.peers is None:
            return
        display = old.display.enabled != new.display.enabled
        if new_tracks or display or old.ice != new.ice:
            # ICE servers and relay policy are fixed for a connection's life,
            # and so are its tracks and their directions (the display
            # receives video): new connections for everyone.
            reason = "ice" if old.ice != new.ice else "display" if display else "tracks"
            log.info("peers.rebuilding", reason=reason, peers=len(self.peers.sessions))
            assert self._peers_scope is not None and self._nursery is not None
            self._peers_scope.cancel()
            self._to_peers = None
            self._nursery.start_soon(self._run_peers, new)
            return
        self.peers.apply(new.peers, new.video.codec)

    async def hand_over(self, new: Config) -> None:
        """New server or credentials, same room: make the new session before breaking the old.

        The new session connects, authenticates and joins beside the old one;
        once it has joined as the same user it takes over and the old socket
        closes. The server still sees the user online, so nobody is told
        ``user_offline`` and the peer connections (which never depended on
        signaling) carry on untouched.

        Joined as someone else (the credentials belong to another account),
        or not joined within HANDOVER_TIMEOUT: start over on the new settings,
        peers included.
        """
        assert self._link is not None and self._nursery is not None
        if self._handover is not None:
            self._handover.cancel()  # a reload during a handover: the newest wins
        if self._pending is not None:
            self._pending.scope.cancel()
        old_link = self._link
        # Who the peers were negotiated as (None: never authenticated, so no peers).
        identity = old_link.session.user_id
        staging = Room(new.glimpse.room.id)  # the old session keeps the real one current
        link = self._new_link(new, staging)
        self._pending = link
        await self._nursery.start(self._run_link, link)
        self.config = new
        if old_link.session.state != "joined":
            # The old session serves nobody right now (it is reconnecting,
            # or its credentials were rejected): nothing to keep, drop it now.
            old_link.scope.cancel()
        self._nursery.start_soon(self._settle, link, old_link, identity, new)

    async def _settle(self, link: _Link, old_link: _Link, identity: str | None,
                      new: Config) -> None:
        """Wait for ``link`` to join; then it takes over, or the room starts over."""
        room_scope = self._scope
        with trio.CancelScope() as scope:
            self._handover = scope
            timeout = max(HANDOVER_TIMEOUT, 2 * new.glimpse.server.connect_timeout)
            reason = f"not joined within {timeout:g} s"
            with trio.move_on_after(timeout):
                while link.session.state != "joined":
                    await link.session.joined.wait()
                if identity is None or link.session.user_id == identity:
                    link.session.room = self.room
                    self._link = link
                    if self.peers is not None:
                        self.peers.signaling = link.session
                    old_link.scope.cancel()
                    self._on_status()
                    log.info("signaling.handover", connects=link.session.connects,
                             user_id=link.session.user_id)
                    reason = ""
                else:
                    reason = "other user"
            if reason:
                log.warning("signaling.handover_failed", reason=reason)
                link.scope.cancel()
                if self._scope is room_scope:
                    self._start_over(self.config)
        if self._handover is scope:
            self._handover = None
        if self._pending is link:
            self._pending = None

    # -- internals ------------------------------------------------------------

    def _new_link(self, config: Config, room: Room) -> _Link:
        signals_in, signals_out = trio.open_memory_channel[WebRTCSignal](256)
        return _Link(self._new_signaling(config, room, signals_in), signals_out)

    def _signaling(self, config: Config, room: Room,
                   signals: trio.MemorySendChannel[WebRTCSignal]) -> SignalingSession:
        """The real session (the default SignalingFactory)."""
        server, auth, _room = config.glimpse
        return SignalingSession(server, room, token_source(server, auth),
                                on_status=lambda _text: self._on_status(), signals=signals)

    async def _run_link(
        self, link: _Link, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run one session (and its token refresh) until its scope is cancelled.

        Its WebRTC signals reach the peers only while it is the serving
        session: during a handover both sessions are in the room and the
        server relays every signal to both sockets, so the other copy is dropped.
        """
        with link.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(supervise, "signaling", link.session.run,
                                           health=self._health))
                tokens = link.session.tokens
                if isinstance(tokens, LoginTokenSource):
                    nursery.start_soon(partial(supervise, "auth.refresh",
                                               tokens.refresh_loop, health=self._health))
                task_status.started()
                async with link.signals:
                    async for signal in link.signals:
                        if self._link is not link or self._to_peers is None:
                            continue
                        hand_over(self._to_peers, signal)

    async def _run_peers(
        self, config: Config, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """One PeerManager for the room, until cancelled (to rebuild the peers).

        A manager started while the room is already joined is told who is
        there (a Reconciled event), so it reaches them like after a re-join.
        """
        assert self._link is not None
        room = self.room
        with trio.CancelScope() as scope:
            peers = PeerManager(self._link.session, self._hub, config.peers, config.ice,
                                config.video.codec, speaker=self._speaker,
                                display=self.display)
            events_in, events_out = trio.open_memory_channel[RoomEvent](256)
            signals_in, signals_out = trio.open_memory_channel[WebRTCSignal](256)
            if room.joined:
                events_in.send_nowait(Reconciled(tuple(room.participants)))
            room_events = room.subscribe()
            self.peers, self._peers_scope, self._to_peers = peers, scope, signals_in

            async def forward() -> None:
                async with room_events, events_in:
                    async for event in room_events:
                        await events_in.send(event)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward)
                nursery.start_soon(peers.run, events_out, signals_out)
                task_status.started()
