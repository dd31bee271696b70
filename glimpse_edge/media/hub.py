"""The media hub: sources, the video pipeline, audio, and the streams peers subscribe to.

Video goes through one :class:`~glimpse_edge.media.pipeline.VideoPipeline`
at a time, chosen by what the source gives: raw frames are encoded once per
codec and quality tier (:class:`~glimpse_edge.media.framepipe.FramePipeline`),
a camera's own encoded packets are published untouched
(:class:`~glimpse_edge.media.camerapipe.CameraPipeline`). Peers ask the hub
for a stream (:meth:`MediaHub.video_stream`) and never see which.

Quality tiers (``video.tiers``): each codec has one shared encoding per tier,
the full picture at ``max_bitrate`` first, then smaller, cheaper ones. Peers
pick their tier from their own bandwidth estimate (rtc/tiers.py); a tier's
encoder runs only while some peer is on it, and the lowest one follows the
worst link among its peers.

Audio: one Opus encoding of the microphone for every peer, inline (about
0.1 ms per 20 ms frame), through a capture processor when the agent hands one
in (the speakerphone's echo canceller; the speaker itself is the agent's).

A source that fails (SourceError) or stalls (no frame for ``stall_timeout``)
is restarted with back-off while the rest keeps running: the room session
stays up audio-only or video-only meanwhile.

:meth:`MediaHub.reconfigure` applies new video/audio settings in place (a
configuration reload): sources and encoders are rebuilt behind the same
streams, so peers stay subscribed and switch over at the next key frame.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, cast

import av
import structlog
import trio
from av.packet import Packet

from ..config import AudioConfig, QualityTier, VideoConfig
from ..supervise import Backoff, HealthRegistry, RestartPolicy, supervise
from .camerapipe import CameraPipeline
from .encoder import OpusEncoder, VideoCodec
from .fanout import FrameSlot, PacketStream
from .framepipe import FramePipeline
from .pipeline import EncoderInfo, VideoPipeline
from .source import AnyVideoSource, AudioSource, EncodedVideoSource, SourceError

log = structlog.get_logger(__name__)

# Hardware comes back when it comes back: restart sources forever.
SOURCE_POLICY = RestartPolicy(
    name="source", backoff=Backoff(initial=1.0, maximum=30.0), max_restarts=1_000_000
)
AUDIO_QUEUE_PACKETS = 25  # 0.5 s of 20 ms packets
# Source settings: a change restarts the video source.
SOURCE_KEYS = ("source", "device", "path", "width", "height", "framerate")
# Encoder settings: a change rebuilds the encoders behind the same streams.
ENCODER_KEYS = ("width", "height", "framerate", "max_bitrate", "min_bitrate",
                "keyframe_interval", "tiers")
# Runs on each captured audio frame before encoding (the speakerphone's echo canceller).
CaptureProcessor = Callable[[av.AudioFrame], av.AudioFrame]


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
        capture_processor: CaptureProcessor | None = None,
    ) -> None:
        self.video_config = video
        self.audio_config = audio
        self._make_video = make_video
        self._make_audio = make_audio
        self.health = health or HealthRegistry()
        self.stall_timeout = stall_timeout
        self._nursery: trio.Nursery | None = None
        self._pipeline: VideoPipeline | None = None
        self._frames_before = 0  # frames_in of pipelines that were replaced
        self._audio_stream: PacketStream | None = None
        self._opus: OpusEncoder | None = None
        # reconfigure() cancels these to restart a source with new settings
        self._video_restart: trio.CancelScope | None = None
        self._audio_restart: trio.CancelScope | None = None
        self._audio_task: trio.CancelScope | None = None
        self.video_source_name: str | None = None
        self.audio_source_name: str | None = None
        if make_audio is not None:
            self._audio_stream = PacketStream("audio", "opus", AUDIO_QUEUE_PACKETS)
            self._opus = OpusEncoder(audio.rate, audio.channels)
        # Runs on every captured audio frame before encoding (the speakerphone's
        # echo canceller, with what the speaker plays as the far-end reference).
        self.capture_processor = capture_processor

    # -- for peers ----------------------------------------------------------

    @property
    def has_video(self) -> bool:
        return self._make_video is not None

    @property
    def frames_in(self) -> int:
        """Frames (or a camera's packets) the video sources delivered so far."""
        current = self._pipeline.frames_in if self._pipeline is not None else 0
        return self._frames_before + current

    @property
    def latest_keyframe(self) -> tuple[str, Packet[Any]] | None:
        """The newest key frame of any running video stream, as (codec, packet).

        For snapshots when the source has no raw frames (a hardware encoder):
        decoding one key frame a second is cheap, decoding the stream is not.
        """
        return self._pipeline.latest_keyframe if self._pipeline is not None else None

    @property
    def latest_frame(self) -> av.VideoFrame | None:
        """The newest raw video frame (None before the first, or from a camera that
        encodes itself), for snapshots.

        Shared with the encoders, which may be reading it in a worker thread:
        only copy from it, with a ``VideoReformatter`` of your own
        (``frame.reformat`` keeps its scaler on the shared frame).
        """
        pipeline = self._pipeline
        return pipeline.latest_frame if isinstance(pipeline, FramePipeline) else None

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
        if self.video_per_peer:
            return self.video_config.quality_tiers()[:1]
        if self._pipeline is not None:
            return self._pipeline.tiers
        return self.video_config.quality_tiers()

    def video_stream(self, codec: VideoCodec, tier: int = 0) -> PacketStream | None:
        """The shared stream for ``codec`` at quality ``tier``, starting its encoder if needed.

        None without video, and in per-peer mode, where nothing is shared. A
        tier that does not exist (any more: a reload) gives the lowest one.
        """
        if self._make_video is None or self._nursery is None or self.video_per_peer:
            return None
        return self._video_pipeline().video_stream(codec, tier)

    def camera_preview(self) -> tuple[VideoCodec, PacketStream] | None:
        """A camera that encodes itself: its lowest tier's stream, to decode for a preview.

        None when the source gives raw frames (:attr:`latest_frame` is the
        preview then, nothing to decode) or is not running. The lowest tier is
        the cheapest to decode; subscribing keeps its encoder running, so
        unsubscribe when the preview is not shown.
        """
        pipeline = self._pipeline
        if not isinstance(pipeline, CameraPipeline) or self._nursery is None:
            return None
        codec = cast(VideoCodec, pipeline.source.codec)
        stream = pipeline.video_stream(codec, len(pipeline.tiers) - 1)
        return (codec, stream) if stream is not None else None

    def subscribe_frames(self, name: str = "") -> FrameSlot:
        """Raw frames for one reader (per-peer encoding), newest only; close the slot
        to unsubscribe. The slot starts with the current frame, if any."""
        pipeline = self._video_pipeline()
        if not isinstance(pipeline, FramePipeline):
            raise SourceError(f"{self.video_source_name} gives encoded video, no frames")
        return pipeline.subscribe_frames(name)

    def audio_stream(self) -> PacketStream | None:
        return self._audio_stream

    def encoders(self) -> list[EncoderInfo]:
        """The running video encoders as (codec, tier label "WxH", encoder), best
        tier first (an encoded source counts as one per tier it runs)."""
        return self._pipeline.encoders() if self._pipeline is not None else []

    def set_bitrate(self, bitrate: int) -> None:
        """Set the top tier's bitrate (the shared encoders', or a camera's)."""
        if self._pipeline is not None:
            self._pipeline.set_bitrate(bitrate)

    # -- tasks --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._make_video is not None:
                nursery.start_soon(partial(supervise, "media.video", self._run_video_source,
                                           policy=SOURCE_POLICY, health=self.health))
            if self._make_audio is not None:
                self._start_audio_task()
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

    def _video_pipeline(self, source: AnyVideoSource | None = None) -> VideoPipeline:
        """The pipeline for ``source`` (made, replacing one of the other kind, if
        needed); without a source, the one there is, or a frame pipeline."""
        assert self._nursery is not None
        current = self._pipeline
        if isinstance(source, EncodedVideoSource):
            fits = isinstance(current, CameraPipeline) and current.source.codec == source.codec
        else:
            fits = isinstance(current, FramePipeline) or (current is not None and source is None)
        if current is not None and fits:
            return current
        if current is not None:
            current.close()  # its peers subscribe again, to the new one
            self._frames_before += current.frames_in
        self._pipeline = (
            CameraPipeline(self.video_config, source, self.stall_timeout)
            if isinstance(source, EncodedVideoSource)
            else FramePipeline(self.video_config, self._nursery, self.stall_timeout))
        return self._pipeline

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
        - an encoder setting (size, frame rate, bitrate, key frame interval,
          tiers): the pipeline rebuilds its encoders behind the *same*
          streams, starting with a key frame, so each peer's decoder switches
          to the new picture there (a camera, whose encoder reads its settings
          when it starts, is restarted; per-peer encoders in aiortc reopen
          themselves when the frame size changes);
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
        if any(getattr(old_video, k) != getattr(video, k) for k in SOURCE_KEYS):
            changed.append("video.source")
            if self._video_restart is not None:
                self._video_restart.cancel()
        if any(getattr(old_video, k) != getattr(video, k) for k in ENCODER_KEYS):
            changed.append("video.encoders")
        if self._pipeline is not None:
            restart = self._pipeline.reconfigure(video, "video.encoders" in changed)
            if restart and "video.source" not in changed:
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

    def restart_video(self, reason: str) -> None:
        """Restart the video source with the current factory (e.g. new camera settings)."""
        if self._video_restart is not None:
            log.info("media.source.restart_requested", kind="video", reason=reason)
            self._video_restart.cancel()

    # -- sources --------------------------------------------------------------

    async def _run_video_source(self) -> None:
        while True:
            with trio.CancelScope() as scope:
                self._video_restart = scope
                await self._run_video_source_once()
            # only reconfigure() cancels this scope: go again with the new factory
            log.info("media.source.restarting", kind="video", reason="reconfigured")

    async def _run_video_source_once(self) -> None:
        assert self._make_video is not None and self._nursery is not None
        source = self._make_video()
        await source.prepare()  # off the Trio thread (picamera2's import): name, tiers
        self.video_source_name = source.name
        log.info("media.source.started", kind="video", source=source.name,
                 width=source.width, height=source.height, framerate=source.framerate)
        await self._video_pipeline(source).run(source, self._nursery)

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
