#!/usr/bin/env python3
"""Foundation figures: start to READY, idle CPU and memory, re-join after a server restart.

Runs the real ``glimpse-edge run`` against the real dev server (a subprocess
that is SIGKILLed and restarted on the same port), on loopback only, and
prints a table. Not a test: nothing here asserts; targets are read off it.

    .venv/bin/python scripts/bench_agent.py [--runs 5] [--idle 20]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
from pathlib import Path

import psutil
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.agent import AgentProcess, write_config
from support.devserver import devserver_process
from support.glimpse_client import create_room, register

QUIET_MEDIA = """
[video]
source = "testpattern"
[audio]
source = "tone"
"""


async def ready_time(config: Path, nursery: trio.Nursery, tmp: Path) -> float:
    """Seconds from process start to READY=1 on a real NOTIFY_SOCKET."""
    sock_path = str(tmp / f"notify-{trio.current_time()}.sock")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(sock_path)
    agent = AgentProcess(config, env={"NOTIFY_SOCKET": sock_path})
    t0 = trio.current_time()
    await agent.start(nursery)
    with sock, trio.fail_after(30):
        while b"READY=1" not in await sock.recv(4096):
            pass
    elapsed = trio.current_time() - t0
    await agent.stop()
    return elapsed


async def main(runs: int, idle: float) -> None:
    with tempfile.TemporaryDirectory(prefix="glimpse-bench-") as tmpdir:
        tmp = Path(tmpdir)
        async with devserver_process(tmp / "db.sqlite") as server, \
                trio.open_nursery() as nursery:
            _o, owner_token = await register(server.api_url, "owner", "owner-password")
            _d, device_token = await register(server.api_url, "device", "device-password")
            room = await create_room(server.api_url, owner_token, "Bench")
            config = write_config(tmp / "agent", ws_url=server.ws_url, room_id=room,
                                  token=device_token, log_level="info", extra=QUIET_MEDIA,
                                  server={"reconnect_min": 0.2, "reconnect_max": 1.0})

            ready = [await ready_time(config, nursery, tmp) for _ in range(runs)]

            agent = AgentProcess(config)
            await agent.start(nursery)
            await agent.wait_for("room.joined", timeout=30)
            proc = psutil.Process(agent.pid)
            await trio.sleep(3)  # settle: imports done, first allocations made
            cpu0, t0 = agent.cpu_seconds(), trio.current_time()
            await trio.sleep(idle)
            idle_cpu = (agent.cpu_seconds() - cpu0) / (trio.current_time() - t0)
            rss = proc.memory_info().rss / 2**20

            rejoin = []
            for _ in range(runs):
                mark = len(agent.events)
                await server.kill()
                await agent.wait_for("signaling.reconnecting", since=mark, timeout=30)
                await server.start()
                t_up = trio.current_time()
                joined = await agent.wait_for("room.joined", since=mark, timeout=60)
                rejoin.append(joined["_t"] - t_up)
            await agent.stop()
            nursery.cancel_scope.cancel()

    def row(name: str, values: list[float], unit: str) -> str:
        return (f"| {name:<38} | {statistics.median(values):>8.3f} | {min(values):>8.3f} | "
                f"{max(values):>8.3f} | {unit:<4} |")

    print(f"\nglimpse-edge foundation figures ({runs} runs; loopback; "
          f"{psutil.cpu_count()} cores)\n")
    print("| measure                                |   median |      min |      max | unit |")
    print("|----------------------------------------|----------|----------|----------|------|")
    print(row("start to READY=1", ready, "s"))
    print(row("server back to room re-joined", rejoin, "s"))
    print(row(f"idle CPU, no peers ({idle:.0f} s window)", [idle_cpu * 100], "%"))
    print(row("RSS, joined, no peers", [rss], "MiB"))
    print("\nRe-join includes the back-off wait (server.reconnect_max = 1 s here; "
          "30 s by default).")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args()
    trio.run(main, args.runs, args.idle)
