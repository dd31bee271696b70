"""Speakerphone: remote audio mixed and played through real alsa-lib, echo cancelled.

* The mixer: fades on join/leave (no clicks), sums without wrapping or hard clipping.
* Echo cancellation, in process, with real frames: the peer's audio goes through
  the real mixer, the reference buffer and AEC3 exactly as the playback thread
  and the capture path pass it; only the room is synthetic (the played signal
  fed back into the microphone at -6 dB after 40 ms, plus a near-end talker).
* The same echo loop closed for real through alsa-lib (slow): the agent's playback
  ``file`` PCM writes into a FIFO, the test reads it and writes the echo plus a
  near-end talker into another FIFO, the ``infile`` of the agent's capture PCM;
  the peer's received audio is measured, against a control run without AEC.
* End to end: the agent process plays what aiortc peers send into an ALSA
  ``file`` PCM (real alsa-lib, pyalsaaudio); the file holds the mix.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest
import trio
from support.agent import AgentProcess, write_config
from support.alsa import SYSTEM_ALSA_CONF, dominant_frequency
from support.devserver import DevServer
from support.glimpse_client import create_room, register
from support.rtcpeer import BrowserPeer

from glimpse_edge.config import Config, ConfigError, PlaybackConfig, load_config
from glimpse_edge.media.aec import CaptureEchoCanceller, FarEndBuffer
from glimpse_edge.media.mixer import MIX_RATE, Mixer, soft_clip
from glimpse_edge.rtc.aio import open_aio_loop

BLOCK = 960  # 20 ms at 48 kHz
BYTES_PER_SECOND = MIX_RATE * 2  # s16 mono


# ------------------------------------------------------------------ the mixer


def _dc(level: float, seconds: float) -> npt.NDArray[np.float32]:
    return np.full(int(MIX_RATE * seconds), level, dtype=np.float32)


def test_join_and_leave_fade_instead_of_clicking() -> None:
    mixer = Mixer()
    inp = mixer.add("alice")
    mixer.push(inp, _dc(0.5, 0.1))  # a DC step is the worst case for a click
    out = np.concatenate([mixer.mix(BLOCK) for _ in range(4)]).astype(np.int32)
    steps = np.abs(np.diff(out))
    # 0.5 full scale over a 10 ms (480 sample) ramp: ~34 per sample, never a step
    assert steps.max() <= 40, f"a step of {steps.max()} at join: a click"
    assert out[-1] == round(0.5 * 32767), "after the fade the input plays at full gain"
    mixer.remove(inp)  # leaves while 20 ms are still buffered: played out, then faded
    tail = np.concatenate([mixer.mix(BLOCK) for _ in range(3)]).astype(np.int32)
    steps = np.abs(np.diff(np.concatenate([out[-1:], tail])))
    assert steps.max() <= 40, f"a step of {steps.max()} at leave: a click"
    assert tail[-BLOCK:].max() == 0 and not mixer.inputs, "the input is gone after its fade"


def test_underrun_fades_out_and_back_in() -> None:
    mixer = Mixer()
    inp = mixer.add("bob")
    mixer.push(inp, _dc(-0.5, 0.05))
    out = [mixer.mix(BLOCK) for _ in range(4)]  # runs dry in the 3rd block
    mixer.push(inp, _dc(-0.5, 0.1))
    out += [mixer.mix(BLOCK) for _ in range(4)]
    steps = np.abs(np.diff(np.concatenate(out).astype(np.int32)))
    assert steps.max() <= 40, f"a step of {steps.max()} around an underrun"
    assert inp.underruns == 1


def test_sum_is_soft_clipped_never_wrapped() -> None:
    def mixed(level: float, talkers: int) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.float64]]:
        mixer = Mixer()
        tone = level * np.sin(2 * np.pi * 440 * np.arange(MIX_RATE // 5) / MIX_RATE)
        for i in range(talkers):  # in phase: the worst case
            mixer.push(mixer.add(str(i)), tone.astype(np.float32))
        out = np.concatenate([mixer.mix(BLOCK) for _ in range(8)])[BLOCK * 2 :]
        assert mixer.clipped_blocks > 0
        return out, talkers * tone[BLOCK * 2 : BLOCK * 2 + out.size]

    out, ref = mixed(0.5, 2)  # exactly full scale in sum: limited to ~ -0.4 dBFS
    assert np.abs(out).max() < 0.96 * 32767, f"peak {np.abs(out).max()}: not limited"
    out, ref = mixed(0.7, 3)  # 2.1 x full scale: saturates smoothly, never wraps
    loud = np.abs(ref) > 0.1
    assert np.all(np.sign(out[loud]) == np.sign(ref[loud])), "the sum wrapped around"
    quiet = np.linspace(-0.79, 0.79, 101, dtype=np.float32)
    assert np.array_equal(soft_clip(quiet), quiet), "below the knee nothing changes"


# ------------------------------------------------------------------ echo cancellation


def _peer_frame(frequency: float, index: int) -> av.AudioFrame:
    """What aiortc's Opus decoder hands over: 20 ms of s16 stereo at 48 kHz."""
    n = np.arange(index * BLOCK, (index + 1) * BLOCK)
    mono = np.rint(8231 * np.sin(2 * np.pi * frequency * n / MIX_RATE)).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16",
                                       layout="stereo")
    frame.sample_rate, frame.pts, frame.time_base = MIX_RATE, index * BLOCK, Fraction(1, 48000)
    return frame


def _tone_level(x: npt.NDArray[np.float64], frequency: float) -> float:
    """Amplitude of one frequency in ``x`` in dB (a single-bin DFT)."""
    n = np.arange(x.size)
    return float(20 * np.log10(abs(np.mean(x * np.exp(-2j * np.pi * frequency * n / MIX_RATE)))
                               * 2 + 1e-9))


def test_echo_is_cancelled_and_near_end_speech_passes() -> None:
    """ERLE >= 20 dB after convergence; a near-end talker (1 kHz) passes during double talk.

    Per 20 ms, as in the agent: the peer's decoded frame is resampled into its
    mixer input (the drain), the mix is pushed as reference and "played" (the
    playback thread), and the microphone frame -- the played signal at -6 dB,
    40 ms later, plus the near-end tone from 6 s on -- goes through the
    canceller (the hub's capture processor).
    """
    pytest.importorskip("pywebrtc_audio")
    mixer, reference = Mixer(), FarEndBuffer()
    canceller = CaptureEchoCanceller(reference)
    inp = mixer.add("alice")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=MIX_RATE)
    seconds, delay = 9, int(0.040 * MIX_RATE)
    played = np.zeros(seconds * MIX_RATE + delay)
    near = np.where(np.arange(seconds * MIX_RATE) >= 6 * MIX_RATE,
                    np.rint(3277 * np.sin(2 * np.pi * 1000 * np.arange(seconds * MIX_RATE)
                                          / MIX_RATE)), 0.0)
    mic_all, out_all = [], []
    for k in range(seconds * 50):
        for f in resampler.resample(_peer_frame(440, k)):
            mixer.push(inp, f.to_ndarray().reshape(-1).astype(np.float32))
        block = mixer.mix(BLOCK)
        reference.push(block)
        played[delay + k * BLOCK : delay + (k + 1) * BLOCK] = block
        echo = 0.5 * played[k * BLOCK : (k + 1) * BLOCK]
        mic = np.clip(np.rint(echo + near[k * BLOCK : (k + 1) * BLOCK]), -32768, 32767)
        frame = av.AudioFrame.from_ndarray(mic.astype(np.int16).reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = MIX_RATE, k * BLOCK, Fraction(1, 48000)
        out = canceller.process(frame)
        assert (out.pts, out.sample_rate, out.samples) == (frame.pts, MIX_RATE, BLOCK)
        mic_all.append(mic)
        out_all.append(out.to_ndarray().reshape(-1).astype(np.float64))
    mic_s, out_s = np.concatenate(mic_all), np.concatenate(out_all)
    converged = slice(3 * MIX_RATE, 6 * MIX_RATE)  # echo only
    erle = 10 * np.log10(np.mean(mic_s[converged] ** 2) / max(np.mean(out_s[converged] ** 2),
                                                              1e-3))
    double = slice(int(6.5 * MIX_RATE), 9 * MIX_RATE)
    kept = _tone_level(out_s[double], 1000) - _tone_level(near[double], 1000)
    echo_left = _tone_level(mic_s[double], 440) - _tone_level(out_s[double], 440)
    print(f"AEC3: ERLE {erle:.1f} dB (echo only, 3-6 s); during double talk the near-end "
          f"1 kHz keeps {kept:+.1f} dB and the 440 Hz echo is {echo_left:.1f} dB down")
    assert erle >= 20, f"ERLE {erle:.1f} dB, expected >= 20 dB"
    assert abs(kept) <= 3, f"near-end speech changed by {kept:+.1f} dB during double talk"
    assert echo_left >= 20, f"echo only {echo_left:.1f} dB down during double talk"
    assert reference.trimmed == 0, "reference and capture ran in step: nothing to trim"


# ------------------------------------------------------------------ end to end through ALSA

PLAY_DEVICE = "glimpseplay"
MIC_DEVICE = "glimpsemic"
MEDIA = """
[video]
source = "testpattern"
width = 320
height = 180
framerate = 15

[audio]
source = "tone"
tone_frequency = 1000.0

[peers]
offer_wait = 0.5
"""


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with open_aio_loop(), trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


def _alsa_env(tmp_path: Path, played: Path | None = None,
              mic: Path | None = None) -> dict[str, str]:
    """ALSA_CONFIG_PATH with a ``file`` PCM that writes what it plays (s16 mono) to ``played``,
    and with ``mic``, a capture PCM ``MIC_DEVICE`` that reads that file (raw s16 mono)."""
    if not SYSTEM_ALSA_CONF.exists():
        pytest.skip(f"{SYSTEM_ALSA_CONF} not found: alsa-lib is not installed")
    config = tmp_path / "asound.conf"
    config.write_text(f"""<{SYSTEM_ALSA_CONF}>
pcm.{PLAY_DEVICE} {{
    type file
    slave.pcm null
    file "{played or '/dev/null'}"
    format raw
}}
""" + ("" if mic is None else f"""
pcm.{MIC_DEVICE} {{
    type file
    slave.pcm null
    file "/dev/null"
    infile "{mic}"
    format raw
}}
"""))
    return {"ALSA_CONFIG_PATH": str(config)}


class Speaker:
    """The other end of the playback PCM: a FIFO read as the agent writes into it.

    Event-driven, so the test waits for "N bytes were played", not for a time:
    the reader task wakes when the agent's playback thread writes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = bytearray()
        self._changed = trio.Condition()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        os.mkfifo(self.path)
        reader = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        keep = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # no EOF before the agent opens
        stream = trio.lowlevel.FdStream(reader)
        task_status.started()
        try:
            while chunk := await stream.receive_some(65536):
                self.data += chunk
                async with self._changed:
                    self._changed.notify_all()
        finally:
            os.close(keep)
            await stream.aclose()

    async def after(self, start: int, seconds: float, timeout: float = 20) -> bytes:
        """``seconds`` of what was played from byte ``start`` on."""
        want = start + int(seconds * BYTES_PER_SECOND) // 2 * 2
        with trio.fail_after(timeout):
            while len(self.data) < want:
                async with self._changed:
                    await self._changed.wait()
        return bytes(self.data[start:want])

    @property
    def mark(self) -> int:
        return len(self.data) // 2 * 2


def _spectrum_peaks(samples: npt.NDArray[np.int16], *freqs: float) -> dict[float, float]:
    """Each frequency's level above the median of the spectrum, in dB."""
    x = samples.astype(np.float64) * np.hanning(samples.size)
    spec = np.abs(np.fft.rfft(x)) + 1e-9
    bins = np.fft.rfftfreq(samples.size, 1 / MIX_RATE)
    floor = float(np.median(spec))
    return {f: float(20 * np.log10(spec[np.abs(bins - f) < 5].max() / floor)) for f in freqs}


async def test_peers_tones_are_played_and_mixed(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    pytest.importorskip("alsaaudio")
    speaker = Speaker(tmp_path / "played.fifo")
    await nursery.start(speaker.run)
    env = _alsa_env(tmp_path, speaker.path)
    alice_token = (await register(devserver.api_url, "alice", "alice-password"))[1]
    bob_token = (await register(devserver.api_url, "bob", "bob-password"))[1]
    device_id, device_token = await register(devserver.api_url, "device", "device-password")
    owner_token = (await register(devserver.api_url, "owner", "owner-password"))[1]
    room_id = await create_room(devserver.api_url, owner_token, "Room")
    extra = MEDIA + f'\n[playback]\nenabled = true\ndevice = "{PLAY_DEVICE}"\n'
    agent = AgentProcess(write_config(tmp_path, ws_url=devserver.ws_url, room_id=room_id,
                                      token=device_token, log_level="info", extra=extra), env=env)
    await agent.start(nursery)
    opened = await agent.wait_for("media.playback.opened", timeout=20)
    assert (opened["rate"], opened["channels"], opened["format"]) == (48000, 1, "S16_LE"), opened
    assert opened["echo_cancellation"] is True, opened
    await agent.wait_for("room.joined", timeout=20)
    alice = BrowserPeer("alice", send_tone=440)
    bob = BrowserPeer("bob", send_tone=660)
    async with alice.joined(devserver.ws_url, alice_token, room_id):
        await agent.wait_for("media.playback.peer_started", timeout=20)
        await alice.wait_frames(device_id, video=1, audio=20)  # her receiving is untouched
        one = np.frombuffer(await speaker.after(speaker.mark + BYTES_PER_SECOND // 5, 1.0),
                            dtype="<i2")
        freq = dominant_frequency(one, MIX_RATE)
        assert abs(freq - 440) < 3, f"expected alice's 440 Hz in the playback, got {freq:.1f}"
        assert np.abs(one).max() < 32767
        async with bob.joined(devserver.ws_url, bob_token, room_id):
            await agent.wait_for("media.playback.peer_started", count=2, timeout=20)
            both = np.frombuffer(
                await speaker.after(speaker.mark + BYTES_PER_SECOND // 5, 1.0), dtype="<i2")
        peaks = _spectrum_peaks(both, 440, 660)
        assert min(peaks.values()) > 40, f"both tones expected well above the floor: {peaks}"
        assert abs(peaks[440] - peaks[660]) < 6, f"the two peers mixed unevenly: {peaks}"
        await agent.wait_for("media.playback.peer_ended", timeout=20)  # bob left: faded out
    await agent.stop()
    assert agent.find("media.aec.started"), "the echo canceller never ran on the capture"
    errors = [e for e in agent.events if e.get("level") == "error"]
    assert not errors, json.dumps(errors[:5], indent=1)


async def test_playback_device_errors_back_off_without_touching_the_call(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A missing speaker is retried with back-off; the peer is still served and drained."""
    pytest.importorskip("alsaaudio")
    env = _alsa_env(tmp_path)
    alice_token = (await register(devserver.api_url, "alice", "alice-password"))[1]
    device_id, device_token = await register(devserver.api_url, "device", "device-password")
    owner_token = (await register(devserver.api_url, "owner", "owner-password"))[1]
    room_id = await create_room(devserver.api_url, owner_token, "Room")
    extra = MEDIA + '\n[playback]\nenabled = true\ndevice = "glimpse_no_such_speaker"\n'
    agent = AgentProcess(write_config(tmp_path, ws_url=devserver.ws_url, room_id=room_id,
                                      token=device_token, log_level="info", extra=extra), env=env)
    await agent.start(nursery)
    await agent.wait_for("room.joined", timeout=20)
    alice = BrowserPeer("alice", send_tone=440)
    async with alice.joined(devserver.ws_url, alice_token, room_id):
        crashed = await agent.wait_for("supervise.task_crashed", task="media.playback",
                                       timeout=20)
        assert "glimpse_no_such_speaker" in json.dumps(crashed), crashed
        await agent.wait_for("supervise.task_crashed", task="media.playback", count=2,
                             timeout=20)
        await agent.wait_for("media.playback.peer_started", timeout=20)  # drained all along
        got = await alice.wait_frames(device_id, video=30, audio=50)
        assert got.audio_frames >= 50
    await agent.stop()
    others = [e for e in agent.events if e.get("level") == "error"
              and e.get("task") != "media.playback"]
    assert not others, json.dumps(others[:5], indent=1)


class EchoRoom:
    """A real closed echo loop through alsa-lib: speaker FIFO in, microphone FIFO out.

    The agent's playback PCM (a ``file`` plugin) writes into ``played``; its capture
    PCM (a ``file`` plugin over ``null``) reads its ``infile``, the FIFO ``mic``.  Per
    20 ms the speaker plays, this task writes 20 ms of microphone: the played signal
    40 ms later at -6 dB (the echo) plus, from ``near_after`` s after the far end is
    first heard, a near-end talker (1 kHz at -12 dBFS).  So the capture runs exactly
    as fast as the playback (the FIFO reads pace the loop), and every write is one
    capture period (1920 bytes, atomic on a pipe: the plugin never reads half).
    Until the speaker plays at all, the room is silent: a 20 ms block of silence
    goes in after each 0.5 s without playback, so the capture never starves.
    """

    NEAR_HZ, NEAR_DBFS, ECHO_GAIN, DELAY_S = 1000.0, -12.0, 0.5, 0.040

    def __init__(self, played: Path, mic: Path, near_after: float = 4.0) -> None:
        self.played_path, self.mic_path = played, mic
        self.near_after = near_after
        self.mic: list[npt.NDArray[np.int16]] = []  # every block written to the microphone
        self.written = 0  # samples written to the microphone
        self.near_start: int | None = None  # mic sample index where the near end starts
        self._changed = trio.Condition()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        os.mkfifo(self.played_path)
        os.mkfifo(self.mic_path)
        fds = [os.open(self.played_path, os.O_RDONLY | os.O_NONBLOCK),
               os.open(self.played_path, os.O_WRONLY | os.O_NONBLOCK),  # no EOF early
               os.open(self.mic_path, os.O_RDONLY | os.O_NONBLOCK),  # no EPIPE late
               os.open(self.mic_path, os.O_WRONLY | os.O_NONBLOCK)]
        speaker = trio.lowlevel.FdStream(fds[0])
        microphone = trio.lowlevel.FdStream(fds[3])
        amplitude = 32767 * 10 ** (self.NEAR_DBFS / 20)
        line = np.zeros(int(self.DELAY_S * MIX_RATE))  # played, not yet heard
        pending = bytearray()
        task_status.started()
        try:
            while True:
                with trio.move_on_after(0.5) as idle:
                    chunk = await speaker.receive_some(65536)
                if idle.cancelled_caught:
                    if self.near_start is None:
                        await self._hear(microphone, np.zeros(BLOCK, dtype=np.int16))
                    continue
                if not chunk:
                    return
                pending += chunk
                whole = len(pending) // (2 * BLOCK) * (2 * BLOCK)
                played = np.frombuffer(bytes(pending[:whole]), dtype="<i2").astype(np.float64)
                del pending[:whole]
                for k in range(0, played.size, BLOCK):
                    block = played[k : k + BLOCK]
                    if self.near_start is None and np.abs(block).max() > 100:
                        self.near_start = self.written + int(self.near_after * MIX_RATE)
                    line = np.concatenate([line, block])
                    echo, line = line[:BLOCK], line[BLOCK:]
                    n = np.arange(self.written, self.written + BLOCK)
                    near = amplitude * np.sin(2 * np.pi * self.NEAR_HZ * n / MIX_RATE)
                    if self.near_start is None or n[0] < self.near_start:
                        near[:] = 0
                    mic = np.clip(np.rint(self.ECHO_GAIN * echo + near), -32768, 32767)
                    await self._hear(microphone, mic.astype(np.int16))
        finally:
            for fd in fds[1:3]:
                os.close(fd)
            await speaker.aclose()
            await microphone.aclose()

    async def _hear(self, microphone: trio.lowlevel.FdStream,
                    block: npt.NDArray[np.int16]) -> None:
        await microphone.send_all(block.astype("<i2").tobytes())
        self.mic.append(block)
        self.written += block.size
        async with self._changed:
            self._changed.notify_all()

    async def wait_written(self, predicate: Callable[[], bool], what: str,
                           timeout: float = 30) -> None:
        with trio.move_on_after(timeout):
            while not predicate():
                async with self._changed:
                    await self._changed.wait()
            return
        raise AssertionError(f"expected {what} within {timeout} s; the microphone got "
                             f"{self.written / MIX_RATE:.2f} s, near end from {self.near_start}")

    def near_seconds(self) -> float:
        """Seconds of near-end talk written so far."""
        return 0.0 if self.near_start is None else (self.written - self.near_start) / MIX_RATE

    def tail(self, seconds: float, end: int | None = None) -> npt.NDArray[np.float64]:
        mic = np.concatenate(self.mic).astype(np.float64)
        end = mic.size if end is None else end
        return mic[end - int(seconds * MIX_RATE) : end]


def _band_dbfs(x: npt.NDArray[np.float64], frequency: float, width: float = 15) -> float:
    """Level of the band ``frequency`` +- ``width`` Hz as a sine's, in dBFS (Hann, FFT)."""
    w = np.hanning(x.size)
    spec = np.abs(np.fft.rfft(x * w)) ** 2
    bins = np.fft.rfftfreq(x.size, 1 / MIX_RATE)
    band = float(spec[np.abs(bins - frequency) <= width].sum())
    # a sine of amplitude A: sum over its bins of |X|^2 = A^2/4 * N * sum(w^2)
    amplitude = np.sqrt(4 * band / (x.size * float(np.sum(w**2))))
    return float(20 * np.log10(amplitude / 32767 + 1e-12))


def _received_tail(peer: BrowserPeer, device_id: str, seconds: float) -> npt.NDArray[np.float64]:
    """The last ``seconds`` of the device's audio as ``peer`` decoded it (left channel)."""
    frames = peer.received[device_id].audio_samples
    mono = np.concatenate([f.reshape(-1)[::2] for f in frames]).astype(np.float64)
    n = int(seconds * MIX_RATE)
    assert mono.size >= n, f"only {mono.size / MIX_RATE:.2f} s received"
    return mono[-n:]


@pytest.mark.slow
@pytest.mark.parametrize("aec", [True, False], ids=["aec", "no_aec"])
async def test_echo_through_a_real_alsa_loop_is_cancelled(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery, aec: bool
) -> None:
    """Speaker -> FIFO -> 40 ms, -6 dB + near-end talker -> FIFO -> microphone, all through
    alsa-lib; what the peer hears: echo >= 20 dB down (ERLE), near-end speech intact.

    Without echo cancellation (the control) the same loop delivers the echo to the
    peer at its full level: the loop, not a broken capture, is what is measured.
    """
    pytest.importorskip("alsaaudio")
    if aec:
        pytest.importorskip("pywebrtc_audio")
    room = EchoRoom(tmp_path / "played.fifo", tmp_path / "mic.fifo")
    await nursery.start(room.run)
    env = _alsa_env(tmp_path, room.played_path, mic=room.mic_path)
    alice_token = (await register(devserver.api_url, "alice", "alice-password"))[1]
    device_id, device_token = await register(devserver.api_url, "device", "device-password")
    owner_token = (await register(devserver.api_url, "owner", "owner-password"))[1]
    room_id = await create_room(devserver.api_url, owner_token, "Room")
    extra = (MEDIA.replace('source = "tone"\ntone_frequency = 1000.0',
                           f'source = "alsa"\ndevice = "{MIC_DEVICE}"')
             + f'\n[playback]\nenabled = true\ndevice = "{PLAY_DEVICE}"\n'
             + f"echo_cancellation = {str(aec).lower()}\n")
    agent = AgentProcess(write_config(tmp_path, ws_url=devserver.ws_url, room_id=room_id,
                                      token=device_token, log_level="info", extra=extra), env=env)
    await agent.start(nursery)
    await agent.wait_for("media.alsa.opened", device=MIC_DEVICE, timeout=20)
    await agent.wait_for("media.playback.opened", timeout=20)
    await agent.wait_for("room.joined", timeout=20)
    alice = BrowserPeer("alice", send_tone=440, keep_audio=3000)
    async with alice.joined(devserver.ws_url, alice_token, room_id):
        await agent.wait_for("media.playback.peer_started", timeout=20)
        await room.wait_written(lambda: room.near_start is not None
                                and room.written >= room.near_start, "4 s of echo only")
        start = room.near_start
        assert start is not None
        echo_only = _received_tail(alice, device_id, 1.5)  # captured before the near end
        await room.wait_written(lambda: room.near_seconds() >= 3.5, "3.5 s of double talk")
        double = _received_tail(alice, device_id, 2.0)
        mic_double = room.tail(2.0)  # now: once alice leaves the echo stops
    mic_echo = room.tail(1.5, end=start)
    echo_level = _band_dbfs(mic_echo, 440)  # what the peer would hear without AEC
    erle = echo_level - _band_dbfs(echo_only, 440)
    echo_left = _band_dbfs(mic_double, 440) - _band_dbfs(double, 440)
    near_in, near_out = _band_dbfs(mic_double, 1000), _band_dbfs(double, 1000)
    print(f"ALSA loop ({aec=}): echo {echo_level:.1f} dBFS in the microphone; ERLE {erle:.1f} dB "
          f"(echo only), {echo_left:.1f} dB during double talk; near end {near_in:.1f} dBFS "
          f"in, {near_out:.1f} dBFS out")
    await agent.stop()
    assert -20 < echo_level < -16, f"the loop's echo is {echo_level:.1f} dBFS, not ~-18"
    if aec:
        assert erle >= 20, f"ERLE {erle:.1f} dB, expected >= 20 dB"
        assert echo_left >= 20, f"echo only {echo_left:.1f} dB down during double talk"
    else:
        assert abs(erle) <= 3 and abs(echo_left) <= 3, (
            f"without AEC the echo should reach the peer unchanged: {erle:.1f}, "
            f"{echo_left:.1f} dB")
    assert abs(near_out - near_in) <= 3, f"near end {near_in:.1f} -> {near_out:.1f} dBFS"
    errors = [e for e in agent.events if e.get("level") == "error"]
    assert not errors, json.dumps(errors[:5], indent=1)


# ------------------------------------------------------------------ configuration


def _load(tmp_path: Path, extra: str) -> Config:
    (tmp_path / "token").write_text("t\n")
    (tmp_path / "token").chmod(0o600)
    path = tmp_path / "config.toml"
    path.write_text('[server]\nws_url = "wss://g.example/ws"\n[auth]\ntoken_file = "token"\n'
                    f'[room]\nid = "r"\n{extra}')
    return load_config(path)


def test_playback_defaults_off_and_needs_audio(tmp_path: Path) -> None:
    config = _load(tmp_path, "")
    assert config.playback == PlaybackConfig(enabled=False, device="default", volume=100,
                                             echo_cancellation=True)
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, '[audio]\nsource = "none"\n[playback]\nenabled = true\n')
    assert err.value.key == "playback.enabled", str(err.value)
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "[playback]\nvolume = 101\n")
    assert err.value.key == "playback.volume", str(err.value)
