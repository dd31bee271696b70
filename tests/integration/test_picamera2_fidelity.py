"""What a real Pi does to the camera path, against the stand-in that does it too.

Each test here failed on the agent before the fix it names (issue 13): the
stand-in (tests/fake_picamera2) now behaves like picamera2's own source where
these bugs live (its README says which file each behaviour mirrors).
"""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
from support.agent import AgentProcess, write_config
from support.devserver import DevServer
from support.glimpse_client import create_room, register
from support.picam import FakeCamera
from test_picamera2 import Sink, until, video

from glimpse_edge.config import CameraConfig, ConfigError, QualityTier, load_config
from glimpse_edge.media.picamera import CameraHung, PiCamera2Source, calls
from glimpse_edge.media.picamera import source as picamera
from glimpse_edge.media.picamera.budget import (
    VC4_MACROBLOCKS_PER_SECOND,
    fit_lores,
    macroblocks_per_second,
)
from glimpse_edge.media.source import SourceError
from glimpse_edge.supervise import EXIT_FATAL

FPS = 30


def resources() -> tuple[int, int]:
    """(open fds, threads) of this process, once garbage (selectors of ended threads)
    is collected."""
    gc.collect()
    return len(os.listdir("/proc/self/fd")), threading.active_count()


async def stream(source: PiCamera2Source, sink: Sink, packets: int) -> None:
    """Run ``source`` until ``sink`` has ``packets`` more, then stop it (closing the camera)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.run, sink)
        await sink.wait(len(sink.packets) + packets)
        nursery.cancel_scope.cancel()


async def packets_after_a_forced_idr(source: PiCamera2Source, packets: int) -> list[Any]:
    """Run ``source``, force an IDR after its first packets; the ``packets`` that follow."""
    sink = Sink()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.run, sink)
        await sink.wait(5)
        n = len(sink.packets)
        assert source.request_keyframe(urgent=True)
        await sink.wait(n + packets)
        nursery.cancel_scope.cancel()
    return sink.packets[n:n + packets]


# ------------------------------------------------ 1. Pi 5: forced key frames


async def test_pi5_forced_key_frames_keep_the_camera_alive(
    fake_camera: FakeCamera, monkeypatch: pytest.MonkeyPatch
) -> None:
    """picamera2's own force_key_frame on a Pi 5 sets pict_type = "I": a TypeError with
    PyAV 13+ in the camera thread, which dies; cam.stop() then waits for it forever."""
    monkeypatch.setenv("FAKE_PICAMERA2_PLATFORM", "PISP")
    source = PiCamera2Source(video(), CameraConfig())
    sink = Sink()
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, sink)
            await sink.wait(5)
            for _ in range(3):
                n = len(sink.packets)
                assert source.request_keyframe(urgent=True)
                await sink.wait(n + 3)
                assert any(p.is_keyframe for p in sink.packets[n:n + 3]), (
                    f"no IDR within 3 packets of a forced key frame: "
                    f"{[p.is_keyframe for p in sink.packets[n:n + 3]]}")
            n = len(sink.packets)
            await sink.wait(n + 15)  # the camera thread lives on
            nursery.cancel_scope.cancel()
    events = [e["event"] for e in logs]
    assert "media.picamera2.closed" in events, "the camera closed on the way out"
    assert "media.picamera2.call_timeout" not in events and "media.picamera2.stalled" not in events
    assert fake_camera.count("encoder.start") == 1, "IDRs in place, no encoder restart"


async def test_pi5_encoder_adds_no_frame_delay(
    fake_camera: FakeCamera, monkeypatch: pytest.MonkeyPatch
) -> None:
    """picamera2's libav encoder uses frame threads (automatic count): several frames late."""
    monkeypatch.setenv("FAKE_PICAMERA2_PLATFORM", "PISP")
    source = PiCamera2Source(video(), CameraConfig())
    await stream(source, Sink(), 60)
    delay = source.encode_delay_ms
    print(f"Pi 5 (stand-in) encoder delay, sensor time to packet: {delay:.1f} ms")
    assert delay is not None and delay < 1000 / FPS, (
        f"the encoder delays frames by {delay} ms, more than one frame interval")


# ---------------------------------------------------- 2. old picamera2 releases


@pytest.mark.parametrize(("platform", "version", "expected"), [
    ("VC4", "0.3.16", "needs picamera2 0.3.17 or newer"),
    ("PISP", "0.3.16", "needs picamera2 0.3.17 or newer"),
    ("VC4", "0.3.25", "before 0.3.26 its hardware H.264 encoder can freeze the camera"),
])
async def test_too_old_picamera2_is_refused_with_what_to_upgrade(
    fake_camera: FakeCamera, monkeypatch: pytest.MonkeyPatch, platform: str, version: str,
    expected: str
) -> None:
    monkeypatch.setenv("FAKE_PICAMERA2_PLATFORM", platform)
    fake_camera.use_version(version)
    with pytest.raises(SourceError) as err:
        await PiCamera2Source(video(), CameraConfig()).prepare()
    assert expected in str(err.value) and f"picamera2 {version} is too old" in str(err.value)
    assert "sudo apt install python3-picamera2" in str(err.value)


async def test_picamera2_without_force_key_frame_restarts_for_an_idr(
    fake_camera: FakeCamera,
) -> None:
    fake_camera.use_version("0.3.30")
    with structlog.testing.capture_logs() as logs:
        source = PiCamera2Source(video(), CameraConfig())
        await source.prepare()
    assert any(e["event"] == "media.picamera2.idr_by_restart" for e in logs)
    after = await packets_after_a_forced_idr(source, 5)
    assert any(p.is_keyframe for p in after), [p.is_keyframe for p in after]
    assert fake_camera.count("encoder.start") == 2, "one restart for the IDR"


async def test_pi5_with_an_old_picamera2_forces_idrs_in_place(
    fake_camera: FakeCamera, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The libav fix gives even a picamera2 without force_key_frame one that works."""
    monkeypatch.setenv("FAKE_PICAMERA2_PLATFORM", "PISP")
    fake_camera.use_version("0.3.25")
    after = await packets_after_a_forced_idr(PiCamera2Source(video(), CameraConfig()), 3)
    assert any(p.is_keyframe for p in after), [p.is_keyframe for p in after]
    assert fake_camera.count("encoder.start") == 1


# ------------------------------------------------ 3. Camera Module 3 variants


@pytest.mark.parametrize("model", ["imx708_wide", "imx708_noir", "imx708_wide_noir"])
async def test_camera_module_3_variants_get_sensor_hdr_by_libcamera_number(
    fake_camera: FakeCamera, monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    from picamera2 import Picamera2

    monkeypatch.setenv("FAKE_PICAMERA2_CAMERAS", f"imx219,{model}")
    cameras = Picamera2.global_camera_info()
    index = next(i for i, c in enumerate(cameras) if c["Model"] == model)
    num = cameras[index]["Num"]
    assert index != num, "the stand-in sorts like picamera2: a list position is not a Num"
    await stream(PiCamera2Source(video(), CameraConfig(index=index, hdr=True)), Sink(), 3)
    assert f"imx708.hdr num={num} enable=1" in fake_camera.events()
    (line,) = [e for e in fake_camera.events() if e.startswith("camera.configure")]
    assert "HdrMode" not in line, "the sensor does HDR on VC4"
    await stream(PiCamera2Source(video(), CameraConfig(index=index)), Sink(), 3)
    assert f"imx708.hdr num={num} enable=0" in fake_camera.events(), "and is reset"


async def test_vc4_hdr_without_a_camera_module_3_is_refused_though_listed(
    fake_camera: FakeCamera, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VC4's libcamera advertises HdrMode and ignores it: decided from the platform."""
    monkeypatch.setenv("FAKE_PICAMERA2_CAMERAS", "imx477")
    from picamera2 import Picamera2

    with Picamera2(0) as cam:
        assert "HdrMode" in cam.camera_controls
    with pytest.raises(SourceError, match="camera.hdr = true is not supported by camera 0 "
                       r"\(imx477\): HDR needs a Pi 5"):
        await PiCamera2Source(video(), CameraConfig(hdr=True)).run(Sink())


# -------------------------------------------------------- 4. a hung encoder


async def test_a_hung_encoder_ends_the_process_instead_of_hanging_it(
    fake_camera: FakeCamera, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A V4L2 codec whose queue call never returns blocks the camera thread inside the
    encoder's lock: stop_encoder, stop and close never return (the stand-in's
    wedge-encoder; see its README)."""
    monkeypatch.setattr(calls, "CALL_TIMEOUT", 1.0)
    source = PiCamera2Source(video(), CameraConfig())
    sink = Sink()

    async def hang_after_first_packets() -> None:
        await sink.wait(5)
        fake_camera.command("wedge-encoder")

    with structlog.testing.capture_logs() as logs, trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hang_after_first_packets)
            with pytest.raises(CameraHung, match="picamera2's stop_encoder main hung"):
                await source.run(sink)
    (hung,) = [e for e in logs if e["event"] == "media.picamera2.hung"]
    assert hung["call"] == "stop_encoder main" and hung["log_level"] == "critical"
    assert [e["call"] for e in logs if e["event"] == "media.picamera2.call_timeout"] == [
        "stop_encoder main", "close"]


async def test_a_hung_camera_makes_the_agent_exit_for_systemd(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery, fake_camera: FakeCamera
) -> None:
    _device_id, token = await register(devserver.api_url, "device", "device-password")
    room_id = await create_room(devserver.api_url, token, "Room")
    media = ('[video]\nsource = "picamera2"\nwidth = 320\nheight = 180\nframerate = 15\n'
             'tiers = []\n\n[audio]\nsource = "none"\n')
    agent = AgentProcess(write_config(tmp_path, ws_url=devserver.ws_url, room_id=room_id,
                                      token=token, extra=media), env=fake_camera.env())
    await agent.start(nursery)
    try:
        await agent.wait_for("media.picamera2.encoder_started", timeout=40)
        fake_camera.command("wedge-encoder")
        code = await agent.wait_exit(timeout=60)
    finally:
        await agent.stop()
    hung = agent.find("media.picamera2.hung")
    assert code == EXIT_FATAL, f"expected exit {EXIT_FATAL}, got {code}"
    assert hung and hung[0]["call"] == "stop_encoder main", hung


# --------------------------------------------------------------- 5. leaks


async def test_failed_opens_leak_no_fd_or_thread(fake_camera: FakeCamera) -> None:
    """Each failed Picamera2() leaves its notify pipe and a running listener behind."""
    source = PiCamera2Source(video(), CameraConfig())
    with fake_camera.held_elsewhere(0):
        for _ in range(3):  # warm up: the first failure may start long-lived helpers
            with pytest.raises(SourceError, match="busy"):
                await source.run(Sink())
        before = resources()
        for _ in range(100):
            with pytest.raises(SourceError, match="busy"):
                await source.run(Sink())
        after = resources()
    assert after == before, f"100 failed opens: (fds, threads) {before} -> {after}"


async def test_failed_lores_starts_leak_no_fd_or_thread(
    fake_camera: FakeCamera, monkeypatch: pytest.MonkeyPatch
) -> None:
    """picamera2 sets an encoder running before it opens its device: a failed start
    leaves the device open and its poll thread spinning."""
    monkeypatch.setattr(picamera, "LORES_RETRY", 0.001)
    monkeypatch.setattr(picamera, "LORES_RETRY_MAX", 0.001)
    tiers = [QualityTier(width=320, height=180, bitrate=200_000)]
    source = PiCamera2Source(video(tiers=tiers), CameraConfig())

    def failures() -> int:
        return sum(e["event"] == "media.picamera2.lores_failed" for e in logs)

    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, Sink())
            await until(lambda: source.frames_encoded > 5, 10)
            before = resources()
            for _ in range(100):
                fake_camera.command("refuse-start-lores")
            source.open_tier(1, lambda _packet: None)
            await until(lambda: failures() >= 100, 60)
            source.close_tier(1)  # no further start: what is left is what leaked
            with trio.move_on_after(10):
                await until(lambda: resources() == before, 10)
            after = resources()
            nursery.cancel_scope.cancel()
    assert failures() == 100
    assert after == before, f"100 failed lores starts: (fds, threads) {before} -> {after}"


# ------------------------------------------------------------ 6. close order


@pytest.mark.parametrize("failing", ["lores", "main"])
async def test_close_stops_each_encoder_even_when_one_fails(
    fake_camera: FakeCamera, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """``stop_encoder()`` without an argument stops at the first failure, in set order."""
    from picamera2.encoders import Encoder

    tiers = [QualityTier(width=320, height=180, bitrate=200_000)]
    source = PiCamera2Source(video(tiers=tiers), CameraConfig())
    lores = Sink()
    original = Encoder.stop

    def stop(self: Any) -> None:
        if self.name == failing:
            self._running = False
            raise RuntimeError("codec error on stop")
        original(self)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.run, Sink())
        await until(lambda: source.frames_encoded > 5, 10)
        source.open_tier(1, lores)
        await lores.wait(3)
        monkeypatch.setattr(Encoder, "stop", stop)
        nursery.cancel_scope.cancel()
    events = fake_camera.events()
    other = "main" if failing == "lores" else "lores"
    assert f"encoder.stop stream={other}" in events, events
    assert events[-1].startswith("camera.close"), events


# --------------------------------------------- 8. buffers and the codec's rate


def test_buffer_count_must_hold_main_and_lores(tmp_path: Path) -> None:
    def load(camera: str, tiers: str = "") -> None:
        path = tmp_path / "c.toml"
        path.write_text(f'[server]\nws_url = "ws://127.0.0.1:1/"\n[auth]\ntoken_file = "t"\n'
                        f'[room]\nid = "r"\n[video]\nsource = "picamera2"\n{tiers}'
                        f"[camera]\n{camera}\n")
        (tmp_path / "t").write_text("x")
        load_config(path)

    with pytest.raises(ConfigError, match=r"camera\.buffer_count: \(4\) is too few for the main "
                       "and lores encoders: at least 5"):
        load("buffer_count = 4")
    load("buffer_count = 5")
    load("buffer_count = 4", "tiers = []\n")
    with pytest.raises(ConfigError, match=r"\(3\) is too few for the encoder: at least 4"):
        load("buffer_count = 3", "tiers = []\n")


@pytest.mark.parametrize(("main", "fps", "lores", "expected"), [
    ((1280, 720), 30, (640, 360), (640, 360)),  # fits: 108,000 + 27,600
    ((1920, 1080), 25, (960, 540), (832, 468)),  # shrunk to fit 204,000 + 39,000
    ((1920, 1080), 30, (960, 540), None),  # 244,800 leaves room for nothing useful
    ((1600, 1200), 20, (800, 600), (800, 600)),  # 150,000 + 38,000
    ((1920, 1088), 28, (960, 544), (512, 290)),  # 228,480 leaves 17,280
])
def test_lores_fits_the_vc4_codec_or_is_left_out(
    main: tuple[int, int], fps: int, lores: tuple[int, int], expected: tuple[int, int] | None
) -> None:
    fit = fit_lores("VC4", *main, fps, QualityTier(width=lores[0], height=lores[1],
                                                    bitrate=500_000))
    got = None if fit.tier is None else (fit.tier.width, fit.tier.height)
    assert got == expected, fit.note
    if fit.tier is not None:
        assert macroblocks_per_second(*main, fps) + macroblocks_per_second(
            fit.tier.width, fit.tier.height, fps) <= VC4_MACROBLOCKS_PER_SECOND
    assert (fit.note is None) == (got == lores)
    assert fit_lores("PISP", *main, fps, QualityTier(width=lores[0], height=lores[1],
                                                     bitrate=1)).tier is not None


async def test_a_lores_tier_over_the_codec_is_shrunk_and_said(fake_camera: FakeCamera) -> None:
    with structlog.testing.capture_logs() as logs:
        source = PiCamera2Source(video(width=1920, height=1080, framerate=25,
                                       max_bitrate=4_000_000), CameraConfig())
        await source.prepare()
    (note,) = [e for e in logs if e["event"] == "media.picamera2.lores_limited"]
    assert "the lores tier is 832x468 instead" in note["detail"]
    assert (source.tiers[1].width, source.tiers[1].height) == (832, 468)
    assert source.lores_note == note["detail"]


# ------------------------------------------------- 9. the lores rate hand-over


async def test_a_rate_wanted_during_a_lores_restart_is_applied(fake_camera: FakeCamera) -> None:
    tiers = [QualityTier(width=320, height=180, bitrate=200_000)]
    source = PiCamera2Source(video(tiers=tiers), CameraConfig())
    lores = Sink()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.run, Sink())
        await until(lambda: source.frames_encoded > 5, 10)
        source.open_tier(1, lores)
        await lores.wait(3)
        source.set_tier_rate(1, 100_000, None)
        await until(lambda: fake_camera.count("encoder.stop stream=lores") >= 1, 10)
        source.set_tier_rate(1, 60_000, None)  # while that restart is under way
        await until(lambda: any("bitrate=60000" in e and "stream=lores" in e
                                for e in fake_camera.events()), 15)
        nursery.cancel_scope.cancel()
