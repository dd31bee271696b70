"""The dev server's viewer page, a Glimpse browser client, in real headless Chromium.

The page is what the agent's browser tests join rooms with, so these tests
pin down that it behaves like a Glimpse browser: it logs in, joins, calls
newcomers, answers offers, decodes media and drops participants that leave.
Two viewer pages talk to each other here; one sends Chromium's fake camera
and microphone (``?send=1``).

Every wait polls ``window.glimpseViewer`` with a timeout and fails with the
page's last state and console (see tests/support/browser.py); nothing sleeps
to synchronise.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import httpx
import pytest
from support.browser import Browser, ViewerPage, open_browser, viewer_url
from support.devserver import DevServer, devserver_process
from support.glimpse_client import create_room, login, register

PASSWORD = "viewer test password"
MEDIA_TIMEOUT = 25.0


def http(server: DevServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.api_url, timeout=10, trust_env=False)


async def room_with(server: DevServer, *usernames: str) -> tuple[str, dict[str, str]]:
    """Register the users; the first creates a room. Returns (room id, {username: id})."""
    ids: dict[str, str] = {}
    token = ""
    for name in usernames:
        ids[name], tok = await register(server.api_url, name, PASSWORD)
        token = token or tok
    return await create_room(server.api_url, token, "Viewer test"), ids


async def join(
    browser: Browser, server: DevServer, user: str, room_id: str, **params: str | int | bool
) -> ViewerPage:
    page = await browser.open_viewer(
        viewer_url(server, user=user, password=PASSWORD, room=room_id, **params), name=user
    )
    await page.wait_for("s => s.status === 'joined'", 10, what=f"{user} to join the room")
    return page


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_page_and_assets_are_served(devserver: DevServer) -> None:
    async with http(devserver) as h:
        for path in ("/", "/viewer"):
            r = await h.get(path)
            assert r.status_code == 200, (path, r.status_code)
            assert r.headers["content-type"].startswith("text/html"), r.headers
            assert 'id="tile-template"' in r.text and "/static/viewer.js" in r.text
        for path, mime in (("/static/viewer.js", "javascript"), ("/static/viewer.css", "text/css")):
            r = await h.get(path)
            assert r.status_code == 200 and mime in r.headers["content-type"], (path, r.headers)
        assert (await h.get("/static/nope.js")).status_code == 404
        info = (await h.get("/api/info")).json()
        assert info["name"] == "glimpse-devserver" and "/ws" in info["websocket"]

    async with open_browser() as browser:
        page = await browser.open_viewer(viewer_url(devserver), name="blank")
        state = await page.state()
        assert state["status"] == "idle" and state["peers"] == {} and state["me"] is None
        # The stylesheet applied (dark background), the script ran, nothing failed.
        bg = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert bg == "rgb(16, 20, 24)", bg
        assert await page.evaluate("document.getElementById('login').hidden") is False
        assert await page.console_errors() == []

        # The form: a wrong password is reported on the page, then the right one joins.
        _, token = await register(devserver.api_url, "ann", PASSWORD)
        room_id = await create_room(devserver.api_url, token, "Form test")

        async def submit(password: str) -> None:
            fields = json.dumps({"user": "ann", "password": password, "room": room_id})
            await page.evaluate(
                f"(() => {{ for (const [k, v] of Object.entries({fields}))"
                " document.getElementById(k).value = v;"
                " document.getElementById('login').requestSubmit(); })()"
            )

        await submit("wrong")
        state = await page.wait_for("s => s.status === 'error'", 10, what="a login error")
        assert "Invalid username or password" in state["error"], state["error"]
        assert await page.evaluate("document.getElementById('error').textContent") == (
            "Could not join: Invalid username or password"
        )
        await submit(PASSWORD)
        state = await page.wait_for("s => s.status === 'joined'", 10, what="joining via the form")
        assert state["room"] == {"id": room_id, "name": "Form test"}
        assert await page.evaluate("document.getElementById('login').hidden") is True


async def test_viewer_decodes_video_from_sending_browser(
    devserver: DevServer, tmp_path: Path
) -> None:
    room_id, ids = await room_with(devserver, "receiver", "sender")
    async with open_browser() as browser:
        receiver = await join(browser, devserver, "receiver", room_id)
        sender = await join(browser, devserver, "sender", room_id, send=True)
        sender_id, receiver_id = ids["sender"], ids["receiver"]

        # The receiver (an existing member) got user_joined and called the newcomer.
        state = await receiver.wait_for(
            f"s => (s.peers[{sender_id!r}]?.video.framesDecoded ?? 0) >= 30"
            f" && s.peers[{sender_id!r}].audio.packetsReceived > 0",
            MEDIA_TIMEOUT,
            what="30 decoded video frames and some audio from the sending page",
        )
        peer = state["peers"][sender_id]
        assert state["me"] == {"id": receiver_id, "username": "receiver"}
        assert state["room"]["id"] == room_id
        assert peer["username"] == "sender" and peer["connectionState"] == "connected"
        video, audio = peer["video"], peer["audio"]
        assert video["codec"] in {"video/VP8", "video/VP9", "video/H264", "video/AV1"}, video
        assert video["frameWidth"] > 0 and video["frameHeight"] > 0, video
        assert video["firstFrameAt"] is not None and video["firstFrameAt"] >= state["joinedAt"]
        assert audio["codec"] == "audio/opus", audio
        assert audio["totalSamplesReceived"] > 0, audio
        assert state["log"] and any(e["event"] == "user_joined" for e in state["log"])

        # The sender answered (it did not offer) and sends camera and microphone.
        sent = await sender.wait_for(
            f"s => s.peers[{receiver_id!r}]?.sent?.video?.framesSent > 0",
            10,
            what="the sender to report sent video frames",
        )
        assert sent["local"]["video"]["width"] == 1280, sent["local"]
        assert sent["local"]["audio"] is not None
        out_kinds = [
            e.get("kind") for e in sent["log"] if e["event"] == "signal_out"
        ]
        assert out_kinds[:1] == ["answer"], out_kinds

        # The page shows what it decodes.
        selector = json.dumps(f'.tile[data-peer="{sender_id}"] [data-k="resolution"]')
        shown = await receiver.evaluate(f"document.querySelector({selector}).textContent")
        assert shown == f"{video['frameWidth']}\u00d7{video['frameHeight']}", shown
        playing = await receiver.evaluate(
            "(() => { const v = document.querySelector('.tile video');"
            " return {w: v.videoWidth, paused: v.paused, muted: v.muted}; })()"
        )
        assert playing["w"] > 0 and playing["paused"] is False and playing["muted"] is True

        shot = await receiver.screenshot(tmp_path / "viewer-receiving.png")
        width, height = png_size(shot)
        assert width >= 1000 and height >= 600, (width, height)
        for page in (receiver, sender):
            assert await page.console_errors() == [], page.name


async def test_tile_removed_when_participant_leaves_or_goes_offline(devserver: DevServer) -> None:
    room_id, ids = await room_with(devserver, "stays", "closes", "leaves")
    async with open_browser() as browser:
        # Receive-only pages, and the less common options: end-of-candidates,
        # Glimpse's signal dialect, a token instead of a password.
        stays = await join(browser, devserver, "stays", room_id, eoc=True)
        closes = await join(browser, devserver, "closes", room_id, dialect=True)
        _, leaves_token = await login(devserver.api_url, "leaves", PASSWORD)
        leaves = await browser.open_viewer(
            viewer_url(devserver, token=leaves_token, room=room_id), name="leaves"
        )
        both = f"[{ids['closes']!r}, {ids['leaves']!r}]"
        await stays.wait_for(
            f"s => {both}.every(id => s.peers[id]?.connectionState === 'connected')",
            MEDIA_TIMEOUT,
            what="connections to both other pages",
        )

        await closes.close()  # the socket closes: user_offline
        state = await stays.wait_for(
            f"s => !({ids['closes']!r} in s.peers)", 10, what="the closed page's tile to go"
        )
        assert ids["leaves"] in state["peers"]
        assert state["members"][ids["closes"]]["online"] is False
        assert any(e["event"] == "user_offline" for e in state["log"])

        await leaves.leave()  # leave_room: user_left
        state = await stays.wait_for(
            f"s => !({ids['leaves']!r} in s.peers)", 10, what="the leaver's tile to go"
        )
        assert ids["leaves"] not in state["members"]
        assert any(e["event"] == "user_left" for e in state["log"])
        tiles = await stays.evaluate("document.querySelectorAll('.tile').length")
        assert tiles == 0 and await stays.evaluate("!document.getElementById('empty').hidden")
        left = await leaves.state()
        assert left["status"] == "left" and left["peers"] == {}
        assert left["me"] == {"id": ids["leaves"], "username": "leaves"}  # from the token
        # stays sent end-of-candidates markers; the others took them without complaint.
        for page in (leaves, stays):
            log = (await page.state())["log"]
            assert not [e for e in log if e["event"] in ("candidate_rejected", "signal_error")], log
            assert await page.console_errors() == [], page.name


@pytest.mark.slow
async def test_reoffer_ice_restart_and_rebuild_keep_media_flowing(devserver: DevServer) -> None:
    room_id, ids = await room_with(devserver, "receiver", "sender")
    sender_id = ids["sender"]
    frames = f"(s.peers[{sender_id!r}]?.video.framesDecoded ?? 0)"
    async with open_browser() as browser:
        sender = await join(browser, devserver, "sender", room_id, send=True)
        # The room's creator is a member already: joining tells nobody, so
        # only ?call=1 (offer to listed active members) connects it.
        receiver = await join(browser, devserver, "receiver", room_id, call=True)
        await receiver.wait_for(f"s => {frames} >= 10", MEDIA_TIMEOUT, what="video via call=1")

        for action, restart in (("renegotiate", False), ("restartIce", True)):
            before = (await receiver.stats())["peers"][sender_id]["video"]["framesDecoded"]
            await receiver.evaluate(f"window.glimpseViewer.{action}({sender_id!r})")
            applied = f"e.event === 'offer_on_existing' && e.iceRestart === {json.dumps(restart)}"
            await sender.wait_for(
                f"s => s.log.some(e => {applied})",
                10,
                what=f"the sender to apply the {action} offer to its connection",
            )
            state = await receiver.wait_for(
                f"s => s.peers[{sender_id!r}].signalingState === 'stable'"
                f" && {frames} >= {before + 15}",
                MEDIA_TIMEOUT,
                what=f"15 more frames after {action}",
            )
            assert state["peers"][sender_id]["connections"] == 1, state["peers"]

        # What Glimpse does after `failed`: a NEW connection and a new offer. The
        # sender applies it to its existing connection (new ICE and DTLS).
        await receiver.evaluate(f"window.glimpseViewer.rebuild({sender_id!r})")
        state = await receiver.wait_for(
            f"s => s.peers[{sender_id!r}].connections === 2 && {frames} >= 15",
            30,
            what="video on the rebuilt connection",
        )
        assert state["peers"][sender_id]["connectionState"] == "connected"
        for page in (receiver, sender):
            assert await page.console_errors() == [], page.name


@pytest.mark.slow
async def test_pages_rejoin_after_server_restart_while_media_keeps_flowing(tmp_path: Path) -> None:
    async with devserver_process(tmp_path / "glimpse.db") as proc:
        server = proc.server
        room_id, ids = await room_with(server, "receiver", "sender")
        sender_id = ids["sender"]
        frames = f"(s.peers[{sender_id!r}]?.video.framesDecoded ?? 0)"
        async with open_browser() as browser:
            receiver = await join(browser, server, "receiver", room_id)
            sender = await join(browser, server, "sender", room_id, send=True)
            await receiver.wait_for(f"s => {frames} >= 10", MEDIA_TIMEOUT, what="video")

            await proc.kill()
            state = await receiver.wait_for(
                "s => s.ws !== 'open' && s.status === 'reconnecting'", 10, what="reconnecting"
            )
            before = state["peers"][sender_id]["video"]["framesDecoded"]
            # Media is peer to peer: it does not need the signaling server.
            await receiver.wait_for(
                f"s => {frames} >= {before + 15} && s.ws !== 'open'",
                10,
                what="video to keep flowing while the server is down",
            )

            await proc.start()
            for page in (receiver, sender):
                state = await page.wait_for(
                    "s => s.ws === 'open' && s.status === 'joined'", 15, what="rejoined"
                )
            state = await receiver.wait_for(
                f"s => {frames} >= {before + 30}", 10, what="video after the restart"
            )
            peer = state["peers"][sender_id]
            assert peer["connections"] == 1 and peer["connectionState"] == "connected", peer
