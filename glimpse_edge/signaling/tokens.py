"""Where the agent's JWT comes from: a provisioned file, or a login.

Two sources, one interface. :class:`FileTokenSource` reads a token that an
operator (or fleet tooling) writes into a file and picks up a new one without
a restart. :class:`LoginTokenSource` logs in over HTTP with a username and a
password file, and logs in again before the token's ``exp``.

The server's answer to a bad credential is permanent until a person changes
something, so it is raised as :class:`CredentialsRejected` and the caller
waits for :meth:`TokenSource.wait_changed` (or a long timeout) instead of
retrying in a loop. Network trouble is :class:`TokenUnavailable`: retry soon.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Protocol

import jwt
import structlog
import trio

from ..config import AuthConfig, ServerConfig, read_secret_file
from ..supervise import Backoff
from ..tls import new_client_context

log = structlog.get_logger(__name__)

FILE_POLL_INTERVAL = 1.0
REFRESH_BACKOFF = Backoff(initial=5.0, maximum=600.0)


class TokenUnavailable(Exception):
    """No token right now (server unreachable, file missing): try again soon."""


class CredentialsRejected(Exception):
    """The server said no to our credentials: wait for a person to fix them."""


def token_expiry(token: str) -> float | None:
    """The token's ``exp`` claim as a UNIX time, or None if it has none or is no JWT.

    The signature is not verified: we are the holder, not the audience.
    """
    try:
        claims: dict[str, Any] = jwt.decode(
            token, options={"verify_signature": False, "verify_exp": False}
        )
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, int | float) else None


class TokenSource(Protocol):
    async def get(self) -> str:
        """A token to authenticate with now."""

    def rejected(self) -> None:
        """The server rejected the last token from :meth:`get`."""

    async def wait_changed(self) -> None:
        """Return when a different token may be available."""


def _file_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size)


class FileTokenSource:
    """A token provisioned into a file (mode 0600), re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._token: str | None = None
        self._key: tuple[int, int, int] | None = None

    async def get(self) -> str:
        key = _file_key(self.path)
        if self._token is None or key != self._key:
            try:
                token = read_secret_file(self.path)
            except Exception as exc:  # SecretFileError, or an OSError race
                raise TokenUnavailable(str(exc)) from exc
            self._token, self._key = token, key
            exp = token_expiry(token)
            log.info("auth.token_loaded", source="file", path=str(self.path),
                     expires_in=None if exp is None else round(exp - time.time()))
            if exp is not None and exp <= time.time():
                log.warning("auth.token_expired", path=str(self.path))
        return self._token

    def rejected(self) -> None:
        # Keep the cached key: the same file content will not be tried again
        # until it changes (wait_changed) or the long retry timer fires.
        pass

    async def wait_changed(self) -> None:
        start = _file_key(self.path) if self._key is None else self._key
        # Polling a stat() once a second costs nothing and works on every
        # filesystem, including the bind mounts systemd's sandbox makes.
        while _file_key(self.path) == start:  # noqa: ASYNC110
            await trio.sleep(FILE_POLL_INTERVAL)


class LoginTokenSource:
    """Logs in with username + password file; refreshes before ``exp``."""

    def __init__(self, server: ServerConfig, auth: AuthConfig) -> None:
        assert auth.password_file is not None
        self.api_url = server.api_url.rstrip("/")
        self.username = auth.username
        self.password_file = auth.password_file
        self.refresh_margin = auth.refresh_margin
        self.timeout = server.connect_timeout
        self.ca_file = server.ca_file
        self._token: str | None = None
        self._exp: float = 0.0
        self._logged_in = trio.Event()

    def _fresh(self) -> bool:
        return self._token is not None and time.time() < self._exp - self.refresh_margin

    async def get(self) -> str:
        if not self._fresh():
            await self._login()
        assert self._token is not None
        return self._token

    def rejected(self) -> None:
        self._token = None
        self._exp = 0.0

    async def wait_changed(self) -> None:
        start = _file_key(self.password_file)
        while _file_key(self.password_file) == start:  # noqa: ASYNC110
            await trio.sleep(FILE_POLL_INTERVAL)

    async def _login(self) -> None:
        import httpx  # imported lazily: only devices that log in pay for it

        try:
            password = read_secret_file(self.password_file)
        except Exception as exc:
            raise TokenUnavailable(str(exc)) from exc
        url = f"{self.api_url}/api/auth/login"
        try:
            async with httpx.AsyncClient(
                # a context of its own: httpx sets its ALPN protocols on it
                verify=new_client_context(self.ca_file), timeout=self.timeout
            ) as client:
                resp = await client.post(
                    url, json={"username": self.username, "password": password}
                )
        except httpx.HTTPError as exc:
            raise TokenUnavailable(f"login request failed: {type(exc).__name__}: {exc}") from exc
        if resp.status_code in (400, 401, 403):
            log.error("auth.login_rejected", status=resp.status_code, username=self.username)
            raise CredentialsRejected(f"login rejected by {url} (HTTP {resp.status_code})")
        try:
            body = resp.json()
            token = body["data"]["token"]
            if resp.status_code != 200 or not isinstance(token, str) or not token:
                raise ValueError("no token in reply")
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenUnavailable(
                f"unexpected login reply from {url}: HTTP {resp.status_code}"
            ) from exc
        exp = token_expiry(token)
        self._token = token
        self._exp = exp if exp is not None else math.inf
        self._logged_in.set()
        log.info("auth.logged_in", username=self.username,
                 expires_in=None if exp is None else round(exp - time.time()))

    async def refresh_loop(self, backoff: Backoff = REFRESH_BACKOFF) -> None:
        """Keep a fresh token ready so a reconnect never waits on a login.

        Runs under supervision; a failed refresh is retried with back-off
        while the current token is still valid.
        """
        attempt = 0
        while True:
            await self._logged_in.wait()  # the session does the first login
            if not math.isfinite(self._exp):
                await trio.sleep_forever()
            await trio.sleep(max(0.0, self._exp - self.refresh_margin - time.time()))
            try:
                await self._login()
                attempt = 0
            except (TokenUnavailable, CredentialsRejected) as exc:
                delay = backoff.delay(attempt)
                attempt += 1
                log.warning("auth.refresh_failed", error=str(exc), retry_in=round(delay, 1))
                await trio.sleep(delay)


def token_source(server: ServerConfig, auth: AuthConfig) -> FileTokenSource | LoginTokenSource:
    """The token source that the configuration asks for."""
    if auth.token_file is not None:
        return FileTokenSource(Path(os.fspath(auth.token_file)))
    return LoginTokenSource(server, auth)
