"""A small Trio client that stands in for a Glimpse browser in tests.

HTTP helpers get tokens and rooms; :class:`GlimpseClient` speaks the
WebSocket protocol. Waiting is always bounded: :meth:`GlimpseClient.expect`
fails with an ``AssertionError`` that names what it waited for and lists what
arrived instead, which is most of what one needs to debug an integration
test. Messages skipped by ``expect`` are kept (in arrival order) for later
``expect``/``recv`` calls, like an unread queue.

To check that something did *not* happen without sleeping, use
:meth:`GlimpseClient.drain`: it round-trips a ``ping`` through the server
and returns everything that arrived before the ``pong``. The dev server
handles each frame completely before reading the next one, so anything
caused by an earlier, already-answered request of another client is queued
ahead of the ``pong``.
"""

from __future__ import annotations

import inspect
import itertools
import json
from collections.abc import Callable, Collection
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url

from glimpse_edge.supervise import sole_exception

DEFAULT_TIMEOUT = 10.0
Message = dict[str, Any]


def _http() -> httpx.AsyncClient:
    # trust_env=False: a proxy from the environment must not intercept loopback.
    return httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, trust_env=False)


def _check(resp: httpx.Response, status: int, what: str) -> dict[str, Any]:
    if resp.status_code != status:
        raise AssertionError(f"{what}: expected HTTP {status}, got {resp.status_code}: {resp.text}")
    body: dict[str, Any] = resp.json()
    return body


async def register(
    api_url: str, username: str, password: str, email: str | None = None
) -> tuple[str, str]:
    """Register a user; returns ``(user_id, token)``."""
    async with _http() as http:
        resp = await http.post(
            f"{api_url}/api/auth/register",
            json={
                "username": username,
                "email": email or f"{username}@example.test",
                "password": password,
            },
        )
    data = _check(resp, 201, f"register {username!r}")["data"]
    return str(data["user"]["id"]), str(data["token"])


async def login(api_url: str, username: str, password: str) -> tuple[str, str]:
    """Log in; returns ``(user_id, token)``."""
    async with _http() as http:
        resp = await http.post(
            f"{api_url}/api/auth/login", json={"username": username, "password": password}
        )
    data = _check(resp, 200, f"login {username!r}")["data"]
    return str(data["user"]["id"]), str(data["token"])


async def create_room(api_url: str, token: str, name: str, description: str = "") -> str:
    """Create a room as the token's user (who becomes its first member); returns its id."""
    async with _http() as http:
        resp = await http.post(
            f"{api_url}/api/rooms",
            json={"name": name, "description": description},
            headers={"Authorization": f"Bearer {token}"},
        )
    return str(_check(resp, 201, f"create room {name!r}")["data"]["_id"])


def _brief(msg: object, limit: int = 240) -> str:
    text = json.dumps(msg, ensure_ascii=False) if not isinstance(msg, str) else msg
    return text if len(text) <= limit else text[: limit - 3] + "..."


class GlimpseClient:
    """One WebSocket session, used as ``async with GlimpseClient("alice") as c:``.

    The context opens the nursery that trio-websocket needs for its reader
    task; leaving it closes the socket.
    """

    _ping_ids = itertools.count(1)

    def __init__(self, name: str = "client") -> None:
        self.name = name
        self.user_id: str | None = None
        self.username: str | None = None
        self.history: list[Message] = []  # every message received, in order
        self._backlog: list[Message] = []  # received but not yet consumed
        self._ws: WebSocketConnection | None = None
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> GlimpseClient:
        self._stack = AsyncExitStack()
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None and self._nursery is not None
        try:
            with trio.move_on_after(2):
                await self.close()
        finally:
            self._nursery.cancel_scope.cancel()
            try:
                suppress = await self._stack.__aexit__(exc_type, exc, tb)
            except BaseExceptionGroup as group:
                raise sole_exception(group) from None
        return suppress

    @property
    def ws(self) -> WebSocketConnection:
        """The underlying trio-websocket connection (for close codes and raw frames)."""
        if self._ws is None:
            raise RuntimeError(f"{self.name}: not connected")
        return self._ws

    # -- connection -----------------------------------------------------------

    async def connect(self, ws_url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Open the WebSocket (``ws://host:port/`` or ``.../ws``)."""
        if self._nursery is None:
            raise RuntimeError("use GlimpseClient as 'async with GlimpseClient() as c:'")
        with trio.fail_after(timeout):
            self._ws = await connect_websocket_url(self._nursery, ws_url)

    async def close(self, code: int = 1000) -> None:
        """Close the WebSocket (idempotent)."""
        if self._ws is not None and not self._ws.closed:
            await self._ws.aclose(code)

    async def authenticate(self, token: str, timeout: float = DEFAULT_TIMEOUT) -> Message:
        """Send ``authenticate``; returns ``authenticated``, fails on ``auth_error``."""
        await self.send({"type": "authenticate", "token": token})
        msg = await self.expect("authenticated", timeout=timeout, fail_on={"auth_error"})
        self.user_id, self.username = msg["userId"], msg["username"]
        return msg

    async def join(self, room_id: str, timeout: float = DEFAULT_TIMEOUT) -> Message:
        """Send ``join_room``; returns ``room_joined``, fails on ``error``."""
        await self.send({"type": "join_room", "roomId": room_id})
        return await self.expect(
            "room_joined", lambda m: m.get("roomId") == room_id, timeout, fail_on={"error"}
        )

    async def leave(self, room_id: str, timeout: float = DEFAULT_TIMEOUT) -> Message:
        """Send ``leave_room``; returns ``room_left``, fails on ``error``."""
        await self.send({"type": "leave_room", "roomId": room_id})
        return await self.expect(
            "room_left", lambda m: m.get("roomId") == room_id, timeout, fail_on={"error"}
        )

    async def signal(self, room_id: str, peer_id: str, signal_type: str, signal: Any) -> None:
        """Send a canonical ``webrtc_signal`` to ``peer_id``."""
        await self.send(
            {
                "type": "webrtc_signal",
                "signalType": signal_type,
                "roomId": room_id,
                "peerId": peer_id,
                "signal": signal,
            }
        )

    # -- raw traffic ------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """Send one JSON message."""
        await self.ws.send_message(json.dumps(message))

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a frame as is (text or binary), for bad-input tests."""
        await self.ws.send_message(frame)

    async def _receive(self) -> Message:
        frame = await self.ws.get_message()
        try:
            msg = json.loads(frame)
        except ValueError:
            raise AssertionError(f"{self.name}: server sent non-JSON: {_brief(frame)}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise AssertionError(f"{self.name}: server sent a non-message: {_brief(msg)}")
        self.history.append(msg)
        return msg

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> Message:
        """The next unconsumed message, whatever its type."""
        if self._backlog:
            return self._backlog.pop(0)
        with trio.move_on_after(timeout):
            return await self._receive()
        raise AssertionError(f"{self.name}: no message within {timeout}s")

    async def expect(
        self,
        type_: str,
        predicate: Callable[[Message], bool] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        fail_on: Collection[str] = (),
    ) -> Message:
        """Wait for a message of ``type_`` (matching ``predicate``), skipping others.

        Skipped messages stay queued for later calls. A message whose type is
        in ``fail_on`` ends the wait at once with an ``AssertionError``.
        """

        def matches(m: Message) -> bool:
            return m.get("type") == type_ and (predicate is None or predicate(m))

        def failure(reason: str) -> AssertionError:
            what = type_ if predicate is None else f"{type_} matching {_describe(predicate)}"
            seen = "\n  ".join(_brief(m) for m in self._backlog) or "(nothing)"
            return AssertionError(
                f"{self.name}: expected {what} {reason}; unconsumed messages:\n  {seen}"
            )

        for i, m in enumerate(self._backlog):
            if matches(m):
                return self._backlog.pop(i)
            if m.get("type") in fail_on:
                raise failure(f"but got {m.get('type')}")
        with trio.move_on_after(timeout):
            while True:
                m = await self._receive()
                if matches(m):
                    return m
                self._backlog.append(m)
                if m.get("type") in fail_on:
                    raise failure(f"but got {m.get('type')}")
        raise failure(f"within {timeout}s")

    async def drain(self, timeout: float = DEFAULT_TIMEOUT) -> list[Message]:
        """Fence with a ping; return and consume everything received before the pong."""
        ping_id = f"{self.name}-{next(self._ping_ids)}"
        await self.send({"type": "ping", "id": ping_id})
        await self.expect("pong", lambda m: m.get("id") == ping_id, timeout)
        out, self._backlog = self._backlog, []
        return out

    async def expect_closed(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Wait until the server closes the socket; returns the close code."""
        with trio.move_on_after(timeout):
            try:
                while True:
                    self._backlog.append(await self._receive())
            except ConnectionClosed as exc:
                return int(exc.reason.code) if exc.reason is not None else None
        raise AssertionError(f"{self.name}: socket still open after {timeout}s")


def _describe(predicate: Callable[[Message], bool]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return getattr(predicate, "__name__", repr(predicate))
