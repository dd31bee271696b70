"""What publishing to an SFU costs the device as the audience grows (issue 17).

Starts Janus + simple-whip-server (tests/support/janus.py) and the agent as a
pure publisher (640x360 H.264 at up to 800 kbit/s and a tone), then for each
audience size N subscribes N aiortc receivers through Janus's VideoRoom (in
a separate process, decoding) and measures over a window: the agent's CPU
(user + system seconds per second), its upload, Janus's CPU, and the frames
the subscribers decoded. Also the time from the agent's start to the first
frame a Janus subscriber decodes.

    .venv/bin/python scripts/bench_publish.py [--sizes 1,4,16] [--window 10]
    .venv/bin/python scripts/bench_publish.py --mesh 1,4    # the mesh to compare with

``--mesh``: the same media to N direct aiortc viewers in a dev-server room
instead (scripts/bench_media.py's part (a) run, shared encoding, its
receivers niced in a child process), for the agent's CPU and upload against N.

The agent's upload ("agent upload kbit/s (measured)") is read from its
/metrics in both, each the way the agent exposes it:

- mesh: ``glimpse_edge_peer_sent_bytes_total`` (RTP payload bytes, aiortc's
  count, per peer and kind) summed over every peer and kind, scraped just
  before and just after the CPU window: the difference over the time between
  the two scrapes.
- Janus: the publisher has no byte counter in /metrics, only
  ``glimpse_edge_publish_sent_bps`` (the encoded video and audio handed to
  the WHIP session's senders over the last 5 s, i.e. payload before RTP
  packetization); it is scraped every 5 s (the span it averages over) through
  the window and the samples averaged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


PEER_SENT = re.compile(r"^glimpse_edge_peer_sent_bytes_total\{[^}]*\} (\S+)$", re.M)
# glimpse_edge_publish_sent_bps averages over this long (publish/publisher.py's RATE_WINDOW)
RATE_SPAN = 5.0
PUBLISH_SENT = re.compile(r"^glimpse_edge_publish_sent_bps (\S+)$", re.M)


def peer_sent_bytes(metrics: str) -> float:
    """RTP payload bytes sent to all peers (every peer, every kind) in one scrape."""
    return sum(float(v) for v in PEER_SENT.findall(metrics))


def publish_sent_bps(observe: str) -> float | None:
    text = httpx.get(f"http://{observe}/metrics", timeout=3, trust_env=False).text
    match = PUBLISH_SENT.search(text)
    return float(match.group(1)) if match else None


def mesh(sizes: list[int], window: float) -> None:
    """The agent's CPU and upload for N mesh viewers, the same media as the WHIP runs.

    bench_media's part (a) run (its agent, room, niced receivers and window),
    with the agent's observe endpoint on so that /metrics can be scraped
    around the window.
    """
    import trio

    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_media as bm

    original_media, original_config = bm.media_config, bm.write_config

    def same_media(mode: str, width: int, height: int, source: str = "testpattern") -> str:
        return original_media(mode, 640, 360, source).replace(
            'codec = "h264"', 'codec = "h264"\nmax_bitrate = 800000')

    def observed_config(directory: Path, **kwargs: Any) -> Path:
        path = original_config(directory, **kwargs)
        text = path.read_text()
        assert '[observe]\nlisten = ""' in text
        path.write_text(text.replace('[observe]\nlisten = ""',
                                     '[observe]\nlisten = "127.0.0.1:0"'))
        return path

    bm.media_config = same_media
    bm.write_config = observed_config

    async def scrape(http: httpx.AsyncClient, url: str) -> tuple[float, float]:
        """(RTP payload bytes sent to all peers, when: the middle of the request)."""
        before = time.monotonic()
        text = (await http.get(url, timeout=10)).text
        return peer_sent_bytes(text), (before + time.monotonic()) / 2

    async def mesh_run(server: Any, n: int) -> dict[str, Any]:
        await bm.wait_for_quiet(f"mesh N={n}")
        with bm.workdir() as directory:
            async with trio.open_nursery() as nursery, \
                    httpx.AsyncClient(trust_env=False) as http:
                agent, room_id, device_id = await bm.start_agent(
                    server, nursery, directory, "shared", 640, 360)
                listening = await agent.wait_for("observe.listening", timeout=20)
                url = f"http://127.0.0.1:{listening['port']}/metrics"
                tokens = [(await bm.new_user(server, "rx"))[1] for _ in range(n)]
                rx = bm.Receivers()
                await rx.start(nursery, {"ws_url": server.ws_url, "room_id": room_id,
                                         "device_id": device_id, "tokens": tokens,
                                         "nice": bm.RECEIVER_NICE, "read_codes": False})
                all_decoding = await rx.wait(
                    lambda r: len(r.video) == n and min(r.video) >= bm.DECODING_FRAMES,
                    bm.JOIN_TIMEOUT)
                await trio.sleep(bm.SETTLE)
                mark = len(agent.events)
                # the scrapes (getStats of every peer) are outside the CPU window
                b0, s0 = await scrape(http, url)
                c0, v0, t0 = agent.cpu_seconds(), list(rx.video), time.monotonic()
                await trio.sleep(window)
                c1, v1, t1 = agent.cpu_seconds(), list(rx.video), time.monotonic()
                b1, s1 = await scrape(http, url)
                restarts = len(agent.find("peer.restarting", since=mark))
                await rx.stop()
                await agent.stop()
                nursery.cancel_scope.cancel()
        dt = t1 - t0
        upload = (b1 - b0) * 8 / (s1 - s0) / 1000
        return {"viewers": n, "agent_cpu": round((c1 - c0) / dt, 3),
                "agent_upload_kbps": round(upload), "per_viewer_kbps": round(upload / n),
                "fps": [round((b - a) / dt, 1) for a, b in zip(v0, v1, strict=True)],
                "restarts": restarts, "all_decoding": all_decoding}

    async def run() -> None:
        rows = []
        async with bm.run_devserver() as server:
            for n in sizes:
                row = await mesh_run(server, n)
                rows.append(row)
                print(json.dumps(row), flush=True)
        print("\n| mesh viewers | agent CPU (s/s) | agent upload kbit/s (measured) |"
              " per viewer (kbit/s) | viewers' fps (min..max) |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['viewers']} | {r['agent_cpu']:.3f} | {r['agent_upload_kbps']} |"
                  f" {r['per_viewer_kbps']} | {min(r['fps']):.1f}..{max(r['fps']):.1f} |")

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
                    # glimpse_edge_publish_sent_bps every ~RATE_SPAN s: the samples tile the window
                    rates = []
                    steps = max(1, round(args.window / RATE_SPAN))
                    for k in range(1, steps + 1):
                        time.sleep(max(0.0, w0 + k * args.window / steps - time.monotonic()))
                        rate = publish_sent_bps(observe)
                        if rate is not None:
                            rates.append(rate)
                    time.sleep(max(0.0, w0 + args.window - time.monotonic()))
                    wall = time.monotonic() - w0
                    row = {"subscribers": n,
                           "agent_cpu": round((cpu(aproc) - a0) / wall, 3),
                           "janus_cpu": round((cpu(jproc) - j0) / wall, 3),
                           "agent_upload_kbps": (round(sum(rates) / len(rates) / 1000)
                                                 if rates else None),
                           "upload_samples": len(rates)}
                    counts = out.get(timeout=60)
                    subs.join(10)
                    row["frames_decoded_per_subscriber_min"] = min(c["video"] for c in counts)
                    rows.append(row)
                    print(json.dumps(row))
                print("\n| subscribers | agent CPU (s/s) | agent upload kbit/s (measured) |"
                      " Janus CPU (s/s) | video frames per subscriber (min) |")
                print("|---|---|---|---|---|")
                for r in rows:
                    print(f"| {r['subscribers']} | {r['agent_cpu']} | {r['agent_upload_kbps']} |"
                          f" {r['janus_cpu']} | {r['frames_decoded_per_subscriber_min']} |")
            finally:
                agent.terminate()
                agent.wait(15)
        finally:
            sfu.stop()


if __name__ == "__main__":
    main()
