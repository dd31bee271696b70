"""Fault scenarios over real network namespaces, shared by tests/system/faults and the benchmark.

A :func:`fault_lab` is a room with the agent and two receiving peers, each
in its own namespace on one bridge (:mod:`support.netns`), the dev server as
a process in the root namespace (so it can be killed and brought back), and
optionally coturn in a namespace of its own. The scenario functions inject
one fault each and return an :class:`Outcome` measured from what the
receiving peers decoded (frame codes and their receive times, transport
bytes) plus the agent's log for the moment it noticed.

The uplink scenarios (issue 15: :func:`uplink_cap`, :func:`uplink_and_downlink_cap`)
run the agent at 1280x720 with its default quality tiers (:func:`media_section`)
and any number of viewers, and cap the agent's own egress
(:meth:`FaultNet.cap_uplink`); they also read the agent's /status over its
namespace's loopback (``observe=True``) for key frames and key-frame requests.

Times are wall-clock seconds (``time.time()``): the peers stamp decoded
frames with the wall clock of the same machine, so a fault's start and end
compare with them directly.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import trio

from .agent import AgentProcess, write_config, write_secret
from .devserver import DevServerProcess
from .glimpse_client import create_room, register, sole_exception
from .netns import FaultNet, fault_net
from .peerproc import PeerProcess, RemoteView

WIDTH, HEIGHT, FPS = 640, 360, 30
MAX_BITRATE = 800_000
# The automatic lower tier (half the size, a quarter of the rate): see VideoConfig.
LOW_WIDTH, LOW_HEIGHT = WIDTH // 2, HEIGHT // 2
MEDIA = f"""
[video]
source = "testpattern"
width = {WIDTH}
height = {HEIGHT}
framerate = {FPS}
codec = "h264"
max_bitrate = {MAX_BITRATE}
min_bitrate = 100000
pattern_noise = {{noise}}

[audio]
source = "tone"
"""
TURN_USER, TURN_REALM = "edge", "glimpse.test"

# The uplink scenarios (f, g, h): the agent's shipped picture size and quality
# tiers (no max_bitrate, no tiers: the defaults), grain on the test pattern.
TOP_WIDTH, TOP_HEIGHT = 1280, 720
UPLINK_NOISE = 4
# Where the agent's observe endpoint listens inside its own namespace: the tests
# read /status over the namespace's loopback, so it never crosses a capped link.
OBSERVE_LISTEN = "127.0.0.1:9750"


def media_section(width: int = TOP_WIDTH, height: int = TOP_HEIGHT, framerate: int = FPS,
                  codec: str = "h264", noise: int = UPLINK_NOISE) -> str:
    """A [video]/[audio] section setting only size, rate, codec and grain.

    max_bitrate, min_bitrate and tiers stay the agent's defaults, so the
    scenario runs the quality tiers a user gets out of the box.
    """
    return (f'\n[video]\nsource = "testpattern"\nwidth = {width}\nheight = {height}\n'
            f'framerate = {framerate}\ncodec = "{codec}"\npattern_noise = {noise}\n\n'
            '[audio]\nsource = "tone"\n')


@dataclass
class Turn:
    """A coturn server in the lab (listening and relaying on one address)."""

    address: str
    port: int
    password: str
    process: trio.Process
    log_path: Path

    @property
    def url(self) -> str:
        return f"turn:{self.address}:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Lab:
    net: FaultNet
    server: DevServerProcess
    agent: AgentProcess
    peers: dict[str, PeerProcess]
    device_id: str
    room_id: str
    turn: Turn | None = None
    peer_ids: dict[str, str] = field(default_factory=dict)
    observe: bool = False

    def view(self, peer: str) -> RemoteView:
        """What ``peer`` received from the agent."""
        return self.peers[peer].remote(self.device_id)

    async def status(self) -> dict[str, Any] | None:
        """The agent's /status JSON (read inside its namespace), or None when unavailable.

        None when the lab was made without ``observe=True``, or the endpoint
        did not answer within a few seconds: callers report what is missing
        rather than fail on it.
        """
        if not self.observe:
            return None
        result = await trio.run_process(
            [*self.net.exec_prefix("agent"), "curl", "-s", "--max-time", "5",
             f"http://{OBSERVE_LISTEN}/status"],
            capture_stdout=True, capture_stderr=True, check=False)
        if result.returncode != 0:
            return None
        try:
            doc = json.loads(result.stdout)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None


@dataclass
class Outcome:
    """One scenario's numbers (seconds; bits per second)."""

    scenario: str
    detect_s: float | None = None  # fault start -> the agent noticed (its log)
    recover_s: float | None = None  # fault end -> the affected peer decoded again
    frames: int = 0  # decoded by the affected peer from fault start to end + after window
    longest_freeze_s: float = 0.0  # affected peer, fault start .. end of the after window
    other_freeze_s: float | None = None  # the unaffected peer, same window
    bitrate_before: float | None = None
    bitrate_during: float | None = None
    bitrate_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _turn_command(net: FaultNet, host: str, directory: Path, password: str) -> list[str]:
    address = net.address(host)
    return [*net.exec_prefix(host), "turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls",
            f"--listening-ip={address}", f"--relay-ip={address}", "--listening-port=3478",
            "--min-port=49160", "--max-port=49460", "--lt-cred-mech",
            f"--user={TURN_USER}:{password}", f"--realm={TURN_REALM}", "--fingerprint",
            f"--userdb={directory / 'turndb'}", f"--pidfile={directory / 'turnserver.pid'}",
            "--log-file=stdout", "--simple-log", "--no-software-attribute", "--verbose"]


async def _start_turn(nursery: trio.Nursery, net: FaultNet, host: str,
                      directory: Path) -> Turn:
    password = secrets.token_hex(8)
    log_path = directory / "turnserver.log"
    process = await trio.lowlevel.open_process(
        _turn_command(net, host, directory, password), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    turn = Turn(net.address(host), 3478, password, process, log_path)
    listening = trio.Event()

    async def pump() -> None:
        # coturn logs this line once its sockets are bound
        assert process.stdout is not None
        with log_path.open("ab") as log_file:
            async for chunk in process.stdout:
                log_file.write(chunk)
                log_file.flush()
                if b"Total General servers" in chunk or b"Total auth threads" in chunk:
                    listening.set()
        listening.set()

    nursery.start_soon(pump)
    with trio.move_on_after(10):
        await listening.wait()
    if process.returncode is not None or not listening.is_set():
        process.kill()
        raise RuntimeError(f"turnserver did not start: {turn.output()[-2000:]}")
    return turn


@asynccontextmanager
async def fault_lab(
    directory: Path, *, peers: tuple[str, ...] = ("p1", "p2"), peers_config: str = "",
    relay_only: bool = False, peer_args: dict[str, list[str]] | None = None, noise: int = 0,
    media: str | None = None, observe: bool = False,
) -> AsyncIterator[Lab]:
    """The whole set-up, torn down (processes, namespaces) however the block ends.

    ``peers``: the receiving peers' names, any number (each one a process in
    its own namespace). ``noise``: grain on the test pattern
    (video.pattern_noise), so that the encoders spend their whole bitrate as
    with a camera (the plain pattern needs a third of it, too little to fill
    a capped link). ``media``: the [video]/[audio] sections to use instead of
    the 640x360 ones (``noise`` is then ignored; see :func:`media_section`).
    ``observe``: turn on the agent's observe endpoint on its namespace's
    loopback (:meth:`Lab.status`).
    """
    hosts = ["agent", *peers] + (["turn"] if relay_only else [])
    try:
        async with fault_net(hosts) as net, trio.open_nursery() as nursery:
            server = DevServerProcess(nursery, directory / "glimpse.db", host=net.root_address)
            turn: Turn | None = None
            agent: AgentProcess | None = None
            procs: dict[str, PeerProcess] = {}
            try:
                await server.start()
                api = server.api_url
                tokens = {name: (await register(api, name, f"{name}-password"))[1]
                          for name in peers}
                device_id, device_token = await register(api, "device", "device-password")
                _owner, owner_token = await register(api, "owner", "owner-password")
                room_id = await create_room(api, owner_token, "Faults")
                ice = "[ice]\nservers = []\n"
                if relay_only:
                    (directory / "turn").mkdir(parents=True, exist_ok=True)
                    turn = await _start_turn(nursery, net, "turn", directory / "turn")
                    cred = write_secret(directory / "turn-credential", turn.password)
                    ice = ("[ice]\nrelay_only = true\n\n[[ice.servers]]\n"
                           f'urls = ["{turn.url}"]\nusername = "{TURN_USER}"\n'
                           f'credential_file = "{cred}"\n')
                agent_dir = directory / "agent"
                config = write_config(agent_dir, ws_url=server.ws_url, room_id=room_id,
                                      token=device_token, log_level="info",
                                      extra=(media if media is not None
                                             else MEDIA.format(noise=noise)) + peers_config,
                                      ice=ice)
                if observe:
                    text = config.read_text()
                    config.write_text(text.replace('[observe]\nlisten = ""',
                                                   f'[observe]\nlisten = "{OBSERVE_LISTEN}"'))
                agent = AgentProcess(config, command_prefix=net.exec_prefix("agent"))
                await agent.start(nursery)
                await agent.wait_for("room.joined", timeout=30)
                lab = Lab(net, server, agent, procs, device_id, room_id, turn,
                          observe=observe)
                for name in peers:
                    proc = PeerProcess(name, ws_url=server.ws_url, token=tokens[name],
                                       room_id=room_id, command_prefix=net.exec_prefix(name),
                                       log_dir=directory,
                                       extra_args=(peer_args or {}).get(name, []))
                    procs[name] = proc
                    await proc.start(nursery)
                for name, proc in procs.items():
                    lab.peer_ids[name] = await proc.wait_joined()
                for proc in procs.values():
                    await proc.wait_frames(device_id, video=30, timeout=40)
                yield lab
            finally:
                with trio.CancelScope(shield=True):
                    for proc in procs.values():
                        await proc.stop()
                    if agent is not None:
                        await agent.stop()
                    if turn is not None and turn.process.returncode is None:
                        turn.process.terminate()
                        with trio.move_on_after(3):
                            await turn.process.wait()
                        if turn.process.returncode is None:
                            turn.process.kill()
                    await server.kill()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise sole_exception(group) from None


# -- scenarios -------------------------------------------------------------------


async def _steady(lab: Lab, seconds: float) -> tuple[float, float]:
    """Let ``seconds`` of media pass (measured by frames decoded); returns (start, end)."""
    start = time.time()
    frames = round(seconds * FPS * 0.9)
    for proc in lab.peers.values():
        await proc.wait_more_frames(lab.device_id, frames, timeout=seconds * 4 + 10)
    return start, time.time()


async def _frames_until(lab: Lab, t: float) -> None:
    """Until every peer decoded a frame received after wall time ``t``."""
    for proc in lab.peers.values():
        await proc.wait_frames_after(lab.device_id, t, timeout=30)


async def link_cut(lab: Lab, peer: str = "p1", other: str = "p2",
                   seconds: float = 5.0) -> Outcome:
    """(a) ``peer``'s link drops everything for ``seconds``, then comes back."""
    b0, b1 = await _steady(lab, 2.0)
    mark = len(lab.agent.events)
    t_cut, trio_cut = time.time(), trio.current_time()
    await lab.net.cut(peer)
    noticed = await lab.agent.wait_for("peer.restarting", since=mark, peer=lab.peer_ids[peer],
                                       timeout=seconds + 10)
    await trio.sleep_until(trio_cut + seconds)  # the fault's length, not a synchronisation
    t_restore = time.time()
    await lab.net.clear(peer)
    first = await lab.peers[peer].wait_frames_after(lab.device_id, t_restore, count=1,
                                                    timeout=30)
    _a0, a1 = await _steady(lab, 3.0)
    view, other_view = lab.view(peer), lab.view(other)
    connected = lab.agent.find("peer.connected", since=mark, peer=lab.peer_ids[peer])
    return Outcome(
        f"a: link cut {seconds:g} s", detect_s=noticed["_t"] - trio_cut,
        recover_s=first - t_restore,
        frames=view.frames_between(t_cut, a1), longest_freeze_s=view.longest_gap(t_cut, a1),
        other_freeze_s=other_view.longest_gap(t_cut, a1),
        bitrate_before=view.bitrate(b0, b1), bitrate_during=view.bitrate(t_cut, t_restore),
        bitrate_after=view.bitrate(t_restore + 1, a1),
        extra={"noticed": noticed.get("reason"), "restarts": len(lab.agent.find(
            "peer.restarting", since=mark, peer=lab.peer_ids[peer])),
            "reconnected_after_restore_s": round(connected[-1]["_t"] - trio_cut - seconds, 2)
            if connected else None,
            "other_restarts": len(lab.agent.find("peer.restarting", since=mark,
                                                 peer=lab.peer_ids[other])),
            # the old connection carried media again when the link returned...
            "revived": bool(lab.agent.find("peer.path_revived", since=mark,
                                           peer=lab.peer_ids[peer])),
            # ...and the peer switched to the new one when our offer reached it
            "freeze_after_recovery_s": round(view.longest_gap(first, a1), 3)})


async def random_loss(lab: Lab, peer: str = "p2", other: str = "p1", percent: int = 10,
                      seconds: float = 12.0) -> Outcome:
    """(c) ``percent`` % of ``peer``'s packets (both ways) dropped for ``seconds``."""
    b0, b1 = await _steady(lab, 2.0)
    mark = len(lab.agent.events)
    t0, trio0 = time.time(), trio.current_time()
    await lab.net.loss(peer, percent)
    await trio.sleep_until(trio0 + seconds)  # the fault's length
    t1 = time.time()
    await lab.net.clear(peer)
    _a0, a1 = await _steady(lab, 2.0)
    view, other_view = lab.view(peer), lab.view(other)
    estimates = {name: [(e["estimate_bps"], e["reason"], e.get("loss"), e.get("remb_bps"))
                         for e in lab.agent.find("peer.bandwidth", since=mark,
                                                 peer=lab.peer_ids[name])]
                 for name in (peer, other)}
    return Outcome(
        f"c: {percent} % loss {seconds:g} s", frames=view.frames_between(t0, t1),
        longest_freeze_s=view.longest_gap(t0, t1), other_freeze_s=other_view.longest_gap(t0, t1),
        bitrate_before=view.bitrate(b0, b1), bitrate_during=view.bitrate(t0, t1),
        bitrate_after=view.bitrate(t1, a1),
        extra={"fps_during": round(view.frames_between(t0, t1) / (t1 - t0), 1),
               "freezes_over_200ms": _freezes(view, t0, t1, 0.2),
               "restarts": len(lab.agent.find("peer.restarting", since=mark,
                                              peer=lab.peer_ids[peer])),
               "estimates": estimates})


def _freezes(view: RemoteView, t0: float, t1: float, threshold: float) -> int:
    times = view.frame_times(t0, t1)
    return sum(1 for a, b in pairwise(times) if b - a > threshold)


async def signaling_outage(lab: Lab, seconds: float = 10.0) -> Outcome:
    """(d) the dev server killed for ``seconds``; media must not notice."""
    b0, b1 = await _steady(lab, 2.0)
    mark = len(lab.agent.events)
    t_kill, trio_kill = time.time(), trio.current_time()
    await lab.server.kill()
    noticed = await lab.agent.wait_for("signaling.reconnecting", since=mark, timeout=seconds + 10)
    await trio.sleep_until(trio_kill + seconds)  # the outage's length
    t_up, trio_up = time.time(), trio.current_time()
    await lab.server.start()
    joined = await lab.agent.wait_for("room.joined", since=mark, timeout=30)
    for name, proc in lab.peers.items():
        await proc.wait_until(lambda p=proc: _rejoined(p, t_up),  # type: ignore[misc]
                              f"{name} to re-join", timeout=30)
    _a0, a1 = await _steady(lab, 2.0)
    views = {name: lab.view(name) for name in lab.peers}
    freezes = {name: v.longest_gap(t_kill, a1) for name, v in views.items()}
    first = next(iter(lab.peers))
    closed = lab.agent.find("peer.connection_closed", since=mark)
    return Outcome(
        f"d: signaling down {seconds:g} s", detect_s=noticed["_t"] - trio_kill,
        recover_s=joined["_t"] - trio_up, frames=views[first].frames_between(t_kill, a1),
        longest_freeze_s=max(freezes.values()),
        bitrate_before=views[first].bitrate(b0, b1),
        bitrate_during=views[first].bitrate(t_kill, t_up),
        bitrate_after=views[first].bitrate(t_up, a1),
        extra={"freezes": {k: round(v, 3) for k, v in freezes.items()},
               "connections_closed": len(closed),
               "kept": len(lab.agent.find("peer.kept", since=mark))})


def _rejoined(proc: PeerProcess, t_up: float) -> bool:
    for line in proc.log:
        stamp, _, text = line.partition(" ")
        try:
            if text == "signaling joined" and float(stamp) >= t_up:
                return True
        except ValueError:
            continue
    return False


async def relay(lab: Lab) -> Outcome:
    """(e) relay-only through coturn: what the peers decode came through the relay."""
    b0, b1 = await _steady(lab, 3.0)
    pairs = {name: lab.agent.find("peer.connected", peer=pid)[-1]
             for name, pid in lab.peer_ids.items()}
    first = next(iter(lab.peers))
    view = lab.view(first)
    return Outcome(
        "e: relay-only (coturn)", frames=view.frames_between(b0, b1),
        longest_freeze_s=view.longest_gap(b0, b1), bitrate_before=view.bitrate(b0, b1),
        extra={"pairs": {n: (e.get("ice_local"), e.get("ice_remote")) for n, e in pairs.items()},
               "connect_ms": {n: e.get("ms") for n, e in pairs.items()}})


async def bandwidth_cap(lab: Lab, peer: str = "p2", other: str = "p1", kbit: int = 500,
                        seconds: float = 20.0, climb_timeout: float = 60.0) -> Outcome:
    """(b) ``peer``'s downlink capped at ``kbit`` kbit/s (tc tbf) for ``seconds``, then freed.

    Detect: the cap's start -> the agent moved the peer to a lower tier.
    Recover: the cap lifted -> the peer decodes the top tier's size again.
    """
    b0, b1 = await _steady(lab, 3.0)
    mark = len(lab.agent.events)
    pid, other_id = lab.peer_ids[peer], lab.peer_ids[other]
    t_cap, trio_cap = time.time(), trio.current_time()
    audio_before = lab.view(peer).audio
    await lab.net.cap(peer, kbit)
    moved = await lab.agent.wait_for("peer.tier_changed", since=mark, peer=pid,
                                     timeout=seconds)
    await trio.sleep_until(trio_cap + seconds)  # the fault's length
    t_free, trio_free = time.time(), trio.current_time()
    audio_during = lab.view(peer).audio - audio_before  # Opus: 50 frames a second
    await lab.net.uncap(peer)
    back = await lab.agent.wait_for("peer.tier_changed", since=mark, peer=pid, stream="h264",
                                    where=lambda e: e["_t"] >= trio_free,
                                    timeout=climb_timeout)
    view, other_view = lab.view(peer), lab.view(other)
    await lab.peers[peer].wait_until(lambda: view.size_at(time.time()) == (WIDTH, HEIGHT),
                                     "the top tier's size again", timeout=10)
    t_top = next(at for at, w, h in reversed(view.sizes) if (w, h) == (WIDTH, HEIGHT))
    _a0, a1 = await _steady(lab, 3.0)
    # the second half of the capped time: settled
    settled = (t_cap + t_free) / 2
    switches = lab.agent.find("peer.tier_changed", since=mark, peer=pid)
    return Outcome(
        f"b: {kbit} kbit/s cap {seconds:g} s", detect_s=moved["_t"] - trio_cap,
        recover_s=t_top - t_free, frames=view.frames_between(t_cap, t_free),
        longest_freeze_s=view.longest_gap(t_cap, t_free),
        other_freeze_s=other_view.longest_gap(t_cap, a1),
        bitrate_before=view.bitrate(b0, b1), bitrate_during=view.bitrate(settled, t_free),
        bitrate_after=view.bitrate(t_top, a1),
        extra={"cap_bps": kbit * 1000,
               "audio_fps": round(audio_during / (t_free - t_cap), 1),
               "fps_settled": round(view.frames_between(settled, t_free) / (t_free - settled), 1),
               # tries of the top tier while capped are expected (and fail fast)
               "low_share": round(view.share_of_size((LOW_WIDTH, LOW_HEIGHT),
                                                     t_cap + moved["_t"] - trio_cap, t_free), 2),
               "tries_while_capped": sum(1 for e in switches if e["stream"] == "h264"
                                         and e["_t"] < trio_free),
               "other_sizes": sorted(other_view.sizes_between(t_cap, a1)),
               "other_switches": len(lab.agent.find("peer.tier_changed", since=mark,
                                                    peer=other_id)),
               "switches": [(round(e["_t"] - trio_cap, 1), e["stream"]) for e in switches],
               "tier_decision_after_free_s": round(back["_t"] - trio_free, 2),
               "restarts": len(lab.agent.find("peer.restarting", since=mark, peer=pid))})


# -- the device's own uplink (issue 15) -------------------------------------------


def lowest_tier_rate(width: int = TOP_WIDTH, height: int = TOP_HEIGHT) -> int:
    """The lowest quality tier's configured bitrate, with the agent's default tiers."""
    from glimpse_edge.config import VideoConfig

    return VideoConfig(width=width, height=height).quality_tiers()[-1].bitrate


def held(changes: list[tuple[float, float]], start: float | None, a: float,
         b: float) -> list[tuple[float, float]]:
    """(value, seconds held) of a step series within [a, b).

    ``changes``: (time, new value), in time order, only those within the
    window count; ``start``: the value held at ``a`` (None: nothing until
    the first change).
    """
    out: list[tuple[float, float]] = []
    value, since = start, a
    for t, new in changes:
        if not a <= t < b:
            continue
        if value is not None and t > since:
            out.append((value, t - since))
        value, since = new, t
    if value is not None and b > since:
        out.append((value, b - since))
    return out


def spread(values: list[tuple[float, float]]) -> dict[str, float | None]:
    """min, time-weighted median, max and swing ((max - min) / median) of held values."""
    if not values:
        return {"min": None, "median": None, "max": None, "swing": None}
    ordered = sorted(values)
    total = sum(d for _v, d in ordered)
    acc, median = 0.0, ordered[-1][0]
    for v, d in ordered:
        acc += d
        if acc >= total / 2:
            median = v
            break
    lo, hi = ordered[0][0], max(v for v, _d in ordered)
    return {"min": lo, "median": median, "max": hi,
            "swing": round((hi - lo) / median, 3) if median else None}


def frame_sizes(view: RemoteView, a: float, b: float) -> list[tuple[int, int]]:
    """The size of each frame decoded within [a, b] (a frozen picture counts for nothing)."""
    # a size change is stamped with its first frame's decode time, a hair after the code's
    return [size for t in view.frame_times(a, b) if (size := view.size_at(t + 0.01))]


async def _all_decode_size(lab: Lab, names: list[str], size: tuple[int, int],
                           timeout: float, since: float = 0.0,
                           frames: int = 10) -> dict[str, float | None]:
    """Until every viewer in ``names`` decodes ``size`` again, all at the same time.

    "Again": its last size change (or ``since``, whichever is later) was to
    ``size`` and ``frames`` frames were decoded after it, so a picture frozen
    at that size does not count. Returns, per viewer, when its current
    stretch of ``size`` began (:func:`_back_at`) at the first moment all of
    them were there; after ``timeout`` without that moment, the same at the
    end (None for those not there).
    """
    def now() -> dict[str, float | None]:
        return {n: _back_at(lab.view(n), size, since, frames) for n in names}

    # every peer reports every 0.2 s: the first one's reports pace the check
    with suppress(AssertionError):
        await lab.peers[names[0]].wait_until(lambda: None not in now().values(),
                                             f"every viewer on {size[0]}x{size[1]}",
                                             timeout=timeout)
    return now()


def _back_at(view: RemoteView, size: tuple[int, int], since: float,
             frames: int = 1) -> float | None:
    """When ``view`` began its current stretch of ``size`` frames after ``since``.

    The wall time of the first frame decoded after ``since`` and after its
    last size change, if that change was to ``size`` (or it had ``size``
    already) and ``frames`` frames followed; None otherwise.
    """
    if view.size_at(float("inf")) != size:
        return None
    changes = [at for at, _w, _h in view.sizes if at > since]
    start = changes[-1] if changes else since
    after = view.frame_times(start - 0.05)  # a change is stamped with its frame's decode time
    return after[0] if len(after) >= frames else None


def _counter_delta(before: int | None, after: int | None) -> int | None:
    if after is None:
        return None
    if before is None or after < before:  # absent before, or restarted (a new encoder)
        return after
    return after - before


def _status_numbers(lab: Lab, before: dict[str, Any] | None,
                    after: dict[str, Any] | None) -> dict[str, Any]:
    """Key frames encoded, key-frame requests (and coalesced) and pacing, over the cap.

    Read from /status (``encoders``, ``participants``, ``uplink``); each
    figure is None when the agent does not report it (an older agent, or the
    endpoint off).
    """
    out: dict[str, Any] = {"keyframes": None, "keyframes_by_encoder": None,
                           "keyframe_requests": None, "coalesced": None,
                           "requests_by_viewer": None, "pacing": None, "uplink": None}
    if after is None:
        return out

    def encoders(doc: dict[str, Any] | None) -> dict[str, int]:
        return {f"{e.get('codec')}/{e.get('tier')}": int(e["keyframes"])
                for e in (doc or {}).get("encoders", []) if e.get("keyframes") is not None}

    enc_before, enc_after = encoders(before), encoders(after)
    if enc_after:
        by = {k: _counter_delta(enc_before.get(k), v) for k, v in enc_after.items()}
        out["keyframes_by_encoder"] = by
        out["keyframes"] = sum(v or 0 for v in by.values())
    names = {pid: name for name, pid in lab.peer_ids.items()}

    def requests(doc: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
        entries = (doc or {}).get("participants") or (doc or {}).get("peers") or []
        return {names[p["user_id"]]: p for p in entries
                if isinstance(p, dict) and p.get("user_id") in names}

    req_before, req_after = requests(before), requests(after)
    per: dict[str, Any] = {}
    pacing: dict[str, Any] = {}
    for name, entry in req_after.items():
        kf = entry.get("keyframe_requests")
        if isinstance(kf, dict):
            old = (req_before.get(name) or {}).get("keyframe_requests") or {}
            per[name] = {k: _counter_delta(old.get(k), kf.get(k))
                         for k in ("received", "coalesced")}
        if entry.get("pacing") is not None:
            pacing[name] = entry["pacing"]
    if per:
        out["requests_by_viewer"] = per
        out["keyframe_requests"] = sum(v.get("received") or 0 for v in per.values())
        out["coalesced"] = sum(v.get("coalesced") or 0 for v in per.values())
    out["pacing"] = pacing or None
    # the agent's estimate of its whole uplink, when it keeps one
    out["uplink"] = after.get("uplink")
    return out


def link_numbers(before: tuple[int, int, int], after: tuple[int, int, int],
                 seconds: float) -> dict[str, float | None]:
    """kbit/s that left through a tbf, and the share of packets it dropped, between
    two readings of its counters (FaultNet.uplink_counters: bytes, packets, dropped)."""
    sent, packets, dropped = (b - a for a, b in zip(before, after, strict=True))
    offered = packets + dropped
    return {"kbps": round(sent * 8 / seconds / 1000) if seconds > 0 else None,
            "dropped_share": round(dropped / offered, 3) if offered else None}


async def _uplink_run(lab: Lab, label: str, kbit: int, seconds: float, settle_s: float,
                      downlinks: dict[str, int], top: tuple[int, int],
                      climb_timeout: float, burst_bytes: int, latency_ms: int) -> Outcome:
    """The agent's uplink capped at ``kbit`` for ``seconds`` (and ``downlinks``: viewer ->
    kbit/s caps on their own downlinks, for the same time), then lifted.

    Per viewer (``extra["viewers"]``): over the settled part of the cap (its
    last ``seconds - settle_s``) decoded fps, longest freeze, audio frames/s,
    received kbit/s, the share of time on the top size and the size decoded
    most; over the whole cap the longest freeze and the tier changes; after
    it, the recovery (the cap lifted -> decoding ``top`` again). For the
    agent: the lowest tier's rate while settled (``media.tier.adapted``,
    time-weighted min/median/max and swing), encoder rate changes, key
    frames encoded and key-frame requests during the cap (/status).
    """
    names = list(lab.peers)
    ready = None not in (await _all_decode_size(lab, names, top, 30)).values()
    b0, b1 = await _steady(lab, 3.0)
    before = await lab.status()
    mark = len(lab.agent.events)
    t_cap, trio_cap = time.time(), trio.current_time()
    audio_cap = {n: lab.view(n).audio for n in names}
    await lab.net.cap_uplink("agent", kbit, burst_bytes=burst_bytes, latency_ms=latency_ms)
    try:
        for name, down in downlinks.items():
            await lab.net.cap(name, down)
        await trio.sleep_until(trio_cap + settle_s)  # the fault's length
        t_settle, trio_settle = time.time(), trio.current_time()
        audio_settle = {n: lab.view(n).audio for n in names}
        link0 = await lab.net.uplink_counters("agent")
        await trio.sleep_until(trio_cap + seconds)
        t_free, trio_free = time.time(), trio.current_time()
        audio_free = {n: lab.view(n).audio for n in names}
        link1 = await lab.net.uplink_counters("agent")
        end = await lab.status()  # over the namespace's loopback: not through the cap
    finally:
        with trio.CancelScope(shield=True):
            await lab.net.uncap_uplink("agent")
            for name in downlinks:
                await lab.net.uncap(name)
    back_at = await _all_decode_size(lab, names, top, climb_timeout, since=t_free)
    recovered = None not in back_at.values()
    # the after window: 2 s of frames from every viewer that recovered (one that
    # did not has none to wait for)
    for name in names:
        if back_at[name] is not None:
            await lab.peers[name].wait_more_frames(lab.device_id, 2 * FPS, timeout=20)
    a1 = time.time()

    switches = [e for e in lab.agent.find("peer.tier_changed", since=mark)
                if e["_t"] < trio_free]
    first_switch = min((e["_t"] for e in switches), default=None)
    # the lowest tier's rate: set when its encoder starts, then each adaptation
    lowest = lowest_tier_rate(*top)
    adapted = sorted((e["_t"], float(e["bitrate"])) for e in lab.agent.events
                     if e.get("bitrate") is not None and (
                         e.get("event") == "media.tier.adapted"
                         or (e.get("event") == "media.tier.started" and e.get("tier"))))
    start_rate = next((r for t, r in reversed(adapted) if t < trio_settle), None)
    # in use while settled: some viewer was on a lower tier then
    on_lower: dict[str, bool] = {}
    for e in lab.agent.find("peer.tier_changed"):
        if e["_t"] < trio_free:
            on_lower[str(e.get("peer"))] = "/" in str(e.get("stream", ""))
    low_used = any(on_lower.values()) or bool(
        [t for t, _r in adapted if trio_settle <= t < trio_free])
    if start_rate is None and low_used:
        start_rate = float(lowest)
    low_rate = spread(held(adapted, start_rate, trio_settle, trio_free)) if low_used \
        else spread([])
    encoder_rates = [(round(e["_t"] - trio_cap, 1), e.get("new"))
                     for e in lab.agent.find("media.encoder.bitrate", since=mark)
                     if e["_t"] < trio_free]

    viewers: dict[str, dict[str, Any]] = {}
    for name in names:
        view, pid = lab.view(name), lab.peer_ids[name]
        back = back_at[name]
        recover = None if back is None else back - t_free
        rate = view.bitrate(t_settle, t_free)
        sizes = frame_sizes(view, t_settle, t_free)
        dominant = max(set(sizes), key=sizes.count) if sizes else None
        viewers[name] = {
            "fps": round(view.frames_between(t_settle, t_free) / (t_free - t_settle), 1),
            "freeze_settled_s": round(view.longest_gap(t_settle, t_free), 3),
            "freeze_cap_s": round(view.longest_gap(t_cap, t_free), 3),
            "hole_cap_s": view.longest_hole(t_cap, t_free),
            "audio_fps": round((audio_free[name] - audio_settle[name]) / (t_free - t_settle), 1),
            "audio_fps_cap": round((audio_free[name] - audio_cap[name]) / (t_free - t_cap), 1),
            "kbps": None if rate is None else round(rate / 1000),
            # of the frames decoded while settled, the share at the top size
            "top_share": round(sizes.count(top) / len(sizes), 2) if sizes else None,
            "size": None if dominant is None else f"{dominant[0]}x{dominant[1]}",
            "size_at_lift": "x".join(map(str, view.size_at(t_free) or (0, 0))),
            "tier_changes": sum(1 for e in switches if e.get("peer") == pid),
            "recover_s": None if recover is None else round(recover, 2),
            # back at the top size, then moved down again before the last viewer got there
            "size_at_end": "x".join(map(str, view.size_at(float("inf")) or (0, 0))),
            "downlink_kbit": downlinks.get(name),
        }
    recoveries = [v["recover_s"] for v in viewers.values()]
    status = _status_numbers(lab, before, end)
    missing = [what for what, ok in (("/status", end is not None),
                                     ("encoder keyframes", status["keyframes"] is not None),
                                     ("keyframe_requests", status["keyframe_requests"]
                                      is not None),
                                     ("pacing", status["pacing"] is not None)) if not ok]

    def total(a: float, b: float) -> float | None:
        """What all viewers received together over [a, b], bit/s."""
        rates = [r for n in names if (r := lab.view(n).bitrate(a, b)) is not None]
        return sum(rates) if rates else None

    return Outcome(
        label, detect_s=None if first_switch is None else round(first_switch - trio_cap, 2),
        recover_s=None if None in recoveries else max(r for r in recoveries if r is not None),
        frames=min(lab.view(n).frames_between(t_settle, t_free) for n in names),
        longest_freeze_s=max(v["freeze_cap_s"] for v in viewers.values()),
        other_freeze_s=max((v["freeze_cap_s"] for n, v in viewers.items()
                            if n not in downlinks), default=None) if downlinks else None,
        bitrate_before=total(b0, b1), bitrate_during=total(t_settle, t_free),
        bitrate_after=total(a1 - 2.0, a1),
        extra={"cap_kbit": kbit, "seconds": seconds, "settle_s": settle_s,
               "n_viewers": len(names), "top_before_cap": ready, "recovered": recovered,
               "fps_min": min(v["fps"] for v in viewers.values()),
               "freeze_settled_s": max(v["freeze_settled_s"] for v in viewers.values()),
               "freeze_cap_s": max(v["freeze_cap_s"] for v in viewers.values()),
               "audio_fps_min": min(v["audio_fps"] for v in viewers.values()),
               "tier_changes": len(switches), "low_rate": low_rate,
               # what the capped link itself carried while settled (its tbf's counters)
               "link": link_numbers(link0, link1, t_free - t_settle),
               "rate_swing": low_rate["swing"], "encoder_rates": encoder_rates,
               **status, "missing": missing,
               "restarts": len(lab.agent.find("peer.restarting", since=mark)),
               "viewers": viewers})


async def uplink_cap(lab: Lab, kbit: int = 1000, seconds: float = 40.0, settle_s: float = 15.0,
                     *, top: tuple[int, int] = (TOP_WIDTH, TOP_HEIGHT),
                     climb_timeout: float = 60.0, burst_bytes: int = 16_000,
                     latency_ms: int = 150) -> Outcome:
    """(f, g) the agent's uplink capped at ``kbit`` kbit/s for ``seconds``, every lab
    peer watching, then lifted (tc tbf on the agent's egress: a weak Wi-Fi uplink).

    "Settled" is the cap's last ``seconds - settle_s``. See :func:`_uplink_run`
    for what is measured; ``recover_s`` is the cap lifted -> the last viewer
    decodes ``top`` again (None: not within ``climb_timeout``).
    """
    return await _uplink_run(
        lab, f"uplink {kbit} kbit/s, {len(lab.peers)} viewers, {seconds:g} s", kbit, seconds,
        settle_s, {}, top, climb_timeout, burst_bytes, latency_ms)


async def uplink_and_downlink_cap(
    lab: Lab, slow: str = "p3", kbit: int = 1000, downlink_kbit: int = 300,
    seconds: float = 40.0, settle_s: float = 15.0, *,
    top: tuple[int, int] = (TOP_WIDTH, TOP_HEIGHT), climb_timeout: float = 60.0,
    burst_bytes: int = 16_000, latency_ms: int = 150,
) -> Outcome:
    """(h) the agent's uplink capped at ``kbit`` while viewer ``slow`` is also behind its
    own ``downlink_kbit`` cap; the other viewers must not be dragged down to it.

    As :func:`uplink_cap`; ``other_freeze_s`` is the longest freeze of the
    viewers other than ``slow`` during the cap, and each viewer's settled
    size, top share and rate are in ``extra["viewers"]``.
    """
    return await _uplink_run(
        lab, f"uplink {kbit} kbit/s + {slow} down {downlink_kbit}, {len(lab.peers)} viewers",
        kbit, seconds, settle_s, {slow: downlink_kbit}, top, climb_timeout, burst_bytes,
        latency_ms)
