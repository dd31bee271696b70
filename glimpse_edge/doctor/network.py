"""Can this device reach its server, and will the server take it: HTTP, TLS,
the WebSocket handshake, the token (authenticate only, never join the room),
and how long that token lasts.

A failed connection is explained by what its error, and every error behind
it, says (:func:`_net_problem`): refused, unreachable, a TLS certificate not
trusted, a host name that does not resolve, or no answer in time.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import errno
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from ..config import Config, read_secret_file

if TYPE_CHECKING:
    from .report import Status
    from .run import Doctor

__all__ = ["check_server", "check_token", "tls_context"]

TOKEN_WARN_S: Final = 86_400.0  # a provisioned token that expires within a day


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything behind it: causes, contexts, members of groups."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 20:
        current = todo.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        if isinstance(current, BaseExceptionGroup):
            todo += list(current.exceptions)
    return seen


def _net_problem(exc: BaseException, what: str) -> tuple[str, str]:
    """(summary, fix) for a failed connection, by what the error (and its causes) say."""
    chain = _causes(exc)
    text = f"{exc}"
    for inner in chain[1:]:
        if str(inner) and str(inner) not in text:
            text = f"{text} ({inner})"
            break
    errnos = {e.errno for e in chain if isinstance(e, OSError) and e.errno}
    if errno.ECONNREFUSED in errnos:
        return (f"{what}: connection refused", "is the server running, and is the port in "
                "the URL right?")
    if errnos & {errno.ENETUNREACH, errno.EHOSTUNREACH}:
        return f"{what}: network unreachable ({text})", "is this device online? ip route"
    lowered = " ".join(str(e) for e in chain).lower()
    if "certificate" in lowered or "ssl" in lowered or "tls" in lowered:
        if "not yet valid" in lowered or "expired" in lowered:
            return (f"{what}: TLS certificate rejected: {text}",
                    "check the system clock (see the clock check), then the certificate")
        return (f"{what}: TLS certificate not trusted: {text}",
                "if the server uses a private CA, name its certificate in server.ca_file; "
                "verification cannot be switched off")
    if "refused" in lowered:
        return (f"{what}: connection refused", "is the server running, and is the port in "
                "the URL right?")
    if "name or service not known" in lowered or "name resolution" in lowered or (
            "nodename nor servname" in lowered) or "no address associated" in lowered:
        return (f"{what}: the host name does not resolve ({text})",
                "check the host name in the URL and this device's DNS (resolvectl status)")
    if "timed out" in lowered or "timeout" in lowered or isinstance(exc, trio.TooSlowError):
        return (f"{what}: no answer in time", "is the host reachable from this network (a "
                "firewall or proxy dropping it)? try: curl -v URL")
    if "unreachable" in lowered:
        return f"{what}: network unreachable ({text})", "is this device online? ip route"
    return f"{what}: {text}", "check the URL and the network"


def tls_context(doctor: Doctor, check: str, key: str,
                ca_file: Path | None) -> ssl.SSLContext | None:
    """A client TLS context of its own (httpx sets its ALPN protocols on the one it is
    given) trusting ``ca_file`` too; None, reported as ``check`` failing, if it cannot
    be loaded."""
    from ..tls import new_client_context

    try:
        return new_client_context(ca_file)
    except (OSError, ValueError) as exc:
        doctor.add(check, "fail", f"{key} {ca_file} cannot be loaded: {exc}",
                   f"point {key} at the CA certificate (PEM)")
        return None


async def check_server(doctor: Doctor, config: Config, secrets_ok: bool) -> None:
    if config.server is None:
        doctor.add("server", "skip", "no [server]: this device only publishes ([publish])")
        return
    server = config.server
    http_url = server.api_url or _http_url_for(server.ws_url)
    ssl_context = tls_context(doctor, "server", "server.ca_file", server.ca_file)
    if ssl_context is None:
        return
    details: list[str] = []
    http = await _http_probe(doctor, http_url, ssl_context)
    if http is not None:
        summary, fix = http
        doctor.add("server", "fail", summary, fix)
        return
    details.append(f"HTTP: {http_url} answered"
                   + (" (TLS verified)" if http_url.startswith("https:") else ""))
    if not secrets_ok:
        doctor.add("server", "warn", "reachable; the token was not tried (see secrets)",
                   details=details)
        return
    token = await _token(doctor, config, details)
    if token is None:
        return
    doctor.token = token  # its expiry is checked even if the server rejects it
    result = await _ws_authenticate(doctor, server.ws_url, token, ssl_context)
    if result[0] != "pass":
        status, summary, fix = result
        doctor.add("server", status, summary, fix, details)
        return
    details.append(f"WebSocket: {server.ws_url} handshake"
                   + (" (TLS verified)" if server.ws_url.startswith("wss:") else ""))
    doctor.add("server", "pass", result[1], details=details)


async def _http_probe(doctor: Doctor, url: str, ssl_context: Any) -> tuple[str, str] | None:
    """Any HTTP answer proves the server is there; remember its clock."""
    import httpx

    try:
        async with httpx.AsyncClient(verify=ssl_context, timeout=doctor.timeout,
                                     trust_env=False) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        return _net_problem(exc, url)
    date = response.headers.get("date")
    if date:
        with contextlib.suppress(TypeError, ValueError):
            doctor.server_date = email.utils.parsedate_to_datetime(date).timestamp()
    return None


async def _token(doctor: Doctor, config: Config, details: list[str]) -> str | None:
    from ..signaling.tokens import CredentialsRejected, LoginTokenSource, TokenUnavailable

    server, auth, _room = config.glimpse
    if auth.token_file is not None:
        return read_secret_file(auth.token_file)  # checked readable already
    source = LoginTokenSource(server, auth)
    try:
        with trio.fail_after(doctor.timeout + 1):
            token = await source.get()
    except CredentialsRejected as exc:
        doctor.add("server", "fail", f"login as {auth.username!r} rejected: {exc}",
                   "check auth.username and the password in auth.password_file", details)
        return None
    except (TokenUnavailable, trio.TooSlowError) as exc:
        summary, fix = _net_problem(exc, f"login at {server.api_url}")
        doctor.add("server", "fail", summary, fix, details)
        return None
    details.append(f"login: {auth.username!r} logged in at {server.api_url}")
    return token


async def _ws_authenticate(doctor: Doctor, url: str, token: str,
                           ssl_context: Any) -> tuple[Status, str, str]:
    from trio_websocket import ConnectionClosed, HandshakeError, connect_websocket_url

    from ..signaling.messages import (
        Authenticate,
        Authenticated,
        AuthenticateResponse,
        AuthError,
        ProtocolError,
        decode,
        encode,
    )

    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(doctor.timeout):
                ws = await connect_websocket_url(
                    nursery, url, ssl_context=ssl_context if url.startswith("wss:")
                    else None)
            try:
                with trio.fail_after(doctor.timeout):
                    await ws.send_message(encode(Authenticate(token=token)))
                    while True:
                        try:
                            message = decode(await ws.get_message())
                        except ProtocolError:
                            continue
                        if isinstance(message, Authenticated) or (
                                isinstance(message, AuthenticateResponse)
                                and message.success):
                            who = message.username or message.user_id
                            return ("pass", f"token accepted: authenticated as {who!r} "
                                    f"(user id {message.user_id})", "")
                        if isinstance(message, AuthError | AuthenticateResponse):
                            return ("fail", f"the server rejected the token: "
                                    f"{message.message or 'no reason given'}",
                                    "put a valid token into auth.token_file (or use "
                                    "auth.username + auth.password_file to log in)")
            finally:
                with trio.move_on_after(1):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except trio.TooSlowError:
        return ("fail", f"{url}: no WebSocket handshake or answer within "
                f"{doctor.timeout:g} s", "check server.ws_url (the port and path of the "
                "WebSocket endpoint), and that no proxy holds the connection")
    except HandshakeError as exc:
        status = getattr(exc, "status_code", None)
        if status is not None:
            return ("fail", f"{url}: the server answered HTTP {status} instead of a "
                    "WebSocket", "check the path and port of server.ws_url")
        summary, fix = _net_problem(exc, url)
        return "fail", summary, fix
    except ConnectionClosed as exc:
        return "fail", f"{url}: the server closed the connection ({exc})", "see its logs"
    except (OSError, trio.BrokenResourceError) as exc:
        summary, fix = _net_problem(exc, url)
        return "fail", summary, fix
    except BaseExceptionGroup as group:
        from ..supervise import sole_exception

        summary, fix = _net_problem(sole_exception(group), url)
        return "fail", summary, fix


def check_token(doctor: Doctor, config: Config) -> None:
    from ..signaling.tokens import token_expiry

    if doctor.token is None or config.auth is None:
        doctor.add("token", "skip", "no token was obtained (see server)")
        return
    exp = token_expiry(doctor.token)
    if exp is None:
        doctor.add("token", "pass", "the token has no expiry")
        return
    left = exp - time.time()
    until = datetime.datetime.fromtimestamp(exp, datetime.UTC).strftime("%Y-%m-%d %H:%M")
    if config.auth.uses_login:
        doctor.add("token", "pass", f"logged in; tokens last {_span(left)} and are renewed "
                   f"{_span(config.auth.refresh_margin)} before they expire")
    elif left <= 0:
        doctor.add("token", "fail", f"the token in {config.auth.token_file} expired "
                   f"{_span(-left)} ago ({until} UTC)",
                   "provision a new token into that file (the agent picks it up without "
                   "a restart), or log in with auth.username + auth.password_file")
    elif left < TOKEN_WARN_S:
        doctor.add("token", "warn", f"the token expires in {_span(left)} ({until} UTC)",
                   "provision a new token soon, or let the agent log in itself")
    else:
        doctor.add("token", "pass", f"valid until {until} UTC (in {_span(left)})")


def _span(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 7200:
        return f"{seconds / 3600:.0f} hours"
    return f"{max(0.0, seconds) / 60:.0f} minutes"


def _http_url_for(ws_url: str) -> str:
    """The http(s) URL of a WebSocket endpoint, for a plain reachability check."""
    scheme, rest = ws_url.split(":", 1)
    return ("https:" if scheme == "wss" else "http:") + rest
