"""Prometheus metrics, read from the live agent at scrape time.

The collector keeps no counters of its own: every scrape takes one reading
of the agent (:func:`.state.read_state`, the same one /status renders) and
turns it into metric families. The numbers already exist (the session
counts its connections, encoders their frames, the health registry its
restarts, aiortc its bytes), and a series whose object is gone simply stops
being emitted. That is what keeps per-peer labels from leaking: a peer that
left is absent from the very next scrape, with no cleanup code to forget.

Per-peer transport numbers come from :class:`~.peerstats.PeerStatsSampler`,
which the HTTP handler refreshes (asynchronously, with a timeout) before the
synchronous ``collect`` runs. Process CPU, memory and file descriptors come
from prometheus_client's standard ``process_*`` collector.

All names start with ``glimpse_edge_``; counters end in ``_total``, and units
are seconds, bytes and bits per second as Prometheus conventions ask.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from ..publish.state import PUBLISH_PHASES
from .peerstats import PeerStatsSampler
from .state import AUDIO_TIER, AgentState, read_state
from .view import AgentView

__all__ = ["AUDIO_TIER", "PEER_STATES", "SIGNALING_STATES", "AgentCollector", "build_registry",
           "families"]

# Every state is always emitted (0 or 1), so a dashboard can tell "none" from "no data".
SIGNALING_STATES = ("starting", "connecting", "joining", "joined", "reconnecting",
                    "auth_rejected")
PEER_STATES = ("idle", "offering", "negotiated", "connected", "closed")

_PEER = ("peer", "username")
_STREAM = ("peer", "username", "kind")
_ENCODER = ("codec", "tier")


def build_registry(agent: AgentView, sampler: PeerStatsSampler) -> CollectorRegistry:
    """A registry of its own (not the global one): the agent's collector + process_*."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent, sampler))
    ProcessCollector(registry=registry)
    return registry


class AgentCollector:
    """Everything about one agent, as metric families, built fresh per scrape."""

    def __init__(self, agent: AgentView, sampler: PeerStatsSampler) -> None:
        self.agent = agent
        self.sampler = sampler

    def collect(self) -> Iterator[Metric]:
        yield from families(read_state(self.agent, self.sampler.latest))


def families(state: AgentState) -> Iterator[Metric]:
    """One reading of the agent as metric families."""
    yield from _agent(state)
    yield from _signaling(state)
    yield from _peers(state)
    yield from _publish(state)
    yield from _media(state)
    yield from _tasks(state)
    yield from _runtime(state)


def _agent(agent: AgentState) -> Iterator[Metric]:
    info = InfoMetricFamily("glimpse_edge", "The agent's version and room.",
                            labels=("version", "room"))
    info.add_metric((agent.version, agent.config_room), {})
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


def _signaling(agent: AgentState) -> Iterator[Metric]:
    sig = agent.signaling
    state = sig.state
    states = GaugeMetricFamily("glimpse_edge_signaling_state",
                               "1 for the signaling session's current state.",
                               labels=("state",))
    for name in (*SIGNALING_STATES, *(() if state in SIGNALING_STATES else (state,))):
        states.add_metric((name,), 1.0 if name == state else 0.0)
    yield states
    connects = sig.connects
    yield CounterMetricFamily("glimpse_edge_signaling_connects",
                              "WebSocket connections established to the server.",
                              value=connects)
    yield CounterMetricFamily("glimpse_edge_signaling_reconnects",
                              "Connections re-established after the first (lost "
                              "connections that came back).", value=max(connects - 1, 0))
    yield CounterMetricFamily("glimpse_edge_signaling_auth_failures",
                              "Times the server (or the login API) rejected our credentials.",
                              value=sig.auth_failures)
    yield GaugeMetricFamily("glimpse_edge_signaling_auth_rejected",
                            "1 while the server rejects the device's credentials.",
                            value=1.0 if state == "auth_rejected" else 0.0)
    yield GaugeMetricFamily("glimpse_edge_room_participants",
                            "Other active participants in the room.",
                            value=len(agent.room.participants))


def _peers(agent: AgentState) -> Iterator[Metric]:
    by_state = GaugeMetricFamily("glimpse_edge_peers", "Peer sessions by connection state.",
                                 labels=("state",))
    counts = dict.fromkeys(PEER_STATES, 0)
    for peer in agent.peers:
        counts[peer.state] = counts.get(peer.state, 0) + 1
    for name, n in counts.items():
        by_state.add_metric((name,), n)
    yield by_state
    yield CounterMetricFamily("glimpse_edge_peers_refused",
                              "Participants refused a session because max_peers was reached.",
                              value=agent.peers_refused)
    uplink = agent.uplink
    if uplink is not None:
        if uplink.estimate_bps is not None:
            yield GaugeMetricFamily("glimpse_edge_uplink_estimate_bps",
                                    "The device's upload as the peers' reports show it "
                                    "together, shared out over them (absent: no shared "
                                    "bottleneck seen lately).", value=uplink.estimate_bps)
        yield GaugeMetricFamily("glimpse_edge_uplink_congested",
                                "1 while the peers see a shared bottleneck (the uplink).",
                                value=1.0 if uplink.congested else 0.0)
        yield CounterMetricFamily("glimpse_edge_uplink_congestion_episodes",
                                  "Times a shared bottleneck was detected.",
                                  value=uplink.episodes)
        yield GaugeMetricFamily("glimpse_edge_uplink_sent_bps",
                                "What the agent sends all peers, on the wire, as of their "
                                "latest reports.", value=uplink.sent_bps)
        probes = CounterMetricFamily("glimpse_edge_uplink_probes",
                                     "Probes of a limited uplink (padding past the link it "
                                     "knows), by whether it carried the padding.",
                                     labels=("result",))
        probes.add_metric(("carried",), uplink.probes_passed)
        probes.add_metric(("not_carried",), uplink.probes - uplink.probes_passed)
        yield probes
        yield CounterMetricFamily("glimpse_edge_uplink_grown",
                                  "Times the limited uplink was found grown (a cap lifted) "
                                  "and its estimate jumped.", value=uplink.grown)

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
    keyframe_requests = CounterMetricFamily(
        "glimpse_edge_peer_keyframe_requests",
        "Key frames the peer asked for (PLI, FIR), over all its connections.", labels=_PEER)
    keyframe_coalesced = CounterMetricFamily(
        "glimpse_edge_peer_keyframe_requests_coalesced",
        "Key-frame requests answered by a key frame already on its way (no new IDR).",
        labels=_PEER)
    pacer_rate = GaugeMetricFamily("glimpse_edge_peer_pacer_rate_bps",
                                   "Rate the peer's video is paced at (2.5 x its target).",
                                   labels=_PEER)
    pacer_delay = GaugeMetricFamily("glimpse_edge_peer_pacer_queue_delay_seconds",
                                    "How long a video packet handed to the pacer now would "
                                    "wait.", labels=_PEER)
    pacer_wait_avg = GaugeMetricFamily("glimpse_edge_peer_pacer_wait_avg_seconds",
                                       "Running average of a video packet's wait in the "
                                       "pacer.", labels=_PEER)
    pacer_packets = CounterMetricFamily("glimpse_edge_peer_pacer_packets",
                                        "New video packets through the pacer on the current "
                                        "connection.", labels=_PEER)
    pacer_delayed = CounterMetricFamily("glimpse_edge_peer_pacer_delayed_packets",
                                        "... of which waited.", labels=_PEER)
    pacer_wait = CounterMetricFamily("glimpse_edge_peer_pacer_wait_seconds",
                                     "Total time video packets waited in the pacer.",
                                     labels=_PEER)
    pacer_rtx = CounterMetricFamily("glimpse_edge_peer_pacer_retransmissions",
                                    "NACKed packets resent (sent at once, charged to the "
                                    "pacer).", labels=_PEER)
    pacer_skipped = CounterMetricFamily("glimpse_edge_peer_pacer_resends_skipped",
                                        "NACKed packets not resent: again within a round "
                                        "trip, or over the resend budget.", labels=_PEER)
    pacer_repaired = CounterMetricFamily("glimpse_edge_peer_pacer_repaired",
                                         "Resends the receiver's reports showed lost (or "
                                         "skipped over budget), sent again.", labels=_PEER)
    pacer_filled = CounterMetricFamily("glimpse_edge_peer_pacer_repair_filled",
                                       "Lost resends of frames older than the last key frame, "
                                       "answered with a filler packet.", labels=_PEER)
    pacer_expired = CounterMetricFamily("glimpse_edge_peer_pacer_repair_expired",
                                        "Lost resends no longer in the sender's history.",
                                        labels=_PEER)
    pacer_restarted = CounterMetricFamily(
        "glimpse_edge_peer_pacer_receiver_restarts",
        "Key frames sent after a skip of sequence numbers, to restart a receiver stuck "
        "behind old holes.", labels=_PEER)
    pacer_padding = CounterMetricFamily(
        "glimpse_edge_peer_pacer_padding_bytes",
        "Bytes of padding sent while the uplink probed (resends of recent packets).",
        labels=_PEER)
    pacing: tuple[GaugeMetricFamily | CounterMetricFamily, ...] = (
        pacer_rate, pacer_delay, pacer_wait_avg, pacer_packets, pacer_delayed,
        pacer_wait, pacer_rtx, pacer_skipped, pacer_repaired, pacer_filled, pacer_expired,
        pacer_restarted, pacer_padding)
    for peer in agent.peers:
        who = (peer.peer_id, peer.username)
        state.add_metric((*who, peer.state), 1.0)
        keyframe_requests.add_metric(who, peer.keyframe_requests)
        keyframe_coalesced.add_metric(who, peer.keyframe_requests_coalesced)
        if (pace := peer.pacing) is not None:
            for family, value in zip(pacing, (
                pace.rate_bps, pace.queue_delay_s, pace.wait_avg_s, pace.packets,
                pace.delayed, pace.wait_s, pace.retransmissions, pace.resends_skipped,
                pace.repaired, pace.repair_filled, pace.repair_expired,
                pace.receiver_restarts, pace.padding_bytes), strict=True):
                family.add_metric(who, value)
        restarts.add_metric(who, peer.restarts)
        if peer.estimate_bps is not None:
            estimate.add_metric(who, peer.estimate_bps)
        codec = peer.codecs.get("video")
        if codec:
            tier.add_metric((*who, peer.video_tier or "unknown", codec), 1.0)
        for kind, fan in peer.fanout.items():
            frames.add_metric((*who, kind), fan.frames_sent)
            dropped.add_metric((*who, kind), fan.frames_dropped)
        reading = peer.stats
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
                frames, dropped, rtt, loss, lost, jitter, keyframe_requests,
                keyframe_coalesced, *pacing)


def _publish(agent: AgentState) -> Iterator[Metric]:
    """The WHIP publisher's session (nothing while [publish] is unset)."""
    pub = agent.publish
    if pub is None:
        return
    state = GaugeMetricFamily("glimpse_edge_publish_state",
                              "The WHIP session's state (1 for the current one).",
                              labels=("state", "url"))
    for phase in PUBLISH_PHASES:
        state.add_metric((phase, pub.url), 1.0 if phase == pub.state else 0.0)
    yield state
    if pub.bitrate_bps is not None:
        yield GaugeMetricFamily("glimpse_edge_publish_sent_bps",
                                "What the WHIP session sends (video and audio payload).",
                                value=pub.bitrate_bps)
    if pub.estimate_bps is not None:
        yield GaugeMetricFamily("glimpse_edge_publish_estimate_bps",
                                "The path to the SFU as its RTCP (REMB, reports) shows it.",
                                value=pub.estimate_bps)
    if pub.rtt_ms is not None:
        yield GaugeMetricFamily("glimpse_edge_publish_rtt_seconds",
                                "Round trip to the SFU (its receiver reports).",
                                value=pub.rtt_ms / 1000)
    yield CounterMetricFamily("glimpse_edge_publish_reconnects",
                              "WHIP sessions started again after a failure or a reload.",
                              value=pub.reconnects)
    yield CounterMetricFamily("glimpse_edge_publish_sessions",
                              "WHIP sessions the server accepted (201 Created).",
                              value=pub.sessions)


def _media(agent: AgentState) -> Iterator[Metric]:
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
    for encoder in agent.encoders:
        labels = (encoder.codec, encoder.tier)
        frames.add_metric(labels, encoder.frames)
        keyframes.add_metric(labels, encoder.keyframes)
        out_bytes.add_metric(labels, encoder.bytes)
        target.add_metric(labels, encoder.target_bitrate_bps)
    if agent.audio_encoder is not None:
        frames.add_metric(("opus", AUDIO_TIER), agent.audio_encoder.frames)
    for source in agent.sources:
        if not source.on:
            continue
        task = source.task
        source_up.add_metric((source.kind, source.name or source.setting),
                             1.0 if task is not None and task.state == "running" else 0.0)
        source_restarts.add_metric((source.kind,), task.restarts if task is not None else 0)
        if source.kind == "video" and source.frames is not None:
            source_frames.add_metric(("video",), source.frames)
    yield from (frames, keyframes, out_bytes, target, source_up, source_restarts,
                source_frames)


def _tasks(agent: AgentState) -> Iterator[Metric]:
    up = GaugeMetricFamily("glimpse_edge_task_up",
                           "1 while the supervised task runs.", labels=("task",))
    restarts = CounterMetricFamily("glimpse_edge_task_restarts",
                                   "Restarts of the supervised task after a crash.",
                                   labels=("task",))
    for task in sorted(agent.tasks, key=lambda t: t.name):
        up.add_metric((task.name,), 1.0 if task.state == "running" else 0.0)
        restarts.add_metric((task.name,), task.restarts)
    yield from (up, restarts)


def _runtime(agent: AgentState) -> Iterator[Metric]:
    yield GaugeMetricFamily("glimpse_edge_trio_tasks", "Trio tasks alive.",
                            value=agent.resources["trio_tasks"])
    yield GaugeMetricFamily("glimpse_edge_asyncio_tasks",
                            "asyncio tasks alive (aiortc, on the trio-asyncio loop).",
                            value=agent.resources["asyncio_tasks"])
