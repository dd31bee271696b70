"""The active speaker on the kiosk display, from the audio levels the peers send.

Every browser puts RFC 6464's ``ssrc-audio-level`` header extension on its
audio packets: the packet's level in dBov, measured by the sender. aiortc
1.16 offers and answers the extension for audio (``codecs.HEADER_EXTENSIONS``,
id 2) and parses it into ``packet.extensions.audio_level`` (``HeaderExtensionsMap``),
then drops it: the receiver keeps no level. So the receiver's packet handler
is wrapped (:func:`~.compat.hook_audio_level`, with aiortc's other internals
in rtc/compat.py) and reads the level of each packet before aiortc handles
it; nothing is decoded for it.

With ``[display]`` on the audio transceiver receives (``sendrecv``) even
when ``[playback]`` is off, for the levels alone (docs/decisions.md, "Kiosk
display", "Active speaker"). Then nobody plays the audio, so its receiver
is tapped like the display's video (``compat.tap_encoded_video``) with a
sink that drops every frame: aiortc's Opus decoder decodes nothing and its
track's queue never grows.

:class:`PeerLevels` is that for one participant (rtc/peer.py makes one per
session when the display is on); the levels of all participants go to one
:class:`~glimpse_edge.display.speaker.ActiveSpeaker` per
:class:`~glimpse_edge.display.state.DisplayState`, whose choice is
``DisplayState.set_speaker``. Everything here runs on the agent's one
thread (aiortc's RTP path is trio-asyncio, inside Trio).

An aiortc without what this relies on (``compat.AUDIO_LEVEL_NEEDS``, checked
once, when the first receiver is hooked) leaves the display without a highlight and logs
``display.speaker_unavailable``; the call goes on.
"""

from __future__ import annotations

import functools
import time
import weakref
from typing import TYPE_CHECKING, Any, Final

import structlog

from ..display.speaker import ActiveSpeaker
from . import compat

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from ..display.state import DisplayState

__all__ = ["AUDIO_LEVEL_URI", "PeerLevels", "RoomSpeaker", "problems"]

AUDIO_LEVEL_URI: Final = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
# The speaker is worked out at most this often (levels arrive 50 a second per peer).
EVALUATE_EVERY: Final = 0.05


log = structlog.get_logger(__name__)


def problems() -> list[str]:
    """What the installed aiortc lacks for the levels (empty: nothing)."""
    found = [p for missing in compat.problems(compat.AUDIO_LEVEL_NEEDS).values()
             for p in missing]
    try:
        from aiortc.codecs import HEADER_EXTENSIONS

        if AUDIO_LEVEL_URI not in {e.uri for e in HEADER_EXTENSIONS.get("audio", [])}:
            found.append(f"aiortc does not negotiate {AUDIO_LEVEL_URI} for audio")
    except ImportError:
        found.append("aiortc.codecs.HEADER_EXTENSIONS is missing")
    return found


@functools.cache
def _problems_once() -> tuple[str, ...]:
    return tuple(problems())


class RoomSpeaker:
    """The one speaker detector of a display, fed by every participant's levels."""

    _of: weakref.WeakKeyDictionary[DisplayState, RoomSpeaker] = weakref.WeakKeyDictionary()

    def __init__(self, display: DisplayState, detector: ActiveSpeaker | None = None) -> None:
        self.display = display
        self.detector = detector or ActiveSpeaker()
        self._shown: str | None = None
        self._evaluated_at = -1e9

    @classmethod
    def of(cls, display: DisplayState) -> RoomSpeaker:
        """The detector of ``display`` (made on first use, gone with it)."""
        found = cls._of.get(display)
        if found is None:
            found = cls._of[display] = cls(display)
        return found

    def level(self, key: str, dbov: float, now: float) -> None:
        self.detector.level(key, dbov, now)
        if now - self._evaluated_at >= EVALUATE_EVERY:
            self.tick(now)

    def tick(self, now: float) -> None:
        """Work the speaker out and show it (also when no packets come at all)."""
        self._evaluated_at = now
        speaker = self.detector.update(now)
        if speaker != self._shown:
            self._shown = speaker
            self.display.set_speaker(speaker)
            log.debug("display.speaker", peer=speaker)

    def remove(self, key: str) -> None:
        self.detector.remove(key)
        if self._shown == key:
            self._shown = None  # remove_tile clears it on the display


def _drop(_codec: str, _data: bytes, _timestamp: int) -> None:
    """Audio nobody plays: received for its levels, never decoded."""


class PeerLevels:
    """One participant's audio levels, into the display's :class:`RoomSpeaker`."""

    def __init__(self, display: DisplayState, key: str, log: FilteringBoundLogger) -> None:
        self.room = RoomSpeaker.of(display)
        self.key = key
        self.log = log
        self._left = False
        self._failed = False

    def hook(self, receiver: Any, *, drain: bool) -> None:
        """Read ``receiver``'s levels (before negotiation); ``drain``: nobody plays
        its audio, so aiortc must not decode it."""
        missing = _problems_once()
        if missing:
            if not self._failed:
                self._failed = True
                self.log.error("display.speaker_unavailable", problems="; ".join(missing))
        else:
            compat.hook_audio_level(receiver, self._on_level, self._on_error)
        if drain:
            compat.tap_encoded_video(receiver, _drop, self._on_error)

    def check(self, now: float) -> None:
        """Every half second (kiosk.follow_room): a silence ends without packets too."""
        self.room.tick(now)

    def leave(self) -> None:
        """The session ended: forgotten (late packets of its closing connection too)."""
        self._left = True
        self.room.remove(self.key)

    def _on_level(self, dbov: float) -> None:
        if not self._left:
            self.room.level(self.key, dbov, time.monotonic())

    def _on_error(self, exc: Exception) -> None:
        if not self._failed:
            self._failed = True
            self.log.warning("display.speaker_level_failed", error=repr(exc))
