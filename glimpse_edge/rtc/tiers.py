"""Which quality tier one peer receives, from its bandwidth estimate.

The media hub encodes each tier once (media/hub.py); every peer gets the best
tier its own link carries, so a peer on hotel Wi-Fi never lowers what the
others receive. :class:`TierSelector` decides for one peer:

- **down** at once when the estimate falls below ``keep_share`` of the
  current tier's bitrate, to the best tier the estimate still keeps (the
  estimate itself only falls on evidence: loss, a growing queue, a REMB
  below what we send);
- **up** one tier at a time, when the estimate reaches ``up_share`` of the
  tier above *and* ``probe_wait`` seconds have passed since the last move
  down. aiortc cannot probe a link, and a peer on a lower tier sends less
  than its link may carry, so the only test of the tier above is to try
  it; a try that ends in a move down within ``trial_window`` seconds
  failed, and the wait doubles (up to ``probe_max``), so a link that stays
  bad is tried ever more rarely; a try that holds resets the wait.

The estimate covers everything sent to the peer; :func:`video_budget` takes
off audio and packet overhead before it is compared with a video bitrate.
Like the estimator, the selector is pure: time comes in as ``now``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

# Opus at 48 kbit/s is about 64 kbit/s on the wire (RTP/SRTP/UDP/IP per 20 ms).
AUDIO_ON_WIRE_BPS = 64_000
# RTP, SRTP and UDP/IP headers on ~1100-byte video packets, and some room for
# retransmissions: the share of a link that is video payload.
VIDEO_PAYLOAD_SHARE = 0.9


def video_budget(estimate_bps: int, with_audio: bool) -> int:
    """What a link estimated at ``estimate_bps`` leaves for video payload."""
    rest = estimate_bps - (AUDIO_ON_WIRE_BPS if with_audio else 0)
    return max(int(rest * VIDEO_PAYLOAD_SHARE), 0)


def link_bps(video_bps: int, with_audio: bool) -> int:
    """The link a video bitrate needs, with audio and overhead (inverse of video_budget)."""
    return int(video_bps / VIDEO_PAYLOAD_SHARE) + (AUDIO_ON_WIRE_BPS if with_audio else 0)


@dataclass(frozen=True)
class TierTuning:
    keep_share: float = 0.75  # stay while the budget is at least this share of the tier
    up_share: float = 0.95  # try the tier above once the budget reaches this share of it
    probe_initial: float = 8.0  # seconds after a move down before trying up again
    probe_max: float = 64.0
    trial_window: float = 8.0  # a move down this soon after a move up: the try failed


@dataclass
class TierSelector:
    """One peer's tier (0 = best) among tiers of the given video bitrates, best first."""

    bitrates: Sequence[int]
    tuning: TierTuning = field(default_factory=TierTuning)
    tier: int = 0

    def __post_init__(self) -> None:
        self.probe_wait = self.tuning.probe_initial
        self._last_down = -math.inf
        self._last_up: float | None = None  # an up move whose trial is still open
        self.failed_trials = 0
        self.switches = 0

    def set_bitrates(self, bitrates: Sequence[int]) -> None:
        """The tiers changed (a reload): keep the position, within the new list."""
        self.bitrates = list(bitrates)
        self.tier = min(self.tier, len(self.bitrates) - 1)

    def update(self, now: float, budget_bps: int) -> int | None:
        """Feed the peer's current video budget; the new tier if it changed, else None."""
        t, rates = self.tuning, self.bitrates
        if self._last_up is not None and now - self._last_up >= t.trial_window:
            self._last_up = None  # the try held
            self.probe_wait = t.probe_initial
        if self.tier < len(rates) - 1 and budget_bps < t.keep_share * rates[self.tier]:
            target = next((i for i in range(self.tier + 1, len(rates))
                           if budget_bps >= t.keep_share * rates[i]), len(rates) - 1)
            if self._last_up is not None:  # fell back during a try
                self._last_up = None
                self.failed_trials += 1
                self.probe_wait = min(self.probe_wait * 2, t.probe_max)
            self._last_down = now
            return self._move(target)
        if (self.tier > 0 and budget_bps >= t.up_share * rates[self.tier - 1]
                and now - self._last_down >= self.probe_wait):
            self._last_up = now
            return self._move(self.tier - 1)
        return None

    def _move(self, tier: int) -> int:
        self.tier = tier
        self.switches += 1
        return tier
