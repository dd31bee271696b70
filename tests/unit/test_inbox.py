"""A peer's inbox: a flood of signals is bounded, the peer's own events never dropped."""

from __future__ import annotations

import trio

from glimpse_edge.rtc.inbox import Inbox


async def test_a_signal_flood_is_bounded_but_state_changes_get_through() -> None:
    inbox = Inbox[str](max_signals=5)
    accepted = [inbox.put_signal(f"candidate {i}") for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3 and inbox.dropped == 3
    inbox.put("connectionState connected")  # the full queue of signals does not matter
    with trio.fail_after(1):
        got = [await inbox.get() for _ in range(6)]
    assert got == [f"candidate {i}" for i in range(5)] + ["connectionState connected"]
    assert inbox.put_signal("offer"), "room again once the queued signals were taken"


async def test_own_events_are_never_dropped_however_many() -> None:
    inbox = Inbox[int](max_signals=1)
    for i in range(1000):
        inbox.put(i)
    with trio.fail_after(1):
        assert [await inbox.get() for _ in range(1000)] == list(range(1000))
