"""A PeerManager on stand-in sessions and signaling, driven through its public surface.

Unit tests of what room events and signals do to peer sessions need no
network and no aiortc: :func:`running_manager` runs a real
:class:`~glimpse_edge.rtc.manager.PeerManager` whose sessions are
:class:`StubSession` (made by its ``session_factory`` when the room's events
start them), fed by a real :class:`~glimpse_edge.room.Room` and a signal
channel, exactly as the room runner feeds it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import trio
import trio.testing

from glimpse_edge.config import IceConfig, PeersConfig
from glimpse_edge.media.hub import MediaHub
from glimpse_edge.room import Participant, Room
from glimpse_edge.rtc.manager import PeerManager
from glimpse_edge.rtc.peer import PeerSession, SendSignal, StartMode
from glimpse_edge.signaling.messages import OutgoingMessage, WebRTCSignal
from glimpse_edge.signaling.session import SignalingSession

ME = "me"
# Virtual seconds a test may take (autojump clock): a deadlock fails, not hangs.
TEST_TIMEOUT = 600.0


@dataclass
class StubSession:
    """Stands in for a PeerSession: connected at once, runs until ended, records signals."""

    participant: Participant
    mode: StartMode
    state: str = "connected"
    in_room: bool = True
    settings: PeersConfig | None = None
    video_codec: str | None = None
    delivered: list[WebRTCSignal] = field(default_factory=list)
    closed: bool = False

    @property
    def peer_id(self) -> str:
        return self.participant.user_id

    def deliver(self, signal: WebRTCSignal) -> None:
        self.delivered.append(signal)

    async def run(self, mode: StartMode) -> None:
        self.mode = mode
        await trio.sleep_forever()

    async def close(self) -> None:
        self.closed = True


@dataclass
class StubSignaling:
    """Stands in for the SignalingSession: the parts the PeerManager reads and calls.

    ``connects`` counts connections, as the real one does: a Reconciled seen on
    a new count is a (re-)join. ``asked`` counts the lists asked for again.
    """

    room: Room
    user_id: str | None = ME
    connects: int = 1
    asked: int = 0
    sent: list[OutgoingMessage] = field(default_factory=list)

    async def refresh_room(self) -> bool:
        self.asked += 1
        return True

    async def send(self, message: OutgoingMessage) -> bool:
        self.sent.append(message)
        return True


@dataclass
class RunningManager:
    """A running PeerManager, the sessions it made, and the channel its signals come on."""

    manager: PeerManager
    sessions: dict[str, StubSession]  # every session made, by peer (the latest per peer)
    signals: trio.MemorySendChannel[WebRTCSignal]

    async def settle(self) -> None:
        """Let the manager act on everything sent so far (nothing left to run)."""
        await trio.testing.wait_all_tasks_blocked()

    def live(self) -> set[str]:
        """Peers with a running session."""
        return set(self.manager.sessions)


def new_manager(signaling: Any, made: dict[str, StubSession]) -> PeerManager:
    """A PeerManager whose sessions are StubSessions (recorded in ``made``)."""

    def factory(participant: Participant, send: SendSignal) -> PeerSession:
        stub = made[participant.user_id] = StubSession(participant, mode="wait")
        return cast(PeerSession, stub)

    return PeerManager(cast(SignalingSession, signaling), cast(MediaHub, None), PeersConfig(),
                       IceConfig(servers=()), video_codec="h264", session_factory=factory)


@asynccontextmanager
async def running_manager(room: Room, signaling: Any = None) -> AsyncIterator[RunningManager]:
    """Run a manager on ``room``'s events (from now on) until the block ends."""
    signaling = signaling if signaling is not None else StubSignaling(room)
    made: dict[str, StubSession] = {}
    manager = new_manager(signaling, made)
    send, receive = trio.open_memory_channel[WebRTCSignal](10_000)
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(manager.run, room.subscribe(), receive)
            yield RunningManager(manager, made, send)
            nursery.cancel_scope.cancel()
