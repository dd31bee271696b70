"""Closing an aiortc connection at any moment of its connect leaves nothing running.

aiortc and aioice go on connecting after ``close()``: consent checks, RTP and
RTCP tasks started on a closed connection would run for the life of the
agent (rtc/aio.py). Real pairs of aiortc connections on loopback, each closed
at a random moment between the answer and a few ICE/DTLS round trips later.
The sender sends packets, as the agent's tracks do (aiortc only packetizes).
"""

from __future__ import annotations

import asyncio
import random
from fractions import Fraction

import av
import numpy as np
import trio
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack
from av.packet import Packet
from trio_asyncio import aio_as_trio

from glimpse_edge.introspect import asyncio_task_count
from glimpse_edge.rtc.closing import REAP_AFTER, close_peer_connection

PAIRS = 40
# Closes fall between the answer and this many times the time a pair takes to
# connect here (measured first: a loaded machine connects more slowly).
CLOSE_SPAN = 1.5
FRAME_INTERVAL = 1 / 30


def _key_frame() -> bytes:
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = 160, 96, "yuv420p"
    codec.time_base = Fraction(1, 30)
    codec.options = {"profile": "baseline", "tune": "zerolatency"}
    frame = av.VideoFrame.from_ndarray(np.zeros((96, 160, 3), np.uint8), format="rgb24")
    return b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])


class KeyFrames(MediaStreamTrack):
    """The same H.264 key frame, 30 times a second, as packets."""

    kind = "video"

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data, self._n = data, 0

    async def recv(self) -> Packet:  # type: ignore[override]
        await asyncio.sleep(FRAME_INTERVAL)  # the track's pace, as a camera's
        packet = av.Packet(self._data)
        packet.pts, packet.time_base = self._n * 3000, Fraction(1, 90000)
        self._n += 1
        return packet


async def _pair(data: bytes) -> tuple[RTCPeerConnection, RTCPeerConnection]:
    """A sender and a receiver, negotiated (H.264), connecting."""
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    transceiver = sender.addTransceiver(KeyFrames(data), direction="sendonly")
    capabilities = RTCRtpSender.getCapabilities("video")
    assert capabilities is not None
    transceiver.setCodecPreferences(
        [c for c in capabilities.codecs if c.mimeType == "video/H264"])
    await aio_as_trio(sender.setLocalDescription)(await aio_as_trio(sender.createOffer)())
    await aio_as_trio(receiver.setRemoteDescription)(sender.localDescription)
    await aio_as_trio(receiver.setLocalDescription)(await aio_as_trio(receiver.createAnswer)())
    await aio_as_trio(sender.setRemoteDescription)(receiver.localDescription)
    return sender, receiver


async def test_connections_closed_while_connecting_leave_no_task_behind(
    nursery: trio.Nursery,
) -> None:
    rng = random.Random(7)
    data = _key_frame()
    baseline = asyncio_task_count()
    started = trio.current_time()
    sender, receiver = await _pair(data)
    with trio.fail_after(10):
        while sender.connectionState != "connected":  # noqa: ASYNC110 - aiortc's state
            await trio.sleep(0.005)
    latest_close = CLOSE_SPAN * (trio.current_time() - started)
    for pc in (sender, receiver):
        await aio_as_trio(close_peer_connection)(pc)
    connected = 0
    for i in range(PAIRS):
        sender, receiver = await _pair(data)
        await trio.sleep(rng.random() * latest_close)  # a random moment of the connect
        connected += sender.connectionState == "connected"
        first, second = (sender, receiver) if i % 2 else (receiver, sender)
        with trio.fail_after(10):
            await aio_as_trio(close_peer_connection)(first)
            await aio_as_trio(close_peer_connection)(second)
    assert 0 < connected < PAIRS, f"closes should fall before and after connecting: {connected}"
    # once the last reap is through, only what ran before is left
    with trio.move_on_after(REAP_AFTER + 8):
        while asyncio_task_count() > baseline:  # noqa: ASYNC110 - no event for a task's end
            await trio.sleep(0.1)
    assert asyncio_task_count() == baseline, (
        f"{asyncio_task_count() - baseline} asyncio tasks left running by closed connections")
