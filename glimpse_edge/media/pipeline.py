"""The video pipeline: one interface for how a source's video reaches the shared streams.

A source gives either raw frames (test pattern, V4L2, a file), which the
agent encodes once per codec and quality tier (:mod:`.framepipe`), or
packets its own encoder made (the Pi camera, :mod:`.camerapipe`), which go
to the streams untouched. :class:`~glimpse_edge.media.hub.MediaHub` holds
one :class:`VideoPipeline` at a time and asks it the same questions either
way (which tiers, which stream for a peer, which encoders run), so nothing
outside the pipelines tells the two cases apart.

What both need is here, once: the stall watch (a source that stops without
failing) and the rate of the lowest tier, which follows the worst link on it.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
import trio
from av.packet import Packet

from ..config import QualityTier, VideoConfig
from .encoder import VideoCodec, VideoEncoder
from .fanout import PacketStream
from .source import AnyVideoSource, EncodedVideoSource, EncodingStats

__all__ = [
    "ADAPT_CHANGE",
    "ADAPT_INTERVAL",
    "ENCODER_IDLE_STOP",
    "LOWEST_FPS",
    "LOW_FRAMERATE_SHARE",
    "VIDEO_QUEUE_PACKETS",
    "EncoderInfo",
    "SourceStalled",
    "VideoPipeline",
    "adapt_lowest_tier",
    "lowest_tier_rate",
    "rate_moves",
    "watch_stall",
]

log = structlog.get_logger(__name__)

# An encoder nobody reads from is stopped after this long.
ENCODER_IDLE_STOP: Final = 10.0
VIDEO_QUEUE_PACKETS: Final = 30  # ~1 s at 30 fps before a slow peer is skipped to a key frame
# The lowest tier keeps its full frame rate down to this share of its bitrate;
# below, frames are skipped in proportion (a sharp picture at 10 fps reads
# better than mush at 30), down to LOWEST_FPS.
LOW_FRAMERATE_SHARE: Final = 0.4
LOWEST_FPS: Final = 5.0
# The lowest tier's encoder follows its peers' demand when it moved by this
# share, at most every ADAPT_INTERVAL seconds.
ADAPT_CHANGE: Final = 0.1
ADAPT_INTERVAL: Final = 1.0

EncoderInfo = tuple[str, str, VideoEncoder | EncodedVideoSource | EncodingStats]
"""(codec, tier label "WxH", the encoder or its counters), as status and metrics show it."""


class SourceStalled(Exception):
    """A source stopped producing without failing."""


class VideoPipeline(abc.ABC):
    """How one kind of source's video reaches the shared streams (see the module doc).

    A pipeline outlives restarts of its source: its streams, and so the peers
    subscribed to them, carry on; :meth:`run` is called once per source
    session. :meth:`close` ends its streams, when a source of the other kind
    takes over (peers then subscribe again, to the new pipeline).
    """

    frames_in: int = 0  # frames (or packets) the source delivered

    @property
    @abc.abstractmethod
    def tiers(self) -> tuple[QualityTier, ...]:
        """The encodings a peer can be put on, best first."""

    @abc.abstractmethod
    def video_stream(self, codec: VideoCodec, tier: int) -> PacketStream | None:
        """The shared stream of ``codec`` at ``tier`` (started if needed); None: no video."""

    @abc.abstractmethod
    def encoders(self) -> list[EncoderInfo]:
        """The running encoders, best tier first."""

    @abc.abstractmethod
    def set_bitrate(self, bitrate: int) -> None:
        """The top tier's bitrate."""

    @property
    @abc.abstractmethod
    def latest_keyframe(self) -> tuple[str, Packet[Any]] | None:
        """The newest key frame of any running stream, as (codec, packet)."""

    @abc.abstractmethod
    async def run(self, source: AnyVideoSource, nursery: trio.Nursery) -> None:
        """Feed the streams from ``source`` until it fails or stalls (raises).

        ``nursery`` (the hub's) hosts tasks that outlive this source session.
        """

    @abc.abstractmethod
    def reconfigure(self, video: VideoConfig, encoders_changed: bool) -> bool:
        """Take new settings (``encoders_changed``: an encoder setting changed);
        True if the source must restart to take them."""

    @abc.abstractmethod
    def close(self) -> None:
        """End every stream of this pipeline (its peers subscribe again)."""


async def watch_stall(last_at: Callable[[], float], timeout: float, kind: str) -> None:
    """Raise :class:`SourceStalled` once ``last_at()`` is more than ``timeout`` s ago."""
    while True:
        await trio.sleep(timeout / 3)
        silent = time.monotonic() - last_at()
        if silent > timeout:
            log.error("media.source.stalled", kind=kind, silent_s=round(silent, 1))
            raise SourceStalled(f"{kind} source produced nothing for {silent:.1f} s")


# ------------------------------------------------------------ the lowest tier


def lowest_tier_rate(tier: QualityTier, framerate: int, min_bitrate: int,
                     demand_bps: int | None) -> tuple[int, float | None]:
    """(bitrate, frame-rate limit) for the lowest tier given its worst peer's demand.

    Full frame rate while the demand is at least ``LOW_FRAMERATE_SHARE`` of
    the tier's bitrate; below that the frame rate drops with the demand, so
    each frame keeps the bits it had at that share.
    """
    if demand_bps is None:
        return tier.bitrate, None
    bitrate = min(max(demand_bps, min_bitrate), tier.bitrate)
    knee = tier.bitrate * LOW_FRAMERATE_SHARE
    if bitrate >= knee:
        return bitrate, None
    return bitrate, max(framerate * bitrate / knee, min(LOWEST_FPS, float(framerate)))


def rate_moves(current: tuple[int, float | None], new: tuple[int, float | None],
               bounds: tuple[int, int]) -> tuple[bool, bool]:
    """Whether the lowest tier's (bitrate, frame-rate limit) should move to ``new``:
    (bitrate, frame rate). Changes under ``ADAPT_CHANGE`` are not worth an
    encoder change, except to reach one of the ``bounds`` (min, tier bitrate)."""
    (bitrate, fps), (now_bitrate, now_fps) = new, current
    moved = abs(bitrate - now_bitrate) >= ADAPT_CHANGE * now_bitrate or (
        bitrate != now_bitrate and bitrate in bounds)
    fps_moved = (fps is None) != (now_fps is None) or (
        fps is not None and now_fps is not None and abs(fps - now_fps) >= ADAPT_CHANGE * now_fps)
    return moved, fps_moved


@dataclass(frozen=True)
class RateMove:
    """A new rate for the lowest tier, and which of its two parts changed."""

    bitrate: int
    max_fps: float | None
    bitrate_moved: bool
    fps_moved: bool


def adapt_lowest_tier(stream: PacketStream, spec: QualityTier, video: VideoConfig,
                      current: tuple[int, float | None]) -> RateMove | None:
    """The lowest tier's next (bitrate, frame rate) from the worst link on ``stream``.

    Higher tiers keep their configured rate: a peer that cannot carry one
    moves down instead. None when the change is too small to be worth an
    encoder change (a VP8 encoder is rebuilt for a new rate, a Pi camera's
    restarted: each costs a key frame). Logged as ``media.tier.adapted``.
    """
    demand = stream.lowest_demand()
    bitrate, fps = lowest_tier_rate(spec, video.framerate, video.min_bitrate, demand)
    moved, fps_moved = rate_moves(current, (bitrate, fps), (video.min_bitrate, spec.bitrate))
    if not (moved or fps_moved):
        return None
    log.info("media.tier.adapted", stream=stream.name, bitrate=bitrate,
             max_fps=None if fps is None else round(fps, 1), demand_bps=demand)
    return RateMove(bitrate, fps, moved, fps_moved)
