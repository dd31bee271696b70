"""The agent's state as one JSON document, for ``/status`` and ``glimpse-edge status``.

Built from the same live objects as the metrics, shaped for a person or a
script asking "what is this device doing right now": who is in the room and
how each connection is doing, whether the camera and microphone run, what
went wrong last, which files configure it. Times are ISO 8601 UTC strings;
durations are seconds; rates are bits per second.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..introspect import resource_counts
from .metrics import AUDIO_TIER
from .peerstats import PeerStats, fanout_counts, sending_codecs

if TYPE_CHECKING:
    from ..agent import Agent
    from ..rtc.peer import PeerSession

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


def build_status(agent: Agent, peer_stats: Mapping[str, PeerStats]) -> dict[str, Any]:
    """The whole document (see the module docstring; ``format`` versions its shape)."""
    now = time.time()
    config = agent.config
    sig = agent.signaling
    session, room = (sig.session, sig.room) if sig else (None, None)
    sessions = sig.peers.sessions if sig and sig.peers else {}
    health = agent.health.snapshot()
    return {
        "format": STATUS_FORMAT,
        "version": __version__,
        "pid": os.getpid(),
        "started_at": iso(agent.started_at),
        "uptime_s": round(now - agent.started_at, 1),
        "config": {
            "path": str(agent.config_path.absolute()),
            "files": [str(f) for f in config.sources] or [str(agent.config_path.absolute())],
            "loaded_at": iso(agent.loaded_at),
            "reload_error": agent.config_problem,
        },
        "signaling": {
            "state": session.state if session else "starting",
            "detail": agent.status_line(),  # what systemctl status shows, kept current
            "server": config.server.ws_url,
            "connects": session.connects if session else 0,
            "user_id": session.user_id if session else None,
            "username": session.username if session else "",
        },
        "room": {
            "id": room.room_id if room else config.room.id,
            "name": room.name if room else "",
            "joined": room.joined if room else False,
            "participants": len(room.participants) if room else 0,
        },
        "participants": _participants(agent, sessions, peer_stats),
        "sources": _sources(agent),
        "encoders": _encoders(agent),
        "tasks": [
            {"name": name, "state": task.state, "since": iso(task.since),
             "restarts": task.restarts, "last_error": task.last_error,
             "last_error_at": iso(task.last_error_at)}
            for name, task in sorted(health.items())
        ],
        "errors": [
            {"task": name, "error": task.last_error, "at": iso(task.last_error_at)}
            for name, task in sorted(health.items(), key=lambda kv: -(kv[1].last_error_at or 0))
            if task.last_error
        ],
        "resources": {**resource_counts(), **process_usage()},
    }


def _participants(agent: Agent, sessions: Mapping[str, PeerSession],
                  peer_stats: Mapping[str, PeerStats]) -> list[dict[str, Any]]:
    sig = agent.signaling
    people = {p.user_id: p.username for p in (sig.room.participants if sig else [])}
    # a session can exist for someone the room model has not listed (an early offer)
    for peer_id, known in sessions.items():
        people.setdefault(peer_id, known.participant.username)
    out = []
    for peer_id, username in people.items():
        entry: dict[str, Any] = {"user_id": peer_id, "username": username}
        session = sessions.get(peer_id)
        if session is None:
            entry.update(state="no session", tier=None, codecs={}, restarts=0, stats={},
                         stats_error=None, estimate_bps=None)
        else:
            codecs = sending_codecs(session)
            reading = peer_stats.get(peer_id)
            stats: dict[str, dict[str, Any]] = {
                kind: s.as_dict() for kind, s in (reading.streams if reading else {}).items()}
            for kind, fan in fanout_counts(session).items():
                stats.setdefault(kind, {}).update(frames_sent=fan.frames_sent,
                                                  frames_dropped=fan.frames_dropped)
            entry.update(
                state=session.state,
                tier=session.video_tier if codecs.get("video") else None,
                codecs=codecs,
                restarts=session.restarts,
                estimate_bps=session.estimate_bps,
                stats=stats,
                stats_error=reading.error if reading else None,
            )
        out.append(entry)
    return out


def _sources(agent: Agent) -> list[dict[str, Any]]:
    hub = agent.hub
    health = agent.health.snapshot()
    out = []
    for kind in ("video", "audio"):
        cfg = agent.config.video if kind == "video" else agent.config.audio
        on = hub is not None and (hub.has_video if kind == "video"
                                  else hub.audio_stream() is not None)
        task = health.get(f"media.{kind}")
        entry: dict[str, Any] = {
            "kind": kind,
            "source": cfg.source,
            "name": (hub.video_source_name if kind == "video" else hub.audio_source_name)
            if hub is not None else None,
            "state": (task.state if task is not None else "starting") if on else "off",
            "restarts": task.restarts if task is not None else 0,
            "last_error": task.last_error if task is not None else None,
        }
        if kind == "video" and hub is not None:
            video = hub.video_config
            entry.update(width=video.width, height=video.height, framerate=video.framerate,
                         frames=hub.frames_in)
        out.append(entry)
    return out


def _encoders(agent: Agent) -> list[dict[str, Any]]:
    hub = agent.hub
    if hub is None:
        return []
    out: list[dict[str, Any]] = [
        {"codec": codec, "tier": tier, "frames": enc.frames_encoded,
         "keyframes": enc.keyframes_encoded, "bytes": enc.bytes_encoded,
         "target_bitrate_bps": enc.bitrate, "width": enc.width, "height": enc.height,
         "framerate": enc.framerate, "max_fps": getattr(enc, "max_fps", None)}
        for codec, tier, enc in hub.encoders()
    ]
    audio = hub.audio_stream()
    if audio is not None:
        out.append({"codec": "opus", "tier": AUDIO_TIER, "frames": audio.published,
                    "subscribers": audio.subscribers})
    return out
