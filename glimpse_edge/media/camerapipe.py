"""A camera's own encoded video to the shared streams, untouched.

An :class:`~glimpse_edge.media.source.EncodedVideoSource` (the Raspberry Pi
camera's hardware H.264) delivers packets instead of frames: they go
straight to the shared stream of its codec, with no decode and no re-encode,
and key frame and bitrate requests go to the source. A lower tier is a
second stream the source encodes itself (the Pi camera's lores stream),
opened on the source when its first peer comes and closed when the last one
has gone for ``ENCODER_IDLE_STOP``; the lowest follows the worst link on it
like the agent's own (:mod:`.pipeline`). Peers that negotiated another codec
get no video from it (see docs/decisions.md, "Raspberry Pi camera").

The streams outlive restarts of the source, so peers stay subscribed across
them; the source begins every encoder start with SPS/PPS and an IDR, where
their decoders pick up again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
import trio
from av.packet import Packet

from ..config import QualityTier, VideoConfig
from ..supervise import raise_sole
from .encoder import VideoCodec
from .fanout import PacketStream
from .pipeline import (
    ADAPT_INTERVAL,
    ENCODER_IDLE_STOP,
    VIDEO_QUEUE_PACKETS,
    EncoderInfo,
    LowestRate,
    VideoPipeline,
    adapt_lowest_tier,
    watch_stall,
)
from .source import AnyVideoSource, EncodedVideoSource

__all__ = ["CameraPipeline"]

log = structlog.get_logger(__name__)


@dataclass
class _LowerTier:
    """A lower tier's stream, fed by the source's own second encoder."""

    stream: PacketStream
    tier: int
    spec: QualityTier
    rate: LowestRate | None = None  # last asked of the source (its size is fixed: scale 1)
    idle_since: float | None = None


class CameraPipeline(VideoPipeline):
    """Packets of an encoded source, published as they come."""

    def __init__(self, video: VideoConfig, source: EncodedVideoSource,
                 stall_timeout: float) -> None:
        self.video = video
        self.source = source
        self.stall_timeout = stall_timeout
        self._stream = PacketStream("video", source.codec, VIDEO_QUEUE_PACKETS)
        self._lower: dict[int, _LowerTier] = {}
        self._last_packet_at = 0.0
        self.frames_in = 0

    # -- for peers ----------------------------------------------------------

    @property
    def tiers(self) -> tuple[QualityTier, ...]:
        return self.source.tiers

    @property
    def latest_keyframe(self) -> tuple[str, Packet[Any]] | None:
        if self._stream.last_keyframe is not None:
            return self.source.codec, self._stream.last_keyframe
        return None

    def video_stream(self, codec: VideoCodec, tier: int) -> PacketStream | None:
        """The stream the source feeds, if it is of ``codec``; else no video.

        Decoding the camera's H.264 to encode VP8 would spend the CPU that the
        hardware encoder saves, so a peer that negotiated VP8 gets no video.
        """
        source = self.source
        if codec != source.codec:
            log.warning("media.video.codec_refused", codec=codec, source=source.name,
                        available=source.codec, detail=f"this camera sends {source.codec} "
                        f"only; a peer that cannot decode it gets no video")
            return None
        tier = min(max(tier, 0), len(source.tiers) - 1)
        if tier == 0:
            return self._stream
        lower = self._lower.get(tier)
        if lower is None:
            spec = source.tiers[tier]
            stream = PacketStream("video", f"{codec}/{spec.width}x{spec.height}",
                                  VIDEO_QUEUE_PACKETS)
            lower = self._lower[tier] = _LowerTier(stream, tier, spec)
            self._open_tier(lower)
            log.info("media.tier.started", codec=codec, tier=tier, width=spec.width,
                     height=spec.height, bitrate=spec.bitrate, source=source.name)
        return lower.stream

    def encoders(self) -> list[EncoderInfo]:
        """The source (its top tier) and every lower tier it runs, as status shows them."""
        source = self.source
        lower: list[EncoderInfo] = [
            (source.codec, f"{stats.width}x{stats.height}", stats)
            for tier in sorted(self._lower)
            if (stats := source.tier_stats(tier)) is not None]
        return [(source.codec, f"{source.width}x{source.height}", source), *lower]

    def set_bitrate(self, bitrate: int) -> None:
        self.source.set_bitrate(bitrate)

    # -- running ------------------------------------------------------------

    async def run(self, source: AnyVideoSource, nursery: trio.Nursery) -> None:
        assert isinstance(source, EncodedVideoSource)
        self.source = source
        self._stream.on_need_keyframe = source.request_keyframe
        # Lower tiers that peers are on carry on, from this source if it has
        # them; else their peers subscribe again and land on what there is.
        for lower in list(self._lower.values()):
            if lower.tier < len(source.tiers) and source.tiers[lower.tier] == lower.spec:
                self._open_tier(lower)
            else:
                self._close_tier(lower, "tiers changed")
        self._last_packet_at = time.monotonic()
        timeout = source.stall_timeout or self.stall_timeout
        try:
            async with trio.open_nursery() as inner:
                inner.start_soon(source.run, self._on_packet)
                if len(source.tiers) > 1:
                    inner.start_soon(self._upkeep, source)
                # the last resort: the source watches itself first
                await watch_stall(lambda: self._last_packet_at, timeout, "video")
        except BaseExceptionGroup as group:
            raise_sole(group)

    def _on_packet(self, packet: Packet[Any]) -> None:
        self.frames_in += 1
        self._last_packet_at = time.monotonic()
        self._stream.publish(packet)

    def reconfigure(self, video: VideoConfig, encoders_changed: bool) -> bool:
        """A camera's encoder takes its settings when it starts: restart the source."""
        self.video = video
        return encoders_changed

    def close(self) -> None:
        """Back to raw frames: peers on these streams must subscribe again."""
        for lower in list(self._lower.values()):
            self._close_tier(lower, "source changed")
        self._stream.close()

    def _open_tier(self, lower: _LowerTier) -> None:
        lower.stream.on_need_keyframe = partial(self.source.request_keyframe, tier=lower.tier)
        lower.rate = None
        self.source.open_tier(lower.tier, lower.stream.publish)

    def _close_tier(self, lower: _LowerTier, reason: str) -> None:
        if self._lower.get(lower.tier) is lower:
            del self._lower[lower.tier]
        lower.stream.close()
        self.source.close_tier(lower.tier)
        log.info("media.encoder.stopped", codec=self.source.codec, tier=lower.tier,
                 reason=reason)

    async def _upkeep(self, source: EncodedVideoSource) -> None:
        """Every ``ADAPT_INTERVAL``: stop lower tiers nobody is on, and fit the lowest
        one to the worst link on it."""
        while True:
            await trio.sleep(ADAPT_INTERVAL)
            now = time.monotonic()
            tiers = source.tiers
            for lower in list(self._lower.values()):
                if not lower.stream.subscribers:
                    lower.idle_since = lower.idle_since or now
                    if now - lower.idle_since > ENCODER_IDLE_STOP:
                        self._close_tier(lower, "no peers")
                    continue
                lower.idle_since = None
                if lower.tier != len(tiers) - 1:
                    continue
                # the lores stream's size is fixed when the camera is configured:
                # a slower link skips frames (one scale)
                move = adapt_lowest_tier(lower.stream, lower.spec, self.video,
                                         lower.rate or LowestRate(lower.spec.bitrate))
                if move is not None:
                    lower.rate = move.rate
                    source.set_tier_rate(lower.tier, move.rate.bitrate, move.rate.max_fps)
