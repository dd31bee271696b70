"""Who is speaking, from each participant's audio level (pure; no clock, no I/O).

The levels are what every browser's audio packets carry anyway, RFC 6464's
``ssrc-audio-level`` header extension: the level of that packet's audio in
dBov (0 is full scale, -127 silence), read by rtc/levels.py without decoding
anything. :class:`ActiveSpeaker` turns them into one participant to highlight:

* Each participant's level is smoothed: it rises with a time constant of
  ``attack`` (a cough or a door is too short to count as speech) and falls
  by ``release`` dB a second (the gaps between words do not end a speech).
  A participant whose packets stopped for ``stale`` seconds is silent.
* The loudest participant over ``threshold`` is the candidate. A candidate
  that stays the loudest for ``hold`` seconds becomes the speaker; a
  different loudest participant restarts that wait, so two people talking
  at once do not make the highlight flap.
* The speaker stays the speaker while nobody else takes over, silence
  included, and is cleared once they have been under the threshold for
  ``clear_after`` seconds (or leave).

Times are seconds on any monotonic clock, passed in: the tests play a level
sequence and read the speaker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

__all__ = ["SILENCE_DBOV", "ActiveSpeaker", "SpeakerSettings"]

SILENCE_DBOV: Final = -127.0
# A packet's level stands for at most this long (a gap is not a long packet).
_MAX_STEP: Final = 0.1


@dataclass(frozen=True, slots=True)
class SpeakerSettings:
    # Speech through a browser (AGC on) is about -20..-35 dBov; what its noise
    # suppression lets through of a quiet room is under -55.
    threshold: float = -45.0
    hold: float = 0.6
    clear_after: float = 8.0
    attack: float = 0.15
    release: float = 15.0
    stale: float = 0.5


@dataclass(slots=True)
class _Level:
    smoothed: float = SILENCE_DBOV
    at: float | None = None  # when the last level was heard


@dataclass
class ActiveSpeaker:
    """Feed :meth:`level` per packet and call :meth:`update` for the speaker."""

    settings: SpeakerSettings = field(default_factory=SpeakerSettings)
    speaker: str | None = None
    _levels: dict[str, _Level] = field(default_factory=dict)
    _candidate: str | None = None
    _candidate_since: float = 0.0
    _speaker_loud_at: float = 0.0

    def level(self, key: str, dbov: float, now: float) -> None:
        """``key``'s audio was at ``dbov`` (≤ 0) at ``now``."""
        s = self.settings
        x = min(0.0, max(SILENCE_DBOV, float(dbov)))
        lv = self._levels.setdefault(key, _Level())
        dt = _MAX_STEP if lv.at is None else min(_MAX_STEP, max(0.0, now - lv.at))
        if x > lv.smoothed:
            lv.smoothed += (x - lv.smoothed) * (1.0 - math.exp(-dt / s.attack))
        else:
            lv.smoothed = max(x, lv.smoothed - s.release * dt)
        lv.at = now

    def remove(self, key: str) -> None:
        """``key`` left: forgotten, and no longer the speaker or the candidate."""
        self._levels.pop(key, None)
        if self._candidate == key:
            self._candidate = None
        if self.speaker == key:
            self.speaker = None

    def loudness(self, key: str, now: float) -> float:
        """``key``'s smoothed level now (silence once its packets stopped)."""
        lv = self._levels.get(key)
        if lv is None or lv.at is None or now - lv.at > self.settings.stale:
            return SILENCE_DBOV
        return lv.smoothed

    def update(self, now: float) -> str | None:
        """The speaker at ``now``."""
        s = self.settings
        loud = {k: v for k in self._levels if (v := self.loudness(k, now)) >= s.threshold}
        top = max(loud, key=loud.__getitem__) if loud else None
        if top != self._candidate:
            self._candidate, self._candidate_since = top, now
        if top is not None and top != self.speaker and now - self._candidate_since >= s.hold:
            self.speaker = top
            self._speaker_loud_at = now
        if self.speaker is not None:
            if self.speaker in loud:
                self._speaker_loud_at = now
            elif now - self._speaker_loud_at >= s.clear_after:
                self.speaker = None
        return self.speaker
