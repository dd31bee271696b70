"""The picamera2 source against the stand-in (tests/fake_picamera2): packets, not frames.

In process: the source's packets, key frames on request, bitrate changes, the
stall watchdog, busy/missing cameras, camera controls, the Pi 5 software path,
and the hub feeding them to the shared stream untouched. End to end: the
agent subprocess with the stand-in on its PYTHONPATH streams to aiortc peers
that decode the video, and rides out a camera held by another process.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import msgspec
import pytest
import structlog
import trio
from av.packet import Packet
from support.agent import FAST_PEERS, AgentProcess, write_config
from support.devserver import DevServer
from support.glimpse_client import create_room, register
from support.picam import FakeCamera
from support.rtcpeer import BrowserPeer
from support.tiering import climb_back

from glimpse_edge.config import (
    AudioConfig,
    CameraConfig,
    ConfigError,
    QualityTier,
    VideoConfig,
    load_config,
)
from glimpse_edge.media.encoder import VideoEncoder
from glimpse_edge.media.factory import make_video_source
from glimpse_edge.media.hub import MediaHub
from glimpse_edge.media.picamera import PiCamera2Source
from glimpse_edge.media.picamera import source as picamera
from glimpse_edge.media.pipeline import lowest_tier_rate
from glimpse_edge.media.source import SourceError
from glimpse_edge.rtc.aio import open_aio_loop

WIDTH, HEIGHT, FPS = 640, 360, 30


def video(**kw: Any) -> VideoConfig:
    settings: dict[str, Any] = dict(source="picamera2", width=WIDTH, height=HEIGHT,
                                    framerate=FPS, max_bitrate=1_000_000, keyframe_interval=10.0)
    settings.update(kw)
    return VideoConfig(**settings)


async def until(done: Callable[[], object], timeout: float) -> None:
    """Poll ``done`` (state kept by threads and other tasks) until true, or fail."""
    with trio.fail_after(timeout):
        while not done():  # noqa: ASYNC110 - the state has no event to wait on
            await trio.sleep(0.02)


def nal_types(data: bytes) -> list[int]:
    return [data[i + 3] & 0x1F for i in range(len(data) - 3) if data[i:i + 3] == b"\0\0\1"]


class Sink:
    """Collects packets, with the arrival time and the thread they arrived on."""

    def __init__(self) -> None:
        self.packets: list[Packet] = []
        self.at: list[float] = []
        self.threads: set[str] = set()
        self._changed = trio.Event()

    def __call__(self, packet: Packet) -> None:
        self.packets.append(packet)
        self.at.append(time.monotonic())
        self.threads.add(threading.current_thread().name)
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, n: int, timeout: float = 10.0) -> list[Packet]:
        with trio.fail_after(timeout):
            while len(self.packets) < n:
                await self._changed.wait()
        return self.packets

    def bytes_between(self, t0: float, t1: float) -> int:
        return sum(p.size for p, at in zip(self.packets, self.at, strict=True) if t0 <= at < t1)


@pytest.fixture
async def running(fake_camera: FakeCamera) -> AsyncIterator[tuple[PiCamera2Source, Sink]]:
    """A PiCamera2Source streaming into a Sink for the test's duration."""
    source = PiCamera2Source(video(), CameraConfig())
    await source.prepare()  # as the hub does: picamera2 imported, tiers known
    sink = Sink()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.run, sink)
        yield source, sink
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ packets


async def test_hardware_h264_packets_go_out_as_they_come(
    running: tuple[PiCamera2Source, Sink], fake_camera: FakeCamera
) -> None:
    source, sink = running
    packets = await sink.wait(30)
    assert source.name == "picamera2:0 (VC4, hardware H.264)"
    first = bytes(packets[0])
    assert packets[0].is_keyframe and {7, 8, 5} <= set(nal_types(first)), "starts with SPS/PPS/IDR"
    sps = first[first.index(b"\0\0\0\1\x67") + 5:]
    assert sps[0] == 66 and sps[1] & 0x40, "profile: constrained baseline (42 with set1)"
    for p in packets[1:]:
        assert not p.is_keyframe and 7 not in nal_types(bytes(p)), "SPS/PPS only with IDRs"
    pts = [p.pts for p in packets]
    assert all(b > a for a, b in itertools.pairwise(pts))
    gaps = sorted(b - a for a, b in itertools.pairwise(pts))
    assert abs(gaps[len(gaps) // 2] - 3000) < 300, "spaced like the sensor's frames (90 kHz)"
    assert {p.time_base for p in packets} == {Fraction(1, 90000)}
    # one access unit per packet, delivered by the Trio thread (not the encoder's)
    assert sink.threads == {threading.current_thread().name}
    assert source.frames_encoded >= 30 and source.keyframes_encoded == 1
    assert fake_camera.count("encoder.start bitrate=1000000 iperiod=300 profile=constrained "
                             "baseline repeat=True") == 1


async def test_keyframe_request_forces_an_idr(running: tuple[PiCamera2Source, Sink],
                                              fake_camera: FakeCamera) -> None:
    source, sink = running
    await sink.wait(20)  # the GOP is 10 s: no IDR will come by itself
    n = len(sink.packets)
    assert source.request_keyframe()
    await sink.wait(n + 5)
    (forced,) = [e for e in fake_camera.events() if e.startswith("encoder.force_key_frame")]
    # (pts are stamped from the sensor's time, in whole 1/90000 s: +-1 of this)
    forced_pts = sink.packets[0].pts + int(forced.split("ts=")[1]) * 9 // 100
    # the first frame the encoder took after force_key_frame() is an IDR, and the
    # packets before it are frames it already had: nothing else in between
    (idr,) = [p for p in sink.packets[n:] if abs(p.pts - forced_pts) <= 1]
    assert idr.is_keyframe and {7, 8, 5} <= set(nal_types(bytes(idr)))
    assert not any(p.is_keyframe for p in sink.packets[n:] if p.pts < idr.pts)
    # a second request right after is deferred, not dropped: served 0.5 s later
    n = len(sink.packets)
    assert not source.request_keyframe()
    await sink.wait(n + 25)
    assert fake_camera.count("encoder.force_key_frame") == 2
    assert sum(p.is_keyframe for p in sink.packets[n:]) == 1


async def test_bitrate_change_restarts_the_encoder_and_takes_effect(
    running: tuple[PiCamera2Source, Sink], fake_camera: FakeCamera
) -> None:
    source, sink = running
    await sink.wait(10)
    # measure over the next 60 frames (~2 s): wait for frames, not for time
    t0 = time.monotonic()
    await sink.wait(len(sink.packets) + 60)
    t_end = time.monotonic()
    high = sink.bytes_between(t0, t_end) / (t_end - t0) * 8
    n = len(sink.packets)
    with structlog.testing.capture_logs() as logs:
        source.set_bitrate(200_000)
        source.set_bitrate(210_000)  # within 10% of the pending change: coalesced
        await until(lambda: source.bitrate == 210_000 and len(sink.packets) >= n + 5, 5)
    assert [e for e in logs if e["event"] == "media.picamera2.bitrate"] == [
        {"event": "media.picamera2.bitrate", "camera": 0, "stream": "main", "old": 1_000_000,
         "new": 210_000, "log_level": "info"}]
    assert fake_camera.count("encoder.start bitrate=210000") == 1
    t1 = time.monotonic()
    await sink.wait(len(sink.packets) + 60)
    t_end = time.monotonic()
    low = sink.bytes_between(t1, t_end) / (t_end - t1) * 8
    assert low < high / 2, (high, low)
    assert low < 400_000, low
    after = sink.packets[n:]
    first_new = next(i for i, p in enumerate(after) if p.is_keyframe)
    assert {7, 8, 5} <= set(nal_types(bytes(after[first_new]))), "a restart begins with an IDR"
    pts = [p.pts for p in sink.packets]
    assert all(b > a for a, b in itertools.pairwise(pts)), "pts go on increasing"
    # clamped to video.min_bitrate; a change under 10% is ignored
    source.set_bitrate(1)
    assert source.pending_bitrate == 150_000
    source.set_bitrate(205_000)
    assert source.pending_bitrate is None


def decoded_sizes(packets: list[Packet]) -> set[tuple[int, int]]:
    codec = av.CodecContext.create("h264", "r")
    return {(f.width, f.height) for p in packets for f in codec.decode(p)}


async def test_lores_tier_is_a_second_encoder_with_the_same_time_stamps(
    running: tuple[PiCamera2Source, Sink], fake_camera: FakeCamera
) -> None:
    source, sink = running
    low = QualityTier(width=WIDTH // 2, height=HEIGHT // 2, bitrate=250_000)  # "auto"
    assert source.tiers == (QualityTier(width=WIDTH, height=HEIGHT, bitrate=1_000_000), low)
    await sink.wait(10)
    assert fake_camera.count("encoder.start") == 1, "no lores encoder before a peer needs it"
    assert source.tier_stats(1) is None
    lores = Sink()
    source.open_tier(1, lores)
    await lores.wait(30)
    assert fake_camera.count("encoder.start bitrate=250000 iperiod=300 profile=constrained "
                             "baseline repeat=True stream=lores") == 1
    assert lores.packets[0].is_keyframe, "it starts with an IDR"
    assert decoded_sizes(lores.packets) == {(WIDTH // 2, HEIGHT // 2)}
    # the two encoders' packets of one camera frame carry the same pts: what a
    # peer's track needs to switch between them without a step back in time
    await sink.wait(len(sink.packets) + 5)
    main_pts = {p.pts for p in sink.packets}
    both = [p.pts for p in lores.packets if p.pts <= max(main_pts)]
    assert len(both) >= 25 and set(both) <= main_pts, sorted(set(both) - main_pts)[:5]
    # a PLI on the tier forces an IDR in its encoder, not in the main one
    n = len(lores.packets)
    assert source.request_keyframe(urgent=True, tier=1)
    await lores.wait(n + 5)
    assert any(p.is_keyframe for p in lores.packets[n:])
    assert fake_camera.count("encoder.force_key_frame") == 1
    # the worst link on it: less bitrate, then every third camera frame (10 fps)
    source.set_tier_rate(1, 100_000, 10.0)
    await until(lambda: fake_camera.count("encoder.start bitrate=100000 ") == 1, 5)
    stats = source.tier_stats(1)
    assert stats is not None and (stats.bitrate, stats.max_fps) == (100_000, 10.0)
    n = len(lores.packets)
    await lores.wait(n + 15)
    gaps = sorted(b.pts - a.pts for a, b in itertools.pairwise(lores.packets[n + 2:]))
    assert abs(gaps[len(gaps) // 2] - 9000) < 900, gaps
    source.set_tier_rate(1, 105_000, 10.0)  # within 10 %: no restart
    # nobody on it: the lores encoder stops, the main one never did
    source.close_tier(1)
    await until(lambda: fake_camera.count("encoder.stop stream=lores") == 2, 5)
    n = len(sink.packets)
    await sink.wait(n + 10)
    assert fake_camera.count("encoder.start bitrate=1000000 ") == 1
    assert fake_camera.count("encoder.start bitrate=105000 ") == 0
    pts = [p.pts for p in sink.packets]
    assert all(b > a for a, b in itertools.pairwise(pts))


async def test_a_failing_lores_encoder_is_retried_and_never_touches_the_main_one(
    running: tuple[PiCamera2Source, Sink], fake_camera: FakeCamera,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(picamera, "LORES_RETRY", 0.3)
    source, sink = running
    await sink.wait(5)
    lores = Sink()
    with structlog.testing.capture_logs() as logs:
        # it goes silent: restarted by its own watchdog
        source.open_tier(1, lores)
        await lores.wait(10)
        fake_camera.command("stall-encoder-lores")
        await until(lambda: fake_camera.count("fault stall-encoder-lores") == 1, 5)
        n = len(lores.packets)
        await lores.wait(n + 10)
        # it will not start: given up on for a while, then started again
        fake_camera.command("refuse-start-lores")
        source.set_tier_rate(1, 100_000, None)
        await until(lambda: fake_camera.count("fault refuse-start-lores") == 1, 5)
        n = len(lores.packets)
        await lores.wait(n + 10)
    stalled = [e for e in logs if e["event"] == "media.picamera2.stalled"]
    assert [e["stream"] for e in stalled] == ["lores"], stalled
    (failed,) = [e for e in logs if e["event"] == "media.picamera2.lores_failed"]
    assert "Device or resource busy" in failed["error"] and failed["retry_in"] == 0.3
    assert fake_camera.count("encoder.start bitrate=100000 ") == 1
    # the main encoder never noticed
    assert fake_camera.count("encoder.start bitrate=1000000 ") == 1
    assert not any(e["event"] == "media.picamera2.stalled" and "stream" not in e for e in logs)
    pts = [p.pts for p in sink.packets]
    assert all(b > a for a, b in itertools.pairwise(pts))


async def test_one_lores_stream_makes_one_lower_tier(fake_camera: FakeCamera) -> None:
    tiers = [QualityTier(width=320, height=180, bitrate=200_000),
             QualityTier(width=480, height=270, bitrate=400_000)]
    with structlog.testing.capture_logs() as logs:
        source = PiCamera2Source(video(tiers=tiers), CameraConfig())
        await source.prepare()
    assert source.tiers[1:] == (tiers[1],), "the best of the lower tiers"
    (limited,) = [e for e in logs if e["event"] == "media.picamera2.tiers_limited"]
    assert limited["left_out"] == ["320x180"]
    without = PiCamera2Source(video(tiers=[]), CameraConfig())
    await without.prepare()
    assert without.tiers == (QualityTier(width=WIDTH, height=HEIGHT, bitrate=1_000_000),)


async def test_stalled_encoder_then_stalled_camera_are_restarted(
    running: tuple[PiCamera2Source, Sink], fake_camera: FakeCamera
) -> None:
    source, sink = running
    await sink.wait(10)
    with structlog.testing.capture_logs() as logs:
        fake_camera.command("stall-encoder")
        await until(lambda: source.encoder_restarts >= 1, 8)
        n = len(sink.packets)
        await sink.wait(n + 10)  # a new encoder session cured it
        assert source.camera_restarts == 0
        fake_camera.command("stall-camera")
        await until(lambda: source.camera_restarts >= 1, 12)
        n = len(sink.packets)
        await sink.wait(n + 10)  # the reopened camera delivers again
    stalls = [(e["action"], e["log_level"]) for e in logs
              if e["event"] == "media.picamera2.stalled"]
    assert stalls == [("restart_encoder", "warning"), ("restart_encoder", "warning"),
                      ("restart_camera", "error")]
    assert fake_camera.count("camera.close") == 1 and fake_camera.count("camera.open") == 2
    pts = [p.pts for p in sink.packets]
    assert all(b > a for a, b in itertools.pairwise(pts))
    # the pts follow the clock across the gaps, not the restarted encoder's zero
    gap_s = max(b - a for a, b in itertools.pairwise(pts)) / 90000
    assert gap_s > 1.0


# --------------------------------------------------------- failing to open


async def test_busy_camera_names_the_cause_and_works_once_freed(fake_camera: FakeCamera) -> None:
    from picamera2 import Picamera2

    source = PiCamera2Source(video(), CameraConfig())
    sink = Sink()
    with fake_camera.held_elsewhere(0), pytest.raises(SourceError) as err:
        await source.run(sink)
    message = str(err.value)
    assert "camera 0 is busy: another process holds it" in message
    assert "Camera __init__ sequence did not complete" in message
    assert "fuser" in message
    async with trio.open_nursery() as nursery:  # what the hub's retry does
        nursery.start_soon(source.run, sink)
        await sink.wait(5)
        nursery.cancel_scope.cancel()
    assert fake_camera.count("encoder.start") == 1, "frames at once: nothing left deaf"
    assert fake_camera.count("camera.close") == 2, "the holder's, and ours on cancellation"
    Picamera2(0).close()  # and free again


@pytest.mark.parametrize(("cameras", "index", "expected"), [
    ("", 0, "no camera 0 found: libcamera sees no camera at all. Is one connected, with the "
            "ribbon cable"),
    ("imx708", 1, "no camera 1 found: libcamera sees 1 camera(s) (0: imx708); set "
                  "camera.index to one of 0..0"),
])
async def test_missing_camera_says_what_to_check(
    fake_camera: FakeCamera, monkeypatch: pytest.MonkeyPatch, cameras: str, index: int,
    expected: str
) -> None:
    monkeypatch.setenv("FAKE_PICAMERA2_CAMERAS", cameras)
    source = PiCamera2Source(video(), CameraConfig(index=index))
    with pytest.raises(SourceError, match="^" + expected.replace("(", r"\(").replace(")", r"\)")):
        await source.run(Sink())


async def test_without_picamera2_the_error_says_how_to_install_it() -> None:
    source = PiCamera2Source(video(), CameraConfig())  # reads the configuration only
    with pytest.raises(SourceError) as err:
        await source.prepare()
    message = str(err.value)
    assert "No module named" in message
    assert "sudo apt install python3-picamera2" in message
    assert "--system-site-packages" in message


# ------------------------------------------------------------ camera controls


async def _configured(fake_camera: FakeCamera, camera: CameraConfig) -> list[str]:
    """Start the source with ``camera`` until its first packet; the configure line."""
    source = PiCamera2Source(video(), camera)
    sink = Sink()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.run, sink)
        await sink.wait(1)
        nursery.cancel_scope.cancel()
    return [e for e in fake_camera.events() if e.startswith("camera.configure")]


async def test_camera_settings_become_controls_and_transform(fake_camera: FakeCamera) -> None:
    camera = CameraConfig(af_mode="manual", lens_position=2.0, exposure_value=-1.5,
                          flicker="50hz", awb_mode="daylight", contrast=1.2, rotation=180,
                          hflip=True)
    (line,) = await _configured(fake_camera, camera)
    assert "transform=<libcamera.Transform 'vflip'>" in line  # 180 degrees, then mirrored
    for expected in ("('AfMode', 0)", "('LensPosition', 2.0)", "('ExposureValue', -1.5)",
                     "('AeFlickerMode', 1)", "('AeFlickerPeriod', 10000)", "('AwbMode', 5)",
                     "('Contrast', 1.2)", "('FrameDurationLimits', (33333, 33333))"):
        assert expected in line, (expected, line)


async def test_defaults_send_only_autofocus_and_only_where_there_is_one(
    fake_camera: FakeCamera, monkeypatch: pytest.MonkeyPatch
) -> None:
    (line,) = await _configured(fake_camera, CameraConfig())
    assert "('AfMode', 2)" in line and "Brightness" not in line
    monkeypatch.setenv("FAKE_PICAMERA2_CAMERAS", "imx219")  # Camera Module 2: fixed focus
    lines = await _configured(fake_camera, CameraConfig())
    assert "AfMode" not in lines[-1]


@pytest.mark.parametrize(("cameras", "camera", "expected"), [
    ("imx219", CameraConfig(af_mode="continuous"),
     'camera.af_mode = "continuous" is not supported by camera 0 (imx219): it has no autofocus'),
    ("imx708", CameraConfig(af_mode="manual", lens_position=20.0),
     "camera.lens_position = 20 is outside the range of camera 0 (imx708)'s LensPosition "
     "(0 .. 15)"),
    ("imx219", CameraConfig(hdr=True),
     "camera.hdr = true is not supported by camera 0 (imx219): HDR needs a Pi 5"),
])
async def test_unsupported_camera_settings_are_refused_by_key(
    fake_camera: FakeCamera, monkeypatch: pytest.MonkeyPatch, cameras: str,
    camera: CameraConfig, expected: str
) -> None:
    monkeypatch.setenv("FAKE_PICAMERA2_CAMERAS", cameras)
    source = PiCamera2Source(video(), camera)
    with pytest.raises(SourceError) as err:
        await source.run(Sink())
    assert str(err.value).startswith(expected), str(err.value)
    assert "(the camera's controls: AeConstraintMode, AeEnable" in str(err.value)
    assert fake_camera.count("camera.close") == 1 and fake_camera.count("camera.start") == 0


async def test_hdr_uses_the_sensor_on_vc4_and_the_isp_on_a_pi5(
    fake_camera: FakeCamera, monkeypatch: pytest.MonkeyPatch
) -> None:
    (line,) = await _configured(fake_camera, CameraConfig(hdr=True))
    assert "imx708.hdr num=0 enable=1" in fake_camera.events() and "HdrMode" not in line
    await _configured(fake_camera, CameraConfig())  # and off again when not configured
    assert fake_camera.events().count("imx708.hdr num=0 enable=0") == 1


async def test_pi5_encodes_in_software_and_says_so(
    fake_camera: FakeCamera, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PICAMERA2_PLATFORM", "PISP")
    source = PiCamera2Source(video(), CameraConfig(hdr=True))
    await source.prepare()
    assert source.name == "picamera2:0 (PISP, software H.264: a Pi 5 has no H.264 hardware)"
    sink = Sink()
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, sink)
            packets = await sink.wait(10)
            assert source.request_keyframe(urgent=True)
            n = len(packets)
            await sink.wait(n + 3)
            nursery.cancel_scope.cancel()
    assert packets[0].is_keyframe and any(p.is_keyframe for p in sink.packets[n:n + 2])
    assert any(e["event"] == "media.picamera2.software_encoder" for e in logs)
    (line,) = [e for e in fake_camera.events() if e.startswith("camera.configure")]
    assert "('HdrMode', 3)" in line
    assert fake_camera.count("encoder.start") == 1 and "software=1" in fake_camera.events()[2]


# ------------------------------------------------------------------- the hub


async def test_hub_publishes_camera_packets_untouched_and_refuses_vp8(
    fake_camera: FakeCamera,
) -> None:
    cfg = video()
    hub = MediaHub(cfg, AudioConfig(source="none"), lambda: make_video_source(cfg), None)
    async with open_aio_loop(), trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        await until(lambda: hub.frames_in >= 5, 10)
        stream = hub.video_stream("h264")
        assert stream is not None and hub.video_stream("h264") is stream
        with structlog.testing.capture_logs() as logs:
            assert hub.video_stream("vp8") is None
        assert logs[0]["event"] == "media.video.codec_refused"
        queue = stream.subscribe("peer")
        forced = fake_camera.count("encoder.force_key_frame")
        await until(lambda: len(queue) > 0, 5)
        first = queue.peek()
        assert first is not None
        assert first.is_keyframe, "a new subscriber starts at an IDR"
        assert fake_camera.count("encoder.force_key_frame") == forced + 1, "asked for at once"
        ((codec, tier, encoder),) = hub.encoders()
        assert (codec, tier) == ("h264", f"{cfg.width}x{cfg.height}")
        assert isinstance(encoder, PiCamera2Source) and encoder.frames_encoded >= 5
        hub.set_bitrate(300_000)
        assert encoder.pending_bitrate == 300_000
        # a peer on the lower tier: the camera's lores encoder, listed like the main one
        low = hub.video_stream("h264", 1)
        assert low is not None and low.name == f"h264/{WIDTH // 2}x{HEIGHT // 2}"
        assert hub.video_stream("h264", 5) is low, "a tier that does not exist: the lowest"
        low_queue = low.subscribe("slow peer")
        await until(lambda: len(low_queue) > 0, 5)
        assert (low_first := low_queue.peek()) is not None and low_first.is_keyframe
        assert [(c, t) for c, t, _enc in hub.encoders()] == [
            ("h264", f"{WIDTH}x{HEIGHT}"), ("h264", f"{WIDTH // 2}x{HEIGHT // 2}")]
        assert not any(isinstance(enc, VideoEncoder) for _c, _t, enc in hub.encoders()), (
            "no software encoder was started")
        nursery.cancel_scope.cancel()


async def test_new_encoder_settings_restart_the_camera_behind_the_same_stream(
    fake_camera: FakeCamera,
) -> None:
    cfg = video()
    hub = MediaHub(cfg, AudioConfig(source="none"), lambda: make_video_source(cfg), None)
    async with open_aio_loop(), trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        await until(lambda: hub.frames_in >= 5, 10)
        stream = hub.video_stream("h264")
        new = msgspec.structs.replace(cfg, max_bitrate=500_000)
        hub.reconfigure(new, AudioConfig(source="none"), lambda: make_video_source(new), None)
        await until(lambda: fake_camera.count("encoder.start bitrate=500000") > 0, 10)
        assert hub.video_stream("h264") is stream, "peers stay subscribed"
        frames = hub.frames_in
        hub.restart_video("camera settings changed")  # what a [camera] reload does
        await until(lambda: fake_camera.count("camera.open") >= 3 and hub.frames_in >= frames + 5,
                    10)
        nursery.cancel_scope.cancel()
    assert fake_camera.count("camera.close") == 3


def test_config_requires_h264_and_shared_encoding_with_picamera2(tmp_path: Path) -> None:
    base = ('[server]\nws_url = "wss://x.example"\n[auth]\ntoken_file = "t"\n'
            '[room]\nid = "r"\n')
    path = tmp_path / "config.toml"
    path.write_text(base + '[video]\nsource = "picamera2"\ncodec = "vp8"\n')
    with pytest.raises(ConfigError,
                       match=re.escape('video.codec: must be "h264" with video.source')):
        load_config(path)
    path.write_text(base + '[video]\nsource = "picamera2"\nencode = "per-peer"\n')
    with pytest.raises(ConfigError, match=re.escape('video.encode: must be "shared"')):
        load_config(path)
    path.write_text(base + '[camera]\naf_mode = "macro"\nrotation = 90\nfocus = 1\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert [e.key for e in err.value.errors] == ["camera.af_mode", "camera.rotation",
                                                 "camera.focus"]
    path.write_text(base + '[camera]\naf_mode = "manual"\nlens_position = 0.5\n')
    assert load_config(path).camera == msgspec.structs.replace(
        CameraConfig(), af_mode="manual", lens_position=0.5)


# ---------------------------------------------------------------- end to end

MEDIA = f"""
[video]
source = "picamera2"
width = {WIDTH}
height = {HEIGHT}
framerate = {FPS}
codec = "h264"
max_bitrate = 800000
keyframe_interval = 10.0

[camera]
flicker = "50hz"

[audio]
source = "tone"

{FAST_PEERS}"""


async def camera_room(devserver: DevServer, tmp_path: Path, fake_camera: FakeCamera,
                      media: str, log_level: str) -> tuple[dict[str, str], str, str, AgentProcess]:
    """Accounts (alice, bob, owner), the owner's room, and a camera agent for it (not
    started): (tokens, device id, room id, agent)."""
    tokens = {name: (await register(devserver.api_url, name, f"{name}-password"))[1]
              for name in ("alice", "bob", "owner")}
    device_id, device_token = await register(devserver.api_url, "device", "device-password")
    room_id = await create_room(devserver.api_url, tokens["owner"], "Room")
    agent = AgentProcess(write_config(tmp_path, ws_url=devserver.ws_url, room_id=room_id,
                                      token=device_token, log_level=log_level, extra=media),
                         env=fake_camera.env())
    return tokens, device_id, room_id, agent


async def test_agent_streams_the_camera_and_waits_out_a_busy_camera(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery, fake_camera: FakeCamera
) -> None:
    from picamera2 import Picamera2

    tokens, device_id, room_id, agent = await camera_room(devserver, tmp_path, fake_camera,
                                                          MEDIA, "debug")
    holder = Picamera2(0)  # another program has the camera when the agent starts
    await agent.start(nursery)
    try:
        await agent.wait_for("room.joined", timeout=20)
        crash = await agent.wait_for("supervise.task_crashed", task="media.video")
        assert "camera 0 is busy: another process holds it" in str(crash), crash
        alice = BrowserPeer("alice")
        async with alice.joined(devserver.ws_url, tokens["alice"], room_id):
            # the room session is up meanwhile, audio-only
            got = await alice.wait_frames(device_id, video=0, audio=25)
            assert got.video_frames == 0
            holder.close()
            await agent.wait_for("media.picamera2.encoder_started", timeout=40)
            got = await alice.wait_frames(device_id, video=60)
            assert got.sizes == {(WIDTH, HEIGHT)}
            # bob joins mid-GOP (10 s): his decoder needs an IDR now, forced for him
            forced = fake_camera.count("encoder.force_key_frame")
            bob = BrowserPeer("bob")
            async with bob.joined(devserver.ws_url, tokens["bob"], room_id):
                got_bob = await bob.wait_frames(device_id, video=30, timeout=15)
                assert got_bob.sizes == {(WIDTH, HEIGHT)}
            assert fake_camera.count("encoder.force_key_frame") > forced
            # one encoder for both: no software encoder was ever opened
            assert not agent.find("media.encoder.opened", codec="h264")
            assert fake_camera.count("encoder.start") == 1
        # the source name (in the log and in `glimpse-edge status`) says hardware
        assert agent.find("media.source.started", kind="video")[0]["source"] == (
            "picamera2:0 (VC4, hardware H.264)")
        opened = agent.find("media.picamera2.opened")[0]
        assert opened["encoder"] == "hardware" and opened["controls"] == {
            "AfMode": 2, "AeFlickerMode": 1, "AeFlickerPeriod": 10000}
    finally:
        await agent.stop()
    assert agent.find("media.picamera2.closed"), "the camera is closed on the way out"
    Picamera2(0).close()  # nobody holds it any more


async def test_a_slow_peer_gets_the_camera_lores_stream_alone(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery, fake_camera: FakeCamera
) -> None:
    """The Pi camera's tiers, end to end: bob's receiver says 60 kbit/s."""
    media = MEDIA.replace("[video]\n", "[video]\nmin_bitrate = 50000\n")
    tokens, device_id, room_id, agent = await camera_room(devserver, tmp_path, fake_camera,
                                                          media, "info")
    await agent.start(nursery)
    low = (WIDTH // 2, HEIGHT // 2)
    alice, bob = BrowserPeer("alice"), BrowserPeer("bob")
    try:
        await agent.wait_for("room.joined", timeout=20)
        async with alice.joined(devserver.ws_url, tokens["alice"], room_id), \
                bob.joined(devserver.ws_url, tokens["bob"], room_id):
            got_alice = await alice.wait_frames(device_id, video=30, timeout=20)
            got_bob = await bob.wait_frames(device_id, video=30, timeout=20)
            mark = len(agent.events)
            bob.remb_cap = 60_000
            capped_at = time.monotonic()
            changed = await agent.wait_for("peer.tier_changed", since=mark, peer=bob.user_id,
                                           timeout=15)
            moved_after = time.monotonic() - capped_at
            assert changed["stream"] == f"h264/{low[0]}x{low[1]}", changed
            await bob.wait_until(lambda: low in got_bob.sizes, "the lores stream's size", 10)
            switched_at = next(t for t, w, h in got_bob.size_changes if (w, h) == low)
            # the lores encoder runs at the worst link's rate: 50 kbit/s, and the
            # frame rate that leaves it (the lores tier is max_bitrate / 4), which
            # the camera gives it as every second frame: 15 fps
            rate = lowest_tier_rate(QualityTier(width=low[0], height=low[1], bitrate=200_000),
                                    FPS, 50_000, 50_000)
            adapted = await agent.wait_for("media.tier.adapted", since=mark, timeout=15,
                                           where=lambda e: (e.get("max_fps") or 99) < 25)
            assert rate.max_fps is not None and round(FPS / rate.max_fps) == 2, rate
            assert (adapted["bitrate"], adapted["max_fps"]) == (50_000, round(rate.max_fps, 1)), \
                adapted
            await agent.wait_for("media.picamera2.encoder_started", since=mark, stream="lores",
                                 where=lambda e: e.get("max_fps") == 15.0, timeout=10)
            n = got_bob.video_frames
            await bob.wait_frames(device_id, video=n + 30)
            fps = got_bob.fps_since(got_bob.frame_times[n])
            print(f"bob moved to the lores stream {moved_after:.2f} s after his REMB said "
                  f"60 kbit/s; its encoder restarted at {adapted['bitrate']} bit/s and "
                  f"{adapted['max_fps']} fps; bob decoded {fps:.1f} fps")
            assert 10 <= fps <= 20, fps
            assert got_bob.longest_gap_ms(switched_at - 2000, switched_at + 2000) < 500, \
                "the switch waits for the lores key frame: no freeze"
            # alice stays on the main stream, at the camera's rate
            a0 = got_alice.video_frames
            await alice.wait_frames(device_id, video=a0 + 30)
            assert got_alice.sizes == {(WIDTH, HEIGHT)}, got_alice.size_changes
            assert not agent.find("peer.tier_changed", peer=alice.user_id)
            # the cap is lifted: bob climbs back to the main stream, and the lores
            # encoder stops once nobody is on it
            lifted_at = time.monotonic()
            mark = await climb_back(agent, bob, got_bob, (WIDTH, HEIGHT))
            print(f"back on the main stream, and the lores encoder idle-stopped, "
                  f"{time.monotonic() - lifted_at:.1f} s after the cap was lifted")
            await agent.wait_for("media.picamera2.encoder_stopped", since=mark, stream="lores",
                                 timeout=10)
        assert fake_camera.count("encoder.start bitrate=800000 ") == 1, "main never restarted"
    finally:
        await agent.stop()
    errors = [e for e in agent.events if e.get("level") == "error"]
    assert not errors, errors[:5]
