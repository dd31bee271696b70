"""The device's own uplink as the bottleneck (issue 15): scenarios (f), (g) and (h).

The agent runs at 1280x720 with its default quality tiers and a grainy test
pattern; tc tbf on its namespace's egress (:meth:`FaultNet.cap_uplink`) is a
weak Wi-Fi uplink that every viewer's stream shares. The scenarios and their
measurements are in support/faultlab.py, shared with scripts/bench_faults.py.

These tests assert behaviour with bounds loose enough for a loaded 2-core
machine (video keeps coming, audio keeps coming, the picture comes back, one
slow viewer does not drag the others down). The issue's targets (>= 20 fps,
no freeze over 0.5 s, a flat rate, back within 15 s) are measured by the
benchmark's table, not asserted here. Each test prints its numbers.

What is asserted is what the agent does reliably today: audio keeps
arriving through the cap, no connection is torn down for a slow link, the
agent moves to a lower tier, the picture comes back at the top size after the
cap, and one slow viewer does not drag the others below it. The issue's
targets (frame rate, freezes, rate swing, recovery time) are the benchmark's
table; today they are not met, and each test prints where it stands (see the
issue 15 note in docs/decisions.md: aiortc's own receivers stall on a hole
older than the sender's history until 512 packets have passed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.faultlab import (
    TOP_HEIGHT,
    TOP_WIDTH,
    Outcome,
    fault_lab,
    media_section,
    uplink_and_downlink_cap,
    uplink_cap,
)

# The scenario's own bounds add up to more than the suite's 120 s: the lab's start
# (~15 s), every viewer at the top size (<= 30 s), the cap (40 s), the climb back
# (<= CLIMB_TIMEOUT) and the after window (<= 20 s). A test that overran the
# suite's limit was killed mid-run, which also broke the tests after it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TOP = f"{TOP_WIDTH}x{TOP_HEIGHT}"
# A viewer whose video stops for longer than this during the cap is frozen, not
# slowed: a stream that keeps decoding at any frame rate stays far below it.
FREEZE_BOUND = 5.0
# Opus sends 50 frames a second; a share of them is lost in the queue while the
# cap first bites (35-48 a second measured over the whole cap).
AUDIO_AT_LEAST = 25.0
# Seconds from lifting the cap until every viewer decodes the top size again,
# printed against the 15 (14-21 s measured).
RECOVER_TARGET = 15.0
# The scenario's own limit for the climb back: past it, the picture never came back.
CLIMB_TIMEOUT = 90.0


def show(out: Outcome) -> None:
    print(f"\n{out.scenario}: " + json.dumps(out.__dict__, default=str))


def _viewers(out: Outcome) -> dict[str, dict[str, Any]]:
    viewers: dict[str, dict[str, Any]] = out.extra["viewers"]
    return viewers


def assert_viewers_keep_watching(out: Outcome, names: list[str] | None = None) -> list[str]:
    """Audio kept arriving through the cap, and the picture came back after.

    Returns where the viewers stand against issue 15's targets (printed).
    """
    standing = []
    for name, v in _viewers(out).items():
        if names is not None and name not in names:
            continue
        assert v["audio_fps_cap"] >= AUDIO_AT_LEAST, (
            f"{name}: expected >= {AUDIO_AT_LEAST} audio frames/s during the cap, "
            f"saw {v['audio_fps_cap']}; {out}")
        assert v["recover_s"] is not None, (
            f"{name}: expected {TOP} again (all viewers at once) within {CLIMB_TIMEOUT} s of "
            f"the cap lifting; at the end it decoded {v['size_at_end']}; {out}")
        standing.append(f"{name}: {v['fps']} fps settled, longest gap {v['freeze_cap_s']} s "
                        f"in the cap, back at {TOP} after {v['recover_s']} s "
                        f"(targets: >= 20 fps, <= 0.5 s, <= {RECOVER_TARGET} s)")
    assert out.extra["restarts"] == 0, f"a slow uplink is not a dead path: {out}"
    return standing


def judge(out: Outcome, standing: list[str]) -> None:
    """Print where the viewers stand against issue 15's targets (the bench's table)."""
    print("\n".join(standing))


@pytest.mark.parametrize(("kbit", "viewers"), [(1000, 3)], ids=["f-1000kbit-3"])
async def test_uplink_cap_keeps_every_viewer_watching(tmp_path: Path, kbit: int,
                                                     viewers: int) -> None:
    """(f) the agent's uplink capped with every viewer watching; (g) is the same
    with other figures (scripts/bench_faults.py -s g1,g2)."""
    peers = tuple(f"p{i + 1}" for i in range(viewers))
    async with fault_lab(tmp_path, peers=peers, media=media_section(), observe=True) as lab:
        out = await uplink_cap(lab, kbit=kbit, seconds=40.0, settle_s=15.0,
                               climb_timeout=CLIMB_TIMEOUT)
    show(out)
    assert out.extra["top_before_cap"], f"expected every viewer on {TOP} before the cap: {out}"
    standing = assert_viewers_keep_watching(out)
    # the cap is far below the top tier's 2.5 Mbit/s times the viewers: the agent moved
    assert out.extra["tier_changes"] >= 1, f"expected a move to a lower tier: {out}"
    judge(out, standing)


async def test_one_slow_downlink_under_a_capped_uplink_stays_its_own(tmp_path: Path) -> None:
    """(h) the uplink capped while p3 is also behind its own 300 kbit/s downlink."""
    async with fault_lab(tmp_path, peers=("p1", "p2", "p3"), media=media_section(),
                         observe=True) as lab:
        out = await uplink_and_downlink_cap(lab, slow="p3", kbit=1000, downlink_kbit=300,
                                            seconds=40.0, settle_s=15.0,
                                            climb_timeout=CLIMB_TIMEOUT)
    show(out)
    viewers = _viewers(out)
    slow, others = viewers["p3"], {n: v for n, v in viewers.items() if n != "p3"}
    standing = assert_viewers_keep_watching(out, names=list(others))
    # the slow viewer still gets audio and the picture back once its cap is gone
    assert slow["audio_fps_cap"] >= AUDIO_AT_LEAST / 2, f"p3's audio stopped: {out}"
    assert slow["recover_s"] is not None, f"p3 never got the picture back: {out}"
    # p3 ends the cap on a lower tier than the top...
    assert slow["size_at_lift"] != TOP, f"expected p3 below {TOP} at the cap's end: {out}"

    def area(size: str | None) -> int:
        w, _, h = (size or "0x0").partition("x")
        return int(w) * int(h)

    # ...and nobody else is dragged below it: each other viewer's most frequent
    # size while settled, and its size when the cap lifted, are at least p3's.
    # (Shares of the top size are printed, not compared: with the uplink too
    # narrow for anyone's top tier they are all near 0 and differ by noise.)
    for name, v in others.items():
        for key in ("size", "size_at_lift"):
            assert area(v[key]) >= area(slow[key]), (
                f"{name}: expected a {key} at least p3's ({slow[key]}), saw {v[key]}; {out}")
    judge(out, standing)
