"""Media sources: frame code, test pattern, tone, file and v4l2 inputs, factory, plumbing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import TypeVar, cast

import av
import numpy as np
import pytest
import trio
from av.video.codeccontext import VideoCodecContext
from hypothesis import given, settings
from hypothesis import strategies as st
from support.alsa import dominant_frequency, level_dbfs

from glimpse_edge.config import AudioConfig, VideoConfig
from glimpse_edge.media import (
    AlsaSource,
    FileSource,
    FrameCode,
    SourceError,
    TestPatternSource,
    ToneSource,
    V4l2Source,
    draw_code,
    make_audio_source,
    make_video_source,
    read_code,
)
from glimpse_edge.media.framecode import code_geometry
from glimpse_edge.media.source import (
    VIDEO_CLOCK_RATE,
    VIDEO_TIME_BASE,
    Emit,
    monotonic_pts,
    plane_view,
    pump_thread,
)

TIMEOUT = 5.0
F = TypeVar("F", av.VideoFrame, av.AudioFrame)


async def collect(run: Callable[[Callable[[F], None]], object], count: int) -> list[F]:
    """Run a source until it delivered ``count`` frames (or fail after TIMEOUT), then stop."""
    frames: list[F] = []
    enough = trio.Event()

    def sink(frame: F) -> None:
        frames.append(frame)
        if len(frames) >= count:
            enough.set()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, sink)  # type: ignore[arg-type]
            await enough.wait()
            nursery.cancel_scope.cancel()
    return frames[:count]


def coded_frame(width: int, height: int, counter: int, wall_ms: int) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    for i, (w, h) in enumerate(((width, height), (width // 2, height // 2), (width // 2,
                                                                            height // 2))):
        plane_view(frame, i, w, h)[:] = 90 if i == 0 else 128
    draw_code(plane_view(frame, 0, width, height), counter, wall_ms)
    return frame


# ----------------------------------------------------------------------- frame code


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([(64, 36), (320, 180), (640, 360), (1280, 720), (1920, 1080), (642, 362)]),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=2**48 - 1),
)
def test_frame_code_round_trip(size: tuple[int, int], counter: int, wall_ms: int) -> None:
    frame = coded_frame(*size, counter, wall_ms)
    assert read_code(frame) == FrameCode(counter, wall_ms)


@pytest.mark.parametrize("pix_fmt", ["rgb24", "bgr0", "nv12", "gray", "yuvj420p", "yuv444p"])
def test_frame_code_reads_any_pixel_format(pix_fmt: str) -> None:
    frame = coded_frame(640, 360, 123456, 1_700_000_000_123).reformat(format=pix_fmt)
    assert read_code(frame) == FrameCode(123456, 1_700_000_000_123), pix_fmt


@pytest.mark.parametrize("size", [(960, 540), (480, 270), (320, 180), (240, 136)])
def test_frame_code_reads_from_a_smaller_picture_given_the_width_it_was_drawn_at(
        size: tuple[int, int]) -> None:
    """A lower tier scales the picture by 3/4, 1/2, 3/8, ... of the source's size."""
    frame = coded_frame(1280, 720, 99, 1_700_000_000_456).reformat(
        width=size[0], height=size[1], format="yuv420p")
    assert read_code(frame, (2 * size[0], 1280, 4 * size[0])) == FrameCode(99, 1_700_000_000_456)
    if 1280 % size[0]:  # not an integer factor: only the source's width reads it
        assert read_code(frame, (2 * size[0], 4 * size[0])) is None


def test_damaged_or_missing_code_reads_as_none() -> None:
    frame = coded_frame(640, 360, 7, 1_700_000_000_000)
    y = plane_view(frame, 0, 640, 360)
    geo = code_geometry(640)
    b, g = geo.block, geo.border
    block = y[g + b : g + 2 * b, g + 5 * b : g + 6 * b]  # row 1, column 5
    block[:] = 251 - block  # flip it: black <-> white
    assert read_code(frame) is None, "a flipped block must fail the CRC"
    assert read_code(TestPatternSource(640, 360, 30).render(0, 0, 0)) is not None
    plain = coded_frame(640, 360, 0, 0)
    plane_view(plain, 0, 640, 360)[:] = 128
    assert read_code(plain) is None, "a frame without a code must read as None"


def encode_decode(frames: list[av.VideoFrame], codec: str, bit_rate: int) -> list[av.VideoFrame]:
    """Frames through a real encoder (as the agent would send them) and decoder."""
    width, height = frames[0].width, frames[0].height
    enc = cast(VideoCodecContext, av.CodecContext.create(codec, "w"))
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base, enc.framerate = Fraction(1, 30), Fraction(30, 1)
    enc.bit_rate = bit_rate
    if codec == "libx264":
        enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    else:
        enc.options = {"deadline": "realtime", "cpu-used": "8"}
    dec = av.CodecContext.create("h264" if codec == "libx264" else "vp8", "r")
    out: list[av.VideoFrame] = []
    for i, frame in enumerate([*frames, None]):
        if frame is not None:
            frame.pts, frame.time_base = i, Fraction(1, 30)
        for packet in enc.encode(frame):
            out += dec.decode(packet)
    out += dec.decode(None)
    return out


@pytest.mark.parametrize(
    ("codec", "width", "height", "bit_rate"),
    [
        ("libx264", 640, 360, 400_000),
        ("libx264", 1280, 720, 1_000_000),
        ("libvpx", 640, 360, 300_000),
    ],
)
def test_frame_code_survives_compression(codec: str, width: int, height: int,
                                         bit_rate: int) -> None:
    pattern = TestPatternSource(width, height, 30)
    wall0 = 1_700_000_000_000
    sent = [FrameCode(i, wall0 + 33 * i) for i in range(60)]
    decoded = encode_decode([pattern.render(c.counter, c.wall_ms, 0) for c in sent],
                            codec, bit_rate)
    assert len(decoded) == len(sent), f"expected {len(sent)} decoded frames, saw {len(decoded)}"
    seen = [read_code(f) for f in decoded]
    wrong = [(s, r) for s, r in zip(sent, seen, strict=True) if s != r]
    assert not wrong, f"{len(wrong)} codes misread after {codec} at {bit_rate}: {wrong[:3]}"


# ---------------------------------------------------------------------- test pattern


async def test_test_pattern_frames() -> None:
    width, height, fps = 640, 360, 30
    source = TestPatternSource(width, height, fps)
    t0 = time.time()
    frames: list[av.VideoFrame] = await collect(source.run, 12)
    t1 = time.time()

    for i, f in enumerate(frames):
        seen = (f.width, f.height, f.format.name, f.time_base)
        assert seen == (width, height, "yuv420p", VIDEO_TIME_BASE), f"frame {i}: {seen}"
    pts = [f.pts for f in frames]
    assert all(isinstance(p, int) for p in pts), pts
    steps = np.diff(np.array(pts, dtype=np.int64))
    assert (steps > 0).all(), f"pts not strictly increasing: {pts}"
    expected = VIDEO_CLOCK_RATE / fps
    assert abs(steps.mean() - expected) < 0.2 * expected, (
        f"expected pts spaced {expected:.0f} ticks apart on average, saw {steps.mean():.0f}"
    )
    codes = [read_code(f) for f in frames]
    assert [c.counter if c else None for c in codes] == list(range(12)), codes
    walls = [c.wall_ms for c in codes if c]
    assert t0 * 1000 - 1 <= walls[0] and walls[-1] <= t1 * 1000 + 1, (t0, walls, t1)
    y0 = plane_view(frames[0], 0, width, height)
    y9 = plane_view(frames[9], 0, width, height)
    below_code = code_geometry(width).height
    assert not np.array_equal(y0[below_code:], y9[below_code:]), "the picture does not move"


def test_test_pattern_motion_and_sizes() -> None:
    for width, height in [(16, 16), (320, 240), (1280, 720), (1918, 1080)]:
        source = TestPatternSource(width, height, 25)
        frame = source.render(3, 0, 0)
        assert (frame.width, frame.height, frame.format.name) == (width, height, "yuv420p")
    source = TestPatternSource(320, 240, 25)
    a, b = (plane_view(source.render(n, 0, 0), 0, 320, 240).copy() for n in (10, 11))
    assert not np.array_equal(a[40:], b[40:]), "consecutive frames are identical"


# ------------------------------------------------------------------------------ tone


@pytest.mark.parametrize(("rate", "channels", "frequency", "period_ms"),
                         [(48000, 1, 440.0, 20), (48000, 2, 1000.0, 10), (16000, 1, 997.0, 60)])
def test_tone_frequency_level_and_phase_continuity(rate: int, channels: int,
                                                   frequency: float, period_ms: int) -> None:
    source = ToneSource(rate, channels, frequency, period_ms)
    n = rate * period_ms // 1000
    assert source.samples_per_frame == n
    frames = [source.next_frame() for _ in range(1000 // period_ms)]  # 1 s
    layout = "mono" if channels == 1 else "stereo"
    for i, f in enumerate(frames):
        seen = (f.format.name, f.layout.name, f.sample_rate, f.samples, f.pts, f.time_base)
        expected = ("s16", layout, rate, n, i * n, Fraction(1, rate))
        assert seen == expected, f"frame {i}: expected {expected}, saw {seen}"
    data = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).reshape(-1, channels)
    for c in range(1, channels):
        assert np.array_equal(data[:, 0], data[:, c]), "channels differ"
    mono = data[:, 0]
    freq = dominant_frequency(mono, rate)
    assert abs(freq - frequency) <= 2, f"expected {frequency} Hz, saw {freq:.2f} Hz"
    level = level_dbfs(mono)
    assert abs(level + 12) < 0.2, f"expected -12 dBFS, saw {level:.2f}"
    # Phase continuity: the whole second is one ideal sine (a jump at a frame boundary
    # would show as an error of up to the amplitude there).
    ideal = 32767 * 10 ** (-12 / 20) * np.sin(2 * np.pi * frequency * np.arange(mono.size) / rate)
    error = np.abs(mono - ideal)
    assert error.max() <= 1.0, f"deviates from a continuous sine by {error.max():.1f} at " \
        f"sample {int(error.argmax())} (frame boundary every {n})"


async def test_tone_runs_in_real_time_with_contiguous_pts() -> None:
    source = ToneSource(48000, 1, 440.0, 20)
    t0 = trio.current_time()
    frames: list[av.AudioFrame] = await collect(source.run, 10)
    took = trio.current_time() - t0
    assert [f.pts for f in frames] == [i * 960 for i in range(10)]
    # nine periods after the first frame, never sooner (lower bound only: not a speed test)
    assert took >= 9 * 0.020 * 0.9, f"10 frames of 20 ms came in {took:.3f} s: not paced"


# ------------------------------------------------------------------- file and v4l2


def write_test_video(path: Path, width: int, height: int, fps: int, seconds: float) -> int:
    """An H.264 mp4 whose frame i is flat grey at level 40 + 6 * i (to recognise it)."""
    count = int(fps * seconds)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(count):
            frame = av.VideoFrame(width, height, "yuv420p")
            for p, (w, h) in enumerate(((width, height), (width // 2, height // 2),
                                        (width // 2, height // 2))):
                plane_view(frame, p, w, h)[:] = 40 + 6 * i if p == 0 else 128
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return count


async def test_file_source_loops_in_real_time(tmp_path: Path) -> None:
    fps = 25
    path = tmp_path / "clip.mp4"
    count = write_test_video(path, 320, 240, fps, 1.0)
    source = FileSource(path, 160, 120, fps)
    frames: list[av.VideoFrame] = await collect(source.run, 45)  # 1.8 s: loops once

    for i, f in enumerate(frames):
        seen = (f.width, f.height, f.format.name, f.time_base)
        assert seen == (160, 120, "yuv420p", VIDEO_TIME_BASE), f"frame {i}: {seen}"
    pts = np.array([f.pts for f in frames], dtype=np.int64)
    steps = np.diff(pts)
    assert (steps > 0).all(), f"pts not strictly increasing across the loop: {pts.tolist()}"
    expected = VIDEO_CLOCK_RATE / fps
    assert abs(steps.mean() - expected) < 0.2 * expected, (
        f"expected frames {expected:.0f} ticks apart on average, saw {steps.mean():.0f}"
    )
    index = [round((float(plane_view(f, 0, 160, 120).mean()) - 40) / 6) for f in frames]
    assert index == [i % count for i in range(45)], f"frames out of order or lost: {index}"
    assert source.loops >= 1


async def test_file_source_thins_a_faster_file_to_the_configured_rate(tmp_path: Path) -> None:
    path = tmp_path / "fast.mp4"
    write_test_video(path, 160, 120, 50, 0.5)
    frames: list[av.VideoFrame] = await collect(FileSource(path, 160, 120, 25).run, 15)
    steps = np.diff(np.array([f.pts for f in frames], dtype=np.int64))
    expected = VIDEO_CLOCK_RATE / 25
    assert abs(steps.mean() - expected) < 0.2 * expected, (
        f"expected 25 fps ({expected:.0f} ticks apart), saw {steps.mean():.0f} on average"
    )


async def test_file_source_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with trio.fail_after(TIMEOUT), pytest.raises(SourceError, match=r"nope\.mp4.*does not exist"):
        await FileSource(missing, 320, 240, 25).run(lambda frame: None)
    junk = tmp_path / "notes.mp4"
    junk.write_text("not a video\n" * 100)
    with trio.fail_after(TIMEOUT), pytest.raises(SourceError, match=r"notes\.mp4"):
        await FileSource(junk, 320, 240, 25).run(lambda frame: None)


async def test_file_source_stops_promptly(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_test_video(path, 320, 240, 25, 1.0)
    source = FileSource(path, 320, 240, 25)
    await collect(source.run, 2)
    alive = [t for t in threading.enumerate() if t.name == f"glimpse-{source.name}"]
    assert not alive, "the decoder thread outlived the source"


async def test_missing_camera_raises_source_error_naming_it() -> None:
    source = V4l2Source("/dev/video9", 640, 480, 30)
    with trio.fail_after(TIMEOUT), pytest.raises(SourceError) as info:
        await source.run(lambda frame: None)
    message = str(info.value)
    assert "/dev/video9" in message and "no such device" in message, message


# --------------------------------------------------------------------------- factory


def test_factory_builds_the_configured_sources(tmp_path: Path) -> None:
    video = make_video_source(VideoConfig(width=640, height=360, framerate=15))
    assert isinstance(video, TestPatternSource)
    assert (video.name, video.width, video.height, video.framerate) == ("testpattern", 640,
                                                                        360, 15)
    cam = make_video_source(VideoConfig(source="v4l2", device="/dev/video3"))
    assert isinstance(cam, V4l2Source) and cam.name == "v4l2:/dev/video3"
    clip = make_video_source(VideoConfig(source="file", path=tmp_path / "a.mp4"))
    assert isinstance(clip, FileSource) and clip.name == f"file:{tmp_path / 'a.mp4'}"
    # not installed here (tests/integration/test_picamera2.py runs it against a stand-in): said
    # when the source is prepared, which imports picamera2 in a worker thread
    picam = make_video_source(VideoConfig(source="picamera2"))
    with pytest.raises(SourceError, match="apt install python3-picamera2"):
        trio.run(picam.prepare)

    tone = make_audio_source(AudioConfig(rate=16000, channels=2, tone_frequency=500,
                                         period_ms=40))
    assert isinstance(tone, ToneSource)
    assert (tone.rate, tone.channels, tone.samples_per_frame, tone.frequency) == (16000, 2,
                                                                                 640, 500)
    mic = make_audio_source(AudioConfig(source="alsa", device="hw:1"))
    assert isinstance(mic, AlsaSource) and mic.name == "alsa:hw:1"
    assert mic.samples_per_frame == 960
    assert make_audio_source(AudioConfig(source="none")) is None


# ------------------------------------------------------------------- worker plumbing


async def test_worker_error_reaches_the_trio_task() -> None:
    received: list[int] = []

    def produce(emit: Emit[int], stop: threading.Event) -> None:
        emit(1)
        emit(2)
        raise SourceError("device exploded")

    async def consume(item: int) -> None:
        received.append(item)

    with trio.fail_after(TIMEOUT), pytest.raises(SourceError, match="device exploded"):
        await pump_thread("boom", produce, consume, stall_timeout=None)
    assert received == [1, 2]


async def test_silent_worker_is_reported_as_stalled_and_stopped() -> None:
    stopped = threading.Event()

    def produce(emit: Emit[int], stop: threading.Event) -> None:
        stop.wait()  # a device that never delivers, but honours stop
        stopped.set()

    async def consume(item: int) -> None:
        raise AssertionError("nothing was produced")

    with trio.fail_after(TIMEOUT), pytest.raises(SourceError, match="no data"):
        await pump_thread("silent", produce, consume, stall_timeout=0.2)
    assert stopped.is_set(), "the worker was not told to stop"


async def test_wedged_worker_is_abandoned_within_a_second() -> None:
    release = threading.Event()
    got = trio.Event()

    def produce(emit: Emit[int], stop: threading.Event) -> None:
        emit(0)
        release.wait(10)  # a read wedged in a driver: ignores stop

    async def consume(item: int) -> None:
        got.set()

    try:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(pump_thread, "wedged", produce, consume,
                                           stall_timeout=None))
                await got.wait()
                t0 = trio.current_time()
                nursery.cancel_scope.cancel()
        took = trio.current_time() - t0
        assert 0.9 < took < 1.5, f"expected to give up on the worker after 1 s, took {took:.2f}"
    finally:
        release.set()


def test_monotonic_pts_is_the_monotonic_clock_at_90khz() -> None:
    before = time.monotonic_ns()
    pts = monotonic_pts()
    after = time.monotonic_ns()
    assert before * 9 // 100_000 <= pts <= after * 9 // 100_000
