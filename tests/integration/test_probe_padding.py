"""A probe's padding (rtc/probe.py) follows the rate the uplink asks for now.

A real pair of aiortc connections on loopback, H.264 with RTX; the sender's
RTP goes through the agent's pacer (compat.pace_rtp), and :func:`pad` resends
its last packets on the RTX stream. A probe that follows another at once (a
pass, then a probe padded up to the jump) asks each peer for more padding
while the last probe's padding still runs: padded at the old rate, the new
probe could not pass, and a lifted cap was found 8 s later.
"""

from __future__ import annotations

import itertools

import trio
from support.rtcpair import h264_pair, key_frame
from trio_asyncio import aio_as_trio

from glimpse_edge.rtc import compat
from glimpse_edge.rtc.closing import close_peer_connection
from glimpse_edge.rtc.pacer import Pacer
from glimpse_edge.rtc.probe import pad

SLOW_BPS = 100_000
FAST_BPS = 4 * SLOW_BPS
STEP_BYTES = 20_000  # padded at each rate: 1.6 s at the slow one


async def test_padding_follows_the_rate_asked_for_at_each_packet(nursery: trio.Nursery) -> None:
    sender, receiver = await h264_pair(key_frame(), rtx=True)
    try:
        with trio.fail_after(10):
            while sender.connectionState != "connected":  # noqa: ASYNC110 - aiortc's state
                await trio.sleep(0.005)
        rtp = next(t.sender for t in sender.getTransceivers() if t.kind == "video")
        assert compat.sends_rtx(rtp), "expected RTX negotiated"
        pacer = Pacer(10_000_000, codec="h264")  # room for media and padding both
        compat.pace_rtp(rtp, pacer)
        with trio.fail_after(10):
            while pacer.newest(compat.sender_ssrc(rtp)) is None:  # noqa: ASYNC110
                await trio.sleep(0.005)

        marks: list[float] = []  # when each step's bytes were padded

        def rate() -> int | None:
            padded = pacer.stats.padding_bytes
            if padded >= 2 * STEP_BYTES:
                marks.append(trio.current_time())
                return None
            if padded >= STEP_BYTES and len(marks) == 1:
                marks.append(trio.current_time())
            return SLOW_BPS if padded < STEP_BYTES else FAST_BPS

        marks.append(trio.current_time())
        with trio.fail_after(20):
            await aio_as_trio(pad)(rtp, pacer, rate)
        slow, fast = (STEP_BYTES * 8 / (b - a) for a, b in itertools.pairwise(marks))
        assert fast > 2.5 * slow, (
            f"expected the padding to speed up with the rate asked for ({SLOW_BPS} then "
            f"{FAST_BPS} bit/s), saw {slow:.0f} then {fast:.0f} bit/s")
        assert slow < 1.5 * SLOW_BPS, f"expected ~{SLOW_BPS} bit/s at first, saw {slow:.0f}"
    finally:
        for pc in (sender, receiver):
            await aio_as_trio(close_peer_connection)(pc)

