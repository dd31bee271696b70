"""Live WebSocket connections: who is online, which sockets joined which room.

The database (:mod:`.store`) knows who is a *member* of a room; the hub knows
which open sockets have *joined* it in this process. Glimpse distinguishes the
two, and so must we: a member that is offline is still a member, and a
``user_offline`` goes to the sockets currently joined to the room.

Nothing here awaits. Each connection has a bounded outbox that its own writer
task drains (see :mod:`.session`), so a broadcast is a loop of
``send_nowait``: it can never block on a slow client, and a client that stops
reading long enough to fill its outbox is disconnected instead of stalling the
server for everybody else.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

log = structlog.get_logger(__name__)

# Messages queued for one socket before it counts as a stuck client.
OUTBOX_SIZE = 512
# WebSocket close code for a client that does not read ("policy violation").
CLOSE_SLOW_CONSUMER = 1008

_ids = itertools.count(1)


@dataclass(eq=False)
class Connection:
    """One open WebSocket: its outbox, its identity once authenticated, its rooms."""

    outbox: trio.MemorySendChannel[str]
    id: int = field(default_factory=lambda: next(_ids))
    user_id: str | None = None
    username: str | None = None
    rooms: set[str] = field(default_factory=set)
    # Set by the session: called (synchronously) to drop this socket.
    kick: Callable[[int, str], None] | None = None
    closed: bool = False

    def send(self, message: dict[str, Any]) -> bool:
        """Queue a message for this socket; False if it is gone or hopelessly behind."""
        if self.closed:
            return False
        try:
            # ASCII escapes keep any string, even an unpaired surrogate, encodable.
            self.outbox.send_nowait(json.dumps(message))
        except trio.WouldBlock:
            self.closed = True  # drop it once, not once per later broadcast
            log.warning("devserver.ws.slow_consumer", conn=self.id, user_id=self.user_id)
            if self.kick is not None:
                self.kick(CLOSE_SLOW_CONSUMER, "slow consumer")
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True


class Hub:
    """Registry of live connections, per user and per joined room."""

    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self._by_user: dict[str, set[Connection]] = {}
        self._room_sockets: dict[str, set[Connection]] = {}

    # -- lifecycle ----------------------------------------------------------

    def add(self, conn: Connection) -> None:
        """Register a freshly accepted (not yet authenticated) socket."""
        self.connections.add(conn)

    def remove(self, conn: Connection) -> tuple[str | None, set[str], bool]:
        """Forget a closed socket.

        Returns ``(user_id, rooms it had joined, user went offline)`` so the
        caller can tell the rooms; "offline" means the user has no other open
        authenticated socket.
        """
        conn.closed = True
        self.connections.discard(conn)
        user_id, rooms = conn.user_id, set(conn.rooms)
        went_offline = self.detach_user(conn)
        return user_id, rooms, went_offline

    def attach_user(self, conn: Connection, user_id: str, username: str) -> None:
        """Bind an authenticated identity to a socket."""
        conn.user_id = user_id
        conn.username = username
        self._by_user.setdefault(user_id, set()).add(conn)

    def detach_user(self, conn: Connection) -> bool:
        """Drop the socket's identity and room joins; True if its user is now offline."""
        for room_id in list(conn.rooms):
            self.unjoin(conn, room_id)
        if conn.user_id is None:
            return False
        sockets = self._by_user.get(conn.user_id, set())
        sockets.discard(conn)
        if not sockets:
            self._by_user.pop(conn.user_id, None)
        conn.user_id = conn.username = None
        return not sockets

    # -- rooms --------------------------------------------------------------

    def join(self, conn: Connection, room_id: str) -> None:
        """Mark the socket as joined to the room (it receives room traffic)."""
        conn.rooms.add(room_id)
        self._room_sockets.setdefault(room_id, set()).add(conn)

    def unjoin(self, conn: Connection, room_id: str) -> None:
        """Stop sending the room's traffic to this socket."""
        conn.rooms.discard(room_id)
        sockets = self._room_sockets.get(room_id)
        if sockets is not None:
            sockets.discard(conn)
            if not sockets:
                del self._room_sockets[room_id]

    def unjoin_user(self, user_id: str, room_id: str) -> None:
        """Detach every socket of the user from the room (the user left it)."""
        for conn in list(self._room_sockets.get(room_id, ())):
            if conn.user_id == user_id:
                self.unjoin(conn, room_id)

    def room_sockets(self, room_id: str) -> set[Connection]:
        """Sockets currently joined to the room."""
        return set(self._room_sockets.get(room_id, ()))

    # -- users --------------------------------------------------------------

    def is_online(self, user_id: str) -> bool:
        """Whether the user has at least one open authenticated socket."""
        return bool(self._by_user.get(user_id))

    def user_sockets(self, user_id: str) -> set[Connection]:
        """All open authenticated sockets of the user."""
        return set(self._by_user.get(user_id, ()))

    def online_count(self) -> int:
        """Number of users with an open authenticated socket."""
        return len(self._by_user)

    # -- sending ------------------------------------------------------------

    def broadcast(
        self, room_id: str, message: dict[str, Any], *, exclude: Iterable[Connection] = ()
    ) -> int:
        """Send to every socket joined to the room except ``exclude``; returns how many."""
        skip = set(exclude)
        sent = 0
        for conn in self.room_sockets(room_id):
            if conn not in skip and conn.send(message):
                sent += 1
        return sent

    def relay_targets(self, user_id: str, room_id: str) -> set[Connection]:
        """Where a signal for ``user_id`` in ``room_id`` goes.

        The target's sockets joined to the room; if none joined it yet (a
        peer that is still between ``authenticated`` and ``join_room``), all of
        its sockets, so that signals are not lost to a race.
        """
        sockets = self.user_sockets(user_id)
        in_room = {c for c in sockets if room_id in c.rooms}
        return in_room or sockets
