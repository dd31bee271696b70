"""One WebSocket client: frame parsing, validation and the Glimpse message handlers.

Each socket runs two tasks: a reader that handles frames one at a time, and
a writer that drains the socket's outbox (see :mod:`.hub` for why). Handlers
are synchronous: a frame is handled completely, including every message it
causes to be queued for other sockets, before the next frame of any socket is
read. That makes the ordering guarantees the tests rely on hold by
construction; e.g. by the time a joiner has received ``room_joined``, every
``user_joined`` it caused is already queued for the other members.

Bad input never ends a session: it gets ``{"type": "error", "message": ...}``
and the socket stays open. Only oversized frames close it (code 1009, done by
hypercorn before the frame reaches us), as does a client that stops reading.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import structlog
import trio
from starlette.websockets import WebSocket, WebSocketDisconnect

from .auth import InvalidToken, decode_token
from .hub import OUTBOX_SIZE, Connection, Hub
from .store import Store, User, message_json, new_id, now_iso

log = structlog.get_logger(__name__)

SIGNAL_TYPES = frozenset({"offer", "answer", "ice-candidate"})
MAX_ID_LENGTH = 128
MAX_CONTENT_LENGTH = 10_000
# How long closing a socket that we drop (slow consumer) may take.
_CLOSE_TIMEOUT_S = 2.0


def is_utf8_clean(value: Any) -> bool:
    """Whether every string in a decoded JSON value can be encoded as UTF-8.

    JSON may spell an unpaired surrogate (``"\\ud800"``); such a string
    cannot be stored in SQLite or sent as UTF-8, so it is rejected on input.
    """
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class BadMessage(Exception):
    """A frame that is well-formed JSON but not a valid request; the text goes to the client."""


class Session:
    """The protocol state of one socket. Every method is synchronous; see module doc."""

    def __init__(self, hub: Hub, store: Store, conn: Connection) -> None:
        self.hub = hub
        self.store = store
        self.conn = conn
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "authenticate": self._authenticate,
            "join_room": self._join_room,
            "leave_room": self._leave_room,
            "webrtc_signal": self._signal,
            "offer": self._signal,
            "answer": self._signal,
            "ice-candidate": self._signal,
            "send_message": self._send_message,
            "typing": self._typing,
            "get_room_users": self._get_room_users,
            "ping": self._ping,
        }

    # -- frames -------------------------------------------------------------

    def handle_frame(self, text: str | None, data: bytes | None) -> None:
        """Handle one received frame; never raises for anything the client sent."""
        if text is None:
            self._reject("Binary frames are not supported; send JSON text", "binary")
            return
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            self._reject("Invalid JSON", "invalid_json")
            return
        if not isinstance(msg, dict):
            self._reject("Message must be a JSON object", "not_object")
            return
        if not is_utf8_clean(msg):
            self._reject("Invalid JSON: unpaired surrogate escape in a string", "surrogate")
            return
        mtype = msg.get("type")
        if not isinstance(mtype, str) or not mtype:
            self._reject("Message type is required", "no_type")
            return
        if self.conn.user_id is None and mtype != "authenticate":
            self._reject("Authentication required", "unauthenticated")
            return
        handler = self._handlers.get(mtype)
        if handler is None:
            self._reject(f"Unknown message type: {mtype[:64]}", "unknown_type")
            return
        try:
            handler(msg)
        except BadMessage as exc:
            self._reject(str(exc), "invalid_fields", msg_type=mtype)
        except Exception:
            # A bug here must cost this one request, not the socket or the server.
            log.exception("devserver.handler_failed", conn=self.conn.id, msg_type=mtype)
            self.conn.send({"type": "error", "message": "Internal server error"})

    def _reject(self, message: str, reason: str, **fields: Any) -> None:
        log.info(
            "devserver.bad_message",
            conn=self.conn.id,
            user_id=self.conn.user_id,
            reason=reason,
            **fields,
        )
        self.conn.send({"type": "error", "message": message})

    def closed(self) -> None:
        """The socket is gone: forget it, and tell its rooms if its user went offline."""
        user_id, username = self.conn.user_id, self.conn.username
        _, rooms, offline = self.hub.remove(self.conn)
        if user_id is not None and username is not None and offline:
            self._announce_offline(user_id, username, rooms)
        log.info("devserver.ws.disconnected", conn=self.conn.id, user_id=user_id)

    def _announce_offline(self, user_id: str, username: str, rooms: set[str]) -> None:
        self.store.touch_user(user_id)
        for room_id in rooms:
            notice = message_json(
                new_id(), room_id, None, f"{username} went offline", "system", now_iso()
            )
            self.hub.broadcast(
                room_id,
                {
                    "type": "user_offline",
                    "userId": user_id,
                    "username": username,
                    "message": notice,
                },
            )
            log.info("devserver.room.user_offline", room_id=room_id, user_id=user_id)

    # -- field helpers --------------------------------------------------------

    @staticmethod
    def _id_field(msg: dict[str, Any], name: str) -> str:
        value = msg.get(name)
        if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
            raise BadMessage(f"Field '{name}' must be a non-empty string")
        return value

    def _room_for_member(self, msg: dict[str, Any]) -> str:
        """The message's room id, checked to exist and to have the sender as a member."""
        room_id = self._id_field(msg, "roomId")
        if self.store.room(room_id) is None:
            raise BadMessage("Room not found")
        assert self.conn.user_id is not None
        if not self.store.is_member(room_id, self.conn.user_id):
            raise BadMessage("Not a member of this room")
        return room_id

    def _me(self) -> User:
        assert self.conn.user_id is not None
        user = self.store.user_by_id(self.conn.user_id)
        if user is None:  # the account vanished under an open socket
            raise BadMessage("User not found")
        return user

    def _users(self, room_id: str) -> list[dict[str, Any]]:
        return [
            {
                "id": u.id,
                "username": u.username,
                "isActive": self.hub.is_online(u.id),
                "lastActive": u.last_active,
            }
            for u in self.store.members(room_id)
        ]

    # -- handlers -------------------------------------------------------------

    def _authenticate(self, msg: dict[str, Any]) -> None:
        token = msg.get("token")
        if not isinstance(token, str) or not token:
            self._auth_error("No token provided")
            return
        try:
            claims = decode_token(self.store.jwt_secret, token)
        except InvalidToken as exc:
            self._auth_error("Invalid token", detail=str(exc))
            return
        user = self.store.user_by_id(claims["id"])
        if user is None:
            self._auth_error("User not found")
            return
        if self.conn.user_id is not None and self.conn.user_id != user.id:
            # Re-authenticating as someone else: the old identity leaves first.
            old_id, old_name, rooms = self.conn.user_id, self.conn.username, set(self.conn.rooms)
            if self.hub.detach_user(self.conn) and old_name is not None:
                self._announce_offline(old_id, old_name, rooms)
        if self.conn.user_id is None:
            self.hub.attach_user(self.conn, user.id, user.username)
            self.store.touch_user(user.id)
        self.conn.send({"type": "authenticated", "userId": user.id, "username": user.username})
        log.info(
            "devserver.ws.authenticated",
            conn=self.conn.id,
            user_id=user.id,
            username=user.username,
        )

    def _auth_error(self, message: str, **fields: Any) -> None:
        # A failed attempt leaves an earlier successful authentication in place.
        log.info("devserver.ws.auth_failed", conn=self.conn.id, reason=message, **fields)
        self.conn.send({"type": "auth_error", "message": message})

    def _join_room(self, msg: dict[str, Any]) -> None:
        room_id = self._id_field(msg, "roomId")
        room = self.store.room(room_id)
        if room is None:
            raise BadMessage("Room not found")
        me = self._me()
        new_member = self.store.add_member(room_id, me.id)
        self.hub.join(self.conn, room_id)
        notice = None
        if new_member:
            notice = self.store.add_message(
                room_id, None, f"{me.username} joined the room", "system"
            )
        self.conn.send(
            {
                "type": "room_joined",
                "roomId": room_id,
                "name": room.name,
                "description": room.description,
                "messages": self.store.recent_messages(room_id),
                "users": self._users(room_id),
            }
        )
        if notice is not None:
            self.hub.broadcast(
                room_id,
                {
                    "type": "user_joined",
                    "userId": me.id,
                    "username": me.username,
                    "message": notice,
                },
                exclude=[self.conn],
            )
        log.info(
            "devserver.room.joined",
            conn=self.conn.id,
            room_id=room_id,
            user_id=me.id,
            new_member=new_member,
        )

    def _leave_room(self, msg: dict[str, Any]) -> None:
        room_id = self._id_field(msg, "roomId")
        if self.store.room(room_id) is None:
            raise BadMessage("Room not found")
        me = self._me()
        was_member = self.store.remove_member(room_id, me.id)
        # Membership is per user: none of the user's sockets stays in the room.
        self.hub.unjoin_user(me.id, room_id)
        self.conn.send({"type": "room_left", "roomId": room_id})
        if was_member:
            notice = self.store.add_message(room_id, None, f"{me.username} left the room", "system")
            self.hub.broadcast(
                room_id,
                {"type": "user_left", "userId": me.id, "username": me.username, "message": notice},
            )
        log.info(
            "devserver.room.left",
            conn=self.conn.id,
            room_id=room_id,
            user_id=me.id,
            was_member=was_member,
        )

    def _signal(self, msg: dict[str, Any]) -> None:
        kind = msg.get("signalType") if msg["type"] == "webrtc_signal" else msg["type"]
        if not isinstance(kind, str) or kind not in SIGNAL_TYPES:
            raise BadMessage("Field 'signalType' must be one of: offer, answer, ice-candidate")
        peer_id = self._id_field(msg, "peerId")
        if "signal" not in msg:
            raise BadMessage("Field 'signal' is required")
        room_id = self._room_for_member(msg)
        sender = self.conn.user_id
        targets = self.hub.relay_targets(peer_id, room_id)
        if not targets:
            raise BadMessage("Peer not connected")
        out = {
            "type": "webrtc_signal",
            "signalType": kind,
            "roomId": room_id,
            "peerId": sender,
            "signal": msg["signal"],
        }
        delivered = sum(1 for conn in targets if conn.send(out))
        (log.debug if kind == "ice-candidate" else log.info)(
            "devserver.signal.relayed",
            kind=kind,
            room_id=room_id,
            from_user=sender,
            to_user=peer_id,
            sockets=delivered,
            dialect=msg["type"],
        )

    def _send_message(self, msg: dict[str, Any]) -> None:
        room_id = self._room_for_member(msg)
        content = msg.get("content")
        if not isinstance(content, str) or not content.strip():
            raise BadMessage("Field 'content' must be a non-empty string")
        if len(content) > MAX_CONTENT_LENGTH:
            raise BadMessage(f"Message too long (max {MAX_CONTENT_LENGTH} characters)")
        stored = self.store.add_message(room_id, self._me(), content, "text")
        out = {"type": "new_message", "message": stored}
        self.hub.broadcast(room_id, out)
        if room_id not in self.conn.rooms:  # a member that has not joined still sees its echo
            self.conn.send(out)
        log.info("devserver.message.sent", room_id=room_id, user_id=self.conn.user_id)

    def _typing(self, msg: dict[str, Any]) -> None:
        room_id = self._room_for_member(msg)
        is_typing = msg.get("isTyping")
        if not isinstance(is_typing, bool):
            raise BadMessage("Field 'isTyping' must be a boolean")
        self.hub.broadcast(
            room_id,
            {
                "type": "typing_status",
                "roomId": room_id,
                "userId": self.conn.user_id,
                "username": self.conn.username,
                "isTyping": is_typing,
            },
            exclude=[self.conn],
        )

    def _get_room_users(self, msg: dict[str, Any]) -> None:
        room_id = self._id_field(msg, "roomId")
        if self.store.room(room_id) is None:
            raise BadMessage("Room not found")
        self.conn.send({"type": "room_users", "roomId": room_id, "users": self._users(room_id)})

    def _ping(self, msg: dict[str, Any]) -> None:
        # Not in Glimpse; lets tests fence a socket's queue without sleeping.
        pong: dict[str, Any] = {"type": "pong"}
        if "id" in msg:
            pong["id"] = msg["id"]
        self.conn.send(pong)


async def run_session(websocket: WebSocket, hub: Hub, store: Store) -> None:
    """Serve one WebSocket until it closes, is dropped, or the server stops."""
    await websocket.accept()
    outbox, pending = trio.open_memory_channel[str](OUTBOX_SIZE)
    conn = Connection(outbox)
    session = Session(hub, store, conn)
    hub.add(conn)
    client = websocket.client
    log.info(
        "devserver.ws.connected",
        conn=conn.id,
        path=websocket.url.path,
        client=f"{client.host}:{client.port}" if client else None,
    )

    reader_scope = trio.CancelScope()
    drop: list[tuple[int, str]] = []

    def kick(code: int, reason: str) -> None:
        if not drop:
            drop.append((code, reason))
        reader_scope.cancel()

    conn.kick = kick
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_write, websocket, pending, kick)
        try:
            with reader_scope:
                await _read(websocket, session)
        finally:
            session.closed()
            outbox.close()
            nursery.cancel_scope.cancel()
    if drop and drop[0][0] != 0:
        code, reason = drop[0]
        with trio.move_on_after(_CLOSE_TIMEOUT_S):
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await websocket.close(code=code, reason=reason)
        log.info("devserver.ws.dropped", conn=conn.id, code=code, reason=reason)


async def _read(websocket: WebSocket, session: Session) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        session.handle_frame(message.get("text"), message.get("bytes"))


async def _write(
    websocket: WebSocket,
    pending: trio.MemoryReceiveChannel[str],
    kick: Callable[[int, str], None],
) -> None:
    try:
        async for text in pending:
            await websocket.send_text(text)
    except (WebSocketDisconnect, RuntimeError, trio.BrokenResourceError):
        # The client is gone; code 0 = nothing left to close, just stop reading.
        kick(0, "send failed")
