"""The agent's state as one JSON document, for ``/status`` and ``glimpse-edge status``.

Rendered from the same reading as the metrics (:func:`.state.read_state`),
shaped for a person or a script asking "what is this device doing right
now": who is in the room and how each connection is doing, whether the
camera and microphone run, what went wrong last, which files configure it.
Times are ISO 8601 UTC strings; durations are seconds; rates are bits per
second.
"""

from __future__ import annotations

import datetime
import os
import threading
from collections.abc import Mapping
from typing import Any

from .peerstats import PeerStats
from .state import AUDIO_TIER, AgentState, read_state
from .view import AgentView

STATUS_FORMAT = 1  # bumped when a field changes meaning or goes away


def iso(timestamp: float | None) -> str | None:
    """Unix time as ISO 8601 UTC with a Z, to the second."""
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def process_usage() -> dict[str, Any]:
    """CPU seconds and resident memory of this process (Linux /proc; None elsewhere)."""
    times = os.times()
    rss: int | None = None
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu_seconds": round(times.user + times.system, 2), "rss_bytes": rss,
            "threads": threading.active_count()}


def build_status(agent: AgentView, peer_stats: Mapping[str, PeerStats]) -> dict[str, Any]:
    """The whole document for ``agent`` as of now (``peer_stats``: the sampler's)."""
    return status_document(read_state(agent, peer_stats))


def status_document(state: AgentState) -> dict[str, Any]:
    """One reading as the document (see the module docstring; ``format`` versions its shape)."""
    sig, room = state.signaling, state.room
    return {
        "format": STATUS_FORMAT,
        "version": state.version,
        "pid": os.getpid(),
        "started_at": iso(state.started_at),
        "uptime_s": round(state.taken_at - state.started_at, 1),
        "config": {
            "path": str(state.config_path),
            "files": [str(f) for f in state.config_files] or [str(state.config_path)],
            "loaded_at": iso(state.loaded_at),
            "reload_error": state.config_problem,
        },
        "signaling": {
            "state": sig.state,
            "detail": sig.detail,  # what systemctl status shows, kept current
            "server": sig.server,
            "connects": sig.connects,
            "user_id": sig.user_id,
            "username": sig.username,
        },
        "room": {
            "id": room.id,
            "name": room.name,
            "joined": room.joined,
            "participants": len(room.participants),
        },
        "uplink": None if (up := state.uplink) is None else {
            "estimate_bps": up.estimate_bps, "congested": up.congested,
            "episodes": up.episodes, "peers": up.peers, "sent_bps": up.sent_bps,
            "shares_bps": dict(up.shares), "probes": up.probes,
            "probes_passed": up.probes_passed, "grown": up.grown},
        "publish": None if (pub := state.publish) is None else {
            "url": pub.url, "state": pub.state, "since": iso(pub.since), "codec": pub.codec,
            "tier": pub.tier, "bitrate_bps": pub.bitrate_bps,
            "estimate_bps": pub.estimate_bps, "rtt_ms": pub.rtt_ms,
            "reconnects": pub.reconnects, "sessions": pub.sessions,
            "last_error": pub.last_error, "resource": pub.resource},
        "participants": _participants(state),
        "sources": _sources(state),
        "encoders": _encoders(state),
        "tasks": [
            {"name": task.name, "state": task.state, "since": iso(task.since),
             "restarts": task.restarts, "last_error": task.last_error,
             "last_error_at": iso(task.last_error_at)}
            for task in sorted(state.tasks, key=lambda t: t.name)
        ],
        "errors": [
            {"task": task.name, "error": task.last_error, "at": iso(task.last_error_at)}
            for task in sorted(state.tasks, key=lambda t: -(t.last_error_at or 0))
            if task.last_error
        ],
        "resources": {**state.resources, **process_usage()},
    }


def _participants(state: AgentState) -> list[dict[str, Any]]:
    people = {p.user_id: p.username for p in state.room.participants}
    peers = {peer.peer_id: peer for peer in state.peers}
    # a session can exist for someone the room model has not listed (an early offer)
    for peer_id, known in peers.items():
        people.setdefault(peer_id, known.username)
    out = []
    for peer_id, username in people.items():
        entry: dict[str, Any] = {"user_id": peer_id, "username": username}
        peer = peers.get(peer_id)
        if peer is None:
            entry.update(state="no session", tier=None, codecs={}, restarts=0, stats={},
                         stats_error=None, estimate_bps=None, pacing=None,
                         keyframe_requests={"received": 0, "coalesced": 0})
        else:
            reading = peer.stats
            stats: dict[str, dict[str, Any]] = {
                kind: s.as_dict() for kind, s in (reading.streams if reading else {}).items()}
            for kind, fan in peer.fanout.items():
                stats.setdefault(kind, {}).update(frames_sent=fan.frames_sent,
                                                  frames_dropped=fan.frames_dropped)
            entry.update(
                state=peer.state,
                tier=peer.video_tier if peer.codecs.get("video") else None,
                codecs=peer.codecs,
                restarts=peer.restarts,
                estimate_bps=peer.estimate_bps,
                pacing=None if (pace := peer.pacing) is None else {
                    "rate_bps": pace.rate_bps,
                    "queue_delay_ms": round(pace.queue_delay_s * 1000, 1),
                    "wait_avg_ms": round(pace.wait_avg_s * 1000, 2),
                    "wait_max_ms": round(pace.wait_max_s * 1000, 1),
                    "packets": pace.packets, "delayed": pace.delayed,
                    "retransmissions": pace.retransmissions,
                    "resends_skipped": pace.resends_skipped, "repaired": pace.repaired,
                    "repair_filled": pace.repair_filled,
                    "repair_expired": pace.repair_expired,
                    "receiver_restarts": pace.receiver_restarts,
                    "padding_bytes": pace.padding_bytes},
                keyframe_requests={"received": peer.keyframe_requests,
                                   "coalesced": peer.keyframe_requests_coalesced},
                stats=stats,
                stats_error=reading.error if reading else None,
            )
        out.append(entry)
    return out


def _sources(state: AgentState) -> list[dict[str, Any]]:
    out = []
    for source in state.sources:
        task = source.task
        entry: dict[str, Any] = {
            "kind": source.kind,
            "source": source.setting,
            "name": source.name,
            "state": (task.state if task is not None else "starting") if source.on else "off",
            "restarts": task.restarts if task is not None else 0,
            "last_error": task.last_error if task is not None else None,
        }
        if source.kind == "video" and state.has_hub:
            entry.update(width=source.width, height=source.height,
                         framerate=source.framerate, frames=source.frames)
        out.append(entry)
    return out


def _encoders(state: AgentState) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"codec": enc.codec, "tier": enc.tier, "frames": enc.frames,
         "keyframes": enc.keyframes, "bytes": enc.bytes,
         "target_bitrate_bps": enc.target_bitrate_bps, "width": enc.width,
         "height": enc.height, "framerate": enc.framerate, "max_fps": enc.max_fps}
        for enc in state.encoders
    ]
    if state.audio_encoder is not None:
        out.append({"codec": "opus", "tier": AUDIO_TIER, "frames": state.audio_encoder.frames,
                    "subscribers": state.audio_encoder.subscribers})
    return out
