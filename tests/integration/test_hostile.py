"""Hostile input through the full stack: a participant's garbage, relayed by the
dev server, never stops the agent nor the media of the others.

Hypothesis generates the ``webrtc_signal`` payloads (bad and huge SDP, wrong
types, candidates for transports that do not exist, answers nobody asked for).
They are drawn up front and sent over one connection, in batches; after each
batch the agent must still be running and another participant's frame count
must have grown. The dev server relays only to members of the sender's room
and rewrites ``peerId`` to the sender, so "unknown peers" reach the agent as
signals from a member it never negotiated with (mallory) or are refused by the
server ("Peer not connected"), both of which are sent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.agent import LIGHT_MEDIA, AgentProcess, write_config
from support.devserver import DevServer
from support.glimpse_client import GlimpseClient, create_room, register
from support.rtcpeer import BrowserPeer

JOIN_TIMEOUT = 20.0
AGENT_MAX_MESSAGE = 256 * 1024  # the agent's own limit, under the dev server's 1 MiB

MEDIA = LIGHT_MEDIA

VALID_SDP_LINES = [
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", "a=mid:0", "a=recvonly",
    "a=rtpmap:96 H264/90000", "a=ice-ufrag:abcd", "a=ice-pwd:" + "p" * 22,
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:active", "a=rtcp-mux",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:1", "a=rtpmap:111 opus/48000/2",
]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(
    max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)
sdp_text = st.one_of(
    st.text(max_size=200),
    # plausible SDP, lines shuffled, dropped or mangled
    st.lists(st.sampled_from(VALID_SDP_LINES) | st.text(max_size=30), max_size=25).map(
        lambda lines: "\r\n".join(lines) + "\r\n"),
    # huge: up to ~200 kB, under the agent's message limit
    st.integers(1, 4000).map(lambda n: "v=0\r\n" + ("a=x-junk:" + "z" * 40 + "\r\n") * n),
)
descriptions = st.fixed_dictionaries(
    {"sdp": sdp_text},
    optional={"type": st.sampled_from(["offer", "answer", "pranswer", "rollback", "", "x"])})
candidates = st.fixed_dictionaries(
    {"candidate": st.one_of(
        st.text(max_size=80),
        st.builds("candidate:{} 1 udp {} {} {} typ host".format,
                  st.integers(0, 10), st.integers(0, 2**32), st.ip_addresses().map(str),
                  st.integers(0, 65535)))},
    optional={"sdpMid": st.none() | st.text(max_size=4) | st.integers(),
              "sdpMLineIndex": st.none() | st.integers(-5, 10) | st.text(max_size=3),
              "usernameFragment": st.none() | st.text(max_size=8)})
signals = st.tuples(
    st.sampled_from(["offer", "answer", "ice-candidate"]),
    st.one_of(descriptions, candidates, json_values),
)


def draw_signals(n: int) -> list[tuple[str, Any]]:
    """``n`` examples from hypothesis (drawn up front: one agent, one connection)."""
    drawn: list[tuple[str, Any]] = []

    @settings(max_examples=n, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(signals)
    def collect(example: tuple[str, Any]) -> None:
        drawn.append(example)

    collect()
    return drawn


async def _scene(devserver: DevServer, tmp_path: Path, nursery: trio.Nursery,
                 extra_server: dict[str, Any] | None = None
                 ) -> tuple[str, str, dict[str, str], AgentProcess]:
    tokens = {}
    ids = {}
    for name in ("device", "owner", "bob", "mallory"):
        ids[name], tokens[name] = await register(devserver.api_url, name, f"{name}-password")
    room_id = await create_room(devserver.api_url, tokens["owner"], "Room")
    agent = AgentProcess(write_config(
        tmp_path, ws_url=devserver.ws_url, room_id=room_id, token=tokens["device"],
        log_level="info", extra=MEDIA,
        server={"max_message_size": AGENT_MAX_MESSAGE, **(extra_server or {})}))
    await agent.start(nursery)
    await agent.wait_for("room.joined", timeout=JOIN_TIMEOUT)
    return room_id, ids["device"], tokens, agent


def _no_errors(agent: AgentProcess) -> None:
    assert agent.returncode is None, agent.stderr[-2000:]
    errors = [e for e in agent.events if e.get("level") in ("error", "critical")]
    assert not errors, json.dumps(errors[:3], indent=1)[:4000]


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_generated_garbage_never_stops_the_agent_nor_the_others(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    room_id, device_id, tokens, agent = await _scene(devserver, tmp_path, nursery)
    examples = draw_signals(150)
    bob = BrowserPeer("bob")
    async with bob.joined(devserver.ws_url, tokens["bob"], room_id), \
            GlimpseClient("mallory") as mallory:
        await bob.wait_frames(device_id, video=15)
        await mallory.connect(devserver.ws_url)
        await mallory.authenticate(tokens["mallory"])
        mark = len(agent.events)
        await mallory.join(room_id)
        # the agent offers to mallory, who never answers properly: a live session to hit
        await agent.wait_for("peer.added", since=mark, peer=mallory.user_id)
        for start in range(0, len(examples), 25):
            frames = bob.received[device_id].video_frames
            for kind, payload in examples[start:start + 25]:
                await mallory.signal(room_id, device_id, kind, payload)
            await mallory.signal(room_id, "no-such-peer", "offer", {"sdp": "v=0"})
            await mallory.drain()  # the server has handled (relayed) the batch
            await bob.wait_frames(device_id, video=frames + 10, timeout=15)
            _no_errors(agent)
        # out of order: answers nobody asked for, candidates before any offer
        for kind, payload in [("answer", {"type": "answer", "sdp": "\r\n".join(VALID_SDP_LINES)}),
                              ("answer", {"type": "answer", "sdp": "v=0\r\n"}),
                              ("ice-candidate", {"candidate": "candidate:1 1 udp 1 1.2.3.4 9 "
                                                 "typ host", "sdpMid": "9"})] * 3:
            await mallory.signal(room_id, device_id, kind, payload)
        await mallory.drain()
        frames = bob.received[device_id].video_frames
        await bob.wait_frames(device_id, video=frames + 15)
    _no_errors(agent)
    await agent.stop()
    _no_errors(agent)


@pytest.mark.slow
async def test_oversized_messages_are_refused_by_both_limits(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    room_id, device_id, tokens, agent = await _scene(devserver, tmp_path, nursery)
    bob = BrowserPeer("bob")
    async with bob.joined(devserver.ws_url, tokens["bob"], room_id, reconnect=True):
        await bob.wait_frames(device_id, video=15)
        # over the dev server's 1 MiB frame limit: that socket is closed
        async with GlimpseClient("mallory") as mallory:
            await mallory.connect(devserver.ws_url)
            await mallory.authenticate(tokens["mallory"])
            await mallory.send_raw("x" * (1024 * 1024 + 1))
            code = await mallory.expect_closed()
            assert code in (1009, 1006, 1002), code
        # under the server's limit but over the agent's: the server relays it, the
        # agent's socket refuses it (1009) and the agent reconnects; bob's media,
        # on its own connection, never stops
        async with GlimpseClient("mallory2") as mallory:
            await mallory.connect(devserver.ws_url)
            await mallory.authenticate(tokens["mallory"])
            await mallory.join(room_id)
            mark = len(agent.events)
            frames = bob.received[device_id].video_frames
            huge = "v=0\r\n" + "a" * (AGENT_MAX_MESSAGE + 10)
            await mallory.signal(room_id, device_id, "offer", {"type": "offer", "sdp": huge})
            await agent.wait_for("signaling.reconnecting", since=mark)
            await agent.wait_for("room.joined", since=mark, timeout=JOIN_TIMEOUT)
            await bob.wait_frames(device_id, video=frames + 30)
    assert agent.returncode is None
    await agent.stop()


@pytest.mark.slow
async def test_a_flood_is_rate_limited_without_starving_the_others(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    room_id, device_id, tokens, agent = await _scene(devserver, tmp_path, nursery)
    bob = BrowserPeer("bob")
    async with bob.joined(devserver.ws_url, tokens["bob"], room_id), \
            GlimpseClient("mallory") as mallory:
        await bob.wait_frames(device_id, video=15)
        await mallory.connect(devserver.ws_url)
        await mallory.authenticate(tokens["mallory"])
        await mallory.join(room_id)
        mark = len(agent.events)
        candidate = {"candidate": "candidate:1 1 udp 1 10.9.9.9 9 typ host", "sdpMid": "0"}
        for _ in range(1500):
            await mallory.signal(room_id, device_id, "ice-candidate", candidate)
        flood = await agent.wait_for("peer.signal_flood", since=mark, peer=mallory.user_id)
        assert flood["dropped"] >= 1
        # bob's signals still get through while mallory floods: a renegotiation completes
        await bob.renegotiate(device_id)
        await bob.wait_until(lambda: bob.pc_for(device_id).signalingState == "stable",
                             "the agent's answer to bob's new offer", timeout=10)
        frames = bob.received[device_id].video_frames
        await bob.wait_frames(device_id, video=frames + 30)
        assert not agent.find("signaling.signal_dropped", since=mark)
    _no_errors(agent)
    await agent.stop()
