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

Needs root, ``ip netns``, nftables and (for e) coturn. Traffic stays inside
namespaces this script creates (10.77.N.0/24) and the root namespace's veth
to them; everything is removed at the end.

    sudo .venv/bin/python scripts/bench_faults.py              # all, once
    sudo .venv/bin/python scripts/bench_faults.py -s a --runs 5 --dead-after 3
    sudo .venv/bin/python scripts/bench_faults.py -s b,r     # the agent's tiers vs Chromium

For b, "detect" is the cap's start -> the peer moved to a lower tier, and
"recover" the cap lifted -> the peer decodes the top tier's size again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
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
    random_loss,
    relay,
    signaling_outage,
)
from support.netns import unavailable_reason  # noqa: E402


def peers_config(args: argparse.Namespace) -> str:
    """A [peers] table for the timing options given (none: the shipped defaults)."""
    lines = [f"{key} = {value}" for key, value in (
        ("dead_after", args.dead_after), ("connect_timeout", args.connect_timeout),
        ("offer_wait", args.offer_wait), ("restart_max", args.restart_max)) if value is not None]
    return "\n[peers]\n" + "\n".join(lines) + "\n" if lines else ""


async def run_one(letter: str, args: argparse.Namespace, directory: Path) -> Outcome:
    if letter == "r":
        return await reference(args, directory)
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


def summary(outcomes: list[Outcome]) -> str:
    """Median and worst of detect/recover/freeze per scenario, when there are several runs."""
    out = []
    for name in dict.fromkeys(o.scenario for o in outcomes):
        runs = [o for o in outcomes if o.scenario == name]
        if len(runs) < 2:
            continue
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
    print()
    print(table(outcomes))
    if text := summary(outcomes):
        print()
        print(text)
    if args.json:
        await trio.Path(args.json).write_text(json.dumps([o.__dict__ for o in outcomes],
                                                         indent=1))
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("-s", "--scenarios", default="a,b,c,d,e",
                   help="comma-separated letters: a, b, c, d, e, r (see above)")
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
    p.add_argument("--json", help="also write every outcome to this file")
    p.add_argument("--keep", help="keep the agent's, peers' and coturn's logs in this directory")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(trio.run(main, parse_args()))
