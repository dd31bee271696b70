"""The media source interface, and the plumbing every real source shares.

A source produces raw frames in real time and hands each one to a *sink*: a plain,
non-blocking callable run on the Trio thread (the caller's "latest frame wins"
mailbox for video, a queue for audio).  Sources never await their sink, so a slow
encoder can never stall a camera or a microphone.

Sources are restartable: :meth:`VideoSource.run` / :meth:`AudioSource.run` may be
called again after they raised, and the caller supervises them with back-off
(:mod:`glimpse_edge.supervise`).  A device problem is raised as :class:`SourceError`
whose message tells an operator reading the journal which device failed, what
happened, and what to check.

Time stamps:

* video ``pts`` count 1/90000 s of :func:`time.monotonic_ns` at capture, so they are
  strictly increasing across loops of a file and across restarts of a source, and
  spaced in real time whatever the device's own clock does;
* audio ``pts`` count samples (time base ``1/rate``) and are contiguous: each frame
  starts where the previous one ended, also across restarts of the same source
  object, because Opus/RTP time stamps are derived from them.

Blocking devices (ALSA, v4l2, file decoding) run in a dedicated thread through
:func:`pump_thread`, which gives the device lifetime to that thread (it opens *and*
closes the device), hands items to Trio with back-pressure, detects a stalled device,
and stops within a second of cancellation.
"""

from __future__ import annotations

import abc
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final, Generic, TypeVar, cast

import av
import numpy as np
import numpy.typing as npt
import structlog
import trio
from av.packet import Packet

from ..config import QualityTier

__all__ = [
    "VIDEO_CLOCK_RATE",
    "VIDEO_TIME_BASE",
    "AnyVideoSource",
    "AudioSink",
    "AudioSource",
    "Emit",
    "EncodedVideoSource",
    "EncodingStats",
    "PacketSink",
    "SourceError",
    "StrictlyIncreasing",
    "VideoSink",
    "VideoSource",
    "WorkerStopped",
    "monotonic_pts",
    "plane_view",
    "pump_thread",
]

log = structlog.get_logger(__name__)

VIDEO_CLOCK_RATE: Final = 90_000
VIDEO_TIME_BASE: Final = Fraction(1, VIDEO_CLOCK_RATE)

WORKER_STOP_TIMEOUT: Final = 1.0
"""Seconds to wait for a worker thread after cancellation before abandoning it."""


class SourceError(Exception):
    """A hardware/input problem with a clear, user-facing message.

    The message names the device, says what happened and what to check, e.g.
    ``"audio device 'hw:1': no such device - is the USB microphone plugged in?"``.
    """


VideoSink = Callable[[av.VideoFrame], None]
"""Receives every video frame; non-blocking; called from the Trio thread."""

AudioSink = Callable[[av.AudioFrame], None]
"""Receives every audio frame; non-blocking; called from the Trio thread."""

PacketSink = Callable[["Packet[Any]"], None]
"""Receives every encoded video packet; non-blocking; called from the Trio thread."""


class VideoSource(abc.ABC):
    """Produces ``yuv420p`` frames of exactly ``width`` x ``height`` in real time."""

    name: str  # "testpattern", "v4l2:/dev/video0", "file:/path"
    width: int
    height: int
    framerate: int

    @abc.abstractmethod
    async def run(self, sink: VideoSink) -> None:
        """Produce frames in real time until cancelled.

        Raises :class:`SourceError` on device failure; the caller supervises and
        restarts with back-off.
        """

    async def prepare(self) -> None:
        """Blocking set-up, off the Trio thread: see :meth:`EncodedVideoSource.prepare`."""
        return  # these sources open their devices in run()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.width}x{self.height}@{self.framerate}>"


@dataclass
class EncodingStats:
    """Counters and settings of an encoding a source makes beside its own (a lower
    tier), named like the shared encoders' so that status and metrics show both."""

    width: int
    height: int
    framerate: int
    bitrate: int
    max_fps: float | None = None
    frames_encoded: int = 0
    keyframes_encoded: int = 0
    bytes_encoded: int = 0


class EncodedVideoSource(abc.ABC):
    """Produces video already encoded for one codec: a camera with its own encoder.

    On a Raspberry Pi the camera stack feeds the hardware H.264 encoder directly,
    and decoding its output only to encode it again would cost the CPU the
    hardware saved. So such a source hands over packets, which the hub
    publishes to the shared stream of that codec untouched (no decode, no
    re-encode), instead of raw frames.

    Each packet is one access unit (Annex-B for H.264) with ``pts`` in
    1/90000 s, strictly increasing across restarts of the source's encoder,
    ``time_base`` set and ``is_keyframe`` true for IDR frames, which carry
    SPS/PPS so that a peer can start decoding at any of them.

    The counters and settings below mirror the shared software encoder's
    (:class:`~glimpse_edge.media.encoder.VideoEncoder`), so status and metrics
    show either the same way.
    """

    name: str
    codec: str  # "h264"
    width: int
    height: int
    framerate: int
    bitrate: int
    frames_encoded: int = 0
    keyframes_encoded: int = 0
    bytes_encoded: int = 0
    stall_timeout: float | None = None
    """Seconds without a packet before the hub restarts the whole source (None: the
    hub's default). A source that watches itself (restarting its own encoder,
    then its camera, first) sets it above its own escalation."""

    @abc.abstractmethod
    async def run(self, sink: PacketSink) -> None:
        """Produce packets in real time until cancelled.

        Raises :class:`SourceError` on device failure; the caller supervises and
        restarts with back-off.
        """

    async def prepare(self) -> None:
        """Blocking set-up (importing a device library), in a worker thread.

        The hub awaits it after making the source and before it reads
        ``name`` and ``tiers``, which may depend on it; a constructor runs
        on the Trio thread and must not block. Raises :class:`SourceError`
        like :meth:`run`; :meth:`run` prepares too if it was not done.
        Default: nothing to do.
        """
        return

    @abc.abstractmethod
    def request_keyframe(self, urgent: bool = False, tier: int = 0) -> bool:
        """Ask for an IDR frame soon (a peer joined or lost packets: PLI/FIR).

        Rate-limited like the shared encoders: True if one is on its way now,
        False if it was deferred (not dropped). ``urgent`` skips the interval.
        """

    @abc.abstractmethod
    def set_bitrate(self, bitrate: int) -> None:
        """Change the target bitrate (rate-limited; may restart the encoder)."""

    # -- lower quality tiers (optional) ----------------------------------------

    @property
    def tiers(self) -> tuple[QualityTier, ...]:
        """The encodings this source can make, best first: its own, then any lower
        ones it can encode beside it (the Pi camera's second, smaller stream)."""
        return (QualityTier(width=self.width, height=self.height, bitrate=self.bitrate),)

    def open_tier(self, tier: int, sink: PacketSink) -> None:
        """Start encoding lower tier ``tier`` (>= 1), its packets to ``sink``.

        Called from the Trio thread while :meth:`run` runs (and again after
        each restart of the source). Packets of one picture in different
        tiers carry the same ``pts``, so a peer can switch between them on a
        key frame without a gap or a step back in time.
        """
        raise NotImplementedError(f"{self.name} has no lower tiers")

    def close_tier(self, tier: int) -> None:
        """Stop encoding lower tier ``tier`` (nobody is on it any more)."""
        return  # a source without lower tiers never opened one

    def tier_stats(self, tier: int) -> EncodingStats | None:
        """Lower tier ``tier``'s counters while it is open (None: it is not)."""
        return None

    def set_tier_rate(self, tier: int, bitrate: int, max_fps: float | None) -> None:
        """Aim lower tier ``tier`` at ``bitrate``, and at most ``max_fps`` frames a second
        (None: the full rate); rate-limited, like :meth:`set_bitrate`."""
        return  # a source without lower tiers has nothing to aim

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name} {self.codec} "
                f"{self.width}x{self.height}@{self.framerate}>")


AnyVideoSource = VideoSource | EncodedVideoSource
"""What a video source factory returns: raw frames, or packets of one codec."""


class AudioSource(abc.ABC):
    """Produces packed ``s16`` frames of ``samples_per_frame`` samples in real time."""

    name: str  # "tone", "alsa:default"
    rate: int
    channels: int
    samples_per_frame: int

    @abc.abstractmethod
    async def run(self, sink: AudioSink) -> None:
        """Produce frames in real time until cancelled.

        Raises :class:`SourceError` on device failure; the caller supervises and
        restarts with back-off.
        """

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name} {self.rate} Hz x{self.channels} "
            f"{self.samples_per_frame} samples/frame>"
        )


def plane_view(frame: av.VideoFrame, index: int, width: int, height: int) -> npt.NDArray[np.uint8]:
    """A (height, width) view of one 8-bit plane of ``frame``, honouring its stride.

    Writable for frames we allocated: sources draw into frames in place instead of
    building an array and copying it in with ``from_ndarray``.
    """
    plane = frame.planes[index]
    rows = np.frombuffer(cast(Any, plane), dtype=np.uint8).reshape(-1, plane.line_size)
    return rows[:height, :width]


def monotonic_pts() -> int:
    """Now on the monotonic clock, in 1/90000 s: the capture time stamp of a video frame."""
    return time.monotonic_ns() * 9 // 100_000


class StrictlyIncreasing:
    """Makes capture stamps strictly increasing even when two frames share a tick."""

    def __init__(self) -> None:
        self._last: int | None = None

    def __call__(self, pts: int) -> int:
        if self._last is not None and pts <= self._last:
            pts = self._last + 1
        self._last = pts
        return pts


# --------------------------------------------------------------------- worker threads

T = TypeVar("T")

Emit = Callable[[T], None]
"""Hands one item from a worker thread to Trio; blocks while Trio is behind.

Raises :class:`WorkerStopped` once the source is being stopped: producers let it
propagate (after closing their device in ``finally``)."""


class WorkerStopped(Exception):
    """Raised inside a worker thread to unwind it when its source is stopped."""


class _Pump(Generic[T]):
    """State shared between a worker thread and the Trio task that consumes it."""

    def __init__(self, name: str, buffer: int) -> None:
        self.name = name
        self.send, self.recv = trio.open_memory_channel[T](buffer)
        self.token = trio.lowlevel.current_trio_token()
        self.stop = threading.Event()
        self.exited = trio.Event()
        self.error: BaseException | None = None

    def emit(self, item: T) -> None:
        if self.stop.is_set():
            raise WorkerStopped
        try:
            trio.from_thread.run(self.send.send, item, trio_token=self.token)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError):
            raise WorkerStopped from None
        except trio.Cancelled:  # the run is shutting down
            raise WorkerStopped from None

    def thread_main(self, produce: Callable[[Emit[T], threading.Event], None]) -> None:
        try:
            produce(self.emit, self.stop)
        except WorkerStopped:
            pass
        except BaseException as exc:
            self.error = exc
        finally:
            with contextlib.suppress(trio.RunFinishedError):
                self.token.run_sync_soon(self._finish)

    def _finish(self) -> None:
        self.send.close()
        self.exited.set()


async def pump_thread(
    name: str,
    produce: Callable[[Emit[T], threading.Event], None],
    consume: Callable[[T], Awaitable[None]],
    *,
    stall_timeout: float | None,
    stall_message: str = "",
    buffer: int = 2,
) -> None:
    """Run ``produce(emit, stop)`` in its own thread and ``await consume(item)`` per item.

    Why a dedicated thread rather than ``trio.to_thread.run_sync`` per read: the
    device must be opened, read and closed by one thread, and a read wedged in a
    driver must not keep the Trio task from stopping.  So on cancellation we set
    ``stop`` (producers check it between reads), break the hand-off, wait at most
    :data:`WORKER_STOP_TIMEOUT` for the thread, and otherwise abandon it (it is a
    daemon thread and still closes its device when its read returns).

    ``emit`` blocks while ``buffer`` items are waiting, which bounds memory and
    keeps a file decoder from running ahead.  No item for ``stall_timeout`` seconds
    raises ``SourceError(stall_message)``: a device that stops delivering must be
    reopened.  An exception raised by ``produce`` is re-raised here; ``produce``
    returning ends this function normally.
    """
    pump: _Pump[T] = _Pump(name, buffer)
    thread = threading.Thread(
        target=pump.thread_main, args=(produce,), name=f"glimpse-{name}", daemon=True
    )
    thread.start()
    try:
        while True:
            with trio.move_on_after(
                stall_timeout if stall_timeout is not None else float("inf")
            ) as waiting:
                try:
                    item = await pump.recv.receive()
                except trio.EndOfChannel:
                    break
            if waiting.cancelled_caught:
                raise SourceError(stall_message or f"{name}: no data for {stall_timeout:g} s")
            await consume(item)
    finally:
        pump.stop.set()
        pump.recv.close()  # a blocked emit() now raises WorkerStopped
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + WORKER_STOP_TIMEOUT
            await pump.exited.wait()
        if pump.exited.is_set():
            # It has only its return left to do: make "run() returned" mean "thread gone".
            thread.join(0.1)
        else:
            log.warning(
                "media.source.worker_abandoned", source=name, thread=thread.name,
                waited=WORKER_STOP_TIMEOUT,
            )
    if pump.error is not None:
        raise pump.error
