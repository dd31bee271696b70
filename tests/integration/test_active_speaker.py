"""The active speaker from what real aiortc senders put on their audio packets.

Two participants, each a real aiortc peer sending Opus to a viewer peer of
its own (the agent's mesh: one connection per participant). Each sender's
aiortc measures every frame it encodes and sends the level as RFC 6464's
``ssrc-audio-level`` extension, as browsers do. The viewers' audio
receivers are hooked by rtc/levels.py the way rtc/peer.py does with the
display on and the speakerphone off: the levels pick the speaker on the
shared DisplayState, and aiortc decodes none of the audio. Then the same in
the agent process, on Xvfb: the participant who talks gets the highlight.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import structlog
import trio
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack
from support.agent import STREAMING_MEDIA, AgentProcess, write_config
from support.aioclose import close_all_within
from support.devserver import DevServer
from support.glimpse_client import create_room, register
from support.rtcpeer import BrowserPeer
from support.screenshot import code_in, grab
from support.xvfb import xvfb
from trio_asyncio import aio_as_trio

from glimpse_edge.display.layout import fit, grid
from glimpse_edge.display.state import DisplayState
from glimpse_edge.rtc import compat
from glimpse_edge.rtc.levels import PeerLevels, RoomSpeaker, problems

RATE = 48_000
SAMPLES = 960  # 20 ms


class Voice(MediaStreamTrack):
    """A 440 Hz tone at -12 dBFS while ``loud``, digital silence otherwise."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.loud = False
        self.n = 0
        self.started = time.monotonic()
        t = np.arange(SAMPLES) / RATE
        self.tone = (0.25 * 32767 * np.sin(2 * math.pi * 440 * t)).astype(np.int16)

    async def recv(self) -> av.AudioFrame:
        due = self.started + self.n * SAMPLES / RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        samples = self.tone if self.loud else np.zeros(SAMPLES, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = RATE, self.n * SAMPLES
        frame.time_base = Fraction(1, RATE)
        self.n += 1
        return frame


async def test_the_loud_participant_becomes_the_speaker_and_nothing_is_decoded(
    nursery: trio.Nursery,
) -> None:
    """On the agent's trio-asyncio loop (the ``nursery`` fixture opens it)."""
    assert problems() == []

    async def run() -> tuple[list[tuple[str | None, float]], list[int]]:
        compat.check()
        state = DisplayState("room")
        voices, pcs, receivers = {}, [], []
        for key in ("alice", "bob"):
            state.set_tile(key, key, "live")
            voice = voices[key] = Voice()
            sender, viewer = RTCPeerConnection(), RTCPeerConnection()
            pcs += [sender, viewer]
            sender.addTransceiver(voice, direction="sendonly")
            viewing = viewer.addTransceiver("audio", direction="recvonly")
            PeerLevels(state, key, structlog.get_logger()).hook(viewing.receiver, drain=True)
            receivers.append(viewing.receiver)
            await sender.setLocalDescription(await sender.createOffer())
            await viewer.setRemoteDescription(sender.localDescription)
            await viewer.setLocalDescription(await viewer.createAnswer())
            await sender.setRemoteDescription(viewer.localDescription)
        assert "ssrc-audio-level" in pcs[1].localDescription.sdp, "negotiated"

        async def speaker_becomes(key: str | None, within: float) -> float:
            t0 = time.monotonic()
            while time.monotonic() - t0 < within:
                if state.snapshot().speaker == key:
                    return time.monotonic() - t0
                await asyncio.sleep(0.02)
            raise AssertionError(f"speaker {state.snapshot().speaker!r}, not {key!r}")

        seen: list[tuple[str | None, float]] = []
        try:
            # connected, and half a second of silence from each sent
            t0 = time.monotonic()
            while min(v.n for v in voices.values()) < 25:
                assert time.monotonic() - t0 < 20, {k: v.n for k, v in voices.items()}
                await asyncio.sleep(0.02)
            assert state.snapshot().speaker is None
            voices["alice"].loud = True
            seen.append(("alice", await speaker_becomes("alice", 8)))
            voices["alice"].loud, voices["bob"].loud = False, True
            seen.append(("bob", await speaker_becomes("bob", 8)))
            # aiortc decoded none of it: its tracks' queues are empty
            queued = [r.track._queue.qsize() for r in receivers]  # type: ignore[attr-defined]
            RoomSpeaker.of(state).remove("bob")
        finally:
            await close_all_within(*pcs)
        return seen, queued

    seen, queued = await aio_as_trio(run)()
    print("speaker after", seen)
    for _key, took in seen:
        assert 0.5 <= took <= 4.0, seen  # the hold, not at once and not never
    assert queued == [0, 0], queued


# ------------------------------------------------------- in the agent, on a screen

W, H = 1280, 720
FW, FH = 640, 360
SPEAKER_RGB = (255, 196, 0)  # display/screen.py's highlight


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb not installed")
async def test_the_agent_highlights_the_participant_who_talks(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The agent (display on, speakerphone off) on Xvfb: alice sends her camera and a
    tone from her microphone, bob sends nothing; the highlight goes around alice's
    tile (the one showing the pattern), not bob's ("no video")."""
    alice_id, alice_token = await register(devserver.api_url, "alice", "alice-password")
    bob_id, bob_token = await register(devserver.api_url, "bob", "bob-password")
    _device_id, device_token = await register(devserver.api_url, "device", "device-password")
    room_id = await create_room(devserver.api_url, alice_token, "Room")
    alice = BrowserPeer("alice", send_video=(FW, FH), send_tone=440.0)
    bob = BrowserPeer("bob")
    with xvfb(W, H) as display:
        agent = AgentProcess(
            write_config(tmp_path, ws_url=devserver.ws_url, room_id=room_id,
                         token=device_token, log_level="debug",
                         extra=STREAMING_MEDIA + '\n[display]\nenabled = true\ndriver = "x11"\n'),
            env={"DISPLAY": display, "WAYLAND_DISPLAY": ""})
        await agent.start(nursery)
        await agent.wait_for("display.opened", driver="x11", timeout=20)
        async with alice.joined(devserver.ws_url, alice_token, room_id, leave=True):
            await agent.wait_for("room.joined", timeout=20)
            async with bob.joined(devserver.ws_url, bob_token, room_id, leave=True):
                await agent.wait_for("peer.connected", peer=bob_id, timeout=20)
                await agent.wait_for("display.no_video", peer=bob_id, timeout=10)
                tiles = grid(2, W, H).tiles
                t0 = time.monotonic()
                with trio.fail_after(15):
                    while True:
                        rgb = await trio.to_thread.run_sync(grab, display)
                        lit = [tuple(rgb[t.y - 2, t.x + t.w // 2]) == SPEAKER_RGB
                               for t in tiles]
                        if any(lit):
                            break
                        await trio.sleep(0.1)
                print(f"highlighted {time.monotonic() - t0:.1f} s after bob's no video")
                assert lit.count(True) == 1, lit
                # the highlighted tile is alice's: hers shows the pattern, bob's "no video"
                (speaker,) = [t for t, on in zip(tiles, lit, strict=True) if on]
                (quiet,) = [t for t, on in zip(tiles, lit, strict=True) if not on]
                assert code_in(rgb, fit(FW, FH, speaker), (FW, FH)) is not None
                assert code_in(rgb, fit(FW, FH, quiet), (FW, FH)) is None
                assert agent.find("display.speaker", peer=alice_id)
                assert not agent.find("display.speaker", peer=bob_id)
        for problem in ("display.speaker_unavailable", "display.speaker_level_failed",
                        "peer.unwanted_track", "rtc.asyncio_error"):
            assert not agent.find(problem), agent.find(problem)
        await agent.stop()
