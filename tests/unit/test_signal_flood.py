"""Per-peer signal metering in the PeerManager: a flood from one peer is cut
to its bucket, and the others' signals all get through."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import trio
import trio.testing
from structlog.testing import capture_logs

from glimpse_edge.config import IceConfig, PeersConfig
from glimpse_edge.rtc import manager as manager_mod
from glimpse_edge.rtc.manager import PeerManager, TokenBucket, _Entry
from glimpse_edge.rtc.peer import PeerSession
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


@dataclass
class _StubSession:
    peer_id: str
    in_room: bool = False
    delivered: list[WebRTCSignal] = field(default_factory=list)

    def deliver(self, signal: WebRTCSignal) -> None:
        self.delivered.append(signal)


def _manager() -> tuple[PeerManager, dict[str, _StubSession]]:
    signaling: Any = object()  # routing known peers never touches signaling
    manager = PeerManager(signaling, cast(Any, None), PeersConfig(), IceConfig(servers=()),
                          video_codec="h264")
    stubs = {p: _StubSession(p) for p in (FLOODER, VICTIM)}
    for peer_id, stub in stubs.items():
        manager._entries[peer_id] = _Entry(cast(PeerSession, stub))
    return manager, stubs


def _candidate(peer_id: str, n: int) -> WebRTCSignal:
    return WebRTCSignal(signal_type="ice-candidate", peer_id=peer_id,
                        signal=IceCandidate(candidate=f"candidate:{n} 1 udp 1 10.0.0.1 9 typ host",
                                            sdp_mid="0"))


async def test_flood_from_one_peer_does_not_starve_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    manager, stubs = _manager()
    send, receive = trio.open_memory_channel[WebRTCSignal](10_000)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(manager._route_signals, receive)
            for n in range(2000):  # 2000 at once from the flooder, 1 in 100 from the victim
                await send.send(_candidate(FLOODER, n))
                if n % 100 == 0:
                    await send.send(_candidate(VICTIM, n))
            await trio.testing.wait_all_tasks_blocked()  # the router drained the burst
            # virtual time: the flooder's bucket refills 50 tokens
            autojump_clock.jump(50 / manager_mod.SIGNAL_RATE)
            for n in range(100):
                await send.send(_candidate(FLOODER, n))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert len(stubs[VICTIM].delivered) == 20
    assert len(stubs[FLOODER].delivered) == manager_mod.SIGNAL_BURST + 50
    assert manager.signals_dropped == 2000 - manager_mod.SIGNAL_BURST + 50
    floods = [e for e in logs if e["event"] == "peer.signal_flood"]
    assert len(floods) == 1  # rate-limited: one line for the whole episode
    assert floods[0]["peer"] == FLOODER and floods[0]["dropped"] == 1


async def test_flood_lines_repeat_with_counts(autojump_clock: trio.abc.Clock) -> None:
    manager, _stubs = _manager()
    manager.signal_rate, manager.signal_burst = 1.0, 1
    with capture_logs() as logs:
        now = 0.0
        for _ in range(30):  # 30 s of 10 signals a second
            for _ in range(10):
                manager._admit(_candidate(FLOODER, 0), now)
                now += 0.1
    floods = [e["dropped"] for e in logs if e["event"] == "peer.signal_flood"]
    assert len(floods) == 3  # every FLOOD_LOG_INTERVAL (10 s)
    assert floods[0] == 1 and all(d > 50 for d in floods[1:])


def test_buckets_of_quiet_unknown_peers_are_forgotten() -> None:
    manager, _stubs = _manager()
    for n in range(manager_mod.MAX_IDLE_BUCKETS + 10):
        manager._admit(_candidate(f"stranger-{n}", 0), float(n))
    assert len(manager._buckets) <= manager_mod.MAX_IDLE_BUCKETS
