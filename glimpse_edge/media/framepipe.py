"""Raw frames to shared encodings: one encoder per codec and quality tier, not per peer.

A source task pushes frames into a one-slot mailbox ("latest frame wins", so
a slow encoder skips frames instead of adding latency); one encode loop per
negotiated codec takes the newest frame, encodes it for every running tier
in worker threads and publishes the packets to each tier's
:class:`PacketStream`. A tier's encoder starts when the first peer needs it
and stops when nobody has read it for ``ENCODER_IDLE_STOP`` seconds. The
lowest tier follows the worst link among its peers (:mod:`.pipeline`).

With ``video.encode = "per-peer"`` nothing is shared: each peer subscribes
to the raw frames (:meth:`FramePipeline.subscribe_frames`, the same
latest-frame-wins rule) and aiortc encodes for every sender itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import av
import structlog
import trio
from av.packet import Packet
from av.video.frame import PictureType

from ..config import QualityTier, VideoConfig
from ..supervise import raise_sole
from .encoder import VideoCodec, VideoEncoder
from .fanout import FrameSlot, PacketStream
from .pipeline import (
    ENCODER_IDLE_STOP,
    TIER_SCALES,
    VIDEO_QUEUE_PACKETS,
    EncoderInfo,
    LowestRate,
    VideoPipeline,
    adapt_due,
    adapt_lowest_tier,
    scaled_size,
    watch_stall,
)
from .source import AnyVideoSource, EncodedVideoSource

__all__ = ["FramePipeline"]

log = structlog.get_logger(__name__)


@dataclass
class _VideoEncoding:
    encoder: VideoEncoder
    stream: PacketStream
    tier: int = 0
    adapted_at: float = 0.0
    idle_since: float | None = None
    scale: float = 1.0  # the lowest tier's size, as a share of its own (pipeline.TIER_SCALES)


def _preset(tier: int) -> str | None:
    """libx264 preset for a tier: lower tiers exist to be cheap, on the wire and on
    the CPU (640x360 measured: superfast 25 ms of CPU per second, veryfast 45 to 65)."""
    return None if tier == 0 else "superfast"


class FramePipeline(VideoPipeline):
    """Frames from a source, encoded once per (codec, tier) for every peer."""

    def __init__(self, video: VideoConfig, nursery: trio.Nursery, stall_timeout: float) -> None:
        self.video = video
        self._nursery = nursery
        self.stall_timeout = stall_timeout
        self._encodings: dict[tuple[VideoCodec, int], _VideoEncoding] = {}
        self._encode_scopes: dict[VideoCodec, trio.CancelScope] = {}  # one loop per codec
        self._frame: av.VideoFrame | None = None
        self._frame_seq = 0
        self._frame_event = trio.Event()
        self._frame_slots: list[FrameSlot] = []
        self._last_frame_at = 0.0
        self.frames_in = 0

    # -- for peers ----------------------------------------------------------

    @property
    def tiers(self) -> tuple[QualityTier, ...]:
        return self.video.quality_tiers()

    @property
    def latest_frame(self) -> av.VideoFrame | None:
        return self._frame

    @property
    def latest_keyframe(self) -> tuple[str, Packet[Any]] | None:
        for (codec, _tier), enc in sorted(self._encodings.items()):
            if enc.stream.last_keyframe is not None:
                return codec, enc.stream.last_keyframe
        return None

    def video_stream(self, codec: VideoCodec, tier: int) -> PacketStream | None:
        tiers = self.tiers
        tier = min(max(tier, 0), len(tiers) - 1)
        enc = self._encodings.get((codec, tier))
        if enc is None:
            cfg, spec = self.video, tiers[tier]
            encoder = VideoEncoder(codec, spec.width, spec.height, cfg.framerate,
                                   spec.bitrate, cfg.keyframe_interval, _preset(tier))
            name = codec if tier == 0 else f"{codec}/{spec.width}x{spec.height}"
            stream = PacketStream("video", name, VIDEO_QUEUE_PACKETS)
            stream.on_need_keyframe = encoder.request_keyframe
            enc = _VideoEncoding(encoder, stream, tier)
            self._encodings[(codec, tier)] = enc
            log.info("media.tier.started", codec=codec, tier=tier, width=spec.width,
                     height=spec.height, bitrate=spec.bitrate)
            if codec not in self._encode_scopes:
                self._encode_scopes[codec] = trio.CancelScope()  # taken by the loop
                self._nursery.start_soon(self._encode_loop, codec)
        return enc.stream

    def subscribe_frames(self, name: str = "") -> FrameSlot:
        """Raw frames for one reader, newest only; close the slot to unsubscribe.

        The slot starts with the current frame, if any, so a new sender need
        not wait a frame interval for its first picture.
        """
        slot = FrameSlot(name)
        self._frame_slots.append(slot)
        if self._frame is not None:
            slot.put(self._frame)
        return slot

    def encoders(self) -> list[EncoderInfo]:
        # labelled by the tier's own size: the lowest tier's scaled size is the
        # encoder's width and height
        tiers = self.video.quality_tiers()
        return [(codec, f"{spec.width}x{spec.height}", enc.encoder)
                for (codec, tier), enc in sorted(self._encodings.items())
                for spec in (tiers[min(tier, len(tiers) - 1)],)]

    def set_bitrate(self, bitrate: int) -> None:
        for (_codec, tier), enc in self._encodings.items():
            if tier == 0:
                enc.encoder.set_bitrate(bitrate)

    # -- running ------------------------------------------------------------

    async def run(self, source: AnyVideoSource, nursery: trio.Nursery) -> None:
        assert not isinstance(source, EncodedVideoSource)
        self._last_frame_at = time.monotonic()
        try:
            async with trio.open_nursery() as inner:
                inner.start_soon(source.run, self._on_frame)
                await watch_stall(lambda: self._last_frame_at, self.stall_timeout, "video")
        except BaseExceptionGroup as group:
            raise_sole(group)

    def _on_frame(self, frame: av.VideoFrame) -> None:
        # A decoded frame carries its picture type; the encoders, which only
        # read shared frames, must not take an I from the source as an order.
        frame.pict_type = PictureType.NONE
        self._frame = frame
        self._frame_seq += 1
        self.frames_in += 1
        self._last_frame_at = time.monotonic()
        event, self._frame_event = self._frame_event, trio.Event()
        event.set()
        if self._frame_slots:
            if any(slot.closed for slot in self._frame_slots):
                self._frame_slots = [slot for slot in self._frame_slots if not slot.closed]
            for slot in self._frame_slots:
                slot.put(frame)

    def reconfigure(self, video: VideoConfig, encoders_changed: bool) -> bool:
        """Replace every running encoder by one with the new settings, behind the same stream.

        The encode loop picks it up at its next frame, starting with a key
        frame, so each peer's decoder switches to the new picture there. A
        tier that is gone becomes the new lowest; its peers move on at their
        next estimate.
        """
        self.video = video
        if not encoders_changed:
            return False
        tiers = video.quality_tiers()
        for (codec, tier), enc in self._encodings.items():
            spec = tiers[min(tier, len(tiers) - 1)]
            encoder = VideoEncoder(codec, spec.width, spec.height, video.framerate,
                                   spec.bitrate, video.keyframe_interval, _preset(tier))
            # The old one may be encoding in a worker thread right now, so it
            # is left to finish and be collected rather than closed under it.
            enc.encoder = encoder
            enc.scale = 1.0
            enc.stream.on_need_keyframe = encoder.request_keyframe
        return False

    def close(self) -> None:
        """Stop every encode loop; each closes its streams on the way out."""
        for scope in list(self._encode_scopes.values()):
            scope.cancel()

    async def _encode_loop(self, codec: VideoCodec) -> None:
        """Encode the newest frame for every tier of ``codec`` until no peer needs one.

        All tiers encode the same picture (in worker threads, side by side)
        and their packets are published together, from this task: a peer's
        track never sees one tier's packet of a picture without the other
        tiers' (tracks.PacketTrack relies on it to switch tiers on a key
        frame of the next picture, not of one already sent).
        """
        seen = self._frame_seq
        scope = self._encode_scopes.setdefault(codec, trio.CancelScope())
        with scope:
            try:
                while True:
                    encodings = self._tiers_of(codec)
                    self._stop_idle(codec, encodings)
                    encodings = self._tiers_of(codec)
                    if not encodings:
                        return
                    if self._frame_seq == seen:
                        with trio.move_on_after(1.0):
                            await self._frame_event.wait()
                        continue
                    frame, seen = self._frame, self._frame_seq
                    assert frame is not None
                    results: dict[int, list[Packet[Any]]] = {}
                    async with trio.open_nursery() as nursery:
                        for enc in encodings:
                            self._adapt(enc)
                            if enc.stream.has_new_subscribers:
                                # a new viewer has no picture until a key frame: not rate-limited
                                enc.encoder.request_keyframe(urgent=True)
                            nursery.start_soon(self._encode_one, codec, enc, frame, results)
                    for enc in encodings:
                        for packet in results.get(enc.tier, ()):
                            enc.stream.publish(packet)
            finally:
                for enc in self._tiers_of(codec):
                    self._end_tier(codec, enc)
                if self._encode_scopes.get(codec) is scope:
                    del self._encode_scopes[codec]

    def _tiers_of(self, codec: VideoCodec) -> list[_VideoEncoding]:
        return [enc for (c, _t), enc in sorted(self._encodings.items()) if c == codec]

    def _stop_idle(self, codec: VideoCodec, encodings: list[_VideoEncoding]) -> None:
        now = time.monotonic()
        for enc in encodings:
            if enc.stream.subscribers:
                enc.idle_since = None
                continue
            enc.idle_since = enc.idle_since or now
            if now - enc.idle_since > ENCODER_IDLE_STOP:
                log.info("media.encoder.stopped", codec=codec, tier=enc.tier, reason="no peers")
                self._end_tier(codec, enc)

    def _end_tier(self, codec: VideoCodec, enc: _VideoEncoding) -> None:
        enc.stream.close()
        enc.encoder.close()
        if self._encodings.get((codec, enc.tier)) is enc:
            del self._encodings[(codec, enc.tier)]

    async def _encode_one(self, codec: VideoCodec, enc: _VideoEncoding, frame: av.VideoFrame,
                          results: dict[int, list[Packet[Any]]]) -> None:
        encoder = enc.encoder  # reconfigure() may swap it meanwhile: use one throughout
        try:
            results[enc.tier] = await trio.to_thread.run_sync(encoder.encode, frame)
        except (av.FFmpegError, ValueError) as exc:
            # An encoder error is that encoder's problem: rebuild it.
            log.error("media.encoder.failed", codec=codec, tier=enc.tier, error=str(exc))
            encoder.close()

    def _adapt(self, enc: _VideoEncoding) -> None:
        """Fit the lowest tier's encoder to the worst link on it, every
        ``ADAPT_INTERVAL`` or at once on a steep fall (:func:`~.pipeline.adapt_due`);
        each encoder is reopened for a new rate (encoder.py)."""
        tiers = self.tiers
        now = time.monotonic()
        encoder = enc.encoder
        if enc.tier != len(tiers) - 1 or not adapt_due(
                now - enc.adapted_at, enc.stream.lowest_demand(), encoder.target_bitrate,
                self.video.min_bitrate):
            return
        move = adapt_lowest_tier(enc.stream, tiers[-1], self.video,
                                 LowestRate(encoder.target_bitrate, enc.scale, encoder.max_fps),
                                 TIER_SCALES)
        if move is None:
            return
        enc.adapted_at = now
        if move.shape_moved:
            enc.scale = move.rate.scale
            encoder.set_max_fps(move.rate.max_fps)
            encoder.set_size(*scaled_size(tiers[-1], move.rate.scale))
        if move.bitrate_moved:
            encoder.set_bitrate(move.rate.bitrate)
