"""The display's decoder (issue 16): real H.264 and VP8 in, frames with their codes out;
behind -> drop to the next key frame and ask for one; nothing left after close."""

from __future__ import annotations

import os
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest

from glimpse_edge.display.decode import (
    EncodedFrame,
    VideoDecoder,
    board_model,
    choose_decoder,
    describe_decoders,
    is_keyframe,
)
from glimpse_edge.media.framecode import read_code
from glimpse_edge.media.testpattern import TestPatternSource

W, H = 320, 180
GOP = 10


def encoded(codec: str, count: int, gop: int = GOP) -> list[EncodedFrame]:
    """``count`` test-pattern frames (codes 0..count-1) encoded as a browser would send them."""
    source = TestPatternSource(W, H, 30)
    ctx = av.CodecContext.create("libx264" if codec == "h264" else "libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt = W, H, "yuv420p"
    ctx.time_base = Fraction(1, 90000)
    ctx.framerate = Fraction(30, 1)
    ctx.gop_size = gop
    ctx.bit_rate = 600_000
    if codec == "h264":
        ctx.options = {"tune": "zerolatency", "preset": "ultrafast", "bf": "0",
                       "keyint_min": str(gop), "sc_threshold": "0"}
    else:
        ctx.options = {"deadline": "realtime", "lag-in-frames": "0", "cpu-used": "8"}
    out: list[EncodedFrame] = []
    for i in range(count):
        frame = source.render(i, 1_000_000 + i, i * 3000)
        for packet in ctx.encode(frame):
            data = bytes(packet)
            out.append(EncodedFrame(data, is_keyframe(codec, data), int(packet.pts or 0)))
            assert packet.is_keyframe == out[-1].keyframe
    for packet in ctx.encode(None):
        data = bytes(packet)
        out.append(EncodedFrame(data, is_keyframe(codec, data), int(packet.pts or 0)))
    return out


class Collector:
    """A frame sink that can be stalled, as a consumer that stops reading."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.open = threading.Event()
        self.open.set()
        self.got = threading.Condition()

    def __call__(self, frame: av.VideoFrame) -> None:
        self.open.wait(10)
        code = read_code(frame)
        with self.got:
            self.codes.append(-1 if code is None else code.counter)
            self.got.notify_all()

    def wait_last(self, code: int, timeout: float = 10) -> list[int]:
        with self.got:
            assert self.got.wait_for(lambda: code in self.codes, timeout), self.codes
            return list(self.codes)

    def wait_for(self, n: int, timeout: float = 10) -> list[int]:
        with self.got:
            assert self.got.wait_for(lambda: len(self.codes) >= n, timeout), self.codes
            return list(self.codes)


@pytest.fixture(scope="module")
def streams() -> dict[str, list[EncodedFrame]]:
    return {codec: encoded(codec, 40) for codec in ("h264", "vp8")}


@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_real_streams_decode_to_their_frame_codes(
        codec: str, streams: dict[str, list[EncodedFrame]]) -> None:
    sink = Collector()
    asks: list[int] = []
    with VideoDecoder(codec, sink, lambda: asks.append(1), name=codec, depth=64,  # type: ignore[arg-type]
                      choice=choose_decoder(codec, model="test PC")) as dec:  # type: ignore[arg-type]
        _feed(dec, streams[codec])
        codes = sink.wait_for(40)
    assert codes == list(range(40))
    assert not asks
    s = dec.stats()
    assert (s.received, s.decoded, s.dropped, s.errors) == (len(streams[codec]), 40, 0, 0)


def test_a_stream_joined_mid_gop_starts_at_its_next_key_frame(
        streams: dict[str, list[EncodedFrame]]) -> None:
    sink = Collector()
    with VideoDecoder("h264", sink, lambda: None, choice=choose_decoder("h264", "x")) as dec:
        _feed(dec, streams["h264"][3:])
        codes = sink.wait_for(40 - GOP)
    assert codes[0] == GOP  # frames 3..9 have no key frame to stand on: dropped


def test_a_stalled_consumer_drops_to_the_next_key_frame_and_asks_for_one(
        streams: dict[str, list[EncodedFrame]]) -> None:
    """Frames pile up behind a sink that does not return: the backlog never passes
    ``depth``; the decoder drops it, asks for a key frame (PLI) and waits for one."""
    sink = Collector()
    asks: list[float] = []
    depth = 4
    with VideoDecoder("vp8", sink, lambda: asks.append(time.monotonic()), depth=depth,
                      choice=choose_decoder("vp8")) as dec:
        sink.open.clear()  # the first decoded frame blocks the decoder thread
        frames = streams["vp8"]
        dec.submit(frames[0])
        deadline = time.monotonic() + 5
        while dec.stats().decoded < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        backlog = []
        for f in frames[1:25]:
            dec.submit(f)
            backlog.append(dec.backlog)
        assert max(backlog) <= depth
        assert len(asks) >= 1
        # behind: the backlog went, and what follows waits for a key frame
        sink.open.set()
        _feed(dec, frames[25:])
        codes = sink.wait_last(39)
    assert codes[0] == 0
    assert codes[1] % GOP == 0, codes  # the picture resumes at a key frame
    assert codes[1:] == list(range(codes[1], 40))
    assert dec.stats().dropped > 0


def test_only_shown_tracks_decode(streams: dict[str, list[EncodedFrame]]) -> None:
    sink = Collector()
    asks: list[int] = []
    with VideoDecoder("h264", sink, lambda: asks.append(1),
                      choice=choose_decoder("h264", "x")) as dec:
        dec.set_shown(False)
        for f in streams["h264"][:15]:
            dec.submit(f)
        assert dec.stats().decoded == 0
        dec.set_shown(True)
        assert asks == [1]  # shown again: ask for a key frame at once
        _feed(dec, streams["h264"][15:])
        codes = sink.wait_for(20)
    assert codes[0] == 20


def test_garbage_is_an_error_then_a_key_frame_request(
        streams: dict[str, list[EncodedFrame]]) -> None:
    sink = Collector()
    asks: list[int] = []
    with VideoDecoder("vp8", sink, lambda: asks.append(1), choice=choose_decoder("vp8")) as dec:
        dec.submit(streams["vp8"][0])
        sink.wait_for(1)
        dec.submit(EncodedFrame(b"\x01" + os.urandom(50), False, 3000))
        deadline = time.monotonic() + 5
        while not asks and time.monotonic() < deadline:
            time.sleep(0.01)
    assert asks and dec.stats().errors == 1


def _drain(dec: VideoDecoder) -> None:
    """Let the decoder take what waits (a sender at its real pace, not a burst)."""
    deadline = time.monotonic() + 5
    while dec.backlog and time.monotonic() < deadline:
        time.sleep(0.001)


def _feed(dec: VideoDecoder, frames: list[EncodedFrame]) -> None:
    for f in frames:
        dec.submit(f)
        _drain(dec)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_ten_open_close_cycles_leave_no_thread_or_fd(
        codec: str, streams: dict[str, list[EncodedFrame]]) -> None:
    threads, fds = threading.active_count(), _fds()
    for _ in range(10):
        sink = Collector()
        dec = VideoDecoder(codec, sink, lambda: None, choice=choose_decoder(codec, "x"))  # type: ignore[arg-type]
        _feed(dec, streams[codec][:12])
        sink.wait_for(5)
        dec.close()
        dec.close()  # idempotent
    assert threading.active_count() == threads
    assert _fds() == fds
    assert not [t for t in threading.enumerate() if t.name.startswith("display-decode")]


def test_keyframe_detection() -> None:
    assert is_keyframe("vp8", b"\x10\x02\x00\x9d\x01\x2a")
    assert not is_keyframe("vp8", b"\x31\x02\x00")
    assert is_keyframe("h264", b"\x00\x00\x00\x01\x67\x42\x00\x00\x00\x01\x68\x00\x00\x01\x65\x88")
    assert not is_keyframe("h264", b"\x00\x00\x00\x01\x41\x9a")
    assert not is_keyframe("h264", b"") and not is_keyframe("vp8", b"")


@pytest.mark.parametrize(
    ("model", "has_hw", "decoder"),
    [
        ("Raspberry Pi 4 Model B Rev 1.4", True, "h264_v4l2m2m"),
        ("Raspberry Pi 400 Rev 1.0", True, "h264_v4l2m2m"),
        ("Raspberry Pi Compute Module 4 Rev 1.0", True, "h264_v4l2m2m"),
        ("Raspberry Pi 4 Model B Rev 1.4", False, "h264"),  # a distribution's FFmpeg without it
        ("Raspberry Pi 5 Model B Rev 1.0", True, "h264"),  # no H.264 decode block
        (None, True, "h264"),  # a PC
    ],
)
def test_the_h264_decoder_for_the_board(model: str | None, has_hw: bool, decoder: str) -> None:
    choice = choose_decoder("h264", model, lambda name: has_hw or name != "h264_v4l2m2m")
    assert choice.decoder == decoder
    assert choice.hardware == (decoder == "h264_v4l2m2m")
    assert choice.reason


def test_vp8_is_software_everywhere() -> None:
    assert choose_decoder("vp8", "Raspberry Pi 4 Model B").decoder == "libvpx"
    assert choose_decoder("vp8", None, lambda name: name == "vp8").decoder == "vp8"
    lines = describe_decoders("Raspberry Pi 5 Model B Rev 1.0")
    assert lines[0].startswith("h264: h264 ") and "decode block" in lines[0]
    assert lines[1].startswith("vp8: libvpx")


def test_board_model_reads_the_device_tree(tmp_path: Path) -> None:
    path = tmp_path / "model"
    path.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\0")
    assert board_model(path) == "Raspberry Pi 4 Model B Rev 1.4"
    assert board_model(tmp_path / "missing") is None


def test_a_hardware_decoder_that_will_not_open_falls_back_to_software(
        streams: dict[str, list[EncodedFrame]], monkeypatch: pytest.MonkeyPatch) -> None:
    real_create = av.CodecContext.create

    def create(name: str, mode: str) -> av.CodecContext:
        if name == "h264_v4l2m2m":
            raise av.FFmpegError(19, "No such device")
        return real_create(name, mode)

    monkeypatch.setattr(av.CodecContext, "create", create)
    sink = Collector()
    hw = choose_decoder("h264", "Raspberry Pi 4 Model B", lambda name: True)
    with VideoDecoder("h264", sink, lambda: None, choice=hw) as dec:
        _feed(dec, streams["h264"][:10])
        sink.wait_for(5)
    assert dec.choice.decoder == "h264" and not dec.choice.hardware


