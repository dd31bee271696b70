"""Ask STUN and TURN servers whether they answer, for ``glimpse-edge doctor``.

WebRTC gathers its candidates through these servers; when they do not answer
(outgoing UDP blocked, a wrong host name, wrong TURN credentials) peers on
other networks cannot connect, and aiortc only says so as a connection that
never comes up. So the doctor asks each configured server directly:

* ``stun:`` - a Binding request over UDP; the answer shows our public address;
* ``turn:`` - an Allocate over UDP or TCP: the first answer (401) proves the
  server is there, the second (with the long-term credential) that the
  username and credential are accepted; the allocation is released at once;
* ``stuns:``/``turns:`` - the same over TLS, with certificate verification.

Requests are retransmitted over UDP (0.5 s, then 1 s) within the timeout.
Messages are built and parsed with aioice (which aiortc uses anyway).
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from aioice import stun

from .tls import client_context

__all__ = ["ProbeResult", "parse_ice_url", "probe_ice_server"]

UDP_RETRANSMIT = (0.5, 1.0, 2.0)


class ProbeError(Exception):
    """The server did not answer usefully; the message says how."""


@dataclass
class ProbeResult:
    ok: bool
    summary: str
    fix: str = ""
    rtt_ms: float | None = None


def parse_ice_url(url: str) -> dict[str, Any]:
    """``stun:host:port`` / ``turn:host?transport=tcp`` as aiortc reads them."""
    from aiortc.rtcicetransport import parse_stun_turn_uri

    parsed: dict[str, Any] = parse_stun_turn_uri(url)
    parsed.setdefault("transport", "tcp" if parsed["scheme"] in ("stuns", "turns") else "udp")
    return parsed


class _Channel:
    """One request/response exchange path to a server: UDP, TCP or TLS."""

    def __init__(self, url: dict[str, Any], ca_file: Path | None, timeout: float) -> None:
        self.url = url
        self.ca_file = ca_file
        self.timeout = timeout
        self._udp: trio.socket.SocketType | None = None
        self._stream: trio.SSLStream[trio.SocketStream] | trio.SocketStream | None = None
        self._buffer = b""
        self.peer = ""

    async def open(self) -> None:
        host, port = self.url["host"], int(self.url["port"])
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM
                                                  if self.url["transport"] == "tcp"
                                                  else socket.SOCK_DGRAM)
        except OSError as exc:
            raise ProbeError(f"cannot resolve {host}: {exc}") from None
        family, _type, _proto, _name, address = infos[0]
        self.peer = f"{address[0]!s}:{address[1]!s}"
        if self.url["transport"] == "udp":
            self._udp = trio.socket.socket(family, socket.SOCK_DGRAM)
            await self._udp.connect(address)
            return
        try:
            with trio.fail_after(self.timeout):
                if self.url["scheme"] in ("stuns", "turns"):
                    self._stream = await trio.open_ssl_over_tcp_stream(
                        host, port, ssl_context=client_context(self.ca_file))
                    await self._stream.do_handshake()
                else:
                    self._stream = await trio.open_tcp_stream(host, port)
        except trio.TooSlowError:
            raise ProbeError(f"no TCP connection to {host}:{port} within {self.timeout:g} s "
                             "(a firewall dropping it?)") from None
        except (ssl.SSLError, trio.BrokenResourceError) as exc:
            reason = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
            raise ProbeError(f"TLS with {host}:{port} failed: {reason}") from None
        except OSError as exc:
            inner = exc.__cause__
            members = inner.exceptions if isinstance(inner, BaseExceptionGroup) else (inner,)
            if any(isinstance(e, ConnectionRefusedError) for e in (exc, *members)):
                raise ProbeError(f"{host}:{port} refused the TCP connection") from None
            raise ProbeError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None

    async def exchange(self, request: stun.Message, deadline: float) -> stun.Message:
        """Send ``request`` and return the response with its transaction id."""
        data = bytes(request)
        if self._udp is not None:
            for wait in UDP_RETRANSMIT:
                try:
                    await self._udp.send(data)
                except OSError as exc:
                    raise ProbeError(f"cannot send to {self.peer}: {exc.strerror or exc}") from None
                with trio.move_on_at(min(deadline, trio.current_time() + wait)):
                    while True:
                        try:
                            reply = await self._udp.recv(65536)
                        except ConnectionRefusedError:
                            raise ProbeError(f"{self.peer} refused (ICMP port unreachable: "
                                             "nothing listens on that UDP port)") from None
                        except OSError as exc:
                            raise ProbeError(f"{self.peer}: {exc.strerror or exc}") from None
                        message = _parse(reply)
                        if message is not None and (
                                message.transaction_id == request.transaction_id):
                            return message
                if trio.current_time() >= deadline:
                    break
            raise ProbeError(f"no answer from {self.peer} over UDP within {self.timeout:g} s")
        assert self._stream is not None
        with trio.move_on_at(deadline):
            await self._stream.send_all(data)
            while True:
                message = await self._read_message()
                if message.transaction_id == request.transaction_id:
                    return message
        raise ProbeError(f"no answer from {self.peer} within {self.timeout:g} s")

    async def _read_message(self) -> stun.Message:
        assert self._stream is not None
        while True:
            if len(self._buffer) >= 20:
                length = int.from_bytes(self._buffer[2:4], "big") + 20
                if len(self._buffer) >= length:
                    chunk, self._buffer = self._buffer[:length], self._buffer[length:]
                    message = _parse(chunk)
                    if message is None:
                        raise ProbeError(f"{self.peer} does not speak STUN")
                    return message
            data = await self._stream.receive_some(65536)
            if not data:
                raise ProbeError(f"{self.peer} closed the connection")
            self._buffer += data

    async def aclose(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._stream is not None:
            with trio.move_on_after(1):
                await self._stream.aclose()


def _parse(data: bytes) -> stun.Message | None:
    try:
        return stun.parse_message(data)
    except ValueError:
        return None


def _error(message: stun.Message) -> tuple[int, str]:
    code, reason = message.attributes.get("ERROR-CODE", (0, ""))
    return int(code), str(reason)


def _address(message: stun.Message, name: str) -> str:
    value = message.attributes.get(name)
    return f"{value[0]}:{value[1]}" if value else "?"


async def probe_ice_server(
    url: str, *, username: str = "", credential: str | None = None,
    ca_file: Path | None = None, timeout: float = 3.0,
) -> ProbeResult:
    """Ask one STUN/TURN URL; never raises for network trouble (it is the result)."""
    try:
        parsed = parse_ice_url(url)
    except ValueError as exc:
        return ProbeResult(False, f"cannot parse {url}: {exc}", "fix the URL in ice.servers")
    channel = _Channel(parsed, ca_file, timeout)
    started = time.monotonic()
    deadline = trio.current_time() + timeout
    try:
        await channel.open()
        if parsed["scheme"] in ("stun", "stuns"):
            reply = await channel.exchange(stun.Message(stun.Method.BINDING, stun.Class.REQUEST),
                                           deadline)
            rtt = (time.monotonic() - started) * 1000
            if reply.message_class != stun.Class.RESPONSE:
                code, reason = _error(reply)
                return ProbeResult(False, f"{channel.peer} answered error {code} {reason}")
            return ProbeResult(True, f"{channel.peer} answered in {rtt:.0f} ms; this device is "
                               f"{_address(reply, 'XOR-MAPPED-ADDRESS')} from there", rtt_ms=rtt)
        return await _probe_turn(channel, parsed, username, credential, deadline, started)
    except ProbeError as exc:
        transport = parsed["transport"].upper()
        if str(exc).startswith("cannot resolve"):
            fix = "check the host name, and this device's DNS (resolvectl status)"
        else:
            fix = (f"check the host and port; let this network send {transport} to it"
                   + (" (or use a turns: server on port 443, which most networks allow)"
                      if transport == "UDP" else ""))
        return ProbeResult(False, str(exc), fix)
    finally:
        await channel.aclose()


async def _probe_turn(
    channel: _Channel, parsed: dict[str, Any], username: str, credential: str | None,
    deadline: float, started: float,
) -> ProbeResult:
    transport = 17 if parsed["transport"] == "udp" else 6
    request = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST,
                           attributes={"REQUESTED-TRANSPORT": transport << 24})
    reply = await channel.exchange(request, deadline)
    rtt = (time.monotonic() - started) * 1000
    code, reason = _error(reply)
    if reply.message_class != stun.Class.ERROR or code != 401:
        return ProbeResult(False, f"{channel.peer} answered an unauthenticated Allocate with "
                           f"{code or 'success'} {reason}: not a TURN server that asks for "
                           "credentials", "check ice.servers")
    if credential is None:
        return ProbeResult(True, f"{channel.peer} answered in {rtt:.0f} ms (asks for "
                           "credentials; none configured to try)", rtt_ms=rtt)
    realm = reply.attributes.get("REALM", "")
    nonce = reply.attributes.get("NONCE", b"")
    key = hashlib.md5(f"{username}:{realm}:{credential}".encode(), usedforsecurity=False).digest()
    for _attempt in range(2):
        request = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST, attributes={
            "REQUESTED-TRANSPORT": transport << 24, "USERNAME": username, "REALM": realm,
            "NONCE": nonce})
        request.add_message_integrity(key)
        reply = await channel.exchange(request, deadline)
        code, reason = _error(reply)
        if reply.message_class == stun.Class.ERROR and code == 438:  # stale nonce: again
            nonce = reply.attributes.get("NONCE", nonce)
            continue
        break
    if reply.message_class != stun.Class.RESPONSE:
        if code in (401, 441):
            return ProbeResult(False, f"{channel.peer} rejected the credentials of "
                               f"{username!r} ({code} {reason})",
                               "check ice.servers[].username and the credential file")
        return ProbeResult(False, f"{channel.peer} refused an allocation: {code} {reason}")
    relayed = _address(reply, "XOR-RELAYED-ADDRESS")
    release = stun.Message(stun.Method.REFRESH, stun.Class.REQUEST, attributes={
        "LIFETIME": 0, "USERNAME": username, "REALM": realm, "NONCE": nonce})
    release.add_message_integrity(key)
    try:
        with trio.move_on_after(1):
            await channel.exchange(release, trio.current_time() + 1)
    except ProbeError:
        pass  # the allocation expires by itself
    return ProbeResult(True, f"{channel.peer} accepted the credentials of {username!r} and "
                       f"relayed from {relayed}", rtt_ms=rtt)
