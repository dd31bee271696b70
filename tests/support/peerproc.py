"""The test side of ``peer_runner.py``: start a receiving peer process, read its reports.

Everything the fault tests assert on comes from here, i.e. from what the
receiving peer actually decoded: frame totals, the burned-in frame codes
with their receive times (wall clock; all namespaces share the machine's
clock, so cut/restore instants taken by the test compare directly), and
the bytes its transport received. Waits are bounded and fail with the
peer's recent log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import trio

RUNNER = Path(__file__).with_name("peer_runner.py")


@dataclass
class RemoteView:
    """What the peer got from one remote participant (the agent)."""

    video: int = 0
    audio: int = 0
    codes: list[tuple[int, float, float]] = field(default_factory=list)  # counter, sent, recv ms
    bytes: list[tuple[float, int]] = field(default_factory=list)  # (wall s, transport bytes)
    # (wall s, width, height): the first decoded frame's size and each change of it
    sizes: list[tuple[float, int, int]] = field(default_factory=list)
    state: str | None = None
    # (wall s, origin, blocked): the video jitter buffer at each report, blocked
    # while a packet is missing in it (later frames wait; peer_runner.py)
    jitter: list[tuple[float, int, bool]] = field(default_factory=list)

    def frame_times(self, t0: float = 0.0, t1: float = float("inf")) -> list[float]:
        """Receive times (wall s) of decoded, coded frames within [t0, t1]."""
        return [recv / 1000 for _c, _s, recv in self.codes if t0 <= recv / 1000 <= t1]

    def frames_between(self, t0: float, t1: float) -> int:
        return len(self.frame_times(t0, t1))

    def longest_gap(self, t0: float, t1: float) -> float:
        """Longest time without a decoded frame within [t0, t1] (edges count)."""
        times = [t0, *self.frame_times(t0, t1), t1]
        return max(b - a for a, b in pairwise(times))

    def longest_hole(self, t0: float, t1: float) -> float | None:
        """Longest time within [t0, t1] the jitter buffer held a gap (a missing packet,
        later ones waiting behind it); None if the peer did not report its buffer.

        A freeze this long is a loss not repaired, not a slow link."""
        samples = [j for j in self.jitter if t0 <= j[0] <= t1]
        if not samples:
            return None
        longest, since = 0.0, None
        for t, _origin, blocked in samples:
            if blocked and since is None:
                since = t
            elif not blocked and since is not None:
                longest, since = max(longest, t - since), None
        if since is not None:
            longest = max(longest, samples[-1][0] - since)
        return round(longest, 2)

    def first_frame_after(self, t: float) -> float | None:
        later = self.frame_times(t)
        return later[0] if later else None

    def bitrate(self, t0: float, t1: float) -> float | None:
        """Received bits per second over [t0, t1] (a new connection restarts the counter)."""
        samples = [(t, b) for t, b in self.bytes if t0 <= t <= t1]
        if len(samples) < 2 or samples[-1][0] - samples[0][0] <= 0:
            return None
        total = sum((b2 - b1) if b2 >= b1 else b2 for (_t1, b1), (_t2, b2) in pairwise(samples))
        return total * 8 / (samples[-1][0] - samples[0][0])

    def size_at(self, t: float) -> tuple[int, int] | None:
        """The size of the frames decoded at wall time ``t``."""
        before = [(w, h) for at, w, h in self.sizes if at <= t]
        return before[-1] if before else None

    def sizes_between(self, t0: float, t1: float) -> set[tuple[int, int]]:
        """Every frame size decoded within [t0, t1]."""
        now = self.size_at(t0)
        return {*([now] if now else []), *((w, h) for at, w, h in self.sizes if t0 <= at <= t1)}

    def share_of_size(self, size: tuple[int, int], t0: float, t1: float) -> float:
        """The share of [t0, t1] during which frames of ``size`` were decoded."""
        changes = [(t0, *(self.size_at(t0) or (0, 0)))] + [
            (at, w, h) for at, w, h in self.sizes if t0 < at < t1] + [(t1, 0, 0)]
        spent = sum(b[0] - a[0] for a, b in pairwise(changes) if (a[1], a[2]) == size)
        return spent / (t1 - t0) if t1 > t0 else 0.0

    def latencies_ms(self, t0: float = 0.0, t1: float = float("inf")) -> list[float]:
        return [recv - sent for _c, sent, recv in self.codes if t0 <= recv / 1000 <= t1]


class PeerProcess:
    """``peer_runner.py`` as a child process, optionally inside a network namespace."""

    def __init__(self, name: str, *, ws_url: str, token: str, room_id: str,
                 command_prefix: Sequence[str] = (), log_dir: Path | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.name = name
        self.args = ["--ws-url", ws_url, "--token", token, "--room", room_id, "--name", name,
                     *extra_args]
        self.command_prefix = list(command_prefix)
        self.user_id: str | None = None
        self.remotes: dict[str, RemoteView] = {}
        self.log: list[str] = []
        self.stderr = b""
        self.process: trio.Process | None = None
        self.returncode: int | None = None
        self._changed = trio.Condition()
        self._log_file = (log_dir / f"peer-{name}.log").open("a", buffering=1) if log_dir else None

    async def start(self, nursery: trio.Nursery) -> None:
        cmd = [*self.command_prefix, sys.executable, str(RUNNER), *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = await trio.lowlevel.open_process(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
        nursery.start_soon(self._read_stdout)
        nursery.start_soon(self._read_stderr)

    def remote(self, remote_id: str) -> RemoteView:
        return self.remotes.setdefault(remote_id, RemoteView())

    async def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        buf = b""
        async for chunk in self.process.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                self._on_line(line.decode(errors="replace"))
            async with self._changed:
                self._changed.notify_all()
        self.returncode = await self.process.wait()
        async with self._changed:
            self._changed.notify_all()

    def _on_line(self, text: str) -> None:
        if self._log_file is not None:
            self._log_file.write(text + "\n")
        try:
            event = json.loads(text)
        except ValueError:
            self.log.append(text)
            return
        if event.get("event") == "joined":
            self.user_id = event["user_id"]
        elif event.get("event") == "report":
            t = float(event["t"])
            for remote_id, r in event.get("peers", {}).items():
                view = self.remote(remote_id)
                view.video, view.audio, view.state = r["video"], r["audio"], r["state"]
                view.codes.extend((int(c), float(s), float(v)) for c, s, v in r["codes"])
                if (jb := r.get("jb")) is not None:
                    view.jitter.append((t, int(jb["origin"]), bool(jb["gaps"])))
                if r.get("bytes") is not None:
                    view.bytes.append((t, int(r["bytes"])))
                view.sizes.extend((float(at) / 1000, int(w), int(h))
                                  for at, w, h in r.get("sizes", []))
            self.log.extend(f"{t:.3f} {line}" for line in event.get("log", []))

    async def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr = (self.stderr + chunk)[-20000:]

    async def wait_until(self, predicate: Callable[[], bool], what: str,
                         timeout: float = 30.0) -> None:
        with trio.move_on_after(timeout):
            while not predicate():
                if self.returncode is not None:
                    break
                async with self._changed:
                    await self._changed.wait()
            if predicate():
                return
        raise AssertionError(
            f"peer {self.name}: expected {what} within {timeout} s; exit code "
            f"{self.returncode}; seen: "
            f"{ {k: (v.video, v.audio, v.state) for k, v in self.remotes.items()} }; "
            f"log: {self.log[-12:]}; stderr: {self.stderr[-1500:].decode(errors='replace')}")

    async def wait_joined(self, timeout: float = 20.0) -> str:
        await self.wait_until(lambda: self.user_id is not None, "to join the room", timeout)
        assert self.user_id is not None
        return self.user_id

    async def wait_frames(self, remote_id: str, video: int, timeout: float = 30.0) -> RemoteView:
        """Until ``video`` frames in total were decoded from ``remote_id``."""
        view = self.remote(remote_id)
        await self.wait_until(lambda: view.video >= video, f">= {video} video frames", timeout)
        return view

    async def wait_more_frames(self, remote_id: str, more: int,
                               timeout: float = 30.0) -> RemoteView:
        view = self.remote(remote_id)
        return await self.wait_frames(remote_id, view.video + more, timeout)

    async def wait_frames_after(self, remote_id: str, t: float, count: int = 1,
                                timeout: float = 30.0) -> float:
        """Until ``count`` coded frames received after wall time ``t``; the first one's time."""
        view = self.remote(remote_id)
        await self.wait_until(lambda: len(view.frame_times(t)) >= count,
                              f">= {count} frames after t={t:.3f}", timeout)
        return view.frame_times(t)[0]

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(3):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
