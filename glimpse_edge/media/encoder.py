"""Shared encoders: frames in, ``Packet`` out, once for every peer.

aiortc encodes separately for every sender; a Pi cannot afford that. These
encoders run once per codec (and later per quality tier) and every peer's
track sends the same packets, which aiortc then only packetizes.

The encoders are synchronous and CPU-bound: callers run :meth:`encode` in a
worker thread. Requests from other threads or tasks (a key frame, a new
bitrate, a frame-rate limit) are flags read at the next frame, so no lock is
held while encoding. Several encoders may read the same source frame at once:
none of them writes to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Literal

import av
import structlog
from av.packet import Packet
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from .fanout import private_copy

log = structlog.get_logger(__name__)

VideoCodec = Literal["h264", "vp8"]
VIDEO_TIME_BASE = Fraction(1, 90000)

# A key frame costs several normal frames of bandwidth; PLIs from many peers
# (or one broken one) must not turn the stream into key frames only. A request
# within this interval is deferred to its end, not dropped: the peer that
# asked has nothing to decode until a key frame comes.
KEYFRAME_MIN_INTERVAL = 0.5
# Rebuilding an encoder for a new bitrate implies a key frame: not too often,
# except for a rate under FALL_AT_ONCE of the one it runs at (a peer that moved
# down at a congestion's onset cannot carry it: media/pipeline.py says more).
BITRATE_MIN_INTERVAL = 1.0
FALL_AT_ONCE = 0.6
# libx264 does not take a new average rate in place: FFmpeg hands it over, but
# x264 reconfigures only the VBV ("We don't support changing the ABR bitrate
# right now", ratecontrol.c). Measured: 300 -> 500 kbit/s asked of an open
# encoder, 300 kept; 500 -> 250, 500 kept. (Applied "in place", the lowest
# tier kept the rate of its last reopen for 37 s under a 1 Mbit/s uplink cap.)
# A new rate takes a reopened encoder, whose first frame is a key frame:
# - a lower rate at the next frame: a congested link must not carry the old
#   rate until the GOP's key frame, and the key frame it gets instead (sized
#   by the new, smaller VBV) replaces that one (the GOP counts from it);
# - a raise of RAISE_AT_ONCE or more at the next frame too: the link has room
#   (a cap lifted), and waiting, what we sent lagged the uplink's estimate by
#   ~5 s;
# - a smaller raise (a link creeping back) at the next key frame due anyway,
#   the GOP's or one asked for, or after RATE_APPLY_WITHIN at the latest:
#   one IDR per step of a recovering link made five in five seconds.
RATE_APPLY_WITHIN = 2.0
RAISE_AT_ONCE = 1.25
# Below its nominal rate libx264 runs constant-rate (nal-hrd=cbr: filler NAL
# units make up what a frame leaves of it; decoders skip them). There the rate
# is a link's share, and what we send is how that link is measured: average
# rate control sent 70-85 % of it (200 kbit/s asked of a grainy 640x360: 136-172
# delivered, 80 % in the 2 s after each reopen), so the uplink's estimate ran
# 20-25 % ahead of what the link was shown to carry, the overload came only when
# the estimate was well past the link, and after a cap lifted what we sent
# trailed the estimate by seconds. Measured, CBR: 149/150, 250/250, 402/400
# kbit/s, from the first second after a reopen. At its nominal rate (the top
# tiers, a link with room) it stays average-rate: a still room needs fewer bits.
# libx264's VBV buffer, in seconds of its ceiling: no frame (an IDR above all)
# is much bigger than this, so the pacer (2.5 x the rate, rtc/pacer.py) sends
# a key frame in a few frame intervals rather than a burst a Wi-Fi queue drops.
VBV_SECONDS = 1 / 3
# A frame is encoded when this little short of a whole credit is there (time
# stamps jitter by a tick or two around the frame interval).
_CREDIT_SLACK = 0.02
# libx264's VBV ceiling (maxrate) above the rate: room for a complex frame.
VBV_HEADROOM = 1.5
# libvpx's cap on a key frame, in % of an average frame: libwebrtc's rule
# (half the optimal buffer, 600 ms, in frames).
VP8_OPTIMAL_BUFFER_MS = 600


class VideoEncoder:
    """One H.264 (libx264) or VP8 (libvpx) encoder producing Annex-B / VP8 packets."""

    def __init__(
        self,
        codec: VideoCodec,
        width: int,
        height: int,
        framerate: int,
        bitrate: int,
        keyframe_interval: float = 2.0,
        preset: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``preset``: libx264's, instead of the size-based default (ultrafast above
        640x480, veryfast up to it); lower quality tiers take a cheaper one.
        ``clock`` times the key-frame and bitrate intervals (tests pass their own)."""
        self.codec: VideoCodec = codec
        self.width = width
        self.height = height
        self.framerate = framerate
        self.bitrate = bitrate
        self.preset = preset or ("ultrafast" if width * height > 640 * 480 else "veryfast")
        # libx264's VBV ceiling (maxrate): the first bitrate, then VBV_HEADROOM above
        # the rate of each reopen
        self.ceiling = bitrate
        self.nominal = bitrate  # the rate it was made for: the ceiling's upper bound
        self.gop = max(1, round(framerate * keyframe_interval))
        self.frames_encoded = 0
        self.keyframes_encoded = 0
        self.bytes_encoded = 0
        self._context: av.VideoCodecContext | None = None
        self._want_keyframe = True
        self._urgent_keyframe = False
        self._clock = clock
        self._last_keyframe = -KEYFRAME_MIN_INTERVAL
        self._want_bitrate: int | None = None
        self._last_bitrate_change = -BITRATE_MIN_INTERVAL
        self._reformatter = VideoReformatter()
        self.max_fps: float | None = None  # below ``framerate``: frames are skipped
        self.frames_skipped = 0
        self._last_time: float | None = None  # source time of the last frame seen
        self._fps_credit = 1.0  # frames that may be encoded now, under ``max_fps``
        self._since_keyframe = 0  # frames encoded since the last key frame
        self.keyframes_resized = 0  # reopened for a new rate (its first frame a key frame)
        self._opened_rate = 0  # what libx264 was opened with (rate x frame-skip factor)
        self._rate_pending_since: float | None = None  # a new rate waits for a reopen since
        self._want_size: tuple[int, int] | None = None  # a new size, from the next frame

    # -- requests (any thread) ---------------------------------------------

    def request_keyframe(self, urgent: bool = False) -> bool:
        """Ask for a key frame: at the next frame, or (False) once 0.5 s have passed
        since the last one; any key frame made before then answers it too.

        Deferred rather than dropped: the peer that asked has no picture until
        it comes. ``urgent`` (a new viewer) skips the interval: joins are few,
        PLIs can come in storms, and a viewer joining 0.1 s after a key frame
        would otherwise stare at nothing for the rest of the 0.5 s.
        """
        self._want_keyframe = True
        self._urgent_keyframe = self._urgent_keyframe or urgent
        return urgent or self._clock() - self._last_keyframe >= KEYFRAME_MIN_INTERVAL

    def set_bitrate(self, bitrate: int) -> None:
        """Change the target bitrate (applied at the next frame, rate-limited)."""
        if bitrate != self.bitrate:
            self._want_bitrate = bitrate

    @property
    def target_bitrate(self) -> int:
        """The bitrate asked for last (applied at the next frame, or already)."""
        return self._want_bitrate or self.bitrate

    def set_size(self, width: int, height: int) -> None:
        """Encode at ``width`` x ``height`` from the next frame on (frames are scaled to it).

        The lowest tier's step down on a slow link (media/pipeline.py): fewer
        pixels at the full frame rate. Applied at once, with a bitrate asked
        for meanwhile, in one reopen whose first frame is a key frame (the new
        size's SPS): the receivers' decoders change size there.
        """
        self._want_size = None if (width, height) == (self.width, self.height) \
            else (width, height)

    @property
    def target_size(self) -> tuple[int, int]:
        """The size asked for last (applied at the next frame, or already)."""
        return self._want_size or (self.width, self.height)

    def set_max_fps(self, fps: float | None) -> None:
        """Encode at most ``fps`` frames a second (None: every frame the source gives).

        The lowest quality tier's last resort: on a link too slow for a
        watchable picture at the full rate, fewer frames keep each one sharp.
        """
        self.max_fps = None if fps is None or fps >= self.framerate else max(fps, 1.0)

    @property
    def _rate_factor(self) -> float:
        """libx264's rate control budgets per frame at the nominal rate: when frames
        are skipped, its target is raised so the bits per second stay as asked."""
        if self.codec == "h264" and self.max_fps is not None:
            return self.framerate / self.max_fps
        return 1.0

    # -- encoding (one worker thread at a time) -----------------------------

    def _open(self) -> av.VideoCodecContext:
        if self.codec == "h264":
            ctx = av.CodecContext.create("libx264", "w")
            # Constrained baseline, no B-frames, SPS/PPS with every IDR: what
            # browsers decode and what a mid-stream joiner needs. VBV keeps a
            # frame from bursting far above the target (no pacing in aiortc).
            # A new rate needs a reopen (RATE_APPLY_WITHIN says why).
            buf = max(round(self.ceiling * VBV_SECONDS), 50_000)
            # held below its nominal rate (the lowest tier on a limited link),
            # exactly the rate ("Below its nominal rate", above, says why)
            cbr = self.bitrate < self.nominal
            ctx.options = {
                "preset": self.preset,
                "tune": "zerolatency",
                "profile": "baseline",
                "maxrate": str(round(self.bitrate * self._rate_factor) if cbr else self.ceiling),
                "bufsize": str(buf),
                "x264-params": (
                    f"keyint={self.gop}:min-keyint={self.gop}:scenecut=0:bframes=0:"
                    f"repeat-headers=1:nal-hrd={'cbr' if cbr else 'none'}"
                ),
            }
        else:
            ctx = av.CodecContext.create("libvpx", "w")
            ctx.options = {
                "deadline": "realtime",
                "cpu-used": "8",
                "lag-in-frames": "0",
                "error-resilient": "1",
                "auto-alt-ref": "0",
                "static-thresh": "0",
                "undershoot-pct": "95",
                "buf-initial-sz": "500",
                "buf-optimal-sz": "600",
                "buf-sz": "1000",
                "max-intra-rate": str(VP8_OPTIMAL_BUFFER_MS * self.framerate // 20),
            }
            ctx.gop_size = self.gop
        ctx.width = self.width
        ctx.height = self.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = VIDEO_TIME_BASE
        ctx.framerate = Fraction(self.framerate, 1)
        ctx.bit_rate = self._opened_rate = round(self.bitrate * self._rate_factor)
        ctx.thread_count = 2 if self.width * self.height > 640 * 480 else 1
        ctx.open()
        log.info("media.encoder.opened", codec=self.codec, width=self.width, height=self.height,
                 framerate=self.framerate, bitrate=self.bitrate, gop=self.gop)
        return ctx

    def _apply_bitrate(self) -> None:
        want = self._want_bitrate
        if want is None or (self._clock() - self._last_bitrate_change < BITRATE_MIN_INTERVAL
                            and want >= FALL_AT_ONCE * self.bitrate):
            return
        self._want_bitrate = None
        self._last_bitrate_change = self._clock()
        log.info("media.encoder.bitrate", codec=self.codec, old=self.bitrate, new=want,
                 max_fps=self.max_fps)
        self.bitrate = want
        if self.codec != "h264":
            self.close()  # libvpx is rebuilt for the new rate; starts with a key frame

    def _rate_waits(self) -> bool:
        """An open libx264 runs at another rate than asked (it changes only on reopening)."""
        if self.codec != "h264" or self._context is None:
            self._rate_pending_since = None
            return False
        if round(self.bitrate * self._rate_factor) == self._opened_rate:
            self._rate_pending_since = None
            return False
        if self._rate_pending_since is None:
            self._rate_pending_since = self._clock()
        return True

    def _skip(self, frame: av.VideoFrame) -> bool:
        """True if encoding ``frame`` would go over ``max_fps``.

        A credit of frames: each source frame earns ``max_fps`` x the time since
        the one before, and a frame is encoded when a whole one is there. (A
        minimum spacing after the last frame encoded, the first version, kept
        every other frame of a 30 fps source for any limit between 15 and 30:
        a lowest tier asked for 25 fps sent 15, and libx264, told to budget for
        25, spent only 60 % of its rate.)
        """
        at, last = frame.time, self._last_time
        self._last_time = at
        if self.max_fps is None or at is None or last is None or not 0 <= at - last < 1.0:
            self._fps_credit = 1.0  # the next frame is due (no limit, or a new start)
        else:
            self._fps_credit = min(self._fps_credit + (at - last) * self.max_fps, 2.0)
        if self.max_fps is None or self._fps_credit >= 1.0 - _CREDIT_SLACK:
            self._fps_credit = max(self._fps_credit - 1.0, 0.0)
            return False
        self.frames_skipped += 1
        return True

    def encode(self, frame: av.VideoFrame) -> list[Packet[Any]]:
        """Encode one frame; returns the packets (one access unit, usually one packet)."""
        if self._skip(frame):
            return []
        if self._want_size is not None:
            self.width, self.height = self._want_size
            self._want_size = None
            self._last_bitrate_change = -BITRATE_MIN_INTERVAL  # a new rate in the same reopen
            self._apply_bitrate()
            self._reopen_for_rate()
        self._apply_bitrate()
        if self._rate_waits() and (
                self._keyframe_due() or self._since_keyframe + 1 >= self.gop
                or self._clock() - (self._rate_pending_since or 0.0) >= RATE_APPLY_WITHIN
                or not self._opened_rate <= self.bitrate * self._rate_factor
                < RAISE_AT_ONCE * self._opened_rate):
            self._reopen_for_rate()
        if self._context is None:
            self._context = self._open()
            self._want_keyframe = True
        shared = True
        if frame.width != self.width or frame.height != self.height or frame.format.name != (
            "yuv420p"
        ):
            # our own reformatter: PyAV keeps a scaler on the frame object,
            # which encoders in other threads share
            frame = self._reformatter.reformat(frame, width=self.width, height=self.height,
                                               format="yuv420p")
            shared = False
        if self._keyframe_due():
            if shared:  # another encoder may be reading it: mark a copy
                frame = private_copy(frame)
            frame.pict_type = PictureType.I
            self._want_keyframe = self._urgent_keyframe = False
        elif not shared:
            frame.pict_type = PictureType.NONE
        packets = list(self._context.encode(frame))
        for packet in packets:
            packet.time_base = VIDEO_TIME_BASE
            self.frames_encoded += 1
            self.bytes_encoded += packet.size
            self._since_keyframe += 1
            if packet.is_keyframe:
                self._since_keyframe = 0
                self.keyframes_encoded += 1
                self._last_keyframe = self._clock()
                # a GOP key frame serves a pending request too
                self._want_keyframe = self._urgent_keyframe = False
        return packets

    def _keyframe_due(self) -> bool:
        """A key frame was asked for, and may be made now."""
        return self._want_keyframe and (
            self._urgent_keyframe or self._clock() - self._last_keyframe >= KEYFRAME_MIN_INTERVAL)

    def _reopen_for_rate(self) -> None:
        """Reopen libx264 at the rate (and size) asked, with a VBV fitted to it.

        At a key frame due anyway this costs nothing more; the new buffer
        also sizes the key frame for the link (a rate lowered without it
        kept the buffer of the rate before: a 31 kB IDR on a 150 kbit/s
        link).
        """
        self.ceiling = min(round(self.bitrate * VBV_HEADROOM), max(self.nominal, self.bitrate))
        self.keyframes_resized += 1
        self._rate_pending_since = None
        self.close()  # reopened by encode(): its first frame is the key frame

    def close(self) -> None:
        self._context = None


class OpusEncoder:
    """Opus for every peer; packets re-stamped with contiguous sample counts.

    libopus delays its output by a pre-skip; the RTP clock only needs
    packets spaced by their duration, so pts is our own sample counter.
    """

    def __init__(self, rate: int, channels: int, bitrate: int = 48_000) -> None:
        self.rate = rate
        self.channels = channels
        self.bitrate = bitrate
        self._context: av.AudioCodecContext | None = None
        self._pts = 0
        self.packets_encoded = 0

    def _open(self) -> av.AudioCodecContext:
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = self.rate
        ctx.layout = "stereo" if self.channels == 2 else "mono"
        ctx.format = "s16"
        ctx.bit_rate = self.bitrate
        ctx.time_base = Fraction(1, self.rate)
        ctx.options = {"application": "voip", "frame_duration": "20"}
        ctx.open()
        log.info("media.encoder.opened", codec="opus", rate=self.rate, channels=self.channels,
                 bitrate=self.bitrate)
        return ctx

    def encode(self, frame: av.AudioFrame) -> list[Packet[Any]]:
        if self._context is None:
            self._context = self._open()
        frame.pts = None  # libopus buffers to 20 ms frames itself
        out = []
        for packet in self._context.encode(frame):
            samples = packet.duration or self.rate // 50
            packet.pts = self._pts
            packet.dts = self._pts
            packet.time_base = Fraction(1, self.rate)
            self._pts += samples
            self.packets_encoded += 1
            out.append(packet)
        return out
