#!/usr/bin/env python3
"""Fault benchmark: the agent and two receiving peers in network namespaces, one fault each.

Per scenario it prints how long the agent took to notice, how long media took
to come back, what the affected peer decoded (frames, longest freeze) and
its received bitrate before, during and after the fault. The numbers come
from the receiving peers (burned-in frame codes, transport bytes), the same
measurements tests/system/faults asserts on (tests/support/faultlab.py).

Scenarios (the letters of issue 5):
  a  one peer's link cut for --cut seconds, then restored
  b  one peer's downlink capped (tc tbf) to --cap-kbit for --capped seconds, then
     lifted; the test pattern with grain, so the top tier needs its whole rate
  c  --loss % random loss on one peer's link (nftables numgen) for --loss-seconds
  d  the signaling server killed for --outage seconds
  e  relay-only through coturn
  r  reference for b: a Chromium-to-Chromium call (no agent), c2's downlink
     capped the same way (--cap-kbit, --capped), then lifted

The device's own uplink (issue 15): the agent at 1280x720 with its default
quality tiers and a grainy pattern, its namespace's egress capped (tc tbf,
burst 16 kB, latency 150 ms: a weak Wi-Fi uplink) for --uplink-seconds while
every viewer watches, then lifted:
  f   --uplink-kbit with --viewers viewers
  g1  --g1 KBIT:VIEWERS (600:2);  g2  --g2 KBIT:VIEWERS (2000:5)
  h   as f, and one viewer also behind its own --downlink-kbit downlink cap
  rf  reference for f: one Chromium sending its fake camera to --viewers
      Chromium viewers (the dev server's viewer page, a mesh) through the
      same uplink cap on the sender's namespace
  rh  reference for h: rf, its last viewer behind its own --downlink-kbit too
  fc  f with Chromium viewers instead of aiortc peers (the viewer page), to
      tell what the agent sends apart from how aiortc's receivers cope
Their table, per scenario: the lowest decoded fps over the viewers and the
longest freeze over the settled part of the cap (its last --uplink-seconds
minus --settle seconds), the longest freeze over the whole cap, the lowest
audio frames/s (settled), the tier changes (agent) or resolution changes
(Chromium's senders), the swing of the lowest tier's rate (agent) or of each
connection's targetBitrate (Chromium, the worst), (max - min) / median while
settled, and the recovery: the cap lifted -> every viewer decodes the top size
again. The per-viewer table adds "hole s": the longest time, over the cap, an
aiortc viewer's jitter buffer held a gap (a missing packet, later ones waiting
behind it): a loss not repaired, as opposed to a slow link.

Needs root, ``ip netns``, nftables and (for e) coturn. Traffic stays inside
namespaces this script creates (10.77.N.0/24) and the root namespace's veth
to them; everything is removed at the end.

    sudo .venv/bin/python scripts/bench_faults.py              # all, once
    sudo .venv/bin/python scripts/bench_faults.py -s a --runs 5 --dead-after 3
    sudo .venv/bin/python scripts/bench_faults.py -s b,r     # the agent's tiers vs Chromium
    sudo .venv/bin/python scripts/bench_faults.py -s f,g1,g2,h,rf --runs 3   # issue 15

For b, "detect" is the cap's start -> the peer moved to a lower tier, and
"recover" the cap lifted -> the peer decodes the top tier's size again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test harness: tests/support

from support.faultlab import (  # noqa: E402
    Lab,
    Outcome,
    bandwidth_cap,
    fault_lab,
    link_cut,
    media_section,
    random_loss,
    relay,
    signaling_outage,
    uplink_and_downlink_cap,
    uplink_cap,
)
from support.netns import unavailable_reason  # noqa: E402


def peers_config(args: argparse.Namespace) -> str:
    """A [peers] table for the timing options given (none: the shipped defaults)."""
    lines = [f"{key} = {value}" for key, value in (
        ("dead_after", args.dead_after), ("connect_timeout", args.connect_timeout),
        ("offer_wait", args.offer_wait), ("restart_max", args.restart_max)) if value is not None]
    return "\n[peers]\n" + "\n".join(lines) + "\n" if lines else ""


def _figures(text: str) -> tuple[int, int]:
    """"KBIT:VIEWERS" -> (kbit, viewers)."""
    kbit, _, viewers = text.partition(":")
    return int(kbit), int(viewers)


async def run_one(letter: str, args: argparse.Namespace, directory: Path) -> Outcome:
    if letter == "r":
        return await reference(args, directory)
    if letter in ("rf", "rh"):
        return await mesh_reference(args, directory, slow=letter == "rh")
    if letter == "fc":
        return await agent_chromium(args, directory)
    if letter in ("f", "g1", "g2", "h"):
        return await uplink(letter, args, directory)
    scenario: Callable[[Lab], Awaitable[Outcome]]
    options: dict[str, Any] = {"peers_config": peers_config(args)}
    if letter == "a":
        def scenario(lab: Lab) -> Awaitable[Outcome]:
            return link_cut(lab, "p1", "p2", seconds=args.cut)
    elif letter == "b":
        options["noise"] = 4

        def scenario(lab: Lab) -> Awaitable[Outcome]:
            return bandwidth_cap(lab, "p2", "p1", kbit=args.cap_kbit, seconds=args.capped)
    elif letter == "c":
        def scenario(lab: Lab) -> Awaitable[Outcome]:
            return random_loss(lab, "p2", "p1", percent=args.loss, seconds=args.loss_seconds)
    elif letter == "d":
        options["peer_args"] = {"p2": ["--reconnect-delay", "8"]}

        def scenario(lab: Lab) -> Awaitable[Outcome]:
            return signaling_outage(lab, seconds=args.outage)
    elif letter == "e":
        options.update(peers=("p1",), relay_only=True)
        scenario = relay
    else:
        raise SystemExit(f"unknown scenario {letter!r}")
    async with fault_lab(directory, **options) as lab:
        return await scenario(lab)


# -- f, g, h: the device's own uplink capped (issue 15) ----------------------------


async def uplink(letter: str, args: argparse.Namespace, directory: Path) -> Outcome:
    kbit, viewers = {"f": (args.uplink_kbit, args.viewers), "h": (args.uplink_kbit, args.viewers),
                     "g1": _figures(args.g1), "g2": _figures(args.g2)}[letter]
    peers = tuple(f"p{i + 1}" for i in range(viewers))
    async with fault_lab(directory, peers=peers, media=media_section(), observe=True,
                         peers_config=peers_config(args)) as lab:
        if letter == "h":
            out = await uplink_and_downlink_cap(
                lab, slow=peers[-1], kbit=kbit, downlink_kbit=args.downlink_kbit,
                seconds=args.uplink_seconds, settle_s=args.settle)
        else:
            out = await uplink_cap(lab, kbit=kbit, seconds=args.uplink_seconds,
                                   settle_s=args.settle)
    out.scenario = f"{letter}: {out.scenario}"
    return out


def browser_outcome(name: str, r: dict[str, Any], **extra: Any) -> Outcome:
    """The per-viewer numbers of Chromium pages (chromiumcall) as an :class:`Outcome`."""
    viewers: dict[str, dict[str, Any]] = r["viewers"]
    recoveries = [v["recover_s"] for v in viewers.values()]

    def worst(key: str, pick: Callable[[list[float]], float]) -> float | None:
        got = [float(v[key]) for v in viewers.values() if v[key] is not None]
        return pick(got) if got else None

    return Outcome(
        name, recover_s=None if None in recoveries else max(recoveries),
        longest_freeze_s=worst("freeze_cap_s", max) or 0.0,
        extra={"cap_kbit": r["cap_kbit"], "fps_min": worst("fps", min),
               "freeze_settled_s": worst("freeze_settled_s", max),
               "freeze_cap_s": worst("freeze_cap_s", max),
               "audio_fps_min": worst("audio_fps", min), "keyframes": None,
               "keyframe_requests": None, "top": r["top"], "warmup_s": r["warmup_s"],
               "link": r.get("link"), "viewers": viewers, **extra})


async def mesh_reference(args: argparse.Namespace, directory: Path,
                         slow: bool = False) -> Outcome:
    """rf (rh, ``slow``: its last viewer behind its own downlink cap too): the
    Chromium mesh under the same uplink cap, as an :class:`Outcome`."""
    from support.chromiumcall import chromium_mesh_uplink_reference

    r = await chromium_mesh_uplink_reference(
        directory, cap_kbit=args.uplink_kbit, seconds=args.uplink_seconds,
        settle_s=args.settle, viewers=args.viewers,
        downlink_kbit=args.downlink_kbit if slow else None)
    sender: dict[str, dict[str, Any]] = r["sender"]
    swings = [c["swing"] for c in sender.values() if c["swing"] is not None]
    down = f" + v{args.viewers} down {args.downlink_kbit}" if slow else ""
    return browser_outcome(
        f"{'rh' if slow else 'rf'}: chromium mesh, uplink {r['cap_kbit']} kbit/s{down}, "
        f"{len(r['viewers'])} viewers, {args.uplink_seconds:g} s",
        r, tier_changes=sum(c["size_changes"] for c in sender.values()),
        rate_swing=max(swings) if swings else None, chromium=r["chromium"], sender=sender)


async def agent_chromium(args: argparse.Namespace, directory: Path) -> Outcome:
    """fc: the agent, as in f, watched by Chromium viewers, as an :class:`Outcome`."""
    from support.chromiumcall import agent_chromium_uplink
    from support.faultlab import media_section

    r = await agent_chromium_uplink(
        directory, media_section(), cap_kbit=args.uplink_kbit, seconds=args.uplink_seconds,
        settle_s=args.settle, viewers=args.viewers)
    return browser_outcome(
        f"fc: agent to chromium, uplink {r['cap_kbit']} kbit/s, {len(r['viewers'])} viewers, "
        f"{args.uplink_seconds:g} s", r, tier_changes=None, rate_swing=None)


# -- r: the Chromium-to-Chromium reference (tests/support/chromiumcall.py) ---------


async def reference(args: argparse.Namespace, directory: Path) -> Outcome:
    """Run the reference call, print its table, and return it as an :class:`Outcome`."""
    from support.chromiumcall import chromium_tbf_reference

    r = await chromium_tbf_reference(directory, cap_kbit=args.cap_kbit,
                                     before_s=args.ref_before, capped_s=args.capped,
                                     after_s=args.ref_after)
    print(reference_table(r), flush=True)
    phases = r["phases"]
    return Outcome(
        f"r: chromium, {r['cap_kbit']} kbit/s cap {args.capped:g} s",
        recover_s=r["recover_s"], longest_freeze_s=phases["during"]["longest_freeze_s"],
        frames=int((phases["during"]["frames"] or 0) + (phases["after"]["frames"] or 0)),
        other_freeze_s=phases["after"]["longest_freeze_s"],
        bitrate_before=_bps(phases["before"]["rx_kbps"]),
        bitrate_during=_bps(phases["during"]["rx_kbps"]),
        bitrate_after=_bps(phases["after"]["rx_kbps"]),
        extra={k: r[k] for k in ("settle_s", "target_settle_s", "stays_below_s", "resize_s",
                                 "recover_s", "recover_size_s", "warmup_s")})


def _bps(kbps: float | None) -> float | None:
    return None if kbps is None else kbps * 1000


def reference_table(r: dict[str, Any]) -> str:
    """Per phase: what c2 received, what c1 sent and aimed at, sizes, rates, freezes."""
    head = ["phase", "rx kbit/s", "tx kbit/s", "target", "target min", "rx fps", "fps min",
            "rx size", "min h", "longest freeze s", "freezes", "limited by"]
    rows = []
    for name, p in r["phases"].items():
        limited = ",".join(f"{k}:{v}" for k, v in p["quality_limitation"].items())
        rows.append([name, fmt(p["rx_kbps"], 1, 0), fmt(p["tx_kbps"], 1, 0),
                     fmt(p["target_kbps"], 1, 0), fmt(p["target_min_kbps"], 1, 0),
                     fmt(p["rx_fps"], 1, 1), fmt(p["tx_fps_min"], 1, 0), p["rx_size"] or "-",
                     str(p["tx_min_height"] or "-"), fmt(p["longest_freeze_s"]),
                     f"{p['freezes'] or 0:g} ({fmt(p['freeze_total_s'])} s)", limited or "-"])
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i in (0, 11) else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in [head, *rows]]
    cam = r["camera"]
    source = cam.get("source") or {}
    return "\n".join([
        f"Chromium reference ({r['chromium']}), {r['codec']} ({r['encoder']}); fake camera "
        f"{source.get('w')}x{source.get('h')} @ {source.get('fps')} fps "
        f"(requested {cam['requested']}); warm-up {r['warmup_s']} s",
        lines[0], "-" * len(lines[0]), *lines[1:],
        f"cap {r['cap_kbit']} kbit/s on c2's downlink: c1's video rate below it after "
        f"{fmt(r['settle_s'])} s, targetBitrate after {fmt(r['target_settle_s'])} s, "
        f"stays below from {fmt(r['stays_below_s'])} s; resolution dropped after "
        f"{fmt(r['resize_s'])} s",
        f"cap lifted: c2 back to >= 80 % of the pre-cap bitrate after {fmt(r['recover_s'])} s, "
        f"to the pre-cap size after {fmt(r['recover_size_s'])} s",
        "(rx/tx/target: medians over each phase's second half; fps min and min h: the "
        "sender's, whole phase; rates are video payload, the cap counts every IP byte)",
    ])


def fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def table(outcomes: list[Outcome]) -> str:
    head = ["scenario", "detect s", "recover s", "frames", "freeze s", "other freeze s",
            "kbit/s before", "during", "after"]
    rows = [[o.scenario, fmt(o.detect_s), fmt(o.recover_s), str(o.frames),
             fmt(o.longest_freeze_s), fmt(o.other_freeze_s),
             fmt(o.bitrate_before, 1000, 0), fmt(o.bitrate_during, 1000, 0),
             fmt(o.bitrate_after, 1000, 0)] for o in outcomes]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [head, *rows]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


# The uplink table (f, g, h, rf): heading, extra key (None: recover_s), digits,
# and which end is the worse one.
UPLINK_COLUMNS: list[tuple[str, str | None, int, Callable[[list[float]], float]]] = [
    ("fps min", "fps_min", 1, min), ("freeze s", "freeze_settled_s", 2, max),
    ("freeze cap s", "freeze_cap_s", 2, max), ("audio fps", "audio_fps_min", 1, min),
    ("tier changes", "tier_changes", 0, max), ("rate swing", "rate_swing", 2, max),
    ("recover s", None, 1, max), ("key frames", "keyframes", 0, max),
    ("PLIs", "keyframe_requests", 0, max),
]


def _uplink_value(o: Outcome, key: str | None) -> float | None:
    value = o.recover_s if key is None else o.extra.get(key)
    return None if value is None else float(value)


def _aligned(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [head, *rows]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def uplink_table(outcomes: list[Outcome]) -> str:
    """One row per run: the worst viewer's figures (see the module's docstring)."""
    head = ["scenario", *(c[0] for c in UPLINK_COLUMNS)]
    rows = [[o.scenario, *(fmt(_uplink_value(o, key), 1, digits)
                           for _h, key, digits, _w in UPLINK_COLUMNS)] for o in outcomes]
    return _aligned(head, rows)


def viewers_table(outcomes: list[Outcome]) -> str:
    """One row per viewer and run: what each one got during the cap."""
    head = ["scenario / viewer", "fps", "freeze s", "freeze cap s", "hole s", "audio fps", "kbit/s",
            "top share", "size", "at lift", "recover s"]
    rows = []
    for o in outcomes:
        for name, v in o.extra["viewers"].items():
            down = v.get("downlink_kbit")
            rows.append([f"{o.scenario.split(':')[0]} {name}" + (f" (down {down})" if down else ""),
                         fmt(v["fps"], 1, 1), fmt(v["freeze_settled_s"]),
                         fmt(v["freeze_cap_s"]), fmt(v.get("hole_cap_s")),
                         fmt(v["audio_fps"], 1, 1),
                         fmt(v["kbps"], 1, 0), fmt(v["top_share"]), str(v["size"]),
                         str(v["size_at_lift"]), fmt(v["recover_s"], 1, 1)])
    return _aligned(head, rows)


def repeated(outcomes: list[Outcome]) -> Iterator[tuple[str, list[Outcome]]]:
    """(scenario, its runs) for each scenario run more than once, in order."""
    for name in dict.fromkeys(o.scenario for o in outcomes):
        runs = [o for o in outcomes if o.scenario == name]
        if len(runs) >= 2:
            yield name, runs


def uplink_summary(outcomes: list[Outcome]) -> str:
    """Per scenario with several runs: the median and the worst of each column."""
    out = []
    for name, runs in repeated(outcomes):
        parts = []
        for heading, key, digits, worse in UPLINK_COLUMNS:
            values = [_uplink_value(o, key) for o in runs]
            got = [v for v in values if v is not None]
            missing = len(values) - len(got)
            if got:
                parts.append(f"{heading} median {statistics.median(got):.{digits}f}, worst "
                             f"{worse(got):.{digits}f}"
                             + (f" ({missing} none)" if missing else ""))
        out.append(f"{name} ({len(runs)} runs): " + "; ".join(parts))
    return "\n".join(out)


def summary(outcomes: list[Outcome]) -> str:
    """Median and worst of detect/recover/freeze per scenario, when there are several runs."""
    out = []
    for name, runs in repeated(outcomes):
        parts = []
        for label, values in (("detect", [o.detect_s for o in runs]),
                              ("recover", [o.recover_s for o in runs]),
                              ("freeze", [o.longest_freeze_s for o in runs])):
            got = [v for v in values if v is not None]
            if got:
                parts.append(f"{label} median {statistics.median(got):.2f} s, "
                             f"worst {max(got):.2f} s")
        out.append(f"{name} ({len(runs)} runs): " + "; ".join(parts))
    return "\n".join(out)


async def main(args: argparse.Namespace) -> int:
    reason = unavailable_reason()
    if reason is not None:
        print(f"bench_faults: cannot run: {reason}", file=sys.stderr)
        return 2
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as scratch:
        tmp = args.keep or scratch
        for letter in args.scenarios.split(","):
            for run in range(args.runs):
                directory = Path(tmp) / f"{letter}{run}"
                directory.mkdir(parents=True)
                outcome = await run_one(letter.strip(), args, directory)
                outcomes.append(outcome)
                print(f"{outcome.scenario} run {run + 1}: {json.dumps(outcome.extra)}",
                      flush=True)
    uplinks = [o for o in outcomes if "viewers" in o.extra]
    others = [o for o in outcomes if "viewers" not in o.extra]
    if others:
        print()
        print(table(others))
        if text := summary(others):
            print()
            print(text)
    if uplinks:
        print()
        print(uplink_table(uplinks))
        print()
        print(viewers_table(uplinks))
        if text := uplink_summary(uplinks):
            print()
            print(text)
    if args.json:
        await trio.Path(args.json).write_text(json.dumps([o.__dict__ for o in outcomes],
                                                         indent=1))
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("-s", "--scenarios", default="a,b,c,d,e",
                   help="comma-separated letters: a, b, c, d, e, r, f, g1, g2, h, rf, fc "
                        "(see above)")
    p.add_argument("--runs", type=int, default=1, help="repetitions of each scenario")
    p.add_argument("--cut", type=float, default=5.0, help="(a) link cut, seconds")
    p.add_argument("--cap-kbit", type=int, default=500, help="(b, r) the cap, kbit/s")
    p.add_argument("--capped", type=float, default=20.0, help="(b, r) capped, seconds")
    p.add_argument("--loss", type=int, default=10, help="(c) loss, percent")
    p.add_argument("--loss-seconds", type=float, default=12.0, help="(c) duration")
    p.add_argument("--outage", type=float, default=10.0, help="(d) server down, seconds")
    p.add_argument("--dead-after", type=float, help="peers.dead_after (default: shipped)")
    p.add_argument("--connect-timeout", type=float, help="peers.connect_timeout")
    p.add_argument("--offer-wait", type=float, help="peers.offer_wait")
    p.add_argument("--restart-max", type=float, help="peers.restart_max")
    p.add_argument("--ref-before", type=float, default=10.0, help="(r) uncapped, seconds")
    p.add_argument("--ref-after", type=float, default=20.0, help="(r) after the cap, seconds")
    p.add_argument("--uplink-kbit", type=int, default=1000,
                   help="(f, h, rf) the agent's (the sender's) uplink cap, kbit/s")
    p.add_argument("--viewers", type=int, default=3, help="(f, h, rf) viewers")
    p.add_argument("--g1", default="600:2", help="(g1) KBIT:VIEWERS")
    p.add_argument("--g2", default="2000:5", help="(g2) KBIT:VIEWERS")
    p.add_argument("--uplink-seconds", type=float, default=40.0,
                   help="(f, g, h, rf) capped, seconds")
    p.add_argument("--settle", type=float, default=15.0,
                   help="(f, g, h, rf) seconds into the cap before 'settled' starts")
    p.add_argument("--downlink-kbit", type=int, default=300,
                   help="(h, rh) the last viewer's own downlink cap, kbit/s")
    p.add_argument("--json", help="also write every outcome to this file")
    p.add_argument("--keep", help="keep the agent's, peers' and coturn's logs in this directory")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(trio.run(main, parse_args()))
