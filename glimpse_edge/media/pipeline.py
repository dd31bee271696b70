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
from .encoder import FALL_AT_ONCE, VideoCodec, VideoEncoder
from .fanout import PacketStream
from .source import AnyVideoSource, EncodedVideoSource, EncodingStats

__all__ = [
    "ADAPT_CHANGE",
    "ADAPT_INTERVAL",
    "ENCODER_IDLE_STOP",
    "LOWEST_FPS",
    "LOW_FRAMERATE_SHARE",
    "SCALE_UP_MARGIN",
    "TIER_SCALES",
    "VIDEO_QUEUE_PACKETS",
    "EncoderInfo",
    "LowestRate",
    "SourceStalled",
    "VideoPipeline",
    "adapt_due",
    "adapt_lowest_tier",
    "lowest_tier_rate",
    "rate_moves",
    "scaled_size",
    "watch_stall",
]

log = structlog.get_logger(__name__)

# An encoder nobody reads from is stopped after this long.
ENCODER_IDLE_STOP: Final = 10.0
VIDEO_QUEUE_PACKETS: Final = 30  # ~1 s at 30 fps before a slow peer is skipped to a key frame
# The lowest tier keeps its full size and frame rate down to this share of its
# bitrate (the knee). Below it a tier that can be resized is encoded smaller,
# a step of TIER_SCALES at a time, each step at the bits per pixel and frame
# of the knee; below the smallest size (or on a tier that cannot be resized,
# the Pi camera's lores stream) frames are skipped in proportion (a sharp
# picture at 10 fps reads better than mush at 30), down to LOWEST_FPS.
LOW_FRAMERATE_SHARE: Final = 0.4
LOWEST_FPS: Final = 5.0
# The lowest tier's sizes, as shares of its width and height, largest first.
TIER_SCALES: Final = (1.0, 0.75, 0.5)
# A step back up needs this much more than the step's own threshold: a rate
# swinging around a threshold would otherwise resize (and key-frame) each time.
SCALE_UP_MARGIN: Final = 1.2
# The lowest tier's encoder follows its peers' demand when it moved by this
# share, at most every ADAPT_INTERVAL seconds.
ADAPT_CHANGE: Final = 0.1
ADAPT_INTERVAL: Final = 1.0
# ... but a demand under FALL_AT_ONCE (encoder.py) of its rate at once: a peer
# that moved down to it at a congestion's onset cannot carry the rate it runs
# at, and each key frame at that rate (the tier's first, a PLI's) is lost in
# the full queue (scenario f: the third viewer moved down 0.3 s after the last
# adaptation, and the tier sent 3 x 490 kbit/s into a 1 Mbit/s uplink for
# another 0.7 s before it followed).

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


@dataclass(frozen=True)
class LowestRate:
    """What the lowest tier is encoded at: bitrate, size (a share of the tier's
    width and height) and frame-rate limit (None: the source's)."""

    bitrate: int
    scale: float = 1.0
    max_fps: float | None = None


def scaled_size(tier: QualityTier, scale: float) -> tuple[int, int]:
    """The tier's width and height times ``scale``, even (4:2:0 chroma halves both)."""
    return (max(2, round(tier.width * scale / 2) * 2), max(2, round(tier.height * scale / 2) * 2))


def lowest_tier_rate(tier: QualityTier, framerate: int, min_bitrate: int,
                     demand_bps: int | None, scales: tuple[float, ...] = (1.0,),
                     scale_now: float = 1.0) -> LowestRate:
    """The lowest tier's rate, size and frame-rate limit for its worst peer's demand.

    Full size and frame rate while the demand is at least
    ``LOW_FRAMERATE_SHARE`` of the tier's bitrate (the knee). Below it, the
    largest of ``scales`` whose pixels get the knee's bits per pixel and
    frame (a step above ``scale_now`` needs ``SCALE_UP_MARGIN`` more); below
    the smallest, the frame rate drops with the demand, so each frame keeps
    the bits it had there. Chromium does the same under a capped uplink: at
    300 kbit/s it sends 480x270 at 30 fps, where frames skipped alone gave
    ~24 fps at 640x360 (docs/decisions.md, "The lowest tier follows").
    """
    if demand_bps is None:
        return LowestRate(tier.bitrate)
    bitrate = min(max(demand_bps, min_bitrate), tier.bitrate)
    knee = tier.bitrate * LOW_FRAMERATE_SHARE
    for scale in scales:
        needs = knee * scale * scale * (SCALE_UP_MARGIN if scale > scale_now else 1.0)
        if bitrate >= needs:
            return LowestRate(bitrate, scale)
    smallest = scales[-1]
    fps = framerate * bitrate / (knee * smallest * smallest)
    return LowestRate(bitrate, smallest, max(fps, min(LOWEST_FPS, float(framerate))))


def rate_moves(current: LowestRate, new: LowestRate,
               bounds: tuple[int, int]) -> tuple[bool, bool]:
    """Whether the lowest tier's bitrate, and its size or frame rate, should move to
    ``new``. Changes under ``ADAPT_CHANGE`` are not worth an encoder change,
    except to reach one of the ``bounds`` (min, tier bitrate)."""
    bitrate, now_bitrate = new.bitrate, current.bitrate
    fps, now_fps = new.max_fps, current.max_fps
    moved = abs(bitrate - now_bitrate) >= ADAPT_CHANGE * now_bitrate or (
        bitrate != now_bitrate and bitrate in bounds)
    shape_moved = new.scale != current.scale or (fps is None) != (now_fps is None) or (
        fps is not None and now_fps is not None and abs(fps - now_fps) >= ADAPT_CHANGE * now_fps)
    return moved, shape_moved


@dataclass(frozen=True)
class RateMove:
    """A new rate for the lowest tier, and which of its parts changed."""

    rate: LowestRate
    bitrate_moved: bool
    shape_moved: bool  # its size or frame rate


def adapt_due(since_adapted: float, demand_bps: int | None, bitrate: int,
              min_bitrate: int) -> bool:
    """Whether the lowest tier, at ``bitrate`` and adapted ``since_adapted`` s ago,
    should follow its worst peer's ``demand_bps`` now: every ``ADAPT_INTERVAL``,
    or at once when that demand fell under ``FALL_AT_ONCE`` of its rate."""
    if since_adapted >= ADAPT_INTERVAL:
        return True
    return demand_bps is not None and max(demand_bps, min_bitrate) < FALL_AT_ONCE * bitrate


def adapt_lowest_tier(stream: PacketStream, spec: QualityTier, video: VideoConfig,
                      current: LowestRate, scales: tuple[float, ...] = (1.0,)) -> RateMove | None:
    """The lowest tier's next rate, size and frame rate from the worst link on ``stream``
    (``scales``: the sizes it can be encoded at, :func:`lowest_tier_rate`).

    Higher tiers keep their configured rate: a peer that cannot carry one
    moves down instead. None when the change is too small to be worth an
    encoder change (a VP8 encoder is rebuilt for a new rate, a Pi camera's
    restarted: each costs a key frame). Logged as ``media.tier.adapted``.
    """
    demand = stream.lowest_demand()
    rate = lowest_tier_rate(spec, video.framerate, video.min_bitrate, demand, scales,
                            current.scale)
    moved, shape_moved = rate_moves(current, rate, (video.min_bitrate, spec.bitrate))
    if not (moved or shape_moved):
        return None
    width, height = scaled_size(spec, rate.scale)
    log.info("media.tier.adapted", stream=stream.name, bitrate=rate.bitrate,
             width=width, height=height,
             max_fps=None if rate.max_fps is None else round(rate.max_fps, 1), demand_bps=demand)
    return RateMove(rate, moved, shape_moved)
