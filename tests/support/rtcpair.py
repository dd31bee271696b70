"""A pair of real aiortc connections on loopback, in-process, sending H.264.

The sender sends packets, as the agent's tracks do (aiortc only packetizes):
the same small key frame, 30 times a second. Used where a test needs aiortc's
own sender and receiver but not the agent (tests/integration).
"""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack
from av.packet import Packet
from trio_asyncio import aio_as_trio

FRAME_INTERVAL = 1 / 30


def key_frame() -> bytes:
    """One small H.264 key frame (160x96, baseline), Annex B."""
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


async def h264_pair(data: bytes, *, rtx: bool = False
                    ) -> tuple[RTCPeerConnection, RTCPeerConnection]:
    """A sender of ``data`` (:class:`KeyFrames`) and a receiver, negotiated (H.264,
    with RTX if ``rtx``), connecting. From Trio, through trio-asyncio."""
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    transceiver = sender.addTransceiver(KeyFrames(data), direction="sendonly")
    capabilities = RTCRtpSender.getCapabilities("video")
    assert capabilities is not None
    kinds = ("video/H264", "video/rtx") if rtx else ("video/H264",)
    transceiver.setCodecPreferences([c for c in capabilities.codecs if c.mimeType in kinds])
    await aio_as_trio(sender.setLocalDescription)(await aio_as_trio(sender.createOffer)())
    await aio_as_trio(receiver.setRemoteDescription)(sender.localDescription)
    await aio_as_trio(receiver.setLocalDescription)(await aio_as_trio(receiver.createAnswer)())
    await aio_as_trio(sender.setRemoteDescription)(receiver.localDescription)
    return sender, receiver
