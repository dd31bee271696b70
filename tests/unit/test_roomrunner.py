"""The RoomRunner's own decisions, on stand-in signaling sessions (no server).

What a reload changes (the peers' settings in place, the peers rebuilt, the
link handed over, the room rebuilt), that the serving session's joined state
is awaitable, and that leaving is bounded. The sessions are made through the
runner's ``signaling_factory`` and joined or left by the test; the room model
and the PeerManager are the real ones (nobody else is in the room, so no peer
connection is made).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import msgspec
import pytest
import trio
import trio.testing

from glimpse_edge import roomrunner
from glimpse_edge.config import AuthConfig, Config, IceConfig, PeersConfig, RoomConfig, ServerConfig
from glimpse_edge.media.hub import MediaHub
from glimpse_edge.room import Room
from glimpse_edge.roomrunner import RoomRunner
from glimpse_edge.signaling.messages import OutgoingMessage, RoomUser, WebRTCSignal
from glimpse_edge.signaling.session import JoinedState, SignalingSession
from glimpse_edge.supervise import HealthRegistry

ME = "me-id"
# Virtual seconds a test may take (autojump clock): a deadlock fails, not hangs.
TEST_TIMEOUT = 600.0

BASE = Config(server=ServerConfig(ws_url="ws://server-a/ws"),
              auth=AuthConfig(token_file=Path("/nonexistent/token")),
              room=RoomConfig(id="lobby"))


def changed(config: Config, **sections: object) -> Config:
    return msgspec.structs.replace(config, **sections)


@dataclass
class StubSignaling:
    """Stands in for a SignalingSession: the test joins it (:meth:`join`); its run
    lasts until the runner cancels it; ``leave_for`` makes leave take that long
    (ignoring its timeout, as a stuck socket would)."""

    config: Config
    room: Room
    signals: trio.MemorySendChannel[WebRTCSignal]
    tokens: object = None
    user_id: str | None = None
    connects: int = 0
    state: str = "starting"
    joined: JoinedState = field(default_factory=JoinedState)
    running: bool = False
    ended: bool = False
    leave_for: float = 0.0
    left_with: list[float] = field(default_factory=list)

    def join(self, user_id: str = ME) -> None:
        """Authenticated as ``user_id`` and joined (an empty room), as the real one does."""
        self.user_id = user_id
        self.connects += 1
        self.room.reconcile(user_id, "Lobby", [RoomUser(user_id, "me", True)])
        self.state = "joined"
        self.joined.set()

    async def run(self) -> None:
        self.running = True
        try:
            await trio.sleep_forever()
        finally:
            self.running, self.ended = False, True

    async def leave(self, timeout: float = 2.0) -> None:
        self.left_with.append(timeout)
        await trio.sleep(self.leave_for)

    async def refresh_room(self) -> bool:
        return True

    async def send(self, message: OutgoingMessage) -> bool:
        return True


@dataclass
class Harness:
    runner: RoomRunner
    made: list[StubSignaling]  # every session the runner made, in order

    @property
    def serving(self) -> StubSignaling:
        return cast(StubSignaling, self.runner.session)


@asynccontextmanager
async def running(config: Config = BASE) -> AsyncIterator[Harness]:
    """A runner on ``config``, running (its first session made, not yet joined)."""
    made: list[StubSignaling] = []

    def factory(config: Config, room: Room,
                signals: trio.MemorySendChannel[WebRTCSignal]) -> SignalingSession:
        made.append(StubSignaling(config, room, signals))
        return cast(SignalingSession, made[-1])

    runner = RoomRunner(config, cast(MediaHub, None), HealthRegistry(), lambda: None,
                        signaling_factory=factory)
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            yield Harness(runner, made)
            nursery.cancel_scope.cancel()


@contextmanager
def no_new_session(h: Harness) -> Iterator[None]:
    before = len(h.made)
    yield
    assert len(h.made) == before


async def test_joined_is_the_serving_sessions_state_to_await(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as h:
        assert not h.runner.joined.is_set()
        woke: list[float] = []

        async def waiter() -> None:
            await h.runner.joined.wait()
            woke.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not woke  # not joined yet: the wait waits
            await trio.sleep(3.0)
            h.serving.join()
        assert woke == [3.0]
        await h.runner.joined.wait()  # at once while joined


async def test_settings_only_change_reaches_the_peers_in_place(
    autojump_clock: trio.abc.Clock,
) -> None:
    """New limits and timers need no new connections: same link, same PeerManager."""
    async with running() as h:
        h.serving.join()
        await trio.testing.wait_all_tasks_blocked()
        session, peers = h.runner.session, h.runner.peers
        assert peers is not None
        new = changed(BASE, peers=PeersConfig(max_peers=3),
                      video=msgspec.structs.replace(BASE.video, codec="vp8"))
        with no_new_session(h):
            await h.runner.apply(BASE, new, new_tracks=False)
            await trio.testing.wait_all_tasks_blocked()
        assert h.runner.session is session and h.runner.peers is peers
        assert peers.settings is new.peers and peers.video_codec == "vp8"
        assert h.runner.config is new


@pytest.mark.parametrize("what", ["ice", "tracks"])
async def test_new_ice_or_tracks_rebuild_the_peers_on_the_same_link(
    autojump_clock: trio.abc.Clock, what: str,
) -> None:
    """ICE settings and tracks are fixed for a connection's life: a new PeerManager
    (everyone negotiated afresh), while the signaling link carries on."""
    async with running() as h:
        h.serving.join()
        await trio.testing.wait_all_tasks_blocked()
        session, peers = h.runner.session, h.runner.peers
        new = changed(BASE, ice=IceConfig(servers=())) if what == "ice" else BASE
        with no_new_session(h):
            await h.runner.apply(BASE, new, new_tracks=what == "tracks")
            await trio.testing.wait_all_tasks_blocked()
        assert h.runner.session is session and h.serving.running
        assert h.runner.peers is not None and h.runner.peers is not peers
        assert h.runner.peers.ice == new.ice
        assert h.runner.peers.signaling is session


async def test_a_new_room_leaves_the_old_and_starts_over(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as h:
        h.serving.join()
        await trio.testing.wait_all_tasks_blocked()
        old, old_room, old_peers = h.serving, h.runner.room, h.runner.peers
        new = changed(BASE, room=RoomConfig(id="kitchen"))
        await h.runner.apply(BASE, new, new_tracks=False)  # returns once the new room runs
        assert old.left_with and old.ended  # left politely, then dropped
        assert h.serving is not old and h.serving.running
        assert h.runner.room is not old_room and h.runner.room.room_id == "kitchen"
        assert h.serving.room is h.runner.room
        assert h.runner.peers is not old_peers and h.runner.config is new
        assert not h.runner.joined.is_set()  # the new session joins in its own time


async def test_a_new_server_is_handed_over_without_touching_room_or_peers(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The new session joins beside the old one and takes over once joined as the
    same user: the room model and the peers stay."""
    async with running() as h:
        h.serving.join()
        await trio.testing.wait_all_tasks_blocked()
        old, room, peers = h.serving, h.runner.room, h.runner.peers
        assert peers is not None
        new = changed(BASE, server=ServerConfig(ws_url="ws://server-b/ws"))
        await h.runner.apply(BASE, new, new_tracks=False)
        await trio.testing.wait_all_tasks_blocked()
        pending = h.made[-1]
        assert pending is not old and pending.config is new and pending.running
        assert h.serving is old and old.running  # still serving until the new one joins
        assert pending.room is not room  # a staging room: the old session keeps the real one
        await trio.sleep(1.0)
        pending.join(ME)
        await trio.testing.wait_all_tasks_blocked()
        assert h.serving is pending and pending.room is room
        assert old.ended and not old.left_with  # dropped, not left: nobody sees us go
        assert h.runner.room is room and h.runner.peers is peers
        assert peers.signaling is cast(SignalingSession, pending)


@pytest.mark.parametrize("outcome", ["other user", "never joins"])
async def test_a_handover_that_cannot_complete_starts_over(
    autojump_clock: trio.abc.Clock, outcome: str,
) -> None:
    async with running() as h:
        h.serving.join()
        await trio.testing.wait_all_tasks_blocked()
        old, room = h.serving, h.runner.room
        new = changed(BASE, server=ServerConfig(ws_url="ws://server-b/ws"))
        await h.runner.apply(BASE, new, new_tracks=False)
        pending = h.made[-1]
        if outcome == "other user":
            pending.join("someone-else")
            await trio.testing.wait_all_tasks_blocked()
        else:
            # at least twice the connect timeout: the new session may need a retry
            bound = max(roomrunner.HANDOVER_TIMEOUT, 2 * new.server.connect_timeout)
            await trio.sleep(bound - 0.1)
            assert h.serving is old and pending.running  # still waiting for it
            await trio.sleep(0.2)
            await trio.testing.wait_all_tasks_blocked()
        assert old.ended and pending.ended
        fresh = h.made[-1]
        assert fresh not in (old, pending) and h.serving is fresh and fresh.running
        assert fresh.config is new and h.runner.room is not room


async def test_leave_hands_its_bound_to_the_serving_session(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as h:
        h.serving.join()
        await h.runner.leave(timeout=1.5)
        assert h.serving.left_with == [1.5]
        await h.runner.leave()
        assert h.serving.left_with[-1] == roomrunner.STOP_TIMEOUT - 0.5


async def test_a_rebuild_is_bounded_when_leaving_hangs(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A server that never confirms the leave (and a socket that never closes)
    delays a new room by STOP_TIMEOUT at most."""
    async with running() as h:
        h.serving.join()
        old = h.serving
        old.leave_for = 3600.0
        start = trio.current_time()
        await h.runner.apply(BASE, changed(BASE, room=RoomConfig(id="kitchen")), new_tracks=False)
        assert trio.current_time() - start == pytest.approx(roomrunner.STOP_TIMEOUT)
        assert old.ended and h.serving is not old and h.runner.room.room_id == "kitchen"
