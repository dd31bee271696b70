"""What is shown decides what is received (issue 16, third slice).

- the layout's placement: the first ``max_tiles`` participants have a rect, the
  rest none; a leaver's place goes to the next one; listeners hear each change;
- the bitrate a tile asks its sender for (floor, ceiling, 0.1 bpp at 30 fps);
- the b=AS/b=TIAS lines on the video of the descriptions the agent sends;
- :class:`RemoteVideo`: decoders beyond ``max_tiles`` decode nothing, the next
  one is shown (and decodes) when a shown participant leaves; the REMB its
  receiver sends is clamped to the tile's rate.
"""

from __future__ import annotations

import threading
from fractions import Fraction
from typing import Any

import av
import structlog
from aiortc.rate import RemoteBitrateEstimator

from glimpse_edge.display.layout import Rect, grid
from glimpse_edge.display.state import DisplayState, Placement
from glimpse_edge.media.testpattern import TestPatternSource
from glimpse_edge.rtc.connection import Connection
from glimpse_edge.rtc.remotevideo import MAX_BPS, MIN_BPS, RemoteVideo, tile_bitrate
from glimpse_edge.rtc.sdp import negotiated_codecs, with_video_bitrate

# -- placement -----------------------------------------------------------------------


def test_only_the_first_max_tiles_have_a_place_and_a_leaver_makes_room() -> None:
    state = DisplayState()
    state.set_layout(2, self_view=False)
    state.set_screen_size(1280, 720)
    heard: list[Placement] = []
    state.add_layout_listener(heard.append)
    assert heard[-1].rects == {}
    for key in "abc":
        state.set_tile(key, key.upper(), "connecting")
    place = state.placement()
    two = grid(2, 1280, 720, max_tiles=2).tiles
    assert place.rects == {"a": two[0], "b": two[1]}
    assert place.rect("c") is None
    state.set_tile("a", "A", "live")  # a change of state moves nothing: no call
    calls = len(heard)
    state.set_tile("b", "B", "no video")
    assert len(heard) == calls
    state.remove_tile("a")
    assert heard[-1].rects == {"b": two[0], "c": two[1]}
    state.remove_tile("b")
    assert heard[-1].rects == {"c": grid(1, 1280, 720, max_tiles=2).tiles[0]}


def test_the_screen_size_and_the_self_view_change_the_places() -> None:
    state = DisplayState()
    state.set_tile("a", "A", "live")
    assert state.placement().rects["a"] == grid(1, 1280, 720).tiles[0]  # before a screen
    state.set_screen_size(800, 480)
    assert state.placement().rects["a"] == grid(1, 800, 480).tiles[0]
    state.set_layout(9, self_view=True)
    assert state.placement().rects["a"] == grid(1, 800, 480, self_view=True).tiles[0]


def test_a_listener_removed_hears_nothing_more() -> None:
    state = DisplayState()
    heard: list[Placement] = []
    state.add_layout_listener(heard.append)
    state.remove_layout_listener(heard.append)
    state.set_tile("a", "A", "live")
    assert len(heard) == 1


# -- the rate a tile asks for ----------------------------------------------------------


def test_a_tiles_bitrate_is_a_tenth_of_a_bit_per_pixel_at_30_fps_within_bounds() -> None:
    assert tile_bitrate(None) == MIN_BPS
    assert tile_bitrate(Rect(0, 0, 640, 360)) == 640 * 360 * 3  # 691 kbit/s
    assert tile_bitrate(Rect(0, 0, 160, 90)) == MIN_BPS
    assert tile_bitrate(Rect(0, 0, 1920, 1080)) == MAX_BPS
    sizes = [grid(n, 1920, 1080).tiles[0] for n in range(1, 10)]
    rates = [tile_bitrate(r) for r in sizes]
    assert rates == sorted(rates, reverse=True)  # more tiles, smaller asks


# -- SDP ---------------------------------------------------------------------------------

SDP = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1 2",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=mid:0",
    "a=rtpmap:111 opus/48000/2",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "c=IN IP4 0.0.0.0", "b=AS:5000", "a=mid:1",
    "a=rtpmap:96 VP8/90000", "a=rtpmap:97 H264/90000", "a=sendrecv",
    "m=video 0 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", "a=mid:2",
    "a=rtpmap:96 VP8/90000", "",
])


def _section(sdp: str, mid: str) -> list[str]:
    sections = sdp.split("\r\nm=")
    return next(s for s in sections if f"a=mid:{mid}" in s).split("\r\n")


def test_the_video_section_gets_as_and_tias_after_its_connection_line() -> None:
    out = with_video_bitrate(SDP, 665_000)
    video = _section(out, "1")
    assert video[:4] == ["video 9 UDP/TLS/RTP/SAVPF 96 97", "c=IN IP4 0.0.0.0",
                         "b=AS:665", "b=TIAS:665000"]
    assert "b=AS:5000" not in out  # replaced, not added to
    assert not any(line.startswith("b=") for line in _section(out, "0"))  # audio untouched
    assert not any(line.startswith("b=") for line in _section(out, "2"))  # rejected
    assert out.endswith("\r\n") and "\n" not in out.replace("\r\n", "")
    assert negotiated_codecs(out) == negotiated_codecs(SDP)
    assert with_video_bitrate(out, 665_000) == out  # idempotent
    assert with_video_bitrate(SDP, None) == SDP


def test_a_section_without_a_connection_line_and_lf_endings() -> None:
    sdp = "v=0\nm=video 9 RTP/AVP 96\na=rtpmap:96 VP8/90000\nm=video 9 RTP/AVP 96\n"
    out = with_video_bitrate(sdp, 1_234_567)
    assert out == ("v=0\nm=video 9 RTP/AVP 96\nb=AS:1234\nb=TIAS:1234567\n"
                   "a=rtpmap:96 VP8/90000\nm=video 9 RTP/AVP 96\nb=AS:1234\nb=TIAS:1234567\n")


def test_aiortc_reads_a_description_with_the_bandwidth_lines() -> None:
    from aiortc.sdp import SessionDescription

    parsed = SessionDescription.parse(with_video_bitrate(SDP, 300_000))
    assert [m.kind for m in parsed.media] == ["audio", "video", "video"]


# -- RemoteVideo: decoders follow the layout; REMB follows the tile ---------------------


def encoded_frames(count: int, gop: int = 10) -> list[tuple[bytes, int]]:
    """``count`` VP8 test-pattern frames, a key frame every ``gop``."""
    source = TestPatternSource(320, 180, 30)
    ctx = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt = 320, 180, "yuv420p"  # type: ignore[attr-defined]
    ctx.time_base = Fraction(1, 90000)
    ctx.framerate = Fraction(30, 1)  # type: ignore[attr-defined]
    ctx.gop_size = gop  # type: ignore[attr-defined]
    ctx.bit_rate = 400_000
    ctx.options = {"deadline": "realtime", "lag-in-frames": "0", "cpu-used": "8"}
    out = []
    for i in range(count):
        for packet in ctx.encode(source.render(i, 0, i * 3000)):  # type: ignore[attr-defined]
            out.append((bytes(packet), i * 3000))
    return out


class _Receiver:
    """What compat's tap and REMB cap touch on aiortc's RTCRtpReceiver."""

    def __init__(self) -> None:
        self._RTCRtpReceiver__remote_bitrate_estimator = RemoteBitrateEstimator()
        self._RTCRtpReceiver__decoder_queue: Any = None

    def feed(self, frames: list[tuple[bytes, int]]) -> None:
        tap = self._RTCRtpReceiver__decoder_queue
        codec = type("Codec", (), {"mimeType": "video/VP8"})()
        pause = threading.Event()
        for data, ts in frames:  # paced like a sender (the decoder keeps at most 8)
            tap.put((codec, type("Frame", (), {"data": data, "timestamp": ts})()))
            pause.wait(0.01)


def _conn(generation: int = 1) -> Connection:
    return Connection(generation, None, "answerer", tracks={}, transceivers={})  # type: ignore[arg-type]


def test_participants_beyond_max_tiles_decode_nothing_until_a_shown_one_leaves() -> None:
    state = DisplayState()
    state.set_layout(1, self_view=False)
    log = structlog.get_logger("test")
    frames = encoded_frames(30)
    videos, conns, receivers = [], [], []
    for key in ("alice", "bob"):
        video = RemoteVideo(state, key, key, log)
        conn, receiver = _conn(), _Receiver()
        video.tap(conn, receiver)
        videos.append(video)
        conns.append(conn)
        receivers.append(receiver)
    alice, bob = videos
    assert (alice.shown, bob.shown) == (True, False)
    assert alice.cap_bps == tile_bitrate(state.placement().rect("alice"))
    assert bob.cap_bps == MIN_BPS
    for receiver in receivers:
        receiver.feed(frames)
    dec_a, dec_b = conns[0].decoders["vp8"], conns[1].decoders["vp8"]
    _wait(lambda: dec_a.stats().decoded >= 20)
    assert dec_b.stats().decoded == 0  # hidden: dropped before the decoder

    alice.leave()  # bob gets the tile: shown, decodes from the next key frame
    assert bob.shown and bob.cap_bps == tile_bitrate(grid(1, 1280, 720).tiles[0])
    assert dec_b.stats().keyframe_requests >= 1  # it asked for one to start from
    receivers[1].feed(frames)
    _wait(lambda: dec_b.stats().decoded >= 20)
    for video, conn in zip(videos, conns, strict=True):
        for decoder in conn.decoders.values():
            decoder.close()
        video.leave()
    assert state.snapshot().tiles == ()


def test_the_remb_a_receiver_sends_is_clamped_to_the_tiles_rate() -> None:
    state = DisplayState()
    state.set_layout(9, self_view=False)
    video = RemoteVideo(state, "alice", "alice", structlog.get_logger("test"))
    receiver = _Receiver()
    video.tap(_conn(), receiver)
    estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator
    estimator.rate_control.set_estimate(5_000_000, 0)
    result = None
    # packets of 1200 bytes every 2 ms (4.8 Mbit/s), abs-send-time in step
    for i in range(600):
        now = 1000 + 2 * i
        out = estimator.add(arrival_time_ms=now, abs_send_time=(now * 262) & 0xFFFFFF,
                            payload_size=1200, ssrc=1234)
        result = out or result
    assert result is not None and result[1] == [1234]
    assert result[0] == video.cap_bps == tile_bitrate(state.placement().rect("alice"))
    video.leave()


def _wait(ok: Any, timeout: float = 10.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if ok():
            return
        done.wait(0.05)
    assert ok()
