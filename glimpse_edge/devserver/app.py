"""The dev server's ASGI application: Glimpse's HTTP API and its WebSocket endpoint.

Glimpse serves HTTP and the WebSocket on separate ports; the dev server
serves both on one, with the WebSocket at ``/`` (where Glimpse has it) and at
``/ws`` (a path that a viewer page on ``/`` can use without ambiguity).
Starlette routes ``/`` by scope type, so a plain HTTP GET of ``/`` and a
WebSocket upgrade of ``/`` reach different handlers. ``GET /`` (and
``/viewer``) serves the viewer page, a Glimpse browser client, with its
assets under ``/static/``; ``GET /api/info`` says what this server is.

Every error is a JSON body ``{"success": false, "message": ...}`` with a 4xx
status; a malformed request is the client's problem, never a 500.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import structlog
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Scope
from starlette.websockets import WebSocket

from .auth import (
    MAX_PASSWORD_LENGTH,
    InvalidToken,
    decode_token,
    dummy_verify,
    hash_password,
    issue_token,
    verify_password,
)
from .hub import Hub
from .session import is_utf8_clean, run_session
from .store import Store, User, UsernameTaken

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_USERNAME_LENGTH = 64
MAX_ROOM_NAME_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 2000
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
STATIC_DIR = Path(__file__).with_name("static")


class HTTPError(Exception):
    """Ends a request with a JSON error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _fail(exc: HTTPError) -> JSONResponse:
    return JSONResponse({"success": False, "message": exc.message}, status_code=exc.status)


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body, read with a size cap."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPError(413, "Request body too large")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as exc:
        raise HTTPError(400, "Invalid JSON body") from exc
    if not isinstance(body, dict):
        raise HTTPError(400, "Request body must be a JSON object")
    if not is_utf8_clean(body):
        raise HTTPError(400, "Invalid JSON body: unpaired surrogate escape in a string")
    return body


def _text_field(
    body: dict[str, Any], name: str, *, max_length: int, required: bool = True, strip: bool = True
) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise HTTPError(400, f"Field '{name}' must be a string")
    if strip:
        value = value.strip()
    if required and not value:
        raise HTTPError(400, f"Field '{name}' is required")
    if len(value) > max_length:
        raise HTTPError(400, f"Field '{name}' is too long (max {max_length})")
    return value


class _StaticFiles(StaticFiles):
    """The viewer's assets, revalidated on every load: an edited viewer.js is never stale."""

    def file_response(
        self,
        full_path: os.PathLike[str] | str,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


class DevServerApp:
    """Request handlers bound to one store and hub."""

    def __init__(self, store: Store, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        self.started = time.monotonic()

    def _user_from_bearer(self, request: Request) -> User:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HTTPError(401, "No token provided")
        try:
            claims = decode_token(self.store.jwt_secret, token)
        except InvalidToken as exc:
            raise HTTPError(401, "Invalid token") from exc
        user = self.store.user_by_id(claims["id"])
        if user is None:
            raise HTTPError(401, "User not found")
        return user

    def _session_payload(self, user: User) -> dict[str, Any]:
        return {
            "user": user.public(),
            "token": issue_token(self.store.jwt_secret, user.id, user.username),
        }

    # -- routes ---------------------------------------------------------------

    async def viewer(self, request: Request) -> FileResponse:
        """The viewer page (a Glimpse browser client; see static/viewer.js)."""
        return FileResponse(STATIC_DIR / "viewer.html", headers={"Cache-Control": "no-cache"})

    async def info(self, request: Request) -> JSONResponse:
        """What this server is."""
        return JSONResponse(
            {
                "name": "glimpse-devserver",
                "websocket": ["/", "/ws"],
                "api": "/api",
                "viewer": "/",
            }
        )

    async def health(self, request: Request) -> JSONResponse:
        """Liveness and a few counters, for tests and the demo."""
        return JSONResponse(
            {
                "status": "ok",
                "uptime": round(time.monotonic() - self.started, 3),
                "connections": len(self.hub.connections),
                "onlineUsers": self.hub.online_count(),
                "users": self.store.count_users(),
                "rooms": self.store.count_rooms(),
            }
        )

    async def register(self, request: Request) -> JSONResponse:
        """Create an account and log it in."""
        try:
            body = await _json_body(request)
            username = _text_field(body, "username", max_length=MAX_USERNAME_LENGTH)
            email = _text_field(body, "email", max_length=254)
            if not _EMAIL.fullmatch(email):
                raise HTTPError(400, "Field 'email' must be an email address")
            password = _text_field(body, "password", max_length=MAX_PASSWORD_LENGTH, strip=False)
            if self.store.user_by_username(username) is not None:
                raise HTTPError(409, "Username already exists")
            password_hash = await trio.to_thread.run_sync(hash_password, password)
            try:
                user = self.store.create_user(username, email, password_hash)
            except UsernameTaken as exc:  # registered while we were hashing
                raise HTTPError(409, "Username already exists") from exc
        except HTTPError as exc:
            log.info("devserver.http.register_rejected", status=exc.status, reason=exc.message)
            return _fail(exc)
        log.info("devserver.http.registered", user_id=user.id, username=user.username)
        return JSONResponse(
            {
                "success": True,
                "message": "User registered successfully",
                "data": self._session_payload(user),
            },
            status_code=201,
        )

    async def login(self, request: Request) -> JSONResponse:
        """Exchange username (or email) and password for a fresh token."""
        try:
            body = await _json_body(request)
            name_field = "username" if body.get("username") is not None else "email"
            name = _text_field(body, name_field, max_length=254)
            password = _text_field(body, "password", max_length=MAX_PASSWORD_LENGTH, strip=False)
        except HTTPError as exc:
            return _fail(exc)
        user = (
            self.store.user_by_username(name)
            if name_field == "username"
            else self.store.user_by_email(name)
        )
        if user is None:
            await trio.to_thread.run_sync(dummy_verify, password)
            ok = False
        else:
            ok = await trio.to_thread.run_sync(verify_password, password, user.password_hash)
        if user is None or not ok:
            log.info("devserver.http.login_failed", username=name)
            return _fail(HTTPError(401, "Invalid username or password"))
        log.info("devserver.http.logged_in", user_id=user.id, username=user.username)
        return JSONResponse(
            {"success": True, "message": "Login successful", "data": self._session_payload(user)}
        )

    async def me(self, request: Request) -> JSONResponse:
        """The bearer's own account (lets a client check a provisioned token)."""
        try:
            user = self._user_from_bearer(request)
        except HTTPError as exc:
            return _fail(exc)
        return JSONResponse({"success": True, "data": {"user": user.public()}})

    async def list_rooms(self, request: Request) -> JSONResponse:
        """Every room on the server."""
        try:
            self._user_from_bearer(request)
        except HTTPError as exc:
            return _fail(exc)
        return JSONResponse({"success": True, "data": [r.to_json() for r in self.store.rooms()]})

    async def create_room(self, request: Request) -> JSONResponse:
        """Create a room; its creator is a member from the start."""
        try:
            user = self._user_from_bearer(request)
            body = await _json_body(request)
            name = _text_field(body, "name", max_length=MAX_ROOM_NAME_LENGTH)
            description = _text_field(
                body, "description", max_length=MAX_DESCRIPTION_LENGTH, required=False
            )
        except HTTPError as exc:
            return _fail(exc)
        room = self.store.create_room(name, description, user.id)
        log.info("devserver.room.created", room_id=room.id, user_id=user.id, name=name)
        return JSONResponse(
            {"success": True, "message": "Room created", "data": room.to_json()},
            status_code=201,
        )

    async def get_room(self, request: Request) -> JSONResponse:
        """One room by id."""
        try:
            self._user_from_bearer(request)
            room = self.store.room(str(request.path_params["room_id"]))
            if room is None:
                raise HTTPError(404, "Room not found")
        except HTTPError as exc:
            return _fail(exc)
        return JSONResponse({"success": True, "data": room.to_json()})

    async def websocket(self, websocket: WebSocket) -> None:
        """A Glimpse signaling session."""
        await run_session(websocket, self.hub, self.store)


def create_app(store: Store, hub: Hub | None = None) -> Starlette:
    """Build the ASGI app over an open store (the caller owns and closes it)."""
    handlers = DevServerApp(store, hub if hub is not None else Hub())
    app = Starlette(
        routes=[
            Route("/", handlers.viewer, methods=["GET"]),
            Route("/viewer", handlers.viewer, methods=["GET"]),
            WebSocketRoute("/", handlers.websocket),
            WebSocketRoute("/ws", handlers.websocket),
            Mount("/static", app=_StaticFiles(directory=STATIC_DIR), name="static"),
            Route("/api/info", handlers.info, methods=["GET"]),
            Route("/api/health", handlers.health, methods=["GET"]),
            Route("/api/auth/register", handlers.register, methods=["POST"]),
            Route("/api/auth/login", handlers.login, methods=["POST"]),
            Route("/api/auth/me", handlers.me, methods=["GET"]),
            Route("/api/rooms", handlers.list_rooms, methods=["GET"]),
            Route("/api/rooms", handlers.create_room, methods=["POST"]),
            Route("/api/rooms/{room_id}", handlers.get_room, methods=["GET"]),
        ]
    )
    app.state.store = store
    app.state.hub = handlers.hub
    return app
