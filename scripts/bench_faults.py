#!/usr/bin/env python3
"""Fault benchmark: the agent and two receiving peers in network namespaces, one fault each.

Per scenario it prints how long the agent took to notice, how long media took
to come back, what the affected peer decoded (frames, longest freeze) and
its received bitrate before, during and after the fault. The numbers come
from the receiving peers (burned-in frame codes, transport bytes), the same
measurements tests/faults asserts on (tests/support/faultlab.py).

Scenarios (the letters of issue 5):
  a  one peer's link cut for --cut seconds, then restored
  c  --loss % random loss on one peer's link (nftables numgen) for --loss-seconds
  d  the signaling server killed for --outage seconds
  e  relay-only through coturn

Needs root, ``ip netns``, nftables and (for e) coturn. Traffic stays inside
namespaces this script creates (10.77.N.0/24) and the root namespace's veth
to them; everything is removed at the end.

    sudo .venv/bin/python scripts/bench_faults.py              # all, once
    sudo .venv/bin/python scripts/bench_faults.py -s a --runs 5 --dead-after 3
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
    scenario: Callable[[Lab], Awaitable[Outcome]]
    options: dict[str, Any] = {"peers_config": peers_config(args)}
    if letter == "a":
        def scenario(lab: Lab) -> Awaitable[Outcome]:
            return link_cut(lab, "p1", "p2", seconds=args.cut)
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
    p.add_argument("-s", "--scenarios", default="a,c,d,e", help="comma-separated letters")
    p.add_argument("--runs", type=int, default=1, help="repetitions of each scenario")
    p.add_argument("--cut", type=float, default=5.0, help="(a) link cut, seconds")
    p.add_argument("--loss", type=int, default=10, help="(c) loss, percent")
    p.add_argument("--loss-seconds", type=float, default=12.0, help="(c) duration")
    p.add_argument("--outage", type=float, default=10.0, help="(d) server down, seconds")
    p.add_argument("--dead-after", type=float, help="peers.dead_after (default: shipped)")
    p.add_argument("--connect-timeout", type=float, help="peers.connect_timeout")
    p.add_argument("--offer-wait", type=float, help="peers.offer_wait")
    p.add_argument("--restart-max", type=float, help="peers.restart_max")
    p.add_argument("--json", help="also write every outcome to this file")
    p.add_argument("--keep", help="keep the agent's, peers' and coturn's logs in this directory")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(trio.run(main, parse_args()))
