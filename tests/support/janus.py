"""A real SFU for the WHIP tests: Janus (VideoRoom) behind simple-whip-server.

Both are Debian packages (``janus``, ``simple-whip-server``; scripts/setup-env.sh
installs them). :class:`JanusSfu` writes its own Janus configuration into a
temporary directory (``janus -F DIR``: nothing under /etc is read or
touched), on free loopback ports, with only the VideoRoom plugin and the
HTTP and WebSocket transports; copies simple-whip-server's two source
files next to a ``config.js`` of its own pointing at that Janus; starts
both; and creates a WHIP endpoint through simple-whip-server's REST API
(``POST /whip/create``), which publishes into VideoRoom room
:data:`ROOM`.

Where Debian's simple-whip-server cannot be installed (its ``nodejs``
dependency conflicts with another Node.js, e.g. NodeSource's), the package's
files unpacked elsewhere work the same with that Node.js: set
``GLIMPSE_SWHIP_ROOT`` to the directory they were unpacked in (``dpkg -x``
of the package and its ``node-*`` dependencies), see scripts/setup-env.sh.

:class:`JanusSubscriber` joins the room as a VideoRoom subscriber through
Janus's own HTTP API (long-polled events) with an aiortc peer connection,
and counts the frames it decodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOM = 1234
JANUS_BIN = "/usr/bin/janus"
_LIB = Path("/usr/lib") / f"{os.uname().machine}-linux-gnu" / "janus"
if not _LIB.is_dir():
    _LIB = Path("/usr/lib/janus")


def swhip_root() -> Path | None:
    """Where simple-whip-server's files are: / (installed) or GLIMPSE_SWHIP_ROOT."""
    for root in (os.environ.get("GLIMPSE_SWHIP_ROOT"), "/", "/opt/swhip"):
        if root and (Path(root) / "usr/share/simple-whip-server/src/server.js").is_file():
            return Path(root)
    return None


def unavailable() -> str | None:
    """Why the SFU cannot run here (None: it can)."""
    if not Path(JANUS_BIN).exists():
        return "janus is not installed (apt-get install janus)"
    if not (_LIB / "plugins" / "libjanus_videoroom.so").exists():
        return f"janus's VideoRoom plugin is missing ({_LIB})"
    if swhip_root() is None:
        return "simple-whip-server is not installed (apt-get install simple-whip-server)"
    if shutil.which("node") is None and shutil.which("nodejs") is None:
        return "node is not installed"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def _plugins_to_disable(kind: str, keep: set[str]) -> str:
    names = sorted(p.name for p in (_LIB / kind).glob("libjanus_*.so"))
    return ",".join(n for n in names if n not in keep)


class JanusSfu:
    """Janus + simple-whip-server on free loopback ports, in ``workdir``."""

    def __init__(self, workdir: Path, *, token: str | None = "whip-secret",
                 room_bitrate: int = 3_000_000) -> None:
        self.workdir = workdir
        self.token = token
        self.room_bitrate = room_bitrate
        self.http_port = free_port()
        self.ws_port = free_port()
        self.whip_port = free_port()
        self.janus: subprocess.Popen[bytes] | None = None
        self.whip: subprocess.Popen[bytes] | None = None
        self.endpoint_id = "glimpse"
        self.janus_log = workdir / "janus.log"
        self.whip_log = workdir / "whip.log"

    @property
    def janus_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/janus"

    @property
    def whip_base(self) -> str:
        return f"http://127.0.0.1:{self.whip_port}/whip"

    @property
    def endpoint_url(self) -> str:
        return f"{self.whip_base}/endpoint/{self.endpoint_id}"

    # -- configuration ------------------------------------------------------------

    def _write_janus_config(self) -> Path:
        conf = self.workdir / "janus-conf"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "janus.jcfg").write_text(f"""
general: {{
    configs_folder = "{conf}"
    plugins_folder = "{_LIB / 'plugins'}"
    transports_folder = "{_LIB / 'transports'}"
    events_folder = "{_LIB / 'events'}"
    loggers_folder = "{_LIB / 'loggers'}"
    debug_level = 4
    session_timeout = 60
}}
media: {{
    rtp_port_range = "40000-60000"
    dtls_timeout = 500
}}
nat: {{
    nice_debug = false
    full_trickle = false
    ice_ignore_list = "vmnet"
}}
plugins: {{
    disable = "{_plugins_to_disable('plugins', {'libjanus_videoroom.so'})}"
}}
transports: {{
    disable = "{_plugins_to_disable('transports',
                                    {'libjanus_http.so', 'libjanus_websockets.so'})}"
}}
loggers: {{
    disable = "{_plugins_to_disable('loggers', set())}"
}}
events: {{
    broadcast = false
    disable = "{_plugins_to_disable('events', set())}"
}}
""")
        (conf / "janus.transport.http.jcfg").write_text(f"""
general: {{
    json = "compact"
    base_path = "/janus"
    http = true
    port = {self.http_port}
    ip = "127.0.0.1"
    https = false
}}
admin: {{
    admin_http = false
}}
""")
        (conf / "janus.transport.websockets.jcfg").write_text(f"""
general: {{
    json = "compact"
    ws = true
    ws_port = {self.ws_port}
    ws_ip = "127.0.0.1"
    wss = false
}}
admin: {{
    admin_ws = false
}}
""")
        (conf / "janus.plugin.videoroom.jcfg").write_text(f"""
general: {{
}}
room-{ROOM}: {{
    description = "glimpse-edge WHIP tests"
    publishers = 6
    bitrate = {self.room_bitrate}
    fir_freq = 2
    audiocodec = "opus"
    videocodec = "h264,vp8"
    record = false
}}
""")
        return conf

    def _write_whip_app(self) -> Path:
        root = swhip_root()
        assert root is not None
        app = self.workdir / "swhip"
        src = app / "src"
        src.mkdir(parents=True, exist_ok=True)
        share = root / "usr/share/simple-whip-server"
        for name in ("server.js", "whip-janus.js"):
            shutil.copy(share / "src" / name, src / name)
        if not (app / "web").exists():
            (app / "web").symlink_to(share / "web")
        (src / "config.js").write_text(f"""module.exports = {{
    janus: {{ address: 'ws://127.0.0.1:{self.ws_port}' }},
    port: {self.whip_port},
    rest: '/whip',
    allowTrickle: true,
    strictETags: false,
    iceServers: []
}};
""")
        return app

    # -- processes ----------------------------------------------------------------

    def start(self) -> None:
        self.start_janus()
        self.start_whip()
        self.create_endpoint()

    def start_janus(self) -> None:
        conf = self._write_janus_config()
        log = self.janus_log.open("ab")
        self.janus = subprocess.Popen(
            [JANUS_BIN, "-F", str(conf), "-C", str(conf / "janus.jcfg"), "-N"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        _wait_port(self.http_port, 15, self.janus, "janus")
        _wait_port(self.ws_port, 15, self.janus, "janus")

    def start_whip(self) -> None:
        app = self._write_whip_app()
        root = swhip_root()
        assert root is not None
        node = shutil.which("node") or shutil.which("nodejs")
        assert node is not None
        env = {**os.environ, "NODE_ENV": "production",
               # whip:debug names each request's route (the tests count DELETEs)
               "DEBUG": "whip:*,janus:*,-janus:debug,-janus:vdebug",
               "NODE_PATH": ":".join(str(root / p) for p in
                                     ("usr/share/nodejs", "usr/lib/nodejs",
                                      f"usr/lib/{os.uname().machine}-linux-gnu/nodejs"))}
        log = self.whip_log.open("ab")
        self.whip = subprocess.Popen([node, "src/server.js"], cwd=app, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        _wait_port(self.whip_port, 15, self.whip, "simple-whip-server")
        # it connects to Janus after listening: wait until it says so
        deadline = time.monotonic() + 10
        while b"Connected to Janus" not in self.whip_log.read_bytes():
            if time.monotonic() > deadline:
                raise RuntimeError("simple-whip-server did not connect to Janus:\n"
                                   + self.whip_log.read_text(errors="replace")[-2000:])
            time.sleep(0.05)

    def create_endpoint(self) -> None:
        body: dict[str, Any] = {"id": self.endpoint_id, "room": ROOM, "label": "glimpse-edge"}
        if self.token:
            body["token"] = self.token
        r = httpx.post(f"{self.whip_base}/create", json=body, timeout=5)
        if r.status_code != 200 and "already" not in r.text:
            raise RuntimeError(f"creating the WHIP endpoint: {r.status_code} {r.text}")

    def stop_janus(self) -> None:
        _stop(self.janus)
        self.janus = None

    def restart_janus(self) -> None:
        self.stop_janus()
        self.start_janus()

    def stop(self) -> None:
        _stop(self.whip)
        _stop(self.janus)
        self.whip = self.janus = None

    def whip_log_text(self) -> str:
        return self.whip_log.read_text(errors="replace") if self.whip_log.exists() else ""

    def deletes(self) -> int:
        """DELETEs of the session resource that simple-whip-server served (its
        ``whip:debug /resource/: ID`` line: the DELETE route's alone)."""
        return len(re.findall(r"whip:debug /resource/: " + re.escape(self.endpoint_id),
                              self.whip_log_text()))

    def publishers(self) -> list[dict[str, Any]]:
        """The VideoRoom's publishers, through Janus's own API (a throwaway session)."""
        with JanusApi(self.janus_url) as api:
            data = api.message({"request": "listparticipants", "room": ROOM})
        return [p for p in data.get("participants", []) if p.get("publisher")]

    def __enter__(self) -> JanusSfu:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class JanusApi:
    """Janus's HTTP API: one session, one VideoRoom handle (synchronous, for tests)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(timeout=10)
        self.session = self._call(url, {"janus": "create"})["data"]["id"]
        self.handle = self._call(f"{url}/{self.session}", {
            "janus": "attach", "plugin": "janus.plugin.videoroom"})["data"]["id"]

    def _call(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "transaction": uuid.uuid4().hex}
        r = self.client.post(url, json=body)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        if data.get("janus") == "error":
            raise RuntimeError(f"janus: {data}")
        return data

    def message(self, body: dict[str, Any], jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        """A synchronous plugin request: its plugindata.data (or the ack, for async ones)."""
        msg: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            msg["jsep"] = jsep
        data = self._call(f"{self.url}/{self.session}/{self.handle}", msg)
        plugin = data.get("plugindata", {}).get("data")
        return plugin if plugin is not None else data

    def trickle_done(self) -> None:
        self._call(f"{self.url}/{self.session}/{self.handle}",
                   {"janus": "trickle", "candidate": {"completed": True}})

    def events(self, timeout: float) -> Iterator[dict[str, Any]]:
        """Events for the session (long poll), until ``timeout`` runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.client.get(f"{self.url}/{self.session}", params={"maxev": 5},
                                timeout=35)
            data = r.json()
            for event in data if isinstance(data, list) else [data]:
                if event.get("janus") != "keepalive":
                    yield event

    def keepalive(self) -> None:
        self._call(f"{self.url}/{self.session}", {"janus": "keepalive"})

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(f"{self.url}/{self.session}", {"janus": "destroy"})
        self.client.close()

    def __enter__(self) -> JanusApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subscriber_offer(api: JanusApi, feed: int, timeout: float = 10) -> str:
    """Join ``feed`` as a subscriber; Janus's offer (from the join's event)."""
    api.message({"request": "join", "ptype": "subscriber", "room": ROOM,
                 "streams": [{"feed": feed}]})
    for event in api.events(timeout):
        jsep = event.get("jsep")
        if jsep is not None and jsep.get("type") == "offer":
            return str(jsep["sdp"])
    raise TimeoutError("no offer from Janus for the subscriber")


async def subscribe_and_count(janus_url: str, feed: int, seconds: float,
                              until_frames: int | None = None) -> dict[str, int]:
    """Subscribe to ``feed`` with aiortc (asyncio) and count decoded frames by kind.

    Runs Janus's blocking HTTP calls in a thread. Returns {"video": n, "audio": m,
    "first_video_ms": t} (t: from the offer to the first decoded video frame).
    """
    from aiortc import RTCPeerConnection, RTCSessionDescription

    loop = asyncio.get_running_loop()
    api = await loop.run_in_executor(None, JanusApi, janus_url)
    counts = {"video": 0, "audio": 0, "first_video_ms": -1}
    pc = RTCPeerConnection()
    started = time.monotonic()
    done = asyncio.Event()

    async def drain(track: Any) -> None:
        while True:
            try:
                await track.recv()
            except Exception:
                return
            counts[track.kind] += 1
            if track.kind == "video" and counts["first_video_ms"] < 0:
                counts["first_video_ms"] = int((time.monotonic() - started) * 1000)
            if until_frames is not None and counts["video"] >= until_frames and (
                    counts["audio"] >= 1):
                done.set()

    tasks: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(drain(track))))
    try:
        offer = await loop.run_in_executor(None, subscriber_offer, api, feed)
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        await loop.run_in_executor(None, lambda: api.message(
            {"request": "start", "room": ROOM},
            {"type": "answer", "sdp": pc.localDescription.sdp}))
        with contextlib.suppress(Exception):
            await loop.run_in_executor(None, api.trickle_done)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), seconds)
    finally:
        await pc.close()
        for task in tasks:
            task.cancel()
        await loop.run_in_executor(None, api.close)
    return counts


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1)[:2000]
