"""Media end to end: the agent process streams to aiortc peers acting as browsers."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import psutil
import trio
from support.agent import (
    STREAMING_HEIGHT,
    STREAMING_MEDIA,
    STREAMING_WIDTH,
    AgentProcess,
    write_config,
)
from support.alsa import AlsaTestDevices, dominant_frequency
from support.devserver import DevServer
from support.glimpse_client import GlimpseClient, create_room, register
from support.rtcpeer import BrowserPeer

JOIN_TIMEOUT = 20.0
WIDTH, HEIGHT = STREAMING_WIDTH, STREAMING_HEIGHT

MEDIA = STREAMING_MEDIA


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
            removals = agent.find("peer.removed", peer=carol_id)
            first = removals[0]
            for key in ("trio_tasks", "asyncio_tasks", "fds"):
                # After the first cycle everything is warm: nothing may grow. The
                # counts are snapshots, and the other two peers' sessions may have
                # a short task running at any one of them: a leak lifts all of the
                # last three (one per cycle), a passing task only one.
                last = [r[key] for r in removals[-3:]]
                assert min(last) <= first[key], (key, first[key], last)
            # the others never stopped receiving
            a0, b0 = alice.received[device_id].video_frames, bob.received[device_id].video_frames
            await alice.wait_frames(device_id, video=a0 + 30)
            await bob.wait_frames(device_id, video=b0 + 30)
        await agent.stop()
    errors = [e for e in agent.events if e.get("level") == "error"]
    assert not errors, json.dumps(errors[:5], indent=1)


async def _room_with_agent(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery, *names: str, media: str = MEDIA
) -> tuple[str, str, str, dict[str, str], AgentProcess]:
    """A room (its owner never joins), the agent in it, and tokens for ``names``.

    The participants are new members when they join, so everyone hears of
    them (a returning member is announced to nobody, as in Glimpse).
    """
    tokens = {name: (await _account(devserver, name))[1] for name in names}
    device_id, device_token = await _account(devserver, "device")
    _owner_id, owner_token = await _account(devserver, "owner")
    room_id = await create_room(devserver.api_url, owner_token, "Room")
    agent = AgentProcess(write_config(tmp_path, ws_url=devserver.ws_url, room_id=room_id,
                                      token=device_token, log_level="info", extra=media))
    await agent.start(nursery)
    await agent.wait_for("room.joined", timeout=JOIN_TIMEOUT)
    return room_id, device_id, device_token, tokens, agent


async def test_renegotiation_and_remote_restart_keep_media_flowing(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    room_id, device_id, _t, tokens, agent = await _room_with_agent(
        devserver, tmp_path, nursery, "alice", "bob")
    alice, bob = BrowserPeer("alice"), BrowserPeer("bob")
    async with alice.joined(devserver.ws_url, tokens["alice"], room_id), \
            bob.joined(devserver.ws_url, tokens["bob"], room_id):
        await alice.wait_frames(device_id, video=30)
        await bob.wait_frames(device_id, video=30)
        alice_id = alice.user_id
        # 1. renegotiation on the live connection: answered on that connection
        mark = len(agent.events)
        pc_before = alice.pc_for(device_id)
        await alice.renegotiate(device_id)
        await agent.wait_for("peer.renegotiating", since=mark, peer=alice_id)
        n = alice.received[device_id].video_frames
        await alice.wait_frames(device_id, video=n + 30)
        assert alice.pc_for(device_id) is pc_before
        assert not agent.find("peer.connection_closed", since=mark, peer=alice_id)
        # 2. a fresh offer (new connection, new ICE credentials) replaces ours
        mark = len(agent.events)
        await alice.offer(device_id, close_old_first=False)
        await agent.wait_for("peer.remote_restart", since=mark, peer=alice_id)
        await agent.wait_for("peer.connected", since=mark, peer=alice_id)
        n = alice.received[device_id].video_frames
        await alice.wait_frames(device_id, video=n + 30)
        # bob never noticed
        assert not agent.find("peer.connection_closed", since=mark, peer=bob.user_id)
        n = bob.received[device_id].video_frames
        await bob.wait_frames(device_id, video=n + 30)


async def test_dead_path_is_detected_and_replaced(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    room_id, device_id, _t, tokens, agent = await _room_with_agent(
        devserver, tmp_path, nursery, "alice", "bob")
    alice, bob = BrowserPeer("alice"), BrowserPeer("bob")
    async with alice.joined(devserver.ws_url, tokens["alice"], room_id), \
            bob.joined(devserver.ws_url, tokens["bob"], room_id):
        await alice.wait_frames(device_id, video=30)
        await bob.wait_frames(device_id, video=30)
        mark = len(agent.events)
        t0 = trio.current_time()
        alice.blackhole(device_id)
        restart = await agent.wait_for("peer.restarting", since=mark, peer=alice.user_id)
        detected = restart["_t"] - t0
        assert "no RTCP" in restart["reason"], restart
        await agent.wait_for("peer.connected", since=mark, peer=alice.user_id)
        n = alice.received[device_id].video_frames
        await alice.wait_frames(device_id, video=n + 30)
        recovered = trio.current_time() - t0
        print(f"dead path noticed after {detected:.2f} s (dead_after 3 s), "
              f"media back after {recovered:.2f} s")
        assert not agent.find("peer.restarting", since=mark, peer=bob.user_id)


async def test_bad_input_from_one_peer_does_not_touch_the_others(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    room_id, device_id, _t, tokens, agent = await _room_with_agent(
        devserver, tmp_path, nursery, "alice", "mallory")
    alice = BrowserPeer("alice")
    async with alice.joined(devserver.ws_url, tokens["alice"], room_id), \
            GlimpseClient("mallory") as mallory:
        await alice.wait_frames(device_id, video=30)
        await mallory.connect(devserver.ws_url)
        await mallory.authenticate(tokens["mallory"])
        await mallory.join(room_id)
        mallory_id = mallory.user_id
        # the agent offers to the newcomer; mallory answers with garbage
        offer = await mallory.expect("webrtc_signal", lambda m: m["signalType"] == "offer")
        assert "m=video" in offer["signal"]["sdp"]
        mark = len(agent.events)
        bad: list[tuple[str, object]] = [
            ("answer", {"type": "answer", "sdp": "v=0\r\nthis is not sdp\r\n"}),
            ("ice-candidate", {"candidate": "candidate:1 1 udp 1 192.0.2.9 9 typ host",
                               "sdpMid": "7", "sdpMLineIndex": 7}),
            ("ice-candidate", {"candidate": "candidate:garbage", "sdpMid": "0"}),
            ("answer", {"type": "answer", "sdp": "v=0\r\n"}),  # answer without an offer now
            ("offer", {"type": "offer", "sdp": "v=0\r\n" + "a=x\r\n" * 100_000}),  # ~700 kB
            ("offer", {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=video 9 "
                       "UDP/TLS/RTP/SAVPF 96\r\na=ice-ufrag:x\r\na=ice-pwd:y\r\n"}),
            ("offer", {"type": "answer", "sdp": "v=0"}),
        ]
        for kind, payload in bad:
            await mallory.signal(room_id, device_id, kind, payload)
        await agent.wait_for("peer.bad_signal", since=mark, count=3, peer=mallory_id)
        # alice kept receiving all along, and still does
        n = alice.received[device_id].video_frames
        await alice.wait_frames(device_id, video=n + 60)
        assert not agent.find("peer.connection_closed", since=mark, peer=alice.user_id)
        assert agent.process is not None and agent.process.returncode is None
        assert not agent.find("supervise.task_crashed", since=mark)


async def test_alsa_microphone_reaches_a_peer(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery, alsa_devices: AlsaTestDevices
) -> None:
    """Real alsa-lib (the file plugin playing a 1 kHz sine) → agent → Opus → a peer."""
    tokens = {"alice": (await _account(devserver, "alice"))[1]}
    device_id, device_token = await _account(devserver, "device")
    _owner_id, owner_token = await _account(devserver, "owner")
    room_id = await create_room(devserver.api_url, owner_token, "Room")
    extra = MEDIA.replace('source = "tone"',
                          f'source = "alsa"\ndevice = "{alsa_devices.mono}"')
    agent = AgentProcess(write_config(tmp_path, ws_url=devserver.ws_url, room_id=room_id,
                                      token=device_token, log_level="info", extra=extra))
    await agent.start(nursery)
    opened = await agent.wait_for("media.alsa.opened", timeout=JOIN_TIMEOUT)
    assert opened["rate"] == 48000 and opened["channels"] == 1, opened
    alice = BrowserPeer("alice", keep_audio=100)
    async with alice.joined(devserver.ws_url, tokens["alice"], room_id):
        got = await alice.wait_frames(device_id, video=1, audio=100)
    samples = np.concatenate([frame.reshape(-1) for frame in got.audio_samples[25:]])
    # aiortc decodes Opus to interleaved stereo: take the left channel
    left = samples[::2]
    freq = dominant_frequency(left, 48000)
    assert abs(freq - alsa_devices.frequency) < 5, f"expected ~1000 Hz, got {freq:.1f} Hz"


async def test_vp8_only_peer_gets_vp8_and_max_peers_refuses_extra_peers(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    tokens = {name: (await _account(devserver, name))[1] for name in ("alice", "bob")}
    device_id, device_token = await _account(devserver, "device")
    _owner_id, owner_token = await _account(devserver, "owner")
    room_id = await create_room(devserver.api_url, owner_token, "Room")
    alice = BrowserPeer("alice", video_codecs=["VP8"])
    bob = BrowserPeer("bob")
    async with alice.joined(devserver.ws_url, tokens["alice"], room_id):
        # alice is there first: she offers VP8 only when the agent arrives
        agent = AgentProcess(write_config(
            tmp_path, ws_url=devserver.ws_url, room_id=room_id, token=device_token,
            log_level="info", extra=MEDIA.replace("[peers]", "[peers]\nmax_peers = 1")))
        await agent.start(nursery)
        negotiated = await agent.wait_for("peer.negotiated", timeout=JOIN_TIMEOUT)
        assert negotiated["video"] == "vp8", negotiated
        await alice.wait_frames(device_id, video=30)
        await agent.wait_for("media.encoder.opened", codec="vp8")
        async with bob.joined(devserver.ws_url, tokens["bob"], room_id):
            refused = await agent.wait_for("peer.refused", timeout=JOIN_TIMEOUT)
            assert refused["username"] == "bob" and refused["max_peers"] == 1
            n = alice.received[device_id].video_frames
            await alice.wait_frames(device_id, video=n + 30)
        assert not agent.find("media.encoder.opened", codec="h264")


async def test_per_peer_encoding_streams_decodable_video(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """video.encode = "per-peer": aiortc's own encoder in the sender, fed raw frames.

    The frames must reach aiortc with the hub's 90 kHz time stamps (else no
    RTP timestamps, or none the jitter buffer can split frames on), and no
    shared video encoder may start; audio stays the shared Opus stream.
    """
    per_peer = MEDIA.replace("[video]\n", '[video]\nencode = "per-peer"\n')
    room_id, device_id, _t, tokens, agent = await _room_with_agent(
        devserver, tmp_path, nursery, "alice", media=per_peer)
    alice = BrowserPeer("alice", read_codes=True)
    async with alice.joined(devserver.ws_url, tokens["alice"], room_id):
        got = await alice.wait_frames(device_id, video=60, audio=20)
        assert got.sizes == {(WIDTH, HEIGHT)}, got.sizes
        negotiated = await agent.wait_for("peer.negotiated", peer=alice.user_id)
        assert negotiated["video"] == "h264", negotiated
        # the pictures are the source's, in capture order, each one whole
        counters = [counter for counter, _sent, _recv in got.codes]
        assert len(counters) > 30, len(counters)
        assert counters == sorted(counters) and len(set(counters)) == len(counters)
    await agent.stop()
    opened = {e.get("codec") for e in agent.find("media.encoder.opened")}
    assert opened == {"opus"}, opened
    errors = [e for e in agent.events if e.get("level") == "error"]
    assert not errors, json.dumps(errors[:5], indent=1)
