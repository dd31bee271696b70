"""The WebSocket session with the Glimpse server: connect, authenticate, join, stay.

:meth:`SignalingSession.run` never returns: it connects, authenticates, joins
the room and dispatches messages until the connection ends, then waits a
jittered, growing delay and starts again. A dead connection is noticed by
WebSocket pings (a silent server within ``ping_interval + ping_timeout``); a
server that accepts TCP but never finishes the handshake by
``connect_timeout``. A rejected token is not retried in a loop: the session
waits until the token (or password) file changes, or ``auth_retry`` seconds.

Media never waits on signaling: nothing here touches peer connections. WebRTC
signals go out on a channel; the room model learns who is there.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import structlog
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    connect_websocket_url,
)

from ..config import ServerConfig
from ..room import Room
from ..rtc.compat import websocket_stream
from ..supervise import Backoff, RestartPolicy, RestartTracker, raise_sole
from ..tls import client_context
from .messages import (
    Authenticate,
    Authenticated,
    AuthenticateResponse,
    AuthError,
    ErrorMessage,
    IncomingMessage,
    JoinRoom,
    LeaveRoom,
    OutgoingMessage,
    ProtocolError,
    RoomJoined,
    RoomLeft,
    RoomUsers,
    UnknownMessage,
    UserJoined,
    UserLeft,
    UserOffline,
    WebRTCSignal,
    decode,
    encode,
)
from .tokens import CredentialsRejected, TokenSource, TokenUnavailable

log = structlog.get_logger(__name__)

# How many malformed frames per connection are logged one by one before we
# only count them (a flood of garbage must not become a flood of log lines).
BAD_MESSAGE_LOG_LIMIT = 20
# How long a polite close may take before we drop the socket anyway.
CLOSE_TIMEOUT = 1.0


class AuthRejected(Exception):
    """The server answered auth_error."""


class RoomNotFound(Exception):
    """The server does not know the configured room."""


class ConnectionDead(Exception):
    """The server stopped answering pings."""


StatusCallback = Callable[[str], None]


class JoinedState:
    """Whether a session is joined to its room, to await: :meth:`wait` returns
    once it is (at once while it is); it resets when the session drops."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class SignalingSession:
    """One agent's presence in one room, across any number of connections."""

    def __init__(
        self,
        server: ServerConfig,
        room: Room,
        tokens: TokenSource,
        *,
        on_status: StatusCallback = lambda _text: None,
        signals: trio.MemorySendChannel[WebRTCSignal] | None = None,
    ) -> None:
        self.server = server
        self.room = room
        self.tokens = tokens
        self._on_status = on_status
        self._signals = signals
        self._ws: WebSocketConnection | None = None
        self._left = trio.Event()
        self._bad_messages = 0
        self.user_id: str | None = None
        self.username: str = ""
        self.connects = 0
        self._closed = trio.Event()  # replaced by leave(); set once the socket is closed
        self._receiving = trio.CancelScope()  # the joined phase; leave() cancels it
        self.auth_failures = 0
        self.state = "starting"
        self.state_detail = ""
        self.joined = JoinedState()
        # Reconnecting never gives up: a device waits out a long server outage.
        self.reconnects = RestartTracker("signaling", RestartPolicy(
            name="reconnect-forever",
            backoff=Backoff(initial=server.reconnect_min, maximum=server.reconnect_max),
            max_restarts=None))

    # -- public -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def send(self, message: OutgoingMessage) -> bool:
        """Send if connected; False when there is no connection right now."""
        ws = self._ws
        if ws is None:
            return False
        try:
            await ws.send_message(encode(message))
        except ConnectionClosed:
            return False
        return True

    async def refresh_room(self) -> bool:
        """Ask for the room's participant list again; False when not joined right now.

        Sends ``join_room`` once more on the joined socket: a member that joins
        again gets ``room_joined`` (dispatched as usual: the room reconciles)
        and nobody else is told anything (see the protocol, Session 2).
        """
        if self._ws is None or not self.room.joined:
            return False
        return await self.send(JoinRoom(room_id=self.room.room_id))

    async def leave(self, timeout: float = 2.0) -> None:
        """Leave the room and close the socket politely (on shutdown)."""
        self._stopping = True
        ws = self._ws
        if ws is None:
            return
        with trio.move_on_after(timeout):
            if self.room.joined:
                self._left = trio.Event()
                await ws.send_message(encode(LeaveRoom(room_id=self.room.room_id)))
                await self._left.wait()
                log.info("room.left", room=self.room.room_id)
            # The connection's own task closes it: it owns the reader task that
            # must see the server's close frame (closing from here while that
            # task tears the connection down would wait for nothing).
            closed = self._closed = trio.Event()
            self._receiving.cancel()
            await closed.wait()
        self._ws = None

    async def run(self) -> None:
        """Stay joined, forever. Only cancellation ends it."""
        tracker = self.reconnects
        while True:
            try:
                await self._connect_once()
                reason = "connection closed"
            except (AuthRejected, CredentialsRejected) as exc:
                await self._wait_after_rejection(str(exc))
                tracker.reset()
                continue
            except RoomNotFound as exc:
                reason = str(exc)
                tracker.at_least(8)  # nobody creates rooms quickly: back off far
            except TokenUnavailable as exc:
                reason = f"no token: {exc}"
            except (OSError, HandshakeError, ConnectionClosed, ConnectionDead,
                    trio.TooSlowError, trio.BrokenResourceError) as exc:
                reason = _describe(exc)
            finally:
                self._ws = None
            if self._stopping:
                await trio.sleep_forever()  # leave() closed the socket; we are being stopped
            if self._was_joined:
                tracker.reset()
            delay = tracker.failed(trio.current_time())
            self._set_state("reconnecting", f"reconnecting in {delay:.1f} s: {reason}")
            log.warning("signaling.reconnecting", reason=reason, delay=round(delay, 2),
                        attempt=tracker.attempt)
            await trio.sleep(delay)

    # -- internals ----------------------------------------------------------

    _was_joined = False
    _stopping = False

    def _set_state(self, state: str, detail: str) -> None:
        self.state, self.state_detail = state, detail
        if state == "joined":
            self.joined.set()
        else:
            self.joined.clear()
        self._on_status(detail)

    async def _wait_after_rejection(self, reason: str) -> None:
        self.auth_failures += 1
        self.tokens.rejected()
        wait = self.server.auth_retry
        log.error("signaling.auth_rejected", reason=reason, retry_in=wait)
        self._set_state(
            "auth_rejected",
            f"credentials rejected ({reason}); retrying in {wait:.0f} s or when they change",
        )
        with trio.move_on_after(wait):
            await self.tokens.wait_changed()
            log.info("auth.credentials_changed")

    async def _connect_once(self) -> None:
        self._was_joined = False
        token = await self.tokens.get()
        url = self.server.ws_url
        self._set_state("connecting", f"connecting to {url}")
        ssl_context = client_context(self.server.ca_file) if url.startswith("wss:") else None
        t0 = time.monotonic()
        try:
            async with trio.open_nursery() as ws_nursery:
                # trio-websocket's own connect_timeout does not bound a server
                # that accepts TCP and then says nothing: bound it ourselves.
                with trio.fail_after(self.server.connect_timeout):
                    ws = await connect_websocket_url(
                        ws_nursery, url, ssl_context=ssl_context,
                        max_message_size=self.server.max_message_size,
                    )
                try:
                    self.connects += 1
                    self._bad_messages = 0
                    log.info("signaling.connected", url=url, connects=self.connects,
                             ms=round((time.monotonic() - t0) * 1000))
                    await self._session(ws, token)
                finally:
                    self._ws = None
                    with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                        await close_websocket(ws)
                    self._closed.set()
                    ws_nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise_sole(group)

    async def _session(self, ws: WebSocketConnection, token: str) -> None:
        """Authenticate, join, then dispatch until the connection ends."""
        with trio.fail_after(self.server.connect_timeout):
            log.debug("signaling.authenticating", token=token)  # masked: proves redaction
            await ws.send_message(encode(Authenticate(token=token)))
            await self._receive_until(ws, self._is_auth_reply)
            self._set_state("joining", f"joining room {self.room.room_id}")
            await ws.send_message(encode(JoinRoom(room_id=self.room.room_id)))
            await self._receive_until(ws, self._is_join_reply)
        self._ws = ws
        self._was_joined = True
        n = len(self.room.participants)
        log.info("room.joined", room=self.room.room_id, name=self.room.name,
                 participants=n, user_id=self.user_id)
        self._set_state(
            "joined",
            f"joined room {self.room.name or self.room.room_id} with {n} participant"
            + ("" if n == 1 else "s"),
        )
        dead: list[str] = []
        with trio.CancelScope() as self._receiving:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keepalive, ws, dead, nursery.cancel_scope)
                await self._receive_until(ws, lambda _m: False)
                nursery.cancel_scope.cancel()
        if dead:
            raise ConnectionDead(dead[0])

    async def _keepalive(
        self, ws: WebSocketConnection, dead: list[str], scope: trio.CancelScope
    ) -> None:
        while True:
            await trio.sleep(self.server.ping_interval)
            with trio.move_on_after(self.server.ping_timeout) as timer:
                await ws.ping()
            if timer.cancelled_caught:
                log.warning("signaling.ping_timeout", timeout=self.server.ping_timeout)
                dead.append(f"no pong within {self.server.ping_timeout:g} s")
                scope.cancel()
                return

    async def _receive_until(
        self, ws: WebSocketConnection, done: Callable[[IncomingMessage], bool]
    ) -> None:
        """Dispatch every message until ``done(message)`` is true (or the socket closes)."""
        while True:
            frame = await ws.get_message()
            try:
                message = decode(frame)
            except ProtocolError as exc:
                self._bad_message(exc)
                continue
            # redacted by the log pipeline; shows what the server really sent
            log.debug("signaling.received", type=getattr(message, "type", None)
                      or type(message).__name__, frame=frame[:300])
            if done(message):
                return
            self._dispatch(message)

    def _is_auth_reply(self, message: IncomingMessage) -> bool:
        if isinstance(message, Authenticated):
            self.user_id, self.username = message.user_id, message.username
        elif isinstance(message, AuthenticateResponse):
            if not message.success:
                raise AuthRejected(message.message or "authentication failed")
            if not message.user_id:
                raise AuthRejected("authenticate_response carries no userId")
            self.user_id, self.username = message.user_id, message.username
        elif isinstance(message, AuthError):
            raise AuthRejected(message.message or "auth_error")
        else:
            return False
        log.info("signaling.authenticated", user_id=self.user_id, username=self.username)
        return True

    def _is_join_reply(self, message: IncomingMessage) -> bool:
        if isinstance(message, RoomJoined) and message.room_id == self.room.room_id:
            assert self.user_id is not None
            self.room.reconcile(self.user_id, message.name, message.users)
            return True
        if isinstance(message, ErrorMessage) and "room not found" in message.message.lower():
            raise RoomNotFound(f"room {self.room.room_id} not found on the server")
        return False

    def _dispatch(self, message: IncomingMessage) -> None:
        room = self.room
        if isinstance(message, WebRTCSignal):
            if self._signals is None:
                log.debug("signaling.signal_unhandled", peer=message.peer_id,
                          kind=message.signal_type)
                return
            hand_over(self._signals, message)
        elif isinstance(message, UserJoined):
            room.user_joined(message.user_id, message.username)
        elif isinstance(message, UserLeft):
            room.user_left(message.user_id, "user_left")
        elif isinstance(message, UserOffline):
            room.user_left(message.user_id, "user_offline")
        elif isinstance(message, RoomJoined) and message.room_id == room.room_id:
            if self.user_id is not None:
                room.reconcile(self.user_id, message.name, message.users)
        elif isinstance(message, RoomUsers) and message.room_id in ("", room.room_id):
            if self.user_id is not None:
                room.reconcile(self.user_id, room.name, message.users)
        elif isinstance(message, RoomLeft):
            room.left()
            self._left.set()
        elif isinstance(message, ErrorMessage | AuthError):
            log.warning("signaling.server_error", message=message.message)
        elif isinstance(message, UnknownMessage):
            log.debug("signaling.ignored", type=message.type)
        else:
            log.debug("signaling.ignored", type=type(message).__name__)

    def _bad_message(self, exc: ProtocolError) -> None:
        self._bad_messages += 1
        if self._bad_messages <= BAD_MESSAGE_LOG_LIMIT:
            log.warning("signaling.bad_message", reason=exc.reason, excerpt=exc.excerpt,
                        count=self._bad_messages)
        elif self._bad_messages % 1000 == 0:
            log.warning("signaling.bad_messages", count=self._bad_messages)


async def close_websocket(ws: WebSocketConnection) -> None:
    """Close ``ws`` and, always, its TCP stream.

    trio-websocket (0.12) never closes the stream of a connection the *server*
    ended without a close handshake (EOF: a crash, a kill -9): ``aclose()``
    returns at once because the connection is already marked closed. The socket
    then sat in CLOSE_WAIT until the cyclic garbage collector found it, one
    file descriptor per server restart (found by tests/test_soak.py).
    """
    try:
        await ws.aclose()
    finally:
        stream = websocket_stream(ws)  # no public accessor
        if stream is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                     OSError):
                await stream.aclose()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        return f"connection closed ({reason.code} {reason.name})" if reason else "connection closed"
    if isinstance(exc, trio.TooSlowError):
        return "server did not answer in time"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not text.startswith(type(exc).__name__) else text


def hand_over(channel: trio.MemorySendChannel[WebRTCSignal], signal: WebRTCSignal) -> None:
    """Pass a signal on to the peers without waiting: a full queue drops it (logged),
    a closed one means the peers are being rebuilt (they negotiate afresh)."""
    try:
        channel.send_nowait(signal)
    except trio.WouldBlock:
        log.warning("signaling.signal_dropped", peer=signal.peer_id, kind=signal.signal_type,
                    reason="queue full")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log.debug("signaling.signal_unhandled", peer=signal.peer_id)
