"""A stand-in for systemd's ``$NOTIFY_SOCKET`` that records what the agent says."""

from __future__ import annotations

import re
from pathlib import Path

import trio


class NotifySocket:
    """Bind a datagram socket at ``path`` (``run``) and keep every line sent to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []
        self._changed = trio.Condition()
        self._sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._sock:
            await self._sock.bind(str(self.path))
            task_status.started()
            while True:
                data = await self._sock.recv(65536)
                self.lines.extend(data.decode().split("\n"))
                async with self._changed:
                    self._changed.notify_all()

    async def wait_line(self, pattern: str, since: int = 0, timeout: float = 10.0) -> str:
        """The newest line from ``since`` on that matches ``pattern`` in full."""
        with trio.move_on_after(timeout):
            while True:
                hits = [ln for ln in self.lines[since:] if re.fullmatch(pattern, ln)]
                if hits:
                    return hits[-1]
                async with self._changed:
                    await self._changed.wait()
        raise AssertionError(f"no notify line matching {pattern!r}; got {self.lines[-10:]}")

    async def wait_count(self, line: str, count: int, timeout: float = 10.0) -> None:
        """Until ``line`` has been received ``count`` times in all."""
        with trio.move_on_after(timeout):
            while self.lines.count(line) < count:
                async with self._changed:
                    await self._changed.wait()
            return
        raise AssertionError(f"{line!r} {self.lines.count(line)} times, not {count}")
