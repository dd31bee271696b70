"""Fault scenarios over real network namespaces, shared by tests/system/faults and the benchmark.

A :func:`fault_lab` is a room with the agent and two receiving peers, each
in its own namespace on one bridge (:mod:`support.netns`), the dev server as
a process in the root namespace (so it can be killed and brought back), and
optionally coturn in a namespace of its own. The scenario functions inject
one fault each and return an :class:`Outcome` measured from what the
receiving peers decoded (frame codes and their receive times, transport
bytes) plus the agent's log for the moment it noticed.

Times are wall-clock seconds (``time.time()``): the peers stamp decoded
frames with the wall clock of the same machine, so a fault's start and end
compare with them directly.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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

    def view(self, peer: str) -> RemoteView:
        """What ``peer`` received from the agent."""
        return self.peers[peer].remote(self.device_id)


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
) -> AsyncIterator[Lab]:
    """The whole set-up, torn down (processes, namespaces) however the block ends.

    ``noise``: grain on the test pattern (video.pattern_noise), so that the
    encoders spend their whole bitrate as with a camera (the plain pattern
    needs a third of it, too little to fill a capped link).
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
                                      extra=MEDIA.format(noise=noise) + peers_config,
                                      ice=ice)
                agent = AgentProcess(config, command_prefix=net.exec_prefix("agent"))
                await agent.start(nursery)
                await agent.wait_for("room.joined", timeout=30)
                lab = Lab(net, server, agent, procs, device_id, room_id, turn)
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
