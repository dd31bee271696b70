"""The shared uplink's tuning (rtc/uplink.py): each figure with the run that set it.

Apart from :class:`~.uplink.Uplink` because the reasons are most of its
length: every threshold here was set by a measured scenario (docs/decisions.md,
"The device's uplink"), and reads best next to that account, not between the
rules that use it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["UplinkTuning"]


@dataclass(frozen=True)
class UplinkTuning:
    window: float = 3.0  # a peer's last report counts this long
    congested_loss: float = 0.02  # a peer with this much loss in its report is congested
    congested_queue: float = 0.05  # ... or this much queueing delay (seconds of RTT above base)
    # a peer counts as congested this long after its last congested report: over
    # a queue that overflows in bursts, every other report shows no loss, and a
    # browser reports video about once a second (0.5-1.5 s, randomised). Without
    # it the shared state flapped with each report (27 episodes in 8 s with
    # Chromium viewers), and each clear report gave the peers' own estimators
    # the whole loss and queue again
    congested_hold: float = 2.0
    loss_smoothing: float = 0.3  # weight of a new report in a peer's smoothed loss
    shared_share: float = 0.5  # at least this share of reporting peers (and two) congested
    backoff: float = 0.85  # the estimate on congestion: this times what got through
    max_cut: float = 0.5  # ... but one decrease never goes below this share of the last
    comply_share: float = 0.9  # decrease only if we send at least this share of the estimate
    # ... and if we send more than this share of it, the peers have not followed
    # the last decrease yet: only a link that carries less than the estimate counts
    lag_share: float = 1.1
    # ... and sending about the estimate, the link carries more than this share of
    # it: the congestion is the last overload's, draining (a 1 Mbit/s link)
    carried_share: float = 1.05
    # ... or the last decrease is this long past, whatever we send: what we send
    # has followed it (measured over 2 s, the lowest tier following each
    # second), so a congestion now is the link full at what we send, not the
    # last overload draining. Until 2026-12-07 we had to send 0.9 x the
    # estimate, or the congestion had to last 2.5 s: a limit left 1.34 x the
    # link by a decrease that read through a cap's onset was never cut, the
    # peers' own estimates grew into the link 10 s later, and the overload
    # froze a viewer for 2 s (scenario f)
    followed: float = 3.0
    decrease_interval: float = 1.0  # between two decreases (plus a round trip)
    hold: float = 2.0  # no increase this long after a decrease
    # then this much a second up to ``creep_margin`` x what the link carried when
    # it last overloaded (it was there: creep up to it), and, without probes,
    # on to ``known_margin`` above it; past that, the
    # link has grown (a cap lifted), and the rate doubles every ``double_every``
    # seconds (up to ``max_increase_per_s``), so the new link is found within
    # seconds, not the half minute a steady 8 % needs. Doubling from the start
    # overshot a 1 Mbit/s link twofold every ~12 s, each time a loss burst.
    increase_per_s: float = 0.03
    use_share: float = 0.7  # ... while what gets through is at least this share of it
    growth_queue: float = 0.02  # a queue this long (s of RTT above base) holds growth
    known_margin: float = 1.1
    # with probes on, the creep stops at this times the known link (or what a
    # probe since the last decrease carried, if more): past it only a probe
    # raises the estimate. "Known" is what got through at the overloads, the
    # link full: the encoders filling 1.1 x it overloaded the link every
    # 15-20 s (settled freezes of 0.5-2.6 s in scenarios g1 and g2), and the
    # probes, which pad for a couple of seconds and stop at the first sign of
    # a queue, find a link grown past it without the encoders' overload
    creep_margin: float = 0.95
    double_every: float = 3.0
    max_increase_per_s: float = 0.5
    max_increase_span: float = 1.0  # an increase never counts more than this many seconds
    release_after: float = 10.0  # no congestion this long, and all get their top tier
    # ... or, clear, what got through stayed above this share of what the link
    # carried at its last overloads for this long: the bottleneck is gone, each
    # peer's own estimate rules again
    grown_share: float = 1.3
    grown_clear: float = 3.0
    # past the known link and carrying past it, clear, this long: the link grew
    # (at its old size, a creep past it overloads it within a second or so). The
    # estimate jumps to ``jump_share`` x the known link, so the encoders (a raise
    # of 1.25 x reopens libx264 at once) send enough to show it grown
    # (``grown_share``) without doubling up to it: the doubling took 4-6 s of a
    # 1 Mbit/s cap's 12-22 s recovery. But never more than ``jump_carried`` x what
    # got through: a jump tests the link, it is not taken for its size (at 1.25 x,
    # 1.1 x the known link carried made a jump to ~1.37 x, which the encoders
    # did not always carry to the 1.3 x that shows the link grown: 16-27 s recoveries)
    beyond_clear: float = 1.5
    jump_share: float = 1.6
    jump_carried: float = 1.5
    # A probe (rtc/probe.py says why): while limited and clear (``hold`` after
    # an overload, no queue), every ``probe_every`` seconds the peers pad what
    # they send up to ``probe_share`` x the link (:meth:`Uplink._probe_base`)
    # for ``probe_s`` seconds. If the link carries ``probe_pass`` of that
    # meanwhile (past the margin over the link the probe went past, and by
    # half the padding more than before: ``probe_confirm`` updates in a row,
    # judged until ``probe_judge`` after the padding ends), it carried the
    # padding: past the known margin it grew, and the estimate jumps, as
    # above; short of it (the probe went past the overloads' lower reading)
    # the estimate rises to what got through, and the next probe goes on from
    # there. Peers' REMBs falling end a probe at once (``probe_remb_peers``): a
    # receiver saw the queue grow (a delay-based detector, within a few hundred
    # ms), where our RTT, one sample per sender report, showed it only after
    # the queue had overflowed (a probe at 1.2 x every 4 s under a 1 Mbit/s cap
    # overloaded it each time: settled freezes of 1.4-1.5 s). So does a queue
    # (``growth_queue``) or a congestion; the congestion its own padding caused
    # makes no decrease.
    probe_share: float = 1.25
    probe_s: float = 2.5
    probe_every: float = 4.0
    probe_judge: float = 1.0
    probe_confirm: int = 2
    probe_pass: float = 0.92
    probe_remb_fall: float = 0.97  # a REMB under this share of the peer's last one fell
    # ... and this many peers' REMBs falling (or every padded peer's, if fewer)
    # end it: one alone stops only that peer's padding. A shared queue shows in
    # every receiver's REMB within a few hundred ms; one receiver's REMB dips
    # by itself too, and with five viewers one such dip ended a probe of a
    # lifted 2 Mbit/s cap that the link was carrying, twice in a row (a 24 s
    # recovery, scenario g2)
    probe_remb_peers: int = 2
    # A cap's onset, read from the receivers' REMBs: a delay-based detector (aiortc's,
    # libwebrtc's) that sees a queue grow cuts its REMB to 0.85 x what arrived
    # over the last second, and, overusing, says so with every few packets. A
    # REMB under ``remb_onset_fall`` x the peer's highest within ``congested_hold``
    # fell by far more than one overuse cuts (an encoder sending under the
    # REMB, which aiortc lets climb to 1.5 x what arrives, makes 0.57 x), and
    # two peers' (and half of those reporting, as for the reports) within
    # ``congested_hold`` are the uplink's queue. Their REMBs then measure the
    # link about a second after the cap, where the receiver reports took 1.3-2.2
    # s (one per aiortc viewer every 0.5-1.5 s, each over an interval that
    # straddles the onset): an estimate 3.5 x the link meanwhile let the
    # peers' resends of what the overload lost (0.3-1.2 Mbit/s each) keep a
    # 1 Mbit/s link overloaded (scenario f). What the REMBs read cuts only
    # what it halves at least (the estimate, or what we send before a limit)
    remb_onset_fall: float = 0.5
    # ... and, within ``congested_hold`` of that cut, what they read below this
    # share of the estimate: a REMB cut at a cap's onset reads arrivals that
    # still straddle it (1.1-1.3 x a 1 Mbit/s link), and they fall on to it
    remb_follow: float = 0.95
    # and a probe pads up to no more than this times what got through as it
    # starts: a "known" read 1.5 x past a 2 Mbit/s link padded 1.16 Mbit/s of
    # encoders with 2.6 more, three times in 10 s (scenario g2)
    probe_carried: float = 1.5
