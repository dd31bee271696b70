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
from dataclasses import dataclass, field, replace
from typing import Literal

import av

__all__ = ["Connection", "DisplayState", "Snapshot", "TileState", "TileView"]

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


class DisplayState:
    """The thread-safe model of the screen. Tiles keep the order they were added in."""

    def __init__(self, room: str = "") -> None:
        self._cond = threading.Condition(threading.Lock())
        self._data = _Data(room=room)
        self._version = 0

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

    def remove_tile(self, key: str) -> None:
        with self._cond:
            if self._data.tiles.pop(key, None) is not None:
                if self._data.speaker == key:
                    self._data.speaker = None
                self._changed()

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
