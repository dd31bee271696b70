"""The per-peer bandwidth controller, on synthetic and recorded-looking RTCP sequences.

Time is an argument everywhere, so every sequence replays exactly; the
"recorded-looking" ones are built from real aiortc RTCP packets (serialised
and parsed again, as they would arrive) rather than from loose numbers.
"""

from __future__ import annotations

import itertools
import random
import time
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    pack_remb_fci,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from glimpse_edge.config import VideoConfig
from glimpse_edge.rtc.arrivals import ARRIVAL_SPAN
from glimpse_edge.rtc.bandwidth import (
    BandwidthEstimator,
    ChangeGate,
    ReportBlock,
    Tuning,
    arrivals,
    remb_bitrate,
    replay,
    report_blocks,
    report_rtt,
)
from glimpse_edge.rtc.feedback import PeerFeedback
from glimpse_edge.rtc.pacer import Pacer
from glimpse_edge.rtc.restart import JUMP
from glimpse_edge.rtc.tiers import link_bps

MIN, MAX = 150_000, 2_500_000
OURS, OTHER = 0x1234, 0x9999


def estimator() -> BandwidthEstimator:
    return BandwidthEstimator(MIN, MAX)


def reports(start: float, seconds: float, loss: float, rtt: float | None = 0.02,
            every: float = 1.0) -> list[tuple[float, str, float, float | None]]:
    n = round(seconds / every)
    return [(start + i * every, "report", loss, rtt) for i in range(n)]


def test_starts_at_the_maximum_and_stays_there_on_a_clean_link() -> None:
    est = estimator()
    assert est.estimate_bps == MAX and est.reports == 0
    replay(est, reports(0.0, 30, loss=0.0))
    assert est.estimate_bps == MAX


def test_heavy_loss_decreases_geometrically_down_to_the_floor() -> None:
    est = estimator()
    updates = replay(est, reports(0.0, 3, loss=0.20))
    # 1 - 0.2/2 = 0.9 per report
    assert [u.estimate_bps for u in updates] == [int(MAX * 0.9 ** k) for k in (1, 2, 3)]
    assert all(u.reason == "loss" for u in updates)
    replay(est, reports(3.0, 120, loss=0.5))
    assert est.estimate_bps == MIN


def test_moderate_loss_holds_and_low_loss_climbs_back_at_8_percent_a_second() -> None:
    est = estimator()
    replay(est, reports(0.0, 10, loss=0.3))
    low = est.estimate_bps
    updates = replay(est, reports(10.0, 10, loss=0.05))
    assert {u.reason for u in updates} == {"hold"} and est.estimate_bps == low
    replay(est, reports(20.0, 6, loss=0.01))
    # the first good report after the hold counts one second
    assert abs(est.estimate_bps - low * 1.08 ** 6) <= 2, (est.estimate_bps, low)
    replay(est, reports(26.0, 120, loss=0.0))
    assert est.estimate_bps == MAX


def test_exactly_at_the_thresholds() -> None:
    est = estimator()
    assert est.on_report(0.0, 0.10).reason == "hold"  # "decrease on > 10 %"
    assert est.on_report(1.0, 0.02).reason == "hold"  # "hold between 2 and 10 %"
    assert est.on_report(2.0, 0.0199).reason == "increase"
    assert est.on_report(3.0, 0.1001).reason == "loss"


def test_one_loss_episode_in_several_report_blocks_is_punished_once() -> None:
    est = estimator()
    first = est.on_report(0.0, 0.5)
    again = est.on_report(0.01, 0.5)  # a second block of the same compound packet
    assert first.estimate_bps == int(MAX * 0.75)
    assert again.estimate_bps == first.estimate_bps
    assert est.on_report(1.0, 0.5).estimate_bps < first.estimate_bps


def test_a_long_gap_between_reports_is_not_evidence_of_capacity() -> None:
    est = estimator()
    replay(est, reports(0.0, 10, loss=0.4))
    low = est.estimate_bps
    est.on_report(100.0, 0.0)  # first report after 90 s of silence
    est.on_report(101.0, 0.0)
    assert est.estimate_bps <= int(low * 1.08 ** 3) + 1


def test_remb_caps_while_fresh_and_the_estimate_climbs_back_after() -> None:
    est = estimator()
    est.on_report(0.0, 0.0)
    assert est.on_remb(0.5, 400_000).estimate_bps == 400_000
    replay(est, reports(1.0, 4, loss=0.0))
    assert est.estimate_bps == 400_000  # capped by the REMB, however good the reports
    # no REMB for longer than the timeout: it no longer caps, and we climb from it
    assert est.estimate_at(20.0) > 400_000
    replay(est, reports(20.0, 3, loss=0.0))
    assert 400_000 < est.estimate_at(23.0) < 400_000 * 1.08 ** 20
    # a REMB below the floor cannot push the estimate below it
    assert est.on_remb(30.0, 10_000).estimate_bps == MIN


def test_a_remb_cap_handed_over_does_not_lapse_into_the_old_estimate() -> None:
    """The shared uplink takes the REMB over: the capped estimate is where the
    peer stays, not the loss-based one the REMB capped before it went stale."""
    est = estimator()
    est.on_report(0.0, 0.0)
    assert est.on_remb(0.5, 400_000).estimate_bps == 400_000
    est.hand_over(1.0)
    assert est.estimate_at(1.0) == 400_000
    assert est.estimate_at(20.0) == 400_000, "no REMB heard since: still where it was"


def test_the_first_remb_after_a_hand_over_is_not_a_fall() -> None:
    """The uplink let go and we send more again (expect_rise): the receiver's first
    REMB reflects the limited rate it saw, far under the REMB from before the limit.
    That is the receiver catching up, not a complaint; a REMB falling from it is."""
    est = estimator()
    est.on_report(0.0, 0.0)
    est.on_remb(0.5, 2_000_000)
    est.hand_over(1.0)  # the uplink limits from here on (its REMBs are not heard)
    est.expect_rise(30.0, 20.0)  # ... and lets go at 30 s
    before = est.estimate_at(30.0)
    assert est.on_remb(30.5, 150_000).estimate_bps == before, "not capped by the stale one"
    assert est.on_remb(31.5, 100_000).estimate_bps < before, "a fall from it still complains"


def test_rising_rtt_holds_then_backs_off_before_any_loss() -> None:
    """A bottleneck queue fills: RTT climbs for seconds before packets drop."""
    est = estimator()
    replay(est, reports(0.0, 10, loss=0.3, rtt=0.01))  # somewhere below the top
    start = est.estimate_bps
    replay(est, reports(10.0, 5, loss=0.0, rtt=0.01))  # clean, flat RTT: climbs
    climbed = est.estimate_bps
    assert climbed > start
    # the smoothed RTT (40 % weight per sample) passes the hold threshold
    # (30 ms + 1/4 of the 10 ms base): no more increases
    held = est.on_report(15.0, 0.0, 0.1)
    assert held.reason == "rtt_hold" and held.estimate_bps == climbed
    # it keeps rising, far above: back off by 15 % per report, without a single loss
    out = [est.on_report(16.0 + i, 0.0, rtt) for i, rtt in enumerate((0.2, 0.3, 0.4, 0.5))]
    assert [u.reason for u in out] == ["rtt_hold", "rtt", "rtt", "rtt"]
    assert out[-1].estimate_bps == int(climbed * 0.85 ** 3)
    # high but no longer rising: hold (the queue drains at the lower rate)
    assert est.on_report(20.0, 0.0, 0.3).reason == "rtt_hold"
    # back to the base: increase again
    replay(est, reports(21.0, 10, loss=0.0, rtt=0.01))
    assert est.last_reason == "increase"


def test_base_rtt_follows_a_new_path() -> None:
    est = estimator()
    replay(est, reports(0.0, 5, loss=0.0, rtt=0.005))
    assert est.base_rtt_s == 0.005
    est.new_path()  # a fresh connection, perhaps via TURN on another continent
    assert est.base_rtt_s is None and est.rtt_s is None
    replay(est, reports(10.0, 5, loss=0.0, rtt=0.150))
    assert est.last_reason == "increase"  # 150 ms is the new base, not a queue
    # and an old base expires after the window
    est2 = estimator()
    replay(est2, reports(0.0, 3, loss=0.0, rtt=0.005))
    replay(est2, reports(3.0, 60, loss=0.0, rtt=0.080))
    assert est2.base_rtt_s == 0.080 and est2.last_reason == "increase"


def test_bounds_change_on_reload_clamps_the_estimate() -> None:
    est = estimator()
    est.set_bounds(100_000, 800_000)
    assert est.estimate_bps == 800_000
    est.set_bounds(900_000, 500_000)  # nonsense in: still a usable range
    assert est.min_bps == 900_000 and est.estimate_bps == 900_000


def test_garbage_input_never_raises_and_never_leaves_the_bounds() -> None:
    est = estimator()
    for loss, rtt in ((float("nan"), None), (-3.0, -1.0), (7.0, float("inf")),
                      (0.0, float("nan")), (0.5, 1e9)):
        u = est.on_report(1.0, loss, rtt)
        assert MIN <= u.estimate_bps <= MAX
    for bps in (float("nan"), -5.0, float("inf"), 0.0):
        assert MIN <= est.on_remb(2.0, bps).estimate_bps <= MAX
    est.on_report(-50.0, 0.0)  # time going backwards: no increase from a negative span
    assert MIN <= est.estimate_bps <= MAX


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    st.floats(0, 5), st.sampled_from(["report", "remb"]),
    st.floats(0, 1), st.one_of(st.none(), st.floats(0, 2)), st.floats(0, 5e6)), max_size=60))
def test_any_sequence_stays_within_bounds(
    steps: list[tuple[float, str, float, float | None, float]],
) -> None:
    est = estimator()
    now = 0.0
    for dt, kind, loss, rtt, remb in steps:
        now += dt
        u = est.on_report(now, loss, rtt) if kind == "report" else est.on_remb(now, remb)
        assert MIN <= u.estimate_bps <= MAX
        assert MIN <= est.estimate_at(now + 10) <= MAX


def test_same_sequence_same_estimates() -> None:
    rng = random.Random(7)
    seq = [(i * 0.7, "report", rng.choice([0.0, 0.01, 0.05, 0.12, 0.3]), rng.uniform(0.01, 0.2))
           for i in range(200)]
    a = [u.estimate_bps for u in replay(estimator(), seq)]
    b = [u.estimate_bps for u in replay(estimator(), seq)]
    assert a == b


def test_random_ten_percent_loss_pulls_the_estimate_down_but_not_to_zero() -> None:
    """Scenario (c) as the receiver reports it: ~30 packets per report, 10 % dropped."""
    rng = random.Random(1)
    est = estimator()
    for i in range(60):
        lost = sum(rng.random() < 0.10 for _ in range(30))
        est.on_report(float(i), int(256 * lost / 30) / 256, 0.002)
    assert MIN <= est.estimate_bps < MAX * 0.5


# -- recorded-looking: real aiortc packets, serialised and parsed back ---------


def _rr(fraction_lost: int, lost: int, lsr: int, dlsr: int, ssrc: int = OURS) -> RtcpRrPacket:
    blocks = [RtcpReceiverInfo(ssrc=ssrc, fraction_lost=fraction_lost, packets_lost=lost,
                               highest_sequence=1000 + lost, jitter=80, lsr=lsr, dlsr=dlsr),
              RtcpReceiverInfo(ssrc=OTHER, fraction_lost=255, packets_lost=9, highest_sequence=1,
                               jitter=0, lsr=0, dlsr=0)]
    return RtcpRrPacket(ssrc=1, reports=blocks)


def _wire(*packets: object) -> list[object]:
    """Serialise as a compound packet and parse it again, as aiortc receives it."""
    data = b"".join(bytes(p) for p in packets)  # type: ignore[call-overload]
    return list(RtcpPacket.parse(data))


def test_report_blocks_and_remb_are_read_from_real_packets() -> None:
    sr = RtcpSrPacket(ssrc=1, sender_info=RtcpSenderInfo(
        ntp_timestamp=1, rtp_timestamp=2, packet_count=3, octet_count=4),
        reports=[RtcpReceiverInfo(ssrc=OURS, fraction_lost=64, packets_lost=5,
                                  highest_sequence=9, jitter=1, lsr=7, dlsr=8)])
    remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0,
                          fci=pack_remb_fci(612_000, [OTHER, OURS]))
    pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=OURS)
    junk_app = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=b"GOOGxxxx")
    rr, sr2, remb2, pli2, junk2 = _wire(_rr(26, 3, 0, 0), sr, remb, pli, junk_app)
    assert report_blocks(rr, OURS) == [ReportBlock(26 / 256, 3, 1003, 80, 0, 0)]
    assert report_blocks(sr2, OURS)[0].loss == 0.25
    assert report_blocks(rr, 0xDEAD) == [] and report_blocks(pli2, OURS) == []
    assert remb_bitrate(remb2, OURS) == 612_000 - 612_000 % 4  # 18-bit mantissa, exponent
    assert remb_bitrate(remb2, 0xDEAD) is None
    assert remb_bitrate(pli2, OURS) is None and remb_bitrate(junk2, OURS) is None


def test_arrivals_are_the_highest_sequence_growth_less_the_loss_growth() -> None:
    before = ReportBlock(0.0, packets_lost=10, highest=65_530, jitter=0, lsr=0, dlsr=0)
    # the extended highest sequence crosses a 16-bit wrap: 20 newer, 3 of them lost
    after = ReportBlock(0.1, packets_lost=13, highest=65_550, jitter=0, lsr=0, dlsr=0)
    assert arrivals(before, after) == 17
    # a late packet the receiver had counted lost arrives: its loss count goes back
    late = ReportBlock(0.0, packets_lost=12, highest=65_550, jitter=0, lsr=0, dlsr=0)
    assert arrivals(after, late) == 1


def test_rtt_only_from_a_report_that_echoes_our_latest_sender_report() -> None:
    block = ReportBlock(0.0, 0, 0, 0, lsr=0xABCD0000, dlsr=65536 // 10)  # held 100 ms
    rtt = report_rtt(block, 0xABCD0000, 1000.0, 1000.125)
    assert rtt is not None and abs(rtt - 0.025) < 1e-4
    assert report_rtt(block, 0x11110000, 1000.0, 1000.125) is None  # an older SR
    assert report_rtt(ReportBlock(0.0, 0, 0, 0, lsr=5, dlsr=0), 5, 1.0, 2.0) is None
    assert report_rtt(block, None, None, 5.0) is None
    assert report_rtt(block, 0xABCD0000, 1000.0, 999.0) is None  # clock stepped back


def test_recorded_tbf_like_session() -> None:
    """A peer whose link gets capped well below what we send, then uncapped.

    What a receiver behind a 500 kbit/s token bucket reports about a 1.2 Mbit/s
    stream: first the queue grows (RTT 4 -> 300 ms), then the bucket's queue
    limit overflows (loss 15-40 %), then the cap is lifted.
    """
    est = BandwidthEstimator(150_000, 1_200_000)
    lsr_wall: dict[int, float] = {}
    estimates: list[tuple[float, int, str]] = []
    timeline = (
        [(0.0 + i, 0, 0.004) for i in range(10)]                        # clean
        + [(10.0 + i, 0, 0.004 + 0.06 * i) for i in range(5)]           # queue building
        + [(15.0 + i, 60 + 10 * (i % 3), 0.30) for i in range(10)]      # overflow
        + [(25.0 + i, 0, 0.004) for i in range(25)]                     # cap lifted
    )
    for now, fraction, rtt in timeline:
        lsr = (int(now * 1000) & 0xFFFF) << 16
        lsr_wall[lsr] = 5000.0 + now - rtt - 0.05  # our SR went out rtt+50 ms before
        for packet in _wire(_rr(fraction, 0, lsr, int(0.05 * 65536))):
            for block in report_blocks(packet, OURS):
                rtt_s = report_rtt(block, lsr, lsr_wall[lsr], 5000.0 + now)
                u = est.on_report(now, block.loss, rtt_s)
                estimates.append((now, u.estimate_bps, u.reason))
    by_time = {t: (e, r) for t, e, r in estimates}
    assert by_time[9.0] == (1_200_000, "increase")
    # the early signal: the estimate falls while the queue builds, before any loss
    first_cut = min(t for t, e, _r in estimates if e < 1_200_000)
    assert 10.0 < first_cut < 15.0, estimates
    assert by_time[14.0][0] < 1_200_000 * 0.9
    # under overflow loss it keeps falling, never below the floor
    assert by_time[24.0][0] < 500_000 and by_time[24.0][0] >= 150_000
    # once uncapped it climbs back all the way
    assert by_time[49.0] == (1_200_000, "increase")


def test_change_gate_logs_big_moves_rate_limited() -> None:
    gate = ChangeGate(min_ratio=0.15, min_interval=2.0)
    assert gate.check(0.0, 1_000_000)  # the first value is always worth a line
    assert not gate.check(0.5, 500_000)  # big, but too soon
    assert gate.check(2.5, 500_000)
    assert not gate.check(10.0, 540_000)  # 8 %: not significant
    assert gate.check(11.0, 600_000)
    assert gate.logged == 600_000


# -- wired into a PeerSession: the RTCP hook's side ------------------------------


class _Sender:
    """Just what the hook reads from an aiortc sender (SSRCs, our last SR)."""

    def __init__(self, ssrc: int) -> None:
        self._ssrc = ssrc
        self._rtx_ssrc = ssrc + 1
        self._RTCRtpSender__lsr = 0x00010000
        self._RTCRtpSender__lsr_time = 1000.0


class _BrokenSender:
    @property
    def _ssrc(self) -> int:
        raise RuntimeError("aiortc changed")


def _feedback() -> tuple[PeerFeedback, SimpleNamespace]:
    """A peer's feedback half, whose current connection is a stand-in."""
    video = VideoConfig(min_bitrate=MIN, max_bitrate=MAX)
    hub = SimpleNamespace(video_config=video, tiers=video.quality_tiers(), has_video=True,
                          audio_stream=lambda: object())
    conn = SimpleNamespace(transceivers={"video": object(), "audio": object()},
                           subscriptions=[], released_bytes=0, codec=None, tracks={}, pacer=None,
                           generation=0)
    feedback = PeerFeedback(hub, name="alice", log=structlog.get_logger().bind(peer="u1"),  # type: ignore[arg-type]
                            post=lambda event: None, current=lambda: conn)  # type: ignore[arg-type,return-value]
    return feedback, conn


def test_a_peer_session_feeds_its_estimate_from_video_reports_only() -> None:
    feedback, conn = _feedback()
    assert feedback.estimate_bps is None  # nothing known before a report
    sender = _Sender(OURS)
    with capture_logs() as logs:
        for packet in _wire(_rr(128, 50, 0, 0)):  # 50 % loss
            feedback.observe(conn, sender, "audio", packet)  # type: ignore[arg-type]
        assert feedback.estimate_bps is None, "audio reports do not count when there is video"
        for packet in _wire(_rr(128, 50, 0, 0)):
            feedback.observe(conn, sender, "video", packet)  # type: ignore[arg-type]
        remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0,
                              fci=pack_remb_fci(300_000, [OURS]))
        feedback.observe(conn, sender, "video", remb)  # type: ignore[arg-type]
        # a connection that is no longer current feeds nothing
        stale = SimpleNamespace(transceivers=conn.transceivers)
        feedback.observe(stale, sender, "video", remb)  # type: ignore[arg-type]
    assert feedback.estimate_bps == 300_000
    lines = [e for e in logs if e["event"] == "peer.bandwidth"]
    # the estimate's ceiling is what the best tier needs on the wire, audio included
    assert lines[0]["estimate_bps"] == int(link_bps(MAX, True) * 0.75)
    assert lines[0]["reason"] == "loss"
    assert lines[0]["loss"] == 0.5


def test_the_rtcp_hook_never_raises_and_says_so_once() -> None:
    feedback, conn = _feedback()
    packet = _wire(_rr(0, 0, 0, 0))[0]
    with capture_logs() as logs:
        for _ in range(3):
            feedback.observe(conn, _BrokenSender(), "video", packet)  # type: ignore[arg-type]
    assert [e["event"] for e in logs] == ["peer.bandwidth_error"]
    assert feedback.estimate_bps is None


def test_an_sfus_remb_is_a_cap_even_above_what_we_send() -> None:
    """An SFU's REMB is a cap it sets (Janus: every 5 s): the estimate never climbs
    past it between two, as it does past a browser's REMB that asks for no less."""
    est = BandwidthEstimator(MIN, MAX, tuning=Tuning(remb_always_caps=True, remb_timeout=12.0))
    est.on_report(0.0, 0.0)
    est.on_remb(0.5, 300_000, sending_bps=250_000)  # above what we send: still a cap
    replay(est, reports(1.0, 4, loss=0.0))
    assert est.estimate_at(5.0) == 300_000
    browser = estimator()
    browser.on_report(0.0, 0.0)
    browser.on_remb(0.5, 300_000, sending_bps=250_000)
    replay(browser, reports(1.0, 4, loss=0.0))
    assert browser.estimate_at(5.0) > 300_000, "a browser's REMB above what we send asks no less"


def _receiver_report(highest: int, lost: int) -> object:
    """One receiver report about our video: its counters only."""
    return _wire(RtcpRrPacket(ssrc=1, reports=[RtcpReceiverInfo(
        ssrc=OURS, fraction_lost=0, packets_lost=lost, highest_sequence=highest, jitter=0,
        lsr=0, dlsr=0)]))[0]


@pytest.mark.parametrize("counts_skip_lost", [False, True], ids=["libwebrtc", "aiortc"])
def test_the_uplink_hears_a_receiver_once_a_span_and_a_restart_adds_no_arrivals(
        monkeypatch: pytest.MonkeyPatch, counts_skip_lost: bool) -> None:
    """A browser sends a report with each NACK (every 10-30 ms under loss). The
    shared uplink hears one per :data:`ARRIVAL_SPAN` at most, with the loss and
    the arrivals of the whole span: report by report none counted what
    arrived, and each one's loss, over a few packets, was 0 as often as not.
    A restart's 512 skipped numbers are no arrivals, whether the receiver
    counts them lost (aiortc's) or takes the jump for a restarted stream and
    counts none (libwebrtc's): taken out of its loss too, they read as 11
    Mbit/s through a 1 Mbit/s uplink."""
    feedback, conn = _feedback()
    conn.pacer = Pacer(2_000_000)
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    heard: list[tuple[float, dict[str, Any]]] = []
    report = feedback.uplink.report

    def spy(peer: str, now: float, **kw: Any) -> None:
        heard.append((now, kw))
        report(peer, now, **kw)

    monkeypatch.setattr(feedback.uplink, "report", spy)
    sender = _Sender(OURS)
    highest, lost, skipped = 1000, 0, 0
    for i in range(100):  # 2 s: 100 packets of 1000 bytes a second, half arrive
        clock[0] = 100.0 + i * 0.02
        conn.pacer.stats.packets += 2
        conn.released_bytes += 2000
        if i == 50:  # a restart: the key frame goes out 512 numbers on
            conn.pacer.shift.restart(highest + 1)
            skipped = JUMP
            lost += JUMP if counts_skip_lost else 0
        highest, lost = highest + 2, lost + 1
        feedback.observe(conn, sender, "video",  # type: ignore[arg-type]
                         _receiver_report(highest + skipped, lost))
    times = [t for t, _ in heard]
    assert times[-1] >= clock[0] - 2 * ARRIVAL_SPAN, f"expected reports to the end, saw {times}"
    assert len(heard) >= 5 and all(b - a >= ARRIVAL_SPAN - 1e-9
                                   for a, b in itertools.pairwise(times)), (
        f"expected one report per {ARRIVAL_SPAN} s at most, heard at {times}")
    expected = link_bps(50 * 1000 * 8, False)
    for now, kw in heard[1:]:
        assert kw["loss"] == pytest.approx(0.5, abs=0.05), (now, kw)
        assert kw["arrived_bps"] == pytest.approx(expected, rel=0.15), (
            f"expected about {expected} bit/s arrived by the report at {now}, saw "
            f"{kw['arrived_bps']}")
