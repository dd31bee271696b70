"""What publishing to an SFU costs the device as the audience grows (issue 17).

Starts Janus + simple-whip-server (tests/support/janus.py) and the agent as a
pure publisher (640x360 H.264 at up to 800 kbit/s and a tone), then for each
audience size N subscribes N aiortc receivers through Janus's VideoRoom (in
a separate process, decoding) and measures over a window: the agent's CPU
(user + system seconds per second), what it sends (its /status ``publish``
rate), Janus's CPU, and the frames the subscribers decoded. Also the time
from the agent's start to the first frame a Janus subscriber decodes.

    .venv/bin/python scripts/bench_publish.py [--sizes 1,4,16] [--window 10]
    .venv/bin/python scripts/bench_publish.py --mesh 1,4    # the mesh to compare with

``--mesh``: the same media to N direct aiortc viewers in a dev-server room
instead (scripts/bench_media.py's part (a) run, shared encoding, its
receivers niced in a child process), for the agent's CPU against N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "tests"))

import janus  # noqa: E402

CONFIG = """[publish]
whip_url = "{url}"
token_file = "{token}"
reconnect_min = 0.2
reconnect_max = 1.5

[ice]
servers = []

[observe]
listen = "{observe}"

[log]
level = "info"
format = "json"

[video]
source = "testpattern"
width = 640
height = 360
framerate = 30
codec = "h264"
max_bitrate = 800000

[audio]
source = "tone"
"""


def _subscribers(janus_url: str, feed: int, n: int, seconds: float,
                 out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def main() -> list[dict[str, int]]:
        return list(await asyncio.gather(*(
            janus.subscribe_and_count(janus_url, feed, seconds) for _ in range(n))))

    out.put(asyncio.run(main()))


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def publish_rate(observe: str) -> int | None:
    status = httpx.get(f"http://{observe}/status", timeout=3, trust_env=False).json()
    return (status.get("publish") or {}).get("bitrate_bps")


def mesh(sizes: list[int], window: float) -> None:
    """The agent's CPU for N mesh viewers, the same media as the WHIP runs."""
    import trio

    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_media as bm

    original = bm.media_config

    def same_media(mode: str, width: int, height: int, source: str = "testpattern") -> str:
        return original(mode, 640, 360, source).replace(
            'codec = "h264"', 'codec = "h264"\nmax_bitrate = 800000')

    bm.media_config = same_media
    plan = bm.Plan(peers=tuple(sizes), window=window, first_frame_runs=0, g2g_window=0.0)

    async def run() -> None:
        async with bm.run_devserver() as server:
            print("\n| mesh viewers | agent CPU (s/s) | viewers' fps (min..max) |")
            print("|---|---|---|")
            for n in sizes:
                row = await bm.cpu_run(server, "shared", n, plan, bm.RECEIVER_NICE)
                print(f"| {n} | {row.cpu:.3f} | {min(row.fps):.1f}..{max(row.fps):.1f} |",
                      flush=True)

    trio.run(run)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,4,16")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--mesh", default="", help="N,N,...: direct viewers instead")
    args = parser.parse_args()
    if args.mesh:
        mesh([int(s) for s in args.mesh.split(",")], args.window)
        return
    why = janus.unavailable()
    if why:
        sys.exit(f"cannot run: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sfu = janus.JanusSfu(work)
        sfu.start()
        try:
            token = work / "whip-token"
            token.write_text(sfu.token or "")
            token.chmod(0o600)
            observe = f"127.0.0.1:{janus.free_port()}"
            config = work / "config.toml"
            config.write_text(CONFIG.format(url=sfu.endpoint_url, token=token, observe=observe))
            t0 = time.monotonic()
            agent = subprocess.Popen([sys.executable, "-m", "glimpse_edge", "run", "--config",
                                      str(config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            try:
                while not sfu.publishers():
                    time.sleep(0.05)
                feed = int(sfu.publishers()[0]["id"])
                first = asyncio.run(janus.subscribe_and_count(sfu.janus_url, feed, 10, 1))
                to_first = time.monotonic() - t0
                print(f"agent start -> first frame decoded by a Janus subscriber: "
                      f"{to_first:.2f} s (the subscription itself: "
                      f"{first['first_video_ms']} ms of it)")
                aproc, jproc = psutil.Process(agent.pid), psutil.Process(sfu.janus.pid)
                rows = []
                for n in [int(s) for s in args.sizes.split(",")]:
                    out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
                    subs = multiprocessing.Process(target=_subscribers, args=(
                        sfu.janus_url, feed, n, args.window + 6, out))
                    subs.start()
                    time.sleep(5)  # subscriptions set up, first key frames
                    a0, j0, w0 = cpu(aproc), cpu(jproc), time.monotonic()
                    time.sleep(args.window)
                    wall = time.monotonic() - w0
                    rate = publish_rate(observe)
                    row = {"subscribers": n,
                           "agent_cpu": round((cpu(aproc) - a0) / wall, 3),
                           "janus_cpu": round((cpu(jproc) - j0) / wall, 3),
                           "agent_sends_kbps": None if rate is None else round(rate / 1000)}
                    counts = out.get(timeout=60)
                    subs.join(10)
                    row["frames_decoded_per_subscriber_min"] = min(c["video"] for c in counts)
                    rows.append(row)
                    print(json.dumps(row))
                print("\n| subscribers | agent CPU (s/s) | agent sends (kbit/s) | Janus CPU (s/s) |"
                      " video frames per subscriber (min) |")
                print("|---|---|---|---|---|")
                for r in rows:
                    print(f"| {r['subscribers']} | {r['agent_cpu']} | {r['agent_sends_kbps']} |"
                          f" {r['janus_cpu']} | {r['frames_decoded_per_subscriber_min']} |")
            finally:
                agent.terminate()
                agent.wait(15)
        finally:
            sfu.stop()


if __name__ == "__main__":
    main()
