"""One remote participant's video decoder: PyAV on a worker thread, bounded, only while shown.

Why a thread of its own: a decode takes milliseconds (tens at 720p in software on a
Pi), and the Trio thread carries signaling, RTCP and the pacer; it must never wait
on FFmpeg. PyAV releases the GIL while FFmpeg decodes, so the thread really runs
beside the event loop.

Why bounded, and why key frames: a decoder that falls behind must not queue
(memory grows and the picture drifts seconds late). When ``depth`` encoded frames
wait, the backlog is dropped and the decoder waits for the next key frame, asking
the sender for one through ``request_keyframe`` (the caller sends a PLI); a key
frame that arrives behind a backlog of half the depth also discards the backlog
(it decodes on its own). A frame that fails to decode does the same. Predicted
frames after a gap would only decode into smeared garbage.

Why "only while shown": a participant without a tile (beyond ``max_tiles``, or the
display off) costs no CPU: its frames are dropped before the decoder, and showing
it again starts at a key frame, asked for at once.

The input is encoded frames as the RTP depayloader assembles them (H.264 Annex B
access units, VP8 frames): aiortc's own receiver decodes every track on a thread
with an unbounded queue and a fixed software decoder, so the wiring takes the
encoded frames before it (docs/decisions.md, "Kiosk display").
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, cast

import av
import structlog
from av.video.codeccontext import VideoCodecContext

__all__ = [
    "DecoderChoice",
    "DecoderStats",
    "EncodedFrame",
    "VideoDecoder",
    "board_model",
    "choose_decoder",
    "describe_decoders",
    "is_keyframe",
]

log = structlog.get_logger(__name__)

Codec = Literal["h264", "vp8"]

DEFAULT_DEPTH: Final = 8  # ~0.27 s at 30 fps: more than this waiting means we are behind
_MODEL_PATH: Final = Path("/proc/device-tree/model")
# Boards with the H.264 decode block behind V4L2 mem2mem (bcm2835-codec). The Pi 5
# has none (HEVC only): software there.
_HW_H264_BOARDS: Final = ("Raspberry Pi 4", "Raspberry Pi 400", "Raspberry Pi Compute Module 4")
_HW_H264: Final = "h264_v4l2m2m"


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One encoded picture: H.264 Annex B access unit or VP8 frame; pts in 1/90000 s."""

    data: bytes
    keyframe: bool
    pts: int


@dataclass(frozen=True, slots=True)
class DecoderChoice:
    """Which FFmpeg decoder a codec gets here, and why (for ``devices``/``doctor``)."""

    codec: Codec
    decoder: str
    hardware: bool
    reason: str


@dataclass(frozen=True, slots=True)
class DecoderStats:
    """Counts since the decoder opened (for observe and the tests)."""

    received: int
    decoded: int
    dropped: int
    keyframe_requests: int
    errors: int


def board_model(path: Path = _MODEL_PATH) -> str | None:
    """The board's model from the device tree ("Raspberry Pi 4 Model B Rev 1.4"), if any."""
    try:
        return path.read_bytes().rstrip(b"\0\n").decode("utf-8", "replace")
    except OSError:
        return None


def _ffmpeg_has(name: str) -> bool:
    try:
        av.codec.Codec(name, "r")
    except Exception:  # PyAV raises its own UnknownCodecError (a ValueError) or FFmpegError
        return False
    return True


def choose_decoder(codec: Codec, model: str | None = None,
                   has_decoder: Callable[[str], bool] = _ffmpeg_has) -> DecoderChoice:
    """The decoder for ``codec`` on this board (``model`` defaults to :func:`board_model`).

    H.264 uses the hardware ``h264_v4l2m2m`` only where both hold: the FFmpeg in use
    has it (PyAV's wheels do; a distribution's FFmpeg may not) and the board has the
    decode block (a Pi 4 family board; a Pi 5 has none, and on a PC the wrapper has
    no device to open). VP8 has no hardware decoder on any Pi: ``libvpx``, else
    FFmpeg's own ``vp8``.
    """
    if codec == "vp8":
        for name in ("libvpx", "vp8"):
            if has_decoder(name):
                return DecoderChoice("vp8", name, False, "software (no VP8 hardware decoder)")
        raise RuntimeError("this FFmpeg has no VP8 decoder (neither libvpx nor vp8)")
    if codec != "h264":
        raise ValueError(f"unsupported codec {codec!r}")
    if model is None:
        model = board_model()
    hw_board = model is not None and model.startswith(_HW_H264_BOARDS)
    if hw_board and has_decoder(_HW_H264):
        return DecoderChoice("h264", _HW_H264, True, f"hardware ({model})")
    if not has_decoder("h264"):
        raise RuntimeError("this FFmpeg has no H.264 decoder")
    if hw_board:
        why = f"software ({model}, but this FFmpeg has no {_HW_H264})"
    elif model is not None and model.startswith("Raspberry Pi"):
        why = f"software ({model} has no H.264 decode block)"
    else:
        why = "software (no H.264 hardware decoder on this board)"
    return DecoderChoice("h264", "h264", False, why)


def describe_decoders(model: str | None = None) -> list[str]:
    """One line per codec naming its decoder, as ``devices`` and ``doctor`` print it."""
    lines = []
    for codec in ("h264", "vp8"):
        try:
            c = choose_decoder(codec, model)
            lines.append(f"{codec}: {c.decoder} — {c.reason}")
        except RuntimeError as exc:
            lines.append(f"{codec}: none — {exc}")
    return lines


def is_keyframe(codec: Codec, data: bytes) -> bool:
    """Does this encoded frame start a picture on its own?

    VP8: bit 0 of the frame tag is 0 on a key frame (RFC 6386, 9.1). H.264 (Annex B):
    the access unit carries an IDR slice (NAL type 5). The RTP depayloader does not
    say so, so the wiring asks here.
    """
    if not data:
        return False
    if codec == "vp8":
        return data[0] & 0x01 == 0
    i = data.find(b"\x00\x00\x01")
    while i != -1 and i + 3 < len(data):
        if data[i + 3] & 0x1F == 5:
            return True
        i = data.find(b"\x00\x00\x01", i + 3)
    return False


FrameSink = Callable[[av.VideoFrame], object]


class VideoDecoder:
    """Decodes one track on its own thread; frames go to ``on_frame`` on that thread.

    ``submit`` never blocks (call it from the event loop's thread); ``close`` stops the
    thread and frees the codec. Decoded frames come out as yuv420p (what the screen
    uploads as they are); other formats are converted in FFmpeg, on this thread.
    """

    def __init__(self, codec: Codec, on_frame: FrameSink, request_keyframe: Callable[[], object],
                 *, name: str = "video", depth: int = DEFAULT_DEPTH,
                 choice: DecoderChoice | None = None) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.codec: Codec = codec
        self.name = name
        self.choice = choice if choice is not None else choose_decoder(codec)
        self._on_frame = on_frame
        self._request_keyframe = request_keyframe
        self._depth = depth
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[EncodedFrame] = collections.deque()
        self._shown = True
        self._closed = False
        self._need_key = True  # a decoder starts at a key frame
        self._received = self._decoded = self._dropped = self._requests = self._errors = 0
        self.failure: BaseException | None = None  # why the thread ended early, if it did
        self._thread = threading.Thread(target=self._run, name=f"display-decode-{name}",
                                        daemon=True)
        self._thread.start()
        log.info("display.decoder.opened", track=name, codec=codec, decoder=self.choice.decoder,
                 hardware=self.choice.hardware)

    # -- the caller's side ------------------------------------------------------------

    def submit(self, frame: EncodedFrame) -> None:
        """Hand over one encoded frame; drops (and asks for a key frame) when behind."""
        ask = False
        with self._cond:
            if self._closed:
                return
            self._received += 1
            if not self._shown:
                self._dropped += 1
                return
            if frame.keyframe:
                # a key frame decodes on its own: when falling behind (half the depth
                # waits), the frames before it are skipped to catch up at once
                if len(self._queue) >= max(1, self._depth // 2):
                    self._dropped += len(self._queue)
                    self._queue.clear()
                self._need_key = False
            elif self._need_key:
                self._dropped += 1
                return
            elif len(self._queue) >= self._depth:
                self._dropped += len(self._queue) + 1
                self._queue.clear()
                self._need_key = ask = True
            if not ask:
                self._queue.append(frame)
                self._cond.notify()
        if ask:
            self._ask_keyframe("behind")

    def set_shown(self, shown: bool) -> None:
        """Decode (True) or drop everything (False); showing again starts at a key frame.

        Logs ``display.decoder.shown`` or ``display.decoder.hidden`` with the counts
        as of the switch: on ``shown``, ``received`` minus what ``hidden`` said is
        what arrived while the participant had no tile, and ``decoded`` is unchanged
        by it.
        """
        ask = False
        with self._cond:
            if shown == self._shown or self._closed:
                return
            self._shown = shown
            if not shown:
                self._dropped += len(self._queue)
                self._queue.clear()
            self._need_key = ask = shown
            received, decoded, dropped = self._received, self._decoded, self._dropped
        log.info("display.decoder.shown" if shown else "display.decoder.hidden",
                 track=self.name, received=received, decoded=decoded, dropped=dropped)
        if ask:
            self._ask_keyframe("shown")

    @property
    def backlog(self) -> int:
        with self._cond:
            return len(self._queue)

    def stats(self) -> DecoderStats:
        with self._cond:
            return DecoderStats(self._received, self._decoded, self._dropped, self._requests,
                                self._errors)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (after the frame it is decoding) and free the codec. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("display.decoder.stuck", track=self.name, timeout=timeout)
        s = self.stats()
        log.info("display.decoder.closed", track=self.name, received=s.received,
                 decoded=s.decoded, dropped=s.dropped, keyframe_requests=s.keyframe_requests,
                 errors=s.errors)

    def __enter__(self) -> VideoDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ask_keyframe(self, why: str) -> None:
        with self._cond:
            self._requests += 1
        log.debug("display.decoder.keyframe_request", track=self.name, why=why)
        try:
            self._request_keyframe()
        except Exception:
            log.exception("display.decoder.keyframe_request_failed", track=self.name)

    # -- the worker thread --------------------------------------------------------------

    def _open_codec(self) -> VideoCodecContext:
        try:
            return cast(VideoCodecContext, av.CodecContext.create(self.choice.decoder, "r"))
        except Exception as exc:
            if not self.choice.hardware:
                raise
            # the board says it has the block, but the device would not open (no
            # /dev/video10, no permission): software rather than no picture
            log.warning("display.decoder.hardware_failed", track=self.name,
                        decoder=self.choice.decoder, error=str(exc))
            self.choice = DecoderChoice(self.codec, "h264", False,
                                        f"software ({self.choice.decoder} failed: {exc})")
            return av.CodecContext.create("h264", "r")

    def _next(self) -> EncodedFrame | None:
        with self._cond:
            self._cond.wait_for(lambda: self._closed or bool(self._queue))
            if self._closed:
                return None
            return self._queue.popleft()

    def _run(self) -> None:
        try:
            self._decode_loop(self._open_codec())
        except Exception as exc:
            self.failure = exc
            log.exception("display.decoder.crashed", track=self.name)

    def _decode_loop(self, ctx: VideoCodecContext) -> None:
        """Decode until closed; the codec (and a V4L2 device) is freed when this returns."""
        while (item := self._next()) is not None:
            packet = av.Packet(item.data)
            packet.pts = item.pts
            try:
                frames = ctx.decode(packet)
            except av.FFmpegError as exc:
                with self._cond:
                    self._errors += 1
                    self._dropped += len(self._queue)
                    self._queue.clear()
                    self._need_key = True
                log.warning("display.decoder.error", track=self.name, error=str(exc))
                self._ask_keyframe("error")
                continue
            for frame in frames:
                if frame.format.name not in ("yuv420p", "yuvj420p"):
                    frame = frame.reformat(format="yuv420p")
                with self._cond:
                    self._decoded += 1
                    closed = self._closed
                if not closed:
                    self._on_frame(frame)
