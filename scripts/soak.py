#!/usr/bin/env python3
"""Soak the agent: churn, server restarts and garbage for ``--minutes``.

Runs the real agent (``glimpse-edge run``) against the dev server (a
subprocess on a fixed port, killed with SIGKILL and restarted every
``--restart-every`` seconds), with one aiortc participant that stays all along,
``--concurrent`` participants that join and leave continuously (a new user each
time) and one raw participant that sends garbage ``webrtc_signal``s to the
agent. Every ``--interval`` seconds it samples the agent's RSS and open fds
(psutil), and its Trio tasks, asyncio tasks and peer sessions (its /metrics).
Writes ``soak.csv`` and ``soak.png`` into ``--out`` and exits 1 when, after the
warm-up, RSS grew by ``--rss-limit`` MB or more, or the fd or task counts did
not come back to their warm-up level, or the steady participant stopped
receiving.

    .venv/bin/python scripts/soak.py --minutes 5 --out /tmp/soak
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.agent import LIGHT_MEDIA, AgentProcess, write_config
from support.devserver import DevServerProcess, devserver_process
from support.glimpse_client import GlimpseClient, create_room, register
from support.rtcpeer import BrowserPeer

from glimpse_edge.introspect import asyncio_task_count
from glimpse_edge.rtc.aio import open_aio_loop

MEDIA = LIGHT_MEDIA

FIELDS = ["t", "rss_mb", "fds", "trio_tasks", "asyncio_tasks", "peers", "cycles", "restarts",
          "garbage", "steady_frames", "harness_asyncio_tasks", "harness_cpu"]

GARBAGE: list[tuple[str, object]] = [
    ("offer", {"type": "offer", "sdp": "v=0\r\nnonsense"}),
    ("offer", {"type": "offer", "sdp": "x" * 60_000}),
    ("answer", {"type": "answer", "sdp": "v=0\r\n"}),
    ("ice-candidate", {"candidate": "candidate:1 1 udp 1 10.9.9.9 9 typ host", "sdpMid": "7"}),
    ("ice-candidate", {"candidate": "garbage", "sdpMLineIndex": -3}),
    ("offer", 42),
    ("bogus", None),
    ("answer", ["a", "list"]),
]


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cycles = 0
        self.restarts = 0
        self.garbage = 0
        self.rows: list[dict[str, float]] = []
        self.metrics_url = ""
        self.t0 = 0.0
        self._names = itertools.count()
        self.baseline: dict[str, float] = {}
        self.agent_log: Path | None = None
        self.http: httpx.AsyncClient | None = None
        self.harness = psutil.Process()  # this process: the peers and the server's client
        self.fds_baseline: list[str] = []
        self.fds_final: list[str] = []
        self.final: dict[str, float] = {}

    async def main(self, workdir: Path) -> bool:
        # One keep-alive connection for every sample: the observe server (hypercorn)
        # keeps a closed client's connection task and socket for its keep-alive
        # timeout (5 s), so a new connection per sample counted the sampler's own
        # earlier requests (+1 fd, +2 Trio tasks each) in whatever came next.
        async with open_aio_loop(), httpx.AsyncClient() as http:  # aiortc needs the loop
            self.http = http
            try:
                return await self.run(workdir)
            except Exception as exc:  # the soak itself broke: keep what was sampled
                print(f"FAIL: the soak stopped: {type(exc).__name__}: {exc}")
                if self.rows:
                    self._report()
                return False

    async def run(self, workdir: Path) -> bool:
        args = self.args
        async with devserver_process(workdir / "glimpse.db") as server, \
                trio.open_nursery() as nursery:
            device_id, device_token = await register(server.api_url, "device", "pw-device")
            _o, owner_token = await register(server.api_url, "owner", "pw-owner")
            _s, steady_token = await register(server.api_url, "steady", "pw-steady")
            _g, garbage_token = await register(server.api_url, "garbage", "pw-garbage")
            room_id = await create_room(server.api_url, owner_token, "Soak")
            config = write_config(workdir / "agent", ws_url=server.ws_url, room_id=room_id,
                                  token=device_token, log_level="info", extra=MEDIA,
                                  server={"reconnect_min": 0.2, "reconnect_max": 1.0})
            config.write_text(config.read_text().replace(
                '[observe]\nlisten = ""', '[observe]\nlisten = "127.0.0.1:0"'))
            agent = AgentProcess(config)
            self.agent_log = agent.log_path  # copied into --out: the workdir goes away
            await agent.start(nursery)
            listening = await agent.wait_for("observe.listening", timeout=20)
            self.metrics_url = f"http://127.0.0.1:{listening['port']}/metrics"
            await agent.wait_for("room.joined", timeout=20)
            steady = BrowserPeer("steady")
            steady.reconnect_delay = 0.5
            async with steady.joined(server.ws_url, steady_token, room_id, reconnect=True):
                await steady.wait_frames(device_id, video=15)
                self.t0 = trio.current_time()
                # warm-up, then a quiet moment (the baseline), then the soak, then
                # quiet again: counts are compared between the two quiet moments
                await self._phase(args.warmup, agent, steady, device_id, server, room_id,
                                  garbage_token)
                self.baseline = await self._quiet(agent, steady, device_id)
                self.fds_baseline = fd_table(agent.pid)
                await self._phase(args.minutes * 60 - args.warmup, agent, steady, device_id,
                                  server, room_id, garbage_token)
                self.final = await self._quiet(agent, steady, device_id)
                self.fds_final = fd_table(agent.pid)
            await agent.stop()
            errors = [e for e in agent.events if e.get("level") == "error"]
            print(f"agent error lines: {len(errors)}; log: {Path(args.out) / 'agent.log'}")
            nursery.cancel_scope.cancel()
        return self._report()

    async def _phase(self, seconds: float, agent: AgentProcess, steady: BrowserPeer,
                     device_id: str, server: DevServerProcess, room_id: str,
                     garbage_token: str) -> None:
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as work:
                work.start_soon(self._sample, agent, steady, device_id)
                for n in range(self.args.concurrent):
                    work.start_soon(self._churn, server, room_id, agent, n)
                work.start_soon(self._restarts, server)
                work.start_soon(self._garbage, server, garbage_token, room_id, device_id)

    async def _quiet(self, agent: AgentProcess, steady: BrowserPeer,
                     device_id: str) -> dict[str, float]:
        """Sample until only the steady participant's session is left (at most 30 s)."""
        with trio.move_on_after(30):
            while True:
                await self._sample_async(agent, steady, device_id)
                if len(self.rows) >= 2 and self.rows[-1]["peers"] <= 1 and all(
                        self.rows[-1][k] == self.rows[-2][k]
                        for k in ("fds", "trio_tasks", "asyncio_tasks")):
                    break
                await trio.sleep(self.args.interval)
        frames = steady.received[device_id].video_frames
        await steady.wait_frames(device_id, video=frames + 15)
        await self._sample_async(agent, steady, device_id)
        return self.rows[-1]

    async def _churn(self, server: DevServerProcess, room_id: str, agent: AgentProcess,
                     worker: int) -> None:
        while True:
            name = f"churn{worker}-{next(self._names)}"  # a new user every time, every phase
            try:
                _uid, token = await register(server.api_url, name, f"pw-{name}")
                peer = BrowserPeer(name)
                with trio.fail_after(30):
                    mark = len(agent.events)
                    async with peer.joined(server.ws_url, token, room_id, leave=True):
                        await agent.wait_for("peer.connected", since=mark, peer=peer.user_id,
                                             timeout=20)
                    await agent.wait_for("peer.removed", since=mark, peer=peer.user_id,
                                         timeout=20)
                self.cycles += 1
            except Exception as exc:  # the server was restarting: try again
                print(f"churn {name}: {type(exc).__name__}: {str(exc)[:120]}")
                await trio.sleep(1.0)

    async def _restarts(self, server: DevServerProcess) -> None:
        while True:
            await trio.sleep(self.args.restart_every)
            await server.restart()
            self.restarts += 1

    async def _garbage(self, server: DevServerProcess, token: str, room_id: str,
                       device_id: str) -> None:
        while True:
            try:
                async with GlimpseClient("garbage") as client:
                    await client.connect(server.ws_url)
                    await client.authenticate(token)
                    await client.join(room_id)
                    while True:
                        for kind, payload in GARBAGE:
                            await client.signal(room_id, device_id, kind, payload)
                            self.garbage += 1
                        await trio.sleep(1.0)
            except Exception:  # the server was restarting
                await trio.sleep(1.0)

    async def _sample(self, agent: AgentProcess, steady: BrowserPeer, device_id: str) -> None:
        while True:
            await self._sample_async(agent, steady, device_id)
            await trio.sleep(self.args.interval)

    async def _sample_async(self, agent: AgentProcess, steady: BrowserPeer,
                            device_id: str) -> None:
        gauges: dict[str, float] = {}
        assert self.http is not None
        try:
            # shielded: a request cut off by the end of a phase would drop the
            # connection, and the next sample would count the dropped one too
            with trio.CancelScope(shield=True):
                text = (await self.http.get(self.metrics_url, timeout=5)).text
            for name in ("glimpse_edge_trio_tasks", "glimpse_edge_asyncio_tasks"):
                match = re.search(rf"^{name} (\S+)$", text, re.M)
                gauges[name] = float(match.group(1)) if match else float("nan")
            gauges["peers"] = sum(float(v) for v in re.findall(
                r"^glimpse_edge_peers\{[^}]*\} (\S+)$", text, re.M))
        except httpx.HTTPError:
            return
        process = psutil.Process(agent.pid)
        self.rows.append({
            "t": round(trio.current_time() - self.t0, 1),
            "rss_mb": round(process.memory_info().rss / 2**20, 2),
            "fds": process.num_fds(),
            "trio_tasks": gauges["glimpse_edge_trio_tasks"],
            "asyncio_tasks": gauges["glimpse_edge_asyncio_tasks"],
            "peers": gauges["peers"],
            "cycles": self.cycles, "restarts": self.restarts, "garbage": self.garbage,
            "steady_frames": steady.received[device_id].video_frames,
            # this process (the peers' side): a dip of the steady peer's frames
            # while it is starved is the harness's, not the agent's
            "harness_asyncio_tasks": asyncio_task_count(),
            "harness_cpu": round(self.harness.cpu_percent() / 100, 2),
        })

    def _report(self) -> bool:
        args, rows = self.args, self.rows
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if self.agent_log is not None and self.agent_log.exists():
            shutil.copyfile(self.agent_log, out / "agent.log")  # which peers, and why
        with (out / "soak.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self._plot(out / "soak.png")
        first, last = self.baseline, self.final
        if not first or not last:
            print("FAIL: no quiet baseline or end sample")
            return False
        ok = True
        rss_growth = last["rss_mb"] - first["rss_mb"]
        print(f"duration {rows[-1]['t']:.0f} s, join/leave cycles {self.cycles}, "
              f"server restarts {self.restarts}, garbage signals {self.garbage}")
        print(f"RSS start {rows[0]['rss_mb']:.1f} MB, after warm-up {first['rss_mb']:.1f} MB, "
              f"end {last['rss_mb']:.1f} MB (growth after warm-up {rss_growth:+.1f} MB), "
              f"max {max(r['rss_mb'] for r in rows):.1f} MB")
        if rss_growth >= args.rss_limit:
            print(f"FAIL: RSS grew {rss_growth:.1f} MB after warm-up (limit {args.rss_limit})")
            ok = False
        (out / "fds.txt").write_text(
            "after warm-up:\n" + "\n".join(self.fds_baseline)
            + "\n\nat the end:\n" + "\n".join(self.fds_final) + "\n")
        added = Counter(kind for _fd, kind in map(_split_fd, self.fds_final))
        added.subtract(kind for _fd, kind in map(_split_fd, self.fds_baseline))
        if any(n > 0 for n in added.values()):
            print("fds held at the end, not after warm-up (all in fds.txt):",
                  {k: n for k, n in added.items() if n > 0})
        for key in ("fds", "trio_tasks", "asyncio_tasks", "peers"):
            print(f"{key}: start {rows[0][key]:.0f}, quiet after warm-up {first[key]:.0f}, "
                  f"quiet at the end {last[key]:.0f}, max under churn "
                  f"{max(r[key] for r in rows):.0f}")
            if last[key] > first[key]:
                print(f"FAIL: {key} did not come back to its baseline")
                ok = False
        harness = [r["harness_asyncio_tasks"] for r in rows]
        print(f"harness (this process, the peers' side): asyncio tasks max {max(harness):.0f}, "
              f"at the end {harness[-1]:.0f}; CPU mean "
              f"{sum(r['harness_cpu'] for r in rows) / len(rows):.2f} core")
        if last["steady_frames"] <= first["steady_frames"]:
            print("FAIL: the steady participant stopped receiving")
            ok = False
        if self.cycles == 0:
            print("FAIL: no join/leave cycle completed")
            ok = False
        print("PASS" if ok else "FAIL", f"(CSV and plot in {out})")
        return ok

    def _plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rows
        t = [r["t"] / 60 for r in rows]
        fig, axes = plt.subplots(4, 1, sharex=True, figsize=(10, 9))
        axes[0].plot(t, [r["rss_mb"] for r in rows], color="tab:red")
        axes[0].set_ylabel("RSS (MB)")
        axes[1].plot(t, [r["fds"] for r in rows], label="open fds")
        axes[1].plot(t, [r["peers"] for r in rows], label="peer sessions")
        axes[1].legend(loc="upper left")
        axes[2].plot(t, [r["trio_tasks"] for r in rows], label="Trio tasks")
        axes[2].plot(t, [r["asyncio_tasks"] for r in rows], label="asyncio tasks")
        axes[2].legend(loc="upper left")
        axes[3].plot(t, [r["cycles"] for r in rows], label="join/leave cycles")
        axes[3].set_ylabel("cycles")
        axes[3].legend(loc="upper left")
        # the steady peer's frame rate, on its own scale: a dip is a freeze
        fps = [0.0] + [(b["steady_frames"] - a["steady_frames"]) / (b["t"] - a["t"])
                       if b["t"] > a["t"] else 0.0 for a, b in itertools.pairwise(rows)]
        steady = axes[3].twinx()
        steady.plot(t, fps, color="tab:orange", label="steady peer's decoded fps")
        steady.set_ylabel("fps")
        steady.legend(loc="lower right")
        axes[3].set_xlabel("minutes")
        restarts = [r["t"] / 60 for prev, r in itertools.pairwise(rows)
                    if r["restarts"] > prev["restarts"]]
        for ax in axes:
            for x in restarts:
                ax.axvline(x, color="grey", linestyle=":", linewidth=0.8)
            ax.axvline(self.args.warmup / 60, color="green", linestyle="--", linewidth=0.8)
        axes[0].set_title("glimpse-edge soak (dotted: server restarts; dashed: end of warm-up)")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)


def fd_table(pid: int) -> list[str]:
    """What each open fd of ``pid`` is ("12: TCP ESTABLISHED 127.0.0.1:1 -> ...")."""
    process = psutil.Process(pid)
    try:
        sockets = {c.fd: c for c in process.net_connections(kind="all")}
    except psutil.Error:
        sockets = {}
    rows = []
    for name in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed meanwhile
        conn = sockets.get(int(name))
        if conn is not None:
            kind = {socket.SOCK_STREAM: "TCP", socket.SOCK_DGRAM: "UDP"}.get(conn.type, "?")
            if conn.family == socket.AF_UNIX:
                kind = "UNIX"
            remote = f"{conn.raddr.ip}:{conn.raddr.port}" if conn.raddr else "-"
            target = f"{kind} {conn.status} -> {remote}"
        rows.append(f"{name}: {target}")
    return rows


def _split_fd(row: str) -> tuple[str, str]:
    fd, _, kind = row.partition(": ")
    # ephemeral peer ports and inode numbers differ between the two moments
    return fd, re.sub(r"(:\d+$)|(\[\d+\])", "", kind)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between samples")
    parser.add_argument("--restart-every", type=float, default=120.0,
                        help="seconds between server restarts")
    parser.add_argument("--concurrent", type=int, default=3, help="churning participants")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds")
    parser.add_argument("--rss-limit", type=float, default=10.0, help="MB after warm-up")
    parser.add_argument("--out", default="soak-out")
    args = parser.parse_args()
    soak = Soak(args)
    with tempfile.TemporaryDirectory(prefix="glimpse-soak-") as tmp:
        started = time.monotonic()
        ok = trio.run(soak.main, Path(tmp))
        print(f"wall time {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
