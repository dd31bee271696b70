"""The kiosk's self-view with the Pi camera (picamera2 stand-in): decoded from the lores tier.

A camera that encodes itself gives the agent no raw frame, so the self-view
subscribes to its lowest tier and decodes it with the display's decoder
(glimpse_edge/selfview.py). The stand-in films a clock (its frames carry the
frame code), so the code read back from the self-view tile on the X server's
picture proves it is the camera's own picture, live; when nobody has a tile
any more the preview lets go of the lores tier (its encoder stops once idle).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio
from support.agent import FAST_PEERS, AgentProcess, write_config
from support.devserver import DevServer
from support.glimpse_client import create_room, register
from support.picam import FakeCamera
from support.rtcpeer import BrowserPeer
from support.screenshot import label_bar, read_codes, text_pixels
from support.xvfb import xvfb

from glimpse_edge.display.layout import fit, grid

W, H = 1280, 720
# The camera at 720p: its automatic lower tier (the lores stream) is 640x360.
CW, CH = 1280, 720
LW, LH = CW // 2, CH // 2
FW, FH = 320, 180  # the remote participant's pattern
MEDIA = f"""
[video]
source = "picamera2"
width = {CW}
height = {CH}
framerate = 30
codec = "h264"
max_bitrate = 1500000

[audio]
source = "tone"

[display]
enabled = true
driver = "x11"
self_view = true

{FAST_PEERS}"""

pytestmark = pytest.mark.skipif(shutil.which("Xvfb") is None,
                                reason="Xvfb not installed (scripts/setup-env.sh installs it)")


async def test_the_self_view_decodes_the_cameras_lores_tier_while_shown(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery, fake_camera: FakeCamera
) -> None:
    _alice_id, alice_token = await register(devserver.api_url, "alice", "alice-password")
    _device_id, device_token = await register(devserver.api_url, "device", "device-password")
    room_id = await create_room(devserver.api_url, alice_token, "Room")
    layout = grid(1, W, H, self_view=True)
    assert layout.self_view is not None
    own = fit(LW, LH, layout.self_view)
    with xvfb(W, H) as display:
        agent = AgentProcess(
            write_config(tmp_path, ws_url=devserver.ws_url, room_id=room_id,
                         token=device_token, log_level="info", extra=MEDIA),
            env={**fake_camera.env(), "FAKE_PICAMERA2_FRAMECODE": "1",
                 "DISPLAY": display, "WAYLAND_DISPLAY": ""})
        await agent.start(nursery)
        try:
            await agent.wait_for("display.opened", driver="x11", timeout=20)
            await agent.wait_for("room.joined", timeout=20)
            alice = BrowserPeer("alice", send_video=(FW, FH))
            async with alice.joined(devserver.ws_url, alice_token, room_id, leave=True):
                decoding = await agent.wait_for("display.self_view.decoding", timeout=20)
                read = await read_codes(display, own, (LW, LH), 5, timeout=30)
                codes, ages, rgb = read.codes, read.ages_ms, read.rgb
                assert rgb is not None
                counters = [c.counter for c in codes]
                assert counters == sorted(counters), f"the camera's frames, in order: {counters}"
                assert text_pixels(rgb, label_bar(layout.self_view)) > 10, "'me'"
                mark = len(agent.events)
            # alice left: no tile, the idle page; the preview lets go of the lores tier
            closed = await agent.wait_for("display.decoder.closed", since=mark,
                                          track="self-view", timeout=15)
            assert closed["decoded"] > 0 and closed["errors"] == 0, closed
            stopped = await agent.wait_for("media.encoder.stopped", since=mark, tier=1,
                                           timeout=30)
            assert stopped["reason"] == "no peers", stopped
        finally:
            await agent.stop()
    print(f"self-view from the camera's {decoding['stream']} ({decoding['decoder']}): "
          f"frame on screen {sorted(ages)[len(ages) // 2]:.0f} ms after capture (median)")
    assert decoding["codec"] == "h264", decoding
    assert not agent.find("display.decoder.crashed"), agent.find("display.decoder.crashed")
