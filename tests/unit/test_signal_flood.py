"""Per-peer signal metering in the PeerManager: a flood from one peer is cut
to its bucket, and the others' signals all get through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing
from structlog.testing import capture_logs
from support.stubpeers import RunningManager, running_manager

from glimpse_edge.room import Room
from glimpse_edge.rtc import manager as manager_mod
from glimpse_edge.rtc.manager import TokenBucket
from glimpse_edge.signaling.messages import IceCandidate, WebRTCSignal

FLOODER, VICTIM = "flooder-id", "victim-id"


def test_bucket_allows_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=50.0, burst=200, now=0.0)
    assert sum(bucket.take(0.0) for _ in range(1000)) == 200
    assert not bucket.take(0.0)
    assert sum(bucket.take(1.0) for _ in range(1000)) == 50  # one second refills 50
    assert not bucket.full(1.0)
    assert bucket.full(5.0)  # refills to the burst, never beyond
    assert sum(bucket.take(5.0) for _ in range(1000)) == 200


def test_bucket_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=10.0, burst=1, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert bucket.take(10.2)  # 0.1 s refills one token (0.2: clear of float rounding)


def _candidate(peer_id: str, n: int) -> WebRTCSignal:
    return WebRTCSignal(signal_type="ice-candidate", peer_id=peer_id,
                        signal=IceCandidate(candidate=f"candidate:{n} 1 udp 1 10.0.0.1 9 typ host",
                                            sdp_mid="0"))


@asynccontextmanager
async def _flooder_and_victim() -> AsyncIterator[RunningManager]:
    """A running manager with a session for each of FLOODER and VICTIM."""
    room = Room("r")
    room.reconcile("me", "Lobby", [])
    async with running_manager(room) as run:
        room.user_joined(FLOODER, "flooder")
        room.user_joined(VICTIM, "victim")
        await run.settle()
        assert run.live() == {FLOODER, VICTIM}
        yield run


async def test_flood_from_one_peer_does_not_starve_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with capture_logs() as logs:
        async with _flooder_and_victim() as run:
            for n in range(2000):  # 2000 at once from the flooder, 1 in 100 from the victim
                await run.signals.send(_candidate(FLOODER, n))
                if n % 100 == 0:
                    await run.signals.send(_candidate(VICTIM, n))
            await run.settle()  # the router drained the burst
            # virtual time: the flooder's bucket refills 50 tokens
            autojump_clock.jump(50 / manager_mod.SIGNAL_RATE)
            for n in range(100):
                await run.signals.send(_candidate(FLOODER, n))
            await run.settle()
    stubs = run.sessions
    assert len(stubs[VICTIM].delivered) == 20
    assert len(stubs[FLOODER].delivered) == manager_mod.SIGNAL_BURST + 50
    assert run.manager.signals_dropped == 2000 - manager_mod.SIGNAL_BURST + 50
    floods = [e for e in logs if e["event"] == "peer.signal_flood"]
    assert len(floods) == 1  # rate-limited: one line for the whole episode
    assert floods[0]["peer"] == FLOODER and floods[0]["dropped"] == 1


async def test_flood_lines_repeat_with_counts(autojump_clock: trio.abc.Clock) -> None:
    with capture_logs() as logs:
        async with _flooder_and_victim() as run:
            run.manager.signal_rate, run.manager.signal_burst = 1.0, 1
            for _ in range(30 * 10):  # 30 s of 10 signals a second (virtual time)
                await run.signals.send(_candidate(FLOODER, 0))
                await trio.sleep(0.1)
    floods = [e["dropped"] for e in logs if e["event"] == "peer.signal_flood"]
    assert len(floods) == 3  # every FLOOD_LOG_INTERVAL (10 s)
    assert floods[0] == 1 and all(d > 50 for d in floods[1:])


async def test_buckets_of_quiet_unknown_peers_are_forgotten(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with _flooder_and_victim() as run:
        for n in range(manager_mod.MAX_IDLE_BUCKETS + 10):  # a stranger a second
            await run.signals.send(_candidate(f"stranger-{n}", 0))
            await trio.sleep(1.0)
        assert run.manager.metered_peers <= manager_mod.MAX_IDLE_BUCKETS
