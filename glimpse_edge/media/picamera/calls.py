"""picamera2's calls, each in a worker thread: one at a time, with a deadline, abandoned on cancel.

picamera2 blocks: importing it probes the camera devices, opening a camera
takes about a second, stopping an encoder waits for the codec, and a codec
that hangs (the camera thread stuck inside it, holding the encoder's lock)
makes some calls never return. So none runs on the Trio thread. Each runs
in a worker thread, one at a time (picamera2 is not reentrant), and the
Trio side waits for it at most a deadline. The thread only makes the call
and its result comes back to Trio, so nothing is shared with it.

A call that does not return in time is abandoned (its thread keeps the one
slot until it returns, so every later call waits for it, and times out
too) and raises :class:`CallTimedOut`: the camera session then closes the
camera, which is the last word on whether it is hung. If ``close()`` does
not return either, :class:`CameraHung` (a
:class:`~glimpse_edge.supervise.Fatal` error) ends the process, since only
a fresh one gets the camera back (systemd restarts it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar

import structlog
import trio

from ...supervise import Fatal
from ..source import SourceError
from .errors import chain
from .opening import CameraPlan, open_camera

__all__ = [
    "CALL_TIMEOUT",
    "IMPORT_TIMEOUT",
    "OPEN_TIMEOUT",
    "CallTimedOut",
    "CameraCalls",
    "CameraHung",
]

log = structlog.get_logger(__name__)

# Importing picamera2 loads numpy and libcamera and probes /dev/video*:
# seconds on a Pi Zero. One that takes longer is tried again by the hub.
IMPORT_TIMEOUT: Final = 30.0
OPEN_TIMEOUT: Final = 15.0  # Picamera2() + configure, normally about a second
# Any other call (start/stop an encoder, force a key frame, start/close the
# camera) normally takes well under a second: the V4L2 poll thread gives up
# waiting for the codec after 0.4 s, the libav encoder flushes a frame or two.
CALL_TIMEOUT: Final = 5.0

T = TypeVar("T")


class CameraHung(Fatal):
    """picamera2 hung in a call that cannot be cancelled, and the camera cannot be closed.

    The camera (and the threads stuck in it) cannot be had back in this
    process: the agent exits, and systemd starts a fresh one.
    """


class CallTimedOut(SourceError):
    """A picamera2 call did not return within its deadline (its thread is abandoned)."""

    def __init__(self, what: str, waited: float) -> None:
        super().__init__(f"picamera2's {what} did not return within {waited:g} s")
        self.what = what


class CameraCalls:
    """The picamera2 calls of one source (one camera), made one at a time."""

    def __init__(self, camera_index: int) -> None:
        self.camera_index = camera_index
        self.hung: str | None = None  # the first call that did not return
        self._limiter = trio.CapacityLimiter(1)

    async def __call__(self, what: str, fn: Callable[..., T], *args: Any,
                       timeout: float | None = None) -> T:
        """``fn(*args)`` in a worker thread, within ``timeout`` (``CALL_TIMEOUT``)."""
        timeout = CALL_TIMEOUT if timeout is None else timeout
        with trio.move_on_after(timeout):
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter,
                                                 abandon_on_cancel=True)
        self.hung = self.hung or what
        log.error("media.picamera2.call_timeout", camera=self.camera_index, call=what,
                  waited=timeout)
        raise CallTimedOut(what, timeout)

    async def open(self, plan: CameraPlan) -> tuple[Any, str]:
        """Open and configure the camera (:func:`.opening.open_camera`): it and its model.

        An open that takes longer than ``OPEN_TIMEOUT`` is a slow or busy
        camera rather than a hung one: a SourceError, which the hub retries;
        the thread, still running, closes what it opens.
        """
        abandoned = threading.Event()
        try:
            with trio.fail_after(OPEN_TIMEOUT):
                return await trio.to_thread.run_sync(open_camera, plan, abandoned,
                                                     limiter=self._limiter,
                                                     abandon_on_cancel=True)
        except trio.TooSlowError:
            raise SourceError(f"camera {self.camera_index} did not open within "
                              f"{OPEN_TIMEOUT:g} s") from None
        finally:
            abandoned.set()  # if the thread still runs, it closes what it opened

    async def close(self, cam: Any) -> None:
        """``cam.close()``, bounded; :class:`CameraHung` if it does not return.

        ``close()``, not ``stop()``: it stops the camera's thread first and
        then the camera directly, which works even when that thread has died,
        where ``stop()`` would wait for it forever.
        """
        try:
            await self("close", cam.close)
        except CallTimedOut:
            log.critical("media.picamera2.hung", camera=self.camera_index, call=self.hung,
                         detail="the camera cannot be closed; the agent exits so that "
                         "systemd starts it afresh")
            raise CameraHung(f"camera {self.camera_index}: picamera2's {self.hung} hung and "
                             f"the camera could not be closed within {CALL_TIMEOUT:g} s; only "
                             "a new process can use it again") from None
        except Exception as exc:
            log.warning("media.picamera2.close_step_failed", step="close", error=chain(exc))
        self.hung = None  # whatever hung has let go
        log.info("media.picamera2.closed", camera=self.camera_index)
