"""Run the Glimpse dev server for tests: in-process, or as a real subprocess.

In-process (:func:`run_devserver`, fixture ``devserver``) is fast and is what
most integration tests want. The subprocess (:func:`devserver_process`)
exists for what only a process can show: being SIGKILLed and coming back on
the same port with the same database, as a real server would after a crash.

Every wait is bounded, and the subprocess's output is kept so that a failure
to start says why.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio

from glimpse_edge.devserver import LISTENING_PREFIX, serve

from .glimpse_client import sole_exception

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class DevServer:
    """Where a running dev server can be reached."""

    host: str
    port: int

    @property
    def api_url(self) -> str:
        """Base URL of the HTTP API (``/api/...`` is appended by clients)."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """WebSocket URL at ``/ws``."""
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def ws_root_url(self) -> str:
        """WebSocket URL at ``/``, where the real Glimpse server has it."""
        return f"ws://{self.host}:{self.port}/"


@asynccontextmanager
async def run_devserver(
    db_path: str | Path = ":memory:", host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[DevServer]:
    """Serve in this process (in a nursery) for the duration of the block."""
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(START_TIMEOUT):
                actual: int = await nursery.start(partial(serve, host, port, db_path))
            try:
                yield DevServer(host, actual)
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise sole_exception(group) from None


@pytest.fixture
async def devserver() -> AsyncIterator[DevServer]:
    """A fresh in-process dev server with an in-memory database."""
    async with run_devserver() as server:
        yield server


class DevServerProcess:
    """``python -m glimpse_edge.devserver`` as a child process that tests can kill.

    The first :meth:`start` learns the port from the server's "listening on"
    line (port 0 lets the kernel choose); later starts reuse that port, so
    clients configured with the old URL reconnect to the new process.
    """

    def __init__(
        self, nursery: trio.Nursery, db_path: str | Path, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._nursery = nursery
        self.db_path = str(db_path)
        self.host = host
        self.port = port
        self.output: collections.deque[str] = collections.deque(maxlen=400)
        self._proc: trio.Process | None = None
        self._exited = trio.Event()

    @property
    def server(self) -> DevServer:
        """Addresses of the server (valid once started)."""
        return DevServer(self.host, self.port)

    @property
    def api_url(self) -> str:
        """Base URL of the HTTP API."""
        return self.server.api_url

    @property
    def ws_url(self) -> str:
        """WebSocket URL at ``/ws``."""
        return self.server.ws_url

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(list(self.output)[-lines:]) or "(no output)"

    async def start(self, timeout: float = START_TIMEOUT) -> int:
        """Start the process and wait for it to listen; returns the port."""
        if self.running:
            raise RuntimeError("dev server process already running")
        cmd = [
            sys.executable,
            "-m",
            "glimpse_edge.devserver",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--db",
            self.db_path,
            "--log-format",
            "json",
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = await trio.lowlevel.open_process(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        self._proc = proc
        self._exited = trio.Event()
        listening: list[int] = []
        ready = trio.Event()
        self._nursery.start_soon(self._pump, proc, listening, ready, self._exited)
        with trio.move_on_after(timeout):
            await ready.wait()
        if not listening:
            await self.kill()
            raise RuntimeError(
                f"dev server did not report listening within {timeout}s"
                f" (exit status {proc.returncode}); output:\n{self._tail()}"
            )
        self.port = listening[0]
        return self.port

    async def _pump(
        self, proc: trio.Process, listening: list[int], ready: trio.Event, exited: trio.Event
    ) -> None:
        """Read the child's output until EOF, so that it can never block on a full pipe."""
        assert proc.stdout is not None
        buffer = b""
        try:
            async for chunk in proc.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    self.output.append(line)
                    if not listening and line.startswith(LISTENING_PREFIX):
                        listening.append(int(line.rsplit(":", 1)[1]))
                        ready.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            ready.set()  # EOF before "listening": start() reports the failure
            with trio.move_on_after(STOP_TIMEOUT) as scope:
                scope.shield = True
                await proc.wait()
            exited.set()

    async def kill(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGKILL the server (a crash: nothing is flushed or closed) and reap it."""
        await self._stop(signal.SIGKILL, timeout)

    async def terminate(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the server (clean stop); returns its exit status."""
        await self._stop(signal.SIGTERM, timeout)
        return self._proc.returncode if self._proc is not None else None

    async def _stop(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(sig)
        with trio.fail_after(timeout):
            await proc.wait()
            await self._exited.wait()

    async def restart(self, timeout: float = START_TIMEOUT) -> int:
        """Kill the server and start it again on the same port with the same database."""
        await self.kill()
        return await self.start(timeout)


@asynccontextmanager
async def devserver_process(
    db_path: str | Path, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[DevServerProcess]:
    """A started dev server subprocess, killed when the block ends."""
    try:
        async with trio.open_nursery() as nursery:
            server = DevServerProcess(nursery, db_path, host, port)
            try:
                await server.start()
                yield server
            finally:
                with trio.CancelScope(shield=True):
                    await server.kill()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise sole_exception(group) from None
