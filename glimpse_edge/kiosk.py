"""The kiosk display's tasks (issue 16): the screen kept open, and the room kept on it.

The peers put each remote participant's video in a tile of the agent's
:class:`~glimpse_edge.display.state.DisplayState` (rtc/peer.py). What is left
is here, in Trio:

- :func:`run_screen` keeps a :class:`~glimpse_edge.display.screen.Screen`
  open on the state. It opens on a worker thread (never the Trio thread); a
  display that cannot be opened (no X server, no DRM device, no permission)
  is logged as ``display.open_failed`` with SDL's reason and tried again after
  a back-off, and one whose thread dies is logged as ``display.lost`` and
  reopened. The call goes on without it either way.
- :func:`follow_room` writes what the idle screen shows (the room's name,
  signaling up or down and its last error) and says "no video" on the tile
  of a participant whose video stopped (``PeerSession.check_video``, rtc/remotevideo.py).
  With ``self_view`` on it also feeds the self-view tile (selfview.py).

Nothing here imports SDL: that happens when a Screen opens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

import structlog
import trio

from .selfview import feed_self_view
from .supervise import Backoff

if TYPE_CHECKING:
    from .config import DisplayConfig
    from .display.screen import ScreenSettings
    from .display.state import DisplayState
    from .media.hub import MediaHub
    from .room import Room
    from .rtc.peer import PeerSession
    from .signaling.session import SignalingSession

__all__ = ["OPEN_BACKOFF", "follow_room", "run_screen", "screen_settings"]

log = structlog.get_logger(__name__)

# Retrying a display that would not open: from 2 s up to a minute (a kiosk
# whose screen is plugged in later shows it within a minute).
OPEN_BACKOFF: Final = Backoff(initial=2.0, maximum=60.0, floor=1.0)
OPEN_TIMEOUT: Final = 15.0
# How often the screen's thread is checked, and the room's state copied.
CHECK_PERIOD: Final = 0.5
# Signaling states whose detail is an error worth showing on the idle screen.
_ERROR_STATES: Final = ("reconnecting", "auth_rejected")


def screen_settings(config: DisplayConfig) -> ScreenSettings:
    """The screen's settings for ``[display]``."""
    from .display.screen import ScreenSettings

    return ScreenSettings(driver=config.driver, self_view=config.self_view,
                          max_tiles=config.max_tiles, show_names=config.show_names)


async def run_screen(state: DisplayState, settings: ScreenSettings, *,
                     backoff: Backoff = OPEN_BACKOFF, open_timeout: float = OPEN_TIMEOUT,
                     check_period: float = CHECK_PERIOD) -> None:
    """Keep a screen open on ``state`` until cancelled; closes it on the way out."""
    from .display.screen import DisplayOpenError, Screen

    # the layout the peers follow (what is shown, how big) is the screen's
    state.set_layout(settings.max_tiles, settings.self_view)
    attempt = 0
    while True:
        screen = Screen(state, settings)
        try:
            try:
                await trio.to_thread.run_sync(screen.open, open_timeout)
            except DisplayOpenError as exc:
                delay = backoff.delay(attempt)
                attempt += 1
                log.warning("display.open_failed", driver=settings.driver, error=str(exc),
                            attempt=attempt, retry_in=round(delay, 1))
                await trio.sleep(delay)
                continue
            attempt = 0
            # the screen's thread ends only by a crash: a poll, not an event from it
            while True:
                await trio.sleep(check_period)
                if not screen.running:
                    break
            delay = backoff.delay(0)
            log.error("display.lost", driver=screen.driver, error=repr(screen.failure),
                      retry_in=round(delay, 1))
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(screen.close)
        await trio.sleep(delay)


async def follow_room(state: DisplayState, room: Callable[[], Room | None],
                      session: Callable[[], SignalingSession | None],
                      peers: Callable[[], Mapping[str, PeerSession]], *,
                      period: float = CHECK_PERIOD) -> None:
    """Keep ``state``'s room name, connection and tiles' video states in step (forever).

    The callables give the agent's current room, signaling session and peer
    sessions: each may be replaced underneath (a handover, a rebuild).
    """
    def hub() -> MediaHub | None:  # every session has the agent's hub
        return next((p.hub for p in list(peers().values())), None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed_self_view, state, hub)
        await _follow(state, room, session, peers, period)


async def _follow(state: DisplayState, room: Callable[[], Room | None],
                  session: Callable[[], SignalingSession | None],
                  peers: Callable[[], Mapping[str, PeerSession]], period: float) -> None:
    shown_room: str | None = None
    shown_link: tuple[bool, str | None] | None = None
    last_error: str | None = None
    while True:
        r, s = room(), session()
        name = (r.name or r.room_id) if r is not None else ""
        if name != shown_room:
            state.set_room(name)
            shown_room = name
        up = s is not None and s.state == "joined"
        if up:
            last_error = None
        elif s is not None and s.state in _ERROR_STATES:
            last_error = s.state_detail
        if (up, last_error) != shown_link:
            state.set_connection(up, last_error)
            shown_link = (up, last_error)
        now = time.monotonic()
        for peer in list(peers().values()):
            peer.check_video(now)
        await trio.sleep(period)
