#!/usr/bin/env python3
"""What the kiosk display costs: CPU per shown participant, display latency, memory.

    .venv/bin/python scripts/bench_display.py               # ~2 min
    .venv/bin/python scripts/bench_display.py --seconds 4   # a smoke run

Needs Debian's Xvfb (the screen is SDL's x11 driver on it, as in the tests).

(a) Decode + render, in this process, with the display's own parts
    (display/decode.VideoDecoder per participant -> DisplayState -> Screen):
    two participants shown side by side on a 1280x720 screen, each sending
    H.264 (what Chromium sent in tests/integration/test_display_agent.py) at
    640x360 and at 1280x720, encoded beforehand (libx264, camera-like grain
    so the encoder spends its whole rate) and fed in real time at 30 fps.

    * "no cap": the rate Chromium allows itself for that size on a free link
      (libwebrtc's default maximum: 1.7 Mbit/s up to 640x480, 2.5 Mbit/s
      above);
    * "tile cap": what the agent asks for a 628x353 tile (two tiles on
      1280x720; rtc/remotevideo.tile_bitrate: 0.1 bit/pixel x 30 fps =
      665 kbit/s). The size is kept: a browser that also scales down under a
      low cap (Chromium does, "balanced" degradation) costs less still.

    CPU is this process's (all threads: decoders, screen, feeder), minus the
    idle screen's, per second, divided by the participants: % of one core per
    shown participant. Latency is per frame, from the encoded frame's arrival
    at the decoder to the end of the present that first showed it
    (decode + hand-over + paint); "decode" is arrival -> decoded. "of which
    decode" is a run of the same streams with no screen (FFmpeg decodes on
    threads of its own, so a per-thread split would not show it). Note: under
    Xvfb the renderer is Mesa's llvmpipe, so the YUV->RGB conversion and the
    scaling run on the CPU here, where a Pi's GPU does them.

(b) The real agent on loopback, on Xvfb: 4 aiortc participants (640x360
    VP8, the frame-coded pattern) shown; the agent process's RSS and CPU, and
    the age of the frame on screen (screenshot time minus the capture time in
    the frame code: capture -> aiortc encode -> network -> decode -> screen, +
    0..1 frame interval it was already up, + the screenshot's own latency).
    The agent encodes its own test pattern (640x360 H.264) meanwhile, as in a call.

Everything is on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.xvfb import xvfb  # noqa: E402

from glimpse_edge.display import screen as screen_module  # noqa: E402
from glimpse_edge.display.decode import EncodedFrame, VideoDecoder, is_keyframe  # noqa: E402
from glimpse_edge.display.layout import grid  # noqa: E402
from glimpse_edge.display.screen import Screen, ScreenSettings  # noqa: E402
from glimpse_edge.display.state import DisplayState  # noqa: E402
from glimpse_edge.media.testpattern import TestPatternSource  # noqa: E402
from glimpse_edge.rtc.remotevideo import tile_bitrate  # noqa: E402

W, H = 1280, 720
FPS = 30
SHOWN = 2
UNCAPPED = {(640, 360): 1_700_000, (1280, 720): 2_500_000}


def encode(width: int, height: int, bitrate: int, count: int) -> list[EncodedFrame]:
    """``count`` frames of the grainy pattern as a browser would send them (H.264, GOP 3 s)."""
    source = TestPatternSource(width, height, FPS, noise=4)
    ctx: Any = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, 90000)
    ctx.framerate = Fraction(FPS, 1)
    ctx.bit_rate = bitrate
    ctx.gop_size = 90
    ctx.options = {"tune": "zerolatency", "preset": "veryfast", "bf": "0",
                   "vbv-maxrate": str(bitrate // 1000), "vbv-bufsize": str(bitrate // 2000)}
    out: list[EncodedFrame] = []
    for i in range(count):
        for packet in ctx.encode(source.render(i, 0, i * 3000)):
            data = bytes(packet)
            out.append(EncodedFrame(data, is_keyframe("h264", data), i))
    for packet in ctx.encode(None):
        data = bytes(packet)
        out.append(EncodedFrame(data, is_keyframe("h264", data), len(out)))
    return out


class Timings:
    """Per (tile, pts): arrival at the decoder, decoded, first presented."""

    def __init__(self) -> None:
        self.arrived: dict[tuple[str, int], float] = {}
        self.decoded: dict[tuple[str, int], float] = {}
        self.presented: dict[tuple[str, int], float] = {}
        self.lock = threading.Lock()

    def latencies(self) -> tuple[list[float], list[float]]:
        with self.lock:
            shown = [(self.presented[k] - self.arrived[k]) * 1000
                     for k in self.presented if k in self.arrived]
            decode = [(self.decoded[k] - self.arrived[k]) * 1000
                      for k in self.decoded if k in self.arrived]
        return shown, decode


def _patch_paint(timings: Timings) -> None:
    """Note when each tile's frame was first on screen (after the present returns)."""
    original = screen_module._Session.paint

    def paint(self: Any, snap: Any, settings: Any, clock: str) -> None:
        original(self, snap, settings, clock)
        now = time.perf_counter()
        with timings.lock:
            for tile in snap.tiles:
                if tile.frame is not None:
                    timings.presented.setdefault((tile.key, tile.frame.pts), now)

    screen_module._Session.paint = paint  # type: ignore[method-assign]


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_case(state: DisplayState, stream: list[EncodedFrame], seconds: float,
             timings: Timings) -> float:
    """Show SHOWN participants each fed ``stream`` in real time; CPU seconds per second
    of this process (decoders, FFmpeg's threads, the screen and its GL's threads)."""
    decoders: list[VideoDecoder] = []
    keys = [f"p{i}" for i in range(SHOWN)]
    for key in keys:
        state.set_tile(key, key, "connecting")

        def on_frame(frame: av.VideoFrame, key: str = key) -> None:
            with timings.lock:
                timings.decoded.setdefault((key, frame.pts), time.perf_counter())
            state.show_frame(key, frame)

        decoders.append(VideoDecoder("h264", on_frame, lambda: None, name=key))
    start = time.perf_counter()
    warm = 1.0  # the first second (decoder start-up) is not measured
    measured_from = cpu_from = None
    i = 0
    while True:
        due = start + i / FPS
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        if measured_from is None and time.perf_counter() - start >= warm:
            measured_from, cpu_from = time.perf_counter(), time.process_time()
        if time.perf_counter() - start >= warm + seconds:
            break
        frame = stream[i % len(stream)]
        pts = i  # unique per frame fed, so latency maps one to one
        for key, decoder in zip(keys, decoders, strict=True):
            with timings.lock:
                timings.arrived[(key, pts)] = time.perf_counter()
            decoder.submit(EncodedFrame(frame.data, frame.keyframe, pts))
        i += 1
    assert measured_from is not None and cpu_from is not None
    cpu = (time.process_time() - cpu_from) / (time.perf_counter() - measured_from)
    for decoder in decoders:
        decoder.close()
    for key in keys:
        state.remove_tile(key)
    return cpu


def component_bench(seconds: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cap = tile_bitrate(grid(SHOWN, W, H).tiles[0])
    cases = [(size, label, encode(*size, bitrate, 90))
             for size in ((640, 360), (1280, 720))
             for label, bitrate in (("no cap", UNCAPPED[size]), ("tile cap", cap))]
    # decode alone first (no screen: the frames only reach the state)
    decode_only = {}
    for size, label, stream in cases:
        decode_only[size, label] = run_case(DisplayState(), stream, seconds, Timings())
    with xvfb(W, H) as display:
        os.environ["DISPLAY"] = display
        os.environ.pop("WAYLAND_DISPLAY", None)
        state = DisplayState("bench")
        timings = Timings()
        _patch_paint(timings)
        screen = Screen(state, ScreenSettings(driver="x11", size=(W, H), position=(0, 0)))
        screen.open()
        try:
            idle0, t0 = time.process_time(), time.perf_counter()
            time.sleep(min(3.0, seconds))
            idle = (time.process_time() - idle0) / (time.perf_counter() - t0)
            print(f"idle screen ({screen.renderer_name}): {idle * 100:.1f} % of a core",
                  flush=True)
            for size, label, stream in cases:
                real = sum(len(f.data) for f in stream) * 8 * FPS / len(stream)
                timings.__init__()  # type: ignore[misc]
                cpu = run_case(state, stream, seconds, timings)
                dec = decode_only[size, label]
                shown, decode = timings.latencies()
                rows.append({
                    "size": f"{size[0]}x{size[1]}", "cap": label,
                    "kbps": round(real / 1000),
                    "cpu_pct": (cpu - idle) * 100 / SHOWN,
                    "dec_pct": dec * 100 / SHOWN,
                    "lat_med": p(shown, 0.5), "lat_p95": p(shown, 0.95),
                    "dec_med": p(decode, 0.5), "frames": len(shown),
                })
                r = rows[-1]
                print(f"  {r['size']} {label:8s} {r['kbps']:5d} kbit/s: "
                      f"{r['cpu_pct']:5.1f} % per participant "
                      f"(decode {r['dec_pct']:.1f} %), shown "
                      f"{r['lat_med']:.1f}/{r['lat_p95']:.1f} ms (median/p95), "
                      f"decode {r['dec_med']:.1f} ms", flush=True)
        finally:
            screen.close()
    return rows


async def agent_bench(seconds: float, participants: int = 4) -> dict[str, Any]:
    """The real agent with ``participants`` aiortc senders shown: RSS, CPU, frame age."""
    from support.agent import STREAMING_MEDIA, AgentProcess, write_config
    from support.devserver import run_devserver
    from support.glimpse_client import create_room, register
    from support.rtcpeer import BrowserPeer
    from support.screenshot import code_in, grab

    from glimpse_edge.display.layout import fit
    from glimpse_edge.rtc.aio import open_aio_loop

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, xvfb(W, H) as display:
        async with run_devserver() as server, open_aio_loop(), \
                trio.open_nursery() as nursery:
            tokens = []
            for i in range(participants):
                tokens.append((await register(server.api_url, f"p{i}", "bench-password"))[1])
            _d, device_token = await register(server.api_url, "device", "bench-password")
            room_id = await create_room(server.api_url, tokens[0], "Bench")
            agent = AgentProcess(
                write_config(Path(tmp), ws_url=server.ws_url, room_id=room_id,
                             token=device_token, log_level="info",
                             extra=STREAMING_MEDIA + '\n[display]\nenabled = true\n'
                                                     'driver = "x11"\n'),
                env={"DISPLAY": display, "WAYLAND_DISPLAY": ""})
            await agent.start(nursery)
            await agent.wait_for("display.opened", timeout=20)
            await agent.wait_for("room.joined", timeout=20)
            await trio.sleep(2)
            proc = psutil.Process(agent.pid)
            out["rss0"] = proc.memory_info().rss
            peers = [BrowserPeer(f"p{i}", send_video=(640, 360)) for i in range(participants)]
            async with trio.open_nursery() as inner:
                done = trio.Event()

                async def join(peer: BrowserPeer, token: str, ready: trio.Event) -> None:
                    async with peer.joined(server.ws_url, token, room_id, leave=True):
                        ready.set()
                        await done.wait()

                for peer, token in zip(peers, tokens, strict=True):
                    ready = trio.Event()
                    inner.start_soon(join, peer, token, ready)
                    await ready.wait()
                    await agent.wait_for("display.decoder.opened", track=f"{peer.name}#1",
                                         timeout=30)
                await trio.sleep(3)
                cpu0, t0 = agent.cpu_seconds(), time.monotonic()
                rect = fit(640, 360, grid(participants, W, H).tiles[0])
                ages: list[float] = []
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    t_ms = time.time() * 1000
                    rgb = await trio.to_thread.run_sync(grab, display)
                    code = code_in(rgb, rect, (640, 360))
                    if code is not None:
                        ages.append(t_ms - code.wall_ms)
                    await trio.sleep(0.1)
                out["cpu"] = (agent.cpu_seconds() - cpu0) / (time.monotonic() - t0)
                out["rss"] = proc.memory_info().rss
                out["ages"] = ages
                t = time.perf_counter()
                for _ in range(5):
                    await trio.to_thread.run_sync(grab, display)
                out["grab_ms"] = (time.perf_counter() - t) / 5 * 1000
                done.set()
            await agent.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured per case")
    parser.add_argument("--no-agent", action="store_true", help="skip (b), the real agent")
    args = parser.parse_args()
    print(f"(a) decode + render, {SHOWN} participants shown on {W}x{H}, H.264, "
          f"{args.seconds:g} s per case", flush=True)
    rows = component_bench(args.seconds)
    print()
    print("| sender | rate | kbit/s | CPU per shown participant (decode + render) "
          "| of which decode | arrival -> on screen median / p95 | decode median |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['cap']} | {r['kbps']} | {r['cpu_pct']:.1f} % of a core | "
              f"{r['dec_pct']:.1f} % | "
              f"{r['lat_med']:.1f} / {r['lat_p95']:.1f} ms | {r['dec_med']:.1f} ms |")
    if args.no_agent:
        return
    print(f"\n(b) the agent, 4 aiortc participants (640x360 VP8) shown, "
          f"{args.seconds:g} s", flush=True)
    b = trio.run(agent_bench, args.seconds)
    ages = b["ages"]
    print("| agent RSS idle | RSS with 4 shown | agent CPU (incl. its own encode) "
          "| frame age on screen median / p95 (n) | screenshot itself |")
    print("|---|---|---|---|---|")
    print(f"| {b['rss0'] / 2**20:.0f} MiB | {b['rss'] / 2**20:.0f} MiB | "
          f"{b['cpu'] * 100:.0f} % of a core | "
          f"{statistics.median(ages) if ages else float('nan'):.0f} / {p(ages, 0.95):.0f} ms "
          f"({len(ages)}) | {b['grab_ms']:.0f} ms |")


if __name__ == "__main__":
    main()
