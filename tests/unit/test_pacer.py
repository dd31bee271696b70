"""The pacer's bucket (rtc/pacer.py) on a clock the test moves, and the abs-send-time rewrite."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from glimpse_edge.rtc.pacer import (
    ABS_SEND_TIME_URI,
    BURST_S,
    MIN_RATE_BPS,
    PACING_FACTOR,
    RESEND_MIN_INTERVAL_S,
    RESEND_SHARE,
    RESEND_WINDOW_S,
    STEP_S,
    Pacer,
    abs_send_time_now,
    set_abs_send_time,
)
from glimpse_edge.rtc.repair import RepairLedger
from glimpse_edge.rtc.sdp import header_extension_id

VIDEO, AUDIO = 0x1111, 0x2222
ABS_ID = 2
EXTENSIONS = HeaderExtensionsMap()
EXTENSIONS.configure(type("Params", (), {"headerExtensions": [
    RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
    RTCRtpHeaderExtensionParameters(id=ABS_ID, uri=ABS_SEND_TIME_URI),
]})())


class StepClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rtp(ssrc: int, sequence: int, size: int = 1200, abs_send_time: int | None = 0x123456,
        mid: str | None = "0") -> bytes:
    packet = RtpPacket(payload_type=96, sequence_number=sequence, timestamp=9000, ssrc=ssrc,
                       payload=bytes(size - 12 - 12))
    packet.extensions.abs_send_time = abs_send_time
    packet.extensions.mid = mid
    return packet.serialize(EXTENSIONS)


def pacer(target_bps: int = 400_000) -> tuple[Pacer, StepClock]:
    clock = StepClock()
    p = Pacer(target_bps, abs_send_time_id=ABS_ID, clock=clock)
    p.ssrcs.add(VIDEO)
    return p, clock


def test_a_key_frame_leaves_at_the_pacing_rate_not_at_once() -> None:
    p, clock = pacer(400_000)
    assert p.rate_bps == PACING_FACTOR * 400_000
    frame = [rtp(VIDEO, n) for n in range(40)]  # a 48 kB key frame, handed over at once
    waits = [p.admit(packet) for packet in frame]
    per_packet = len(frame[0]) * 8 / p.rate_bps
    credit = int(BURST_S / per_packet) + 1
    assert waits[:credit] == [0.0] * credit, "the bucket's credit goes at once"
    # each later one a packet's time after the one before (less the credit)
    assert waits[-1] == pytest.approx(39 * per_packet - BURST_S)
    assert all(b - a == pytest.approx(per_packet)
               for a, b in itertools.pairwise(waits[credit + 1:]))
    assert p.stats.packets == 40 and p.stats.delayed >= 35
    assert p.queue_delay_s == pytest.approx(40 * per_packet - 2 * BURST_S)
    # once the link is free again, packets go at once
    clock.now += 1.0
    assert p.admit(rtp(VIDEO, 40)) == 0.0 and p.queue_delay_s == 0.0


def test_audio_and_rtcp_pass_free_and_take_nothing_from_video() -> None:
    p, _clock = pacer(400_000)
    for n in range(10):
        p.admit(rtp(VIDEO, n))
    backlog = p.queue_delay_s
    assert backlog > 0
    assert p.admit(rtp(AUDIO, 7, size=120)) == 0.0
    rtcp_rr = bytes([0x80, 201, 0, 1]) + bytes(4)
    assert p.admit(rtcp_rr) == 0.0
    assert p.queue_delay_s == backlog, "neither audio nor RTCP is charged"
    assert p.stats.packets == 10


def test_a_retransmission_goes_at_once_and_new_video_yields_to_it() -> None:
    p, _clock = pacer(400_000)
    for n in range(1000, 1010):
        p.admit(rtp(VIDEO, n))
    backlog = p.queue_delay_s
    assert p.admit(rtp(VIDEO, 1003)) == 0.0, "a NACK's answer is not held"
    assert p.stats.retransmissions == 1
    assert p.queue_delay_s == pytest.approx(backlog + 1200 * 8 / p.rate_bps)


def test_a_packet_is_resent_at_most_once_per_round_trip() -> None:
    """A browser repeats its NACK for a lost packet every round trip; on a
    congested uplink each copy sent adds to the congestion."""
    p, clock = pacer(400_000)
    for n in range(1000, 1010):
        p.admit(rtp(VIDEO, n))
    p.rtt_s = 0.12
    assert p.admit(rtp(VIDEO, 1003)) == 0.0
    clock.now += 0.1  # the same NACK again, within the round trip
    assert p.admit(rtp(VIDEO, 1003)) is None, "expected the second copy skipped"
    assert p.admit(rtp(VIDEO, 1004)) == 0.0, "another packet is resent"
    clock.now += 0.03
    assert p.admit(rtp(VIDEO, 1003)) == 0.0, "a round trip later it may go again"
    assert p.stats.retransmissions == 3 and p.stats.resends_skipped == 1
    p.rtt_s = None  # no round trip known: the floor
    assert p.admit(rtp(VIDEO, 1005)) == 0.0
    clock.now += RESEND_MIN_INTERVAL_S / 2
    assert p.admit(rtp(VIDEO, 1005)) is None


def test_resending_takes_at_most_a_share_of_the_target_rate() -> None:
    target = 400_000
    p, clock = pacer(target)
    for n in range(2000, 3000):
        p.admit(rtp(VIDEO, n))
    clock.now += 1.0
    sent = [p.admit(rtp(VIDEO, n)) is not None for n in range(2000, 2100)]
    budget = RESEND_SHARE * target * RESEND_WINDOW_S / 8
    assert sum(sent) == int(budget // 1200), (
        f"expected {int(budget // 1200)} resends within the budget, saw {sum(sent)}")
    assert not any(sent[sum(sent):]), "past the budget, nothing more"
    clock.now += RESEND_WINDOW_S  # a new window
    assert p.admit(rtp(VIDEO, 2500)) == 0.0


RTX = 0x3333


def rtx(sequence: int, original: int, size: int = 1200) -> bytes:
    """aiortc's RTX resend of packet ``original`` (its own wrap_rtx, on a real packet)."""
    from aiortc.rtp import wrap_rtx

    packet = RtpPacket.parse(rtp(VIDEO, original, size), EXTENSIONS)
    return wrap_rtx(packet, payload_type=97, sequence_number=sequence,
                    ssrc=RTX).serialize(EXTENSIONS)


def test_rtx_packets_are_resends_bounded_like_the_others() -> None:
    """With RTX negotiated (every browser) aiortc resends on the RTX SSRC, with new
    sequence numbers: the original one inside the payload is what is bounded, and
    the bytes count as resent. Unregistered, they passed free and unbounded."""
    p, clock = pacer(400_000)
    p.rtx_ssrcs.add(RTX)
    for n in range(1000, 1010):
        p.admit(rtp(VIDEO, n))
    p.rtt_s = 0.12
    assert p.admit(rtx(500, 1003)) == 0.0
    clock.now += 0.1
    assert p.admit(rtx(501, 1003)) is None, "the same packet again within a round trip"
    assert p.admit(rtx(502, 1004)) == 0.0
    assert p.stats.retransmissions == 2 and p.stats.resends_skipped == 1
    assert p.stats.resent_bytes == 2 * len(rtx(0, 0))
    assert p.stats.packets == 10, "resends are not new video"
    # the budget applies too
    clock.now += 1.0
    sent = [p.admit(rtx(600 + n, 2000 + n)) is not None for n in range(100)]
    assert sum(sent) == int(RESEND_SHARE * 400_000 * RESEND_WINDOW_S / 8 // len(rtx(0, 0)))


def test_padding_is_free_of_the_resend_bounds_and_the_repair() -> None:
    """A probe's padding (rtc/uplink.py) is resends of the last few packets, again and
    again: the resend bounds (once per round trip, a share of the rate) would drop
    most of it, and the repair must not watch it (a padding packet lost is not a
    hole). Counted apart, so what we send includes it."""
    p, _clock = pacer(400_000)
    p.rtx_ssrcs.add(RTX)
    p.repair = RepairLedger(4096)
    for n in range(1000, 1010):
        p.admit(rtp(VIDEO, n))
    before = p.queue_delay_s
    for n in range(200):  # far past the resend budget, the same packets over and over
        p.padding.add(1009 - n % 4)
        assert p.admit(rtx(700 + n, 1009 - n % 4)) == 0.0
    assert not p.padding, "each mark is used once"
    assert p.stats.padding_packets == 200 and p.stats.padding_bytes == 200 * len(rtx(0, 0))
    assert p.stats.retransmissions == 0 and p.stats.resends_skipped == 0
    assert p.repair.pending == 0, "the repair does not watch padding"
    assert p.queue_delay_s == before, "padding takes nothing from video"
    assert p.snapshot().padding_bytes == p.stats.padding_bytes
    # the same packet NACKed meanwhile is a resend like any other
    assert p.admit(rtx(900, 1009)) == 0.0 and p.stats.retransmissions == 1


async def test_a_skipped_resend_is_not_sent() -> None:
    p, _clock = pacer(400_000)
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    await p.send(rtp(VIDEO, 10), send)
    await p.send(rtp(VIDEO, 10), send)
    await p.send(rtp(VIDEO, 10), send)
    assert len(sent) == 2, f"expected the packet and one resend, saw {len(sent)} sends"


def test_an_ordinary_frame_leaves_at_once_and_waits_come_in_steps() -> None:
    """Every wait is a timer: a frame within the credit needs none, and a big one
    needs about one per STEP_S of its sending time, not one per packet."""
    p, clock = pacer(1_500_000)
    ordinary = [rtp(VIDEO, n) for n in range(5)]  # a 6 kB frame of a 1.5 Mbit/s stream
    assert [p.admit(packet) for packet in ordinary] == [0.0] * 5
    clock.now += 1 / 30
    start, sleeps = clock.now, []
    for n in range(5, 65):  # a 72 kB key frame, sent as aiortc does: one after the other
        wait = p.admit(rtp(VIDEO, n))
        if wait:
            sleeps.append(wait)
            clock.now += wait
    assert all(w >= STEP_S for w in sleeps)
    span = 60 * 1200 * 8 / p.rate_bps - BURST_S
    assert span - 1.1 * STEP_S <= clock.now - start <= span, "paced at the rate"
    assert len(sleeps) <= span / STEP_S + 1, f"{len(sleeps)} timers for {span:.3f} s"


def test_sequence_numbers_wrap() -> None:
    p, _clock = pacer()
    p.admit(rtp(VIDEO, 65535))
    p.admit(rtp(VIDEO, 0))
    p.admit(rtp(VIDEO, 1))
    assert p.stats.packets == 3 and p.stats.retransmissions == 0
    p.admit(rtp(VIDEO, 65534))
    assert p.stats.retransmissions == 1


def test_the_rate_follows_the_target_with_a_floor() -> None:
    p, _clock = pacer()
    p.set_target(1_500_000)
    assert p.rate_bps == PACING_FACTOR * 1_500_000
    p.set_target(10_000)
    assert p.rate_bps == MIN_RATE_BPS


def test_a_packet_that_waited_gets_the_time_it_really_left() -> None:
    data = rtp(VIDEO, 5, abs_send_time=0x010203)
    later = set_abs_send_time(data, ABS_ID, 0xABCDEF)
    parsed = RtpPacket.parse(later, EXTENSIONS)
    assert parsed.extensions.abs_send_time == 0xABCDEF
    assert parsed.extensions.mid == "0", "the other extensions are untouched"
    assert parsed.payload == RtpPacket.parse(data, EXTENSIONS).payload
    assert len(later) == len(data)
    # no such extension, another id, no extensions at all: unchanged
    assert set_abs_send_time(data, 9, 0xABCDEF) == data
    bare = rtp(VIDEO, 6, abs_send_time=None, mid=None)
    assert set_abs_send_time(bare, ABS_ID, 0xABCDEF) == bare
    assert set_abs_send_time(data[:14], ABS_ID, 0xABCDEF) == data[:14], "a runt"


def test_a_packet_sent_after_a_wait_carries_its_departure_time() -> None:
    """Pacer.send on a real asyncio loop: what reaches the transport is stamped when sent."""
    p = Pacer(80_000, abs_send_time_id=ABS_ID)  # 200 kbit/s: 48 ms a packet
    p.ssrcs.add(VIDEO)
    sent: list[tuple[bytes, float]] = []

    async def transport(data: bytes) -> None:
        sent.append((data, time.time()))

    async def frame() -> None:
        for n in range(6):
            await p.send(rtp(VIDEO, n, abs_send_time=0), transport)

    asyncio.run(frame())
    assert p.stats.delayed >= 4
    for data, at in sent[1:]:
        stamp = RtpPacket.parse(data, EXTENSIONS).extensions.abs_send_time
        if stamp == 0:
            continue  # went at once: aiortc's own stamp stands
        assert abs(((abs_send_time_now(at) - stamp) % (1 << 24)) / (1 << 18)) < 0.002
    assert sum(RtpPacket.parse(d, EXTENSIONS).extensions.abs_send_time != 0
               for d, _ in sent) == p.stats.delayed, "every packet that waited is restamped"


def test_abs_send_time_is_ntp_seconds_in_6_18_fixed_point() -> None:
    assert abs_send_time_now(0.0) == (2_208_988_800 % 64) << 18
    assert abs_send_time_now(0.5) - abs_send_time_now(0.0) == 1 << 17


def test_the_extension_id_is_read_from_the_video_section() -> None:
    sdp = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
           f"a=extmap:3 {ABS_SEND_TIME_URI}\r\n"
           "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
           f"a=extmap:4/sendonly {ABS_SEND_TIME_URI}\r\n")
    assert header_extension_id(sdp, "video", ABS_SEND_TIME_URI) == 4
    assert header_extension_id(sdp, "audio", ABS_SEND_TIME_URI) == 3
    assert header_extension_id(sdp, "video", "urn:nothing") is None
    assert header_extension_id("v=0\r\n", "video", ABS_SEND_TIME_URI) is None
