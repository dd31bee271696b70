"""ALSA capture through real alsa-lib and pyalsaaudio, fed by the ALSA ``file`` plugin.

See tests/support/alsa.py for how the test devices are defined without a sound card.
"""

from __future__ import annotations

import io
import json
import threading
import time
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from support.alsa import (
    AlsaTestDevices,
    dominant_frequency,
    level_dbfs,
    sine,
)

from glimpse_edge.logs import configure_logging
from glimpse_edge.media import AlsaSource, SourceError, list_capture_devices
from glimpse_edge.media.alsa import FrameAssembler, MixerSettings, PcmConverter, _RateLimitedLog

pytest.importorskip("alsaaudio")


TIMEOUT = 5.0


async def capture(source: AlsaSource, count: int) -> list[av.AudioFrame]:
    """Run ``source`` until it delivered ``count`` frames, then stop it."""
    frames: list[av.AudioFrame] = []
    enough = trio.Event()

    def sink(frame: av.AudioFrame) -> None:
        frames.append(frame)
        if len(frames) >= count:
            enough.set()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, sink)
            await enough.wait()
            nursery.cancel_scope.cancel()
    return frames[:count]


def samples_of(frames: list[av.AudioFrame]) -> npt.NDArray[np.int16]:
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16)


def check_frames(frames: list[av.AudioFrame], rate: int, channels: int, samples: int) -> None:
    layout = {1: "mono", 2: "stereo"}[channels]
    for i, f in enumerate(frames):
        seen = (f.format.name, f.layout.name, f.sample_rate, f.samples, f.time_base)
        expected = ("s16", layout, rate, samples, Fraction(1, rate))
        assert seen == expected, f"frame {i}: expected {expected}, saw {seen}"
    pts = [f.pts for f in frames]
    start = pts[0]
    assert start is not None
    expected_pts = [start + i * samples for i in range(len(frames))]
    assert pts == expected_pts, f"pts not contiguous: expected {expected_pts}, saw {pts}"


def worker_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"glimpse-{name}"]


async def test_captures_the_file_plugin_waveform(alsa_devices: AlsaTestDevices) -> None:
    source = AlsaSource(alsa_devices.mono, 48000, 1, 20, paced=True)
    t0 = time.monotonic()
    frames = await capture(source, 25)  # 0.5 s
    elapsed = time.monotonic() - t0

    check_frames(frames, 48000, 1, 960)
    assert frames[0].pts == 0
    got = samples_of(frames)
    want = alsa_devices.mono_samples[: got.size]
    assert np.array_equal(got, want), (
        f"captured samples differ from the infile at {np.flatnonzero(got != want)[:5]}"
    )
    freq = dominant_frequency(got, 48000)
    assert abs(freq - 1000) <= 2, f"expected 1000 Hz, saw {freq:.1f} Hz"
    # paced=True: 25 periods of 20 ms cannot arrive sooner than (almost) 0.5 s
    assert elapsed >= 0.4, f"expected real-time pacing (>= 0.4 s for 0.5 s), took {elapsed:.3f} s"
    assert source.granted is not None
    assert (source.granted.rate, source.granted.channels, source.granted.format) == (
        48000, 1, "S16_LE"
    ), f"granted {source.granted}"
    assert not worker_threads(source.name), "the worker thread outlived the source"


async def test_stereo_device_is_converted_to_the_mono_asked_for(
    alsa_devices: AlsaTestDevices,
) -> None:
    source = AlsaSource(alsa_devices.stereo, 48000, 1, 20, paced=True)
    with capture_logs() as logs:
        frames = await capture(source, 20)

    opened = [e for e in logs if e["event"] == "media.alsa.opened"]
    assert len(opened) == 1, f"expected one media.alsa.opened event, saw {logs}"
    seen = {k: opened[0].get(k) for k in ("device", "rate", "channels", "asked_channels",
                                           "converting", "period_size")}
    expected = {"device": alsa_devices.stereo, "rate": 48000, "channels": 2,
                "asked_channels": 1, "converting": True, "period_size": 960}
    assert seen == expected, f"media.alsa.opened: expected {expected}, saw {seen}"
    assert source.granted is not None and source.granted.channels == 2, (
        f"expected the multi plugin to grant 2 channels, saw {source.granted}"
    )
    check_frames(frames, 48000, 1, 960)
    got = samples_of(frames)
    freq = dominant_frequency(got, 48000)
    assert abs(freq - 1000) <= 2, f"expected 1000 Hz, saw {freq:.1f} Hz"
    # L == R, and libswresample normalises its downmix matrix: the level is kept
    level = level_dbfs(got[1000:])
    assert abs(level + 12) < 0.5, f"expected -12 dBFS after the downmix, saw {level:.2f}"


async def test_stereo_as_asked_is_passed_through(alsa_devices: AlsaTestDevices) -> None:
    source = AlsaSource(alsa_devices.stereo, 48000, 2, 10, paced=True)
    frames = await capture(source, 10)
    check_frames(frames, 48000, 2, 480)
    got = samples_of(frames)
    assert np.array_equal(got, alsa_devices.stereo_samples[: got.size]), "stereo data changed"


async def test_pts_stay_contiguous_across_restarts(alsa_devices: AlsaTestDevices) -> None:
    source = AlsaSource(alsa_devices.mono, 48000, 1, 20, paced=True)
    first = await capture(source, 3)
    second = await capture(source, 3)
    check_frames(first + second, 48000, 1, 960)


async def test_missing_device_raises_source_error_naming_it() -> None:
    source = AlsaSource("glimpse_no_such_mic", 48000, 1, 20)
    with trio.fail_after(TIMEOUT), pytest.raises(SourceError) as info:
        await source.run(lambda frame: None)
    message = str(info.value)
    assert "glimpse_no_such_mic" in message and "no such device" in message, message
    assert not worker_threads(source.name)


async def test_cancel_stops_capture_promptly_and_closes(alsa_devices: AlsaTestDevices) -> None:
    source = AlsaSource(alsa_devices.mono, 48000, 1, 60, paced=True)
    started = trio.Event()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, lambda frame: started.set())
            await started.wait()
            t0 = trio.current_time()
            nursery.cancel_scope.cancel()
    took = trio.current_time() - t0
    assert took < 1.0, f"expected the source to stop within 1 s, took {took:.2f} s"
    assert not worker_threads(source.name), "the worker thread (and its PCM) is still alive"


def test_list_capture_devices_sees_the_test_config(alsa_devices: AlsaTestDevices) -> None:
    names = list_capture_devices()
    assert alsa_devices.mono in names and alsa_devices.stereo in names, names


# ------------------------------------------------ conversion path, tested directly


def test_44100_stereo_is_resampled_to_48000_mono() -> None:
    converter = PcmConverter("s16", 44100, 2, 48000, 1)
    assembler = FrameAssembler(48000, 1, 960)
    source = sine(1000, 44100, 1.0, channels=2)
    frames: list[av.AudioFrame] = []
    chunk = 441 * 2 * 2  # 441 stereo samples per "read", 10 ms
    for i in range(0, source.size, chunk):
        frames += assembler.push(converter.convert(source[i : i + chunk].tobytes()))

    check_frames(frames, 48000, 1, 960)
    got = samples_of(frames)
    # the resampler holds back a few samples; everything else comes out
    assert 48000 - 960 - 64 <= got.size <= 48000, f"expected ~48000 samples, saw {got.size}"
    freq = dominant_frequency(got, 48000)
    assert abs(freq - 1000) <= 2, f"expected 1000 Hz after resampling, saw {freq:.1f} Hz"


def test_s32_device_samples_become_s16() -> None:
    # I2S MEMS microphones on a Pi deliver S32_LE only
    converter = PcmConverter("s32", 48000, 1, 48000, 1)
    s16 = sine(1000, 48000, 0.1)
    s32 = s16.astype(np.int32) << 16
    out = converter.convert(s32.tobytes())
    assert out.dtype == np.int16
    n = min(out.size, s16.size)
    assert n > 4000 and np.max(np.abs(out[:n].astype(int) - s16[:n])) <= 1, "s32 -> s16 differs"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3000), max_size=20), st.sampled_from([1, 2]))
def test_short_reads_are_assembled_into_whole_frames(cuts: list[int], channels: int) -> None:
    data = np.arange(sum(cuts) * channels, dtype=np.int64).astype(np.int16)
    assembler = FrameAssembler(48000, channels, 960, first_pts=5)
    frames: list[av.AudioFrame] = []
    at = 0
    for n in cuts:
        frames += assembler.push(data[at : at + n * channels])
        at += n * channels
    assert len(frames) == sum(cuts) // 960
    if frames:
        check_frames(frames, 48000, channels, 960)
        assert frames[0].pts == 5
        out = samples_of(frames)
        assert np.array_equal(out, data[: out.size]), "samples reordered or lost"


def test_overrun_log_is_rate_limited() -> None:
    overrun = _RateLimitedLog("media.alsa.overrun", 3600.0, device="hw:1")
    with capture_logs() as logs:
        for _ in range(50):
            overrun()
    lines = [e for e in logs if e["event"] == "media.alsa.overrun"]
    assert len(lines) == 1, f"expected 1 log line for a burst of 50 overruns, saw {len(lines)}"
    assert (lines[0]["device"], lines[0]["count"], overrun.total) == ("hw:1", 1, 50)


async def test_missing_mixer_control_is_reported_and_capture_goes_on(
    alsa_devices: AlsaTestDevices
) -> None:
    """The file-plugin device has no card, so no mixer: a clear warning, audio still flows."""
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    settings = MixerSettings(control="Capture", gain=80, switch="on")
    source = AlsaSource(alsa_devices.mono, 48000, 1, 20, paced=True, mixer=settings)
    frames = await capture(source, 10)
    check_frames(frames, 48000, 1, 960)
    assert source.mixer_applied is False
    out = stream.getvalue()
    warning = next(json.loads(line) for line in out.splitlines()
                   if "media.alsa.mixer_failed" in line)
    assert warning["control"] == "Capture" and "amixer" in warning["hint"], warning
