"""The WHIP protocol (RFC 9725) over HTTP: offer in, answer and a session resource out.

Pure of media: it moves SDP text and headers, nothing else, so it is tested
against any HTTP server. What it does, as the RFC asks:

- POST the complete offer (aiortc gathers every candidate before it is
  set; there is nothing to trickle) as ``application/sdp`` with
  ``Authorization: Bearer`` (every request carries it, DELETE too);
- accept ``201 Created`` with the SDP answer and a ``Location``, which may
  be relative and is resolved against the endpoint's URL (redirects
  followed: the endpoint the offer finally reached);
- read ICE servers from ``Link: <stun:...>; rel="ice-server"`` headers
  (on the answer, or an OPTIONS asked before the offer);
- DELETE the session resource to end it;
- remember whether the server allows PATCH (``Allow``/``Accept-Patch``):
  the only uses of PATCH are trickle and ICE restart, which aiortc has not,
  so nothing is sent with it (a failed path is a new session instead).

Every request is bounded (``timeout``: connect, headers and the whole body
under one deadline, so a server that drips its answer is cut off too) and
an answer is at most :data:`MAX_ANSWER_BYTES`. Every error is a
:class:`WhipError` naming the method, the URL and the status, never the
token; 401 and 403 are :class:`WhipAuthError`, which the publisher does
not retry soon.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Final
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
import trio

__all__ = [
    "MAX_ANSWER_BYTES",
    "LinkIceServer",
    "WhipAuthError",
    "WhipClient",
    "WhipError",
    "WhipSession",
    "parse_ice_links",
]

MAX_ANSWER_BYTES: Final = 256 * 1024  # an SDP answer is a few kB; anything near this is not one
_MAX_ERROR_TEXT: Final = 200  # of a failed response's body, in the error


class WhipError(Exception):
    """A WHIP request failed: says which (method, URL) and how (status, reason)."""

    def __init__(self, method: str, url: str, reason: str, status: int | None = None) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.reason = reason
        where = f"WHIP {method} {url}"
        super().__init__(f"{where}: {status} {reason}" if status is not None
                         else f"{where}: {reason}")


class WhipAuthError(WhipError):
    """The server refused the token (401/403): retrying soon will not help."""


@dataclass(frozen=True)
class LinkIceServer:
    """One STUN/TURN server the WHIP server offered in a ``Link`` header."""

    url: str
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class WhipSession:
    """What a successful POST gave: the session's resource URL and the answer."""

    resource: str
    answer: str
    ice_servers: tuple[LinkIceServer, ...] = ()
    etag: str | None = None
    can_patch: bool = False


_LINK_RE: Final = re.compile(r"<([^>]*)>((?:\s*;\s*[^,;=]+(?:=(?:\"[^\"]*\"|[^,;]*))?)*)")
_PARAM_RE: Final = re.compile(r";\s*([^,;=\s]+)\s*(?:=\s*(\"[^\"]*\"|[^,;]*))?")


def parse_ice_links(values: list[str]) -> tuple[LinkIceServer, ...]:
    """ICE servers from ``Link`` header values (RFC 9725 section 4.6); others ignored."""
    found = []
    for value in values:
        for m in _LINK_RE.finditer(value):
            url, params = m[1].strip(), m[2] or ""
            fields: dict[str, str] = {}
            for p in _PARAM_RE.finditer(params):
                fields[p[1].lower()] = (p[2] or "").strip().strip('"')
            rels = fields.get("rel", "").lower().split()
            if "ice-server" not in rels or not url.startswith(("stun:", "stuns:", "turn:",
                                                               "turns:")):
                continue
            found.append(LinkIceServer(url, fields.get("username") or None,
                                       fields.get("credential") or None))
    return tuple(found)


def redact(url: str) -> str:
    """``url`` without its query and user info (a stream key may be in either)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class WhipClient:
    """Requests to one WHIP endpoint with one token (None: no Authorization header)."""

    def __init__(self, endpoint: str, token: str | None, *, timeout: float = 10.0,
                 verify: ssl.SSLContext | bool = True,
                 transport: httpx.AsyncBaseTransport | None = None,
                 max_answer: int = MAX_ANSWER_BYTES) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.max_answer = max_answer
        headers = {"User-Agent": "glimpse-edge"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.AsyncClient(
            headers=headers, verify=verify, transport=transport, trust_env=False,
            follow_redirects=True, max_redirects=3,
            timeout=httpx.Timeout(timeout))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> WhipClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- requests -----------------------------------------------------------------

    async def probe(self) -> tuple[int, tuple[LinkIceServer, ...], frozenset[str]]:
        """OPTIONS, as it answered: (status, Link ICE servers, allowed methods).

        Publishes nothing (``glimpse-edge doctor``); raises WhipError when
        there is no HTTP answer at all.
        """
        response, _body = await self._request("OPTIONS", self.endpoint, limit=16 * 1024)
        return (response.status_code, parse_ice_links(response.headers.get_list("link")),
                _allowed(response))

    async def options(self) -> tuple[tuple[LinkIceServer, ...], frozenset[str]]:
        """Ask for ICE servers before offering: (Link servers, allowed methods).

        Optional in the RFC: a server that does not answer it well gives ``((),
        {})`` and the offer goes ahead; an auth failure is raised as such.
        """
        try:
            response, _body = await self._request("OPTIONS", self.endpoint, limit=16 * 1024)
        except WhipAuthError:
            raise
        except WhipError:
            return (), frozenset()
        if response.status_code in (401, 403):
            raise WhipAuthError("OPTIONS", redact(self.endpoint), "token refused",
                                response.status_code)
        if not 200 <= response.status_code < 300:
            return (), frozenset()
        return parse_ice_links(response.headers.get_list("link")), _allowed(response)

    async def publish(self, offer: str) -> WhipSession:
        """POST the offer; the session it made, or WhipError."""
        url = redact(self.endpoint)
        response, body = await self._request(
            "POST", self.endpoint, content=offer.encode(),
            headers={"Content-Type": "application/sdp"}, limit=self.max_answer)
        status = response.status_code
        if status in (401, 403):
            raise WhipAuthError("POST", url, _error_text(response, body) or "token refused",
                                status)
        if status != 201:
            reason = _error_text(response, body) or response.reason_phrase or "unexpected"
            if 200 <= status < 300:
                reason = f"expected 201 Created with the answer, got {status}"
            raise WhipError("POST", url, reason, status)
        ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/sdp":
            raise WhipError("POST", url, f"the answer is not application/sdp "
                            f"(Content-Type {ctype or 'missing'!r})", status)
        try:
            answer = body.decode("utf-8")
        except UnicodeDecodeError:
            raise WhipError("POST", url, "the answer is not UTF-8 text", status) from None
        if not answer.lstrip().startswith("v=0"):
            raise WhipError("POST", url, f"the answer is not SDP (starts {answer[:20]!r})",
                            status)
        location = response.headers.get("location")
        if not location:
            raise WhipError("POST", url, "201 without a Location header", status)
        # relative to where the offer was finally answered (after redirects)
        resource = urljoin(str(response.url), location.strip())
        if urlsplit(resource).scheme not in ("http", "https"):
            raise WhipError("POST", url, f"Location is not an HTTP URL: {redact(resource)}",
                            status)
        return WhipSession(resource=resource, answer=answer,
                           ice_servers=parse_ice_links(response.headers.get_list("link")),
                           etag=response.headers.get("etag"),
                           can_patch="PATCH" in _allowed(response)
                           or "accept-patch" in response.headers)

    async def delete(self, resource: str) -> int:
        """DELETE the session; its status (200/204; 404: already gone), or WhipError."""
        response, _body = await self._request("DELETE", resource, limit=16 * 1024)
        status = response.status_code
        if status in (401, 403):
            raise WhipAuthError("DELETE", redact(resource), "token refused", status)
        if not (200 <= status < 300 or status == 404):
            raise WhipError("DELETE", redact(resource),
                            _error_text(response, _body) or response.reason_phrase, status)
        return status

    async def _request(self, method: str, url: str, *, limit: int,
                       content: bytes | None = None,
                       headers: dict[str, str] | None = None) -> tuple[httpx.Response, bytes]:
        """One request, its body read up to ``limit`` bytes, all within ``timeout``."""
        shown = redact(url)
        try:
            with trio.fail_after(self.timeout):
                request = self._client.build_request(method, url, content=content,
                                                     headers=headers)
                response = await self._client.send(request, stream=True)
                try:
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_raw():
                        size += len(chunk)
                        if size > limit:
                            raise WhipError(method, shown,
                                            f"the response is larger than {limit} bytes",
                                            response.status_code)
                        chunks.append(chunk)
                finally:
                    await response.aclose()
        except trio.TooSlowError:
            raise WhipError(method, shown, f"no complete response within {self.timeout:g} s"
                            ) from None
        except httpx.TooManyRedirects:
            raise WhipError(method, shown, "too many redirects") from None
        except httpx.HTTPError as exc:
            raise WhipError(method, shown, _describe(exc)) from None
        return response, b"".join(chunks)


def _allowed(response: httpx.Response) -> frozenset[str]:
    return frozenset(m.strip().upper() for v in response.headers.get_list("allow")
                     for m in v.split(",") if m.strip())


def _error_text(response: httpx.Response, body: bytes) -> str:
    """A short, printable reason from an error response's body (never our headers)."""
    text = body[:_MAX_ERROR_TEXT].decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    return "".join(c for c in text if c.isprintable())


def _describe(exc: httpx.HTTPError) -> str:
    """What went wrong in transport terms (the request's URL is named by the caller)."""
    kinds: dict[type[httpx.HTTPError], str] = {
        httpx.ConnectTimeout: "connection timed out",
        httpx.ReadTimeout: "timed out waiting for the response",
        httpx.WriteTimeout: "timed out sending the request",
        httpx.PoolTimeout: "timed out",
        httpx.ConnectError: "cannot connect",
        httpx.RemoteProtocolError: "the server broke the HTTP protocol",
        httpx.ReadError: "connection lost",
        httpx.WriteError: "connection lost",
    }
    kind = kinds.get(type(exc), type(exc).__name__)
    detail = str(exc)
    return f"{kind} ({detail})" if detail and detail != kind else kind
