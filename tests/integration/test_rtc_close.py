"""Closing an aiortc connection at any moment of its connect leaves nothing running.

aiortc and aioice go on connecting after ``close()``: consent checks, RTP and
RTCP tasks started on a closed connection would run for the life of the
agent (rtc/aio.py). Real pairs of aiortc connections on loopback, each closed
at a random moment between the answer and a few ICE/DTLS round trips later.
The sender sends packets, as the agent's tracks do (aiortc only packetizes).
"""

from __future__ import annotations

import random

import trio
from support.rtcpair import h264_pair, key_frame
from trio_asyncio import aio_as_trio

from glimpse_edge.introspect import asyncio_task_count
from glimpse_edge.rtc.closing import REAP_AFTER, close_peer_connection

PAIRS = 40
# Closes fall between the answer and this many times the time a pair takes to
# connect here (measured first: a loaded machine connects more slowly).
CLOSE_SPAN = 1.5


async def test_connections_closed_while_connecting_leave_no_task_behind(
    nursery: trio.Nursery,
) -> None:
    rng = random.Random(7)
    data = key_frame()
    baseline = asyncio_task_count()
    started = trio.current_time()
    sender, receiver = await h264_pair(data)
    with trio.fail_after(10):
        while sender.connectionState != "connected":  # noqa: ASYNC110 - aiortc's state
            await trio.sleep(0.005)
    latest_close = CLOSE_SPAN * (trio.current_time() - started)
    for pc in (sender, receiver):
        await aio_as_trio(close_peer_connection)(pc)
    connected = 0
    for i in range(PAIRS):
        sender, receiver = await h264_pair(data)
        await trio.sleep(rng.random() * latest_close)  # a random moment of the connect
        connected += sender.connectionState == "connected"
        first, second = (sender, receiver) if i % 2 else (receiver, sender)
        with trio.fail_after(10):
            await aio_as_trio(close_peer_connection)(first)
            await aio_as_trio(close_peer_connection)(second)
    assert 0 < connected < PAIRS, f"closes should fall before and after connecting: {connected}"
    # once the last reap is through, only what ran before is left
    with trio.move_on_after(REAP_AFTER + 8):
        while asyncio_task_count() > baseline:  # noqa: ASYNC110 - no event for a task's end
            await trio.sleep(0.1)
    assert asyncio_task_count() == baseline, (
        f"{asyncio_task_count() - baseline} asyncio tasks left running by closed connections")
