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
from collections.abc import Callable
from fractions import Fraction

import av
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack
from support.aioclose import close_all_within

from glimpse_edge.display.decode import EncodedFrame, VideoDecoder, is_keyframe
from glimpse_edge.media.framecode import read_code
from glimpse_edge.media.testpattern import TestPatternSource
from glimpse_edge.rtc import compat

FRAMES = 40
# Each test's whole run, and each close, bounded from inside: a test that pytest's
# timeout had to kill mid-run left its asyncio loop running, and every later
# test that used asyncio failed with it (a CI run lost 18 tests that way).
RUN_TIMEOUT = 100.0


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
            await close_all_within(sender_pc, viewer_pc)
            decoder.close()
        leftover = any(t.name == "video-decoder" and t.is_alive()
                       for t in threading.enumerate())
        return codes, aiortc_decoded, errors, leftover

    codes, aiortc_decoded, errors, leftover = asyncio.run(asyncio.wait_for(run(), RUN_TIMEOUT))
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
            await close_all_within(sender_pc, viewer_pc)

    asked, errors = asyncio.run(asyncio.wait_for(run(), RUN_TIMEOUT))
    assert asked >= 1, "the sender got no PLI"
    assert not errors, errors


class BigPattern(Pattern):
    """The pattern at 640x360: aiortc's VP8 encoder spends up to ~540 kbit/s on it
    (~290 here, in real time beside the receiver), 250 at its floor."""

    def __init__(self) -> None:
        super().__init__()
        self.source = TestPatternSource(640, 360, 30)


def test_a_small_tiles_remb_cap_brings_a_real_senders_bitrate_down() -> None:
    """compat.cap_remb on the real receiver: the sender (aiortc, VP8) hears REMBs no
    higher than the cap as soon as one is set (a layout change), its encoder's target
    follows, and the bytes that arrive per second go down with it."""
    from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

    cap_bps = 260_000  # aiortc's VP8 encoder goes no lower than 250 kbit/s

    async def run() -> dict[str, object]:
        compat.check()
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        cap: list[int | None] = [None]
        rembs: list[tuple[float, int]] = []  # (loop time, bitrate) as the sender heard them
        arrived: list[tuple[float, int]] = []  # (loop time, bytes) of each encoded frame

        def on_rtcp(packet: object) -> bool:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                rembs.append((loop.time(), unpack_remb_fci(packet.fci)[0]))
            return True

        sender_pc, viewer_pc = RTCPeerConnection(), RTCPeerConnection()
        sending = sender_pc.addTransceiver(BigPattern(), direction="sendonly")
        sending.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                     if c.mimeType.lower() == "video/vp8"])
        compat.hook_rtcp(sending.sender, on_rtcp, lambda e: errors.append(str(e)))
        viewing = viewer_pc.addTransceiver("video", direction="recvonly")
        compat.tap_encoded_video(viewing.receiver,
                                 lambda _c, data, _t: arrived.append((loop.time(), len(data))),
                                 lambda exc: errors.append(str(exc)))
        assert compat.cap_remb(viewing.receiver, lambda: cap[0])

        def rate(since: float, until: float) -> float:
            return sum(n for t, n in arrived if since <= t < until) * 8 / (until - since)

        try:
            await sender_pc.setLocalDescription(await sender_pc.createOffer())
            await viewer_pc.setRemoteDescription(sender_pc.localDescription)
            await viewer_pc.setLocalDescription(await viewer_pc.createAnswer())
            await sender_pc.setRemoteDescription(viewer_pc.localDescription)
            def target() -> float:  # aiortc makes its encoder with the first frame
                enc = sending.sender._RTCRtpSender__encoder  # type: ignore[attr-defined]
                return float("inf") if enc is None else float(enc.target_bitrate)

            async def until(done: Callable[[], bool], what: str, timeout: float) -> None:
                t = loop.time()
                while not done():
                    if loop.time() - t > timeout:
                        raise AssertionError(f"expected {what} within {timeout} s; "
                                             f"REMBs {rembs[-5:]}, errors {errors}")
                    await asyncio.sleep(0.1)

            # uncapped: the estimate grows past the cap, with 3 s of frames to measure
            start = loop.time()
            await until(lambda: loop.time() - start >= 3 and any(b > cap_bps for _t, b in rembs),
                        f"a REMB above {cap_bps} before the cap", 30)
            t0 = loop.time()
            before = rate(t0 - 3, t0)
            cap[0] = cap_bps  # the layout changed: the tile is small now
            # capped: REMBs at the cap, the sender's target follows, and 3 s of frames since
            await until(lambda: loop.time() - t0 >= 3.6
                        and any(t > t0 + 0.6 for t, _b in rembs)
                        and target() <= cap_bps,
                        "a REMB at the cap and the sender's target under it", 30)
            t1 = loop.time()
            after = rate(t1 - 3, t1)
            return {"rembs": rembs, "t0": t0, "before": before, "after": after,
                    "target": target(), "errors": errors}
        finally:
            await close_all_within(sender_pc, viewer_pc)

    out = asyncio.run(asyncio.wait_for(run(), RUN_TIMEOUT))
    rembs, t0 = out["rembs"], out["t0"]
    assert isinstance(rembs, list) and isinstance(t0, float)
    uncapped = [b for t, b in rembs if t < t0]
    capped = [b for t, b in rembs if t > t0 + 0.6]  # the next estimate: within 0.5 s
    print(f"REMB before {uncapped[-3:]}, after {capped[-3:]}; "
          f"received {out['before']:.0f} -> {out['after']:.0f} bit/s")
    assert uncapped and max(uncapped) > cap_bps, uncapped
    assert capped and max(capped) <= cap_bps, capped
    assert out["target"] <= cap_bps, out["target"]
    assert out["after"] < out["before"], (out["before"], out["after"])  # type: ignore[operator]
    assert out["after"] < 1.4 * cap_bps, out["after"]  # type: ignore[operator]
    assert not out["errors"], out["errors"]
