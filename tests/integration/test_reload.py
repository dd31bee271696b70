"""Live reconfiguration: the real agent, edited files, SIGHUP, peers that must not notice.

Each test runs ``glimpse-edge run`` against the dev server with aiortc peers
standing in for browsers, edits the configuration the way an operator (or
fleet tooling) would, sends SIGHUP as ``systemctl reload`` does, and checks
that exactly what the change concerns was touched: the same
RTCPeerConnection keeps receiving unless the change is about the room.
Synchronisation is on the agent's JSON log events and on frame counts,
every wait with a timeout.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio
from support.agent import STREAMING_MEDIA, AgentProcess, write_config, write_secret
from support.devserver import DevServer
from support.glimpse_client import create_room, register
from support.netproxy import FreezableProxy
from support.notify import NotifySocket
from support.rtcpeer import BrowserPeer

from glimpse_edge.config import AudioConfig, VideoConfig
from glimpse_edge.media.factory import make_audio_source, make_video_source
from glimpse_edge.media.fanout import PacketStream
from glimpse_edge.media.hub import MediaHub
from glimpse_edge.media.source import AudioSource

JOIN_TIMEOUT = 20.0

MEDIA = STREAMING_MEDIA  # 640x360 H.264 and a tone


@dataclass
class Scene:
    server: DevServer
    device_id: str
    device_token: str
    owner_token: str
    tokens: dict[str, str]

    async def room(self, name: str = "Room") -> str:
        return await create_room(self.server.api_url, self.owner_token, name)

    def config(self, directory: Path, room_id: str) -> Path:
        """The device's configuration for ``room_id``: streaming media, info logs."""
        return write_config(directory, ws_url=self.server.ws_url, room_id=room_id,
                            token=self.device_token, log_level="info", extra=MEDIA)


async def start_joined(agent: AgentProcess, nursery: trio.Nursery) -> None:
    await agent.start(nursery)
    await agent.wait_for("room.joined", timeout=JOIN_TIMEOUT)


async def make_scene(server: DevServer, *names: str) -> Scene:
    tokens = {name: (await register(server.api_url, name, f"{name}-password"))[1]
              for name in names}
    device_id, device_token = await register(server.api_url, "device", "device-password")
    _owner_id, owner_token = await register(server.api_url, "owner", "owner-password")
    return Scene(server, device_id, device_token, owner_token, tokens)


def edit(path: Path, *replacements: tuple[str, str]) -> None:
    text = path.read_text()
    for old, new in replacements:
        assert old in text, f"{old!r} not in {path}"
        text = text.replace(old, new)
    path.write_text(text)


async def reload(agent: AgentProcess) -> dict[str, object]:
    """SIGHUP, as ExecReload sends it; returns the config.reloaded event."""
    mark = len(agent.events)
    agent.signal(signal.SIGHUP)
    return await agent.wait_for("config.reloaded", since=mark, timeout=10)


async def keeps_receiving(peer: BrowserPeer, device_id: str, frames: int = 30) -> None:
    n = peer.received[device_id].video_frames
    await peer.wait_frames(device_id, video=n + frames)


async def test_invalid_edit_keeps_streaming_and_says_what_is_wrong(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    scene = await make_scene(devserver, "alice")
    room_id = await scene.room()
    notify = NotifySocket(tmp_path / "notify.sock")
    await nursery.start(notify.run)
    config = scene.config(tmp_path, room_id)
    agent = AgentProcess(config, env={"NOTIFY_SOCKET": str(notify.path)})
    await start_joined(agent, nursery)
    alice = BrowserPeer("alice")
    async with alice.joined(devserver.ws_url, scene.tokens["alice"], room_id):
        await alice.wait_frames(scene.device_id, video=30)
        pc = alice.pc_for(scene.device_id)
        mark, notify_mark = len(agent.events), len(notify.lines)
        dropins = tmp_path / "config.d"
        dropins.mkdir()
        (dropins / "50-camera.toml").write_text("[video]\nwidth = 641\n")  # odd: invalid
        agent.signal(signal.SIGHUP)
        failed = await agent.wait_for("config.reload_failed", since=mark, timeout=10)
        assert failed["key"] == "video.width", failed
        assert failed["file"].endswith("config.d/50-camera.toml"), failed
        assert "641" in failed["reason"], failed
        status = await notify.wait_line(r"STATUS=.*configuration error.*", since=notify_mark)
        assert "50-camera.toml: video.width: " in status and "641" in status, status
        assert "READY=1" in notify.lines[notify_mark:], "a failed reload must end RELOADING"
        # nothing was applied: the same connection keeps receiving the old size
        await keeps_receiving(alice, scene.device_id)
        assert alice.pc_for(scene.device_id) is pc
        assert alice.received[scene.device_id].sizes == {(640, 360)}
        for name in ("config.reloaded", "media.reconfigured", "peer.connection_closed"):
            assert not agent.find(name, since=mark), name
        # fixing the file clears the complaint
        (dropins / "50-camera.toml").unlink()
        notify_mark = len(notify.lines)
        await reload(agent)
        status = await notify.wait_line(r"STATUS=.*", since=notify_mark)
        assert "configuration error" not in status, status


async def test_log_level_change_touches_nothing_else(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    scene = await make_scene(devserver, "alice")
    room_id = await scene.room()
    config = scene.config(tmp_path, room_id)
    agent = AgentProcess(config)
    await start_joined(agent, nursery)
    alice = BrowserPeer("alice")
    async with alice.joined(devserver.ws_url, scene.tokens["alice"], room_id):
        await alice.wait_frames(scene.device_id, video=30)
        pc = alice.pc_for(scene.device_id)
        assert not [e for e in agent.events if e.get("level") == "debug"]
        mark = len(agent.events)
        edit(config, ('level = "info"', 'level = "debug"'))
        reloaded = await reload(agent)
        assert reloaded["changed"] == ["log"], reloaded
        # debug at once, from the signaling session and from the peer session
        # whose logger was bound before the reload
        await alice.renegotiate(scene.device_id)
        await agent.wait_for("signaling.received", since=mark, level="debug")
        await agent.wait_for("peer.renegotiating", since=mark)
        await keeps_receiving(alice, scene.device_id)
        assert alice.pc_for(scene.device_id) is pc
        for name in ("signaling.connected", "room.joined", "media.reconfigured",
                     "media.source.started", "peer.connection_closed", "peers.rebuilding"):
            assert not agent.find(name, since=mark), name


async def test_video_size_change_reaches_the_same_connection(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    scene = await make_scene(devserver, "alice", "bob")
    room_id = await scene.room()
    config = scene.config(tmp_path, room_id)
    agent = AgentProcess(config)
    alice, bob = BrowserPeer("alice"), BrowserPeer("bob", video_codecs=["VP8"])
    # bob is there first and offers VP8 only; alice comes later and is offered H.264
    async with bob.joined(devserver.ws_url, scene.tokens["bob"], room_id):
        await agent.start(nursery)
        await agent.wait_for("room.joined", timeout=JOIN_TIMEOUT)
        await bob.wait_frames(scene.device_id, video=30)
        negotiated = await agent.wait_for("peer.negotiated", peer=bob.user_id)
        assert negotiated["video"] == "vp8", negotiated
        async with alice.joined(devserver.ws_url, scene.tokens["alice"], room_id):
            await alice.wait_frames(scene.device_id, video=30)
            await _resize_and_check(agent, config, scene.device_id, alice, bob)


async def _resize_and_check(
    agent: AgentProcess, config: Path, device_id: str, alice: BrowserPeer, bob: BrowserPeer
) -> None:
    """640x360 -> 320x180 while alice (H.264) and bob (VP8) watch."""
    pcs = (alice.pc_for(device_id), bob.pc_for(device_id))
    mark = len(agent.events)
    t0 = trio.current_time()
    edit(config, ("width = 640", "width = 320"), ("height = 360", "height = 180"))
    reloaded = await reload(agent)
    assert reloaded["changed"] == ["video"], reloaded
    reconfigured = await agent.wait_for("media.reconfigured", since=mark)
    assert reconfigured["changed"] == ["video.source", "video.encoders"], reconfigured
    # both shared encoders (H.264 for alice, VP8 for bob) reopened at the new size
    for codec in ("h264", "vp8"):
        opened = await agent.wait_for("media.encoder.opened", since=mark, codec=codec)
        assert (opened["width"], opened["height"]) == (320, 180), opened
    for peer in (alice, bob):
        received = peer.received[device_id]
        await peer.wait_until(lambda r=received: (320, 180) in r.sizes,
                              "frames of the new size")
        await keeps_receiving(peer, device_id)
    print(f"new picture size on screen {trio.current_time() - t0:.2f} s after the edit")
    assert (alice.pc_for(device_id), bob.pc_for(device_id)) == pcs
    assert not agent.find("peer.connection_closed", since=mark)
    assert not agent.find("peer.restarting", since=mark)
    # the audio did not restart either
    assert not agent.find("media.source.started", since=mark, kind="audio")


async def test_audio_off_renegotiates_every_peer_without_audio(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """What a connection carries changes: the peers are rebuilt, the session is not."""
    scene = await make_scene(devserver, "alice")
    room_id = await scene.room()
    config = scene.config(tmp_path, room_id)
    agent = AgentProcess(config)
    await start_joined(agent, nursery)
    alice = BrowserPeer("alice")
    async with alice.joined(devserver.ws_url, scene.tokens["alice"], room_id):
        await alice.wait_frames(scene.device_id, video=30, audio=20)
        pc = alice.pc_for(scene.device_id)
        mark = len(agent.events)
        edit(config, ('[audio]\nsource = "tone"', '[audio]\nsource = "none"'))
        reloaded = await reload(agent)
        assert reloaded["changed"] == ["audio"], reloaded
        rebuilding = await agent.wait_for("peers.rebuilding", since=mark)
        assert rebuilding["reason"] == "tracks", rebuilding
        await agent.wait_for("peer.connected", since=mark, peer=alice.user_id,
                             timeout=JOIN_TIMEOUT)
        await alice.wait_until(lambda: alice.pcs.get(scene.device_id) not in (None, pc),
                               "a new connection")
        negotiated = agent.find("peer.negotiated", since=mark, peer=alice.user_id)
        assert negotiated and negotiated[-1]["audio"] is None, negotiated
        await keeps_receiving(alice, scene.device_id)
        # the signaling session was not touched
        assert not agent.find("signaling.connected", since=mark)
        assert not agent.find("room.joined", since=mark)


async def test_display_on_and_off_rebuilds_the_peers_and_the_call_goes_on(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """[display] enabled changes the video's direction: new connections for everyone.

    No X server here (DISPLAY is empty): the screen does not open, which is
    logged and retried, and the call goes on; alice's video is still received
    and decoded (for the screen that may open later).
    """
    scene = await make_scene(devserver, "alice")
    room_id = await scene.room()
    config = scene.config(tmp_path, room_id)
    with config.open("a") as f:
        f.write('\n[display]\nenabled = false\ndriver = "x11"\n')
    agent = AgentProcess(config, env={"DISPLAY": "", "WAYLAND_DISPLAY": ""})
    await start_joined(agent, nursery)
    alice = BrowserPeer("alice", send_video=(320, 180))
    async with alice.joined(devserver.ws_url, scene.tokens["alice"], room_id):
        await alice.wait_frames(scene.device_id, video=30)
        for enabled in ("true", "false"):
            pc = alice.pc_for(scene.device_id)
            mark = len(agent.events)
            edit(config, (f"enabled = {'false' if enabled == 'true' else 'true'}\n"
                          'driver = "x11"', f'enabled = {enabled}\ndriver = "x11"'))
            reloaded = await reload(agent)
            assert reloaded["changed"] == ["display"], reloaded
            rebuilding = await agent.wait_for("peers.rebuilding", since=mark)
            assert rebuilding["reason"] == "display", rebuilding
            await agent.wait_for("peer.connected", since=mark, peer=alice.user_id,
                                 timeout=JOIN_TIMEOUT)
            await alice.wait_until(lambda pc=pc: alice.pcs.get(scene.device_id) not in (None, pc),
                                   "a new connection")
            await keeps_receiving(alice, scene.device_id)
            if enabled == "true":
                await agent.wait_for("display.open_failed", since=mark, driver="x11")
                await agent.wait_for("display.decoder.opened", since=mark)
                # her video is ours to show now, not a track to refuse
                assert not agent.find("peer.unwanted_track", since=mark)
            else:
                closed = await agent.wait_for("display.decoder.closed", since=mark)
                assert closed["decoded"] > 0, closed
                assert not agent.find("display.decoder.opened", since=mark)
        assert not agent.find("room.joined", since=mark)


async def test_room_change_leaves_one_room_and_streams_in_the_other(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    scene = await make_scene(devserver, "alice", "bob")
    room_a, room_b = await scene.room("Room A"), await scene.room("Room B")
    config = write_config(tmp_path, ws_url=devserver.ws_url, room_id=room_a,
                          token=scene.device_token, log_level="info", extra=MEDIA)
    agent = AgentProcess(config)
    await agent.start(nursery)
    await agent.wait_for("room.joined", room=room_a, timeout=JOIN_TIMEOUT)
    alice, bob = BrowserPeer("alice"), BrowserPeer("bob")
    async with alice.joined(devserver.ws_url, scene.tokens["alice"], room_a), \
            bob.joined(devserver.ws_url, scene.tokens["bob"], room_b):
        await alice.wait_frames(scene.device_id, video=30)
        assert scene.device_id not in bob.received
        mark, alice_mark = len(agent.events), len(alice.log)
        edit(config, (f'id = "{room_a}"', f'id = "{room_b}"'))
        reloaded = await reload(agent)
        assert reloaded["changed"] == ["room"], reloaded
        await agent.wait_for("room.left", since=mark, room=room_a)
        await agent.wait_for("room.joined", since=mark, room=room_b, timeout=JOIN_TIMEOUT)
        await alice.wait_until(lambda: "user_left" in alice.log[alice_mark:],
                               "user_left for the device")
        # bob was in room B first: he calls the newcomer, as browsers do
        await bob.wait_frames(scene.device_id, video=30, audio=10)
        await agent.wait_for("peer.removed", since=mark, peer=alice.user_id)
        assert not agent.find("media.reconfigured", since=mark)


async def test_server_and_auth_change_reconnect_without_dropping_peers(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    scene = await make_scene(devserver, "alice")
    room_id = await scene.room()
    proxy = FreezableProxy(devserver.port)  # the "old server": another address, same server
    async with proxy.running():
        old_url = f"ws://127.0.0.1:{proxy.port}/ws"
        config = write_config(tmp_path, ws_url=old_url, room_id=room_id,
                              token=scene.device_token, log_level="info", extra=MEDIA)
        agent = AgentProcess(config)
        await agent.start(nursery)
        await agent.wait_for("room.joined", timeout=JOIN_TIMEOUT)
        alice = BrowserPeer("alice")
        async with alice.joined(devserver.ws_url, scene.tokens["alice"], room_id):
            await alice.wait_frames(scene.device_id, video=30)
            pc = alice.pc_for(scene.device_id)
            mark, alice_mark = len(agent.events), len(alice.log)
            # new server address and a switch from a token file to a login
            password = write_secret(tmp_path / "password", "device-password")
            edit(config,
                 (f'ws_url = "{old_url}"', f'ws_url = "{devserver.ws_url}"'),
                 ('api_url = ""', f'api_url = "{devserver.api_url}"'),
                 (f'token_file = "{tmp_path / "token"}"',
                  f'username = "device"\npassword_file = "{password}"'))
            reloaded = await reload(agent)
            assert reloaded["changed"] == ["server", "auth"], reloaded
            await agent.wait_for("auth.logged_in", since=mark, timeout=JOIN_TIMEOUT)
            connected = await agent.wait_for("signaling.connected", since=mark)
            assert connected["url"] == devserver.ws_url
            handover = await agent.wait_for("signaling.handover", since=mark,
                                            timeout=JOIN_TIMEOUT)
            assert handover["user_id"] == scene.device_id
            # the old connection is gone: freezing the old path changes nothing
            proxy.freeze()
            await keeps_receiving(alice, scene.device_id, frames=60)
            assert alice.pc_for(scene.device_id) is pc
            assert "user_offline" not in alice.log[alice_mark:], alice.log[alice_mark:]
            for name in ("peer.connection_closed", "peer.restarting", "peers.rebuilding",
                         "signaling.reconnecting", "signaling.handover_failed"):
                assert not agent.find(name, since=mark), name
            assert len(agent.find("room.joined", since=mark)) == 1


def audio_factory(cfg: AudioConfig) -> Callable[[], AudioSource]:
    def make() -> AudioSource:
        source = make_audio_source(cfg)
        assert source is not None
        return source

    return make


class Recorder:
    """Wraps a stream's publish: the time stamps in seconds, and an event per packet.

    It subscribes too: the hub encodes audio only while somebody listens.
    """

    def __init__(self, stream: PacketStream) -> None:
        self.queue = stream.subscribe("recorder")
        self.seconds: list[float] = []
        self._packet = trio.Event()
        publish = stream.publish

        def record(packet: Any) -> None:
            self.seconds.append(float(packet.pts * packet.time_base))
            self._packet.set()
            self._packet = trio.Event()
            publish(packet)

        stream.publish = record  # type: ignore[method-assign]

    async def more(self, count: int, timeout: float = 10.0) -> None:
        target = len(self.seconds) + count
        with trio.fail_after(timeout):
            while len(self.seconds) < target:
                await self._packet.wait()


async def test_hub_reconfigure_audio_rate_off_and_on() -> None:
    """In process: a new rate keeps the Opus clock going; audio off closes, on reopens."""
    video = VideoConfig(width=160, height=90, framerate=10)
    tone = AudioConfig(source="tone")
    make_video = partial(make_video_source, video)
    hub = MediaHub(video, tone, make_video, audio_factory(tone))
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        stream = hub.audio_stream()
        assert stream is not None
        audio = Recorder(stream)
        await audio.more(10)
        slow = AudioConfig(source="tone", rate=16000, tone_frequency=300.0)
        hub.reconfigure(video, slow, make_video, audio_factory(slow))
        await audio.more(10)
        # time stamps (in seconds) go on in 20 ms steps across the new encoder
        steps = {round(b - a, 3) for a, b in itertools.pairwise(audio.seconds)}
        assert steps == {0.02}, (steps, audio.seconds)
        assert hub.audio_stream() is stream

        queue = stream.subscribe("viewer")
        hub.reconfigure(video, AudioConfig(source="none"), make_video, None)
        assert hub.audio_stream() is None and queue.closed
        hub.reconfigure(video, tone, make_video, audio_factory(tone))
        again = hub.audio_stream()
        assert again is not None and again is not stream
        await Recorder(again).more(5)
        nursery.cancel_scope.cancel()
