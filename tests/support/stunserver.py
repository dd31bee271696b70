"""A STUN + TURN (Allocate only) responder on a local UDP port, for the doctor's tests.

Real servers are not reachable from the test machine, and the doctor's probe
must be tested against real STUN messages: this answers Binding requests with
XOR-MAPPED-ADDRESS, and Allocate requests like coturn with a long-term
credential: 401 with REALM and NONCE without credentials, success (with a
relayed address) when MESSAGE-INTEGRITY checks out with the right password,
401 otherwise. Refresh (the probe's release) is answered with success.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
from aioice import stun

REALM = "glimpse-test"
NONCE = b"0123456789abcdef"


@dataclass
class StunServer:
    port: int
    username: str
    password: str
    requests: list[str] = field(default_factory=list)

    @property
    def stun_url(self) -> str:
        return f"stun:127.0.0.1:{self.port}"

    @property
    def turn_url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def key(self) -> bytes:
        text = f"{self.username}:{REALM}:{self.password}"
        return hashlib.md5(text.encode(), usedforsecurity=False).digest()

    def answer(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        try:
            request = stun.parse_message(data)
        except ValueError:
            return None
        self.requests.append(request.message_method.name)
        tid = request.transaction_id
        if request.message_method == stun.Method.BINDING:
            return bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, tid,
                                      {"XOR-MAPPED-ADDRESS": addr}))
        if "USERNAME" not in request.attributes:
            return bytes(stun.Message(request.message_method, stun.Class.ERROR, tid, {
                "ERROR-CODE": (401, "Unauthorized"), "REALM": REALM, "NONCE": NONCE}))
        if not request.check_message_integrity(self.key()):
            return bytes(stun.Message(request.message_method, stun.Class.ERROR, tid, {
                "ERROR-CODE": (401, "Unauthorized"), "REALM": REALM, "NONCE": NONCE}))
        if request.message_method == stun.Method.ALLOCATE:
            reply = stun.Message(stun.Method.ALLOCATE, stun.Class.RESPONSE, tid, {
                "XOR-RELAYED-ADDRESS": ("127.0.0.1", 50000), "XOR-MAPPED-ADDRESS": addr,
                "LIFETIME": 600})
        else:
            reply = stun.Message(request.message_method, stun.Class.RESPONSE, tid,
                                 {"LIFETIME": 0})
        reply.add_message_integrity(self.key())
        return bytes(reply)


@asynccontextmanager
async def stun_server(username: str = "turnuser",
                      password: str = "turnpass") -> AsyncIterator[StunServer]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    server = StunServer(sock.getsockname()[1], username, password)

    async def serve() -> None:
        while True:
            data, addr = await sock.recvfrom(65536)
            reply = server.answer(data, addr)
            if reply is not None:
                await sock.sendto(reply, addr)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
            sock.close()
