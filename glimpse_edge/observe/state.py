"""One reading of the agent, taken in one walk, that /metrics and /status both render.

:func:`read_state` walks the view (:mod:`.view`) once per request and copies
what it finds into plain frozen dataclasses: the signaling session, the room,
every peer (with its transport statistics and fan-out counters), the media
sources and encoders, the supervised tasks, the process's task and file
counts. :mod:`.metrics` turns an :class:`AgentState` into Prometheus
families and :mod:`.status` into the JSON document, so the two cannot
disagree about what the agent is doing, and neither walks the agent itself.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..introspect import resource_counts
from ..room import Participant
from ..supervise import TaskHealth
from .peerstats import FanoutCounts, PeerStats, fanout_counts, sending_codecs
from .view import AgentView

if TYPE_CHECKING:
    from ..publish.state import PublishState
    from ..rtc.pacer import PacingState
    from ..rtc.uplink import UplinkState

# The "tier" of the audio encoder (a video tier is its picture size, "1280x720").
AUDIO_TIER = "audio"


@dataclass(frozen=True)
class SignalingState:
    state: str  # "starting" before the first session
    detail: str  # the agent's status line (what systemctl status shows)
    server: str  # the configured ws_url
    connects: int
    auth_failures: int
    user_id: str | None
    username: str


@dataclass(frozen=True)
class RoomState:
    id: str  # the room model's, else the configured one (before the first session)
    name: str
    joined: bool
    participants: tuple[Participant, ...]  # the others, as the room lists them


@dataclass(frozen=True)
class PeerState:
    """One peer session (a participant may have none; one may have a session
    before the room lists them)."""

    peer_id: str
    username: str  # as the session knows them
    state: str
    restarts: int
    estimate_bps: int | None
    video_tier: str | None
    codecs: dict[str, str | None]  # what the current connection sends, by kind
    fanout: dict[str, FanoutCounts]  # by kind
    pacing: PacingState | None  # the video pacer, once negotiated
    keyframe_requests: int  # PLI/FIR from the peer
    keyframe_requests_coalesced: int  # ... answered by a key frame already on its way
    stats: PeerStats | None  # the sampler's latest reading, if any


@dataclass(frozen=True)
class SourceState:
    kind: str  # "video" | "audio"
    setting: str  # video.source / audio.source
    on: bool  # the hub runs this kind of source
    name: str | None  # the running source's own name (None without a hub, or not started)
    task: TaskHealth | None  # the supervised "media.<kind>" task, if it has reported
    # video, with a hub: the settings it runs on and the frames it received
    width: int | None = None
    height: int | None = None
    framerate: int | None = None
    frames: int | None = None


@dataclass(frozen=True)
class EncoderState:
    """One shared video encoding."""

    codec: str
    tier: str  # "WxH"
    frames: int
    keyframes: int
    bytes: int
    target_bitrate_bps: int
    width: int
    height: int
    framerate: int
    max_fps: float | None  # a frame rate capped below ``framerate``


@dataclass(frozen=True)
class AudioEncoderState:
    frames: int  # Opus packets
    subscribers: int


@dataclass(frozen=True)
class AgentState:
    taken_at: float  # Unix time
    version: str
    started_at: float
    config_path: Path  # absolute
    config_files: tuple[Path, ...]  # as loaded: main file, then drop-ins
    config_room: str  # the configured room id
    loaded_at: float
    config_problem: str | None
    signaling: SignalingState
    room: RoomState
    peers: tuple[PeerState, ...]
    peers_refused: int
    uplink: UplinkState | None
    publish: PublishState | None  # the WHIP session (None: [publish] unset)
    has_hub: bool
    sources: tuple[SourceState, ...]  # video, audio
    encoders: tuple[EncoderState, ...]
    audio_encoder: AudioEncoderState | None
    tasks: tuple[TaskHealth, ...]  # in the order the health registry met them
    resources: dict[str, int]  # trio_tasks, asyncio_tasks, fds


def read_state(agent: AgentView, peer_stats: Mapping[str, PeerStats]) -> AgentState:
    """Everything /metrics and /status show, as of now (``peer_stats``: the sampler's)."""
    config = agent.config
    session, room, hub = agent.session, agent.room, agent.hub
    # copies: the registry updates its entries in place
    health = {name: dataclasses.replace(task) for name, task in agent.health.snapshot().items()}
    return AgentState(
        taken_at=time.time(),
        version=__version__,
        started_at=agent.started_at,
        config_path=agent.config_path.absolute(),
        config_files=tuple(config.sources),
        config_room=config.room.id if config.room else "",
        loaded_at=agent.loaded_at,
        config_problem=agent.config_problem,
        signaling=SignalingState(
            state=session.state if session else ("starting" if config.room else "off"),
            detail=agent.status_line(),
            server=config.server.ws_url if config.server else "",
            connects=session.connects if session else 0,
            auth_failures=session.auth_failures if session else 0,
            user_id=session.user_id if session else None,
            username=session.username if session else "",
        ),
        room=RoomState(
            id=room.room_id if room else (config.room.id if config.room else ""),
            name=room.name if room else "",
            joined=room.joined if room else False,
            participants=tuple(room.participants) if room else (),
        ),
        peers=tuple(
            PeerState(
                peer_id=peer_id,
                username=peer.participant.username,
                state=peer.state,
                restarts=peer.restarts,
                estimate_bps=peer.estimate_bps,
                video_tier=peer.video_tier,
                codecs=sending_codecs(peer),
                fanout=fanout_counts(peer),
                pacing=peer.pacing,
                keyframe_requests=peer.keyframe_requests[0],
                keyframe_requests_coalesced=peer.keyframe_requests[1],
                stats=peer_stats.get(peer_id),
            )
            for peer_id, peer in agent.peers.items()
        ),
        peers_refused=agent.peers_refused,
        uplink=agent.uplink,
        publish=agent.publish,
        has_hub=hub is not None,
        sources=_sources(agent, health),
        encoders=tuple(
            EncoderState(
                codec=codec, tier=tier, frames=enc.frames_encoded,
                keyframes=enc.keyframes_encoded, bytes=enc.bytes_encoded,
                target_bitrate_bps=enc.bitrate, width=enc.width, height=enc.height,
                framerate=enc.framerate,
                # a camera's own encoder has no cap (it is not an attribute of its class)
                max_fps=getattr(enc, "max_fps", None),
            )
            for codec, tier, enc in (hub.encoders() if hub is not None else ())
        ),
        audio_encoder=None if hub is None or (audio := hub.audio_stream()) is None
        else AudioEncoderState(frames=audio.published, subscribers=audio.subscribers),
        tasks=tuple(health.values()),
        resources=resource_counts(),
    )


def _sources(agent: AgentView, health: Mapping[str, TaskHealth]) -> tuple[SourceState, ...]:
    hub = agent.hub
    video = SourceState(
        kind="video",
        setting=agent.config.video.source,
        on=hub is not None and hub.has_video,
        name=hub.video_source_name if hub is not None else None,
        task=health.get("media.video"),
    )
    if hub is not None:
        cfg = hub.video_config
        video = dataclasses.replace(video, width=cfg.width, height=cfg.height,
                                    framerate=cfg.framerate, frames=hub.frames_in)
    audio = SourceState(
        kind="audio",
        setting=agent.config.audio.source,
        on=hub is not None and hub.audio_stream() is not None,
        name=hub.audio_source_name if hub is not None else None,
        task=health.get("media.audio"),
    )
    return (video, audio)
