"""picamera2's encoder threads to the Trio thread: every access unit, never blocking an encoder.

picamera2 hands each access unit to an ``Output``'s ``outputframe`` in the
encoder's own thread (the V4L2 poll thread on VC4, the camera thread for
the libav encoder on a Pi 5). Whatever blocks or raises there stops that
thread, which is a silent stall. So the output made here only copies the
bytes into a bounded deque under a lock and, when the deque was empty,
wakes one Trio task with ``TrioToken.run_sync_soon`` (which never blocks);
that task (:meth:`EncoderBridge.pump`) hands them on, on the Trio thread.
Nothing else is shared with the encoder threads.

When Trio falls ``MAX_PENDING`` access units behind, further ones are
dropped until it catches up, and the pump then says so (``resync``): a
decoder cannot use what follows a gap, so each stream skips to its next IDR
and asks for one (:meth:`.stream.EncoderStream.resync`).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import structlog
import trio

__all__ = ["MAX_PENDING", "AccessUnit", "EncoderBridge"]

log = structlog.get_logger(__name__)

# Access units the encoder threads may queue for Trio; beyond this Trio is
# stuck, and they are dropped up to the next IDR (one is asked for).
MAX_PENDING: Final = 30


class AccessUnit(NamedTuple):
    """One access unit as an encoder thread handed it over (times in µs)."""

    tier: int  # which stream's encoder: 0 main, 1 lores
    generation: int  # that encoder's session (see EncoderStream.generation)
    data: bytes
    keyframe: bool
    timestamp_us: int  # picamera2's: since this encoder's first frame
    sensor_us: int | None  # the sensor's time of the frame, where the encoder says
    delay_us: int | None  # sensor time to handed over


class EncoderBridge:
    """The bounded hand-over from encoder threads to one Trio task, for one source."""

    def __init__(self) -> None:
        self.dropped = 0  # access units dropped because Trio was behind
        self._lock = threading.Lock()
        self._pending: collections.deque[AccessUnit] = collections.deque()
        self._dropping = False  # dropped since the pump last looked: skip to the next IDR
        self._token: trio.lowlevel.TrioToken | None = None
        self._has_units: trio.Event | None = None

    def output(self, base: Any, tier: int, generation: int, encoder: Any) -> Any:
        """A picamera2 ``Output`` (a subclass of ``base``) for one encoder session."""
        return _output_class(base)(self, tier, generation, encoder)

    def put(self, tier: int, generation: int, frame: Any, keyframe: bool,
            timestamp: int | None, first: int | None) -> None:
        """Called in the encoder's thread for every access unit: copy, queue, wake Trio.

        Never blocks and never raises: an exception here would end picamera2's
        poll thread. ``first`` is the sensor time the encoder counts from.
        """
        try:
            data = bytes(frame)
            with self._lock:
                if len(self._pending) >= MAX_PENDING:
                    self.dropped += 1
                    self._dropping = True
                    return
                was_empty = not self._pending
                sensor = None if first is None else int(first) + int(timestamp or 0)
                # libcamera's sensor time stamps are on CLOCK_MONOTONIC
                delay = None if sensor is None else time.monotonic_ns() // 1000 - sensor
                self._pending.append(AccessUnit(tier, generation, data, bool(keyframe),
                                                int(timestamp or 0), sensor, delay))
            if was_empty and self._token is not None:
                self._token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            pass
        except Exception:  # nothing useful can be done in this thread
            pass

    def _wake(self) -> None:
        if self._has_units is not None:
            self._has_units.set()

    async def pump(self, deliver: Callable[[AccessUnit], None], resync: Callable[[], None],
                   *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hand what the encoder threads queued to ``deliver``, on the Trio thread.

        ``resync`` is called first whenever access units were dropped. Started
        with ``nursery.start``: once it has, an encoder may be started.
        """
        self._token = trio.lowlevel.current_trio_token()
        self._has_units = trio.Event()
        task_status.started()
        while True:
            await self._has_units.wait()
            self._has_units = trio.Event()
            with self._lock:
                units = list(self._pending)
                self._pending.clear()
                dropping, self._dropping = self._dropping, False
            if dropping:
                log.warning("media.picamera2.packets_dropped", dropped=self.dropped,
                            reason="the agent fell behind the encoder")
                resync()
            for unit in units:
                deliver(unit)


def _output_class(base: Any) -> Any:
    """A picamera2 ``Output`` subclass that hands access units to an EncoderBridge.

    Made on demand because picamera2 is imported lazily; cached per base class.
    """
    cls = _OUTPUT_CLASSES.get(base)
    if cls is None:

        class TrioOutput(base):  # type: ignore[misc]
            def __init__(self, bridge: EncoderBridge, tier: int, generation: int,
                         encoder: Any) -> None:
                super().__init__()
                self._bridge = bridge
                self._tier = tier
                self._generation = generation
                self._encoder = encoder

            def outputframe(self, frame: Any, keyframe: bool = True,
                            timestamp: int | None = None, packet: Any = None,
                            audio: bool = False) -> None:
                # picamera2 passes all five positionally, from the encoder's thread
                if audio or frame is None:
                    return
                # where this encoder's time stamps count from: the sensor's clock
                first = getattr(self._encoder, "firsttimestamp", None)
                self._bridge.put(self._tier, self._generation, frame, keyframe, timestamp,
                                 first)

        cls = _OUTPUT_CLASSES[base] = TrioOutput
    return cls


_OUTPUT_CLASSES: dict[Any, Any] = {}
