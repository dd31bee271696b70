"""Publishing over WHIP into a real SFU (issue 17): Janus's VideoRoom behind
simple-whip-server, both started by the test (tests/support/janus.py).

The agent runs as a pure publisher (no [room]); an aiortc subscriber joins
the VideoRoom through Janus's own HTTP API and must decode the agent's
video and audio. Then the failure paths: a bad token, Janus restarted
mid-stream, DELETE on reload and on SIGTERM. And the adaptation: a lower
REMB cap from Janus pulls the published encoding down within its tier.
"""

from __future__ import annotations

import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

from glimpse_edge.rtc.tiers import video_budget

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
        # no storm: the next try is seconds away (7.5-15 s, then longer)...
        assert failed["retry_s"] >= 7.5, f"expected a refused token to wait, saw {failed}"
        # ...and a new token file is picked up at once, without waiting that out
        t0 = trio.current_time()
        write_secret(tmp_path / "agent" / "whip-token", sfu.token or "")
        await agent.wait_for("publish.connected", timeout=15)
        took = trio.current_time() - t0
        assert took < failed["retry_s"], f"waited out the back-off: {took:.1f} s, {failed}"
        assert len(agent.find("publish.auth_failed")) == 1, "retried the refused token"
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
        # Janus stays down until the agent has tried again and failed (a POST to
        # nobody): the way back is then a retry after a failure, not the first one
        await agent.wait_for("publish.session_ended", since=mark, count=2, timeout=15)
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


# -- adaptation: Janus's REMB drives the published encoding's rate ----------------------

REMB_CAP = 300_000  # what Janus is made to ask for (bit/s)
ADMIN_SECRET = "glimpse-admin"


class AdminSfu(janus.JanusSfu):
    """The test SFU with Janus's Admin API on (HTTP, loopback): the only way to learn
    the handle of the publisher that simple-whip-server's own session owns."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.admin_port = janus.free_port()

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}/admin"

    def _write_janus_config(self) -> Path:
        conf = super()._write_janus_config()
        for name, old, new in (
                ("janus.jcfg", "session_timeout = 60",
                 f'session_timeout = 60\n    admin_secret = "{ADMIN_SECRET}"'),
                ("janus.transport.http.jcfg", "admin_http = false",
                 f'admin_http = true\n    admin_port = {self.admin_port}\n'
                 '    admin_ip = "127.0.0.1"\n    admin_base_path = "/admin"')):
            path = conf / name
            text = path.read_text()
            assert old in text, f"{name} no longer has {old!r}: update AdminSfu"
            path.write_text(text.replace(old, new, 1))
        return conf

    def _admin(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(f"{self.admin_url}{path}", timeout=5, json={
            **body, "transaction": uuid.uuid4().hex, "admin_secret": ADMIN_SECRET})
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        assert data.get("janus") == "success", f"Janus Admin API {path}: {data}"
        return data

    def publisher_handle(self) -> tuple[int, int, dict[str, Any]] | None:
        """(session, handle, plugin info) of the VideoRoom publisher handle, if any."""
        for session in self._admin("", {"janus": "list_sessions"})["sessions"]:
            handles = self._admin(f"/{session}", {"janus": "list_handles"})["handles"]
            for handle in handles:
                info = self._admin(f"/{session}/{handle}", {"janus": "handle_info"})["info"]
                specific = info.get("plugin_specific", {})
                if (info.get("plugin") == "janus.plugin.videoroom"
                        and specific.get("type") == "publisher"):
                    return int(session), int(handle), specific
        return None

    def set_publisher_bitrate(self, session: int, handle: int, bitrate: int) -> None:
        """VideoRoom "configure" with ``bitrate`` on the publisher's own handle (sent
        from here: Janus takes requests for a session from any transport; the event
        goes to simple-whip-server, which drops a transaction it does not know).
        Janus answers it with a REMB of ``bitrate`` at once, then every 5 s."""
        r = httpx.post(f"{self.janus_url}/{session}/{handle}", timeout=5, json={
            "janus": "message", "transaction": uuid.uuid4().hex,
            "body": {"request": "configure", "bitrate": bitrate}})
        r.raise_for_status()
        assert r.json().get("janus") == "ack", r.text


@pytest.fixture
def admin_sfu(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = AdminSfu(tmp_path / "sfu")
    (tmp_path / "sfu").mkdir()
    s.start()
    try:
        yield s
    finally:
        s.stop()


async def wait_status(http: httpx.AsyncClient, what: str, check: Callable[[dict[str, Any]], bool],
                      timeout: float, seen: list[dict[str, Any]]) -> dict[str, Any]:
    """/status's ``publish`` section once ``check`` holds (polled every 0.25 s);
    every section polled is appended to ``seen``."""
    with trio.move_on_after(timeout):
        while True:
            publish: dict[str, Any] = (await http.get("/status")).json()["publish"]
            seen.append(publish)
            if check(publish):
                return publish
            await trio.sleep(0.25)
    last = [(p.get("estimate_bps"), p.get("bitrate_bps")) for p in seen[-8:]]
    raise AssertionError(f"expected {what} within {timeout} s; /status publish "
                         f"(estimate_bps, bitrate_bps) last seen: {last}")


async def publisher_handle(sfu: AdminSfu, timeout: float = 10.0) -> tuple[int, int,
                                                                             dict[str, Any]]:
    """The publisher's (session, handle, plugin info) once Janus lists it."""
    with trio.fail_after(timeout):
        while True:
            found = await trio.to_thread.run_sync(sfu.publisher_handle)
            if found is not None:
                return found
            await trio.sleep(0.2)


async def watch_status(http: httpx.AsyncClient, seconds: float) -> list[dict[str, Any]]:
    """/status's ``publish`` section every 0.25 s for ``seconds``."""
    out: list[dict[str, Any]] = []
    with trio.move_on_after(seconds):
        while True:
            out.append((await http.get("/status")).json()["publish"])
            await trio.sleep(0.25)
    return out


@pytest.mark.timeout(150)
async def test_janus_remb_cap_pulls_the_published_encoding_down_and_lets_it_back_up(
        tmp_path: Path, admin_sfu: AdminSfu) -> None:
    """Issue 17's "adaptation like a peer's", against the real SFU: Janus's VideoRoom
    sends a publisher REMB with its bitrate cap. The room starts at 3 Mbit/s (above
    anything the agent sends); the cap is then lowered to REMB_CAP on the publisher's
    handle. The estimate must follow it down, and the published encoding (the only
    tier, so the one that follows its readers' demand) must go down within the tier;
    lifting the cap lets it climb back to the tier's rate."""
    sfu = admin_sfu
    observe = f"127.0.0.1:{janus.free_port()}"
    config = publisher_config(tmp_path / "agent", sfu.endpoint_url, sfu.token, observe=observe)
    # one tier, so the published encoding is the lowest one (it follows demand), and
    # grain so that the encoder needs its whole rate, as a camera does
    config.write_text(config.read_text().replace(
        "max_bitrate = 800000\n", "max_bitrate = 800000\ntiers = []\npattern_noise = 8\n"))
    tier_rate = 800_000
    agent = AgentProcess(config)
    seen: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery, httpx.AsyncClient(
            base_url=f"http://{observe}", trust_env=False) as http:
        await agent.start(nursery)
        await agent.wait_for("publish.connected", timeout=20)
        await wait_publisher(sfu)
        session, handle, info = await publisher_handle(sfu)
        assert info.get("bitrate") == sfu.room_bitrate, info
        before = await wait_status(
            http, f"the encoder near its tier's {tier_rate} bit/s before the cap",
            lambda p: ((p["bitrate_bps"] or 0) > 0.6 * tier_rate
                       and (p["estimate_bps"] or 0) > 2 * REMB_CAP), 30, seen)

        # Janus asks for less
        mark, t0 = len(agent.events), trio.current_time()
        await trio.to_thread.run_sync(sfu.set_publisher_bitrate, session, handle, REMB_CAP)
        _s, _h, info = await publisher_handle(sfu)
        assert info.get("bitrate") == REMB_CAP, f"Janus did not take the cap: {info}"
        capped = await wait_status(
            http, f"the estimate down to about Janus's REMB of {REMB_CAP}",
            lambda p: p["estimate_bps"] is not None and p["estimate_bps"] <= 1.05 * REMB_CAP,
            10, seen)
        est_took = trio.current_time() - t0
        budget = video_budget(REMB_CAP, True)
        adapted = await agent.wait_for(
            "media.tier.adapted", since=mark, timeout=10,
            where=lambda e: e["bitrate"] <= 1.1 * budget)
        encoder = await agent.wait_for(
            "media.encoder.bitrate", since=mark, timeout=10,
            where=lambda e: e["new"] <= 1.1 * budget)
        sent = await wait_status(
            http, f"the rate sent to Janus down to about its REMB of {REMB_CAP}",
            lambda p: (p["bitrate_bps"] or tier_rate) <= REMB_CAP, 20, seen)
        sent_took = trio.current_time() - t0
        remb = [e for e in agent.find("peer.bandwidth", since=mark)
                if e.get("whip") and e.get("remb_bps")]
        print(f"before the cap: sent {before['bitrate_bps']} bit/s, estimate "
              f"{before['estimate_bps']}; cap {REMB_CAP}: estimate {capped['estimate_bps']} "
              f"after {est_took:.1f} s; encoder {encoder['old']} -> {encoder['new']} "
              f"(tier.adapted {adapted['bitrate']}, demand {adapted['demand_bps']}); "
              f"sent {sent['bitrate_bps']} bit/s (5 s mean) after {sent_took:.1f} s; "
              f"peer.bandwidth: {[(e['estimate_bps'], e['remb_bps'], e['reason']) for e in remb]}")
        assert encoder["new"] >= 150_000, encoder  # within the tier: not below min_bitrate
        assert adapted["max_fps"] is None or adapted["max_fps"] > 0, adapted
        # while capped, the estimate stays at the cap
        held = await watch_status(http, 15.0)
        estimates = [p["estimate_bps"] or 0 for p in held]
        rates = [p["bitrate_bps"] or 0 for p in held]
        top_rate = max(e["new"] for e in agent.find("media.encoder.bitrate", since=mark))
        mean = sum(rates) // len(rates)
        print(f"15 s capped: estimate {min(estimates)}-{max(estimates)}, sent (5 s mean) "
              f"{min(rates)}-{max(rates)} bit/s (mean {mean}), encoder up to {top_rate}")
        # Janus's REMB (every 5 s) is a cap, and the publisher takes it as one
        # (Tuning.remb_always_caps): the estimate never climbs past it, and what
        # is sent stays under it (the 5 s mean may touch it: a key frame, audio)
        assert (mean <= 1.1 * REMB_CAP and max(rates) <= 1.25 * REMB_CAP
                and max(estimates) <= REMB_CAP), (
            f"expected what reaches Janus to stay about its REMB of {REMB_CAP} while capped "
            f"(the estimate re-capped by each REMB, 5 s apart); saw sent {min(rates)}-"
            f"{max(rates)} bit/s (mean {mean}), estimate {min(estimates)}-{max(estimates)}")

        # Janus lifts the cap: back to the tier's rate
        mark, t1 = len(agent.events), trio.current_time()
        await trio.to_thread.run_sync(sfu.set_publisher_bitrate, session, handle,
                                      sfu.room_bitrate)
        back = await agent.wait_for("media.tier.adapted", since=mark, timeout=40,
                                    where=lambda e: e["bitrate"] >= 0.9 * tier_rate)
        back_took = trio.current_time() - t1
        print(f"cap lifted: encoder back to {back['bitrate']} bit/s after {back_took:.1f} s")
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(10) == 0
        nursery.cancel_scope.cancel()
