"""Publishing over WHIP into a real SFU (issue 17): Janus's VideoRoom behind
simple-whip-server, both started by the test (tests/support/janus.py).

The agent runs as a pure publisher (no [room]); an aiortc subscriber joins
the VideoRoom through Janus's own HTTP API and must decode the agent's
video and audio. Then the failure paths: a bad token, Janus restarted
mid-stream, DELETE on reload and on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import httpx
import pytest
import trio
import trio_asyncio
from support import janus
from support.agent import STREAMING_MEDIA, AgentProcess, write_config, write_secret
from support.devserver import DevServer
from support.glimpse_client import create_room, register
from support.rtcpeer import BrowserPeer
from trio_asyncio import aio_as_trio

pytestmark = pytest.mark.skipif(janus.unavailable() is not None,
                                reason=janus.unavailable() or "")

MEDIA = """
[video]
source = "testpattern"
width = 640
height = 360
framerate = 30
codec = "h264"
max_bitrate = 800000

[audio]
source = "tone"
"""


def publisher_config(directory: Path, whip_url: str, token: str | None, *,
                     extra: str = "", observe: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    token_line = ""
    if token is not None:
        token_line = f'token_file = "{write_secret(directory / "whip-token", token)}"\n'
    path = directory / "config.toml"
    path.write_text(
        f'[publish]\nwhip_url = "{whip_url}"\n{token_line}'
        "request_timeout = 5.0\n"
        "connect_timeout = 8.0\nauth_retry = 60.0\n"
        f"{extra}\n"
        "[ice]\nservers = []\n\n"
        f'[observe]\nlisten = "{observe}"\n\n'
        '[log]\nlevel = "debug"\nformat = "json"\n' + MEDIA)
    return path


@pytest.fixture
def sfu(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = janus.JanusSfu(tmp_path / "sfu")
    (tmp_path / "sfu").mkdir()
    s.start()
    try:
        yield s
    finally:
        s.stop()


async def wait_publisher(sfu: janus.JanusSfu, timeout: float = 15.0) -> int:
    """The VideoRoom publisher's id, once there is one."""
    with trio.fail_after(timeout):
        while True:
            found = await trio.to_thread.run_sync(sfu.publishers)
            if found:
                return int(found[0]["id"])
            await trio.sleep(0.2)


async def subscribe(sfu: janus.JanusSfu, feed: int, seconds: float = 10.0,
                    frames: int = 30) -> dict[str, int]:
    async with trio_asyncio.open_loop():
        return await aio_as_trio(janus.subscribe_and_count)(sfu.janus_url, feed, seconds,
                                                            frames)


@pytest.mark.timeout(90)
async def test_the_agent_publishes_and_a_janus_subscriber_decodes_video_and_audio(
        tmp_path: Path, sfu: janus.JanusSfu) -> None:
    observe = f"127.0.0.1:{janus.free_port()}"
    agent = AgentProcess(publisher_config(tmp_path / "agent", sfu.endpoint_url, sfu.token,
                                          observe=observe))
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await agent.start(nursery)
        connected = await agent.wait_for("publish.connected", timeout=20)
        feed = await wait_publisher(sfu)
        counts = await subscribe(sfu, feed)
        print(f"agent start -> publish.connected {connected['_t'] - t0:.2f} s; "
              f"subscriber: {counts}")
        assert counts["video"] >= 30, counts
        assert counts["audio"] >= 10, counts
        assert not agent.find("publish.session_ended")
        # observability: /status, /metrics and `glimpse-edge status`
        async with httpx.AsyncClient(base_url=f"http://{observe}", trust_env=False) as http:
            status = (await http.get("/status")).json()
            metrics = (await http.get("/metrics")).text
        publish = status["publish"]
        assert publish["state"] == "publishing" and publish["codec"] == "h264"
        assert publish["tier"] == "640x360" and publish["sessions"] == 1
        assert publish["bitrate_bps"] and publish["bitrate_bps"] > 50_000, publish
        assert status["signaling"]["state"] == "off"
        assert f'glimpse_edge_publish_state{{state="publishing",url="{sfu.endpoint_url}"}} 1.0' \
            in metrics
        shown = await trio.run_process(
            [sys.executable, "-m", "glimpse_edge", "status", "--url", f"http://{observe}"],
            capture_stdout=True, check=False)
        print(shown.stdout.decode())
        assert f"publish     publishing to {sfu.endpoint_url} (h264 640x360)" in (
            shown.stdout.decode())
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(10) == 0
        nursery.cancel_scope.cancel()
    assert agent.find("publish.deleted", reason="stopped"), "no DELETE on SIGTERM"
    with trio.fail_after(5):
        while True:
            if sfu.deletes() >= 1:  # the server saw it (its log may lag a little)
                break
            await trio.sleep(0.1)
    assert not await trio.to_thread.run_sync(sfu.publishers)


@pytest.mark.timeout(60)
async def test_a_refused_token_is_a_clear_error_and_no_retry_storm(
        tmp_path: Path, sfu: janus.JanusSfu) -> None:
    config = publisher_config(tmp_path / "agent", sfu.endpoint_url, "not-the-token")
    agent = AgentProcess(config)
    async with trio.open_nursery() as nursery:
        await agent.start(nursery)
        failed = await agent.wait_for("publish.auth_failed", timeout=15)
        assert failed["status"] == 403
        assert sfu.endpoint_url in failed["error"] or "/whip/endpoint/" in failed["error"]
        assert "not-the-token" not in "\n".join(agent.raw_lines)
        await trio.sleep(4)
        assert len(agent.find("publish.auth_failed")) == 1, "retried a refused token"
        # a new token file is picked up without waiting out auth_retry
        write_secret(tmp_path / "agent" / "whip-token", sfu.token or "")
        await agent.wait_for("publish.connected", timeout=15)
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(10) == 0
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(90)
async def test_a_reload_deletes_the_session_and_publishes_again(
        tmp_path: Path, sfu: janus.JanusSfu) -> None:
    config = publisher_config(tmp_path / "agent", sfu.endpoint_url, sfu.token)
    agent = AgentProcess(config)
    async with trio.open_nursery() as nursery:
        await agent.start(nursery)
        await agent.wait_for("publish.connected", timeout=20)
        mark, before = len(agent.events), sfu.deletes()
        config.write_text(config.read_text().replace("[publish]\n",
                                                     "[publish]\naudio = false\n"))
        agent.signal(signal.SIGHUP)
        await agent.wait_for("publish.deleted", since=mark, timeout=10)
        await agent.wait_for("publish.connected", since=mark, timeout=20)
        negotiated = await agent.wait_for("publish.negotiated", since=mark, timeout=5)
        assert negotiated["audio"] is None
        assert sfu.deletes() > before, "the server saw no DELETE on reload"
        feed = await wait_publisher(sfu)
        counts = await subscribe(sfu, feed, frames=10)
        assert counts["video"] >= 10, counts
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(10) == 0
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(120)
async def test_janus_restarted_mid_stream_is_published_to_again(
        tmp_path: Path, sfu: janus.JanusSfu) -> None:
    agent = AgentProcess(publisher_config(tmp_path / "agent", sfu.endpoint_url, sfu.token))
    async with trio.open_nursery() as nursery:
        await agent.start(nursery)
        await agent.wait_for("publish.connected", timeout=20)
        feed = await wait_publisher(sfu)
        assert (await subscribe(sfu, feed, frames=10))["video"] >= 10
        mark = len(agent.events)
        await trio.to_thread.run_sync(sfu.stop_janus)
        await agent.wait_for("publish.session_ended", since=mark, timeout=15)
        await trio.sleep(2)
        await trio.to_thread.run_sync(sfu.start_janus)
        back = trio.current_time()
        feed = await wait_publisher(sfu, timeout=20)
        listed = trio.current_time() - back
        counts = await subscribe(sfu, feed, frames=10)
        took = trio.current_time() - back
        print(f"Janus back -> re-published (listed in the room) after {listed:.2f} s; "
              f"a subscriber decoded {counts['video']} frames {took:.2f} s after Janus was "
              f"back (its first after {counts['first_video_ms']} ms)")
        assert counts["video"] >= 10, counts
        assert took < 5.0, took  # decoding again within 5 s of Janus being back
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(10) == 0
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(120)
async def test_the_room_goes_on_beside_the_publisher(
        tmp_path: Path, sfu: janus.JanusSfu, devserver: DevServer, nursery: trio.Nursery) -> None:
    _alice_id, alice_token = await register(devserver.api_url, "alice", "alice-password")
    device_id, device_token = await register(devserver.api_url, "device", "device-password")
    room_id = await create_room(devserver.api_url, alice_token, "Room")
    alice = BrowserPeer("alice")
    token = write_secret(tmp_path / "whip-token", sfu.token or "")
    publish = f'\n[publish]\nwhip_url = "{sfu.endpoint_url}"\ntoken_file = "{token}"\n'
    async with alice.joined(devserver.ws_url, alice_token, room_id):
        agent = AgentProcess(write_config(tmp_path / "agent", ws_url=devserver.ws_url,
                                          room_id=room_id, token=device_token,
                                          extra=STREAMING_MEDIA + publish))
        await agent.start(nursery)
        await alice.wait_frames(device_id, video=30, audio=20)  # the room's viewer
        await agent.wait_for("publish.connected", timeout=20)
        feed = await wait_publisher(sfu)
        counts = await subscribe(sfu, feed)  # and the SFU's, at the same time
        assert counts["video"] >= 30 and counts["audio"] >= 10, counts
        more = await alice.wait_frames(device_id, video=60, audio=40)
        assert more is not None
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(10) == 0
    assert agent.find("publish.deleted", reason="stopped")


@pytest.mark.timeout(180)
async def test_a_publisher_that_died_without_its_delete_is_replaced(
        tmp_path: Path, sfu: janus.JanusSfu) -> None:
    """A power cut: no DELETE. simple-whip-server refuses the endpoint (403, "in
    use") for as long as Janus keeps the dead publisher, which is for ever (its
    session is simple-whip-server's, kept alive). The next start DELETEs the
    session its state directory remembers, and publishes at once."""
    config = publisher_config(tmp_path / "agent", sfu.endpoint_url, sfu.token)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    env = {"STATE_DIRECTORY": str(state)}
    first = AgentProcess(config, env=env)
    async with trio.open_nursery() as nursery:
        await first.start(nursery)
        await first.wait_for("publish.connected", timeout=20)
        first.signal(signal.SIGKILL)
        await first.wait_exit(10)
        t0 = trio.current_time()
        assert (state / "whip-session").exists()
        second = AgentProcess(config, env=env)
        await second.start(nursery)
        await second.wait_for("publish.left_over_deleted", timeout=20)
        await second.wait_for("publish.connected", timeout=20)
        took = trio.current_time() - t0
        print(f"re-published {took:.1f} s after the first agent died")
        assert not second.find("publish.auth_failed")
        feed = await wait_publisher(sfu)
        assert (await subscribe(sfu, feed, frames=10))["video"] >= 10
        second.signal(signal.SIGTERM)
        assert await second.wait_exit(10) == 0
        nursery.cancel_scope.cancel()
    assert not (state / "whip-session").exists()  # its own session was DELETEd


def without_sections(toml: str, names: set[str]) -> str:
    """``toml`` without the tables ``names`` (a header up to the next header)."""
    out, skipping = [], False
    for line in toml.splitlines(keepends=True):
        header = line.strip()
        if header.startswith("[") and header.endswith("]"):
            skipping = header.strip("[]").strip() in names
        if not skipping:
            out.append(line)
    return "".join(out)


@pytest.mark.timeout(150)
async def test_a_reload_turns_the_room_off_and_on_while_publishing(
        tmp_path: Path, sfu: janus.JanusSfu, devserver: DevServer, nursery: trio.Nursery) -> None:
    """A lobby camera becomes a pure publisher and back by editing its config: the
    room is left and joined again on reload, the WHIP session is untouched."""
    _alice_id, alice_token = await register(devserver.api_url, "alice", "alice-password")
    device_id, device_token = await register(devserver.api_url, "device", "device-password")
    room_id = await create_room(devserver.api_url, alice_token, "Room")
    alice = BrowserPeer("alice")
    token = write_secret(tmp_path / "whip-token", sfu.token or "")
    publish = f'\n[publish]\nwhip_url = "{sfu.endpoint_url}"\ntoken_file = "{token}"\n'
    directory = tmp_path / "agent"

    def with_room() -> Path:
        return write_config(directory, ws_url=devserver.ws_url, room_id=room_id,
                            token=device_token, extra=STREAMING_MEDIA + publish)

    async with alice.joined(devserver.ws_url, alice_token, room_id):
        agent = AgentProcess(with_room())
        await agent.start(nursery)
        await alice.wait_frames(device_id, video=30, audio=20)
        await agent.wait_for("publish.connected", timeout=20)
        # only publishing now: the same [publish], no [server], [auth], [room]
        agent.config.write_text(without_sections(agent.config.read_text(),
                                                 {"server", "auth", "room"}))
        mark = len(agent.events)
        agent.signal(signal.SIGHUP)
        await agent.wait_for("config.reloaded", since=mark, timeout=10)
        await alice.wait_until(lambda: device_id not in alice.pcs, "the device to leave")
        assert agent.find("room.leaving", since=mark)
        assert not agent.find("publish.deleted", since=mark), "the WHIP session stays"
        feed = await wait_publisher(sfu)
        assert (await subscribe(sfu, feed, frames=10))["video"] >= 10
        # and back into the room
        before = alice.received[device_id].video_frames
        with_room()
        mark = len(agent.events)
        agent.signal(signal.SIGHUP)
        await agent.wait_for("room.joined", since=mark, timeout=20)
        await alice.wait_frames(device_id, video=before + 30)
        assert not agent.find("publish.deleted", since=mark)
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(10) == 0
