"""The observe endpoint: /metrics, /status, /snapshot.jpg and ``glimpse-edge status``.

The agent runs as a real process against the real dev server and streams to
aiortc peers; what the endpoint says is checked against what those peers
actually received. Waits are on log events and received frames, with
timeouts.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import psutil
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from support.agent import (
    STREAMING_HEIGHT,
    STREAMING_MAX_BITRATE,
    STREAMING_MEDIA,
    STREAMING_WIDTH,
    AgentProcess,
    write_config,
)
from support.devserver import DevServer
from support.glimpse_client import create_room, register
from support.rtcpeer import BrowserPeer
from trio_asyncio import aio_as_trio

from glimpse_edge.agent import Agent, build_media_hub
from glimpse_edge.config import load_checked
from glimpse_edge.media.testpattern import TestPatternSource
from glimpse_edge.observe.peerstats import PeerStatsSampler, _History
from glimpse_edge.observe.server import create_app
from glimpse_edge.observe.snapshot import NoPicture, Snapshotter, encode_jpeg
from glimpse_edge.observe.statusview import render
from glimpse_edge.rtc.aio import open_aio_loop
from glimpse_edge.rtc.tiers import link_bps
from glimpse_edge.systemd import Notifier

JOIN_TIMEOUT = 20.0
WIDTH, HEIGHT = STREAMING_WIDTH, STREAMING_HEIGHT
MAX_BITRATE = STREAMING_MAX_BITRATE
TOP_TIER = f"{WIDTH}x{HEIGHT}"  # the tier label: its picture size

MEDIA = STREAMING_MEDIA

# For tests about the endpoint itself: as little media work as the config allows.
LIGHT_MEDIA = """
[video]
width = 160
height = 96
framerate = 5
max_bitrate = 200000
min_bitrate = 100000

[audio]
source = "none"
"""


@dataclass
class Observed:
    agent: AgentProcess
    config: Path
    room_id: str
    device_id: str
    tokens: dict[str, str]
    url: str | None


async def start_agent(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery, *names: str,
    listen: str | None = "127.0.0.1:0", media: str = MEDIA, wait_listening: bool = True,
) -> Observed:
    """A room (its owner never joins), the agent joined to it, tokens for ``names``.

    ``listen`` goes into a drop-in (the harness's main file turns observe off);
    None leaves the main file's table out entirely, so the default applies.
    """
    tokens = {name: (await register(devserver.api_url, name, f"{name}-pw"))[1] for name in names}
    device_id, device_token = await register(devserver.api_url, "device", "device-pw")
    _owner, owner_token = await register(devserver.api_url, "owner", "owner-pw")
    room_id = await create_room(devserver.api_url, owner_token, "Observed room")
    config = write_config(tmp_path, ws_url=devserver.ws_url, room_id=room_id,
                          token=device_token, log_level="info", extra=media)
    if listen is None:
        text = config.read_text()
        assert '[observe]\nlisten = ""\n' in text
        config.write_text(text.replace('[observe]\nlisten = ""\n', ""))
    elif listen:
        (tmp_path / "config.d").mkdir()
        (tmp_path / "config.d" / "50-observe.toml").write_text(f'[observe]\nlisten = "{listen}"\n')
    agent = AgentProcess(config)
    await agent.start(nursery)
    await agent.wait_for("room.joined", timeout=JOIN_TIMEOUT)
    url = None
    if wait_listening:
        url = (await agent.wait_for("observe.listening"))["url"]
    return Observed(agent, config, room_id, device_id, tokens, url)


def http_client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=10, trust_env=False)


async def scrape(http: httpx.AsyncClient) -> list[Sample]:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return [s for family in text_string_to_metric_families(response.text)
            for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (f"expected one {name} {labels}, found {found}; all {name}: "
                             f"{[(s.labels, s.value) for s in samples if s.name == name]}")
    return found[0]


def series_of(samples: list[Sample], peer_id: str) -> list[Sample]:
    return [s for s in samples if s.labels.get("peer") == peer_id]


async def received_bytes(peer: BrowserPeer, remote_id: str) -> int:
    """Bytes that reached ``peer``'s connection to ``remote_id`` (SRTP, RTP and RTCP)."""
    report = await aio_as_trio(peer.pc_for(remote_id).getStats)()
    return int(sum(s.bytesReceived for s in report.values() if s.type == "transport"))


def decode_jpeg(data: bytes) -> av.VideoFrame:
    with av.open(io.BytesIO(data), format="mjpeg") as container:
        return next(container.decode(video=0))


async def glimpse_edge(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([sys.executable, "-m", "glimpse_edge", *args],
                                  capture_stdout=True, capture_stderr=True, check=False)


async def first_event(agent: AgentProcess, *names: str, timeout: float = 15.0
                      ) -> dict[str, Any]:
    """Whichever of the named events the agent logs first."""
    found: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        async def one(name: str) -> None:
            found.append(await agent.wait_for(name, timeout=timeout))
            nursery.cancel_scope.cancel()

        for name in names:
            nursery.start_soon(one, name)
    return found[0]


def listening_sockets(agent: AgentProcess) -> list[tuple[str, int]]:
    return [(c.laddr.ip, c.laddr.port)
            for c in psutil.Process(agent.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN]


# --------------------------------------------------------------------------- end to end


async def test_metrics_status_and_snapshot_agree_with_two_streaming_peers(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    o = await start_agent(devserver, tmp_path, nursery, "alice", "bob")
    assert o.url is not None
    alice, bob = BrowserPeer("alice"), BrowserPeer("bob")
    async with alice.joined(devserver.ws_url, o.tokens["alice"], o.room_id), \
            http_client(o.url) as http:
        async with bob.joined(devserver.ws_url, o.tokens["bob"], o.room_id):
            peers = {"alice": alice, "bob": bob}
            for peer in peers.values():
                await peer.wait_frames(o.device_id, video=30, audio=20)
            await o.agent.wait_for("peer.connected", count=2)

            # two scrapes a couple of seconds apart, each with what the peers saw
            t1 = trio.current_time()
            first = await scrape(http)
            rx1 = {name: await received_bytes(p, o.device_id) for name, p in peers.items()}
            for peer in peers.values():
                n = peer.received[o.device_id].video_frames
                await peer.wait_frames(o.device_id, video=n + 60)
            second = await scrape(http)
            t2 = trio.current_time()
            decoded = {name: p.received[o.device_id].video_frames for name, p in peers.items()}
            rx2 = {name: await received_bytes(p, o.device_id) for name, p in peers.items()}

            assert value(second, "glimpse_edge_signaling_state", state="joined") == 1
            assert value(second, "glimpse_edge_signaling_state", state="reconnecting") == 0
            assert value(second, "glimpse_edge_signaling_connects_total") == 1
            assert value(second, "glimpse_edge_room_participants") == 2
            assert value(second, "glimpse_edge_peers", state="connected") == 2
            encoded = value(second, "glimpse_edge_encoder_frames_total", codec="h264",
                            tier=TOP_TIER)
            assert value(second, "glimpse_edge_encoder_keyframes_total", codec="h264",
                         tier=TOP_TIER) >= 1
            assert value(second, "glimpse_edge_encoder_target_bitrate_bps", codec="h264",
                         tier=TOP_TIER) == MAX_BITRATE
            assert value(second, "glimpse_edge_encoder_frames_total", codec="opus",
                         tier="audio") > 0
            assert value(second, "glimpse_edge_source_up", kind="video",
                         source="testpattern") == 1
            assert value(second, "glimpse_edge_source_restarts_total", kind="video") == 0
            assert value(second, "process_resident_memory_bytes") > 10e6
            assert value(second, "process_cpu_seconds_total") > 0

            report = []
            for name, peer in peers.items():
                pid = peer.user_id
                assert value(second, "glimpse_edge_peer_state", peer=pid, username=name,
                             state="connected") == 1
                assert value(second, "glimpse_edge_peer_tier", peer=pid, tier=TOP_TIER,
                             codec="h264") == 1
                assert value(second, "glimpse_edge_peer_restarts_total", peer=pid) == 0
                # receiver reports arrived: the per-peer estimate is there, within bounds
                # (the default video.min_bitrate .. the configured max)
                estimate = value(second, "glimpse_edge_peer_estimate_bps", peer=pid)
                assert 150_000 <= estimate <= link_bps(MAX_BITRATE, True), estimate
                assert value(second, "glimpse_edge_peer_stats_up", peer=pid) == 1
                # frames: what the agent handed to this peer's sender vs what it decoded
                sent = value(second, "glimpse_edge_peer_frames_sent_total", peer=pid,
                             kind="video")
                assert sent <= encoded
                assert abs(sent - decoded[name]) <= 15, (name, sent, decoded[name])
                # bytes: payload the agent sent vs what arrived at the peer (plus headers)
                payload = sum(
                    value(second, "glimpse_edge_peer_sent_bytes_total", peer=pid, kind=k)
                    - value(first, "glimpse_edge_peer_sent_bytes_total", peer=pid, kind=k)
                    for k in ("video", "audio"))
                arrived = rx2[name] - rx1[name]
                assert 0.95 <= arrived / payload <= 1.3, (name, payload, arrived)
                # the bitrate gauge agrees with the counters (it averages a longer window)
                counted = 8 * (
                    value(second, "glimpse_edge_peer_sent_bytes_total", peer=pid, kind="video")
                    - value(first, "glimpse_edge_peer_sent_bytes_total", peer=pid, kind="video")
                ) / (t2 - t1)
                gauge = value(second, "glimpse_edge_peer_bitrate_bps", peer=pid, kind="video")
                assert 0.6 <= gauge / counted <= 1.6, (name, gauge, counted)
                assert gauge <= 1.5 * MAX_BITRATE
                # loopback: receiver reports say no loss and a tiny round trip
                assert value(second, "glimpse_edge_peer_loss_ratio", peer=pid, kind="video") < 0.02
                rtt = [s.value for s in series_of(second, pid)
                       if s.name == "glimpse_edge_peer_rtt_seconds"]
                assert all(0 <= r < 0.5 for r in rtt), rtt
                report.append(f"{name}: sent {sent:.0f} decoded {decoded[name]} frames, "
                              f"gauge {gauge / 1000:.0f} kbit/s, counters {counted / 1000:.0f} "
                              f"kbit/s, wire/payload {arrived / payload:.3f}")
            print("; ".join(report))

            # /status: the same picture as JSON
            status = (await http.get("/status")).json()
            assert status["room"]["joined"] is True and status["room"]["id"] == o.room_id
            by_name = {p["username"]: p for p in status["participants"]}
            assert set(by_name) == {"alice", "bob"}
            for name in ("alice", "bob"):
                entry = by_name[name]
                assert entry["state"] == "connected", entry
                assert entry["tier"] == TOP_TIER and entry["codecs"]["video"] == "h264"
                assert entry["stats"]["video"]["frames_sent"] > 0
                assert entry["stats"]["video"]["bitrate_bps"] > 0
                assert entry["stats_error"] is None
                assert 150_000 <= entry["estimate_bps"] <= link_bps(MAX_BITRATE, True), entry
            video = next(s for s in status["sources"] if s["kind"] == "video")
            assert video["state"] == "running" and (video["width"], video["height"]) == (
                WIDTH, HEIGHT)
            assert str(tmp_path / "config.d" / "50-observe.toml") in status["config"]["files"]
            assert status["signaling"]["state"] == "joined"
            assert status["resources"]["rss_bytes"] > 0

            # the command line shows it as a table
            result = await glimpse_edge("status", "--url", o.url)
            assert result.returncode == 0, result.stderr
            table = result.stdout.decode()
            print(table)
            assert "PARTICIPANT" in table and "alice" in table and "bob" in table
            assert table.count("connected") >= 2 and "testpattern" in table
            result = await glimpse_edge("status", "--json", "--url", o.url)
            assert json.loads(result.stdout)["signaling"]["state"] == "joined"

            # the snapshot: a JPEG of the configured size that follows the camera
            response = await http.get("/snapshot.jpg")
            assert response.status_code == 200 and response.headers["content-type"] == \
                "image/jpeg"
            one = decode_jpeg(response.content)
            assert (one.width, one.height) == (WIDTH, HEIGHT)
            n = alice.received[o.device_id].video_frames
            await alice.wait_frames(o.device_id, video=n + 45)  # > 1 s: past the cache
            two = decode_jpeg((await http.get("/snapshot.jpg")).content)
            assert (two.width, two.height) == (WIDTH, HEIGHT)
            difference = np.abs(one.to_ndarray(format="gray").astype(int)
                                - two.to_ndarray(format="gray").astype(int))
            assert difference.mean() > 1, difference.mean()

        # bob went away: his series go with him, alice's stay
        await o.agent.wait_for("peer.removed", peer=bob.user_id)
        after = await scrape(http)
        assert series_of(after, bob.user_id) == []
        assert series_of(after, alice.user_id)
        assert value(after, "glimpse_edge_peers", state="connected") == 1
        status = (await http.get("/status")).json()
        assert [p["username"] for p in status["participants"]] == ["alice"]
    await o.agent.stop()
    errors = [e for e in o.agent.events if e.get("level") == "error"]
    assert not errors, json.dumps(errors[:5], indent=1)


async def test_default_listens_on_loopback_9750_and_status_follows_the_config(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 9750))
        except OSError:
            pytest.skip("port 9750 is taken on this machine")
    o = await start_agent(devserver, tmp_path, nursery, listen=None, media=LIGHT_MEDIA,
                          wait_listening=False)
    listening = await first_event(o.agent, "observe.listening", "observe.bind_failed")
    if listening["event"] == "observe.bind_failed":
        pytest.skip("port 9750 was taken between the probe and the agent's bind")
    assert (listening["host"], listening["port"]) == ("127.0.0.1", 9750)
    assert listening_sockets(o.agent) == [("127.0.0.1", 9750)]
    # no arguments but --config: the command finds the endpoint in the file
    result = await glimpse_edge("status", "--config", str(o.config))
    assert result.returncode == 0, result.stderr
    assert "joined" in result.stdout.decode() and "no other participants" in result.stdout.decode()
    # the snapshot has the configured size
    async with http_client("http://127.0.0.1:9750") as http:
        response = await http.get("/snapshot.jpg")
        assert response.status_code == 200
        shot = decode_jpeg(response.content)
        assert (shot.width, shot.height) == (160, 96)
    await o.agent.stop()
    # nothing listens any more: a clear message and exit status 3
    result = await glimpse_edge("status", "--config", str(o.config))
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert b"not running" in result.stderr


async def test_endpoint_is_off_when_configured_off(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    o = await start_agent(devserver, tmp_path, nursery, listen="", media=LIGHT_MEDIA,
                          wait_listening=False)
    await o.agent.wait_for("agent.ready")
    assert not o.agent.find("observe.listening")
    assert listening_sockets(o.agent) == []
    result = await glimpse_edge("status", "--config", str(o.config))
    assert result.returncode == 1
    assert b"observe endpoint is off" in result.stderr, result.stderr
    await o.agent.stop()


async def test_a_taken_port_is_logged_and_retried_while_the_agent_runs_on(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        o = await start_agent(devserver, tmp_path, nursery, listen=f"127.0.0.1:{port}",
                              media=LIGHT_MEDIA, wait_listening=False)
        failed = await o.agent.wait_for("observe.bind_failed")
        assert failed["port"] == port and "in use" in failed["error"], failed
        assert o.agent.process is not None and o.agent.process.returncode is None
    # the port is free again: the next attempt (back-off from 2 s) gets it
    listening = await o.agent.wait_for("observe.listening", timeout=15)
    assert listening["port"] == port
    async with http_client(listening["url"]) as http:
        status = (await http.get("/status")).json()
    observe = next(t for t in status["tasks"] if t["name"] == "observe")
    assert observe["state"] == "running" and observe["restarts"] >= 1
    assert "in use" in observe["last_error"]
    await o.agent.stop()


async def test_status_command_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and nobody listens on it once closed
    result = await glimpse_edge("status", "--url", f"http://127.0.0.1:{port}")
    assert result.returncode == 3
    assert b"not running" in result.stderr and str(port).encode() in result.stderr
    assert result.stdout == b""


# --------------------------------------------------------------------------- units


class _HangingConnection:
    signalingState = "stable"

    async def getStats(self) -> Any:
        await asyncio.Event().wait()  # never answers

    def getSenders(self) -> list[Any]:
        return []


class _BrokenConnection(_HangingConnection):
    async def getStats(self) -> Any:
        raise RuntimeError("transport gone")


@dataclass
class _FakeSession:
    connection: Any
    state: str = "connected"


async def test_a_peer_that_does_not_report_does_not_hold_up_the_others() -> None:
    sampler = PeerStatsSampler(timeout=0.3)
    sessions: dict[str, Any] = {
        "hangs": _FakeSession(_HangingConnection()),
        "raises": _FakeSession(_BrokenConnection()),
        "idle": _FakeSession(None, state="idle"),
    }
    async with open_aio_loop():
        t0 = trio.current_time()
        stats = await sampler.refresh(sessions)
        elapsed = trio.current_time() - t0
    assert elapsed < 1.0, elapsed
    assert "did not answer" in (stats["hangs"].error or "")
    assert "transport gone" in (stats["raises"].error or "")
    assert stats["idle"].error is None and stats["idle"].streams == {}
    # gone peers are forgotten at the next reading
    async with open_aio_loop():
        stats = await sampler.refresh({"idle": sessions["idle"]}, force=True)
    assert set(stats) == {"idle"}


def test_bitrate_comes_from_readings_in_the_window() -> None:
    history = _History(connection=1)
    assert history.add(0.0, 0) is None  # one reading: no rate yet
    assert history.add(2.0, 250_000) == pytest.approx(1_000_000)
    assert history.add(12.5, 1_500_000) == pytest.approx(8 * 1_250_000 / 10.5)
    assert history.add(13.0, 10) is None  # the counters restarted: start over


def test_status_table_handles_an_agent_with_nothing_yet() -> None:
    text = render({"version": "9.9", "pid": 1, "uptime_s": 3725,
                   "config": {"files": ["/etc/glimpse-edge/config.toml"],
                              "loaded_at": "2026-01-02T03:04:05Z", "reload_error": "bad key"},
                   "signaling": {"state": "connecting", "detail": "connecting to ws://x",
                                 "connects": 0, "server": "ws://x"},
                   "room": {"id": "r1", "joined": False, "participants": 0},
                   "participants": [], "sources": [], "encoders": [], "tasks": [],
                   "errors": [{"task": "media.video", "error": "SourceError: no camera",
                               "at": "2026-01-02T03:04:06Z"}],
                   "resources": {}})
    assert "glimpse-edge 9.9 (pid 1), up 1h 02m" in text
    assert "last reload refused: bad key" in text
    assert "no other participants" in text
    assert "2026-01-02 03:04:06 UTC media.video: SourceError: no camera" in text


def test_jpeg_is_scaled_and_leaves_the_shared_frame_alone() -> None:
    frame = TestPatternSource(1280, 720, 30).render(7, 0, 12_345)
    before = (frame.pts, frame.time_base, bytes(frame.planes[0]))
    shot = decode_jpeg(encode_jpeg(frame, 320, 180))
    assert (shot.width, shot.height) == (320, 180)
    # a frame that needs no conversion is copied, not re-stamped by the encoder
    full_range = frame.reformat(format="yuvj420p")
    full_range.pts = 99
    shot = decode_jpeg(encode_jpeg(full_range, 1280, 720))
    assert (shot.width, shot.height) == (1280, 720) and full_range.pts == 99
    assert (frame.pts, frame.time_base, bytes(frame.planes[0])) == before


async def test_an_agent_that_has_nothing_yet_answers_every_endpoint(tmp_path: Path) -> None:
    """In process: no signaling yet, no camera frame yet; nothing may fail but the picture."""
    config_path = write_config(tmp_path, ws_url="ws://127.0.0.1:1/ws", room_id="r1",
                               token="a.b.c", extra=LIGHT_MEDIA)
    agent = Agent(config_path, load_checked(config_path), Notifier(""))
    agent.hub = build_media_hub(agent.config, agent.health)  # built, not started
    app = create_app(agent, PeerStatsSampler(), Snapshotter(lambda: agent.hub))
    transport = httpx.ASGITransport(app=app)
    async with open_aio_loop(), httpx.AsyncClient(transport=transport,
                                                  base_url="http://observe") as http:
        response = await http.get("/snapshot.jpg")
        assert response.status_code == 503 and "no camera picture yet" in response.text
        samples = await scrape(http)
        assert value(samples, "glimpse_edge_signaling_state", state="starting") == 1
        assert value(samples, "glimpse_edge_peers", state="connected") == 0
        assert not [s for s in samples if s.name == "glimpse_edge_peer_state"]
        status = (await http.get("/status")).json()
        assert status["signaling"]["state"] == "starting" and status["participants"] == []
        assert "no other participants" in render(status)
        assert (await http.get("/")).status_code == 200
        assert (await http.get("/nothing-here")).status_code == 404


@dataclass
class _Hub:
    """What the snapshotter reads from a MediaHub."""

    latest_frame: av.VideoFrame | None = None
    latest_keyframe: Any = None
    frames_in: int = 0
    has_video: bool = True
    video_config: Any = None


async def test_snapshots_are_encoded_at_most_once_a_second() -> None:
    hub = _Hub(video_config=type("Video", (), {"width": 320, "height": 180})())
    snapshots = Snapshotter(lambda: hub)  # a stand-in for the MediaHub
    with pytest.raises(NoPicture, match="no camera picture yet"):
        await snapshots.take()
    pattern = TestPatternSource(640, 360, 30)
    hub.latest_frame, hub.frames_in = pattern.render(1, 0, 0), 1
    first = await snapshots.take()
    hub.latest_frame, hub.frames_in = pattern.render(2, 0, 3000), 2
    async with trio.open_nursery() as nursery:  # a burst of requests: one encode
        for _ in range(5):
            nursery.start_soon(snapshots.take)
    assert await snapshots.take() is first and snapshots.encodes == 1
    snapshots.min_interval = 0.0  # as if a second had passed
    second = await snapshots.take()
    assert second is not first and second.frame_number == 2 and snapshots.encodes == 2
    assert await snapshots.take() is second  # no new frame: nothing to encode
    hub.has_video = False
    with pytest.raises(NoPicture, match="video is off"):
        await snapshots.take()


async def test_snapshot_from_a_keyframe_when_there_are_no_raw_frames() -> None:
    """A hardware encoder (picamera2) hands us packets only: decode the newest IDR."""
    from glimpse_edge.media.encoder import VideoEncoder

    hub = _Hub(video_config=type("Video", (), {"width": 320, "height": 180})())
    encoder = VideoEncoder("h264", 640, 360, 30, 500_000)
    (idr,) = encoder.encode(TestPatternSource(640, 360, 30).render(7, 0, 0))
    assert idr.is_keyframe
    hub.latest_keyframe = ("h264", idr)
    shot = await Snapshotter(lambda: hub).take()
    assert shot.jpeg[:2] == b"\xff\xd8" and (shot.width, shot.height) == (320, 180)
    with av.open(io.BytesIO(shot.jpeg)) as container:
        picture = next(container.decode(video=0))
    assert (picture.width, picture.height) == (320, 180)
