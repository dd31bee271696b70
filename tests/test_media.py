"""Media end to end: the agent process streams to aiortc peers acting as browsers."""

from __future__ import annotations

import json
import statistics
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import trio
from support.agent import AgentProcess, write_config
from support.devserver import DevServer
from support.glimpse_client import create_room, register
from support.rtcpeer import BrowserPeer

from glimpse_edge.rtc.aio import open_aio_loop

JOIN_TIMEOUT = 20.0
WIDTH, HEIGHT = 640, 360

MEDIA = f"""
[video]
source = "testpattern"
width = {WIDTH}
height = {HEIGHT}
framerate = 30
codec = "h264"
max_bitrate = 800000

[audio]
source = "tone"

[peers]
offer_wait = 0.5
connect_timeout = 6.0
dead_after = 3.0
"""


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with open_aio_loop(), trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def _account(server: DevServer, name: str) -> tuple[str, str]:
    return await register(server.api_url, name, f"{name}-password")


def agent_fds(agent: AgentProcess) -> int:
    return int(psutil.Process(agent.pid).num_fds())


async def test_two_peers_decode_video_and_audio_then_churn(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    _alice_id, alice_token = await _account(devserver, "alice")
    _bob_id, bob_token = await _account(devserver, "bob")
    device_id, device_token = await _account(devserver, "device")
    room_id = await create_room(devserver.api_url, alice_token, "Room")
    alice = BrowserPeer("alice", read_codes=True)
    bob = BrowserPeer("bob")
    async with alice.joined(devserver.ws_url, alice_token, room_id):
        agent = AgentProcess(write_config(tmp_path, ws_url=devserver.ws_url, room_id=room_id,
                                          token=device_token, log_level="info", extra=MEDIA))
        await agent.start(nursery)
        await agent.wait_for("room.joined", timeout=JOIN_TIMEOUT)
        # alice was there first: she offers to the newcomer (the agent) on user_joined
        got = await alice.wait_frames(device_id, video=60, audio=20)
        assert got.sizes == {(WIDTH, HEIGHT)}, got.sizes
        async with bob.joined(devserver.ws_url, bob_token, room_id):
            # bob joins after the agent: the agent offers to him
            got_bob = await bob.wait_frames(device_id, video=60, audio=20)
            assert got_bob.sizes == {(WIDTH, HEIGHT)}
            assert bob.offers_received >= 1
            # the burned-in code: frames arrive in order, with plausible latency
            assert len(alice.received[device_id].codes) > 30
            latencies = [recv - sent for _c, sent, recv in alice.received[device_id].codes]
            print(f"glass-to-glass (loopback, 640x360): median "
                  f"{statistics.median(latencies):.0f} ms")

            baseline_peers = 2
            await agent.wait_for("peer.connected", count=2)
            fds_before = agent_fds(agent)
            # a third participant joins and leaves 20 times
            carol_id, carol_token = await _account(devserver, "carol")
            for i in range(20):
                carol = BrowserPeer(f"carol{i}")
                mark = len(agent.events)
                async with carol.joined(devserver.ws_url, carol_token, room_id, leave=True):
                    await agent.wait_for("peer.connected", since=mark, peer=carol_id)
                await agent.wait_for("peer.removed", since=mark, peer=carol_id,
                                     where=lambda e: e.get("peers") == baseline_peers)
            fds_after = agent_fds(agent)
            assert fds_after <= fds_before + 2, (fds_before, fds_after)
            # the others never stopped receiving
            a0, b0 = alice.received[device_id].video_frames, bob.received[device_id].video_frames
            await alice.wait_frames(device_id, video=a0 + 30)
            await bob.wait_frames(device_id, video=b0 + 30)
        await agent.stop()
    errors = [e for e in agent.events if e.get("level") == "error"]
    assert not errors, json.dumps(errors[:5], indent=1)
