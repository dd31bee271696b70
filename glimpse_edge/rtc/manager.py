"""Peer sessions for everyone in the room: who gets one, and when.

The manager turns room events and incoming signals into PeerSession tasks:

- a participant announced by ``user_joined`` is offered to at once (existing
  members call newcomers, as Glimpse browsers do);
- a participant found by reconciliation after a (re-)join gets
  ``offer_wait`` seconds to offer first, then we offer;
- an offer from someone we have no session with starts one that answers;
- ``user_left`` / ``user_offline`` end the session and free what it held;
- a participant the room no longer lists after our re-join, but whose media
  still flows, is *kept* (everyone reconnects in their own time after a server
  restart), for ``KEPT_GRACE`` seconds: then the manager asks for the list again
  (``join_room`` once more: a member gets ``room_joined`` and nobody else is
  told) and ends the session if they are still not listed. Nothing else would
  ever end it: a member who comes back produces no ``user_joined``, one who
  never comes back no ``user_left``, and a remote whose signaling died with
  the server may keep its connection (and our camera) open indefinitely;
- for the same reason the list is asked for again ``RECHECK_AFTER_JOIN`` and
  ``KEPT_GRACE`` seconds after every (re-)join: members who reconnected after
  us are reached then.

Signals are metered per remote peer by a token bucket (``SIGNAL_RATE`` per
second, bursts of ``SIGNAL_BURST``): what a flooding peer sends beyond that is
dropped here, before it reaches (and fills) its session's queue, so one peer's
flood costs the others nothing. Drops are logged as ``peer.signal_flood``, at
most once per ``FLOOD_LOG_INTERVAL`` per peer, with the count since the last line.

Each session runs in its own task under its own cancel scope; a session
that crashes is logged with its traceback and started again with back-off
(``SESSION_POLICY``), and nobody else notices. One that crashes more often
than the policy allows is given up on (``peer.gave_up``): the session ends,
and a later offer or join of that participant starts a fresh one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import structlog
import trio
from aiortc import RTCIceServer

from ..config import IceConfig, PeersConfig, read_secret_file
from ..introspect import resource_counts
from ..media.encoder import VideoCodec
from ..media.hub import MediaHub
from ..room import Participant, ParticipantAdded, ParticipantRemoved, Reconciled, RoomEvent
from ..signaling.messages import IceCandidate, SessionDescription, SignalType, WebRTCSignal
from ..signaling.session import SignalingSession
from ..supervise import Backoff, RestartPolicy, RestartTracker, TaskGaveUp
from .peer import PeerGone, PeerSession, SendSignal, StartMode
from .uplink import Uplink

if TYPE_CHECKING:
    from ..display.state import DisplayState
    from ..media.playback import Speaker

log = structlog.get_logger(__name__)

# A crashing session is restarted after a back-off; more than max_restarts
# crashes within the window end it (its participant's next offer starts anew).
SESSION_POLICY = RestartPolicy(name="peer-session", backoff=Backoff(initial=1.0, maximum=30.0),
                               max_restarts=10, window=300.0)

SIGNAL_RATE = 50.0  # signals per second and remote peer, sustained
SIGNAL_BURST = 200  # ... and at once (a browser's ICE trickle is a few dozen)
FLOOD_LOG_INTERVAL = 10.0  # seconds between peer.signal_flood lines per peer
MAX_IDLE_BUCKETS = 256  # full (idle) buckets are forgotten beyond this many
# Seconds a connected session whose participant is not listed after a re-join
# is kept before the list is asked for again (and the session ended if they are
# still not in it): enough for browsers to reconnect after a server restart
# (tests/faults: a peer back ~6 s after the agent keeps its connection).
KEPT_GRACE = 15.0
# Seconds after a (re-)join at which the list is asked for again (and at
# KEPT_GRACE): after a server restart members reconnect within a few seconds,
# announced to nobody. Measured in the soak: a viewer whose connection was being
# rebuilt at our re-join went 20 s without video when only KEPT_GRACE was asked.
RECHECK_AFTER_JOIN = (2.0, 5.0)

# Makes the session for one participant; ``send`` signals that participant.
# PeerManager's default builds a real PeerSession on the manager's current
# settings; tests pass stand-ins, created through the same start path.
SessionFactory = Callable[[Participant, SendSignal], PeerSession]


class TokenBucket:
    """A token bucket; time is an argument, so it is tested without a clock."""

    __slots__ = ("burst", "dropped", "logged_at", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now
        self.dropped = 0  # since the last peer.signal_flood line
        self.logged_at: float | None = None

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def take(self, now: float) -> bool:
        """True if one token was available (and is now spent)."""
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def full(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= self.burst


def ice_servers(config: IceConfig) -> list[RTCIceServer]:
    """aiortc's ICE servers from the configuration (TURN credentials read from files)."""
    servers = []
    for server in config.servers:
        credential = read_secret_file(server.credential_file) if server.credential_file else None
        servers.append(RTCIceServer(urls=list(server.urls), username=server.username or None,
                                    credential=credential))
    return servers


@dataclass
class _Entry:
    session: PeerSession
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    # trio time at which the room stopped listing the participant while the
    # connection was up (the session is "kept"); None while they are listed.
    kept_at: float | None = None


class PeerManager:
    """Owns one PeerSession per remote participant."""

    def __init__(
        self,
        signaling: SignalingSession,
        hub: MediaHub,
        settings: PeersConfig,
        ice: IceConfig,
        video_codec: VideoCodec,
        *,
        speaker: Speaker | None = None,
        display: DisplayState | None = None,
        session_factory: SessionFactory | None = None,
    ) -> None:
        self.signaling = signaling
        self.hub = hub
        self.speaker = speaker  # the speakerphone, for every session's remote audio
        self.display = display  # the kiosk display, for every session's remote video
        # the device's upload, one estimate shared by every session (rtc/uplink.py)
        self.uplink = Uplink()
        self.settings = settings
        self.ice = ice
        self.video_codec: VideoCodec = video_codec
        self._ice_servers = ice_servers(ice)
        self._new_session: SessionFactory = session_factory or self._peer_session
        self._entries: dict[str, _Entry] = {}
        self._nursery: trio.Nursery | None = None
        self.refused = 0
        self.signal_rate = SIGNAL_RATE
        self.signal_burst = SIGNAL_BURST
        self._buckets: dict[str, TokenBucket] = {}
        self.signals_dropped = 0
        self.kept_grace = KEPT_GRACE
        self._kept_changed = trio.Event()  # set: kept sessions or _list_due changed
        self._list_dues: list[float] = []  # when to ask for the list after the last join
        self._kept_retry_at = -math.inf  # no kept session is asked about before this
        self._joined_on: int | None = None  # signaling.connects of the last join seen

    def apply(self, settings: PeersConfig, video_codec: VideoCodec) -> None:
        """New limits and timers, from now on, for the manager and every session;
        the codec preference for new connections (established ones keep what
        they negotiated). ICE settings are fixed for a manager's life."""
        self.settings = settings
        self.video_codec = video_codec
        for entry in self._entries.values():
            entry.session.settings = settings
            entry.session.video_codec = video_codec

    @property
    def sessions(self) -> dict[str, PeerSession]:
        return {peer_id: e.session for peer_id, e in self._entries.items()}

    def is_kept(self, peer_id: str) -> bool:
        """Whether ``peer_id``'s session is *kept*: connected, but not listed by the
        room since our last re-join (it ends if a list after the grace omits them)."""
        entry = self._entries.get(peer_id)
        return entry is not None and entry.kept_at is not None

    @property
    def metered_peers(self) -> int:
        """How many remote peers have a signal bucket: bounded, since idle
        buckets of peers without a session are forgotten (MAX_IDLE_BUCKETS)."""
        return len(self._buckets)

    async def run(
        self,
        room_events: trio.MemoryReceiveChannel[RoomEvent],
        signals: trio.MemoryReceiveChannel[WebRTCSignal],
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._route_signals, signals)
                nursery.start_soon(self._recheck)
                async for event in room_events:
                    self._on_room_event(event)
        finally:
            self._nursery = None

    def _on_room_event(self, event: RoomEvent) -> None:
        if isinstance(event, ParticipantAdded):
            mode: StartMode = "offer" if event.reason == "user_joined" else "wait"
            self._start(event.participant, mode)
        elif isinstance(event, ParticipantRemoved):
            entry = self._entries.get(event.participant.user_id)
            if (event.reason == "reconciled" and entry is not None
                    and entry.session.state == "connected"):
                # Not listed after our re-join, but media still flows: after a
                # server restart everyone reconnects in their own time, and
                # tearing down a working connection because we were back first
                # would cut the picture the outage had spared. Kept until it
                # ends by itself (dead path, closed), the room lists them again,
                # or a list asked for ``kept_grace`` later still does not (see
                # _recheck).
                entry.session.in_room = False
                if entry.kept_at is None:
                    entry.kept_at = trio.current_time()
                    self._kept_changed.set()
                log.info("peer.kept", peer=event.participant.user_id,
                         username=event.participant.username,
                         reason="connected, though not listed after re-join",
                         grace=self.kept_grace)
                return
            self._stop(event.participant.user_id, event.reason)
        elif isinstance(event, Reconciled):
            listed = {p.user_id for p in event.participants}
            for participant in event.participants:
                self._start(participant, "wait")  # an existing session: marked in the room
            now = trio.current_time()
            # A (re-)join's list shows who had reconnected by then; members who
            # come back later are announced to nobody: ask again once, later.
            connects = self.signaling.connects
            new_join = connects != self._joined_on
            if new_join:
                self._joined_on = connects
                self._list_dues = sorted(now + d for d in (*RECHECK_AFTER_JOIN, self.kept_grace))
                self._kept_retry_at = -math.inf
                self._kept_changed.set()
            for peer_id, entry in list(self._entries.items()):
                if peer_id in listed or entry.kept_at is None:
                    continue
                if new_join:
                    entry.kept_at = now  # another outage: everyone reconnects again
                elif now - entry.kept_at >= self.kept_grace:
                    # Still not listed on a list asked for after the grace:
                    # they are gone, whatever their connection still does.
                    self._stop(peer_id, "not listed after grace")

    async def _recheck(self) -> None:
        """Ask the server for the room's list again, a few times after a (re-)join
        (``RECHECK_AFTER_JOIN``, ``kept_grace``) and ``kept_grace`` after a session
        was kept.

        The answer (``room_joined``) reconciles the room: whoever is listed and
        has no session gets one; a kept participant who is listed again is back
        in the room, one who is not is ended (see Reconciled in
        :meth:`_on_room_event`). With signaling down, nothing is asked: the
        re-join brings the list, and media keeps flowing meanwhile.
        """
        while True:
            kept_dues = [max(e.kept_at + self.kept_grace, self._kept_retry_at)
                         for e in self._entries.values() if e.kept_at is not None]
            dues = kept_dues + self._list_dues[:1]
            self._kept_changed = trio.Event()
            if not dues:
                await self._kept_changed.wait()
                continue
            now = trio.current_time()
            if now < min(dues):
                with trio.move_on_at(min(dues)):
                    await self._kept_changed.wait()
                continue
            after_join = bool(self._list_dues) and self._list_dues[0] <= now
            self._list_dues = [d for d in self._list_dues if d > now]
            if kept_dues and min(kept_dues) <= now:
                # the answer ends or re-admits them; if it never comes, ask again later
                self._kept_retry_at = now + self.kept_grace
            kept = [p for p, e in self._entries.items() if e.kept_at is not None]
            asked = await self.signaling.refresh_room()
            log.info("room.recheck", kept=kept, after_join=after_join, asked=asked)

    async def _route_signals(self, signals: trio.MemoryReceiveChannel[WebRTCSignal]) -> None:
        async for signal in signals:
            if not self._admit(signal, trio.current_time()):
                continue
            entry = self._entries.get(signal.peer_id)
            if entry is None:
                if signal.signal_type != "offer":
                    log.debug("peer.signal_for_unknown_peer", peer=signal.peer_id,
                              kind=signal.signal_type)
                    continue
                known = {p.user_id: p for p in self.signaling.room.participants}
                participant = known.get(signal.peer_id, Participant(signal.peer_id, ""))
                entry = self._start(participant, "answer")
                if entry is None:
                    continue
                if signal.peer_id not in known:
                    # Someone the room model never listed (a returning member,
                    # announced to nobody): record them, so that their
                    # user_left / user_offline ends this session too.
                    self.signaling.room.seen(signal.peer_id)
            elif entry.scope.cancel_called:
                continue  # being ended (they left): a late signal changes nothing
            elif entry.kept_at is not None:
                # Kept after our re-join, and back (members that return get no
                # user_joined): record them, so that their user_left /
                # user_offline ends this session.
                self._back_in_room(entry, "signal")
                if self.signaling.room.get(signal.peer_id) is None:
                    self.signaling.room.seen(signal.peer_id, entry.session.participant.username)
            entry.session.in_room = True  # whoever signals us is around
            entry.session.deliver(signal)

    def _admit(self, signal: WebRTCSignal, now: float) -> bool:
        """Meter ``signal`` against its peer's bucket; False: drop it (a flood)."""
        bucket = self._buckets.get(signal.peer_id)
        if bucket is None:
            if len(self._buckets) >= MAX_IDLE_BUCKETS:
                self._forget_idle_buckets(now)
            bucket = self._buckets[signal.peer_id] = TokenBucket(
                self.signal_rate, self.signal_burst, now)
        if bucket.take(now):
            return True
        bucket.dropped += 1
        self.signals_dropped += 1
        if bucket.logged_at is None or now - bucket.logged_at >= FLOOD_LOG_INTERVAL:
            log.warning("peer.signal_flood", peer=signal.peer_id, kind=signal.signal_type,
                        dropped=bucket.dropped, rate=self.signal_rate, burst=self.signal_burst)
            bucket.logged_at = now
            bucket.dropped = 0
        return False

    def _forget_idle_buckets(self, now: float) -> None:
        """Drop buckets that are full again: their peers are quiet (or gone)."""
        for peer_id in [p for p, b in self._buckets.items()
                        if p not in self._entries and b.full(now)]:
            del self._buckets[peer_id]

    def _start(self, participant: Participant, mode: StartMode) -> _Entry | None:
        if participant.user_id in self._entries or self._nursery is None:
            existing = self._entries.get(participant.user_id)
            if existing is not None:
                self._back_in_room(existing, "listed")
            return existing
        if self.signaling.user_id is None:
            return None
        if len(self._entries) >= self.settings.max_peers:
            self.refused += 1
            log.warning("peer.refused", peer=participant.user_id, username=participant.username,
                        reason="max_peers reached", max_peers=self.settings.max_peers)
            return None
        session = self._new_session(participant, partial(self._send, participant.user_id))
        entry = _Entry(session)
        self._entries[participant.user_id] = entry
        log.info("peer.added", peer=participant.user_id, username=participant.username,
                 mode=mode, peers=len(self._entries))
        self._nursery.start_soon(self._run_session, entry, mode)
        return entry

    def _peer_session(self, participant: Participant, send: SendSignal) -> PeerSession:
        """The real session (the default SessionFactory), on the current settings."""
        assert self.signaling.user_id is not None  # _start checked it
        return PeerSession(
            participant, self_id=self.signaling.user_id, hub=self.hub, speaker=self.speaker,
            display=self.display,
            settings=self.settings,
            ice_servers=self._ice_servers, relay_only=self.ice.relay_only,
            video_codec=self.video_codec, send=send, uplink=self.uplink,
        )

    def _back_in_room(self, entry: _Entry, how: str) -> None:
        entry.session.in_room = True
        if entry.kept_at is not None:
            log.info("peer.back_in_room", peer=entry.session.peer_id, how=how,
                     kept_for=round(trio.current_time() - entry.kept_at, 2))
            entry.kept_at = None

    def _stop(self, peer_id: str, reason: str) -> None:
        entry = self._entries.get(peer_id)
        if entry is not None:
            log.info("peer.removing", peer=peer_id, reason=reason)
            entry.scope.cancel()

    async def _run_session(self, entry: _Entry, mode: StartMode) -> None:
        session = entry.session
        tracker = RestartTracker(f"peer {session.peer_id}", SESSION_POLICY)
        try:
            with entry.scope:
                while True:
                    try:
                        await session.run(mode)
                    except PeerGone as gone:
                        log.info("peer.gone", peer=session.peer_id, reason=str(gone))
                        return
                    except Exception as exc:
                        try:
                            delay = tracker.failed(trio.current_time(), exc)
                        except TaskGaveUp:
                            log.error("peer.gave_up", peer=session.peer_id,
                                      crashes=tracker.recent, window=SESSION_POLICY.window)
                            return
                        log.error("peer.crashed", peer=session.peer_id, restart_in=round(delay, 2),
                                  exc_info=exc)
                        with trio.CancelScope(shield=True):
                            await session.close()
                        await trio.sleep(delay)
                        mode = "offer"
        finally:
            with trio.CancelScope(shield=True):
                await session.close()
            if self._entries.get(session.peer_id) is entry:
                del self._entries[session.peer_id]
                bucket = self._buckets.get(session.peer_id)
                if bucket is not None and bucket.full(trio.current_time()):
                    del self._buckets[session.peer_id]  # a flooder's stays until it refills
            # resource counts: a leak shows as a number that only grows
            log.info("peer.removed", peer=session.peer_id, peers=len(self._entries),
                     **resource_counts())

    async def _send(
        self, peer_id: str, kind: SignalType, payload: SessionDescription | IceCandidate | None
    ) -> bool:
        return await self.signaling.send(WebRTCSignal(
            signal_type=kind, peer_id=peer_id, room_id=self.signaling.room.room_id,
            signal=payload))

    async def close_all(self) -> None:
        """Cancel every session (their finally blocks close the connections)."""
        for entry in list(self._entries.values()):
            entry.scope.cancel()
