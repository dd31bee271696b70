"""The kiosk display in the agent (issue 16): remote participants' video on its screen.

The agent runs as a process with ``[display] enabled`` on Debian's Xvfb (SDL's
x11 driver). An aiortc participant sends the test pattern with its frame code;
the agent receives it (sendrecv video), decodes it with the display's decoder
and shows it: the code read back from the X server's picture climbs, and the
tile carries the name. A participant who sends no video gets "no video"; one
who leaves takes their decoder and tile along.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import trio
from support.agent import STREAMING_MEDIA, AgentProcess, write_config
from support.devserver import DevServer
from support.glimpse_client import create_room, register
from support.rtcpeer import BrowserPeer
from support.screenshot import code_in, grab, label_bar, text_pixels
from support.xvfb import xvfb

from glimpse_edge.display.layout import fit, grid
from glimpse_edge.media.framecode import FrameCode

W, H = 1280, 720
FW, FH = 640, 360
DISPLAY = """
[display]
enabled = true
driver = "x11"
"""

pytestmark = pytest.mark.skipif(shutil.which("Xvfb") is None,
                                reason="Xvfb not installed (scripts/setup-env.sh installs it)")


async def _codes_on_screen(display: str, count: int, timeout: float = 20.0) -> list[FrameCode]:
    """Frame codes read from the single tile, ``count`` different ones in a row."""
    rect = fit(FW, FH, grid(1, W, H).tiles[0])
    codes: list[FrameCode] = []
    with trio.fail_after(timeout):
        while len(codes) < count:
            rgb = await trio.to_thread.run_sync(grab, display)
            code = code_in(rgb, rect, (FW, FH))
            if code is not None and (not codes or code != codes[-1]):
                codes.append(code)
            await trio.sleep(0.1)
    return codes


async def test_a_participants_video_is_shown_then_freed(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    alice_id, alice_token = await register(devserver.api_url, "alice", "alice-password")
    bob_id, bob_token = await register(devserver.api_url, "bob", "bob-password")
    _device_id, device_token = await register(devserver.api_url, "device", "device-password")
    room_id = await create_room(devserver.api_url, alice_token, "Room")
    alice = BrowserPeer("alice", send_video=(FW, FH))
    with xvfb(W, H) as display:
        agent = AgentProcess(
            write_config(tmp_path, ws_url=devserver.ws_url, room_id=room_id,
                         token=device_token, log_level="info",
                         extra=STREAMING_MEDIA + DISPLAY),
            env={"DISPLAY": display, "WAYLAND_DISPLAY": ""})
        await agent.start(nursery)
        await agent.wait_for("display.opened", driver="x11", timeout=20)
        async with alice.joined(devserver.ws_url, alice_token, room_id, leave=True):
            await agent.wait_for("room.joined", timeout=20)
            await agent.wait_for("display.decoder.opened", timeout=20)
            codes = await _codes_on_screen(display, 5)
            counters = [c.counter for c in codes]
            assert counters == sorted(counters), counters
            now_ms = time.time() * 1000
            print(f"on screen ~{now_ms - codes[-1].wall_ms:.0f} ms after capture "
                  f"(loopback, with the screenshot's own delay)")
            rgb = await trio.to_thread.run_sync(grab, display)
            assert text_pixels(rgb, label_bar(grid(1, W, H).tiles[0])) > 50, "alice's name"

            # a participant with no camera: connected, then "no video"
            bob = BrowserPeer("bob")
            async with bob.joined(devserver.ws_url, bob_token, room_id, leave=True):
                await agent.wait_for("peer.connected", peer=bob_id, timeout=20)
                await agent.wait_for("display.no_video", peer=bob_id, timeout=5)
            assert not agent.find("display.no_video", peer=alice_id)
            mark = len(agent.events)
        # alice left: her decoder ends with her connection
        closed = await agent.wait_for("display.decoder.closed", since=mark, timeout=10)
        assert closed["decoded"] > 0 and closed["errors"] == 0, closed
        for problem in ("display.open_failed", "display.frame_failed", "rtc.asyncio_error",
                        "rtc.event_handler_error", "peer.unwanted_track"):
            assert not agent.find(problem), agent.find(problem)
        await agent.stop()
