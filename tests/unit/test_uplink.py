"""The shared-uplink estimate and its allocation (rtc/uplink.py), on time the test passes in."""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glimpse_edge.rtc.uplink import Uplink, UplinkTuning

AUDIO = 64_000
TOP = 2_000_000  # what a peer's own estimate says when its own link is fine


def report(up: Uplink, peer: str, now: float, *, loss: float = 0.0, queue: float | None = 0.0,
           sent: float = 500_000, wants: int = TOP) -> None:
    up.report(peer, now, loss=loss, queue_s=queue, sent_bps=sent, wants_bps=wants,
              audio_bps=AUDIO)


def test_loss_on_all_peers_together_is_the_uplink() -> None:
    up = Uplink()
    for peer in ("a", "b", "c"):
        report(up, peer, 9.0, sent=400_000)
    assert not up.congested and up.estimate_bps is None
    for peer in ("a", "b", "c"):
        report(up, peer, 10.0, loss=0.1, sent=400_000)
    assert up.congested and up.episodes == 1
    # seen at b's report (two of three): what got through by the latest reports, backed off
    assert up.estimate_bps == pytest.approx(up.tuning.backoff * (2 * 400_000 * 0.9 + 400_000))
    assert up.own_loss("a", 0.1) == 0.0, "the shared loss is not the peers' own"
    # c loses more than the others, report after report: that excess is its own
    for n in range(1, 8):
        for peer in ("a", "b"):
            report(up, peer, 10.0 + n / 4, loss=0.1, sent=400_000)
        report(up, "c", 10.0 + n / 4, loss=0.4, sent=400_000)
    assert up.own_loss("c", 0.4) == pytest.approx(0.3, abs=0.03)
    assert up.own_loss("a", 0.1) == 0.0


def test_one_bad_downlink_among_three_is_not_the_uplink() -> None:
    up = Uplink()
    report(up, "a", 10.0, loss=0.3)
    report(up, "b", 10.0)
    report(up, "c", 10.0)
    assert not up.congested and up.estimate_bps is None
    assert up.shares(10.0) == {} and up.share("a", 10.0) is None
    assert up.own_loss("a", 0.3) == 0.3


def test_a_queue_without_loss_counts_and_stale_reports_do_not() -> None:
    up = Uplink()
    report(up, "a", 10.0, queue=0.08)
    report(up, "b", 10.0 + up.tuning.window + 0.1, queue=0.08)  # a's report is stale by now
    assert not up.congested
    report(up, "a", 14.0, queue=0.08)
    assert up.congested, "two peers queueing within the window"


def test_after_a_decrease_it_holds_then_grows_ever_faster_then_lets_go() -> None:
    """(The creep alone: with probes, which these peers do not pad for, it stops at
    the known link.)"""
    t = UplinkTuning(probe_every=0)
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.05, sent=500_000)
    first = up.estimate_bps
    assert first is not None
    now, steps = 0.0, []
    for _ in range(int(t.hold)):  # clear reports within the hold: no increase yet
        now += 1.0
        for peer in ("a", "b"):
            report(up, peer, now, sent=first / 2, wants=600_000)
    assert not up.congested and up.estimate_bps == first
    while up.estimate_bps is not None and now < 200:
        before = up.estimate_bps
        now += 1.0
        for peer in ("a", "b"):  # the peers send their shares
            report(up, peer, now, sent=before / 2, wants=600_000)
        if up.estimate_bps is not None:
            steps.append(up.estimate_bps / before - 1)
    assert steps[0] == pytest.approx(t.increase_per_s, rel=0.3), "slowly at first"
    assert all(b >= a for a, b in itertools.pairwise(steps)), "then ever faster"
    assert max(steps) <= t.max_increase_per_s * 1.01
    # clear for long enough, and everyone gets what it wants: no limit
    assert up.estimate_bps is None and now >= t.release_after


def test_a_limit_stays_while_peers_want_more_than_it() -> None:
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.05, sent=500_000)
    for n in range(1, int(t.release_after) + 2):
        for peer in ("a", "b"):
            report(up, peer, float(n), sent=100_000, wants=50_000_000)
    assert up.estimate_bps is not None, "not released: the peers want more than it"


def test_peers_whose_own_estimates_a_cap_knocked_down_do_not_let_it_go() -> None:
    """At a cap's onset each receiver's REMB falls at once, and the peers' own
    estimates with it; they climb back slowly. Covering what they ask now is
    not "satisfied": let go then, each peer's own estimate grew into the link
    as its own, and the lowest tier saw-toothed for the rest of the cap. Only
    covering all their top tiers ask (their ceilings) is."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        up.report(peer, 0.0, loss=0.3, queue_s=0.1, sent_bps=1_000_000, wants_bps=300_000,
                  audio_bps=AUDIO, ceiling_bps=TOP)
    assert up.estimate_bps is not None
    now = 0.0
    while now < 3 * t.release_after:
        now += 0.5
        for peer in ("a", "b"):
            up.report(peer, now, loss=0.0, queue_s=0.0, sent_bps=300_000, wants_bps=300_000,
                      audio_bps=AUDIO, ceiling_bps=TOP)
    assert up.limited, (
        f"expected the limit kept while the peers' top tiers ({2 * TOP}) are more than it, "
        f"saw it let go as {up.released!r} at {up.estimate_bps}")
    for peer in ("a", "b"):  # their top tier is what they ask: nothing more to give
        up.report(peer, now + 0.5, loss=0.0, queue_s=0.0, sent_bps=300_000,
                  wants_bps=300_000, audio_bps=AUDIO, ceiling_bps=300_000)
    assert not up.limited and up.released == "satisfied", up.released


def test_decreases_are_spaced_and_do_not_chase_our_own_rate() -> None:
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)
    first = up.estimate_bps
    assert first == pytest.approx(t.backoff * 2 * 500_000 * 0.8)
    for peer in ("a", "b"):  # the same congestion seen again at once: one decrease
        report(up, peer, 0.2, loss=0.2, sent=300_000)
    assert up.estimate_bps == first
    # the peers followed their shares, the queue drained (clear for longer than
    # the hold), then loss again while we send well under the estimate: a late
    # report, not news of the link
    clear = 0.2 + t.congested_hold
    for peer in ("a", "b"):
        report(up, peer, clear, sent=first / 4)
    assert not up.congested
    estimate = up.estimate_bps
    assert estimate is not None
    for peer in ("a", "b"):
        report(up, peer, clear + 0.5, loss=0.05, sent=estimate / 4)
    assert up.congested and up.estimate_bps >= estimate, "no decrease chasing our own rate"
    # we send the estimate and it is still too much: what got through, backed off
    estimate = up.estimate_bps
    assert clear + 0.7 < t.followed  # (past it, any congestion cuts: see below)
    for peer in ("a", "b"):
        report(up, peer, clear + 0.7, loss=0.05, sent=estimate / 2)
    assert up.estimate_bps == pytest.approx(estimate * 0.95 * t.backoff)
    # at most halved at once, however much a report right after an overload lost
    estimate = up.estimate_bps
    for peer in ("a", "b"):
        report(up, peer, clear + 3.5, loss=0.95, queue=0.1, sent=estimate / 2)
    assert estimate * t.max_cut <= up.estimate_bps < estimate * t.backoff


def test_congestion_once_we_followed_the_last_decrease_cuts_whatever_we_send() -> None:
    """Right after a decrease what we send lags it, and a congestion then is the last
    overload draining. Once ``followed`` has passed, a congestion while we send
    0.6 of the estimate is the link full at what we send: cut to what it carried.
    (A limit left 1.34 x the link by a decrease that read through a cap's onset
    was never cut otherwise, and the peers' own estimates grew into the link.)"""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        arrived(up, peer, 0.0, got=400_000, loss=0.2, sent=500_000)
    estimate = up.estimate_bps
    assert estimate is not None
    sent = 0.3 * estimate  # each
    now = t.congested_hold
    while now < 3 * t.followed:  # we send 0.6 of the estimate, all of it through ...
        congested = now in (t.followed - 0.5, 3 * t.followed - 0.5)  # ... but for two reports
        for peer in ("a", "b"):
            arrived(up, peer, now, got=0.95 * sent if congested else sent,
                    loss=0.05 if congested else 0.0, sent=sent)
        if now < t.followed:
            assert up.estimate_bps == estimate, (
                f"at {now} s: expected no decrease yet, saw {up.estimate_bps:.0f}")
        now += 0.5
    assert up.estimate_bps == pytest.approx(t.backoff * 2 * sent), (
        f"expected {t.backoff} x the {2 * sent:.0f} the link carried, saw {up.estimate_bps}")


def test_bursty_reports_do_not_flap_the_shared_state() -> None:
    """A browser reports several times a second; a tbf queue overflowing in
    bursts shows loss in every other report. The shared state holds through
    the clear ones, and the shared loss stays the uplink's, not the peers'."""
    t = UplinkTuning()
    up = Uplink(t)
    now, flips, was = 0.0, 0, False
    for n in range(60):  # 3 peers, one report each every 0.3 s, staggered
        peer = "abc"[n % 3]
        now += 0.1
        lossy = (n // 3) % 2 == 0
        report(up, peer, now, loss=0.12 if lossy else 0.0, sent=400_000)
        if n >= 6:
            flips += up.congested != was
        was = up.congested
        if up.congested:
            own = max(up.own_loss(p, 0.12) for p in "abc")
            assert own < UplinkTuning().congested_loss * 5, (
                f"at {now:.1f}: expected the shared loss kept from the peers, one got {own:.3f}")
    assert up.congested and up.episodes == 1, (
        f"expected one episode held through the clear reports, saw {up.episodes}")
    assert flips == 0
    # clear for longer than the hold on every peer: no longer congested
    for peer in "abc":
        report(up, peer, now + t.congested_hold, sent=400_000)
    assert not up.congested


def test_a_peer_that_leaves_gives_its_share_to_the_others() -> None:
    up = Uplink()
    for peer in ("a", "b", "c"):
        report(up, peer, 0.0, loss=0.1, sent=400_000)
    before = up.shares(0.0)
    up.forget("c")
    after = up.shares(0.0)
    assert set(after) == {"a", "b"} and after["a"] > before["a"]


def test_max_min_fair_shares() -> None:
    up = Uplink()
    for peer in ("slow", "b", "c"):
        report(up, peer, 0.0, loss=0.1, sent=500_000)
    up.estimate_bps = 1_200_000.0
    report(up, "slow", 0.1, wants=300_000)  # its own downlink takes 300k
    shares = up.shares(0.1)
    assert shares["slow"] == 300_000, "less than an equal share: what it wants"
    assert shares["b"] == shares["c"] == pytest.approx((1_200_000 - 300_000) / 2, abs=1)
    assert sum(shares.values()) <= 1_200_000


@given(estimate=st.integers(100_000, 10_000_000),
       wants=st.lists(st.integers(AUDIO, 5_000_000), min_size=1, max_size=9))
def test_shares_never_overshoot_and_never_exceed_what_a_peer_wants(
    estimate: int, wants: list[int],
) -> None:
    up = Uplink()
    for n, want in enumerate(wants):
        report(up, f"p{n}", 0.0, wants=want)
    up.estimate_bps = float(estimate)
    shares = up.shares(0.0)
    assert len(shares) == len(wants)
    video = sum(s - AUDIO for s in shares.values())
    assert video <= max(estimate - AUDIO * len(wants), 0) + len(wants)  # rounding
    for n, want in enumerate(wants):
        assert shares[f"p{n}"] <= max(want, AUDIO)


def simulate(link_bps: float, peers: int, seconds: float = 60.0,
             latency: float = 0.15) -> list[float]:
    """Peers sending their shares through one capped uplink (a fluid tbf).

    Each peer's budget is the uplink's share (own links are fine), and it
    sends that and what a probe pads with; the queue in front of the link
    fills when the total exceeds the link and overflows into loss past
    ``latency``. Returns the total of the budgets, every half second.
    """
    up = Uplink()
    dt, queue, now = 0.5, 0.0, 0.0
    rate = {f"p{n}": 1_500_000.0 for n in range(peers)}  # everyone starts at the top
    totals = []
    while now < seconds:
        now += dt
        sent = {peer: rate[peer] + (up.padding_bps(peer, now) or 0) for peer in rate}
        total = sum(sent.values())
        queue = max(0.0, queue + (total - link_bps) * dt / link_bps)
        loss = 0.0
        if queue > latency:
            loss = min(1.0, (queue - latency) * link_bps / dt / total)
            queue = latency
        for peer in rate:
            report(up, peer, now, loss=loss, queue=queue, sent=sent[peer])
        shares = up.shares(now)
        for peer in rate:
            rate[peer] = float(shares.get(peer, 1_500_000))
        totals.append(sum(rate.values()))
    return totals


@pytest.mark.parametrize(("link_bps", "peers"), [(600_000, 2), (1_000_000, 3),
                                                 (2_000_000, 5), (1_500_000, 4)])
def test_the_total_settles_under_the_link_without_a_saw_tooth(link_bps: int,
                                                              peers: int) -> None:
    totals = simulate(link_bps, peers)
    settled = totals[len(totals) // 2:]  # the second half
    assert max(settled) <= link_bps * 1.15, (
        f"the total should settle under the {link_bps} link; max {max(settled):.0f}")
    middle = statistics.median(settled)
    assert middle >= link_bps * 0.7, f"and use most of it; median {middle:.0f}"
    swing = (max(settled) - min(settled)) / middle
    assert swing <= 0.4, f"within +-20 % once settled; swing {swing:.2f} of {middle:.0f}"


def test_the_estimate_stops_at_what_the_peers_cannot_go_below() -> None:
    """Three peers at their floor (audio and the lowest video rate) still see
    loss: a lower estimate would change nothing we send, and every decrease
    would find us 'complying' and cut again."""
    t = UplinkTuning()
    up = Uplink(t)
    floor = 200_000
    now = 0.0
    for _ in range(30):
        now += 1.0
        for peer in ("a", "b", "c"):
            up.report(peer, now, loss=0.1, queue_s=0.0, sent_bps=floor * 1.05,
                      wants_bps=TOP, audio_bps=AUDIO, floor_bps=floor)
    assert up.estimate_bps == pytest.approx(3 * floor), (
        f"expected the estimate held at the peers' floors ({3 * floor}), saw {up.estimate_bps}")


def test_a_draining_queue_is_not_news_of_the_link() -> None:
    """After an overload the queue in front of the link takes a while to empty,
    and RTT shows it a report or two late: a shrinking queue is no reason to
    cut, a queue that holds or grows is."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.3, queue=0.15, sent=1_000_000)
    estimate = up.estimate_bps
    assert estimate is not None
    now = 0.0
    for queue in (0.12, 0.09, 0.06):  # we send the estimate; the queue drains
        now += 1.5
        for peer in ("a", "b"):
            report(up, peer, now, queue=queue, sent=estimate / 2)
    assert up.congested and up.estimate_bps == estimate, (
        f"expected no cut while the queue drains, saw {up.estimate_bps} from {estimate}")
    for peer in ("a", "b"):  # it grows again: the link is full
        report(up, peer, now + 1.5, queue=0.09, sent=estimate / 2)
    assert up.estimate_bps is not None and up.estimate_bps < estimate


def test_growth_starts_slowly_after_a_long_congestion_without_decreases() -> None:
    """Congestion held at the peers' floor makes no decrease; when it clears,
    the estimate grows from slow again, not at the rate a long time since the
    last decrease would give."""
    t = UplinkTuning()
    up = Uplink(t)
    floor = 200_000
    now = 0.0
    for _ in range(20):  # 20 s congested at the floor
        now += 1.0
        for peer in ("a", "b", "c"):
            up.report(peer, now, loss=0.1, queue_s=0.0, sent_bps=floor, wants_bps=TOP,
                      audio_bps=AUDIO, floor_bps=floor)
    at_floor = up.estimate_bps
    assert at_floor == pytest.approx(3 * floor)
    for _ in range(6):  # then clear for 6 s
        now += 0.25
        for peer in ("a", "b", "c"):
            up.report(peer, now, loss=0.0, queue_s=0.0, sent_bps=floor, wants_bps=TOP,
                      audio_bps=AUDIO, floor_bps=floor)
    for _ in range(20):
        now += 0.25
        for peer in ("a", "b", "c"):
            up.report(peer, now, loss=0.0, queue_s=0.0, sent_bps=floor, wants_bps=TOP,
                      audio_bps=AUDIO, floor_bps=floor)
    assert up.estimate_bps is not None and up.estimate_bps < at_floor * 1.3, (
        f"expected a slow start {t.congested_hold + 6.5:.1f} s after the congestion, "
        f"saw {up.estimate_bps:.0f} from {at_floor:.0f}")


def test_it_creeps_up_to_where_the_link_was_then_searches_beyond() -> None:
    """Up to a margin above what the link carried when it overloaded, the link is
    known to be there: creep; past it the link has grown, and growth doubles (seen
    here without the early release of a grown link, which would end the climb,
    and without probes, which these peers do not pad for)."""
    t = UplinkTuning(grown_share=math.inf, probe_every=0)
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)
    known = 2 * 500_000 * (1 - 0.2)  # what got through
    assert up.estimate_bps == pytest.approx(t.backoff * known)
    now, steps = t.congested_hold, []
    while up.estimate_bps is not None and up.estimate_bps < known * 3 and now < 100:
        before = up.estimate_bps
        now += 0.5
        for peer in ("a", "b"):
            report(up, peer, now, sent=before / 2, wants=50_000_000)
        if up.estimate_bps is not None and now > t.congested_hold + t.hold:
            steps.append((before / known, (up.estimate_bps / before) ** 2 - 1))
    creeping = [rate for level, rate in steps if level < t.known_margin]
    searching = [rate for level, rate in steps if level > t.known_margin * 1.5]
    assert creeping and max(creeping) == pytest.approx(t.increase_per_s, rel=0.05), (
        f"expected {t.increase_per_s}/s up to {t.known_margin} x the known link, saw {creeping}")
    assert searching and max(searching) > 4 * t.increase_per_s, (
        f"expected growth to speed up past it, saw {searching}")


def test_past_the_known_link_it_creeps_while_the_link_carries_no_more() -> None:
    """"Known" is a median of overloads' counts and can lie below the link. Without
    probes, past it the estimate doubles only once the link carries past it too,
    not while what gets through stays where it was (doubling there overshot a
    1 Mbit/s link by a quarter before the loss showed). With probes the creep
    stops at the known link (``creep_margin``): encoders filling 1.1 x it
    overloaded the link every 15-20 s."""
    for probes in (False, True):
        t = UplinkTuning(grown_share=math.inf, probe_every=UplinkTuning().probe_every * probes)
        up = Uplink(t)
        for peer in ("a", "b"):
            report(up, peer, 0.0, loss=0.2, sent=500_000)
        known = 2 * 500_000 * (1 - 0.2)
        now, steps, seen = t.congested_hold, [], []
        while up.estimate_bps is not None and up.estimate_bps < known * 2 and now < 60:
            before = up.estimate_bps
            now += 0.5
            for peer in ("a", "b"):  # the link takes ``known`` and no more, and loses nothing
                arrived(up, peer, now, got=min(before, known) / 2, sent=before / 2)
            if now > t.congested_hold + t.hold:
                steps.append((up.estimate_bps / before) ** 2 - 1)
                seen.append(up.estimate_bps)
        assert steps and max(steps) == pytest.approx(t.increase_per_s, rel=0.05), (
            f"expected {t.increase_per_s}/s at most, saw up to {max(steps):.3f}/s")
        if probes:
            assert max(seen) == pytest.approx(t.creep_margin * known), (
                f"expected the creep to stop at {t.creep_margin} x {known:.0f}, "
                f"saw {max(seen):.0f} (probes: {up.probes}, passed {up.probes_passed})")
        else:
            assert max(seen) > t.known_margin * known, "expected it to creep on without probes"


def test_up_to_the_known_link_an_unused_estimate_does_not_grow() -> None:
    """What gets through well under the estimate says nothing of the link above it,
    and once the peers catch up they overshoot it together. Past the known link it
    creeps on whatever we send: an encoder may never fill its share, and an
    estimate held there never finds a lifted cap (without probes: with them the
    creep stops at the known link, and they find it)."""
    t = UplinkTuning(grown_share=math.inf)
    up = Uplink(t)
    for peer in ("a", "b"):
        arrived(up, peer, 0.0, got=500_000, loss=0.1, sent=600_000)
    estimate = up.estimate_bps
    assert estimate is not None
    now = 0.0
    while now < t.release_after - 1:  # the peers send a third of it
        now += 0.5
        for peer in ("a", "b"):
            arrived(up, peer, now, got=estimate / 6, sent=estimate / 6, wants=estimate)
    assert up.estimate_bps == estimate, (
        f"expected {estimate:.0f} held while unused, saw {up.estimate_bps}")
    up = Uplink(replace(t, probe_every=0))
    for peer in ("a", "b"):
        arrived(up, peer, 0.0, got=500_000, loss=0.1, sent=600_000)
    known, now = 1_000_000, 0.0
    while up.estimate_bps is not None and up.estimate_bps <= t.known_margin * known \
            and now < 30:
        now += 0.5  # the peers send what they get
        sent = up.estimate_bps / 2
        for peer in ("a", "b"):
            arrived(up, peer, now, got=sent, sent=sent, wants=10 * known)
    assert now < 30, f"expected it to creep past the known link, at {now} s"
    past = up.estimate_bps
    for _ in range(6):  # past it, the peers fill 0.6 of it, and it still creeps
        now += 0.5
        for peer in ("a", "b"):
            arrived(up, peer, now, got=0.3 * past, sent=0.3 * past, wants=10 * known)
    assert up.estimate_bps is not None and up.estimate_bps > past


def test_no_cut_while_the_link_carries_more_than_the_estimate() -> None:
    """Sending about the estimate, a report still congested while the receivers
    count more than it arriving is the last overload draining: no cut (15 % a time
    took a 1 Mbit/s link to the peers' floor while it carried 912 kbit/s); what it
    carried is what the link is known to take. Without their counts, what we sent
    less the loss must be clearly more."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        arrived(up, peer, 0.0, got=400_000, loss=0.1, sent=600_000)
    estimate = up.estimate_bps
    assert estimate == pytest.approx(t.backoff * 800_000)
    now = t.decrease_interval + 0.5
    for peer in ("a", "b"):
        arrived(up, peer, now, got=1.01 * estimate / 2, loss=0.05, sent=estimate / 2)
    assert up.congested and up.estimate_bps == estimate, (
        f"expected no cut from {estimate:.0f}, saw {up.estimate_bps:.0f}")
    now += t.decrease_interval + 0.5
    for peer in ("a", "b"):  # it carries a little less than the estimate: cut
        arrived(up, peer, now, got=0.98 * estimate / 2, loss=0.05, sent=estimate / 2)
    assert up.estimate_bps == pytest.approx(t.backoff * 0.995 * estimate), (
        "cut at the first report: its 0.98 and the other's 1.01 x the estimate")
    # no counts: what we sent less the loss, a little more than the estimate
    estimate = up.estimate_bps
    now += t.decrease_interval + 0.5
    sent = 1.07 * estimate
    for peer in ("a", "b"):
        report(up, peer, now, loss=0.03, sent=sent / 2)
    assert up.estimate_bps == pytest.approx(t.backoff * estimate), (
        f"expected a cut from {estimate:.0f} ({sent * 0.97:.0f} got through, by our "
        f"count), saw {up.estimate_bps:.0f}")


def test_a_loss_burst_does_not_make_the_link_look_narrower_than_it_carried() -> None:
    """Creeping up, the total went through clean up to ~1 Mbit/s; the overload's own
    report loses a burst (30 %). The decrease backs off from what the link carried
    clean, not from the burst's through (which cut to the peers' floor before).
    (Without the jump of a link carried clear past the known one, nor a probe's:
    a creep here.)"""
    t = UplinkTuning(beyond_clear=math.inf, probe_every=0)
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)
    now = 0.0
    while up.estimate_bps is not None and up.estimate_bps < 1_000_000:  # creep, clean
        now += 0.5
        for peer in ("a", "b"):
            report(up, peer, now, sent=up.estimate_bps / 2, wants=50_000_000)
    assert now < 60, "it should have crept to 1 Mbit/s"
    peak = up.estimate_bps
    assert peak is not None
    now += 0.5
    for peer in ("a", "b"):
        report(up, peer, now, loss=0.3, queue=0.1, sent=peak / 2, wants=50_000_000)
    assert up.estimate_bps == pytest.approx(t.backoff * peak, rel=0.05), (
        f"expected {t.backoff} x the {peak:.0f} carried clean, saw {up.estimate_bps:.0f} "
        f"(through was {0.7 * peak:.0f})")


def test_a_decrease_does_not_cut_below_what_the_link_carries_now() -> None:
    """Right after a decrease we still send the old rate for a while (measured over
    seconds, followed by the encoder each second): a queue then is no reason to cut
    under 0.85 x what gets through; loss that cuts what gets through is."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, queue=0.1, sent=600_000)
    first = up.estimate_bps
    assert first == pytest.approx(t.backoff * 960_000)
    now = t.decrease_interval + 0.2
    for peer in ("a", "b"):  # still sending 1.2 Mbit/s, all of it through, a queue
        report(up, peer, now, queue=0.1, sent=600_000)
    assert up.estimate_bps == first, (
        f"expected no cut under {t.backoff} x the 1.2 Mbit/s carried, saw {up.estimate_bps}")
    now += t.decrease_interval + 0.2
    for peer in ("a", "b"):  # now half of it is lost
        report(up, peer, now, loss=0.5, queue=0.1, sent=600_000)
    assert up.estimate_bps is not None and up.estimate_bps < first


def test_a_link_that_grew_is_let_go_once_it_carries_well_past_its_old_size() -> None:
    """A cap lifted: the estimate climbs past what the link carried at its last
    overload, we send that much and nobody complains. The limit goes then, long
    before the estimate reaches what every peer wants (their top tiers)."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)  # the link carried 800 kbit/s
    now, sent_max = 0.0, 0.0
    while up.limited and now < 120:
        now += 0.5
        assert up.estimate_bps is not None
        sent = min(up.estimate_bps, 1_500_000.0)  # the peers follow, up to their tiers' rate
        sent += sum(up.padding_bps(p, now) or 0 for p in ("a", "b"))  # and a probe's padding
        sent_max = max(sent_max, sent)
        for peer in ("a", "b"):
            report(up, peer, now, sent=sent / 2, wants=50_000_000)
    assert not up.limited, "expected the limit dropped"
    assert sent_max >= t.grown_share * 800_000
    assert now < 40, f"expected it let go once 1.3 x the old link went through, took {now} s"


def arrived(up: Uplink, peer: str, now: float, *, got: float, loss: float = 0.0,
            queue: float = 0.0, sent: float = 500_000, wants: float = TOP,
            padding: float = 0.0) -> None:
    up.report(peer, now, loss=loss, queue_s=queue, sent_bps=sent, wants_bps=int(wants),
              audio_bps=AUDIO, arrived_bps=got, padding_bps=int(padding))


def test_what_receivers_counted_is_what_got_through_and_cuts_at_once() -> None:
    """Our sent rate is measured over 2 s: after a sudden cap it still holds the rate
    before it. The receivers' counts over their report intervals do not, and a cut
    to them is not bounded (halving at a time kept a 1 Mbit/s link overloaded 6 s)."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        arrived(up, peer, 10.0, got=2_000_000, loss=0.3, sent=4_000_000)  # the onset
    first = up.estimate_bps
    assert first is not None and first == pytest.approx(t.backoff * 4_000_000)
    now = 10.0
    for _ in range(2):  # the link: 1 Mbit/s; the peers follow the estimate
        now += t.decrease_interval + 0.5
        assert up.estimate_bps is not None
        sent = 0.95 * up.estimate_bps / 2
        for peer in ("a", "b"):
            arrived(up, peer, now, got=500_000, loss=0.4, sent=sent)
    # (the first of them still sums b's report from the onset: reports interleave)
    assert up.estimate_bps == pytest.approx(t.backoff * 1_000_000), (
        f"expected a cut to {t.backoff} x the 1 Mbit/s the receivers counted within "
        f"two reports, from {first:.0f}, saw {up.estimate_bps}")


def test_a_queue_forming_holds_growth() -> None:
    """Creeping up to the link, a queue (RTT above base, short of congestion) is the
    sign the total has reached it: growth holds there instead of overshooting."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=400_000)
    held_at = up.estimate_bps
    now = 0.0
    for _ in range(20):  # clear, but a queue of growth_queue
        now += 0.5
        for peer in ("a", "b"):
            report(up, peer, now, queue=t.growth_queue, sent=400_000)
    assert up.estimate_bps == held_at, f"expected held at {held_at}, saw {up.estimate_bps}"
    for _ in range(10):  # the queue drained: growth resumes
        now += 0.5
        for peer in ("a", "b"):
            report(up, peer, now, queue=0.0, sent=400_000)
    assert up.estimate_bps is not None and held_at is not None
    assert up.estimate_bps > held_at


@pytest.mark.parametrize("overloads", [1, 3])
def test_the_known_link_is_the_median_of_the_last_overloads(overloads: int) -> None:
    """A first overload that straddles a cap's onset counts far more than the link;
    once more overloads have shown its real size, a lifted cap is recognised from
    that (as the most ever carried it was never recognised). After one more, the
    lower of the two counts (their mean was 3.6 Mbit/s on a 1 Mbit/s link)."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        arrived(up, peer, 0.0, got=2_000_000, loss=0.3, sent=2_000_000)  # the onset
    now = t.window - t.decrease_interval  # the onset's reports gone from the next count
    for _ in range(overloads):  # overloads of the 900 kbit/s link, the peers following
        now += t.decrease_interval + 0.5
        assert up.estimate_bps is not None
        for peer in ("a", "b"):
            arrived(up, peer, now, got=450_000, loss=0.3, sent=0.95 * up.estimate_bps / 2)
    assert up.estimate_bps is not None and up.estimate_bps < 900_000
    while up.limited and now < 60:  # the cap lifted: everything sent arrives
        now += 0.5
        assert up.estimate_bps is not None
        sent = min(up.estimate_bps, 3_000_000.0) / 2
        sent += sum(up.padding_bps(p, now) or 0 for p in ("a", "b")) / 2
        for peer in ("a", "b"):
            arrived(up, peer, now, got=sent, sent=sent)
    assert not up.limited and up.released == "grown", (
        f"expected the limit let go as grown, saw {up.released!r} after {now} s")
    assert now < 30, f"expected it let go soon after 1.3 x 900 kbit/s went through, took {now} s"


def test_one_report_that_reads_past_the_link_does_not_let_go() -> None:
    """Each receiver counts over its own report's interval, timed by when the
    report reaches us, and what we sent over 2 s holds a burst (key frames, a
    repair): both can read well past the link at once. The link has grown only
    if what gets through stays past it."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        arrived(up, peer, 0.0, got=450_000, loss=0.3, sent=600_000)  # a 900 kbit/s link
    now = 0.0
    while now < 20:
        now += 0.5
        assert up.estimate_bps is not None, f"let go at {now} s: {up.released!r}"
        sent = min(up.estimate_bps, 900_000.0) / 2
        if now == 10.0:  # one report pair reads 1.5 x
            sent *= 1.5
        for peer in ("a", "b"):
            arrived(up, peer, now, got=sent, sent=sent)
    assert up.limited, f"expected still limited, released as {up.released!r}"


def _lifted(up: Uplink, known: float, link: float, until: float) -> tuple[float, float | None]:
    """After an overload that showed ``known``, the peers send what the estimate
    gives, and what a probe pads with, over a link of ``link`` (past it, a queue
    and loss). (When what got through first passed the known margin, when the
    estimate first reached ``jump_share`` x the known link or ``jump_carried`` x
    what got through, or None.)"""
    t, now = up.tuning, 0.0
    passed, jumped = math.inf, None
    while now < until and up.estimate_bps is not None:
        now += 0.25
        sent = up.estimate_bps + sum(up.padding_bps(p, now) or 0 for p in ("a", "b"))
        got = min(sent, link)
        over = max(0.0, sent - link) / sent
        for peer in ("a", "b"):
            arrived(up, peer, now, got=got / 2, sent=sent / 2, loss=over,
                    queue=0.06 if over else 0.0, wants=50_000_000)
        if got > t.known_margin * known:
            passed = min(passed, now)
        if jumped is None and up.estimate_bps is not None and (
                up.estimate_bps >= min(t.jump_share * known, t.jump_carried * got) * 0.999):
            jumped = now
    return passed, jumped


def test_carried_past_the_known_link_clear_it_jumps_to_show_the_link_grown() -> None:
    """A cap lifted: once what gets through stays past the known link for
    ``beyond_clear`` without a complaint, a probe pads up to ``jump_share`` x
    it (at most ``jump_carried`` x what got through); carried, the estimate
    jumps there, so the encoders show the link grown at once (doubling up to
    it took 4-6 s of the recovery). A link only a little wider than the known
    one overloads first: no jump there."""
    t = UplinkTuning(grown_share=math.inf)
    known = 800_000
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)  # the link carried 800 kbit/s
    passed, jumped = _lifted(up, known, link=10_000_000, until=40.0)
    due = t.beyond_clear + t.probe_s
    assert jumped is not None and jumped - passed <= due, (
        f"expected a jump to {t.jump_share} x {known} within {due} s of what got "
        f"through passing {t.known_margin} x it at {passed} s, saw it at {jumped} s")
    assert up.jumps == 1 and up.probes_passed >= 1, (up.jumps, up.probes_passed)

    # the same without probes (none could start): the creep past the margin jumps
    up = Uplink(replace(t, probe_every=0))
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)
    passed, jumped = _lifted(up, known, link=10_000_000, until=40.0)
    assert jumped is not None and jumped - passed <= t.beyond_clear + 0.5, (passed, jumped)

    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)
    passed, jumped = _lifted(up, known, link=t.known_margin * known * 1.02, until=40.0)
    assert passed < 40.0 and jumped is None, (
        f"expected no jump on a link 1.02 x past the margin (got through past it at "
        f"{passed} s), saw one at {jumped} s")


def test_a_peers_own_queue_is_what_it_queues_above_the_others() -> None:
    """While the uplink is congested its queue is every peer's, answered once by
    the uplink; a peer behind its own slow downlink queues on top of it, and that
    excess is its own estimator's to hear (ignored whole, a viewer's 450 ms queue
    went unheard)."""
    up = Uplink()
    for peer in ("a", "b", "c"):
        report(up, peer, 10.0, queue=0.0)
    assert not up.congested
    assert up.own_queue("c", 0.45) == 0.45, "no shared bottleneck: all of it is its own"
    for peer, queue in (("a", 0.06), ("b", 0.05), ("c", 0.45)):
        report(up, peer, 11.0, loss=0.1, queue=queue)
    assert up.congested
    assert up.own_queue("c", 0.45) == pytest.approx(0.39)
    assert up.own_queue("a", 0.06) == 0.0 and up.own_queue("b", 0.05) == 0.0


def test_what_the_link_carried_long_before_an_overload_does_not_hold_off_its_decrease() -> None:
    """The most that got through with clean reports counts for an overload only if it
    is recent: a limit set once (a congestion as the viewers joined) and then
    idle for a minute kept a key frame's burst from 50 s before as "carried",
    and a cap then went 12 s without a decrease (Chromium viewers, whose NACKs
    kept what we send at the estimate): every viewer froze 7.6 s."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):  # the limit: set as the viewers joined
        arrived(up, peer, 0.0, got=1_500_000, loss=0.3, sent=2_000_000)
    estimate = up.estimate_bps
    assert estimate is not None
    now = 0.0
    while now < 60.0:  # idle under it, and one burst past it, 50 s before the cap
        now += 0.5
        got = 1.3 * estimate / 2 if now == 10.0 else 0.6 * estimate / 2
        for peer in ("a", "b"):
            arrived(up, peer, now, got=got, sent=got)
    estimate = up.estimate_bps
    assert estimate is not None and not up.congested
    # the cap: we send about the estimate (resends included); a third gets through
    cap = now
    while up.estimate_bps == estimate and now < cap + 3.0:
        now += 0.5
        for peer in ("a", "b"):
            arrived(up, peer, now, got=0.3 * estimate / 2, loss=0.7, queue=0.2,
                    sent=0.95 * estimate / 2)
    assert up.estimate_bps is not None and up.estimate_bps < 0.5 * estimate, (
        f"expected a cut towards the 30 % that got through within {now - cap} s of the "
        f"cap; the estimate went {estimate:.0f} -> {up.estimate_bps}")


def test_through_under_half_the_estimate_is_a_narrower_link_not_a_lost_burst() -> None:
    """What the link carried just before an overload stands for the burst its own
    reports lose (30 % in one report), not for a link a cap made eight times
    narrower: a limit left from the viewers joining (8 Mbit/s) and the 8.2
    Mbit/s carried just before a 1 Mbit/s cap held off its first decrease 2.2 s."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):  # the viewers join: a congestion, a limit
        arrived(up, peer, 0.0, got=4_700_000, loss=0.1, sent=5_000_000)
    limit = up.estimate_bps
    assert limit is not None
    now = 0.0
    wants = 3 * limit  # each viewer's own link: the top tier, more than the limit
    while now < 20.0:  # clear: we send all of it and more (a tier's fixed rate)
        now += 0.5
        for peer in ("a", "b"):
            arrived(up, peer, now, got=0.55 * limit, sent=0.55 * limit, wants=wants)
    estimate = up.estimate_bps
    assert estimate is not None and not up.congested
    for peer in ("a", "b"):  # the cap: an eighth of it gets through
        now += 0.2
        arrived(up, peer, now, got=estimate / 16, loss=0.8, queue=0.2, sent=0.55 * estimate,
                wants=wants)
    assert up.estimate_bps == pytest.approx(t.backoff * estimate / 8), (
        f"expected {t.backoff} x the {estimate / 8:.0f} that got through at the cap's "
        f"first reports, saw {estimate:.0f} -> {up.estimate_bps}")


def _straddled_onset(t: UplinkTuning, up: Uplink) -> tuple[float, float]:
    """Three peers at 2.9 Mbit/s each; a 1 Mbit/s cap at t=10, whose first decrease
    reads two reports that straddle it and c's from before. Returns (the first
    decrease's time, its estimate)."""
    for peer in ("a", "b", "c"):
        arrived(up, peer, 9.8, got=2_900_000, sent=2_900_000)
    arrived(up, "a", 10.5, got=1_500_000, loss=0.5, queue=0.1, sent=2_900_000)
    arrived(up, "b", 10.7, got=1_500_000, loss=0.5, queue=0.1, sent=2_900_000)
    first = up.estimate_bps
    assert first is not None and first > 2 * 1_000_000, "the case: a first decrease far " \
        f"above the link, saw {first}"
    return 10.7, first


def test_reports_after_a_decrease_that_read_half_of_it_cut_without_waiting() -> None:
    """A cap's first decrease reads reports that straddle its onset (3.8 Mbit/s on
    a 1 Mbit/s link), and waiting ``decrease_interval`` for the next held the
    link overloaded 1.3-1.6 s more. Reports from two peers since, all overloaded,
    that read the link under half the estimate cut at once, to what they read."""
    t = UplinkTuning()
    up = Uplink(t)
    decreased, first = _straddled_onset(t, up)
    # each gets a third of the link: 1/3 Mbit/s of the 2.9 we send it
    arrived(up, "c", decreased + 0.2, got=1_000_000 / 3, loss=0.8, queue=0.15,
            sent=2_900_000)
    assert up.estimate_bps == first, "one peer's report alone is not the shared link"
    arrived(up, "a", decreased + 0.4, got=1_000_000 / 3, loss=0.8, queue=0.15,
            sent=2_900_000)
    assert t.decrease_interval > 0.4, "the case: sooner than decreases are spaced"
    assert up.estimate_bps == pytest.approx(t.backoff * 1_000_000), (
        f"expected a cut to {t.backoff} x the 1 Mbit/s that two reports since the "
        f"decrease read, 0.4 s after it; the estimate went {first:.0f} -> {up.estimate_bps}")


def test_what_the_onset_read_is_forgotten_once_reports_read_the_link_narrower() -> None:
    """The decreases at a cap's onset read reports that straddle it. Once reports
    since a decrease read the link under half the estimate, what the decreases
    before read is not the link: kept, two such readings outvoted the real one
    for "known" (g2: 8.3 and 2.8 Mbit/s of a 2 Mbit/s cap against 1.5), and the
    estimate crept to 1.12 x the link."""
    t = UplinkTuning()
    up = Uplink(t)
    decreased, first = _straddled_onset(t, up)
    straddled = 1_400_000  # the next reading straddles the onset too
    assert straddled < t.max_cut * first
    for peer in ("c", "a"):
        arrived(up, peer, decreased + 0.3, got=straddled / 3, loss=0.6, queue=0.15,
                sent=2_900_000)
    assert up.estimate_bps == pytest.approx(t.backoff * straddled)
    link, now = 1_000_000, decreased + 0.3
    episodes = up.episodes  # the onset's
    while now < decreased + 40:  # the peers follow the estimate over the 1 Mbit/s link
        now += 0.5
        assert up.estimate_bps is not None
        sent = up.estimate_bps / 3
        over = max(0.0, 3 * sent - link) / (3 * sent)
        for peer in ("a", "b", "c"):
            arrived(up, peer, now, got=sent * (1 - over), loss=over,
                    queue=0.1 if over else 0.0, sent=sent)
    assert up.episodes == episodes and up.estimate_bps is not None \
        and up.estimate_bps <= t.creep_margin * link * 1.01, (
            f"expected the creep to stop short of the {link} link (known from it, not "
            f"from the onset), and no overload after the onset's; saw "
            f"{up.episodes - episodes}, the estimate at {up.estimate_bps:.0f}")


def test_a_limit_far_above_what_we_send_is_cut_at_the_next_congestion() -> None:
    """A first decrease that read through a cap's onset, and the peers' own
    estimates took them under the link before a second: the limit sat at 2.3 x
    the link, and no later congestion cut it (we sent under 0.9 x it, and the
    congestion did not last 2.5 s, as it then had to); 20 s on, the
    peers' own estimates grew into the link together (scenario g1: a 3.2 s
    freeze). The next congestion whose reports read the link under half the
    estimate cuts it at once."""
    t = UplinkTuning()
    up = Uplink(t)
    _straddled_onset(t, up)
    first = up.estimate_bps
    assert first is not None
    now = 10.7
    while now < 16.0:  # the peers' own estimates: a sixth of the limit, clear
        now += 0.5
        for peer in ("a", "b", "c"):
            arrived(up, peer, now, got=first / 18, sent=first / 18)
    assert up.estimate_bps == first, "the case: nothing cut it while clear"
    for peer in ("a", "b"):  # a short congestion: what got through, a sixth of it
        now += 0.3
        arrived(up, peer, now, got=0.95 * first / 18, loss=0.05, queue=0.06,
                sent=first / 18)
    assert up.estimate_bps is not None and up.estimate_bps <= 0.2 * first, (
        f"expected a cut to {t.backoff} x the {first / 6:.0f} the reports read, at the "
        f"congestion's second report; the estimate went {first:.0f} -> {up.estimate_bps}")


def test_a_peer_behind_its_own_slow_link_does_not_cut_the_uplink_early() -> None:
    """Reports since the decrease count at their highest reading: c behind its own
    300 kbit/s downlink reads its link, and a's report reads the uplink wider than
    half the estimate. No early cut: decreases stay spaced."""
    t = UplinkTuning()
    up = Uplink(t)
    decreased, first = _straddled_onset(t, up)
    arrived(up, "c", decreased + 0.2, got=300_000, loss=0.8, queue=0.15, sent=2_900_000)
    arrived(up, "a", decreased + 0.4, got=0.4 * first, loss=0.3, queue=0.15,
            sent=2_900_000)
    assert up.estimate_bps == first, (
        f"expected no cut before {t.decrease_interval} s, saw {first:.0f} -> "
        f"{up.estimate_bps}")


# -- probes -------------------------------------------------------------------------
def _until_probe(up: Uplink, got: float, peers: tuple[str, ...] = ("a", "b")) -> float:
    """``peers`` each send ``got`` clear, which all gets through, until a probe
    starts (or 10 s): when it started."""
    now = 0.0
    while up.probe is None and now < 10:
        now += 0.25
        for peer in peers:
            arrived(up, peer, now, got=got, sent=got, wants=50_000_000)
    return now




def _probe_run(up: Uplink, link: float, until: float, *, remb: bool = False,
               start: float = 0.0) -> tuple[float, list[float]]:
    """Two peers send what the estimate gives (90 % of it, as the encoders do) plus
    what the probe pads with, over a link of ``link``: past it, loss and a queue;
    with ``remb``, each receiver's REMB falls as soon as the link queues. (When
    the estimate first jumped by a probe, or inf; the estimate at each step.)"""
    t, now = up.tuning, start
    jumped, seen = math.inf, []
    while now < until and up.estimate_bps is not None:
        now += 0.25
        before = up.probes_passed
        encoders = 0.9 * up.estimate_bps
        padding = sum(up.padding_bps(p, now) or 0 for p in ("a", "b"))
        sent = encoders + padding
        got = min(sent, link)
        over = max(0.0, sent - link) / sent
        for peer in ("a", "b"):
            if remb:
                up.remb(peer, now, 0.85 * got / 2 if over else 50_000_000)
            arrived(up, peer, now, got=got / 2, sent=sent / 2, loss=over,
                    queue=0.06 if over else 0.0, wants=50_000_000, padding=padding / 2)
        seen.append(up.estimate_bps or 0.0)
        if up.probes_passed != before:
            jumped = min(jumped, now)
            break
    assert t.probe_every > 0
    return jumped, seen


def test_a_probe_pads_past_the_known_link_and_a_link_that_carries_it_has_grown() -> None:
    """Right after an overload (the estimate backed off, the encoders trailing it)
    a cap lifts. The encoders' creep would show it only once the estimate had
    grown ~1.2 x the known link (13-15 s); the probe's padding shows it within a
    probe's time of the hold, and the estimate jumps."""
    t = UplinkTuning()
    known = 800_000
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)  # the link carried 800 kbit/s
    assert up.estimate_bps == pytest.approx(t.backoff * known)
    first, _ = _probe_run(up, link=10_000_000, until=30.0)
    due = t.hold + t.probe_s + t.probe_judge + 0.5
    assert first <= due, f"expected a probe to find the link wider within {due} s, saw {first}"
    assert up.last_pass == "raised" and up.jumps == 0, (up.last_pass, up.jumps)
    jumped, _ = _probe_run(up, link=10_000_000, until=30.0, start=first)
    due = first + t.probe_s
    assert jumped <= due, f"expected the next probe to find it grown by {due} s, saw {jumped}"
    assert up.last_pass == "grown" and up.jumps == 1
    assert up.estimate_bps is not None and up.estimate_bps >= t.jump_share * known * 0.99

    slow = Uplink(replace(t, probe_every=0))  # the same without probes: the creep alone
    for peer in ("a", "b"):
        report(slow, peer, 0.0, loss=0.2, sent=500_000)
    now = 0.0
    while now < due:
        now += 0.25
        assert slow.estimate_bps is not None
        sent = 0.9 * slow.estimate_bps
        for peer in ("a", "b"):
            arrived(slow, peer, now, got=sent / 2, sent=sent / 2, wants=50_000_000)
    assert slow.estimate_bps is not None and slow.estimate_bps < t.known_margin * known, (
        f"without probes the estimate should still creep at {due} s, saw {slow.estimate_bps}")


def test_past_a_known_link_read_low_the_probes_raise_it_and_find_it_lifted() -> None:
    """"Known" read under the link: a probe finds the rest, the estimate rises to
    what got through and creeps no further (nothing but probes grows it past the
    creep's ceiling). A cap lifted later is still found by the probes."""
    t = UplinkTuning()
    known, link = 800_000, 1_000_000
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)
    first, _ = _probe_run(up, link=link, until=30.0)
    assert first < 30.0 and up.last_pass == "raised", (first, up.last_pass)
    assert up.estimate_bps is not None and t.known_margin * known < up.estimate_bps <= link, (
        f"expected the estimate raised past {t.known_margin} x {known} up to the {link} "
        f"link, saw {up.estimate_bps}")
    probes = up.probes
    passed, seen = _probe_run(up, link=link, until=first + 30.0, start=first)
    assert passed == math.inf and max(seen) <= link, (
        f"expected no pass and the estimate at most the {link} link for 30 s, saw a pass "
        f"at {passed} and up to {max(seen):.0f}")
    assert up.probes >= probes + 3, f"expected the probes to go on, saw {up.probes - probes}"
    start = first + 30.0
    grown, _ = _probe_run(up, link=10 * link, until=start + 30.0, start=start)
    due = start + t.probe_every + t.probe_s + t.probe_judge
    assert grown <= due, f"expected a probe to find the cap lifted by {due} s, saw {grown}"


def test_a_probe_the_capped_link_does_not_carry_ends_and_cuts_nothing() -> None:
    """Under a cap the probe's padding overloads the link: the probe ends, and the
    congestion it caused is not news of the link (no decrease, no jump). The
    encoders' own overload, later, still cuts."""
    t = UplinkTuning()
    known = 800_000
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)
    estimate = up.estimate_bps
    assert estimate is not None
    # the link carries the known link and a little (what the encoders send fits)
    _, seen = _probe_run(up, link=known * 1.02, until=t.hold + t.probe_s + 1.0)
    assert up.probes >= 1 and up.probes_passed == 0, "expected a probe, and no link grown"
    assert min(seen) >= estimate, (
        f"expected no decrease for the probe's own overload, saw {min(seen):.0f} "
        f"from {estimate:.0f}")
    # the encoders creep no further than the known link: the probes go on, none
    # carried, and nothing overloads but their padding
    start = t.hold + t.probe_s + 1.0
    jumped, seen = _probe_run(up, link=known * 1.02, until=60.0, start=start)
    assert jumped == math.inf and up.probes >= 3, (up.probes, jumped)
    assert max(seen) <= t.creep_margin * known * 1.001 and min(seen) >= estimate, (
        f"expected the estimate between {estimate:.0f} and {t.creep_margin} x the known "
        f"{known}, saw {min(seen):.0f}-{max(seen):.0f}")
    # the link narrows under what the encoders send: their own overload still cuts
    jumped, seen = _probe_run(up, link=0.8 * known, until=80.0, start=60.0)
    assert min(seen) < max(seen) * t.backoff * 1.05, (
        f"expected the encoders' own overload to cut the estimate, saw {min(seen):.0f} "
        f"at least, {max(seen):.0f} at most")


def test_a_falling_remb_ends_a_probe_before_the_queue_overflows() -> None:
    """A receiver's delay-based estimator sees the queue the padding builds within
    a few hundred ms; our RTT, one sample per sender report, only after the
    queue overflowed. A REMB lower than the peer's last stops that peer's padding
    at once; a second peer's ends the probe (a shared queue shows in every
    receiver's; one receiver's dips by itself too)."""
    t = UplinkTuning()
    assert t.probe_remb_peers == 2
    up = Uplink(t)
    peers = ("a", "b", "c")
    for peer in peers:
        report(up, peer, 0.0, loss=0.2, sent=500_000)
        up.remb(peer, 0.0, 900_000)
    now = _until_probe(up, got=300_000, peers=peers)
    assert up.probe is not None, "expected a probe after the hold"
    assert all((up.padding_bps(p, now) or 0) > 0 for p in peers)
    up.remb("a", now + 0.1, 950_000)  # a rise: nothing
    up.remb("b", now + 0.2, 0.8 * 900_000)  # one fall: b's padding stops
    assert up.probe is not None and up.padding_bps("b", now + 0.2) is None
    assert (up.padding_bps("a", now + 0.2) or 0) > 0
    up.remb("c", now + 0.3, 0.8 * 900_000)  # a second: the probe ends
    assert up.probe is None and up.padding_bps("a", now + 0.3) is None
    assert up.probes_stopped == 1 and up.probes_passed == 0


def test_a_caps_onset_during_a_probe_is_cut_at_once() -> None:
    """Far less got through than the known link: not the probe's padding but a
    narrower link. It is cut as any onset is, probe or not."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)
    now = _until_probe(up, got=300_000)
    assert up.probe is not None
    before = up.estimate_bps
    assert before is not None
    now += 0.25
    for peer in ("a", "b"):  # the encoders and the padding send the estimate
        arrived(up, peer, now, got=100_000, sent=before / 2, loss=0.5, queue=0.1,
                wants=50_000_000)
    assert up.estimate_bps is not None and up.estimate_bps < 0.5 * before, (
        f"expected a cut to what got through, saw {up.estimate_bps:.0f} from {before:.0f}")


def test_a_probe_pads_only_peers_whose_own_link_has_room() -> None:
    """A viewer behind its own slow downlink takes no padding (it would overflow its
    link and back its own estimate off at each probe); the others share it."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b", "c"):
        report(up, peer, 0.0, loss=0.2, sent=300_000)
    each = 0.85 * up._known_bps / 3  # the peers send under the link they showed
    now = 0.0
    while up.probe is None and now < 10:
        now += 0.25
        for peer in ("a", "b"):
            arrived(up, peer, now, got=each, sent=each, wants=2_000_000)
        arrived(up, "c", now, got=each, sent=each, wants=int(each) + 5_000)  # its link: full
    assert up.probe is not None, "expected a probe after the hold"
    padding = up.probe.padding_bps
    assert padding.get("c", 0) <= 5_000, f"expected (almost) no padding for c, saw {padding}"
    assert padding["a"] == padding["b"] > 0
    assert up.probe.total_bps == pytest.approx(
        t.probe_share * up._known_bps - 3 * each, abs=3), padding


def test_every_padded_peer_starts_to_pad_when_a_probe_starts() -> None:
    """Whichever peer's report starts a probe, each peer it pads is told at once (not
    at its own next report, up to 1.5 s later with aiortc's receivers); a peer
    with no room is not, and a peer that left is never called again."""
    t = UplinkTuning()
    up = Uplink(t)
    started: list[tuple[str, int]] = []
    for peer in ("a", "b", "c"):
        up.on_probe(peer, lambda peer=peer: started.append((peer, up.probes)))
        report(up, peer, 0.0, loss=0.2, sent=300_000)
    each = 0.85 * up._known_bps / 3
    now = 0.0
    while up.probe is None and now < 10:
        now += 0.25
        arrived(up, "a", now, got=each, sent=each, wants=2_000_000)
        if up.probe is not None:  # a's report started it: b has not reported since
            break
        arrived(up, "b", now, got=each, sent=each, wants=2_000_000)
        arrived(up, "c", now, got=each, sent=each, wants=int(each))  # its link: full
    assert up.probe is not None, "expected a probe after the hold"
    assert sorted(started) == [("a", 1), ("b", 1)], (
        f"expected a and b told once as probe 1 started, c not; saw {started}")

    up.forget("b")
    started.clear()
    while up.probes < 2 and now < 30:
        now += 0.25
        arrived(up, "a", now, got=each, sent=each, wants=2_000_000)
        arrived(up, "c", now, got=each, sent=each, wants=2_000_000)
    assert up.probes == 2, "expected a second probe"
    assert sorted(p for p, _ in started) == ["a", "c"], started


def test_a_known_link_read_above_the_overloads_is_probed_in_two_steps() -> None:
    """"Known" can read above what got through at the overloads (a clean burst
    counted). A probe past the overloads' level cannot then pass the known margin:
    withheld, as once, none came and the creep alone found a lifted cap (~21 s).
    Now the first pass raises the estimate to what got through (no jump from a
    "known" that may be too high), the next probe, from there, passes the known
    link, and the one after it pads up to the jump at once."""
    t = UplinkTuning()
    overloads = 800_000
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)  # 800 kbit/s got through
    up._known_bps = known = 1.2 * overloads  # and a clean peak counted in "known"
    assert t.probe_pass * t.probe_share * overloads <= t.known_margin * known, \
        "the case a probe was withheld in"
    first, _ = _probe_run(up, link=10_000_000, until=30.0)
    due = t.hold + t.probe_s + t.probe_judge + 0.5
    assert first <= due, f"expected a first probe to pass within {due} s, saw {first}"
    estimate = up.estimate_bps
    assert estimate is not None
    assert t.known_margin * overloads < estimate <= t.known_margin * known, (
        f"expected the estimate at what got through, past the overloads' margin "
        f"({t.known_margin * overloads:.0f}) and no jump, saw {estimate:.0f}")
    second, _ = _probe_run(up, link=10_000_000, until=60.0, start=first)
    due = first + t.probe_s  # at once, not ``probe_every`` on
    assert second <= due, f"expected the next probe to pass the known link by {due} s, " \
        f"saw {second}"
    third, _ = _probe_run(up, link=10_000_000, until=60.0, start=second)
    due = second + t.probe_s
    assert third <= due and up.jumps == 1, (
        f"expected the one after at once to find it grown by {due} s, saw {third}, "
        f"{up.jumps} jumps")
    assert up.estimate_bps is not None and up.estimate_bps >= t.jump_share * known * 0.99


def test_a_two_step_probe_under_a_cap_goes_no_further_than_the_link() -> None:
    """The same "known" read too high, and the cap still on: probes come, and none
    passes (the link carries no more than the overloads showed)."""
    t = UplinkTuning()
    overloads = 800_000
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)
    up._known_bps = 1.2 * overloads
    link = 1.02 * overloads
    _probe_run(up, link=link, until=40.0, remb=True)
    assert up.probes >= 3 and up.probes_passed == 0, (up.probes, up.probes_passed)


@pytest.mark.parametrize("under", [0.77, 0.87])
def test_a_known_link_read_under_the_link_is_not_jumped_past_it(under: float) -> None:
    """"Known" read under the link (an overload's count short of what the link
    carries). A probe then passes the known margin, and the creep goes past it
    clear, on a link that did not grow: a jump from there (``jump_share`` x
    "known") overloaded it (a 1.5 s freeze, scenario g1). Now the jump is probed
    first: the padding up to it is not carried, and the estimate stays near the
    link (the encoders' creep past it is the usual overload, and cut)."""
    t = UplinkTuning()
    link = 1_000_000
    up = Uplink(t)
    for peer in ("a", "b"):  # the overload's count: ``under`` x the link got through
        report(up, peer, 0.0, loss=0.2, sent=under * link / 2 / 0.8)
    assert up._known_bps == pytest.approx(under * link)
    assert t.jump_share * under > 1.1, "a jump from this known would overshoot the link"
    now, seen = 0.0, []
    while now < 60.0:
        _, estimates = _probe_run(up, link=link, until=60.0, remb=True, start=now)
        seen += estimates
        now += 0.25 * max(len(estimates), 1)
    # (what the encoders send trails the estimate by ~10 %: 1.2 x is ~1.08 x the link)
    assert max(seen) <= 1.2 * link, (
        f"expected the estimate within 1.2 x the link, saw it up to {max(seen) / link:.2f} x")
    assert up.jumps == 0, f"expected no jump, saw {up.jumps}"


def test_a_jump_the_link_carried_lets_go_while_the_encoders_take_it_up() -> None:
    """The padding that showed the link grown stops before the encoders send as
    much (a reopen, a tier's ramp). Counted afresh from there, the "grown" clock
    kept the limit 4-5 s longer (scenario g1); now it runs on through the
    hand-over, and the limit goes ``grown_clear`` after the link first carried
    1.3 x its old size."""
    t = UplinkTuning()
    known = 800_000
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)
    now = 0.0
    while up.jumps == 0 and now < 30.0:
        passed, _ = _probe_run(up, link=10_000_000, until=30.0, start=now)
        now = passed
    assert up.jumps == 1 and up.last_pass == "grown", (up.jumps, up.last_pass, now)
    jumped, lag = now, 1.5
    while up.limited and now < jumped + 10.0:
        now += 0.25
        assert up.estimate_bps is not None
        # the encoders send what they sent before the jump for ``lag``, then take it up
        sent = 1.15 * known if now - jumped < lag else 0.9 * up.estimate_bps
        for peer in ("a", "b"):
            arrived(up, peer, now, got=sent / 2, sent=sent / 2, wants=50_000_000)
    assert not up.limited and up.released == "grown", (
        f"expected the limit let go as grown, saw {up.released!r} at {now - jumped:.2f} s")
    assert now - jumped <= t.grown_clear, (
        f"expected it let go within {t.grown_clear} s of the jump, took {now - jumped:.2f} s")


def test_a_probe_raises_the_estimate_to_the_least_its_passing_updates_read() -> None:
    """Through a tbf's burst allowance one update can read ~13 % past the link.
    A pass raises the estimate to the least of the updates that passed, not the
    last (1.05-1.13 Mbit/s "carried" through a 1 Mbit/s cap, then an overload)."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)
        up._known_bps = 1_000_000  # the known link (the overloads read it too)
    now = _until_probe(up, got=450_000)
    assert up.probe is not None, "expected a probe after the hold"
    readings = [1_180_000, 1_100_000, 1_240_000]  # each past what the probe needs
    for got in readings:
        now += 0.25
        for peer in ("a", "b"):
            arrived(up, peer, now, got=got / 2, sent=got / 2, wants=50_000_000)
        if up.probes_passed:
            break
    assert up.probes_passed == 1 and up.last_pass == "raised", (up.probes_passed, up.last_pass)
    # (each peer's report updates the sum: the updates read mixes of two readings)
    assert up.estimate_bps is not None and up.estimate_bps <= min(readings), (
        f"expected the estimate at the least passing update, saw {up.estimate_bps}")


def test_a_probe_pads_up_from_what_the_encoders_send_not_the_last_probes_padding() -> None:
    """What we send is measured over 2 s: right after a probe it still holds the
    padding. A probe sized from it padded too little and could not pass (a
    lifted cap found 8-10 s later); the padding each report counts is taken out."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)
    media, old_padding = 300_000, 100_000  # per peer
    now = 0.0
    while up.probe is None and now < 10:
        now += 0.25
        for peer in ("a", "b"):
            up.report(peer, now, loss=0.0, queue_s=0.0, sent_bps=media + old_padding,
                      wants_bps=50_000_000, audio_bps=AUDIO, arrived_bps=media + old_padding,
                      padding_bps=old_padding)
    assert up.probe is not None, "expected a probe after the hold"
    level = t.probe_share * up._probe_base()
    assert up.probe.sent_bps == pytest.approx(2 * media)
    assert up.probe.total_bps == pytest.approx(level - 2 * media, abs=2), (
        f"expected padding up from the encoders' {2 * media}, saw {up.probe.total_bps} "
        f"for a level of {level:.0f}")


def test_one_count_that_straddles_the_onset_does_not_make_the_link_read_wider() -> None:
    """Reports since a decrease read the link each by its share of what we send; one
    that straddles the onset reads far past it. The upper median counts, not the
    highest (the highest of five read 3.04 Mbit/s of a 2 Mbit/s cap: "known" and
    the probes then went 1.5-1.9 x past the link, scenario g2)."""
    t = UplinkTuning()
    up = Uplink(t)
    peers = ("a", "b", "c", "d", "e")
    for peer in peers:
        arrived(up, peer, 9.8, got=1_200_000, sent=1_200_000)
    for n, peer in enumerate(("a", "b", "c")):  # a 2 Mbit/s cap: the first reports straddle it
        arrived(up, peer, 10.5 + 0.1 * n, got=1_000_000, loss=0.3, queue=0.1, sent=1_200_000)
    first = up.estimate_bps
    assert first is not None and first > 4_000_000, f"the case: a first decrease far past, {first}"
    # since: c's count still straddles (6 Mbit/s scaled), a's and b's read the link
    for n, (peer, got) in enumerate((("c", 1_200_000), ("a", 400_000), ("b", 400_000))):
        arrived(up, peer, 10.8 + 0.1 * n, got=got, loss=0.5, queue=0.15, sent=1_200_000)
    assert up.estimate_bps == pytest.approx(t.backoff * 2_000_000), (
        f"expected a cut to {t.backoff} x the 2 Mbit/s most reports read, saw "
        f"{first:.0f} -> {up.estimate_bps}")


def test_a_probe_pads_no_further_than_a_multiple_of_what_gets_through() -> None:
    """A "known" link read far past the real one (a count that straddled the onset)
    padded 1.16 Mbit/s of encoders with 2.6 more on a 2 Mbit/s link, three times
    in 10 s (scenario g2). A probe goes at most ``probe_carried`` x past what got
    through as it starts."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, loss=0.2, sent=500_000)
    up._known_bps = 3_000_000  # read far past the link
    up._saturated.clear()
    _until_probe(up, got=300_000)
    assert up.probe is not None, "expected a probe after the hold"
    level = up.probe.sent_bps + up.probe.total_bps
    assert level <= t.probe_carried * 600_000 * 1.001, (
        f"expected the probe to pad up to at most {t.probe_carried} x the 600 kbit/s that "
        f"got through, saw {level:.0f}")


def _remb_link(rembs: list[float], peers: int) -> float:
    """What falling REMBs say the link carries: each is 0.85 x the video payload that
    arrived, and every peer's audio rides beside it."""
    from glimpse_edge.rtc.tiers import VIDEO_PAYLOAD_SHARE
    return sum(rembs) / 0.85 / VIDEO_PAYLOAD_SHARE + peers * AUDIO


def _three_at_the_top(t: UplinkTuning) -> tuple[Uplink, tuple[str, ...]]:
    """Three peers sent 2.8 Mbit/s each, with clean reports and REMBs of 3.7."""
    up = Uplink(t)
    peers = ("a", "b", "c")
    for peer in peers:
        report(up, peer, 0.0, sent=2_800_000)
        up.remb(peer, 0.0, 3_700_000)
    return up, peers


def test_rembs_falling_far_on_two_peers_are_a_caps_onset() -> None:
    """A receiver's delay-based detector cuts its REMB to 0.85 x what arrived as soon
    as a queue grows, a second or so before the receiver reports (each over an
    interval that straddles the cap) read the link. Two peers' REMBs falling far
    below their recent level cut the estimate to what the REMBs read, even before
    any report shows the congestion."""
    t = UplinkTuning()
    up, peers = _three_at_the_top(t)
    up.remb("a", 0.2, 0.3 * 3_700_000)  # one peer's REMB alone: its own link, maybe
    assert up.estimate_bps is None, "one falling REMB is not the uplink"
    up.remb("b", 0.3, 0.4 * 3_700_000)  # two, but what they read is no news yet
    assert up.estimate_bps is None, (
        f"the REMBs read {_remb_link([1.11e6, 1.48e6, 3.7e6], 3):.0f} of the 8.4 Mbit/s sent: "
        "not under half of it")
    # the REMBs go on falling, by small steps (overusing, each a few percent under
    # the last): what counts is how far under the peer's recent highest
    rembs = {"a": 1_110_000.0, "b": 1_480_000.0, "c": 3_700_000.0}
    now = 0.3
    while up.estimate_bps is None and now < 1.5:
        now += 0.02
        for peer in peers:
            rembs[peer] = max(rembs[peer] * 0.96, 300_000)
            up.remb(peer, now, rembs[peer])
    assert up.estimate_bps is not None and up.remb_decreases == 1, (
        f"expected a cut by {now:.2f} s, saw {up.estimate_bps}")
    assert not up.congested, "no report showed it: the REMBs alone"
    link = _remb_link(list(rembs.values()), 3)
    assert link < 0.5 * 8_400_000 / t.backoff
    assert up.estimate_bps == pytest.approx(t.backoff * link)
    assert up.cap_cuts == 1, "every receiver lost a burst: restarted at a key frame"
    # they go on falling while the onset's arrivals leave their last second: the
    # estimate follows them down (by 5 % at least), one onset still
    cut = up.estimate_bps
    for step in range(1, 10):
        for peer in peers:
            rembs[peer] *= 0.97
            up.remb(peer, now + step * 0.02, rembs[peer])
    assert up.estimate_bps is not None and up.estimate_bps < cut and up.cap_cuts == 1
    assert up.estimate_bps == pytest.approx(t.backoff * _remb_link(list(rembs.values()), 3),
                                            rel=1 - t.remb_follow)
    # the onset over, a REMB's dip (a queue of the share we give) cuts nothing
    followed = up.estimate_bps
    later = now + 0.2 + t.congested_hold + 0.05
    for peer in peers:
        up.remb(peer, later, 0.6 * rembs[peer])
    assert up.estimate_bps == followed


def test_falls_too_far_apart_or_under_a_limit_they_did_not_halve_cut_nothing() -> None:
    """REMBs that fell far apart in time are two peers' own links; under a limit,
    REMBs that read more than half the estimate are its share followed (a
    receiver's REMB dips with any queue): the reports handle those."""
    t = UplinkTuning()
    up = Uplink(t)
    for peer in ("a", "b"):
        report(up, peer, 0.0, sent=2_000_000)
        up.remb(peer, 0.0, 3_000_000)
    up.remb("a", 0.1, 400_000)
    report(up, "a", t.congested_hold + 0.5, sent=2_000_000)
    report(up, "b", t.congested_hold + 0.5, sent=2_000_000)
    up.remb("b", t.congested_hold + 0.6, 400_000)
    assert up.estimate_bps is None and up.remb_decreases == 0
    # a limit, then both REMBs fall to 0.85 x each peer's share: no news
    now = 10.0
    for peer in ("a", "b"):
        report(up, peer, now, loss=0.1, sent=600_000)
    limit = up.estimate_bps
    assert limit is not None
    now += 5.0
    for peer in ("a", "b"):
        report(up, peer, now, sent=limit / 2)
        up.remb(peer, now, limit)
    for peer in ("a", "b"):
        up.remb(peer, now + 0.1, 0.85 * (limit / 2 - AUDIO))
    assert up.estimate_bps == limit and up.remb_decreases == 0


def test_an_onset_counts_once_unless_the_estimate_halves_again() -> None:
    """Each counted onset restarts every receiver at a key frame: once per onset,
    but again if the estimate halved since (that key frame went into a link that
    carried half of it)."""
    t = UplinkTuning()
    up, peers = _three_at_the_top(t)
    for peer in peers:
        up.remb(peer, 0.1, 1_000_000)  # a reading far under what we send
    first = up.estimate_bps
    assert first is not None and up.cap_cuts == 1
    for peer in peers:
        up.remb(peer, 0.2, 800_000)  # followed down, by less than half
    assert up.estimate_bps is not None and up.estimate_bps < first and up.cap_cuts == 1
    for peer in peers:
        up.remb(peer, 0.3, 250_000)
    assert up.estimate_bps is not None and up.estimate_bps < t.max_cut * first
    assert up.cap_cuts == 2
