"""Prometheus metrics, read from the live agent at scrape time.

One custom collector walks the agent's objects on every scrape instead of
keeping counters of its own: the numbers already exist (the session counts
its connections, encoders their frames, the health registry its restarts,
aiortc its bytes), and a series whose object is gone simply stops being
emitted. That is what keeps per-peer labels from leaking: a peer that left
is absent from the very next scrape, with no cleanup code to forget.

Per-peer transport numbers come from :class:`~.peerstats.PeerStatsSampler`,
which the HTTP handler refreshes (asynchronously, with a timeout) before the
synchronous ``collect`` runs. Process CPU, memory and file descriptors come
from prometheus_client's standard ``process_*`` collector.

All names start with ``glimpse_edge_``; counters end in ``_total``, and units
are seconds, bytes and bits per second as Prometheus conventions ask.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from .. import __version__
from ..introspect import asyncio_task_count, trio_task_count
from .peerstats import PeerStatsSampler, fanout_counts, sending_codecs

if TYPE_CHECKING:
    from ..agent import Agent

# Every state is always emitted (0 or 1), so a dashboard can tell "none" from "no data".
SIGNALING_STATES = ("starting", "connecting", "joining", "joined", "reconnecting",
                    "auth_rejected")
PEER_STATES = ("idle", "offering", "negotiated", "connected", "closed")
# The "tier" label of a video encoder or a peer is the tier's picture size
# ("1280x720"); the audio encoder has one tier.
AUDIO_TIER = "audio"

_PEER = ("peer", "username")
_STREAM = ("peer", "username", "kind")
_ENCODER = ("codec", "tier")


def build_registry(agent: Agent, sampler: PeerStatsSampler) -> CollectorRegistry:
    """A registry of its own (not the global one): the agent's collector + process_*."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent, sampler))
    ProcessCollector(registry=registry)
    return registry


class AgentCollector:
    """Everything about one agent, as metric families, built fresh per scrape."""

    def __init__(self, agent: Agent, sampler: PeerStatsSampler) -> None:
        self.agent = agent
        self.sampler = sampler

    def collect(self) -> Iterator[Metric]:
        yield from self._agent()
        yield from self._signaling()
        yield from self._peers()
        yield from self._media()
        yield from self._tasks()
        yield from self._runtime()

    # -- families -------------------------------------------------------------

    def _agent(self) -> Iterator[Metric]:
        agent = self.agent
        info = InfoMetricFamily("glimpse_edge", "The agent's version and room.",
                                labels=("version", "room"))
        info.add_metric((__version__, agent.config.room.id), {})
        yield info
        yield GaugeMetricFamily("glimpse_edge_start_time_seconds",
                                "When the agent started (Unix time).", value=agent.started_at)
        yield GaugeMetricFamily("glimpse_edge_config_loaded_time_seconds",
                                "When the running configuration was loaded (Unix time).",
                                value=agent.loaded_at)
        yield GaugeMetricFamily("glimpse_edge_config_reload_failed",
                                "1 while the last reload was refused (the previous "
                                "configuration still runs).",
                                value=1.0 if agent.config_problem else 0.0)

    def _signaling(self) -> Iterator[Metric]:
        sig = self.agent.signaling
        state = sig.session.state if sig else "starting"
        states = GaugeMetricFamily("glimpse_edge_signaling_state",
                                   "1 for the signaling session's current state.",
                                   labels=("state",))
        for name in (*SIGNALING_STATES, *(() if state in SIGNALING_STATES else (state,))):
            states.add_metric((name,), 1.0 if name == state else 0.0)
        yield states
        connects = sig.session.connects if sig else 0
        yield CounterMetricFamily("glimpse_edge_signaling_connects",
                                  "WebSocket connections established to the server.",
                                  value=connects)
        yield CounterMetricFamily("glimpse_edge_signaling_reconnects",
                                  "Connections re-established after the first (lost "
                                  "connections that came back).", value=max(connects - 1, 0))
        yield CounterMetricFamily("glimpse_edge_signaling_auth_failures",
                                  "Times the server (or the login API) rejected our credentials.",
                                  value=sig.session.auth_failures if sig else 0)
        yield GaugeMetricFamily("glimpse_edge_signaling_auth_rejected",
                                "1 while the server rejects the device's credentials.",
                                value=1.0 if state == "auth_rejected" else 0.0)
        yield GaugeMetricFamily("glimpse_edge_room_participants",
                                "Other active participants in the room.",
                                value=len(sig.room.participants) if sig else 0)

    def _peers(self) -> Iterator[Metric]:
        sig = self.agent.signaling
        manager = sig.peers if sig else None
        sessions = manager.sessions if manager is not None else {}
        by_state = GaugeMetricFamily("glimpse_edge_peers", "Peer sessions by connection state.",
                                     labels=("state",))
        counts = dict.fromkeys(PEER_STATES, 0)
        for session in sessions.values():
            counts[session.state] = counts.get(session.state, 0) + 1
        for name, n in counts.items():
            by_state.add_metric((name,), n)
        yield by_state
        yield CounterMetricFamily("glimpse_edge_peers_refused",
                                  "Participants refused a session because max_peers was reached.",
                                  value=manager.refused if manager is not None else 0)

        state = GaugeMetricFamily("glimpse_edge_peer_state",
                                  "1 for each peer's current connection state.",
                                  labels=(*_PEER, "state"))
        tier = GaugeMetricFamily("glimpse_edge_peer_tier",
                                 "1 for the tier (and video codec) each peer receives.",
                                 labels=(*_PEER, "tier", "codec"))
        restarts = CounterMetricFamily("glimpse_edge_peer_restarts",
                                       "Connections rebuilt for a peer (ICE restarts: dead "
                                       "path, failure, no answer).", labels=_PEER)
        stats_up = GaugeMetricFamily("glimpse_edge_peer_stats_up",
                                     "1 if the peer's connection answered getStats at the "
                                     "last reading.", labels=_PEER)
        bitrate = GaugeMetricFamily("glimpse_edge_peer_bitrate_bps",
                                    "RTP payload bitrate to the peer, averaged over ~10 s.",
                                    labels=_STREAM)
        sent_bytes = CounterMetricFamily("glimpse_edge_peer_sent_bytes",
                                         "RTP payload bytes sent on the current connection.",
                                         labels=_STREAM)
        sent_packets = CounterMetricFamily("glimpse_edge_peer_sent_packets",
                                           "RTP packets sent on the current connection.",
                                           labels=_STREAM)
        frames = CounterMetricFamily("glimpse_edge_peer_frames_sent",
                                     "Encoded frames handed to the peer's sender on the current "
                                     "connection.", labels=_STREAM)
        dropped = CounterMetricFamily("glimpse_edge_peer_frames_dropped",
                                      "Encoded frames dropped because the peer fell behind.",
                                      labels=_STREAM)
        rtt = GaugeMetricFamily("glimpse_edge_peer_rtt_seconds",
                                "Round-trip time from the peer's receiver reports.",
                                labels=_STREAM)
        loss = GaugeMetricFamily("glimpse_edge_peer_loss_ratio",
                                 "Fraction of packets lost in the peer's latest receiver "
                                 "report (0..1).", labels=_STREAM)
        lost = GaugeMetricFamily("glimpse_edge_peer_packets_lost",
                                 "Packets lost, cumulative, as reported by the peer.",
                                 labels=_STREAM)
        jitter = GaugeMetricFamily("glimpse_edge_peer_jitter_seconds",
                                   "Interarrival jitter reported by the peer.", labels=_STREAM)
        estimate = GaugeMetricFamily("glimpse_edge_peer_estimate_bps",
                                     "Estimated bandwidth of the peer's link (receiver reports "
                                     "and REMB), from video.min_bitrate up to what the top "
                                     "tier needs on the wire; it picks the peer's tier. "
                                     "Absent before the first report.", labels=_PEER)
        latest = self.sampler.latest
        for peer_id, session in sessions.items():
            who = (peer_id, session.participant.username)
            state.add_metric((*who, session.state), 1.0)
            restarts.add_metric(who, session.restarts)
            if (estimate_bps := session.estimate_bps) is not None:
                estimate.add_metric(who, estimate_bps)
            codec = sending_codecs(session).get("video")
            if codec:
                tier.add_metric((*who, session.video_tier or "unknown", codec), 1.0)
            for kind, fan in fanout_counts(session).items():
                frames.add_metric((*who, kind), fan.frames_sent)
                dropped.add_metric((*who, kind), fan.frames_dropped)
            reading = latest.get(peer_id)
            if reading is None:
                continue
            stats_up.add_metric(who, 0.0 if reading.error else 1.0)
            for kind, s in reading.streams.items():
                labels = (*who, kind)
                sent_bytes.add_metric(labels, s.bytes_sent)
                sent_packets.add_metric(labels, s.packets_sent)
                if s.bitrate_bps is not None:
                    bitrate.add_metric(labels, s.bitrate_bps)
                if s.rtt_s is not None:
                    rtt.add_metric(labels, s.rtt_s)
                if s.loss_ratio is not None:
                    loss.add_metric(labels, s.loss_ratio)
                if s.packets_lost is not None:
                    lost.add_metric(labels, s.packets_lost)
                if s.jitter_s is not None:
                    jitter.add_metric(labels, s.jitter_s)
        yield from (state, tier, restarts, estimate, stats_up, bitrate, sent_bytes, sent_packets,
                    frames, dropped, rtt, loss, lost, jitter)

    def _media(self) -> Iterator[Metric]:
        hub = self.agent.hub
        frames = CounterMetricFamily("glimpse_edge_encoder_frames",
                                     "Frames encoded (video) or packets encoded (Opus) by each "
                                     "shared encoder.", labels=_ENCODER)
        keyframes = CounterMetricFamily("glimpse_edge_encoder_keyframes",
                                        "Key frames encoded by each shared video encoder.",
                                        labels=_ENCODER)
        out_bytes = CounterMetricFamily("glimpse_edge_encoder_bytes",
                                        "Bytes produced by each shared video encoder.",
                                        labels=_ENCODER)
        target = GaugeMetricFamily("glimpse_edge_encoder_target_bitrate_bps",
                                   "Target bitrate of each shared video encoder.",
                                   labels=_ENCODER)
        source_up = GaugeMetricFamily("glimpse_edge_source_up",
                                      "1 while the media source runs (not failed or restarting).",
                                      labels=("kind", "source"))
        source_restarts = CounterMetricFamily("glimpse_edge_source_restarts",
                                              "Times the media source was restarted after a "
                                              "failure or stall.", labels=("kind",))
        source_frames = CounterMetricFamily("glimpse_edge_source_frames",
                                            "Raw frames received from the video source.",
                                            labels=("kind",))
        if hub is not None:
            for codec, tier_label, encoder in hub.encoders():
                labels = (codec, tier_label)
                frames.add_metric(labels, encoder.frames_encoded)
                keyframes.add_metric(labels, encoder.keyframes_encoded)
                out_bytes.add_metric(labels, encoder.bytes_encoded)
                target.add_metric(labels, encoder.bitrate)
            audio = hub.audio_stream()
            if audio is not None:
                frames.add_metric(("opus", AUDIO_TIER), audio.published)
            health = self.agent.health.snapshot()
            for kind, configured, name in (
                ("video", hub.video_config.source if hub.has_video else None,
                 hub.video_source_name),
                ("audio", hub.audio_config.source if audio is not None else None,
                 hub.audio_source_name),
            ):
                if configured is None:
                    continue
                task = health.get(f"media.{kind}")
                source_up.add_metric((kind, name or configured),
                                     1.0 if task is not None and task.state == "running" else 0.0)
                source_restarts.add_metric((kind,), task.restarts if task is not None else 0)
            if hub.has_video:
                source_frames.add_metric(("video",), hub.frames_in)
        yield from (frames, keyframes, out_bytes, target, source_up, source_restarts,
                    source_frames)

    def _tasks(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("glimpse_edge_task_up",
                               "1 while the supervised task runs.", labels=("task",))
        restarts = CounterMetricFamily("glimpse_edge_task_restarts",
                                       "Restarts of the supervised task after a crash.",
                                       labels=("task",))
        for name, task in sorted(self.agent.health.snapshot().items()):
            up.add_metric((name,), 1.0 if task.state == "running" else 0.0)
            restarts.add_metric((name,), task.restarts)
        yield from (up, restarts)

    def _runtime(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("glimpse_edge_trio_tasks", "Trio tasks alive.",
                                value=trio_task_count())
        yield GaugeMetricFamily("glimpse_edge_asyncio_tasks",
                                "asyncio tasks alive (aiortc, on the trio-asyncio loop).",
                                value=asyncio_task_count())
