"""Observe reads a view of the agent, not its insides (issue 14).

The endpoint is served here from a handful of plain objects that implement
:class:`glimpse_edge.observe.view.AgentView`: no Agent, no signaling, no
network (an asyncio loop only, for the stand-in connection's getStats). And
observe's source is checked for what would bypass the view: a private
attribute of anything but itself, or an import of the agent.
"""

from __future__ import annotations

import ast
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import glimpse_edge.observe
from glimpse_edge.config import AuthConfig, Config, RoomConfig, ServerConfig, VideoConfig
from glimpse_edge.media.source import EncodingStats
from glimpse_edge.media.testpattern import TestPatternSource
from glimpse_edge.observe.metrics import families
from glimpse_edge.observe.peerstats import PeerStatsSampler
from glimpse_edge.observe.server import create_app
from glimpse_edge.observe.snapshot import Snapshotter
from glimpse_edge.observe.state import read_state
from glimpse_edge.observe.statusview import render
from glimpse_edge.observe.view import AgentView
from glimpse_edge.publish.state import PublishState
from glimpse_edge.room import Participant
from glimpse_edge.rtc.aio import open_aio_loop
from glimpse_edge.rtc.pacer import PacingState
from glimpse_edge.rtc.uplink import UplinkState
from glimpse_edge.supervise import HealthRegistry

OBSERVE = Path(glimpse_edge.observe.__file__).resolve().parent
ALICE = Participant("alice-id", "alice")
BOB = Participant("bob-id", "bob")
CAROL = Participant("carol-id", "carol")

ANSWER = """v=0
m=audio 9 UDP/TLS/RTP/SAVPF 111
a=rtpmap:111 opus/48000/2
m=video 9 UDP/TLS/RTP/SAVPF 102 96
a=rtpmap:102 H264/90000
a=rtpmap:96 VP8/90000
"""


# -- the stand-ins: what observe reads, and nothing else ----------------------------


@dataclass
class Session:
    state: str = "joined"
    connects: int = 3
    auth_failures: int = 1
    user_id: str | None = "device-id"
    username: str = "device"


@dataclass
class Room:
    participants: list[Participant]
    room_id: str = "r1"
    name: str = "Lobby"
    joined: bool = True


def _stat(**fields: Any) -> Any:
    return type("Stat", (), fields)()


class Connection:
    """An RTCPeerConnection as observe reads it: negotiated, sending, reporting."""

    signalingState = "stable"
    localDescription = _stat(type="answer", sdp=ANSWER)
    remoteDescription = None

    def __init__(self) -> None:
        self.bytes_sent = 100_000

    async def getStats(self) -> dict[str, Any]:
        return {
            "out-v": _stat(type="outbound-rtp", kind="video", bytesSent=self.bytes_sent,
                           packetsSent=120),
            "rr-v": _stat(type="remote-inbound-rtp", kind="video", roundTripTime=0.05,
                          fractionLost=64, packetsLost=7, jitter=900),
        }

    def getSenders(self) -> list[Any]:
        return []


@dataclass
class Peer:
    participant: Participant
    state: str = "connected"
    restarts: int = 2
    estimate_bps: int | None = 900_000
    video_tier: str | None = "640x360"
    connection: Any = None
    pacing: PacingState | None = field(default_factory=lambda: PacingState(
        rate_bps=1_500_000, queue_delay_s=0.012, packets=900, delayed=300, retransmissions=4,
        wait_s=1.5, wait_avg_s=0.002, wait_max_s=0.04, resends_skipped=6, repaired=5,
        repair_filled=3, repair_expired=1, receiver_restarts=2, padding_bytes=12_000))
    keyframe_requests: tuple[int, int] = (7, 5)


@dataclass
class Stream:
    published: int = 500
    subscribers: int = 1


@dataclass
class Hub:
    video_config: VideoConfig
    latest_frame: av.VideoFrame | None
    encoded: list[tuple[str, str, EncodingStats]]
    audio: Stream | None = field(default_factory=Stream)
    has_video: bool = True
    video_source_name: str | None = "test pattern"
    audio_source_name: str | None = "tone"
    frames_in: int = 42
    latest_keyframe: Any = None

    def encoders(self) -> list[tuple[str, str, EncodingStats]]:
        return self.encoded

    def audio_stream(self) -> Stream | None:
        return self.audio


@dataclass
class StandIn:
    """An AgentView made of plain objects."""

    config: Config
    config_path: Path
    session: Session | None
    room: Room | None
    peers: dict[str, Peer]
    hub: Hub | None
    health: HealthRegistry = field(default_factory=HealthRegistry)
    started_at: float = field(default_factory=lambda: time.time() - 3725)
    loaded_at: float = field(default_factory=time.time)
    config_problem: str | None = None
    peers_refused: int = 0
    uplink: UplinkState | None = None
    publish: PublishState | None = None

    def status_line(self) -> str:
        return "joined room Lobby with 2 participants"


def stand_in(tmp_path: Path) -> StandIn:
    video = VideoConfig(width=320, height=180, framerate=15)
    config = Config(server=ServerConfig(ws_url="wss://glimpse.example/ws"),
                    auth=AuthConfig(token_file=tmp_path / "token"), room=RoomConfig(id="r1"))
    frame = TestPatternSource(640, 360, 15).render(3, 0, 0)
    hub = Hub(video, frame, [
        ("h264", "640x360", EncodingStats(640, 360, 15, 600_000, frames_encoded=40,
                                          keyframes_encoded=2, bytes_encoded=50_000)),
        ("h264", "320x180", EncodingStats(160, 90, 15, 150_000, max_fps=7.5,
                                          frames_encoded=20, keyframes_encoded=1,
                                          bytes_encoded=9_000)),
    ])
    view = StandIn(
        config=config, config_path=tmp_path / "config.toml", session=Session(),
        room=Room([ALICE, BOB]), hub=hub, peers_refused=4,
        uplink=UplinkState(estimate_bps=900_000, congested=True, episodes=2, peers=2,
                           sent_bps=1_000_000, shares={ALICE.user_id: 450_000}, probes=5,
                           probes_passed=2, grown=1),
        config_problem="config.toml: video.width: must be even",
        peers={ALICE.user_id: Peer(ALICE, connection=Connection()),
               # an early offer: a session before the room lists them
               CAROL.user_id: Peer(CAROL, state="offering", restarts=0, estimate_bps=None,
                                   video_tier=None)},
    )
    view.health.set_state("media.video", "running")
    view.health.set_state("media.audio", "restarting")
    audio = view.health.get("media.audio")
    audio.restarts, audio.last_error, audio.last_error_at = 3, "SourceError: no mic", 1e9
    view.health.set_state("signaling", "running")
    return view


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and all(
        s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


async def test_the_endpoint_serves_a_stand_in_for_the_agent(tmp_path: Path) -> None:
    view = stand_in(tmp_path)
    typed: AgentView = view  # what mypy would check; at run time the endpoint proves it
    app = create_app(typed, PeerStatsSampler(), Snapshotter(lambda: view.hub))
    async with open_aio_loop(), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                  base_url="http://observe") as http:
        text = (await http.get("/metrics")).text
        status = (await http.get("/status")).json()
        shot = await http.get("/snapshot.jpg")

    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert value(samples, "glimpse_edge_info", room="r1") == 1
    assert value(samples, "glimpse_edge_config_reload_failed") == 1
    assert value(samples, "glimpse_edge_signaling_state", state="joined") == 1
    assert value(samples, "glimpse_edge_signaling_state", state="connecting") == 0
    assert value(samples, "glimpse_edge_signaling_reconnects_total") == 2
    assert value(samples, "glimpse_edge_signaling_auth_failures_total") == 1
    assert value(samples, "glimpse_edge_room_participants") == 2
    assert value(samples, "glimpse_edge_peers", state="connected") == 1
    assert value(samples, "glimpse_edge_peers", state="offering") == 1
    assert value(samples, "glimpse_edge_peers_refused_total") == 4
    assert value(samples, "glimpse_edge_uplink_estimate_bps") == 900_000
    assert value(samples, "glimpse_edge_uplink_congested") == 1
    assert value(samples, "glimpse_edge_uplink_congestion_episodes_total") == 2
    alice = {"peer": ALICE.user_id, "username": "alice"}
    assert value(samples, "glimpse_edge_peer_state", state="connected", **alice) == 1
    assert value(samples, "glimpse_edge_peer_tier", tier="640x360", codec="h264", **alice) == 1
    assert value(samples, "glimpse_edge_peer_restarts_total", **alice) == 2
    assert value(samples, "glimpse_edge_peer_estimate_bps", **alice) == 900_000
    assert value(samples, "glimpse_edge_peer_stats_up", **alice) == 1
    assert value(samples, "glimpse_edge_peer_sent_bytes_total", kind="video", **alice) == 100_000
    assert value(samples, "glimpse_edge_peer_rtt_seconds", kind="video", **alice) == 0.05
    assert value(samples, "glimpse_edge_peer_loss_ratio", kind="video", **alice) == 0.25
    assert value(samples, "glimpse_edge_peer_keyframe_requests_total", **alice) == 7
    assert value(samples, "glimpse_edge_peer_keyframe_requests_coalesced_total", **alice) == 5
    assert value(samples, "glimpse_edge_peer_pacer_rate_bps", **alice) == 1_500_000
    assert value(samples, "glimpse_edge_peer_pacer_queue_delay_seconds", **alice) == 0.012
    assert value(samples, "glimpse_edge_peer_pacer_delayed_packets_total", **alice) == 300
    assert value(samples, "glimpse_edge_peer_pacer_retransmissions_total", **alice) == 4
    assert value(samples, "glimpse_edge_peer_pacer_resends_skipped_total", **alice) == 6
    assert value(samples, "glimpse_edge_peer_pacer_repaired_total", **alice) == 5
    assert value(samples, "glimpse_edge_peer_pacer_repair_filled_total", **alice) == 3
    assert value(samples, "glimpse_edge_peer_pacer_repair_expired_total", **alice) == 1
    assert value(samples, "glimpse_edge_peer_pacer_receiver_restarts_total", **alice) == 2
    assert value(samples, "glimpse_edge_peer_pacer_padding_bytes_total", **alice) == 12_000
    assert value(samples, "glimpse_edge_uplink_probes_total", result="carried") == 2
    assert value(samples, "glimpse_edge_uplink_probes_total", result="not_carried") == 3
    assert value(samples, "glimpse_edge_uplink_grown_total") == 1
    assert value(samples, "glimpse_edge_peer_state", state="offering", peer=CAROL.user_id) == 1
    assert not [s for s in samples if s.labels.get("peer") == BOB.user_id]  # no session
    assert value(samples, "glimpse_edge_encoder_frames_total", codec="h264", tier="320x180") == 20
    assert value(samples, "glimpse_edge_encoder_frames_total", codec="opus", tier="audio") == 500
    assert value(samples, "glimpse_edge_encoder_target_bitrate_bps", tier="640x360") == 600_000
    assert value(samples, "glimpse_edge_source_up", kind="video", source="test pattern") == 1
    assert value(samples, "glimpse_edge_source_up", kind="audio", source="tone") == 0
    assert value(samples, "glimpse_edge_source_restarts_total", kind="audio") == 3
    assert value(samples, "glimpse_edge_source_frames_total", kind="video") == 42
    assert value(samples, "glimpse_edge_task_up", task="signaling") == 1

    assert status["signaling"] == {"state": "joined", "detail": view.status_line(),
                                   "server": "wss://glimpse.example/ws", "connects": 3,
                                   "user_id": "device-id", "username": "device"}
    assert status["room"] == {"id": "r1", "name": "Lobby", "joined": True, "participants": 2}
    assert status["config"]["reload_error"] == view.config_problem
    assert 3725 <= status["uptime_s"] < 3800
    people = {p["username"]: p for p in status["participants"]}
    assert [p["username"] for p in status["participants"]] == ["alice", "bob", "carol"]
    assert people["alice"]["state"] == "connected" and people["alice"]["tier"] == "640x360"
    assert people["alice"]["codecs"] == {"audio": "opus", "video": "h264"}
    assert people["alice"]["stats"]["video"]["bytes_sent"] == 100_000
    assert people["alice"]["stats"]["video"]["rtt_ms"] == 50.0
    assert people["alice"]["keyframe_requests"] == {"received": 7, "coalesced": 5}
    assert people["alice"]["pacing"] == {"rate_bps": 1_500_000, "queue_delay_ms": 12.0,
                                         "wait_avg_ms": 2.0, "wait_max_ms": 40.0,
                                         "packets": 900, "delayed": 300, "retransmissions": 4,
                                         "resends_skipped": 6, "repaired": 5,
                                         "repair_filled": 3, "repair_expired": 1,
                                         "receiver_restarts": 2, "padding_bytes": 12_000}
    assert people["bob"]["pacing"] is None
    assert status["uplink"] == {"estimate_bps": 900_000, "congested": True, "episodes": 2,
                                "peers": 2, "sent_bps": 1_000_000,
                                "shares_bps": {ALICE.user_id: 450_000}, "probes": 5,
                                "probes_passed": 2, "grown": 1}
    assert "uplink      sending 1000.0 kbit/s; estimate 900.0 kbit/s shared out, congested " \
        "(2 episodes; 5 probes, 2 carried; found grown 1 time)" in render(status)
    assert people["bob"]["state"] == "no session" and people["bob"]["stats"] == {}
    assert people["carol"]["state"] == "offering" and people["carol"]["tier"] is None
    sources = {s["kind"]: s for s in status["sources"]}
    assert sources["video"] == {"kind": "video", "source": "testpattern", "name": "test pattern",
                                "state": "running", "restarts": 0, "last_error": None,
                                "width": 320, "height": 180, "framerate": 15, "frames": 42}
    assert sources["audio"]["state"] == "restarting" and sources["audio"]["restarts"] == 3
    assert [(e["codec"], e["tier"], e["frames"]) for e in status["encoders"]] == [
        ("h264", "640x360", 40), ("h264", "320x180", 20), ("opus", "audio", 500)]
    assert status["encoders"][1]["max_fps"] == 7.5
    # the lowest tier shrunk and skips frames: the view shows what it encodes now
    encoded = {line.split()[1]: line.split()[2:5] for line in render(status).splitlines()
               if line.startswith("h264 ")}
    assert encoded == {"640x360": ["640x360", "40", "2"],
                       "320x180": ["160x90", "7.5", "fps"]}, encoded
    assert status["errors"] == [{"task": "media.audio", "error": "SourceError: no mic",
                                 "at": "2001-09-09T01:46:40Z"}]
    assert "alice" in render(status) and "1h 02m" in render(status)
    assert "PLI/COALESCED" in render(status) and " 7/5 " in render(status)

    assert shot.status_code == 200
    with av.open(io.BytesIO(shot.content)) as container:
        picture = next(container.decode(video=0))
    assert (picture.width, picture.height) == (320, 180)


async def test_metrics_and_status_render_one_reading(tmp_path: Path) -> None:
    """Nothing yet (no session, room, peers or hub): both say so, from the same reading."""
    view = stand_in(tmp_path)
    view.session = view.room = view.hub = None
    view.peers = {}
    state = read_state(view, {})
    assert state.signaling.state == "starting" and state.room.id == "r1"
    assert state.encoders == () and state.audio_encoder is None
    assert [(s.kind, s.on) for s in state.sources] == [("video", False), ("audio", False)]

    from glimpse_edge.observe.metrics import families
    from glimpse_edge.observe.status import status_document

    samples = [s for f in families(state) for s in f.samples]
    document = status_document(state)
    assert value(samples, "glimpse_edge_signaling_state", state="starting") == 1
    assert document["signaling"]["state"] == "starting"
    assert not [s for s in samples if s.name == "glimpse_edge_source_up"]
    assert [s["state"] for s in document["sources"]] == ["off", "off"]
    assert document["participants"] == [] and document["encoders"] == []


# -- observe's source: through the view only -----------------------------------------


def private_accesses(source: str, name: str) -> list[str]:
    """Every place ``source`` reaches a private name of something other than itself:
    ``x._y`` (x not self or cls), ``getattr(x, "_y")`` and the like, ``from m import _y``."""
    tree = ast.parse(source, name)
    lines = source.splitlines()
    found = []

    def hit(node: ast.AST, what: str) -> None:
        line = getattr(node, "lineno", 0)
        found.append(f"{name}:{line}: {what}: {lines[line - 1].strip()}")

    def private(attr: str) -> bool:
        return attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                hit(node, f".{node.attr}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and private(node.args[1].value)):
            hit(node, f"{node.func.id}(..., {node.args[1].value!r})")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if private(alias.name):
                    hit(node, f"import of {alias.name}")
    return found


def test_observe_reaches_no_private_attribute() -> None:
    found = [hit for path in sorted(OBSERVE.glob("*.py"))
             for hit in private_accesses(path.read_text(), f"observe/{path.name}")]
    assert not found, "observe reaches past the view:\n" + "\n".join(found)


def test_the_private_access_check_sees_them() -> None:
    """Guard the guard."""
    source = ("from .x import _helper\n"
              "class A:\n"
              "    def f(self, agent):\n"
              "        self._own = cls._too = type(agent).__name__\n"
              "        return agent._signaling, getattr(agent.hub, '_frame', None)\n")
    assert [h.split(": ")[1] for h in private_accesses(source, "probe.py")] == [
        "import of _helper", "._signaling", "getattr(..., '_frame')"]


@pytest.mark.parametrize("path", sorted(OBSERVE.glob("*.py")), ids=lambda p: p.name)
def test_observe_does_not_import_the_agent(path: Path) -> None:
    """Not even for typing: observe depends on the view, the agent on observe."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            assert module not in ("..agent", "glimpse_edge.agent"), (
                f"observe/{path.name}:{node.lineno} imports {module}")
        elif isinstance(node, ast.Import):
            assert "glimpse_edge.agent" not in [a.name for a in node.names], (
                f"observe/{path.name}:{node.lineno}")


async def test_the_whip_session_in_metrics_status_and_the_table(tmp_path: Path) -> None:
    view = stand_in(tmp_path)
    view.publish = PublishState(
        url="https://sfu.example/whip/endpoint/lobby", state="publishing", since=1e9,
        codec="h264", tier="640x360", bitrate_bps=812_000, estimate_bps=1_200_000,
        rtt_ms=21.5, reconnects=2, sessions=3, last_error="WHIP POST https://sfu.example"
        "/whip/endpoint/lobby: 503 unavailable", resource="https://sfu.example/r/1")
    app = create_app(view, PeerStatsSampler(), Snapshotter(lambda: view.hub))
    async with open_aio_loop(), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                  base_url="http://observe") as http:
        text = (await http.get("/metrics")).text
        status = (await http.get("/status")).json()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    url = view.publish.url
    assert value(samples, "glimpse_edge_publish_state", state="publishing", url=url) == 1
    assert value(samples, "glimpse_edge_publish_state", state="retrying", url=url) == 0
    assert value(samples, "glimpse_edge_publish_sent_bps") == 812_000
    assert value(samples, "glimpse_edge_publish_rtt_seconds") == 0.0215
    assert value(samples, "glimpse_edge_publish_reconnects_total") == 2
    assert value(samples, "glimpse_edge_publish_sessions_total") == 3
    assert status["publish"]["state"] == "publishing"
    assert status["publish"]["bitrate_bps"] == 812_000 and status["publish"]["rtt_ms"] == 21.5
    shown = render(status)
    assert ("publish     publishing to https://sfu.example/whip/endpoint/lobby (h264 640x360): "
            "sending 812.0 kbit/s, estimate 1200.0 kbit/s, RTT 22 ms, 2 reconnects") in shown
    assert "last error: WHIP POST" in shown


async def test_no_publish_table_no_publish_metrics(tmp_path: Path) -> None:
    state = read_state(stand_in(tmp_path), {})
    assert state.publish is None
    assert not [f for f in families(state) if f.name.startswith("glimpse_edge_publish")]
