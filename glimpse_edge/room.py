"""Who is in the room, and what that means for the media layer.

The room model turns the protocol's membership messages into three events,
``ParticipantAdded``, ``ParticipantRemoved`` and ``Reconciled``, which the
media layer consumes to create and free peer sessions. A "participant" is an
active member other than ourselves: offline members keep their membership on
the server but have nobody to stream to.

Membership persists on the server, so after a reconnect there may be no
``user_joined`` for people who came while we were away, nor ``user_left`` for
people who went: :meth:`Room.reconcile` compares the fresh ``room_joined``
list with what we believed and emits the difference.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import structlog
import trio

from .signaling.messages import RoomUser

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Participant:
    user_id: str
    username: str


@dataclass(frozen=True)
class ParticipantAdded:
    participant: Participant
    reason: str  # "user_joined" | "reconciled" | "signal"


@dataclass(frozen=True)
class ParticipantRemoved:
    participant: Participant
    reason: str  # "user_left" | "user_offline" | "reconciled"


@dataclass(frozen=True)
class Reconciled:
    """Sent after every (re-)join with the full list of participants."""

    participants: tuple[Participant, ...]


RoomEvent = ParticipantAdded | ParticipantRemoved | Reconciled


class Room:
    """The participants of one room, as seen from this agent."""

    def __init__(self, room_id: str, *, subscriber_buffer: int = 256) -> None:
        self.room_id = room_id
        self.name = ""
        self.self_id: str | None = None
        self.joined = False
        self._participants: dict[str, Participant] = {}
        self._subscribers: list[trio.MemorySendChannel[RoomEvent]] = []
        self._buffer = subscriber_buffer

    @property
    def participants(self) -> list[Participant]:
        return list(self._participants.values())

    def get(self, user_id: str) -> Participant | None:
        """The participant with this id, if the room model lists them."""
        return self._participants.get(user_id)

    def subscribe(self) -> trio.MemoryReceiveChannel[RoomEvent]:
        """A channel of every later event; close it to unsubscribe."""
        send, recv = trio.open_memory_channel[RoomEvent](self._buffer)
        self._subscribers.append(send)
        return recv

    def _emit(self, event: RoomEvent) -> None:
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                log.error("room.subscriber_overflow", event=type(event).__name__)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(send)

    def _add(self, user_id: str, username: str, reason: str) -> None:
        if user_id == self.self_id or user_id in self._participants:
            return
        p = Participant(user_id, username)
        self._participants[user_id] = p
        log.info("room.participant_added", room=self.room_id, user_id=user_id,
                 username=username, reason=reason)
        self._emit(ParticipantAdded(p, reason))

    def _remove(self, user_id: str, reason: str) -> None:
        p = self._participants.pop(user_id, None)
        if p is None:
            return
        log.info("room.participant_removed", room=self.room_id, user_id=user_id,
                 username=p.username, reason=reason)
        self._emit(ParticipantRemoved(p, reason))

    def reconcile(self, self_id: str, name: str, users: Iterable[RoomUser]) -> None:
        """Apply a ``room_joined`` list: the truth after every (re-)join."""
        self.self_id = self_id
        self.name = name
        self.joined = True
        active = {u.id: u for u in users if u.is_active and u.id != self_id}
        for user_id in list(self._participants):
            if user_id not in active:
                self._remove(user_id, "reconciled")
        for u in active.values():
            self._add(u.id, u.username, "reconciled")
        log.info("room.reconciled", room=self.room_id, participants=len(self._participants))
        self._emit(Reconciled(tuple(self._participants.values())))

    def seen(self, user_id: str, username: str = "") -> None:
        """A participant we learnt of from their signals, not from the server's lists."""
        self._add(user_id, username, "signal")

    def user_joined(self, user_id: str, username: str) -> None:
        self._add(user_id, username, "user_joined")

    def user_left(self, user_id: str, reason: str = "user_left") -> None:
        self._remove(user_id, reason)

    def left(self) -> None:
        """We left the room ourselves: everyone is gone for us."""
        self.joined = False
        for user_id in list(self._participants):
            self._remove(user_id, "room_left")
