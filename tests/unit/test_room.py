"""The room model: membership messages become participant events, and what they do to peers."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
import trio.testing

from glimpse_edge.config import IceConfig, PeersConfig
from glimpse_edge.room import (
    Participant,
    ParticipantAdded,
    ParticipantRemoved,
    Reconciled,
    Room,
    RoomEvent,
)
from glimpse_edge.rtc.manager import PeerManager, _Entry
from glimpse_edge.rtc.peer import PeerSession
from glimpse_edge.signaling.messages import RoomUser, WebRTCSignal

ME, ALICE, BOB, CAROL = "me", "alice-id", "bob-id", "carol-id"


def drain(events: trio.MemoryReceiveChannel[RoomEvent]) -> list[RoomEvent]:
    out = []
    while True:
        try:
            out.append(events.receive_nowait())
        except trio.WouldBlock:
            return out


def test_reconcile_adds_active_others_and_ignores_self_and_offline() -> None:
    room = Room("r")
    events = room.subscribe()
    room.reconcile(ME, "Lobby", [RoomUser(ME, "me", True), RoomUser(ALICE, "alice", True),
                                 RoomUser(BOB, "bob", False)])
    assert [p.user_id for p in room.participants] == [ALICE]
    got = drain(events)
    assert isinstance(got[0], ParticipantAdded) and got[0].participant.user_id == ALICE
    assert isinstance(got[-1], Reconciled) and len(got[-1].participants) == 1


def test_events_follow_joins_and_leaves_and_ignore_own_id() -> None:
    room = Room("r")
    room.reconcile(ME, "Lobby", [])
    events = room.subscribe()
    room.user_joined(BOB, "bob")
    room.user_joined(BOB, "bob")  # duplicate: no second event
    room.user_joined(ME, "me")  # the server may echo us: ignored
    room.user_left(BOB, "user_offline")
    room.user_left(CAROL)  # unknown: nothing
    got = drain(events)
    assert [type(e).__name__ for e in got] == ["ParticipantAdded", "ParticipantRemoved"]
    assert isinstance(got[1], ParticipantRemoved) and got[1].reason == "user_offline"


def test_reconcile_after_reconnect_drops_who_left_and_adds_who_came() -> None:
    room = Room("r")
    room.reconcile(ME, "Lobby", [RoomUser(ALICE, "alice", True), RoomUser(BOB, "bob", True)])
    events = room.subscribe()
    # while we were away, bob left and carol came: no user_left / user_joined reached us
    room.reconcile(ME, "Lobby", [RoomUser(ALICE, "alice", True), RoomUser(CAROL, "carol", True)])
    got = drain(events)
    removed = [e.participant.user_id for e in got if isinstance(e, ParticipantRemoved)]
    added = [e.participant.user_id for e in got if isinstance(e, ParticipantAdded)]
    assert removed == [BOB] and added == [CAROL]
    assert sorted(p.user_id for p in room.participants) == [ALICE, CAROL]


def test_closed_subscriber_is_dropped() -> None:
    room = Room("r")
    events = room.subscribe()
    events.close()
    room.user_joined(ALICE, "alice")  # must not raise
    assert [p.user_id for p in room.participants] == [ALICE]


def test_a_participant_known_only_from_signals_can_leave() -> None:
    """A returning member is announced to nobody; their offer makes them known."""
    room = Room("r")
    room.reconcile(ME, "Lobby", [])
    events = room.subscribe()
    room.seen(CAROL)
    room.user_left(CAROL, "user_offline")
    got = drain(events)
    assert [type(e).__name__ for e in got] == ["ParticipantAdded", "ParticipantRemoved"]
    assert isinstance(got[0], ParticipantAdded) and got[0].reason == "signal"


# -- what the room's events do to peer sessions (PeerManager, stub sessions) --


@dataclass
class _StubSession:
    participant: Participant
    state: str = "connected"
    in_room: bool = True
    delivered: list[WebRTCSignal] = field(default_factory=list)

    @property
    def peer_id(self) -> str:
        return self.participant.user_id

    def deliver(self, signal: WebRTCSignal) -> None:
        self.delivered.append(signal)


def _manager_in(room: Room, *peers: tuple[str, str],
                signaling: Any = None) -> tuple[PeerManager, dict[str, _Entry]]:
    signaling = signaling or SimpleNamespace(room=room, user_id=ME, connects=1)
    manager = PeerManager(signaling, cast(Any, None), PeersConfig(), IceConfig(servers=()),
                          video_codec="h264")
    for user_id, name in peers:
        manager._entries[user_id] = _Entry(cast(PeerSession, _StubSession(
            Participant(user_id, name))))
    return manager, manager._entries


def _pump(manager: PeerManager, events: trio.MemoryReceiveChannel[RoomEvent]) -> None:
    for event in drain(events):
        manager._on_room_event(event)


async def test_kept_session_ends_when_a_later_list_still_omits_them(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Issue 9: connected but not listed after a re-join is kept for the grace, not forever."""
    room = Room("r")
    room.reconcile(ME, "Lobby", [RoomUser(ALICE, "alice", True), RoomUser(BOB, "bob", True)])
    manager, entries = _manager_in(room, (ALICE, "alice"), (BOB, "bob"))
    events = room.subscribe()
    room.reconcile(ME, "Lobby", [])  # a server restart, and we were back first
    _pump(manager, events)
    for entry in entries.values():
        assert entry.kept_at is not None and not entry.session.in_room
        assert not entry.scope.cancel_called
    await trio.sleep(manager.kept_grace / 2)
    room.reconcile(ME, "Lobby", [])  # within the grace: still kept
    _pump(manager, events)
    assert not any(e.scope.cancel_called for e in entries.values())
    await trio.sleep(manager.kept_grace / 2)
    room.reconcile(ME, "Lobby", [RoomUser(ALICE, "alice", True)])  # the recheck's answer
    _pump(manager, events)
    assert entries[ALICE].session.in_room and entries[ALICE].kept_at is None
    assert not entries[ALICE].scope.cancel_called
    assert entries[BOB].scope.cancel_called  # gone for good: ended
    # alice is a participant again: her user_offline ends her session
    room.user_left(ALICE, "user_offline")
    _pump(manager, events)
    assert entries[ALICE].scope.cancel_called


async def test_kept_participant_who_signals_is_back_and_can_leave(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A kept member who returns gets no user_joined; their signal makes them known."""
    room = Room("r")
    room.reconcile(ME, "Lobby", [RoomUser(BOB, "bob", True)])
    manager, entries = _manager_in(room, (BOB, "bob"))
    events = room.subscribe()
    room.reconcile(ME, "Lobby", [])
    _pump(manager, events)
    assert entries[BOB].kept_at is not None
    send, receive = trio.open_memory_channel[WebRTCSignal](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(manager._route_signals, receive)
        await send.send(WebRTCSignal(signal_type="ice-candidate", peer_id=BOB, signal=None))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert entries[BOB].session.in_room and entries[BOB].kept_at is None
    assert room.get(BOB) is not None
    _pump(manager, events)
    room.user_left(BOB, "user_offline")  # before: ignored (not in the room model)
    _pump(manager, events)
    assert entries[BOB].scope.cancel_called


async def test_a_join_is_told_by_the_sessions_connection_count(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The manager reads SignalingSession.connects itself: a stand-in without it is
    an error, not a quiet "never joined" that skips the rechecks after a join."""
    room = Room("r")
    room.reconcile(ME, "Lobby", [])
    manager, _ = _manager_in(room, signaling=SimpleNamespace(room=room, user_id=ME))
    with pytest.raises(AttributeError, match="connects"):
        manager._on_room_event(Reconciled(()))
    manager, _ = _manager_in(room)  # connects=1: the first join
    manager._on_room_event(Reconciled(()))
    assert manager._list_dues  # the list is asked for again after the join


async def test_another_outage_during_the_grace_starts_it_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    """After each re-join everyone reconnects in their own time: the grace restarts."""
    room = Room("r")
    room.reconcile(ME, "Lobby", [RoomUser(BOB, "bob", True)])
    signaling = SimpleNamespace(room=room, user_id=ME, connects=1)
    manager, entries = _manager_in(room, (BOB, "bob"), signaling=signaling)
    events = room.subscribe()
    room.reconcile(ME, "Lobby", [])  # re-join after the first outage
    _pump(manager, events)
    assert entries[BOB].kept_at is not None
    await trio.sleep(manager.kept_grace)
    signaling.connects = 2
    room.reconcile(ME, "Lobby", [])  # re-join after a second outage: not yet
    _pump(manager, events)
    assert not entries[BOB].scope.cancel_called
    await trio.sleep(manager.kept_grace)
    room.reconcile(ME, "Lobby", [])  # the recheck's answer, a grace after that
    _pump(manager, events)
    assert entries[BOB].scope.cancel_called


def test_peer_settings_reach_every_session_through_one_call() -> None:
    manager, entries = _manager_in(Room("r"), (CAROL, "carol"))
    settings = PeersConfig(max_peers=3)
    manager.apply(settings, "vp8")
    session = entries[CAROL].session
    assert manager.settings is settings and manager.video_codec == "vp8"
    assert session.settings is settings and session.video_codec == "vp8"  # type: ignore[attr-defined]


async def test_joined_state_is_awaitable_and_resets_when_the_session_drops() -> None:
    from glimpse_edge.signaling.session import JoinedState

    joined = JoinedState()
    with trio.move_on_after(0.01) as timer:
        await joined.wait()
    assert timer.cancelled_caught and not joined.is_set()
    joined.set()
    await joined.wait()  # at once while joined
    joined.clear()
    assert not joined.is_set()
    async with trio.open_nursery() as nursery:
        woke: list[bool] = []

        async def waiter() -> None:
            await joined.wait()
            woke.append(True)

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke
        joined.set()
    assert woke == [True]
