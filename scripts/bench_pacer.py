#!/usr/bin/env python3
"""What pacing costs per packet (rtc/pacer.py), on this machine.

    .venv/bin/python scripts/bench_pacer.py [--packets 20000]

CPU time per video packet (process time, so waiting is free):

- ``admit``: the bucket's bookkeeping alone (SSRC, sequence, rate);
- ``admit + abs-send-time``: plus the header rewrite a packet that waited gets;
- ``renumbered``: what every new packet of a connection with a repair ledger
  costs before that (rtc/restart.py): the frame's first packet checked for a
  restart, and, once a receiver was restarted, its number and the sender's
  history entry rewritten;
- streams: :meth:`Pacer.send` as aiortc's sender task runs it, under
  trio-asyncio, for a stream of frames in real time (30 fps, a key frame of
  eight frames' size every 2 s), against the same stream unpaced; each wait
  is an asyncio timer, the expensive part.

The agent's total, with real peers, is bench_media's shared N=8 row (run it
on the commits before and after pacing).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import trio
import trio_asyncio
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from glimpse_edge.rtc import compat
from glimpse_edge.rtc.pacer import (
    ABS_SEND_TIME_URI,
    Pacer,
    abs_send_time_now,
    set_abs_send_time,
)
from glimpse_edge.rtc.repair import RepairLedger

SSRC, ABS_ID = 0x1234, 2


def packets(n: int) -> list[bytes]:
    extensions = HeaderExtensionsMap()
    extensions.configure(type("P", (), {"headerExtensions": [
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=ABS_ID, uri=ABS_SEND_TIME_URI)]})())
    out = []
    for seq in range(n):
        p = RtpPacket(payload_type=96, sequence_number=seq % 65536, timestamp=seq // 5 * 3000,
                      ssrc=SSRC, payload=bytes(1150))
        p.extensions.abs_send_time = 1
        p.extensions.mid = "0"
        out.append(p.serialize(extensions))
    return out


def per_packet_us(fn: object, data: list[bytes]) -> float:
    t0 = time.process_time()
    for d in data:
        fn(d)  # type: ignore[operator]
    return (time.process_time() - t0) / len(data) * 1e6


def renumbered_us(data: list[bytes], restarted: bool) -> float:
    """:meth:`Pacer.renumbered` per packet, with a repair ledger and aiortc's history
    (its entries as aiortc's sender files them: one RtpPacket per number)."""
    compat.size_rtp_history()  # as the agent does at start-up
    pacer = Pacer(1_000_000_000, codec="h264")
    pacer.ssrcs.add(SSRC)
    pacer.repair = RepairLedger(compat.RTP_HISTORY)
    history = {seq % compat.RTP_HISTORY: RtpPacket(sequence_number=seq % 65536)
               for seq in range(max(0, len(data) - compat.RTP_HISTORY), len(data))}
    sender = type("Sender", (), {"_RTCRtpSender__rtp_history": history})()
    pacer.renumber = lambda original, sequence: compat.renumber_sent(sender, original, sequence)
    if restarted:
        pacer.shift.restart(0)
    return per_packet_us(pacer.renumbered, data)


async def stream_cost(seconds: float, rate_bps: int, paced: bool) -> tuple[float, int, int]:
    """``seconds`` of a ``rate_bps`` stream at 30 fps, a key frame (8 frames' worth)
    every 2 s, sent packet by packet as aiortc's sender task does; CPU per packet."""
    pacer = Pacer(rate_bps, abs_send_time_id=ABS_ID)
    pacer.ssrcs.add(SSRC)
    frame_bytes = rate_bps / 8 / 30
    packet = packets(1)[0]
    sent = 0

    async def sink(_data: bytes) -> None:
        nonlocal sent
        sent += 1

    async def run() -> None:
        seq = 0
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n in range(int(seconds * 30)):
            await asyncio.sleep(max(0.0, start + n / 30 - loop.time()))  # the next frame
            size = frame_bytes * (8 if n % 60 == 0 else 1)
            for _ in range(max(1, round(size / 1200))):
                data = packet[:2] + (seq % 65536).to_bytes(2, "big") + packet[4:]
                seq += 1
                if paced:
                    await pacer.send(data, sink)
                else:
                    await sink(data)

    t0 = time.process_time()
    async with trio_asyncio.open_loop():
        await trio_asyncio.aio_as_trio(run)()
    return (time.process_time() - t0) / max(sent, 1) * 1e6, sent, pacer.stats.delayed


async def main(n: int, seconds: float) -> None:
    data = packets(n)
    pacer = Pacer(1_000_000_000)
    pacer.ssrcs.add(SSRC)
    admit = per_packet_us(pacer.admit, data)
    stamp = per_packet_us(lambda d: set_abs_send_time(d, ABS_ID, abs_send_time_now()), data)
    print(f"pacer cost per video packet (Python {sys.version.split()[0]})")
    print(f"{'what':44} {'us/packet':>10} {'packets':>8} {'waited':>7}")
    print(f"{'admit':44} {admit:10.2f} {n:8d}")
    print(f"{'admit + abs-send-time rewrite':44} {admit + stamp:10.2f} {n:8d}")
    for restarted in (False, True):
        what = "renumbered, " + ("after a restart" if restarted else "no restart")
        print(f"{what:44} {renumbered_us(data, restarted):10.2f} {n:8d}")
    for rate in (150_000, 500_000, 1_500_000):
        unpaced, sent, _ = await stream_cost(seconds, rate, paced=False)
        paced, _, delayed = await stream_cost(seconds, rate, paced=True)
        what = f"{rate // 1000} kbit/s stream, 30 fps, IDR/2 s"
        print(f"{what + ': unpaced':44} {unpaced:10.2f} {sent:8d}")
        print(f"{what + ': paced':44} {paced:10.2f} {sent:8d} {delayed:7d}")
        print(f"{'  pacing, per packet':44} {paced - unpaced:10.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="of each stream")
    args = parser.parse_args()
    trio.run(main, args.packets, args.seconds)
