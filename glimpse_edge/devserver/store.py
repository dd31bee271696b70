"""SQLite persistence for the development server: users, rooms, members, messages.

Glimpse keeps users, rooms and room membership in a database, and the agent's
behaviour depends on that: membership survives disconnects and restarts, so a
device that comes back after a reboot is *already* a member and nobody gets a
``user_joined`` for it. The dev server must reproduce that, hence a real
database file (``:memory:`` for throw-away servers) rather than dicts.

The JWT signing secret lives in the same database so that tokens issued before
a restart stay valid after it, as they do against the real server.

Everything here is synchronous stdlib ``sqlite3`` on the Trio thread: the
queries are tiny and a dev server has a handful of clients, so blocking for a
few microseconds is cheaper than the complexity of a worker thread. Each write
commits immediately (autocommit), so a SIGKILL never loses acknowledged data.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# How many recent messages a joiner receives in ``room_joined``.
RECENT_MESSAGES = 50

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    last_active   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rooms (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    created_by  TEXT NOT NULL REFERENCES users(id),
    created_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    room_id   TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    joined_at TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE TABLE IF NOT EXISTS messages (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    room_id    TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    sender_id  TEXT REFERENCES users(id),
    content    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_room ON messages(room_id, seq);
"""


def new_id() -> str:
    """A 24-hex id, the shape of a MongoDB ObjectId that Glimpse clients expect."""
    return secrets.token_hex(12)


def now_iso() -> str:
    """Current UTC time as JavaScript's ``Date.toISOString()`` renders it."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class User:
    """A registered account (the password hash never leaves the store's callers)."""

    id: str
    username: str
    email: str
    password_hash: str
    last_active: str

    def public(self) -> dict[str, Any]:
        """The user as the HTTP API shows it."""
        return {"id": self.id, "username": self.username, "email": self.email}


@dataclass(frozen=True, slots=True)
class Room:
    """A room and the ids of its members (in the order they became members)."""

    id: str
    name: str
    description: str
    created_by: str
    created_at: str
    members: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The room as the HTTP API shows it (``_id`` like MongoDB documents)."""
        return {
            "_id": self.id,
            "name": self.name,
            "description": self.description,
            "createdBy": self.created_by,
            "members": list(self.members),
            "createdAt": self.created_at,
        }


class UsernameTaken(Exception):
    """Registration with a username that already exists."""


class Store:
    """The dev server's database. One instance per server; not thread-safe."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.executescript(_SCHEMA)
        self.jwt_secret = self._load_or_create_secret()

    def close(self) -> None:
        """Close the database; the store is unusable afterwards."""
        self._db.close()

    def _load_or_create_secret(self) -> str:
        row = self._db.execute("SELECT value FROM settings WHERE key = 'jwt_secret'").fetchone()
        if row is not None:
            return str(row["value"])
        secret = secrets.token_hex(32)
        # INSERT OR IGNORE + re-read: correct even if two processes race on a new file.
        self._db.execute(
            "INSERT OR IGNORE INTO settings(key, value) VALUES ('jwt_secret', ?)", (secret,)
        )
        row = self._db.execute("SELECT value FROM settings WHERE key = 'jwt_secret'").fetchone()
        return str(row["value"])

    # -- users --------------------------------------------------------------

    def create_user(self, username: str, email: str, password_hash: str) -> User:
        """Insert a user; raises :class:`UsernameTaken` if the name exists."""
        now = now_iso()
        user = User(new_id(), username, email, password_hash, now)
        try:
            self._db.execute(
                "INSERT INTO users(id, username, email, password_hash, created_at, last_active)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (user.id, username, email, password_hash, now, now),
            )
        except sqlite3.IntegrityError as exc:
            raise UsernameTaken(username) from exc
        return user

    def user_by_id(self, user_id: str) -> User | None:
        """The user with this id, or None."""
        return self._user("SELECT * FROM users WHERE id = ?", user_id)

    def user_by_username(self, username: str) -> User | None:
        """The user with this exact username, or None."""
        return self._user("SELECT * FROM users WHERE username = ?", username)

    def user_by_email(self, email: str) -> User | None:
        """The first user registered with this email, or None."""
        return self._user("SELECT * FROM users WHERE email = ? ORDER BY created_at", email)

    def _user(self, sql: str, arg: str) -> User | None:
        row = self._db.execute(sql, (arg,)).fetchone()
        if row is None:
            return None
        return User(
            row["id"], row["username"], row["email"], row["password_hash"], row["last_active"]
        )

    def touch_user(self, user_id: str) -> None:
        """Record that the user was active now (shown as ``lastActive``)."""
        self._db.execute("UPDATE users SET last_active = ? WHERE id = ?", (now_iso(), user_id))

    def count_users(self) -> int:
        """Number of registered users (for the health endpoint)."""
        return int(self._db.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    # -- rooms --------------------------------------------------------------

    def create_room(self, name: str, description: str, created_by: str) -> Room:
        """Create a room whose creator is its first member, as Glimpse does."""
        room_id = new_id()
        now = now_iso()
        self._db.execute("BEGIN")
        try:
            self._db.execute(
                "INSERT INTO rooms(id, name, description, created_by, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (room_id, name, description, created_by, now),
            )
            self._insert_member(room_id, created_by, now)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        room = self.room(room_id)
        assert room is not None
        return room

    def room(self, room_id: str) -> Room | None:
        """The room with this id (with its members), or None."""
        row = self._db.execute("SELECT * FROM rooms WHERE id = ?", (room_id,)).fetchone()
        if row is None:
            return None
        return Room(
            row["id"],
            row["name"],
            row["description"],
            row["created_by"],
            row["created_at"],
            tuple(self.member_ids(room_id)),
        )

    def rooms(self) -> list[Room]:
        """Every room, oldest first."""
        ids = [r["id"] for r in self._db.execute("SELECT id FROM rooms ORDER BY created_at, id")]
        return [room for room_id in ids if (room := self.room(room_id)) is not None]

    def count_rooms(self) -> int:
        """Number of rooms (for the health endpoint)."""
        return int(self._db.execute("SELECT COUNT(*) FROM rooms").fetchone()[0])

    # -- membership ---------------------------------------------------------

    def _insert_member(self, room_id: str, user_id: str, now: str) -> bool:
        seq = self._db.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM members WHERE room_id = ?", (room_id,)
        ).fetchone()[0]
        cur = self._db.execute(
            "INSERT OR IGNORE INTO members(room_id, user_id, joined_at, seq) VALUES (?, ?, ?, ?)",
            (room_id, user_id, now, seq),
        )
        return cur.rowcount == 1

    def add_member(self, room_id: str, user_id: str) -> bool:
        """Make the user a member; True if it was not one before."""
        return self._insert_member(room_id, user_id, now_iso())

    def remove_member(self, room_id: str, user_id: str) -> bool:
        """End the user's membership; True if it was a member."""
        cur = self._db.execute(
            "DELETE FROM members WHERE room_id = ? AND user_id = ?", (room_id, user_id)
        )
        return cur.rowcount == 1

    def is_member(self, room_id: str, user_id: str) -> bool:
        """Whether the user is (persistently) a member of the room."""
        row = self._db.execute(
            "SELECT 1 FROM members WHERE room_id = ? AND user_id = ?", (room_id, user_id)
        ).fetchone()
        return row is not None

    def member_ids(self, room_id: str) -> list[str]:
        """Ids of the room's members, in the order they joined."""
        rows = self._db.execute(
            "SELECT user_id FROM members WHERE room_id = ? ORDER BY seq", (room_id,)
        )
        return [str(r["user_id"]) for r in rows]

    def members(self, room_id: str) -> list[User]:
        """The room's members as users, in the order they joined."""
        rows = self._db.execute(
            "SELECT u.* FROM members m JOIN users u ON u.id = m.user_id"
            " WHERE m.room_id = ? ORDER BY m.seq",
            (room_id,),
        )
        return [
            User(r["id"], r["username"], r["email"], r["password_hash"], r["last_active"])
            for r in rows
        ]

    # -- messages -----------------------------------------------------------

    def add_message(
        self, room_id: str, sender: User | None, content: str, kind: str = "text"
    ) -> dict[str, Any]:
        """Store a chat (``text``) or ``system`` message and return it as sent on the wire."""
        msg_id = new_id()
        now = now_iso()
        self._db.execute(
            "INSERT INTO messages(id, room_id, sender_id, content, kind, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (msg_id, room_id, sender.id if sender else None, content, kind, now),
        )
        return message_json(msg_id, room_id, sender, content, kind, now)

    def recent_messages(self, room_id: str, limit: int = RECENT_MESSAGES) -> list[dict[str, Any]]:
        """The room's last ``limit`` messages, oldest first."""
        rows = self._db.execute(
            "SELECT m.*, u.username FROM messages m LEFT JOIN users u ON u.id = m.sender_id"
            " WHERE m.room_id = ? ORDER BY m.seq DESC LIMIT ?",
            (room_id, limit),
        ).fetchall()
        out = []
        for r in reversed(rows):
            sender = {"id": r["sender_id"], "username": r["username"]} if r["sender_id"] else None
            out.append(
                _message_dict(r["id"], room_id, sender, r["content"], r["kind"], r["created_at"])
            )
        return out


def message_json(
    msg_id: str, room_id: str, sender: User | None, content: str, kind: str, created_at: str
) -> dict[str, Any]:
    """A message as Glimpse clients receive it (also used for unsaved system notices)."""
    who = {"id": sender.id, "username": sender.username} if sender else None
    return _message_dict(msg_id, room_id, who, content, kind, created_at)


def _message_dict(
    msg_id: str,
    room_id: str,
    sender: dict[str, Any] | None,
    content: str,
    kind: str,
    created_at: str,
) -> dict[str, Any]:
    return {
        "_id": msg_id,
        "roomId": room_id,
        "sender": sender,
        "content": content,
        "type": kind,
        "createdAt": created_at,
    }
