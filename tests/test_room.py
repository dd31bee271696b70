"""The room model: membership messages become participant events."""

from __future__ import annotations

import trio

from glimpse_edge.room import ParticipantAdded, ParticipantRemoved, Reconciled, Room, RoomEvent
from glimpse_edge.signaling.messages import RoomUser

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
