"""The agent's video leaves paced (rtc/pacer.py), seen from a real aiortc receiver.

Without a pacer aiortc sends a frame's packets back to back: on loopback they
arrive within a fraction of a millisecond. Paced, they arrive one packet's
time at 2.5 x the rate apart, and each carries the abs-send-time of the
moment it really left (a receiver's delay-based estimate reads it).
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import trio
from support.agent import FAST_PEERS, AgentProcess, write_config
from support.devserver import DevServer
from support.glimpse_client import create_room, register
from support.rtcpeer import BrowserPeer, RtpArrival

from glimpse_edge.rtc.pacer import PACING_FACTOR

MAX_BITRATE = 1_000_000
MEDIA = f"""
[video]
source = "testpattern"
width = 640
height = 360
framerate = 30
codec = "h264"
max_bitrate = {MAX_BITRATE}
pattern_noise = 12

[audio]
source = "tone"

{FAST_PEERS}"""
ABS_SEND_TIME_UNIT = 1 / (1 << 18)  # seconds


def frames_of(packets: list[RtpArrival]) -> list[list[RtpArrival]]:
    """The packets grouped by frame (RTP timestamp), in arrival order."""
    return [list(group) for _ts, group in itertools.groupby(packets, key=lambda p: p.timestamp)]


async def test_a_frames_packets_leave_paced_and_stamped_when_they_left(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    _alice_id, alice_token = await register(devserver.api_url, "alice", "alice-password")
    device_id, device_token = await register(devserver.api_url, "device", "device-password")
    room_id = await create_room(devserver.api_url, alice_token, "Room")
    alice = BrowserPeer("alice", record_rtp=True)
    async with alice.joined(devserver.ws_url, alice_token, room_id):
        agent = AgentProcess(write_config(tmp_path, ws_url=devserver.ws_url, room_id=room_id,
                                          token=device_token, log_level="info", extra=MEDIA))
        await agent.start(nursery)
        got = await alice.wait_frames(device_id, video=30, audio=20)
        mark = len(got.rtp)
        await alice.wait_frames(device_id, video=got.video_frames + 90, timeout=30)
    packets = got.rtp[mark:]
    frames = [f for f in frames_of(packets) if len(f) >= 3]
    assert len(frames) >= 20, (
        f"expected >= 20 frames of 3+ packets (grain makes them big); saw "
        f"{len(frames)} of {len(frames_of(packets))} frames")
    # within a frame, packets are spaced by the pacer: a 1200-byte packet at
    # 2.5 x the top rate takes ~3.8 ms; back to back on loopback it is ~0.05 ms
    spacing = [b.at - a.at for f in frames for a, b in itertools.pairwise(f)]
    sizes = [p.size for f in frames for p in f[1:]]
    paced = statistics.median(sizes) * 8 / (PACING_FACTOR * MAX_BITRATE)
    assert statistics.median(spacing) >= paced / 2, (
        f"expected a frame's packets about {paced * 1000:.1f} ms apart; median "
        f"{statistics.median(spacing) * 1000:.2f} ms")
    # each packet carries the time it left: arrival minus abs-send-time (the
    # transit, on loopback) is the same for a frame's first packet, which went
    # at once, and for the ones after it, which waited in the pacer. aiortc
    # stamps a packet before handing it over: without the rewrite the later
    # ones would show their wait on top of the transit
    lateness = []
    for f in frames:
        if any(p.abs_send_time is None for p in f):
            raise AssertionError(f"a video packet without abs-send-time: {f}")
        transit = [(p.at - (p.abs_send_time or 0) * ABS_SEND_TIME_UNIT) % 64 for p in f]
        lateness += [t - transit[0] for t in transit[1:]]
    assert abs(statistics.median(lateness)) < paced / 3, (
        f"expected abs-send-time to be the time of departure; a frame's later packets "
        f"arrive {statistics.median(lateness) * 1000:.2f} ms later than stamped, "
        f"relative to its first (median over {len(lateness)} packets)")
    print(f"paced spacing median {statistics.median(spacing) * 1000:.2f} ms "
          f"(expected ~{paced * 1000:.2f}); stamp lateness median "
          f"{statistics.median(lateness) * 1000:.3f} ms")
