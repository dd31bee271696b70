"""A Chromium-to-Chromium call under a bandwidth cap: the reference for our controller.

:func:`chromium_tbf_reference` puts two headless Chromiums in two network
namespaces of a :class:`~support.netns.FaultNet` ("c1" and "c2"), has c1
send Chromium's fake camera to c2 through a room of the dev server (a
process in the root namespace, as in :mod:`support.faultlab`), and caps what
c2 receives (``tc tbf``, :meth:`FaultNet.cap`) for a while. It returns what
Chromium's own congestion controller made of that, per phase (before /
during / after the cap), measured from both ends' ``getStats()``.

:func:`chromium_mesh_uplink_reference` is issue 15's reference: one Chromium
("c0") sends its fake camera to several Chromium viewers ("v1".."vN"), each in
its own namespace, through the same viewer page (a mesh: c0 holds one
connection per viewer), and c0's own egress is capped
(:meth:`FaultNet.cap_uplink`), as the agent's is in faultlab's scenario (f).

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
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import trio

from .browser import CHROMIUM, CHROMIUM_ARGS, ViewerPage, open_browser, viewer_url
from .devserver import DevServerProcess, devserver_process
from .faultlab import link_numbers
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


async def _join(page: ViewerPage, user: str, room_id: str, send: bool,
                instrument: str = _INSTRUMENT) -> None:
    """Instrument the (idle) page, then join through its form."""
    await page.evaluate(instrument)
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


# -- the mesh under an uplink cap (issue 15's reference) ---------------------------

MESH_SENDER = "c0"

# Evaluated in each page of the mesh before it joins; idempotent. A viewer of a
# mesh holds a connection to every participant (the other viewers send nothing),
# so every connection is polled: a frame is stamped whenever any connection's
# framesDecoded grew.
_MESH_INSTRUMENT = """(() => {
  if (window.__gm) return true;
  const Original = window.RTCPeerConnection;
  const pcs = [];
  const frames = [];  // wall ms of each poll in which some connection decoded a frame
  const last = new Map();
  const now = () => performance.timeOrigin + performance.now();
  window.RTCPeerConnection = class extends Original {
    constructor(...args) { super(...args); pcs.push(this); }
  };
  const live = () => pcs.filter((pc) => pc.signalingState !== "closed");
  let busy = false;
  setInterval(async () => {
    if (busy) return;
    busy = true;
    try {
      let grew = false;
      for (const pc of live()) {
        const report = await pc.getStats();
        report.forEach((s) => {
          if (s.type === "inbound-rtp" && s.kind === "video") {
            const n = s.framesDecoded || 0;
            if (n > (last.get(pc) || 0)) grew = true;
            last.set(pc, n);
          }
        });
      }
      if (grew) frames.push(now());
    } catch (e) { /* a connection went away: the next poll sees the rest */ }
    finally { busy = false; }
  }, 100);
  window.__gm = { pcs, frames, live, now };
  return true;
})()"""

# One sample of every live connection: the inbound video with the most decoded
# frames (a viewer's connection to the sender), audio packets received, and
# each connection's outbound video (the sender's encoders, one per viewer).
_MESH_SAMPLE = """(async () => {
  const gm = window.__gm;
  const out = { t: gm.now() / 1000, frames: gm.frames.splice(0), tx: [], audio: 0 };
  let i = 0;
  for (const pc of gm.live()) {
    const report = await pc.getStats();
    const id = gm.pcs.indexOf(pc);
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        const rx = { frames: s.framesDecoded || 0, w: s.frameWidth || 0,
          h: s.frameHeight || 0, fps: s.framesPerSecond ?? null, bytes: s.bytesReceived || 0,
          freezes: s.freezeCount ?? null, pc: id };
        if (!out.rx || rx.frames > out.rx.frames) out.rx = rx;
      } else if (s.type === "inbound-rtp" && s.kind === "audio") {
        out.audio += s.packetsReceived || 0;
      } else if (s.type === "outbound-rtp" && s.kind === "video") {
        out.tx.push({ pc: id, target: s.targetBitrate ?? null, w: s.frameWidth || 0,
          h: s.frameHeight || 0, bytes: s.bytesSent || 0, fps: s.framesPerSecond ?? null,
          qlr: s.qualityLimitationReason ?? null });
      }
    });
    i += 1;
  }
  out.connections = i;
  return out;
})()"""


async def _sample_pages(pages: dict[str, ViewerPage], until: float,
                        log: dict[str, list[dict[str, Any]]],
                        done: Any = None) -> None:
    """Sample every page every :data:`SAMPLE_INTERVAL` until wall time ``until``
    (or until ``done()`` is true)."""
    while time.time() < until and not (done is not None and done()):
        tick = trio.current_time()
        async with trio.open_nursery() as nursery:
            for name, page in pages.items():
                async def one(name: str = name, page: ViewerPage = page) -> None:
                    try:
                        log[name].append(await page.evaluate(_MESH_SAMPLE, timeout=5))
                    except Exception as exc:  # a stalled page: a gap in its samples
                        log[name].append({"t": time.time(), "frames": [],
                                          "error": str(exc)[:200]})
                nursery.start_soon(one)
        await trio.sleep_until(tick + SAMPLE_INTERVAL)


def _size_of(sample: dict[str, Any]) -> str | None:
    rx = sample.get("rx")
    return f"{rx['w']}x{rx['h']}" if rx and rx["w"] else None


def _back_to(samples: list[dict[str, Any]], t_free: float, size: str | None,
             stay: int = 4) -> float | None:
    """Seconds from ``t_free`` until the viewer decodes ``size`` for good (``stay`` samples)."""
    after = [s for s in samples if s["t"] >= t_free and "rx" in s]
    if size is None or len(after) < stay or any(_size_of(s) != size for s in after[-stay:]):
        return None
    i = len(after) - 1
    while i > 0 and _size_of(after[i - 1]) == size:
        i -= 1
    return float(after[i]["t"]) - t_free


def _counter_rate(samples: list[dict[str, Any]], a: float, b: float,
                  value: Any) -> float | None:
    """Increase per second of a counter (``value(sample)``) over [a, b], restarts skipped."""
    inside = [(s["t"], v) for s in samples if a <= s["t"] <= b and (v := value(s)) is not None]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    grown = sum(max(0, v2 - v1) for (_t1, v1), (_t2, v2) in pairwise(inside))
    return float(grown / (inside[-1][0] - inside[0][0]))


def _mesh_viewer(samples: list[dict[str, Any]], top: str | None, marks: dict[str, float],
                 ) -> dict[str, Any]:
    t_cap, t_settle, t_free = marks["cap"], marks["settle"], marks["free"]
    frames = [(t / 1000, 0) for s in samples for t in s.get("frames", [])]
    fps = _counter_rate(samples, t_settle, t_free,
                        lambda s: s["rx"]["frames"] if "rx" in s else None)
    audio = _counter_rate(samples, t_settle, t_free, lambda s: s.get("audio"))
    audio_cap = _counter_rate(samples, t_cap, t_free, lambda s: s.get("audio"))
    kbps = _counter_rate(samples, t_settle, t_free,
                         lambda s: s["rx"]["bytes"] if "rx" in s else None)
    sizes = [_size_of(s) for s in samples if t_settle <= s["t"] < t_free and _size_of(s)]
    recover = _back_to(samples, t_free, top)
    return {
        "fps": None if fps is None else round(fps, 1),
        "freeze_settled_s": round(_longest_gap(frames, t_settle, t_free), 2),
        "freeze_cap_s": round(_longest_gap(frames, t_cap, t_free), 2),
        "audio_fps": None if audio is None else round(audio, 1),
        "audio_fps_cap": None if audio_cap is None else round(audio_cap, 1),
        "kbps": None if kbps is None else round(kbps * 8 / 1000),
        "top_share": round(sum(1 for s in sizes if s == top) / len(sizes), 2) if sizes else None,
        "size": statistics.mode(sizes) if sizes else None,
        "size_at_lift": next((_size_of(s) for s in reversed(samples)
                              if s["t"] < t_free and _size_of(s)), None),
        "recover_s": None if recover is None else round(recover, 2),
    }


def _sender_numbers(tx: list[dict[str, Any]], marks: dict[str, float]) -> dict[str, Any]:
    """Per sending connection: its size changes during the cap and its targetBitrate
    over the settled part (min / median / max, swing = (max - min) / median)."""
    t_cap, t_settle, t_free = marks["cap"], marks["settle"], marks["free"]
    per: dict[str, dict[str, Any]] = {}
    for s in tx:
        for o in s.get("tx", []):
            entry = per.setdefault(str(o["pc"]), {"heights": [], "targets": []})
            if t_cap <= s["t"] < t_free and o["h"]:
                entry["heights"].append(o["h"])
            if t_settle <= s["t"] < t_free and o["target"] is not None:
                entry["targets"].append(float(o["target"]))
    out: dict[str, Any] = {}
    for pc, entry in per.items():
        heights, targets = entry["heights"], entry["targets"]
        if not heights and not targets:
            continue
        med = statistics.median(targets) if targets else None
        out[pc] = {"size_changes": sum(1 for a, b in pairwise(heights) if a != b),
                   "target_min": min(targets, default=None), "target_median": med,
                   "target_max": max(targets, default=None),
                   "swing": round((max(targets) - min(targets)) / med, 3) if med else None}
    return out


async def chromium_mesh_uplink_reference(
    directory: Path, cap_kbit: int = 1000, seconds: float = 40.0, settle_s: float = 15.0,
    viewers: int = 3, before_s: float = 5.0, warmup_s: float = 10.0,
    warmup_max_s: float = 40.0, climb_timeout: float = 60.0, fake_fps: int = 30,
    burst_bytes: int = 16_000, latency_ms: int = 150, downlink_kbit: int | None = None,
) -> dict[str, Any]:
    """One Chromium sending its fake camera to ``viewers`` Chromiums through one capped
    uplink (issue 15's reference for scenarios f/g; with ``downlink_kbit``, the
    last viewer also behind its own downlink cap for the same time: scenario h's).

    Each Chromium runs in its own namespace of a :class:`FaultNet` and joins
    the dev server's viewer page (the mesh: the sender holds one connection,
    one encoder and one congestion controller per viewer). After a warm-up
    (until every viewer decodes the camera's full size, ``warmup_max_s`` at
    most) and ``before_s``, the sender's egress is capped
    (:meth:`FaultNet.cap_uplink`) for ``seconds``, then lifted. Per viewer,
    with the agent's windows (settled = the cap's last ``seconds -
    settle_s``): decoded fps, longest freeze (100 ms resolution), audio
    packets/s (Opus: 50), received kbit/s, the share of the pre-cap size,
    and the recovery (the cap lifted -> decoding the pre-cap size for good;
    None: not within ``climb_timeout``). Per sending connection: size
    changes during the cap and its targetBitrate's spread while settled.
    Samples go to ``directory/mesh-samples.json``.
    """
    await trio.Path(directory).mkdir(parents=True, exist_ok=True)
    args = [a for a in CHROMIUM_ARGS if a != "--use-fake-device-for-media-stream"]
    args.append(f"--use-fake-device-for-media-stream=fps={fake_fps}")
    names = [f"v{i + 1}" for i in range(viewers)]
    log: dict[str, list[dict[str, Any]]] = {n: [] for n in [MESH_SENDER, *names]}
    marks: dict[str, float] = {}
    async with fault_net([MESH_SENDER, *names]) as net, \
            devserver_process(directory / "glimpse.db", host=net.root_address) as server, \
            AsyncExitStack() as stack:
        api = server.api_url
        _owner, owner_token = await register(api, "owner", PASSWORD)
        for user in (MESH_SENDER, *names):
            await register(api, user, PASSWORD)
        room_id = await create_room(api, owner_token, "Chromium mesh reference")
        args.append(f"--unsafely-treat-insecure-origin-as-secure={api}")
        url = viewer_url(server.server)
        pages: dict[str, ViewerPage] = {}
        agent = ""
        for name in [*names, MESH_SENDER]:  # the viewers first: each calls the sender
            browser = await stack.enter_async_context(
                open_browser(executable=_wrapper(directory, net, name), args=args))
            pages[name] = await browser.open_viewer(url, name)
        for name in [*names, MESH_SENDER]:
            await _join(pages[name], name, room_id, send=name == MESH_SENDER,
                        instrument=_MESH_INSTRUMENT)
        for name in names:
            await pages[name].wait_for(
                "s => Object.values(s.peers).some(p => p.video.framesDecoded > 30)",
                MEDIA_TIMEOUT, what=f"{name} to decode {MESH_SENDER}'s camera")
        agent = str(await pages[MESH_SENDER].evaluate("navigator.userAgent"))
        t_media = time.time()
        await _sample_pages(pages, t_media + warmup_s, log)
        full = _sender_full_size(log[MESH_SENDER])
        with trio.move_on_after(warmup_max_s - warmup_s):
            while not all(_size_of(log[n][-1]) == full for n in names if log[n]):
                await _sample_pages(pages, time.time() + SAMPLE_INTERVAL, log)
                full = _sender_full_size(log[MESH_SENDER]) or full
        marks["start"] = time.time()
        await _sample_pages(pages, marks["start"] + before_s, log)
        tops = {n: _size_of(log[n][-1]) if log[n] else None for n in names}
        marks["cap"] = time.time()
        await net.cap_uplink(MESH_SENDER, cap_kbit, burst_bytes=burst_bytes,
                             latency_ms=latency_ms)
        slow = {names[-1]: downlink_kbit} if downlink_kbit is not None else {}
        try:
            for name, down in slow.items():
                await net.cap(name, down)
            link = await _sample_capped(net, MESH_SENDER, pages, log, marks, settle_s, seconds)
        finally:
            with trio.CancelScope(shield=True):
                await net.uncap_uplink(MESH_SENDER)
                for name in slow:
                    await net.uncap(name)
        marks["free"] = time.time()
        await _sample_pages(
            pages, marks["free"] + climb_timeout, log,
            done=lambda: all(_back_to(log[n], marks["free"], tops[n]) is not None
                             for n in names))
        await _sample_pages(pages, time.time() + 2, log)
        marks["end"] = time.time()
    await trio.Path(directory / "mesh-samples.json").write_text(
        json.dumps({"marks": marks, **log}))
    per_viewer = {n: {**_mesh_viewer(log[n], tops[n], marks), "downlink_kbit": slow.get(n)}
                  for n in names}
    sender = _sender_numbers(log[MESH_SENDER], marks)
    return {"cap_kbit": cap_kbit, "seconds": seconds, "settle_s": settle_s,
            "chromium": agent, "warmup_s": round(marks["start"] - t_media, 1),
            "top": tops, "viewers": per_viewer, "sender": sender, "link": link}


async def _sample_capped(net: FaultNet, host: str, pages: dict[str, Any],
                         log: dict[str, list[dict[str, Any]]], marks: dict[str, float],
                         settle_s: float, seconds: float) -> dict[str, float | None]:
    """Sample the pages through the cap; what the capped link carried while settled.

    The tbf's own counters (FaultNet.uplink_counters): the rate that really
    left and the share of packets it dropped, beside what the sender thinks
    it sends.
    """
    marks["settle"] = marks["cap"] + settle_s
    await _sample_pages(pages, marks["settle"], log)
    before, t0 = await net.uplink_counters(host), time.time()
    await _sample_pages(pages, marks["cap"] + seconds, log)
    return link_numbers(before, await net.uplink_counters(host), time.time() - t0)


def _sender_full_size(tx: list[dict[str, Any]]) -> str | None:
    """The largest frame size any of the sender's connections encoded so far."""
    sizes = [(o["w"], o["h"]) for s in tx for o in s.get("tx", []) if o["h"]]
    if not sizes:
        return None
    w, h = max(sizes, key=lambda wh: wh[0] * wh[1])
    return f"{w}x{h}"


async def agent_chromium_uplink(
    directory: Path, media: str, cap_kbit: int = 1000, seconds: float = 40.0,
    settle_s: float = 15.0, viewers: int = 3, before_s: float = 5.0,
    warmup_max_s: float = 40.0, climb_timeout: float = 60.0, burst_bytes: int = 16_000,
    latency_ms: int = 150,
) -> dict[str, Any]:
    """The agent sending to ``viewers`` Chromiums through its capped uplink (scenario f,
    with browsers watching instead of aiortc peers).

    The same namespaces, cap, windows and per-viewer numbers as
    :func:`chromium_mesh_uplink_reference`, with the agent (``media``: its
    [video]/[audio] sections) as the sender: it tells what the agent sends
    apart from how aiortc's own receivers cope with loss (their jitter
    buffer waits for a lost packet until 512 more have come; a browser's
    asks for a key frame).
    """
    from .agent import AgentProcess, write_config

    await trio.Path(directory).mkdir(parents=True, exist_ok=True)
    names = [f"v{i + 1}" for i in range(viewers)]
    log: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    marks: dict[str, float] = {}
    async with fault_net(["agent", *names]) as net, \
            devserver_process(directory / "glimpse.db", host=net.root_address) as server, \
            AsyncExitStack() as stack, trio.open_nursery() as nursery:
        api = server.api_url
        _owner, owner_token = await register(api, "owner", PASSWORD)
        for user in names:
            await register(api, user, PASSWORD)
        _device_id, device_token = await register(api, "device", "device-password")
        room_id = await create_room(api, owner_token, "Agent to Chromium")
        config = write_config(directory / "agent", ws_url=server.ws_url, room_id=room_id,
                              token=device_token, log_level="info", extra=media,
                              ice="[ice]\nservers = []\n")
        agent = AgentProcess(config, command_prefix=net.exec_prefix("agent"))
        await agent.start(nursery)
        try:
            await agent.wait_for("room.joined", timeout=30)
            args = [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={api}"]
            url = viewer_url(server.server)
            pages: dict[str, ViewerPage] = {}
            for name in names:
                browser = await stack.enter_async_context(
                    open_browser(executable=_wrapper(directory, net, name), args=args))
                pages[name] = await browser.open_viewer(url, name)
                await _join(pages[name], name, room_id, send=False, instrument=_MESH_INSTRUMENT)
            for name in names:
                await pages[name].wait_for(
                    "s => Object.values(s.peers).some(p => p.video.framesDecoded > 30)",
                    MEDIA_TIMEOUT, what=f"{name} to decode the agent's video")
            top = "x".join(str(v) for v in (1280, 720))
            t_media = time.time()
            with trio.move_on_after(warmup_max_s):
                while not all(log[n] and _size_of(log[n][-1]) == top for n in names):
                    await _sample_pages(pages, time.time() + SAMPLE_INTERVAL, log)
            marks["start"] = time.time()
            await _sample_pages(pages, marks["start"] + before_s, log)
            tops = {n: _size_of(log[n][-1]) if log[n] else None for n in names}
            marks["cap"] = time.time()
            await net.cap_uplink("agent", cap_kbit, burst_bytes=burst_bytes,
                                 latency_ms=latency_ms)
            try:
                link = await _sample_capped(net, "agent", pages, log, marks, settle_s, seconds)
            finally:
                with trio.CancelScope(shield=True):
                    await net.uncap_uplink("agent")
            marks["free"] = time.time()
            await _sample_pages(
                pages, marks["free"] + climb_timeout, log,
                done=lambda: all(_back_to(log[n], marks["free"], tops[n]) is not None
                                 for n in names))
            await _sample_pages(pages, time.time() + 2, log)
            marks["end"] = time.time()
        finally:
            with trio.CancelScope(shield=True):
                await agent.stop()
            nursery.cancel_scope.cancel()
    await trio.Path(directory / "agent-chromium-samples.json").write_text(
        json.dumps({"marks": marks, **log}))
    return {"cap_kbit": cap_kbit, "seconds": seconds, "settle_s": settle_s,
            "warmup_s": round(marks["start"] - t_media, 1), "top": tops, "link": link,
            "viewers": {n: _mesh_viewer(log[n], tops[n], marks) for n in names}}
