"""The active speaker from level sequences (display/speaker.py): who, and when.

Each sequence is what RFC 6464 levels of 20 ms packets would say, played at
50 packets a second per participant, with ``update`` after every packet.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from glimpse_edge.display.speaker import SILENCE_DBOV, ActiveSpeaker, SpeakerSettings

STEP = 0.02
SPEECH = -25.0
NOISE = -60.0

Script = Callable[[float], dict[str, float | None]]


def play(detector: ActiveSpeaker, script: Script, start: float, end: float
         ) -> list[tuple[float, str | None]]:
    """Run ``script(t) -> {key: dBov, or None for no packet}``; the speaker's changes."""
    changes: list[tuple[float, str | None]] = []
    n = 0
    while (t := start + n * STEP) < end - 1e-9:
        for key, dbov in script(t).items():
            if dbov is not None:
                detector.level(key, dbov, t)
        speaker = detector.update(t)
        if not changes or changes[-1][1] != speaker:
            changes.append((round(t, 2), speaker))
        n += 1
    return changes


def talk(who: str, frm: float, to: float, others: tuple[str, ...] = ("bob", "carol"),
         level: float = SPEECH) -> Script:
    def script(t: float) -> dict[str, float | None]:
        out: dict[str, float | None] = dict.fromkeys(others, SILENCE_DBOV)
        out[who] = level if frm <= t < to else SILENCE_DBOV
        return out
    return script


def test_silence_and_noise_make_no_speaker() -> None:
    d = ActiveSpeaker()
    assert play(d, lambda t: {"alice": SILENCE_DBOV, "bob": NOISE}, 0, 5) == [(0, None)]


def test_a_talker_becomes_the_speaker_after_the_hold_and_stays_through_pauses() -> None:
    d = ActiveSpeaker()
    changes = play(d, talk("alice", 1.0, 4.0), 0, 6)
    assert changes[0] == (0, None) and changes[1][1] == "alice"
    # the level rises (attack) past the threshold, then it must hold 0.6 s
    assert 1.6 <= changes[1][0] <= 2.0, changes
    assert len(changes) == 2, "kept through the silence after (shorter than clear_after)"


def test_a_long_silence_clears_the_speaker() -> None:
    d = ActiveSpeaker(SpeakerSettings(clear_after=3.0))
    changes = play(d, talk("alice", 0.0, 2.0), 0, 8)
    assert [who for _, who in changes] == [None, "alice", None]
    # under the threshold ~1.3 s after she stopped (15 dB/s from -25 to -45), then 3 s
    assert 5.5 <= changes[2][0] <= 6.6, changes


def test_a_cough_or_a_short_interjection_does_not_take_over() -> None:
    d = ActiveSpeaker()
    cough = play(d, talk("bob", 1.0, 1.1, level=-10.0), 0, 4)
    assert cough == [(0, None)], "0.1 s, however loud, never rises far enough"

    d = ActiveSpeaker()

    def script(t: float) -> dict[str, float | None]:
        return {"alice": SPEECH, "bob": -15.0 if 3.0 <= t < 3.3 else SILENCE_DBOV}

    changes = play(d, script, 0, 6)
    assert [who for _, who in changes] == [None, "alice"], changes


def test_someone_else_talking_on_takes_over_after_the_hold() -> None:
    d = ActiveSpeaker()

    def script(t: float) -> dict[str, float | None]:
        return {"alice": SPEECH if t < 3.0 else NOISE, "bob": SPEECH if t >= 2.8 else NOISE}

    changes = play(d, script, 0, 6)
    assert [who for _, who in changes] == [None, "alice", "bob"], changes
    assert 3.2 <= changes[2][0] <= 4.4, changes


def test_two_talking_at_once_do_not_flap() -> None:
    d = ActiveSpeaker()

    def script(t: float) -> dict[str, float | None]:  # the louder one swaps every 0.3 s
        a_louder = int(t / 0.3) % 2 == 0
        return {"alice": -22.0 if a_louder else -28.0, "bob": -28.0 if a_louder else -22.0}

    changes = play(d, script, 0, 10)
    assert len(changes) <= 2, changes


def test_a_speaker_whose_packets_stop_is_silent_and_cleared() -> None:
    d = ActiveSpeaker(SpeakerSettings(clear_after=2.0))

    def script(t: float) -> dict[str, float | None]:
        return {"alice": SPEECH if t < 2.0 else None, "bob": SILENCE_DBOV}

    changes = play(d, script, 0, 6)
    assert [who for _, who in changes] == [None, "alice", None], changes
    assert changes[2][0] <= 2.0 + 0.5 + 2.0 + 0.05, "stale after 0.5 s, cleared 2 s later"


def test_a_speaker_who_leaves_is_cleared_at_once() -> None:
    d = ActiveSpeaker()
    play(d, talk("alice", 0.0, 2.0), 0, 2)
    assert d.speaker == "alice"
    d.remove("alice")
    assert d.speaker is None and d.update(2.1) is None
    d.remove("nobody")


def test_levels_out_of_range_are_clamped() -> None:
    d = ActiveSpeaker()
    for i in range(100):
        d.level("alice", 20.0, i * STEP)
        d.level("bob", -500.0, i * STEP)
    assert d.loudness("alice", 99 * STEP) == pytest.approx(0.0, abs=0.5)
    assert d.loudness("bob", 99 * STEP) == SILENCE_DBOV
    assert d.loudness("carol", 0) == SILENCE_DBOV
