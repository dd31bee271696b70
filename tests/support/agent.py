"""Run the real ``glimpse-edge run`` as a subprocess and follow its log events.

The agent logs JSON lines when stdout is not a TTY, one structured event per
line. Tests wait on those events (``room.joined``, ``signaling.reconnecting``
...) with a timeout instead of sleeping, and a timeout fails with what was
expected and the last events that were seen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import trio

Event = dict[str, Any]

# The usual streaming setup of the media tests: 640x360 H.264 up to 800 kbit/s and a
# tone, with peer timings short enough for tests.
STREAMING_WIDTH, STREAMING_HEIGHT, STREAMING_MAX_BITRATE = 640, 360, 800_000
FAST_PEERS = """[peers]
offer_wait = 0.5
connect_timeout = 6.0
dead_after = 3.0
"""
STREAMING_MEDIA = f"""
[video]
source = "testpattern"
width = {STREAMING_WIDTH}
height = {STREAMING_HEIGHT}
framerate = 30
codec = "h264"
max_bitrate = {STREAMING_MAX_BITRATE}

[audio]
source = "tone"

{FAST_PEERS}"""

# A light media setup for tests that churn many peers: small H.264, no audio.
LIGHT_MEDIA = """
[video]
source = "testpattern"
width = 320
height = 180
framerate = 15
codec = "h264"
max_bitrate = 300000

[audio]
source = "none"

[peers]
offer_wait = 0.5
connect_timeout = 6.0
max_peers = 8
"""


def write_secret(path: Path, value: str, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.chmod(path, mode)
    return path


def write_config(
    directory: Path,
    *,
    ws_url: str,
    room_id: str,
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
    api_url: str = "",
    server: Mapping[str, Any] | None = None,
    log_level: str = "debug",
    extra: str = "",
    ice: str = "[ice]\nservers = []\n",
) -> Path:
    """A complete agent configuration in ``directory`` (secrets 0600 beside it)."""
    directory.mkdir(parents=True, exist_ok=True)
    server_lines = [f'ws_url = "{ws_url}"', f'api_url = "{api_url}"',
                    "reconnect_min = 0.2", "reconnect_max = 2.0",
                    "connect_timeout = 3.0", "ping_interval = 5.0", "ping_timeout = 3.0"]
    for key, value in (server or {}).items():
        server_lines = [ln for ln in server_lines if not ln.startswith(f"{key} =")]
        server_lines.append(f"{key} = {json.dumps(value)}")
    if token is not None:
        auth = f'token_file = "{write_secret(directory / "token", token)}"'
    else:
        assert username is not None and password is not None
        pw = write_secret(directory / "password", password)
        auth = f'username = "{username}"\npassword_file = "{pw}"'
    path = directory / "config.toml"
    path.write_text(
        "[server]\n" + "\n".join(server_lines) + "\n\n"
        f"[auth]\n{auth}\n\n"
        f'[room]\nid = "{room_id}"\n\n'
        f"{ice}\n"
        '[observe]\nlisten = ""\n\n'
        f'[log]\nlevel = "{log_level}"\nformat = "json"\n\n' + extra
    )
    return path


class AgentProcess:
    """One agent subprocess; ``events`` grows as it logs."""

    def __init__(self, config: Path, env: Mapping[str, str] | None = None,
                 command_prefix: Sequence[str] = ()) -> None:
        """``command_prefix`` runs the agent under another command, e.g.
        ``["ip", "netns", "exec", "ns1"]`` (which execs, so ``pid`` stays the agent's).
        """
        self.config = config
        self.command_prefix = list(command_prefix)
        self.env = {**os.environ, **(env or {})}
        self.events: list[Event] = []
        self.raw_lines: list[str] = []
        self.stderr = b""
        self.process: trio.Process | None = None
        self._changed = trio.Condition()
        self.returncode: int | None = None
        # Everything the agent printed, for a person reading a failed test.
        self.log_path = config.parent / "agent.log"
        self._log_file = self.log_path.open("a", buffering=1)  # line-buffered, tiny writes

    async def start(self, nursery: trio.Nursery) -> None:
        cmd = [*self.command_prefix,
               sys.executable, "-m", "glimpse_edge", "run", "--config", str(self.config)]
        self.process = await trio.lowlevel.open_process(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env
        )
        nursery.start_soon(self._read_stdout)
        nursery.start_soon(self._read_stderr)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        buf = b""
        async for chunk in self.process.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                self.raw_lines.append(text)
                self._log_file.write(text + "\n")
                try:
                    event = json.loads(text)
                except ValueError:
                    event = {"event": "raw", "line": text}
                if not isinstance(event, dict):
                    event = {"event": "raw", "line": text}
                event["_t"] = trio.current_time()
                self.events.append(event)
            async with self._changed:
                self._changed.notify_all()
        self.returncode = await self.process.wait()
        async with self._changed:
            self._changed.notify_all()

    async def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr += chunk

    def find(self, name: str, since: int = 0, **fields: Any) -> list[Event]:
        return [e for e in self.events[since:] if e.get("event") == name
                and all(e.get(k) == v for k, v in fields.items())]

    async def wait_for(
        self,
        name: str,
        *,
        timeout: float = 15.0,
        since: int = 0,
        count: int = 1,
        where: Callable[[Event], bool] = lambda _e: True,
        **fields: Any,
    ) -> Event:
        """The ``count``-th event named ``name`` (after index ``since``) matching ``fields``."""
        with trio.move_on_after(timeout):
            while True:
                found = [e for e in self.find(name, since, **fields) if where(e)]
                if len(found) >= count:
                    return found[count - 1]
                if self.returncode is not None:
                    break
                async with self._changed:
                    await self._changed.wait()
        seen = [e.get("event") for e in self.events[-25:]]
        raise AssertionError(
            f"expected {count} x event {name!r} {fields or ''} within {timeout} s "
            f"(after index {since}); agent exit code {self.returncode}; "
            f"last events seen: {seen}; stderr: {self.stderr[-2000:].decode(errors='replace')}"
        )

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait_exit(self, timeout: float = 10.0) -> int:
        assert self.process is not None
        with trio.fail_after(timeout):
            code = await self.process.wait()
        return code

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(8):
                await self.process.wait()
                return
            self.process.kill()
            await self.process.wait()
