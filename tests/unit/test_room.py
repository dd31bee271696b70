"""The room model: membership messages become participant events, and what they do to peers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trio
import trio.testing
from support.stubpeers import TEST_TIMEOUT, StubSignaling, new_manager, running_manager

from glimpse_edge.config import PeersConfig
from glimpse_edge.room import (
    ParticipantAdded,
    ParticipantRemoved,
    Reconciled,
    Room,
    RoomEvent,
)
from glimpse_edge.rtc.manager import RECHECK_AFTER_JOIN
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


async def test_kept_session_ends_when_a_later_list_still_omits_them(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Issue 9: connected but not listed after a re-join is kept for the grace, not forever."""
    room = Room("r")
    signaling = StubSignaling(room)
    async with running_manager(room, signaling) as run:
        room.reconcile(ME, "Lobby", [RoomUser(ALICE, "alice", True), RoomUser(BOB, "bob", True)])
        await run.settle()
        assert run.live() == {ALICE, BOB}
        signaling.connects = 2
        room.reconcile(ME, "Lobby", [])  # a server restart, and we were back first
        await run.settle()
        manager = run.manager
        for peer in (ALICE, BOB):
            assert manager.is_kept(peer) and not run.sessions[peer].in_room
        assert run.live() == {ALICE, BOB}
        await trio.sleep(manager.kept_grace / 2)
        room.reconcile(ME, "Lobby", [])  # within the grace: still kept
        await run.settle()
        assert run.live() == {ALICE, BOB}
        await trio.sleep(manager.kept_grace / 2)
        room.reconcile(ME, "Lobby", [RoomUser(ALICE, "alice", True)])  # the recheck's answer
        await run.settle()
        assert run.sessions[ALICE].in_room and not manager.is_kept(ALICE)
        assert run.live() == {ALICE}  # bob: gone for good, ended
        assert run.sessions[BOB].closed and not run.sessions[ALICE].closed
        # alice is a participant again: her user_offline ends her session
        room.user_left(ALICE, "user_offline")
        await run.settle()
        assert run.live() == set() and run.sessions[ALICE].closed


async def test_kept_participant_who_signals_is_back_and_can_leave(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A kept member who returns gets no user_joined; their signal makes them known."""
    room = Room("r")
    signaling = StubSignaling(room)
    async with running_manager(room, signaling) as run:
        room.reconcile(ME, "Lobby", [RoomUser(BOB, "bob", True)])
        await run.settle()
        signaling.connects = 2
        room.reconcile(ME, "Lobby", [])
        await run.settle()
        assert run.manager.is_kept(BOB)
        room.user_left(BOB, "user_offline")  # not in the room model: changes nothing yet
        await run.settle()
        assert run.live() == {BOB}
        candidate = WebRTCSignal(signal_type="ice-candidate", peer_id=BOB, signal=None)
        await run.signals.send(candidate)
        await run.settle()
        bob = run.sessions[BOB]
        assert bob.in_room and not run.manager.is_kept(BOB)
        assert bob.delivered == [candidate]
        assert room.get(BOB) is not None
        room.user_left(BOB, "user_offline")  # now it ends the session
        await run.settle()
        assert run.live() == set() and bob.closed


async def test_a_join_is_told_by_the_sessions_connection_count(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The manager reads SignalingSession.connects itself: a stand-in without it is
    an error, not a quiet "never joined" that skips the rechecks after a join."""
    room = Room("r")
    manager = new_manager(SimpleNamespace(room=room, user_id=ME), {})
    events = room.subscribe()
    _, signals = trio.open_memory_channel[WebRTCSignal](1)
    room.reconcile(ME, "Lobby", [])
    with trio.fail_after(TEST_TIMEOUT), pytest.raises(ExceptionGroup) as info:
        await manager.run(events, signals)
    assert info.group_contains(AttributeError, match="connects")

    signaling = StubSignaling(room)  # connects=1: the first join
    async with running_manager(room, signaling):
        room.reconcile(ME, "Lobby", [])
        await trio.sleep(RECHECK_AFTER_JOIN[0] - 0.1)
        assert signaling.asked == 0
        await trio.sleep(0.2)
        assert signaling.asked == 1  # the list is asked for again after the join


async def test_another_outage_during_the_grace_starts_it_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    """After each re-join everyone reconnects in their own time: the grace restarts."""
    room = Room("r")
    signaling = StubSignaling(room)
    async with running_manager(room, signaling) as run:
        room.reconcile(ME, "Lobby", [RoomUser(BOB, "bob", True)])
        await run.settle()
        signaling.connects = 2
        room.reconcile(ME, "Lobby", [])  # re-join after the first outage
        await run.settle()
        assert run.manager.is_kept(BOB)
        grace = run.manager.kept_grace
        await trio.sleep(grace)
        signaling.connects = 3
        room.reconcile(ME, "Lobby", [])  # re-join after a second outage: not yet
        await run.settle()
        assert run.live() == {BOB}
        await trio.sleep(grace / 2)
        room.reconcile(ME, "Lobby", [])  # a list within the new grace: still kept
        await run.settle()
        assert run.live() == {BOB} and run.manager.is_kept(BOB)
        await trio.sleep(grace / 2)
        room.reconcile(ME, "Lobby", [])  # the recheck's answer, a grace after that
        await run.settle()
        assert run.live() == set() and run.sessions[BOB].closed


async def test_peer_settings_reach_every_session_through_one_call(
    autojump_clock: trio.abc.Clock,
) -> None:
    room = Room("r")
    async with running_manager(room) as run:
        room.reconcile(ME, "Lobby", [RoomUser(CAROL, "carol", True)])
        await run.settle()
        settings = PeersConfig(max_peers=3)
        run.manager.apply(settings, "vp8")
        session = run.sessions[CAROL]
        assert run.manager.settings is settings and run.manager.video_codec == "vp8"
        assert session.settings is settings and session.video_codec == "vp8"


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
