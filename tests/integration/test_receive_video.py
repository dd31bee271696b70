"""A remote participant's video, taken encoded from aiortc's receiver (compat.tap_encoded_video).

Two real aiortc peers on loopback: one sends the test pattern (aiortc
encodes it, VP8 or H.264), the other's video receiver is tapped before
negotiation. Its frames reach our sink as encoded pictures, which the
display's decoder (display/decode.py) decodes, the frame codes intact;
aiortc's own decoder decodes nothing, and its thread ends with the
connection.
"""

from __future__ import annotations

import asyncio
import threading
from fractions import Fraction

import av
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack

from glimpse_edge.display.decode import EncodedFrame, VideoDecoder, is_keyframe
from glimpse_edge.media.framecode import read_code
from glimpse_edge.media.testpattern import TestPatternSource
from glimpse_edge.rtc import compat

FRAMES = 40


class Pattern(MediaStreamTrack):
    """The test pattern with its frame code, at 30 fps."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.source = TestPatternSource(320, 180, 30)
        self.n = 0

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(1 / 30)
        frame = self.source.render(self.n, 0, self.n * 3000)
        frame.pts, frame.time_base = self.n * 3000, Fraction(1, 90_000)
        self.n += 1
        return frame


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_remote_video_reaches_our_decoder_and_not_aiortcs(codec: str) -> None:
    async def run() -> tuple[list[int], int, list[str], bool]:
        compat.check()
        codes: list[int] = []
        enough = asyncio.Event()
        loop = asyncio.get_running_loop()
        errors: list[str] = []

        def shown(frame: av.VideoFrame) -> None:  # on the decoder's thread
            code = read_code(frame)
            if code is not None:
                codes.append(code.counter)
            if len(codes) >= FRAMES:
                loop.call_soon_threadsafe(enough.set)

        decoder = VideoDecoder(codec, shown, lambda: None, name="remote")  # type: ignore[arg-type]

        def sink(name: str, data: bytes, timestamp: int) -> None:
            assert name == codec, (name, codec)
            decoder.submit(EncodedFrame(data, is_keyframe(codec, data), timestamp))  # type: ignore[arg-type]

        sender_pc, viewer_pc = RTCPeerConnection(), RTCPeerConnection()
        sending = sender_pc.addTransceiver(Pattern(), direction="sendonly")
        prefs = [c for c in RTCRtpSender.getCapabilities("video").codecs
                 if c.mimeType.lower() == f"video/{codec}"]
        sending.setCodecPreferences(prefs)
        viewing = viewer_pc.addTransceiver("video", direction="recvonly")
        compat.tap_encoded_video(viewing.receiver, sink, lambda exc: errors.append(str(exc)))
        try:
            await sender_pc.setLocalDescription(await sender_pc.createOffer())
            await viewer_pc.setRemoteDescription(sender_pc.localDescription)
            await viewer_pc.setLocalDescription(await viewer_pc.createAnswer())
            await sender_pc.setRemoteDescription(viewer_pc.localDescription)
            await asyncio.wait_for(enough.wait(), timeout=20)
            # what aiortc decoded itself would wait in its track's queue
            aiortc_decoded = viewing.receiver.track._queue.qsize()  # type: ignore[attr-defined]
        finally:
            await sender_pc.close()
            await viewer_pc.close()
            decoder.close()
        leftover = any(t.name == "video-decoder" and t.is_alive()
                       for t in threading.enumerate())
        return codes, aiortc_decoded, errors, leftover

    codes, aiortc_decoded, errors, leftover = asyncio.run(run())
    assert len(codes) >= FRAMES and codes == sorted(codes), (
        f"expected {FRAMES} frames decoded by our decoder, in order; got codes {codes}")
    assert aiortc_decoded == 0, f"aiortc decoded {aiortc_decoded} frames itself"
    assert not errors, errors
    assert not leftover, "aiortc's decoder thread should end with the connection"


def test_a_keyframe_request_from_a_decoder_thread_reaches_the_sender_as_a_pli() -> None:
    """compat.send_pli on the real receiver, crossed from another thread like a decoder's."""
    from glimpse_edge.rtc.aio import spawn_aio_threadsafe

    async def run() -> tuple[int, list[str]]:
        compat.check()
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        frames = asyncio.Event()
        asked = asyncio.Event()
        requests = 0

        def on_request() -> None:
            nonlocal requests
            requests += 1
            asked.set()

        sender_pc, viewer_pc = RTCPeerConnection(), RTCPeerConnection()
        sending = sender_pc.addTransceiver(Pattern(), direction="sendonly")
        compat.hook_keyframe_request(sending.sender, on_request, lambda e: errors.append(str(e)))
        viewing = viewer_pc.addTransceiver("video", direction="recvonly")
        compat.tap_encoded_video(viewing.receiver, lambda *_: loop.call_soon(frames.set),
                                 lambda exc: errors.append(str(exc)))
        try:
            await sender_pc.setLocalDescription(await sender_pc.createOffer())
            await viewer_pc.setRemoteDescription(sender_pc.localDescription)
            await viewer_pc.setLocalDescription(await viewer_pc.createAnswer())
            await sender_pc.setRemoteDescription(viewer_pc.localDescription)
            await asyncio.wait_for(frames.wait(), timeout=20)
            before = requests
            thread = threading.Thread(target=spawn_aio_threadsafe, args=(
                loop, lambda: compat.send_pli(viewing.receiver)))
            asked.clear()
            thread.start()
            await asyncio.wait_for(asked.wait(), timeout=10)
            thread.join()
            return requests - before, errors
        finally:
            await sender_pc.close()
            await viewer_pc.close()

    asked, errors = asyncio.run(run())
    assert asked >= 1, "the sender got no PLI"
    assert not errors, errors
