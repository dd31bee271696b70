#!/usr/bin/env python3
"""What the speakerphone adds in CPU, per second of two-way audio.

    .venv/bin/python scripts/bench_speakerphone.py            # ~2 min
    .venv/bin/python scripts/bench_speakerphone.py --seconds 5 --rounds 1   # a smoke run

Two tables:

(a) Components, in this process, with real frames: per second of audio, the
    CPU of draining N peers' decoded frames into the mixer (resample/downmix),
    mixing, and AEC3 on the microphone. Deterministic, so it shows where the
    cost is and how it grows with N.
(b) The real agent on loopback: agent process CPU (psutil, user + system) per
    second over a steady window, with N aiortc peers that each *send* a tone
    and receive the agent's audio and video, once with ``[playback]`` off
    (audio send-only, as before) and once on (sendrecv: aiortc's Opus decode
    per peer, the drain, mix, ALSA writes into a ``file`` PCM, AEC3). The
    difference is what the feature adds; it includes aiortc's receive path
    (SRTP, jitter buffer, Opus decode), which (a) does not. Off/on alternate
    (ABBA) against machine drift. Video is a small test pattern so that the
    audio cost is not lost in the noise of encoding.

Everything is on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.agent import AgentProcess, write_config  # noqa: E402
from support.alsa import SYSTEM_ALSA_CONF  # noqa: E402
from support.devserver import DevServer, run_devserver  # noqa: E402
from support.glimpse_client import create_room, register  # noqa: E402
from support.rtcpeer import BrowserPeer  # noqa: E402

from glimpse_edge.media.aec import CaptureEchoCanceller, FarEndBuffer  # noqa: E402
from glimpse_edge.media.mixer import MIX_RATE, Mixer  # noqa: E402
from glimpse_edge.rtc.aio import open_aio_loop  # noqa: E402

BLOCK = 960
PEERS = (1, 4)


def _frame(freq: float, k: int) -> av.AudioFrame:
    n = np.arange(k * BLOCK, (k + 1) * BLOCK)
    mono = np.rint(8000 * np.sin(2 * np.pi * freq * n / MIX_RATE)).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16",
                                       layout="stereo")
    frame.sample_rate, frame.pts, frame.time_base = MIX_RATE, k * BLOCK, Fraction(1, MIX_RATE)
    return frame


def components(n_peers: int, seconds: int) -> dict[str, float]:
    """CPU ms per second of audio for each stage, N peers."""
    mixer, reference = Mixer(), FarEndBuffer()
    canceller = CaptureEchoCanceller(reference)
    inputs = [(mixer.add(str(i)), av.AudioResampler(format="flt", layout="mono", rate=MIX_RATE))
              for i in range(n_peers)]
    frames = [[_frame(300 + 110 * i, k) for k in range(50)] for i in range(n_peers)]
    mic = av.AudioFrame.from_ndarray(np.zeros((1, BLOCK), np.int16), format="s16", layout="mono")
    mic.sample_rate, mic.time_base = MIX_RATE, Fraction(1, MIX_RATE)
    spent = {"drain": 0.0, "mix": 0.0, "aec": 0.0}
    for k in range(seconds * 50):
        t0 = time.process_time()
        for i, (inp, resampler) in enumerate(inputs):
            for f in resampler.resample(frames[i][k % 50]):
                mixer.push(inp, f.to_ndarray().reshape(-1).astype(np.float32))
        t1 = time.process_time()
        reference.push(mixer.mix(BLOCK))
        t2 = time.process_time()
        mic.pts = k * BLOCK
        canceller.process(mic)
        t3 = time.process_time()
        spent["drain"] += t1 - t0
        spent["mix"] += t2 - t1
        spent["aec"] += t3 - t2
    return {k: v / seconds * 1000 for k, v in spent.items()}


MEDIA = """
[video]
source = "testpattern"
width = 320
height = 180
framerate = 15
max_bitrate = 300000
min_bitrate = 100000

[audio]
source = "tone"

[peers]
offer_wait = 0.5
"""


async def agent_cpu(server: DevServer, work: Path, n: int, playback: bool,
                    seconds: float) -> float:
    """Agent CPU ms per second with ``n`` tone-sending peers, playback on or off."""
    asound = work / "asound.conf"
    asound.write_text(f"<{SYSTEM_ALSA_CONF}>\npcm.benchplay {{\n type file\n slave.pcm null\n"
                      f' file "/dev/null"\n format raw\n}}\n')
    stamp = f"{int(time.time() * 1000) % 10**9}{n}{int(playback)}"
    device_id, device_token = await register(server.api_url, f"dev{stamp}", "pw-device-x")
    _o, owner_token = await register(server.api_url, f"own{stamp}", "pw-owner-x")
    room = await create_room(server.api_url, owner_token, "Bench")
    extra = MEDIA + (f'\n[playback]\nenabled = {str(playback).lower()}\ndevice = "benchplay"\n')
    agent = AgentProcess(write_config(work / f"a{stamp}", ws_url=server.ws_url, room_id=room,
                                      token=device_token, log_level="info", extra=extra),
                         env={"ALSA_CONFIG_PATH": str(asound)})
    async with open_aio_loop(), trio.open_nursery() as nursery:
        await agent.start(nursery)
        await agent.wait_for("room.joined", timeout=20)
        peers = []
        async with trio.open_nursery() as inner:
            for i in range(n):
                user = f"p{stamp}{i}"
                token = (await register(server.api_url, user, "pw-peer-xx"))[1]
                peer = BrowserPeer(user, send_tone=300 + 110 * i)
                peers.append(peer)
                ready = trio.Event()

                async def hold(p: BrowserPeer = peer, t: str = token,
                               ev: trio.Event = ready) -> None:
                    async with p.joined(server.ws_url, t, room):
                        ev.set()
                        await trio.sleep_forever()

                inner.start_soon(hold)
                await ready.wait()
            await agent.wait_for("peer.connected", count=n, timeout=30)
            if playback:
                await agent.wait_for("media.playback.peer_started", count=n, timeout=30)
            for p in peers:
                await p.wait_frames(device_id, video=1, audio=20)
            await trio.sleep(2.0)  # settle: joins and key frames are not steady state
            c0, t0 = agent.cpu_seconds(), time.monotonic()
            await trio.sleep(seconds)  # the measurement window itself
            cpu = (agent.cpu_seconds() - c0) / (time.monotonic() - t0)
            inner.cancel_scope.cancel()
        await agent.stop()
        nursery.cancel_scope.cancel()
    return cpu * 1000


async def bench(seconds: float, rounds: int) -> None:
    print("(a) components, CPU ms per second of two-way audio (this machine, one core):")
    print(f"{'peers':>5} {'drain+resample':>15} {'mix':>8} {'AEC3':>8} {'total':>8}")
    for n in PEERS:
        c = components(n, 20)
        print(f"{n:>5} {c['drain']:>15.2f} {c['mix']:>8.2f} {c['aec']:>8.2f} "
              f"{sum(c.values()):>8.2f}")
    print()
    async with run_devserver() as server:
        with tempfile.TemporaryDirectory(prefix="bench-speaker-") as tmp:
            rows = []
            for n in PEERS:
                off: list[float] = []
                on: list[float] = []
                for r in range(rounds):
                    order = (False, True) if r % 2 == 0 else (True, False)
                    for playback in order:
                        ms = await agent_cpu(server, Path(tmp), n, playback, seconds)
                        (on if playback else off).append(ms)
                rows.append((n, statistics.median(off), statistics.median(on)))
    print("(b) agent process, CPU ms per second (median of "
          f"{rounds} run(s) each, {seconds:g} s windows):")
    print(f"{'peers':>5} {'playback off':>13} {'playback on':>12} {'added':>8} {'per peer':>9}")
    for n, off_ms, on_ms in rows:
        print(f"{n:>5} {off_ms:>13.1f} {on_ms:>12.1f} {on_ms - off_ms:>8.1f} "
              f"{(on_ms - off_ms) / n:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs per peer count")
    args = parser.parse_args()
    trio.run(bench, args.seconds, args.rounds)


if __name__ == "__main__":
    main()
