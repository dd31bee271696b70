"""The media hub: sources, shared encoders and the streams peers subscribe to.

Data flow: a source task pushes frames into a one-slot mailbox ("latest frame
wins", so a slow encoder skips frames instead of adding latency); one encode
loop per negotiated codec takes the newest frame, encodes it in a worker
thread and publishes the packets to its :class:`PacketStream`. Encoders start
when the first peer needs that codec and stop when the last one leaves.

With ``video.encode = "per-peer"`` there is no shared video encoder: each
peer subscribes to the raw frames (:meth:`MediaHub.subscribe_frames`, the
same latest-frame-wins rule) and aiortc encodes for every sender itself.

Quality tiers (``video.tiers``): each codec has one shared encoding per tier,
the full picture at ``max_bitrate`` first, then smaller, cheaper ones. Peers
pick their tier from their own bandwidth estimate (rtc/tiers.py); a tier's
encoder runs only while some peer is on it. The lowest tier follows the worst
link among its peers (:meth:`PacketStream.lowest_demand`): its bitrate down
to ``min_bitrate``, then its frame rate, so a bad link keeps decoding and
costs nobody else anything.

A source that fails (SourceError) or stalls (no frame for ``stall_timeout``)
is restarted with back-off while the rest keeps running: the room session
stays up audio-only or video-only meanwhile.

An :class:`~glimpse_edge.media.source.EncodedVideoSource` (the Raspberry Pi
camera's hardware H.264) delivers packets instead of frames: they go straight
to the shared stream of its codec, with no decode and no re-encode, and key
frame and bitrate requests go to the source. Peers that negotiated another
codec get no video from it (see docs/decisions.md, "Raspberry Pi camera").

:meth:`MediaHub.reconfigure` applies new video/audio settings in place (a
configuration reload): sources and encoders are rebuilt behind the same
streams, so peers stay subscribed and switch over at the next key frame.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import av
import structlog
import trio
from av.packet import Packet
from av.video.frame import PictureType

from ..config import AudioConfig, PlaybackConfig, QualityTier, VideoConfig
from ..supervise import Backoff, HealthRegistry, RestartPolicy, sole_exception, supervise
from .encoder import OpusEncoder, VideoCodec, VideoEncoder
from .fanout import FrameSlot, PacketStream
from .source import AnyVideoSource, AudioSource, EncodedVideoSource, EncodingStats, SourceError

if TYPE_CHECKING:
    from .playback import Speaker

log = structlog.get_logger(__name__)

# Hardware comes back when it comes back: restart sources forever.
SOURCE_POLICY = RestartPolicy(
    name="source", backoff=Backoff(initial=1.0, maximum=30.0), max_restarts=1_000_000
)
# An encoder nobody reads from is stopped after this long.
ENCODER_IDLE_STOP = 10.0
VIDEO_QUEUE_PACKETS = 30  # ~1 s at 30 fps before a slow peer is skipped to a key frame
AUDIO_QUEUE_PACKETS = 25  # 0.5 s of 20 ms packets
# The lowest tier keeps its full frame rate down to this share of its bitrate;
# below, frames are skipped in proportion (a sharp picture at 10 fps reads
# better than mush at 30), down to LOWEST_FPS.
LOW_FRAMERATE_SHARE = 0.5
LOWEST_FPS = 5.0
# The lowest tier's encoder follows its peers' demand when it moved by this
# share, at most every ADAPT_INTERVAL seconds.
ADAPT_CHANGE = 0.1
ADAPT_INTERVAL = 1.0


class SourceStalled(Exception):
    """A source stopped producing without failing."""


@dataclass
class _EncodedTier:
    """A lower tier's stream from an encoded source (see MediaHub._encoded_video_stream)."""

    stream: PacketStream
    tier: int
    spec: QualityTier
    rate: tuple[int, float | None] | None = None  # last (bitrate, max fps) asked of the source
    idle_since: float | None = None


@dataclass
class _VideoEncoding:
    encoder: VideoEncoder
    stream: PacketStream
    tier: int = 0
    adapted_at: float = 0.0
    idle_since: float | None = None


def _preset(tier: int) -> str | None:
    """libx264 preset for a tier: lower tiers exist to be cheap, on the wire and on
    the CPU (640x360 measured: superfast 25 ms of CPU per second, veryfast 45 to 65)."""
    return None if tier == 0 else "superfast"


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


class MediaHub:
    """Owns the media tasks; peers call :meth:`video_stream` / :meth:`audio_stream`."""

    def __init__(
        self,
        video: VideoConfig,
        audio: AudioConfig,
        make_video: Callable[[], AnyVideoSource] | None,
        make_audio: Callable[[], AudioSource] | None,
        *,
        health: HealthRegistry | None = None,
        stall_timeout: float = 3.0,
        playback: PlaybackConfig | None = None,
    ) -> None:
        self.video_config = video
        self.audio_config = audio
        self._make_video = make_video
        self._make_audio = make_audio
        self.health = health or HealthRegistry()
        self.stall_timeout = stall_timeout
        self._nursery: trio.Nursery | None = None
        self._encodings: dict[tuple[VideoCodec, int], _VideoEncoding] = {}
        self._encode_scopes: dict[VideoCodec, trio.CancelScope] = {}  # one loop per codec
        self._frame: av.VideoFrame | None = None
        self._frame_seq = 0
        self._frame_event = trio.Event()
        self._frame_slots: list[FrameSlot] = []
        # the lower tiers an encoded source makes beside its own stream, by tier
        self._encoded_lower: dict[int, _EncodedTier] = {}
        self._last_frame_at = 0.0
        self._audio_stream: PacketStream | None = None
        self._opus: OpusEncoder | None = None
        self.frames_in = 0
        # reconfigure() cancels these to restart a source with new settings
        self._video_restart: trio.CancelScope | None = None
        self._audio_restart: trio.CancelScope | None = None
        self._audio_task: trio.CancelScope | None = None
        self.video_source_name: str | None = None
        self.audio_source_name: str | None = None
        if make_audio is not None:
            self._audio_stream = PacketStream("audio", "opus", AUDIO_QUEUE_PACKETS)
            self._opus = OpusEncoder(audio.rate, audio.channels)
        # The speakerphone (None unless [playback] is enabled): peers hand it
        # their remote audio tracks; its echo canceller runs on every captured
        # frame before encoding (capture_processor), with what it plays as the
        # far-end reference.
        self.speaker: Speaker | None = None
        self.capture_processor: Callable[[av.AudioFrame], av.AudioFrame] | None = None
        if playback is not None and playback.enabled:
            from .playback import Speaker

            self.speaker = Speaker(playback, health=self.health)
            if self.speaker.canceller is not None:
                self.capture_processor = self.speaker.process_capture

    # -- for peers ----------------------------------------------------------

    @property
    def has_video(self) -> bool:
        return self._make_video is not None

    @property
    def latest_keyframe(self) -> tuple[str, Packet[Any]] | None:
        """The newest key frame of any running video stream, as (codec, packet).

        For snapshots when the source has no raw frames (a hardware encoder):
        decoding one key frame a second is cheap, decoding the stream is not.
        """
        streams: list[tuple[str, PacketStream]] = [
            (codec, enc.stream) for (codec, _tier), enc in sorted(self._encodings.items())]
        if self._encoded_stream is not None and self._encoded_source is not None:
            streams.insert(0, (self._encoded_source.codec, self._encoded_stream))
        for codec, stream in streams:
            if stream.last_keyframe is not None:
                return codec, stream.last_keyframe
        return None

    @property
    def latest_frame(self) -> av.VideoFrame | None:
        """The newest raw video frame (None before the first), for snapshots.

        Shared with the encoders, which may be reading it in a worker thread:
        only copy from it, with a ``VideoReformatter`` of your own
        (``frame.reformat`` keeps its scaler on the shared frame).
        """
        return self._frame

    @property
    def video_per_peer(self) -> bool:
        """Video is encoded by every peer's sender (aiortc), not shared."""
        return self.video_config.encode == "per-peer"

    @property
    def tiers(self) -> tuple[QualityTier, ...]:
        """The encodings a peer can be put on, best first (one when nothing is tiered).

        A camera with its own encoder has the tiers it can encode (the Pi
        camera: its lores stream makes one lower tier); per-peer encoding
        adapts in aiortc's sender, with no lower tiers.
        """
        if self._encoded_source is not None:
            return self._encoded_source.tiers
        if self.video_per_peer:
            return self.video_config.quality_tiers()[:1]
        return self.video_config.quality_tiers()

    def video_stream(self, codec: VideoCodec, tier: int = 0) -> PacketStream | None:
        """The shared stream for ``codec`` at quality ``tier``, starting its encoder if needed.

        None without video, and in per-peer mode, where nothing is shared. A
        tier that does not exist (any more: a reload) gives the lowest one.
        """
        if self._make_video is None or self._nursery is None or self.video_per_peer:
            return None
        if self._encoded_source is not None:
            return self._encoded_video_stream(codec, tier)
        tiers = self.tiers
        tier = min(max(tier, 0), len(tiers) - 1)
        enc = self._encodings.get((codec, tier))
        if enc is None:
            cfg, spec = self.video_config, tiers[tier]
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

    def audio_stream(self) -> PacketStream | None:
        return self._audio_stream

    def encoders(self) -> list[tuple[str, str, VideoEncoder | EncodedVideoSource | EncodingStats]]:
        """The running video encoders as (codec, tier label "WxH", encoder), best
        tier first (an encoded source counts as one per tier it runs)."""
        out: list[tuple[str, str, VideoEncoder | EncodedVideoSource | EncodingStats]] = [
            (codec, f"{enc.encoder.width}x{enc.encoder.height}", enc.encoder)
            for (codec, _tier), enc in sorted(self._encodings.items())]
        if (source := self._encoded_source) is not None:
            lower = [(source.codec, f"{stats.width}x{stats.height}", stats)
                     for tier in sorted(self._encoded_lower)
                     if (stats := source.tier_stats(tier)) is not None]
            out[:0] = [(source.codec, f"{source.width}x{source.height}", source), *lower]
        return out

    def set_bitrate(self, bitrate: int) -> None:
        """Set the top tier's bitrate (and an encoded source's)."""
        for (_codec, tier), enc in self._encodings.items():
            if tier == 0:
                enc.encoder.set_bitrate(bitrate)
        if self._encoded_source is not None:
            self._encoded_source.set_bitrate(bitrate)

    # -- tasks --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._make_video is not None:
                nursery.start_soon(partial(supervise, "media.video", self._run_video_source,
                                           policy=SOURCE_POLICY, health=self.health))
            if self._make_audio is not None:
                self._start_audio_task()
            if self.speaker is not None:
                nursery.start_soon(self.speaker.run)
            task_status.started()
            await trio.sleep_forever()

    def _start_audio_task(self) -> None:
        assert self._nursery is not None
        scope = self._audio_task = trio.CancelScope()

        async def audio() -> None:
            with scope:
                await supervise("media.audio", self._run_audio_source, policy=SOURCE_POLICY,
                                health=self.health)

        self._nursery.start_soon(audio)

    # -- reconfiguration ----------------------------------------------------

    def reconfigure(
        self,
        video: VideoConfig,
        audio: AudioConfig,
        make_video: Callable[[], AnyVideoSource] | None,
        make_audio: Callable[[], AudioSource] | None,
    ) -> None:
        """Apply new media settings in place, without dropping any peer.

        ``make_video``/``make_audio`` build the sources for the new settings
        (None: no audio). What changed decides what is rebuilt, nothing more:

        - a video source setting (kind, device, path, size, frame rate): the
          source is restarted with the new factory;
        - an encoder setting (size, frame rate, bitrate, key frame interval):
          every running shared encoder is replaced by a new one publishing into
          the *same* stream, starting with a key frame, so each peer's decoder
          switches to the new picture at that key frame (per-peer encoders in
          aiortc reopen themselves when the frame size changes);
        - audio settings: the audio source is restarted; a new Opus encoder
          only when rate or channels changed, continuing the time stamps so
          the receivers' jitter buffers see no jump;
        - audio on/off: its stream is created or closed. That, and a change
          of ``video.encode``, changes what a peer connection carries: the
          caller must renegotiate the peers (the hub cannot).
        """
        old_video, old_audio = self.video_config, self.audio_config
        self.video_config, self.audio_config = video, audio
        changed: list[str] = []
        if make_video is not None:
            self._make_video = make_video
        source_keys = ("source", "device", "path", "width", "height", "framerate")
        if any(getattr(old_video, k) != getattr(video, k) for k in source_keys):
            changed.append("video.source")
            if self._video_restart is not None:
                self._video_restart.cancel()
        encoder_keys = ("width", "height", "framerate", "max_bitrate", "min_bitrate",
                        "keyframe_interval", "tiers")
        if any(getattr(old_video, k) != getattr(video, k) for k in encoder_keys):
            changed.append("video.encoders")
            tiers = video.quality_tiers()
            for (codec, tier), enc in self._encodings.items():
                # a tier that is gone becomes the new lowest; its peers move
                # on at their next estimate
                spec = tiers[min(tier, len(tiers) - 1)]
                encoder = VideoEncoder(codec, spec.width, spec.height, video.framerate,
                                       spec.bitrate, video.keyframe_interval, _preset(tier))
                # The encode loop picks it up at its next frame; the old one
                # may be encoding in a worker thread right now, so it is left
                # to finish and be collected rather than closed under it.
                enc.encoder = encoder
                enc.stream.on_need_keyframe = encoder.request_keyframe
            if self._encoded_source is not None and "video.source" not in changed:
                # a camera's encoder takes its settings when it starts
                self.restart_video("encoder settings changed")
        self._reconfigure_audio(old_audio, audio, make_audio, changed)
        log.info("media.reconfigured", changed=changed)

    def _reconfigure_audio(
        self,
        old: AudioConfig,
        new: AudioConfig,
        make_audio: Callable[[], AudioSource] | None,
        changed: list[str],
    ) -> None:
        was_on = self._make_audio is not None
        self._make_audio = make_audio
        if make_audio is None:
            if was_on:
                changed.append("audio.off")
                if self._audio_task is not None:
                    self._audio_task.cancel()
                if self._audio_stream is not None:
                    self._audio_stream.close()
                self._audio_stream = self._opus = None
            return
        if self._opus is None or (old.rate, old.channels) != (new.rate, new.channels):
            opus = OpusEncoder(new.rate, new.channels)
            if self._opus is not None:  # continue the RTP clock where the old one was
                opus._pts = round(self._opus._pts * new.rate / self._opus.rate)
            self._opus = opus
        if not was_on:
            changed.append("audio.on")
            self._audio_stream = PacketStream("audio", "opus", AUDIO_QUEUE_PACKETS)
            if self._nursery is not None:
                self._start_audio_task()
        elif old != new:
            changed.append("audio.source")
            if self._audio_restart is not None:
                self._audio_restart.cancel()

    def _on_video_frame(self, frame: av.VideoFrame) -> None:
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

    async def _run_video_source(self) -> None:
        while True:
            with trio.CancelScope() as scope:
                self._video_restart = scope
                await self._run_video_source_once()
            # only reconfigure() cancels this scope: go again with the new factory
            log.info("media.source.restarting", kind="video", reason="reconfigured")

    async def _run_video_source_once(self) -> None:
        assert self._make_video is not None
        source = self._make_video()
        self.video_source_name = source.name
        log.info("media.source.started", kind="video", source=source.name,
                 width=source.width, height=source.height, framerate=source.framerate)
        if isinstance(source, EncodedVideoSource):
            await self._run_encoded_source(source)
            return
        if self._encoded_source is not None:
            self._end_encoded_mode()
        self._last_frame_at = time.monotonic()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(source.run, self._on_video_frame)
                await self._watch_stall("video")
        except BaseExceptionGroup as group:
            raise sole_exception(group) from None

    async def _watch_stall(self, kind: str) -> None:
        while True:
            await trio.sleep(self.stall_timeout / 3)
            silent = time.monotonic() - self._last_frame_at
            if silent > self.stall_timeout:
                log.error("media.source.stalled", kind=kind, silent_s=round(silent, 1))
                raise SourceStalled(f"{kind} source produced nothing for {silent:.1f} s")

    async def _encode_loop(self, codec: VideoCodec) -> None:
        """Encode the newest frame for every tier of ``codec`` until no peer needs one.

        All tiers encode the same picture (in worker threads, side by side)
        and their packets are published together, from this task: a peer's
        track never sees one tier's packet of a picture without the other
        tiers' (tracks.PacketTrack relies on it to switch tiers on a key
        frame of the next picture, not of one already sent). A tier nobody
        has read for ``ENCODER_IDLE_STOP`` seconds is stopped.
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
                            self._adapt_lowest_tier(enc)
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

    def _adapt_lowest_tier(self, enc: _VideoEncoding) -> None:
        """Make the lowest tier's encoder fit the worst link among its peers.

        Higher tiers keep their configured rate: a peer that cannot carry one
        moves down instead. Changes smaller than ``ADAPT_CHANGE`` or sooner
        than ``ADAPT_INTERVAL`` after the last are ignored: a VP8 encoder is
        rebuilt for a new rate, which costs a key frame.
        """
        tiers = self.tiers
        if enc.tier != len(tiers) - 1:
            return
        now = time.monotonic()
        if now - enc.adapted_at < ADAPT_INTERVAL:
            return
        cfg, encoder = self.video_config, enc.encoder
        bitrate, fps = lowest_tier_rate(tiers[-1], cfg.framerate, cfg.min_bitrate,
                                        enc.stream.lowest_demand())
        moved, fps_moved = rate_moves((encoder.target_bitrate, encoder.max_fps), (bitrate, fps),
                                      (cfg.min_bitrate, tiers[-1].bitrate))
        if not (moved or fps_moved):
            return
        enc.adapted_at = now
        if fps_moved:
            encoder.set_max_fps(fps)
        if moved:
            encoder.set_bitrate(bitrate)
        log.info("media.tier.adapted", stream=enc.stream.name, bitrate=bitrate,
                 max_fps=None if fps is None else round(fps, 1),
                 demand_bps=enc.stream.lowest_demand())

    async def _run_audio_source(self) -> None:
        while True:
            with trio.CancelScope() as scope:
                self._audio_restart = scope
                await self._run_audio_source_once()
            log.info("media.source.restarting", kind="audio", reason="reconfigured")

    async def _run_audio_source_once(self) -> None:
        assert self._make_audio is not None and self._opus is not None
        source = self._make_audio()
        self.audio_source_name = source.name
        log.info("media.source.started", kind="audio", source=source.name, rate=source.rate,
                 channels=source.channels)
        stream, opus = self._audio_stream, self._opus
        assert stream is not None

        def on_audio(frame: av.AudioFrame) -> None:
            # Opus at 20 ms costs ~0.1 ms: cheaper inline than a thread hop.
            if stream.subscribers == 0:
                return  # nobody listens: an idle device should stay idle
            try:
                if self.capture_processor is not None:
                    frame = self.capture_processor(frame)
                for packet in opus.encode(frame):
                    stream.publish(packet)
            except (av.FFmpegError, ValueError) as exc:
                log.error("media.encoder.failed", codec="opus", error=str(exc))

        await source.run(on_audio)
        raise SourceError(f"audio source {source.name} ended")

    # -- encoded video (a camera with its own H.264 encoder) ------------------

    _encoded_source: EncodedVideoSource | None = None
    _encoded_stream: PacketStream | None = None

    def restart_video(self, reason: str) -> None:
        """Restart the video source with the current factory (e.g. new camera settings)."""
        if self._video_restart is not None:
            log.info("media.source.restart_requested", kind="video", reason=reason)
            self._video_restart.cancel()

    def _encoded_video_stream(self, codec: VideoCodec, tier: int = 0) -> PacketStream | None:
        """The stream an encoded source feeds, if it is of ``codec``; else no video.

        Decoding the camera's H.264 to encode VP8 would spend the CPU that the
        hardware encoder saves, so a peer that negotiated VP8 gets no video.
        A lower tier's stream is opened on the source when its first peer
        comes, and closed again by :meth:`_encoded_upkeep` when the last left.
        """
        source = self._encoded_source
        assert source is not None
        if codec != source.codec:
            log.warning("media.video.codec_refused", codec=codec, source=source.name,
                        available=source.codec, detail=f"this camera sends {source.codec} "
                        f"only; a peer that cannot decode it gets no video")
            return None
        tier = min(max(tier, 0), len(source.tiers) - 1)
        if tier == 0:
            return self._encoded_stream
        lower = self._encoded_lower.get(tier)
        if lower is None:
            spec = source.tiers[tier]
            stream = PacketStream("video", f"{codec}/{spec.width}x{spec.height}",
                                  VIDEO_QUEUE_PACKETS)
            lower = self._encoded_lower[tier] = _EncodedTier(stream, tier, spec)
            self._open_encoded_tier(source, lower)
            log.info("media.tier.started", codec=codec, tier=tier, width=spec.width,
                     height=spec.height, bitrate=spec.bitrate, source=source.name)
        return lower.stream

    def _open_encoded_tier(self, source: EncodedVideoSource, lower: _EncodedTier) -> None:
        lower.stream.on_need_keyframe = partial(source.request_keyframe, tier=lower.tier)
        lower.rate = None
        source.open_tier(lower.tier, lower.stream.publish)

    def _close_encoded_tier(self, lower: _EncodedTier, reason: str) -> None:
        if self._encoded_lower.get(lower.tier) is lower:
            del self._encoded_lower[lower.tier]
        lower.stream.close()
        if self._encoded_source is not None:
            self._encoded_source.close_tier(lower.tier)
        log.info("media.encoder.stopped", codec=self._encoded_source.codec
                 if self._encoded_source else None, tier=lower.tier, reason=reason)

    def _end_encoded_mode(self) -> None:
        """Back to raw frames: peers on the encoded stream must subscribe again."""
        for lower in list(self._encoded_lower.values()):
            self._close_encoded_tier(lower, "source changed")
        if self._encoded_stream is not None:
            self._encoded_stream.close()
        self._encoded_source = self._encoded_stream = None

    async def _encoded_upkeep(self, source: EncodedVideoSource) -> None:
        """Every ``ADAPT_INTERVAL``: stop lower tiers nobody is on, and fit the lowest
        one to the worst link on it (as :meth:`_adapt_lowest_tier` does for ours)."""
        while True:
            await trio.sleep(ADAPT_INTERVAL)
            now = time.monotonic()
            tiers = source.tiers
            for lower in list(self._encoded_lower.values()):
                if not lower.stream.subscribers:
                    lower.idle_since = lower.idle_since or now
                    if now - lower.idle_since > ENCODER_IDLE_STOP:
                        self._close_encoded_tier(lower, "no peers")
                    continue
                lower.idle_since = None
                if lower.tier != len(tiers) - 1:
                    continue
                cfg = self.video_config
                rate = lowest_tier_rate(tiers[-1], cfg.framerate, cfg.min_bitrate,
                                        lower.stream.lowest_demand())
                if any(rate_moves(lower.rate or (lower.spec.bitrate, None), rate,
                                  (cfg.min_bitrate, lower.spec.bitrate))):
                    lower.rate = rate
                    source.set_tier_rate(lower.tier, *rate)
                    log.info("media.tier.adapted", stream=lower.stream.name, bitrate=rate[0],
                             max_fps=None if rate[1] is None else round(rate[1], 1),
                             demand_bps=lower.stream.lowest_demand())

    async def _run_encoded_source(self, source: EncodedVideoSource) -> None:
        """Publish an encoded source's packets to its codec's stream, untouched.

        The stream outlives restarts of the source, so peers stay subscribed
        across them; the source begins every encoder start with SPS/PPS and an
        IDR, where their decoders pick up again.
        """
        self._encoded_source = source
        stream = self._encoded_stream
        if stream is None or stream.name != source.codec:
            if stream is not None:
                stream.close()
            stream = self._encoded_stream = PacketStream("video", source.codec,
                                                         VIDEO_QUEUE_PACKETS)
        stream.on_need_keyframe = source.request_keyframe
        # Software encoders started before (a reconfiguration) get no frames
        # any more: ending their streams makes their peers subscribe again.
        for scope in list(self._encode_scopes.values()):
            scope.cancel()
        # Lower tiers that peers are on carry on, from this source if it has
        # them; else their peers subscribe again and land on what there is.
        for lower in list(self._encoded_lower.values()):
            if lower.tier < len(source.tiers) and source.tiers[lower.tier] == lower.spec:
                self._open_encoded_tier(source, lower)
            else:
                self._close_encoded_tier(lower, "tiers changed")
        self._last_frame_at = time.monotonic()

        def on_packet(packet: Packet[Any]) -> None:
            self.frames_in += 1
            self._last_frame_at = time.monotonic()
            stream.publish(packet)

        timeout = source.stall_timeout or self.stall_timeout
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(source.run, on_packet)
                if len(source.tiers) > 1:
                    nursery.start_soon(self._encoded_upkeep, source)
                while True:  # the last resort: the source watches itself first
                    await trio.sleep(timeout / 3)
                    silent = time.monotonic() - self._last_frame_at
                    if silent > timeout:
                        log.error("media.source.stalled", kind="video", silent_s=round(silent, 1))
                        raise SourceStalled(f"video source produced nothing for {silent:.1f} s")
        except BaseExceptionGroup as group:
            raise sole_exception(group) from None
