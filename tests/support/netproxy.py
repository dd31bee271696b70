"""A loopback TCP proxy that can go silent, and a listener that never answers.

These stand in for the failures a device meets on real networks: a server
that accepts TCP but never completes the WebSocket handshake (a half-dead
load balancer), and a path that stops carrying bytes while both sockets stay
open (a Wi-Fi that drops everything; only pings can tell).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio


class SilentListener:
    """Accepts connections and reads whatever arrives, and never writes a byte."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        async with stream:
            while await stream.receive_some(65536):
                pass

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SilentListener]:
        async with trio.open_nursery() as nursery:
            serve = partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1")
            listeners = await nursery.start(serve)
            self.port = listeners[0].socket.getsockname()[1]
            yield self
            nursery.cancel_scope.cancel()


class FreezableProxy:
    """Forwards 127.0.0.1:port to a target until :meth:`freeze`; then drops every byte.

    While frozen, existing connections stay open but carry nothing (so the
    peer sees no close, no reset, just silence) and new connections are
    accepted and ignored. :meth:`thaw` lets new connections through again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.frozen = False
        self.connections = 0

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False

    async def _pipe(self, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        try:
            while data := await src.receive_some(65536):
                if not self.frozen:
                    await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.frozen:
            async with client:
                while await client.receive_some(65536):
                    pass
            return
        self.connections += 1
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pipe, client, upstream)
            await self._pipe(upstream, client)
            nursery.cancel_scope.cancel()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FreezableProxy]:
        async with trio.open_nursery() as nursery:
            serve = partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1")
            listeners = await nursery.start(serve)
            self.port = listeners[0].socket.getsockname()[1]
            yield self
            nursery.cancel_scope.cancel()
