"""The device's own uplink: the one link every viewer's video crosses first.

Each peer's estimate (rtc/bandwidth.py) sees the path to one viewer as if it
were that viewer's alone. When the bottleneck is the device's own upload (a
Pi on weak Wi-Fi, the common case) that is wrong for all of them at once:
three estimates each grow into what is left, the sum overshoots the link,
all three see loss together, all three back off, and the lowest tier's rate
saw-tooths (issue 15 measured 150 -> 346 -> 150 kbit/s, twice in 25 s).

:class:`Uplink` keeps one estimate for the device's upload, from every
peer's receiver reports:

- **detect** a shared bottleneck: at least two peers, and at least half of
  those reporting, see loss or a queue (RTT above its base) at the same
  time. One peer alone behind a bad
  downlink is not shared, and its own estimate handles it (scenario (b)).
  At a cap's onset the receivers' REMBs say so first: two peers' falling
  far below their recent level cut the estimate to what they read arrives.
- **estimate** its capacity when it is seen: what the link carried (the
  rate we sent all peers less what they lost, or, if more, the most we sent
  with clean reports in the last few seconds: an overload's own reports
  lose a burst), backed off a little so the queue in front of the link
  drains; then, after a hold, grow slowly (a few percent a second, where a
  peer's own estimate grows 8 %) up to what the link carried, so that the
  total creeps up to the link instead of overshooting it. Past that only a
  probe (below) raises it: if the link carries well past what it carried, it
  has grown (a cap lifted), the estimate jumps there, and growth doubles
  every few seconds. (Without probes, the creep goes on past it, and a link
  carried clear past it for a second and a half counts as grown.)
  Clear for ``release_after`` seconds with every peer getting
  all its own estimate could ask (its top tier), or once we sent well past
  what the link carried at its last overload without a complaint (it
  grew), the limit is dropped and each peer's own estimate rules.
- **probe** it: the encoders' creep tests the link only every ten seconds
  or so (a decrease, a hold, the creep back), so every few seconds while
  limited and clear the peers pad what they send (resends of recent
  packets, rtc/probe.py) past the known link for a couple of seconds.
  Carried, the estimate rises to what got through; past the known link, the
  next probe pads up to the jump at once. A peer's REMB falling
  (its receiver saw a queue grow) stops its padding, and two peers'
  end the probe before the queue overflows.
- **allocate** it: audio first (every peer's Opus), then video by max-min
  fairness (water-filling): a peer whose own link takes less than an equal
  share keeps its own budget, and what it leaves goes to the others. So the
  sum of the budgets never exceeds the estimate, and one viewer behind its
  own bad downlink affects only itself.

While the bottleneck is shared, a peer's own estimator only hears the part of
its loss above the others' (:meth:`Uplink.own_loss`): losses the uplink
causes are the uplink's to answer, once, rather than every peer's.

Pure, like the per-peer estimator: time comes in as ``now``; nothing here
reads a clock or does I/O. The one call out is :meth:`Uplink.on_probe`'s, to
each padded peer's feedback as a probe starts (the padding is theirs to send).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from .probe import Probe
from .tiers import VIDEO_PAYLOAD_SHARE
from .uplink_tuning import UplinkTuning

__all__ = ["PeerReport", "Uplink", "UplinkState", "UplinkTuning"]

# what a receiver's REMB is of the video that arrived while its detector sees a
# queue (aiortc's and libwebrtc's AIMD rate control: 0.85)
REMB_OF_ARRIVED = 0.85
KNOWN_FROM = 3  # overloads whose carried rate make up the known link (Uplink._learn)
QUEUE_NOISE_S = 0.005  # a queue "drains" if it shrinks by more than this between two reports


@dataclass(frozen=True)
class PeerReport:
    """What one peer's last receiver report said."""

    at: float
    congested_at: float  # the last report of this peer that was congested (-inf: none)
    loss: float  # 0..1
    smooth_loss: float  # its reports' loss, smoothed (an EWMA over a few reports)
    queue_s: float | None  # RTT above the path's base RTT
    sent_bps: float | None  # what we send the peer now, on the wire (video and audio)
    wants_bps: int  # what the peer's own estimate says its link takes, on the wire
    audio_bps: int  # what its audio takes on the wire (0 without audio)
    floor_bps: int = 0  # the least we send it (audio and the lowest video rate), on the wire
    queue_draining: bool = False  # the queue shrank since this peer's report before
    arrived_bps: float | None = None  # what the receiver counted arriving since its last report
    ceiling_bps: int = 0  # the most its own estimate can say (its top tier), on the wire
    padding_bps: int = 0  # of what we send it, a probe's padding, on the wire

    @property
    def media_bps(self) -> float:
        """What we send it without padding (what the encoders and the repair send)."""
        return max((self.sent_bps or 0.0) - self.padding_bps, 0.0)

    def congested(self, tuning: UplinkTuning) -> bool:
        """This report alone shows loss or a queue."""
        return self.loss >= tuning.congested_loss or (
            self.queue_s is not None and self.queue_s >= tuning.congested_queue)

    def fresh(self, tuning: UplinkTuning) -> bool:
        """This report shows the link overloaded now: loss, or a queue that is not draining.

        A queue that shrinks is the last overload draining (RTT takes a
        report or two to show it): decreasing on it cut a 1 Mbit/s uplink's
        estimate to 690 kbit/s, sending 820 kbit/s without loss.
        """
        return self.loss >= tuning.congested_loss or (
            self.queue_s is not None and self.queue_s >= tuning.congested_queue
            and not self.queue_draining)

    def held(self, tuning: UplinkTuning) -> bool:
        """This report, or one within ``congested_hold`` before it, showed congestion."""
        return self.at - self.congested_at < tuning.congested_hold

    def through_bps(self) -> float:
        """What reached the peer: what the receiver counted arriving over its report's
        interval, or, without that, what we sent less what it lost.

        The receiver's count is exact for its interval; what we sent is
        measured over the last 2 s, which after a sudden cap still holds the
        rate before it: that "through" (1.2-1.5 Mbit/s for 15 s on a 1 Mbit/s
        link) kept the estimate above the link and the link overloaded.
        """
        if self.arrived_bps is not None:
            return self.arrived_bps
        return (self.sent_bps or 0.0) * (1.0 - self.loss)


@dataclass(frozen=True)
class UplinkState:
    """The uplink as of one moment (observe/)."""

    estimate_bps: int | None  # None: no shared limit seen (or released)
    congested: bool  # the peers see a shared bottleneck now
    episodes: int  # times a shared bottleneck was detected
    peers: int  # peers reporting within the window
    sent_bps: int  # what we send them all, on the wire
    shares: dict[str, int] = field(default_factory=dict)  # per peer, on the wire
    probes: int = 0  # probes made (padding up past the known link)
    probes_passed: int = 0  # ... whose padding the link carried
    grown: int = 0  # times the link was found grown (a cap lifted): the estimate jumped


def max_min_fair(wants: Mapping[str, float], total: float) -> dict[str, float]:
    """``total`` split over ``wants`` by water-filling: nobody gets more than it
    wants, and what one leaves is split equally among the others."""
    out: dict[str, float] = {}
    left = total
    for n, key in enumerate(sorted(wants, key=wants.__getitem__)):
        out[key] = give = min(float(wants[key]), max(left, 0.0) / (len(wants) - n))
        left -= give
    return out


class Uplink:
    """One estimate of the device's upload, shared by every peer's feedback."""

    def __init__(self, tuning: UplinkTuning | None = None) -> None:
        self.tuning = tuning or UplinkTuning()
        self.estimate_bps: float | None = None
        self.congested = False
        self.episodes = 0
        self.releases = 0  # times the limit was let go
        self.released = ""  # why, the last time: "satisfied" or "grown"
        self._reports: dict[str, PeerReport] = {}
        self._last_decrease = -math.inf
        self._last_congested = -math.inf
        self._last_overload = -math.inf  # the last time the latest reports were congested
        self._known_bps = 0.0  # what the link carried when it last overloaded
        self._carried: deque[float] = deque(maxlen=KNOWN_FROM)
        # what got through as each of the last overloads was answered (no clean peak)
        self._saturated: deque[float] = deque(maxlen=KNOWN_FROM)
        # what got through by each clean report since the last decrease, its last ``window`` s
        self._clean: deque[tuple[float, float]] = deque()
        self._beyond_since = math.inf  # since when the estimate is past it (growing fast)
        self._grown_since = math.inf  # since when the link carries well past it, clear
        self._crept = False  # what got through was under the known margin since the last decrease
        self._last_update: float | None = None
        self.probe: Probe | None = None  # the probe running now, or judged now
        self.probes = 0
        self.probes_passed = 0
        # the last pass: "raised" (the estimate to what got through, past the
        # overloads' level) or "grown" (past the known link: it jumped)
        self.last_pass = ""
        self._last_probe: Probe | None = None
        self._probe_ended = -math.inf
        self._probe_seen = 0  # updates in a row that saw the link carry past the margin
        self._probe_low = 0.0  # ... the least what got through by those updates
        self._probed_to = 0.0  # what got through at a probe since the last decrease
        self._jump_next = False  # the next probe pads up to the jump (:meth:`_jump`)
        self._remb: dict[str, float] = {}  # each peer's last REMB
        self._remb_fell: set[str] = set()  # peers whose REMB fell during the running probe
        self._remb_peak: dict[str, tuple[float, float]] = {}  # each peer's highest REMB, and when
        self._remb_onset: dict[str, float] = {}  # when each peer's REMB last fell far below it
        self.remb_decreases = 0  # times the receivers' REMBs cut the estimate (a cap's onset)
        self._remb_cut_at = -math.inf  # the last time they did
        # cuts to what reports or REMBs read the link to be after a cap's onset, one
        # per onset (each within ``congested_hold`` of the last is the same one,
        # unless it halved the estimate since): every receiver lost a burst, and
        # is restarted at a key frame (rtc/feedback.py)
        self.cap_cuts = 0
        self._cap_cut_at = -math.inf
        self._cap_cut_level = 0.0  # the estimate at the last one counted
        self.probes_stopped = 0  # probes a falling REMB ended
        self._padders: dict[str, Callable[[], None]] = {}  # by peer (:meth:`on_probe`)
        self.jumps = 0  # times the estimate jumped: the link grew
        # why the last probe ended: "passed", "remb_fell", "queued", "congested",
        # "not_carried" (its time was up) or "released"
        self.probe_ended = ""
        self._jumped_at = -math.inf  # the last jump (one per decrease)

    # -- inputs -------------------------------------------------------------------

    def report(self, peer: str, now: float, *, loss: float, queue_s: float | None,
               sent_bps: float | None, wants_bps: int, audio_bps: int,
               floor_bps: int = 0, arrived_bps: float | None = None,
               ceiling_bps: int | None = None, padding_bps: int = 0) -> None:
        """What ``peer``'s latest receiver report says.

        ``floor_bps`` is the least this peer can be sent (its audio and the
        video's minimum rate): the estimate never goes below the sum of the
        peers' floors, because a lower one changes nothing we send, and each
        decrease would find us "complying" and cut again (seen: 1 Mbit/s link,
        three peers at their floor, the estimate cut to 111 kbit/s).
        ``arrived_bps``: what the receiver counted arriving since its report
        before (on the wire), when known (:meth:`PeerReport.through_bps`).
        ``ceiling_bps``: the most the peer's own estimate can say (what its
        top tier takes); without it, what it says now. ``padding_bps``: of
        ``sent_bps``, what a probe's padding takes (measured over the same
        time): a probe right after another counted the last one's padding,
        still in what we sent, as the encoders', padded too little and
        could not pass (a lifted cap found 8-10 s later, f and g1).
        """
        loss = min(max(loss, 0.0), 1.0) if math.isfinite(loss) else 0.0
        last = self._reports.get(peer)
        a = self.tuning.loss_smoothing
        smooth = loss if last is None else a * loss + (1.0 - a) * last.smooth_loss
        new = PeerReport(now, -math.inf if last is None else last.congested_at, loss, smooth,
                         queue_s, sent_bps, wants_bps, audio_bps, floor_bps,
                         arrived_bps=arrived_bps,
                         ceiling_bps=wants_bps if ceiling_bps is None else ceiling_bps,
                         padding_bps=padding_bps)
        if last is not None and last.queue_s is not None and queue_s is not None:
            new = replace(new, queue_draining=queue_s < last.queue_s - QUEUE_NOISE_S)
        if new.congested(self.tuning):
            new = replace(new, congested_at=now)
        self._reports[peer] = new
        self._update(now)

    def remb(self, peer: str, now: float, bps: float) -> None:
        """``peer``'s receiver sent a REMB of ``bps``: one lower than its last says
        it saw a queue grow (its estimator cuts only then). Far lower, on two
        peers, it is a cap's onset (:meth:`_remb_cut`). During a probe, that
        queue is the padding's: its padding stops at once, and the probe ends once
        ``probe_remb_peers`` peers' REMBs fell."""
        t = self.tuning
        last = self._remb.get(peer)
        self._remb[peer] = bps
        peak, peak_at = self._remb_peak.get(peer, (0.0, -math.inf))
        if bps >= peak or now - peak_at > t.congested_hold:
            self._remb_peak[peer] = (bps, now)
        elif bps < t.remb_onset_fall * peak:
            self._remb_onset[peer] = now
        self._remb_cut(now)
        probe = self.probe
        if probe is None or last is None or bps >= t.probe_remb_fall * last:
            return
        self._remb_fell.add(peer)
        if len(self._remb_fell) >= min(t.probe_remb_peers, len(probe.padding_bps)):
            self.probes_stopped += 1
            self._end_probe(now, "remb_fell")

    def on_probe(self, peer: str, start: Callable[[], None]) -> None:
        """Call ``start`` when a probe that pads ``peer`` starts: its padding begins
        then, not at its own next report.

        Each peer's feedback heard of a probe at that peer's next report, and
        aiortc's receivers report every 0.5-1.5 s: the last peer began to pad
        up to ~0.9 s into a 2.5 s probe, and its report covering only padded
        time came a report later. The probes after a lifted cap passed 1.8 s
        in, and one whose slowest report straddled the padding's end read
        0.85-0.90 of its level and failed; the next came 4 s later (scenario f:
        recovery 15-20 s in 5 of 20 runs). ``start`` runs inside another
        peer's report: it must not raise.
        """
        self._padders[peer] = start

    def forget(self, peer: str) -> None:
        """``peer`` left: its reports no longer count, its share goes to the others."""
        self._padders.pop(peer, None)
        self._reports.pop(peer, None)
        self._remb.pop(peer, None)
        self._remb_peak.pop(peer, None)
        self._remb_onset.pop(peer, None)

    def _remb_cut(self, now: float) -> None:
        """Cut the estimate to what the receivers' REMBs say arrives, at a cap's onset
        (``remb_onset_fall`` says why): when the REMBs of at least two peers, and of
        half of those reporting, fell far within ``congested_hold``, and what they
        read is under ``max_cut`` x the estimate (or, without a limit, x what we
        send; within ``congested_hold`` of such a cut, under ``remb_follow`` x
        it). Each REMB is 0.85 x the video payload that arrived: the link is
        their sum as the wire carries it, with every peer's audio."""
        t = self.tuning
        if sum(now - at <= t.congested_hold for at in self._remb_onset.values()) < 2:
            return  # (per REMB: nothing more to do without an onset)
        live = self.live(now)
        fell = [p for p in live if now - self._remb_onset.get(p, -math.inf) <= t.congested_hold]
        if len(fell) < 2 or len(fell) < t.shared_share * len(live) \
                or not live.keys() <= self._remb.keys():
            return
        link = sum(self._remb[p] / REMB_OF_ARRIVED / VIDEO_PAYLOAD_SHARE + r.audio_bps
                   for p, r in live.items())
        if self.estimate_bps is None:
            cut = t.max_cut * sum(r.sent_bps or 0.0 for r in live.values())
        elif now - self._remb_cut_at <= t.congested_hold:
            cut = t.remb_follow * self.estimate_bps  # (the onset's, followed down)
        else:
            cut = t.max_cut * self.estimate_bps
        if t.backoff * link >= cut:
            return
        self.remb_decreases += 1
        self._remb_cut_at = now
        self._end_probe(now, "congested")
        self._decrease(now, live, link)

    # -- what it says -----------------------------------------------------------

    def live(self, now: float) -> dict[str, PeerReport]:
        window = self.tuning.window
        return {p: r for p, r in self._reports.items() if now - r.at <= window}

    @property
    def limited(self) -> bool:
        """The uplink sets a limit now (from a shared bottleneck until released)."""
        return self.estimate_bps is not None

    def through_bps(self, now: float) -> float:
        """What reached the peers by their latest reports, on the wire."""
        return sum(r.through_bps() for r in self.live(now).values())

    def own_loss(self, peer: str, loss: float) -> float:
        """The part of ``peer``'s reported ``loss`` that is its own (not the uplink's).

        Without a shared bottleneck, all of it. With one, how far the peer's
        smoothed loss lies above the median of everyone's: a queue that
        overflows in bursts loses a different share in each report, and the
        raw difference to the others' was noise that pushed every peer's own
        estimate down in turn (to the minimum, in a 1 Mbit/s scenario with
        browser viewers). A peer behind its own bad downlink loses more than
        the others report after report, and that excess remains.
        """
        if not self.congested:
            return loss
        live = self.live(self._last_update or 0.0)
        if not live:
            return loss
        mine = live[peer].smooth_loss if peer in live else loss
        return max(0.0, mine - statistics.median(r.smooth_loss for r in live.values()))

    def own_queue(self, peer: str, queue_s: float) -> float:
        """The part of ``peer``'s queueing delay (RTT above its base) that is its own.

        Without a shared bottleneck, all of it; with one, how far it lies above
        the median of the peers' latest: the uplink's queue is every peer's,
        and the uplink answers it once. A peer behind its own slow downlink
        queues on top of that (450 ms against the others' 50, scenario h).
        """
        if not self.congested:
            return queue_s
        queues = [r.queue_s for p, r in self.live(self._last_update or 0.0).items()
                  if r.queue_s is not None and p != peer]
        if not queues:
            return queue_s
        return max(0.0, queue_s - statistics.median([queue_s, *queues]))

    def shares(self, now: float) -> dict[str, int]:
        """Each reporting peer's budget on the wire (bits/s); empty without a limit.

        Max-min fair: audio first for everyone, then video split equally,
        except that a peer wanting less than its equal share gets what it
        wants, and the rest is split among the others.
        """
        live = self.live(now)
        if self.estimate_bps is None or not live:
            return {}
        video = max_min_fair({p: max(r.wants_bps - r.audio_bps, 0) for p, r in live.items()},
                             self.estimate_bps - sum(r.audio_bps for r in live.values()))
        return {p: int(give) + live[p].audio_bps for p, give in video.items()}

    def padding_bps(self, peer: str, now: float) -> int | None:
        """What ``peer`` should pad its video with now (on the wire) while a probe
        runs; None otherwise."""
        probe = self.probe
        report = self._reports.get(peer)  # (per padding packet: no copy of live())
        if probe is None or now >= probe.until or report is None \
                or now - report.at > self.tuning.window or peer in self._remb_fell:
            return None
        return probe.padding_bps.get(peer)

    def share(self, peer: str, now: float) -> int | None:
        """``peer``'s budget on the wire, or None when the uplink sets no limit."""
        return self.shares(now).get(peer)

    def state(self, now: float) -> UplinkState:
        estimate = None if self.estimate_bps is None else int(self.estimate_bps)
        live = self.live(now)
        return UplinkState(estimate, self.congested, self.episodes, len(live),
                           int(sum(r.sent_bps or 0.0 for r in live.values())), self.shares(now),
                           self.probes, self.probes_passed, self.jumps)

    # -- the controller ----------------------------------------------------------

    def _update(self, now: float) -> None:
        t = self.tuning
        live = self.live(now)
        def shared_by(peers: list[PeerReport]) -> bool:
            return len(peers) >= 2 and len(peers) >= t.shared_share * len(live)

        # the state holds through clear reports within the hold; a decrease
        # needs the peers' latest reports themselves to show the congestion
        shared = shared_by([r for r in live.values() if r.held(t)])
        fresh = shared_by([r for r in live.values() if r.fresh(t)])
        span = 0.0 if self._last_update is None else min(max(now - self._last_update, 0.0),
                                                         t.max_increase_span)
        self._last_update = now
        if shared:
            if not self.congested:
                self.episodes += 1
            self.congested = True
            self._last_congested = now
            self._grown_since = math.inf
            if fresh:
                self._last_overload = now
            rtt = max((r.queue_s or 0.0) for r in live.values())
            self._end_probe(now, "congested")
            # a probe's padding took what we sent past the known link, and the link
            # still carries what it carried at its overloads: the congestion is the
            # padding's (the link did not grow), not news of the link. Not if the
            # encoders alone sent the known link (their creep overloads it too),
            # nor at a cap's onset during a probe (far less gets through)
            last = self._last_probe
            probed = last is not None and now - self._probe_ended < t.probe_judge + rtt \
                and last.sent_bps < self._known_bps \
                and self.through_bps(now) >= t.comply_share * self._known_bps
            if not fresh or probed:
                return
            # reports since the last decrease that read the link under half the
            # estimate cut at once, and whatever we send: a decrease that read
            # through a cap's onset, followed by the peers' own estimates taking
            # them under the link, left a limit 2.3 x the link that no later
            # congestion cut (we sent under 0.9 x it); 20 s on, their own
            # estimates grew into the link together (scenario g1: a 3.2 s freeze)
            if (link := self._narrower_since_decrease(live)) is not None:
                self._decrease(now, live, link)
            elif now - self._last_decrease >= t.decrease_interval + rtt:
                self._decrease(now, live)
            return
        self.congested = False
        if self.estimate_bps is None:
            return
        # what got through (no more than we sent: the receivers' counts are
        # per report, and a key frame's burst can land in one), not what we
        # sent alone: sent includes a key frame's burst or
        # a repair's, which a full link drops; taken as carried, 1.3 x a 692 kbit/s
        # link's last overload looked reached, the limit was let go, and two
        # viewers went back to the top tier through the 1 Mbit/s cap
        carrying = min(self.through_bps(now), sum(r.sent_bps or 0.0 for r in live.values()))
        self._clean.append((now, carrying))
        self._forget_clean(now)
        # growth restarts slowly from the last congestion, not the last decrease:
        # a congestion held at the peers' floor makes no decrease, and counting
        # from the one before it grew the estimate 692 kbit/s -> 8.7 Mbit/s in
        # 6 s, which sent two viewers back to the top tier through a 1 Mbit/s link
        since = now - max(self._last_decrease, self._last_overload)
        # a queue forming in front of the link (RTT above its base, below what
        # counts as congested) holds growth and ends any doubling: the total
        # has reached the link. Doubling into it overshot a 1 Mbit/s link every
        # ~20 s (the estimate 0.7 -> 1.6 Mbit/s in 15 s, the lowest tier's rate
        # with it, then a loss burst)
        queued = any((r.queue_s or 0.0) >= t.growth_queue for r in live.values())
        # past the known link, and it carries past it too: it grew. Past it
        # alone is not enough: "known" is a median of overloads' counts and
        # can lie below the link (865 kbit/s on a 1 Mbit/s one), and doubling
        # there took the estimate to 1.24 Mbit/s before the loss showed
        limit = t.known_margin * self._known_bps
        beyond = self.estimate_bps > limit and carrying > limit
        # a jump needs what got through to have crept past the margin: above it
        # from the start (a congestion held at the peers' floor, over a link
        # "known" from the floor's own loss) nothing was tested
        self._crept = self._crept or carrying <= limit
        # up to the known link, growth needs the estimate used: what gets through
        # well under it says nothing of the link above it, and once the peers
        # catch up they overshoot together (scenario f: settled freezes 0.3-1.2 s
        # and a rate swing of 0.42-0.45 growing it anyway, 0.07-0.92 s and
        # 0.23-0.50 not). Past it the estimate creeps whatever we send: an
        # encoder may never fill its share (0.69 of a 2 Mbit/s link's estimate
        # with five viewers), and held there it never found the cap lifted
        idle = carrying < t.use_share * self.estimate_bps and self.estimate_bps <= limit
        if self._probed(now, live, since, queued, carrying, limit):
            pass
        elif queued:
            self._beyond_since = math.inf
        elif since > t.hold and not idle:
            if not beyond:
                self._beyond_since = math.inf
            elif self._beyond_since == math.inf:
                self._beyond_since = now
            doubling = max(0.0, now - max(self._beyond_since, self._last_decrease + t.hold,
                                          self._last_overload + t.hold))
            rate = min(t.increase_per_s * 2.0 ** (doubling / t.double_every),
                       t.max_increase_per_s)
            grown = self.estimate_bps * (1.0 + rate) ** span
            if (ceiling := self._creep_ceiling()) is not None:
                grown = min(grown, max(ceiling, self.estimate_bps))
            self.estimate_bps = grown
            if doubling >= t.beyond_clear and self._crept \
                    and self._jumped_at <= self._last_decrease and self.probe is None:
                self._jump_next = True  # it may have grown: a probe at the jump shows it
        # every peer gets all its own estimate can ever ask (its top tier), not
        # what it asks now: a cap's onset knocks the peers' own estimates down
        # (their receivers' REMB falls at once), they climb back slowly while
        # the uplink limits, and, once the estimate covered what they asked
        # 10 s on, the limit was let go through the cap (two runs of f of
        # seven, 2026-12-07): each peer's own estimate then grew into the
        # link as its own, and the lowest tier saw-toothed 150-325 kbit/s
        # for the rest of the cap (rate swing 0.6-1.0). A lifted cap lets go
        # as "grown" below
        wanted = sum(max(r.wants_bps, r.ceiling_bps) for r in live.values())
        clear_for = now - self._last_congested
        # the link grew (a cap lifted): we sent well past what it carried when it
        # last overloaded, and it took it. Waiting for the estimate to reach what
        # every peer wants (their top tiers: 8.5 Mbit/s for three) kept three
        # viewers on the lowest tier for ~50 s after a 1 Mbit/s cap was lifted
        # Held for grown_clear, not seen once: each receiver's count is over its
        # own report's interval, timed by when the report reaches us, and the
        # sum of the three once read 1.3 x a 950 kbit/s link through it; the
        # limit was let go, all three went to the top tier, and a loss burst
        # froze them for 20 s.
        # Nor is it reset while the encoders take up a jump (``grown_clear`` after
        # it): the probe's padding that showed the link grown stops before they
        # send as much, and the clock started afresh took 4-5 s more (g1)
        if self._known_bps > 0 and carrying >= t.grown_share * self._known_bps:
            self._grown_since = min(self._grown_since, now)
        elif now - self._jumped_at > t.grown_clear:
            self._grown_since = math.inf
        grown = now - self._grown_since >= t.grown_clear
        if clear_for >= t.release_after and self.estimate_bps >= wanted:
            self.released = "satisfied"
        elif grown and clear_for >= t.grown_clear:
            self.released = "grown"
        else:
            return
        self.estimate_bps = None
        self.releases += 1
        self._end_probe(now, "released")

    def _probed(self, now: float, live: dict[str, PeerReport], since: float, queued: bool,
                carrying: float, limit: float) -> bool:
        """Start, judge or end a probe (``probe_share`` in :class:`UplinkTuning` says
        why); True when a probe passed and the estimate rose (or jumped)."""
        t = self.tuning
        probe = self.probe
        base = self._probe_base()
        if probe is None:
            sent = sum(r.media_bps for r in live.values())  # (the last probe's padding: not)
            jump = self._jump_next
            level = self._jump_level(carrying) if jump \
                else min(t.probe_share * base, t.probe_carried * max(carrying, self._probed_to))
            if queued:  # the link is full: no jump
                self._jump_next = False
            elif jump and (sent >= t.probe_pass * level or t.probe_every <= 0):
                # what we send is (nearly) there: nothing to pad
                self._jump(now, carrying)
                return True
            if (t.probe_every > 0 and since > t.hold
                    and not queued
                    and now - self._probe_ended >= t.probe_every and sent < level
                    and (carrying <= limit or jump or self._creep_ceiling() is not None)
                    and live):
                # each peer within its own link's room (what its own estimate says
                # it takes, less what we send it): a viewer behind its own slow
                # downlink (scenario h, 300 kbit/s), padded like the others, had
                # its link overflow at each probe, which showed nothing of the
                # uplink, and its own estimator heard loss that was ours
                fair = max_min_fair({p: max(0.0, r.wants_bps - r.media_bps)
                                     for p, r in live.items()}, level - sent)
                padding = {p: int(give) for p, give in fair.items() if give >= 1.0}
                # short of what the probe needs (most peers' own links full): it
                # could not pass, and would cost a queue all the same
                if sum(padding.values()) >= t.probe_pass * (level - sent):
                    self.probe = self._last_probe = Probe(now, now + t.probe_s, padding, sent,
                                                          min(carrying, sent), jump)
                    self.probes += 1
                    self._probe_seen = 0
                    self._remb_fell.clear()
                    self._jump_next = False
                    for peer in padding.keys() & self._padders.keys():
                        self._padders[peer]()
                elif jump:
                    # the peers' own links have no room for it: their own
                    # estimates bound what they take, so the jump cannot
                    # overshoot the uplink by much, and it is all there is
                    self._jump(now, carrying)
                    return True
            return False
        if queued or now >= probe.until + t.probe_judge:  # it filled a queue, or it is over
            self._end_probe(now, "queued" if queued else "not_carried")
            return False
        # (nearly) the probe's level, past the margin over what it went past, and
        # up by half the padding at least: the padding got through. A link a
        # little past the margin overloads before it carries that (the
        # encoders' creep past the margin alone is no proof: see ``beyond_clear``)
        padded = sum(bps for p, bps in probe.padding_bps.items() if p not in self._remb_fell)
        passed = carrying > max(t.known_margin * base,
                                t.probe_pass * (probe.sent_bps + padded),
                                probe.carried_bps + 0.5 * padded)
        self._probe_seen = self._probe_seen + 1 if passed else 0
        # the lowest of the updates that passed: through a tbf's burst allowance
        # (16 kB) one reads up to ~13 % past a 1 Mbit/s link (Chromium viewers)
        self._probe_low = min(self._probe_low, carrying) if self._probe_seen > 1 else carrying
        if self._probe_seen < t.probe_confirm:
            return False
        carrying = self._probe_low
        self.probes_passed += 1
        self._end_probe(now, "passed")
        assert self.estimate_bps is not None
        if probe.jump:
            self._jump(now, carrying)
            return True
        # the link carries what it carried now, and the next probe goes on from
        # there. Past what got through at the last overloads but not past the
        # known link: withheld instead, as once, a probe never came when "known"
        # read ~4 % above those overloads, and the creep alone found a lifted cap
        # in ~21 s. Past the known link too: the next probe pads up to the jump;
        # jumping from here went past a "known" read under the link (a 0.46
        # Mbit/s "known" passed at 0.58 of a 0.6 Mbit/s cap, the jump to 0.74:
        # a 1.5 s freeze, scenario g1). The next probe comes at once, as
        # libwebrtc probes further after a probe that got through: waiting
        # ``probe_every`` after each pass took a lifted cap three probes and
        # 14.5 s to find (Chromium viewers)
        self.estimate_bps = max(self.estimate_bps, carrying)
        self._probed_to = carrying
        self.last_pass = "raised"
        self._jump_next = carrying > limit
        self._probe_ended = now - t.probe_every
        return True

    def _creep_ceiling(self) -> float | None:
        """How far the creep may take the estimate (``creep_margin`` says why); None
        when nothing bounds it: probes off (the creep alone finds a lifted cap),
        or a jump since the last decrease (the link grew, and growth searches it)."""
        if self.tuning.probe_every <= 0 or self._jumped_at > self._last_decrease:
            return None
        return self.tuning.creep_margin * self._known_link_bps()

    def _known_link_bps(self) -> float:
        """What the link is known to carry: the known link, or what a probe since the
        last decrease carried, if more."""
        return max(self._known_bps, self._probed_to)

    def _jump_level(self, carrying: float) -> float:
        """Where the estimate jumps when the link grew (``jump_share`` says why)."""
        t = self.tuning
        return min(t.jump_share * self._known_link_bps(), t.jump_carried * carrying)

    def _jump(self, now: float, carrying: float) -> None:
        """The link grew (a cap lifted): the estimate jumps, and grows fast from there."""
        assert self.estimate_bps is not None
        self._jump_next = False
        self._jumped_at = now
        self.jumps += 1
        self.last_pass = "grown"
        self.estimate_bps = max(self.estimate_bps, self._jump_level(carrying))
        self._beyond_since = now - self.tuning.beyond_clear
        self._crept = True

    def _probe_base(self) -> float:
        """What a probe goes past: the known link, or, if less, what got through
        while the last overloads were answered (the link full, and no clean
        peak in it) or at a probe since that carried more. "Known" can read
        above the link (a burst counted in a clean report): a probe at 1.25 x
        a known 1066 kbit/s on a 970 kbit/s link sent 1.37 x the link, and the
        queue overflowed before anything said so (a 2 s freeze). But never less
        than what a probe since the last decrease carried: past the creep's
        ceiling, the probes are what grows the estimate."""
        if not self._saturated:
            return self._known_link_bps()
        return max(min(self._known_bps, statistics.median_low(self._saturated)),
                   self._probed_to)

    def _end_probe(self, now: float, why: str) -> None:
        """End the running probe, if any; ``why`` is kept in :attr:`probe_ended`."""
        if self.probe is not None:
            self.probe_ended = why
            if self.probe.jump:  # (passed or not: a pass sets it again)
                self._beyond_since = math.inf  # the link did not carry the jump
            self.probe = None
            self._probe_ended = now

    def _clean_peak(self, now: float) -> float:
        """The most that got through by a clean report in the last ``window`` seconds
        (since the last decrease; 0: none).

        Recent only: a limit set once (a congestion as the viewers joined)
        then idle for a minute kept a key frame's burst from 50 s before as
        what the link carried, and a cap then went 12 s without a decrease
        (Chromium viewers, whose NACKs kept what we sent at the estimate).
        """
        self._forget_clean(now)
        return max((carried for _, carried in self._clean), default=0.0)

    def _forget_clean(self, now: float) -> None:
        """Drop the clean reports older than ``window``: on every clear report, so the
        deque stays as short as the window (a browser reports ~30 times a second)."""
        while self._clean and now - self._clean[0][0] > self.tuning.window:
            self._clean.popleft()

    def _learn(self, carried: float) -> None:
        """What the link carried at an overload: ``known`` is the median of the last few.

        Not the last one, nor the most: an overload's first reports straddle
        its onset (5.3 Mbit/s "carried" on a 1 Mbit/s link, a cap's first
        second), and a later one can count a drained burst (495 kbit/s). As
        the most, "known" stayed at 5 Mbit/s and a lifted cap was never
        recognised; as the last, our ordinary 920 kbit/s looked like a lifted
        cap and the limit was let go through the cap, twice a run. Of an
        even count, the lower middle: the mean of the onset's 6.5 Mbit/s and
        the next overload's 705 kbit/s made "known" 3.6 Mbit/s on a 1 Mbit/s
        link, and the estimate crept to 1.4 Mbit/s before the peers' encoders
        caught up with it and overloaded the link.
        """
        self._carried.append(carried)
        self._known_bps = statistics.median_low(self._carried)

    def _narrower_since_decrease(self, live: dict[str, PeerReport]) -> float | None:
        """What the link carries by the reports since the last decrease alone, when
        those say it is under ``max_cut`` x the estimate; None otherwise.

        A cap's first decrease reads reports that straddle its onset (3.8
        Mbit/s "carried" on a 1 Mbit/s link), and waiting ``decrease_interval``
        and a round trip for the next one kept the link overloaded 1.3-1.6 s
        more: the freeze at a cap's onset was 1.9-3.1 s, against the Chromium
        mesh's 0.9-1.3. Reports after it that show the link overloaded, from
        at least two peers and half of those reporting (as a shared
        bottleneck needs), measure it without waiting. Each peer's count is
        scaled by its part of what we send (a full FIFO delivers every flow
        in proportion to what it offers), and the upper median of the
        readings counts (of two, the higher): a peer behind its own slow
        downlink (scenario h) reads its own link, not ours; and one whose
        count straddles the onset reads far past it (the highest of five
        read 3.04 Mbit/s of a 2 Mbit/s cap, scenario g2: "known" and the
        probes' padding then went 1.5-1.9 x past the link).
        """
        t = self.tuning
        if self.estimate_bps is None:
            return None
        after = [r for r in live.values() if r.at > self._last_decrease and r.fresh(t)]
        if len(after) < 2 or len(after) < t.shared_share * len(live):
            return None
        sent = sum(r.sent_bps or 0.0 for r in live.values())
        readings = [r.arrived_bps * sent / r.sent_bps for r in after
                    if r.arrived_bps is not None and r.sent_bps]
        if len(readings) < len(after):
            return None
        link = statistics.median_high(readings)
        return link if link < t.max_cut * self.estimate_bps else None

    def _decrease(self, now: float, live: dict[str, PeerReport],
                  link: float | None = None) -> None:
        """Congested: set the estimate from what got through, if that is news.

        What got through measures the link only while we send more than it
        takes. Once we send less (the peers follow their shares), the
        reports still show the queue draining for a while: a decrease then
        would chase our own rate down. So: the first estimate is what got
        through (backed off); later ones only while we send about the
        estimate (while we still send more, only if the link carries less
        than it), to a ``backoff`` of what it carried but not below a
        ``max_cut`` of the estimate (what a report right after an overload
        shows is far too low); and once ``followed`` has passed since the
        last decrease, whatever we send: the link is full at what we send.
        (The first
        estimate, from reports that straddle the overload's start, was 2.6
        and 4.9 Mbit/s on a 1 Mbit/s link; backing off from the estimate
        itself took half a minute to get down to the link.)
        ``link``, when given, is what the reports since the last decrease say
        the link carries (:meth:`_narrower_since_decrease`), in place of the
        sum of every peer's latest report.
        """
        t = self.tuning
        # what the link carried: what got through now, or, if more, what we sent
        # with clean reports in the last few seconds (the overload's own reports
        # lose a burst: 0.85 x through cut a 1 Mbit/s link's estimate to the
        # peers' floor, 690 kbit/s, and each climb back overshot). But a through
        # under ``max_cut`` x the estimate is a narrower link, not a lost burst: a
        # limit left from the viewers joining (8 Mbit/s) let the 8.2 Mbit/s carried
        # just before a 1 Mbit/s cap hold off its first decrease for 2.2 s
        through = sum(r.through_bps() for r in live.values()) if link is None else link
        if link is not None:
            # the reports since the last decrease read the link under half the
            # estimate: what the decreases before read was a cap's onset, not the
            # link. Kept, two straddled readings of g2's onset (8.3 and 2.8
            # Mbit/s of a 2 Mbit/s cap) outvoted the third (1.5) for "known",
            # and the estimate crept to 1.12 x the link (a 1.9 s freeze)
            self._carried.clear()
            self._saturated.clear()
        if through > 0:
            self._saturated.append(through)
        estimate = self.estimate_bps
        narrower = estimate is not None and through < t.max_cut * estimate
        carried = through if narrower else max(through, self._clean_peak(now))
        sent = sum(r.sent_bps or 0.0 for r in live.values())
        floor = sum(r.floor_bps for r in live.values())
        # counted by every receiver, what got through during an overload is what
        # the link carries, not a burst's loss: no bound on one cut then (halving
        # at a time from the first estimate, 4.5 Mbit/s from reports straddling a
        # 1 Mbit/s cap's onset, kept the link overloaded for 6 s, holes and all)
        cut = 0.0 if all(r.arrived_bps is not None for r in live.values()) else t.max_cut
        if estimate is not None and estimate <= floor:
            self.estimate_bps = float(floor)  # (a peer that joined raised it)
            # what the link carries now counts for all of them (the decrease
            # before may have heard only some: 360 kbit/s of a 540 it carried)
            self._learn(carried)
            return
        if estimate is None:
            if carried <= 0:
                return
            target = t.backoff * carried
        elif link is not None:
            # the reports since the last decrease read the link under half the
            # estimate: news, whatever we send (_narrower_since_decrease)
            target = t.backoff * link
        elif sent > t.lag_share * estimate:
            # we still send more than the estimate: right after a decrease what
            # we send lags it (the rate is measured over 2 s and the lowest tier
            # follows each second), and a queue then is ours, draining. Only a
            # link that carries less than the estimate is news. (Cutting 15 %
            # each time took a 1 Mbit/s link's estimate from 806 to 692 kbit/s
            # while it carried 1.07 Mbit/s without loss, and 854 -> 718 in three.)
            if carried >= estimate:
                return
            target = max(t.backoff * carried, cut * estimate)
        elif sent >= t.comply_share * estimate or now - self._last_decrease >= t.followed:
            # what the receivers counted is what the link carried; what we sent
            # less the loss may be more
            if carried > (1.0 if cut == 0.0 else t.carried_share) * estimate:
                # it carries clearly more than the estimate: the congestion is
                # the last overload's, draining. Cutting 15 % each time took a
                # 1 Mbit/s link's estimate 849 -> 722 -> 692 kbit/s (the peers'
                # floor) in 5 s while it carried 912: the lowest tier's rate
                # swung 150-288 kbit/s. What it carried counts.
                self._learn(carried)
                return
            target = min(max(t.backoff * carried, cut * estimate), t.backoff * estimate)
        else:
            return
        self.estimate_bps = max(target, float(floor))
        if link is not None:
            # a cap's onset (or the estimate halved since the last: the key frame
            # then went into a link that carried half of it)
            if now - self._cap_cut_at > t.congested_hold \
                    or self.estimate_bps < t.max_cut * self._cap_cut_level:
                self.cap_cuts += 1
                self._cap_cut_level = self.estimate_bps
            self._cap_cut_at = now
        self._learn(max(carried, self.estimate_bps))
        self._clean.clear()
        self._crept = False
        self._probed_to = 0.0
        self._jump_next = False
        self._last_decrease = now
