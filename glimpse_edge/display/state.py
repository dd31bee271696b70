"""What the screen should show: the hand-over between the agent, the decoders and the screen.

Three kinds of threads touch it: the Trio thread (who is there, their names and
states, the active speaker, the room and the device's own connection state), each
decoder's worker thread (the newest frame of its tile) and the screen's thread
(reads it all, ~30 times a second). One lock guards plain data, held for a few
assignments only, so no writer ever waits on the renderer: the Trio thread never
blocks behind SDL, and a slow screen just skips frames (only the newest frame of a
tile is kept; older ones are dropped, never queued).

The screen waits on a condition for a change (``wait_changed``) instead of
polling, so an idle kiosk costs nothing between the clock's ticks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import av

from .layout import MAX_TILES, Rect, grid

__all__ = ["Connection", "DisplayState", "Placement", "Snapshot", "TileState", "TileView"]

TileState = Literal["connecting", "live", "no video", "reconnecting"]
"""A participant's tile: ``live`` shows video; the others show the state written out."""


@dataclass(frozen=True, slots=True)
class TileView:
    """One participant's tile as the screen reads it.

    ``frame_seq`` counts the frames given to this tile, so the screen uploads a frame
    to its texture once, not on every repaint.
    """

    key: str
    name: str
    state: TileState
    frame: av.VideoFrame | None = None
    frame_seq: int = 0


@dataclass(frozen=True, slots=True)
class Connection:
    """The device's own link, for the idle screen: is signaling up, and the last error."""

    signaling_up: bool = False
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the screen needs for one repaint, copied under the lock."""

    version: int
    room: str
    tiles: tuple[TileView, ...]
    speaker: str | None
    connection: Connection
    self_view: TileView | None = None


@dataclass(slots=True)
class _Data:
    room: str = ""
    tiles: dict[str, TileView] = field(default_factory=dict)
    speaker: str | None = None
    connection: Connection = field(default_factory=Connection)
    self_view: TileView | None = None


SELF_KEY = "__self__"

# The screen's size until the screen says (a window's default size; KMS/DRM
# reports the display's mode once open).
DEFAULT_SCREEN = (1280, 720)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the layout puts the tiles: the participants shown, in order, with their rects.

    Participants beyond ``max_tiles`` have no rect (not shown, not decoded).
    """

    screen: tuple[int, int]
    rects: dict[str, Rect]

    def rect(self, key: str) -> Rect | None:
        return self.rects.get(key)


LayoutListener = Callable[[Placement], None]


class DisplayState:
    """The thread-safe model of the screen. Tiles keep the order they were added in."""

    def __init__(self, room: str = "") -> None:
        self._cond = threading.Condition(threading.Lock())
        self._data = _Data(room=room)
        self._version = 0
        # what decides where tiles go (the Trio thread and the screen's thread set it)
        self._screen = DEFAULT_SCREEN
        self._max_tiles = MAX_TILES
        self._self_view = False
        self._placement: Placement | None = None
        self._listeners: list[LayoutListener] = []
        # listeners are called in order, one change at a time (re-entrant: a listener
        # that changes the state again does not deadlock)
        self._notify = threading.RLock()

    # -- writers (any thread) -------------------------------------------------------

    def _changed(self) -> None:
        self._version += 1
        self._cond.notify_all()

    def set_room(self, room: str) -> None:
        with self._cond:
            self._data.room = room
            self._changed()

    def set_connection(self, signaling_up: bool, last_error: str | None = None) -> None:
        with self._cond:
            self._data.connection = Connection(signaling_up, last_error)
            self._changed()

    def set_tile(self, key: str, name: str, state: TileState) -> None:
        """Add a participant's tile or change its name or state.

        A tile that leaves ``live`` drops its frame at once: "no video" must never show
        the last picture frozen (it would look like a person who stopped moving).
        """
        with self._cond:
            old = self._data.tiles.get(key)
            if old is None:
                self._data.tiles[key] = TileView(key, name, state)
            else:
                keep = state == "live"
                self._data.tiles[key] = replace(
                    old, name=name, state=state, frame=old.frame if keep else None)
            self._changed()
        if old is None:
            self._relayout()

    def remove_tile(self, key: str) -> None:
        with self._cond:
            gone = self._data.tiles.pop(key, None) is not None
            if gone:
                if self._data.speaker == key:
                    self._data.speaker = None
                self._changed()
        if gone:
            self._relayout()

    def set_speaker(self, key: str | None) -> None:
        with self._cond:
            if self._data.speaker != key:
                self._data.speaker = key
                self._changed()

    def push_frame(self, key: str, frame: av.VideoFrame) -> bool:
        """The newest decoded frame of a tile (from its decoder's thread).

        Returns False (and keeps nothing) for a tile that is gone or not ``live``: a
        decoder still draining when its participant left must not bring a picture back.
        """
        with self._cond:
            old = self._data.tiles.get(key)
            if old is None or old.state != "live":
                return False
            self._data.tiles[key] = replace(old, frame=frame, frame_seq=old.frame_seq + 1)
            self._changed()
            return True

    def show_frame(self, key: str, frame: av.VideoFrame) -> bool:
        """A decoded frame of a tile that is there, which makes it ``live`` (a decoder's thread).

        The first picture of a connecting (or reconnecting, or "no video") participant
        turns its tile live. A tile that is gone stays gone (returns False): a decoder
        still draining after its participant left must not bring the tile back.
        """
        with self._cond:
            old = self._data.tiles.get(key)
            if old is None:
                return False
            self._data.tiles[key] = replace(old, state="live", frame=frame,
                                            frame_seq=old.frame_seq + 1)
            self._changed()
            return True

    def set_self_view(self, frame: av.VideoFrame | None) -> None:
        """The device's own picture for the self-view tile (None: no self-view)."""
        with self._cond:
            old = self._data.self_view
            if frame is None:
                self._data.self_view = None
            else:
                seq = old.frame_seq + 1 if old is not None else 1
                self._data.self_view = TileView(SELF_KEY, "me", "live", frame, seq)
            self._changed()

    # -- the layout: which tiles are shown, and how big ------------------------------

    def set_layout(self, max_tiles: int, self_view: bool) -> None:
        """``[display] max_tiles`` and ``self_view`` (the screen's settings)."""
        with self._cond:
            self._max_tiles, self._self_view = max_tiles, self_view
            self._changed()
        self._relayout()

    def set_screen_size(self, width: int, height: int) -> None:
        """The screen's size in pixels, once it is open (the screen's thread)."""
        if width <= 0 or height <= 0:
            return
        with self._cond:
            self._screen = (width, height)
            self._changed()
        self._relayout()

    @property
    def max_tiles(self) -> int:
        return self._max_tiles

    @property
    def self_view(self) -> bool:
        """``[display] self_view``: the device's own picture is the last tile."""
        return self._self_view

    def placement(self) -> Placement:
        """Where each shown participant's tile is now (the first ``max_tiles``, in order)."""
        with self._cond:
            return self._compute()

    def _compute(self) -> Placement:
        keys = list(self._data.tiles)[: self._max_tiles]
        width, height = self._screen
        try:
            layout = grid(len(keys), width, height, self_view=self._self_view,
                          max_tiles=self._max_tiles)
        except ValueError:  # a screen too small for that many: nothing has a size
            return Placement(self._screen, {})
        return Placement(self._screen, dict(zip(keys, layout.tiles, strict=True)))

    def add_layout_listener(self, listener: LayoutListener) -> None:
        """Call ``listener(placement)`` now and whenever the tiles' places change.

        It runs on the thread that made the change (the Trio thread, or the
        screen's when its size changes), after the state's lock is released,
        one change at a time: it must be quick and must not block.
        """
        with self._notify:
            with self._cond:
                self._listeners.append(listener)
                placement = self._compute()
            listener(placement)

    def remove_layout_listener(self, listener: LayoutListener) -> None:
        with self._cond:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _relayout(self) -> None:
        with self._notify:
            with self._cond:
                placement = self._compute()
                if placement == self._placement:
                    return
                self._placement = placement
                listeners = list(self._listeners)
            for listener in listeners:
                listener(placement)

    # -- the reader (the screen's thread) -------------------------------------------

    def snapshot(self) -> Snapshot:
        with self._cond:
            d = self._data
            return Snapshot(self._version, d.room, tuple(d.tiles.values()), d.speaker,
                            d.connection, d.self_view)

    def wait_changed(self, version: int, timeout: float) -> bool:
        """Block until the state is newer than ``version`` or ``timeout`` passes."""
        with self._cond:
            return self._cond.wait_for(lambda: self._version != version, timeout)

    def wake(self) -> None:
        """Wake a waiting screen without a change (used to make it stop)."""
        with self._cond:
            self._changed()
