"""A Chromium-to-Chromium call under a bandwidth cap: the reference for our controller.

:func:`chromium_tbf_reference` puts two headless Chromiums in two network
namespaces of a :class:`~support.netns.FaultNet` ("c1" and "c2"), has c1
send Chromium's fake camera to c2 through a room of the dev server (a
process in the root namespace, as in :mod:`support.faultlab`), and caps what
c2 receives (``tc tbf``, :meth:`FaultNet.cap`) for a while. It returns what
Chromium's own congestion controller made of that, per phase (before /
during / after the cap), measured from both ends' ``getStats()``.

How Chromium gets into a namespace: Playwright launches a small shell script
that execs ``ip netns exec <ns> /usr/bin/chromium "$@"``. Playwright talks to
the browser over inherited pipes (``--remote-debugging-pipe``), which the
exec chain keeps, so no debugging port has to cross the namespace boundary.

How the statistics are read: the viewer page keeps its RTCPeerConnections
to itself. Before the page joins, :data:`_INSTRUMENT` replaces
``window.RTCPeerConnection`` with a subclass that records every instance
(the page looks the constructor up when it builds a connection) and starts
a 100 ms poll of the receiving side's ``framesDecoded``, so freezes are
measured to ~0.1 s rather than to the sampling interval. The page is then
joined through its own login form. Times are wall-clock seconds
(``performance.timeOrigin + performance.now()`` in the page, ``time.time()``
here: one machine, one clock).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import trio

from .browser import CHROMIUM, CHROMIUM_ARGS, ViewerPage, open_browser, viewer_url
from .devserver import DevServerProcess, devserver_process
from .glimpse_client import create_room, register
from .netns import FaultNet, fault_net

SENDER, RECEIVER = "c1", "c2"
PASSWORD = "reference-password"
SAMPLE_INTERVAL = 0.5
JOIN_TIMEOUT = 20.0
MEDIA_TIMEOUT = 40.0
RATE_WINDOW = 0.9  # seconds: a bitrate sample spans at least this much

# Evaluated in each page before it joins; idempotent.
_INSTRUMENT = """(() => {
  if (window.__ge) return true;
  const Original = window.RTCPeerConnection;
  const pcs = [];
  const frames = [];  // [wall ms, framesDecoded] whenever framesDecoded changed
  const now = () => performance.timeOrigin + performance.now();
  window.RTCPeerConnection = class extends Original {
    constructor(...args) { super(...args); pcs.push(this); }
  };
  const live = () => pcs.filter((pc) => pc.signalingState !== "closed").pop() || null;
  let last = -1, busy = false;
  setInterval(async () => {
    const pc = live();
    if (!pc || busy) return;
    busy = true;
    try {
      const report = await pc.getStats();
      let decoded = null;
      report.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "video")
          decoded = Math.max(decoded || 0, s.framesDecoded || 0);
      });
      if (decoded !== null && decoded !== last) { frames.push([now(), decoded]); last = decoded; }
    } catch (e) { /* the connection went away: the next one is polled */ } finally { busy = false; }
  }, 100);
  window.__ge = { pcs, frames, live, now };
  return true;
})()"""

# One sample of the live connection's statistics (plain data).
_SAMPLE = """(async () => {
  const ge = window.__ge;
  const pc = ge.live();
  const out = { t: ge.now() / 1000, frames: ge.frames.splice(0),
    state: pc ? pc.connectionState : "none" };
  if (!pc) return out;
  const report = await pc.getStats();
  const codec = (s) => {
    const c = s && s.codecId && report.get(s.codecId);
    return c ? c.mimeType : null;
  };
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      out.rx = { bytes: s.bytesReceived || 0, frames: s.framesDecoded || 0,
        w: s.frameWidth || 0, h: s.frameHeight || 0, fps: s.framesPerSecond ?? null,
        freezes: s.freezeCount ?? null, freezeS: s.totalFreezesDuration ?? null,
        lost: s.packetsLost || 0, nacks: s.nackCount || 0, plis: s.pliCount || 0,
        codec: codec(s) };
    } else if (s.type === "inbound-rtp" && s.kind === "audio") {
      out.arx = { bytes: s.bytesReceived || 0 };
    } else if (s.type === "outbound-rtp" && s.kind === "video") {
      out.tx = { bytes: s.bytesSent || 0, rtxBytes: s.retransmittedBytesSent || 0,
        target: s.targetBitrate ?? null, w: s.frameWidth || 0, h: s.frameHeight || 0,
        fps: s.framesPerSecond ?? null, frames: s.framesEncoded || 0,
        qlr: s.qualityLimitationReason ?? null,
        qld: s.qualityLimitationDurations ?? null, codec: codec(s),
        encoder: s.encoderImplementation ?? null };
    } else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
      out.pair = { avail: s.availableOutgoingBitrate ?? null,
        rtt: s.currentRoundTripTime ?? null };
    } else if (s.type === "media-source" && s.kind === "video") {
      out.src = { w: s.width || 0, h: s.height || 0, fps: s.framesPerSecond ?? null };
    }
  });
  return out;
})()"""


@dataclass
class CallLab:
    """The running call: the net, the server, and one page per Chromium."""

    net: FaultNet
    server: DevServerProcess
    sender: ViewerPage
    receiver: ViewerPage
    user_agent: str


def _wrapper(directory: Path, net: FaultNet, host: str) -> str:
    """A script that runs Chromium inside ``host``'s namespace (what Playwright launches)."""
    path = directory / f"chromium-{host}.sh"
    prefix = " ".join(net.exec_prefix(host))
    path.write_text(f'#!/bin/sh\nexec {prefix} {CHROMIUM} "$@"\n')
    path.chmod(0o755)
    return str(path)


async def _join(page: ViewerPage, user: str, room_id: str, send: bool) -> None:
    """Instrument the (idle) page, then join through its form."""
    await page.evaluate(_INSTRUMENT)
    form = json.dumps({"user": user, "password": PASSWORD, "room": room_id, "send": send})
    await page.evaluate(
        f"(() => {{ const f = {form};"
        " document.getElementById('user').value = f.user;"
        " document.getElementById('password').value = f.password;"
        " document.getElementById('room').value = f.room;"
        " document.getElementById('send').checked = f.send;"
        " document.getElementById('login').requestSubmit(); return true; })()")
    await page.wait_for("s => s.status === 'joined'", JOIN_TIMEOUT, what=f"{user} to join")


@asynccontextmanager
async def chromium_call(directory: Path, fake_fps: int = 30) -> AsyncIterator[CallLab]:
    """Two Chromiums in two namespaces, c1 sending its fake camera to c2; all removed after."""
    await trio.Path(directory).mkdir(parents=True, exist_ok=True)
    args = [a for a in CHROMIUM_ARGS if a != "--use-fake-device-for-media-stream"]
    args.append(f"--use-fake-device-for-media-stream=fps={fake_fps}")
    async with fault_net([SENDER, RECEIVER]) as net, \
            devserver_process(directory / "glimpse.db", host=net.root_address) as server:
        api = server.api_url
        _owner, owner_token = await register(api, "owner", PASSWORD)
        for user in (SENDER, RECEIVER):
            await register(api, user, PASSWORD)
        room_id = await create_room(api, owner_token, "Chromium reference")
        # getUserMedia needs a secure context; http://10.77.N.254 is not one
        args.append(f"--unsafely-treat-insecure-origin-as-secure={api}")
        async with open_browser(executable=_wrapper(directory, net, SENDER), args=args) as b1, \
                open_browser(executable=_wrapper(directory, net, RECEIVER), args=args) as b2:
            url = viewer_url(server.server)
            receiver = await b2.open_viewer(url, RECEIVER)
            sender = await b1.open_viewer(url, SENDER)
            # the receiver is in the room first; it calls the sender when it joins
            await _join(receiver, RECEIVER, room_id, send=False)
            await _join(sender, SENDER, room_id, send=True)
            await receiver.wait_for(
                "s => Object.values(s.peers).some(p => p.video.framesDecoded > 30)",
                MEDIA_TIMEOUT, what="c2 to decode c1's camera")
            agent = await sender.evaluate("navigator.userAgent")
            yield CallLab(net, server, sender, receiver, str(agent))


# -- measuring -------------------------------------------------------------------


async def _sample(lab: CallLab, until: float, log: dict[str, list[dict[str, Any]]]) -> None:
    """Sample both ends every :data:`SAMPLE_INTERVAL` until wall time ``until``."""
    while time.time() < until:
        tick = trio.current_time()
        async with trio.open_nursery() as nursery:
            for name, page in ((SENDER, lab.sender), (RECEIVER, lab.receiver)):
                async def one(name: str = name, page: ViewerPage = page) -> None:
                    log[name].append(await page.evaluate(_SAMPLE, timeout=5))
                nursery.start_soon(one)
        await trio.sleep_until(tick + SAMPLE_INTERVAL)


def _rates(samples: list[dict[str, Any]], side: str,
           key: str = "bytes") -> list[tuple[float, float]]:
    """(time, bit/s) of ``side``'s ``key`` counter over windows of >= RATE_WINDOW."""
    points = [(s["t"], s[side][key]) for s in samples if side in s]
    out = []
    j = 0
    for i, (t, value) in enumerate(points):
        while j + 1 < i and t - points[j + 1][0] >= RATE_WINDOW:
            j += 1
        t0, v0 = points[j]
        if t - t0 >= RATE_WINDOW and value >= v0:
            out.append((t, (value - v0) * 8 / (t - t0)))
    return out


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _in(series: list[tuple[float, Any]], a: float, b: float) -> list[Any]:
    return [v for t, v in series if a <= t < b and v is not None]


def _field(samples: list[dict[str, Any]], side: str, key: str) -> list[tuple[float, Any]]:
    return [(s["t"], s[side].get(key)) for s in samples if side in s]


def _longest_gap(frames: list[tuple[float, int]], a: float, b: float) -> float:
    """The longest time in [a, b) without a new decoded frame (100 ms resolution)."""
    times = [a, *(t for t, _n in frames if a <= t < b), b]
    return max((y - x for x, y in pairwise(times)), default=b - a)


def _size(samples: list[dict[str, Any]], side: str, a: float, b: float) -> str | None:
    sizes = [f"{s[side]['w']}x{s[side]['h']}" for s in samples
             if side in s and a <= s["t"] < b and s[side]["w"]]
    return statistics.mode(sizes) if sizes else None


def _stays_below(series: list[tuple[float, float]], a: float, b: float,
                 limit: float) -> float | None:
    """Seconds from ``a`` until ``series`` is <= ``limit`` for the rest of [a, b)."""
    inside = [(t, v) for t, v in series if a <= t < b]
    if not inside or inside[-1][1] > limit:
        return None
    above = [t for t, v in inside if v > limit]
    if not above:
        return inside[0][0] - a
    after = [t for t, _v in inside if t > above[-1]]
    return after[0] - a if after else None


def _first_below(series: list[tuple[float, Any]], a: float, b: float,
                 limit: float) -> float | None:
    return next((t - a for t, v in series if a <= t < b and v is not None and v <= limit), None)


def _first_at_least(series: list[tuple[float, float]], a: float, b: float,
                    limit: float) -> float | None:
    return next((t - a for t, v in series if a <= t < b and v >= limit), None)


def _phase(rx: list[dict[str, Any]], tx: list[dict[str, Any]],
           frames: list[tuple[float, int]], a: float, b: float) -> dict[str, Any]:
    """Numbers for one phase [a, b); levels are medians over its second half."""
    mid = a + (b - a) / 2
    rx_rate, tx_rate = _rates(rx, "rx"), _rates(tx, "tx")
    target = _field(tx, "tx", "target")

    def counter(key: str) -> float | None:
        got = [v for _t, v in _field(rx, "rx", key) if v is not None]
        inside = [v for t, v in _field(rx, "rx", key) if a <= t < b and v is not None]
        before = [v for t, v in _field(rx, "rx", key) if t < a and v is not None]
        if not got or not inside:
            return None
        return float(inside[-1] - (before[-1] if before else inside[0]))

    def kbit(series: list[tuple[float, float]]) -> float | None:
        m = _median(_in(series, mid, b))
        return None if m is None else m / 1000

    heights = [s["rx"]["h"] for s in rx if "rx" in s and a <= s["t"] < b and s["rx"]["h"]]
    tx_heights = [s["tx"]["h"] for s in tx if "tx" in s and a <= s["t"] < b and s["tx"]["h"]]
    reasons: dict[str, int] = {}
    for v in _in(_field(tx, "tx", "qlr"), a, b):
        reasons[v] = reasons.get(v, 0) + 1
    return {
        "rx_kbps": kbit(rx_rate), "tx_kbps": kbit(tx_rate), "target_kbps": kbit(target),
        "rx_fps": _median(_in(_field(rx, "rx", "fps"), mid, b)),
        "tx_fps": _median(_in(_field(tx, "tx", "fps"), mid, b)),
        "rx_size": _size(rx, "rx", mid, b), "tx_size": _size(tx, "tx", mid, b),
        "rx_min_height": min(heights, default=None), "tx_min_height": min(tx_heights, default=None),
        "rx_fps_min": min(_in(_field(rx, "rx", "fps"), a, b), default=None),
        "tx_fps_min": min(_in(_field(tx, "tx", "fps"), a, b), default=None),
        "target_min_kbps": None if not (ts := _in(target, a, b)) else min(ts) / 1000,
        "frames": counter("frames"), "longest_freeze_s": round(_longest_gap(frames, a, b), 2),
        "freezes": counter("freezes"), "freeze_total_s": counter("freezeS"),
        "lost": counter("lost"), "quality_limitation": reasons,
        "rtt_ms": _median([v * 1000 for v in _in(
            [(s["t"], s["pair"]["rtt"]) for s in tx if s.get("pair")], mid, b)]),
    }


async def chromium_tbf_reference(
    directory: Path, cap_kbit: int = 500, before_s: float = 10, capped_s: float = 20,
    after_s: float = 20, warmup_s: float = 10, warmup_max_s: float = 40, fake_fps: int = 30,
) -> dict[str, Any]:
    """The tbf scenario for a Chromium-to-Chromium call (issue 5's reference).

    After ``warmup_s`` of media, ``before_s`` uncapped, ``capped_s`` with
    c2's downlink capped to ``cap_kbit``, ``after_s`` uncapped again.
    (Chromium starts a call at a low resolution and climbs: the warm-up lasts
    until c1 encodes its camera's full size, ``warmup_max_s`` at most.)
    Returns per phase (``phases``: before / during / after; levels are
    medians over the phase's second half) the received (``rx_kbps``) and
    sent (``tx_kbps``, video payload) bitrates, the sender's
    ``targetBitrate``, frame rates and sizes (and their minimum), the longest
    freeze and Chromium's own freeze counters. Times from the cap:
    ``settle_s`` (the first 1 s window in which c1's video rate is at or
    below the cap), ``target_settle_s`` (the same for targetBitrate),
    ``stays_below_s`` (the rate stays below the cap for the rest of the
    phase; None when it climbs above again), ``resize_s`` (c1 encodes below
    its pre-cap height). Times from lifting the cap: ``recover_s`` (c2
    receives >= 80 % of the pre-cap bitrate), ``recover_size_s`` (c2
    decodes the pre-cap size again). ``camera``: what the fake device
    delivered. All samples go to ``directory/samples.json``.
    """
    log: dict[str, list[dict[str, Any]]] = {SENDER: [], RECEIVER: []}
    async with chromium_call(directory, fake_fps) as lab:
        camera = (await lab.sender.state())["local"]
        t_media = time.time()
        await _sample(lab, t_media + warmup_s, log)
        with trio.move_on_after(warmup_max_s - warmup_s):
            while not _full_size(log[SENDER]):
                await _sample(lab, time.time() + SAMPLE_INTERVAL, log)
        t0 = time.time()
        await _sample(lab, t0 + before_s, log)
        t_cap = time.time()
        await lab.net.cap(RECEIVER, cap_kbit)
        try:
            await _sample(lab, t_cap + capped_s, log)
        finally:
            with trio.CancelScope(shield=True):
                await lab.net.uncap(RECEIVER)
        t_uncap = time.time()
        await _sample(lab, t_uncap + after_s, log)
        t_end = time.time()
    await trio.Path(directory / "samples.json").write_text(json.dumps(
        {"marks": {"start": t0, "cap": t_cap, "uncap": t_uncap, "end": t_end}, **log}))

    rx, tx = log[RECEIVER], log[SENDER]
    frames = [(t / 1000, n) for s in rx for t, n in s["frames"]]
    phases = {name: _phase(rx, tx, frames, a, b) for name, a, b in (
        ("before", t0, t_cap), ("during", t_cap, t_uncap), ("after", t_uncap, t_end))}
    base = phases["before"]["rx_kbps"]
    limit = cap_kbit * 1000
    full_height = max((s["tx"]["h"] for s in tx if "tx" in s and t0 <= s["t"] < t_cap),
                      default=0)
    rx_rate = _rates(rx, "rx")
    src = next((s["src"] for s in tx if s.get("src")), None)
    tx_first: dict[str, Any] = next((s["tx"] for s in tx if s.get("tx")), {})
    return {
        "cap_kbit": cap_kbit, "chromium": lab.user_agent,
        "camera": {"requested": "1280x720", "track": (camera or {}).get("video"),
                   "source": src, "fake_fps_flag": fake_fps},
        "codec": tx_first.get("codec"), "encoder": tx_first.get("encoder"),
        "warmup_s": round(t0 - t_media, 1), "phases": phases,
        "settle_s": _first_below(_rates(tx, "tx"), t_cap, t_uncap, limit),
        "target_settle_s": _first_below(_field(tx, "tx", "target"), t_cap, t_uncap, limit),
        "stays_below_s": _stays_below(_rates(tx, "tx"), t_cap, t_uncap, limit),
        "resize_s": next((s["t"] - t_cap for s in tx if "tx" in s and t_cap <= s["t"] < t_uncap
                          and 0 < s["tx"]["h"] < full_height), None),
        "recover_s": None if base is None else _first_at_least(
            rx_rate, t_uncap, t_end, 0.8 * base * 1000),
        "recover_size_s": _first_size(rx, t_uncap, t_end, phases["before"]["rx_size"]),
    }


def _full_size(tx: list[dict[str, Any]]) -> bool:
    """Whether the sender's last sample encodes the camera's full frame size."""
    last = tx[-1] if tx else {}
    src, out = last.get("src"), last.get("tx")
    return bool(src and out and out["h"] >= src["h"] and out["w"] >= src["w"])


def _first_size(samples: list[dict[str, Any]], a: float, b: float,
                size: str | None) -> float | None:
    """Seconds from ``a`` until the receiver decodes ``size`` frames again."""
    return next((s["t"] - a for s in samples if "rx" in s and a <= s["t"] < b
                 and f"{s['rx']['w']}x{s['rx']['h']}" == size), None)
