"""A short soak: 100 join/leave cycles and 10 server restarts against one agent.

Leaks (peer connections, tasks, file descriptors, memory) show as numbers that
only grow. The agent logs its Trio task, asyncio task and fd counts with every
``peer.removed``; RSS is read with psutil. After a warm-up, RSS may grow by less
than 16 MiB and the counts must come back to their baseline, while a participant
that stays throughout keeps receiving. ``scripts/soak.py`` is the long version.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
import trio
from support.agent import LIGHT_MEDIA, AgentProcess, Event, write_config
from support.devserver import devserver_process
from support.glimpse_client import create_room, register
from support.rtcpeer import BrowserPeer

CYCLES = 100
CONCURRENT = 4  # churn peers at a time (2 cores: the agent, the server and the peers)
RESTARTS = 10
WARMUP_ROUNDS = 5  # 20 cycles: allocator arenas and caches settle
# The allocator warms up for a few hundred cycles, longer than this test:
# scripts/soak.py --minutes 8 made 4670 cycles; RSS grew 12 MB over the first
# minute (~500 cycles) and 0.9 MB over the next 4000. Here the 100 cycles after
# the warm-up grew it 8.8-10.6 MiB, with the encoder of 2026-12-05 and of
# 2026-12-06 alike (10.6 failed a clean-clone CI run at a 10 MiB limit). A leak
# of a connection's objects (well over 160 kB a cycle) still shows above this.
RSS_GROWTH_LIMIT = 16 * 2**20
JOIN_TIMEOUT = 20.0

MEDIA = LIGHT_MEDIA


def rss(agent: AgentProcess) -> int:
    return int(psutil.Process(agent.pid).memory_info().rss)


async def _churn_one(devserver_ws: str, room_id: str, name: str, token: str,
                     agent: AgentProcess) -> None:
    """A new member joins, gets connected (and a frame), leaves; the agent frees it."""
    peer = BrowserPeer(name)
    mark = len(agent.events)
    async with peer.joined(devserver_ws, token, room_id, leave=True):
        await agent.wait_for("peer.connected", since=mark, peer=peer.user_id,
                             timeout=JOIN_TIMEOUT)
    await agent.wait_for("peer.removed", since=mark, peer=peer.user_id, timeout=JOIN_TIMEOUT)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_churn_and_server_restarts_leak_nothing(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with devserver_process(tmp_path / "glimpse.db") as server:
        device_id, device_token = await register(server.api_url, "device", "device-password")
        _alice_id, alice_token = await register(server.api_url, "alice", "alice-password")
        _owner_id, owner_token = await register(server.api_url, "owner", "owner-password")
        # the owner never joins: alice is a new member, announced to the agent
        room_id = await create_room(server.api_url, owner_token, "Soak")
        tokens: list[tuple[str, str]] = []

        async def account(n: int) -> None:
            name = f"churn{n}"
            tokens.append((name, (await register(server.api_url, name, f"{name}-pw"))[1]))

        async with trio.open_nursery() as accounts:
            for n in range(CYCLES):
                accounts.start_soon(account, n)

        agent = AgentProcess(write_config(
            tmp_path / "agent", ws_url=server.ws_url, room_id=room_id, token=device_token,
            log_level="info", extra=MEDIA,
            server={"reconnect_min": 0.2, "reconnect_max": 1.0}))
        await agent.start(nursery)
        await agent.wait_for("room.joined", timeout=JOIN_TIMEOUT)
        alice = BrowserPeer("alice")
        alice.reconnect_delay = 0.3
        samples: list[tuple[int, Event, int]] = []  # (round, last peer.removed, rss)
        async with alice.joined(server.ws_url, alice_token, room_id, reconnect=True):
            await alice.wait_frames(device_id, video=15)
            rounds = [tokens[i:i + CONCURRENT] for i in range(0, CYCLES, CONCURRENT)]
            restart_every = len(rounds) // RESTARTS  # 25 rounds: a restart every 2
            restarts = 0
            for index, group in enumerate(rounds):
                async with trio.open_nursery() as churn:
                    for name, token in group:
                        churn.start_soon(_churn_one, server.ws_url, room_id, name, token, agent)
                removed = agent.find("peer.removed")[-1]
                samples.append((index, removed, rss(agent)))
                if restarts < RESTARTS and (index + 1) % restart_every == 0:
                    mark = len(agent.events)
                    frames = alice.received[device_id].video_frames
                    connects = alice.signaling_connects
                    await server.restart()
                    restarts += 1
                    await agent.wait_for("room.joined", since=mark, timeout=JOIN_TIMEOUT)
                    await alice.wait_until(lambda c=connects: alice.signaling_connects > c,
                                           "alice back in the room")
                    await alice.wait_frames(device_id, video=frames + 15)
            assert restarts == RESTARTS
            # alice, who stayed throughout, is still receiving
            frames = alice.received[device_id].video_frames
            await alice.wait_frames(device_id, video=frames + 30)
            final_rss = rss(agent)
        await agent.stop()

    warm = samples[WARMUP_ROUNDS - 1:WARMUP_ROUNDS + 2]
    late = samples[-3:]
    table = [(i, e["trio_tasks"], e["asyncio_tasks"], e["fds"], r // 2**20) for i, e, r in samples]
    print("round, trio tasks, asyncio tasks, fds, RSS MiB:", table)
    print(f"RSS after warm-up {warm[0][2] / 2**20:.1f} MiB, at the end {final_rss / 2**20:.1f} MiB")
    assert final_rss - warm[0][2] < RSS_GROWTH_LIMIT, (warm[0][2], final_rss)
    for key in ("trio_tasks", "asyncio_tasks", "fds"):
        baseline = max(e[key] for _i, e, _r in warm)
        # a leak grows with every cycle: even the least of the last rounds would be above
        assert min(e[key] for _i, e, _r in late) <= baseline, (key, table)
    errors = [e for e in agent.events if e.get("level") == "error"]
    assert not errors, json.dumps(errors[:5], indent=1)
