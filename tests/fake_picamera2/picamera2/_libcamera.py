"""The simulated libcamera under the stand-in's picamera2 (not part of picamera2's API).

What picamera2 gets from libcamera's Python bindings, reduced to what the
stand-in needs: a process-wide ``CameraManager`` (``singleton()``, ``cameras``,
``event_fd``, ``get_ready_requests()``) and its ``Camera`` objects
(``acquire``/``release``, ``start``/``stop``, ``create_request``,
``queue_request``). Each started camera runs a sensor thread (libcamera's own
threads) that completes one queued request per frame interval, stamps it with
the sensor clock, and signals the manager's event fd; the picamera2 layer
picks completed requests up from there exactly as the real one does.

Requests are libcamera's: a camera has as many as its configuration has
buffers, and a frame for which no request is queued is dropped (the sensor
goes on running). picamera2 queues a request again only when every holder
has released it, so a consumer that keeps requests starves the camera.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from typing import Any

import numpy as np

from . import _hardware


class RequestStatus:
    Pending = 0
    Complete = 1
    Cancelled = 2


class ControlId:
    """A control's id: picamera2 uses ``.name`` (and the object as a dict key)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<ControlId {self.name}>"


class ControlInfo:
    def __init__(self, minimum: Any, maximum: Any, default: Any) -> None:
        self.min, self.max, self.default = minimum, maximum, default


class Stream:
    """One configured output of the ISP ("main" or "lores")."""

    def __init__(self, name: str, size: tuple[int, int], fmt: str) -> None:
        self.name = name
        self.size = size
        self.format = fmt
        self.configuration = self  # picamera2 reads stream.configuration.<field>
        self.frame_size = size[0] * size[1] * 3 // 2

    def __repr__(self) -> str:
        return f"<Stream {self.name} {self.size[0]}x{self.size[1]}-{self.format}>"


class FrameBuffer:
    """A camera buffer of one stream: the ISP writes each frame into the same memory."""

    def __init__(self, stream: Stream, request: Request) -> None:
        self.stream = stream
        self._request = request

    @property
    def array(self) -> np.ndarray:
        return self._request._array_of(self.stream)


class Request:
    """A libcamera request: one buffer per stream, the frame's metadata, a cookie."""

    def __init__(self, camera: Camera, cookie: int, index: int) -> None:
        self.camera = camera
        self.cookie = cookie
        self.index = index
        self.status = RequestStatus.Pending
        self.buffers: dict[Stream, FrameBuffer] = {}
        self.metadata: dict[str, Any] = {}
        self.controls: dict[str, Any] = {}
        self._main: np.ndarray | None = None
        self._scaled: dict[Stream, np.ndarray] = {}
        self._lock = threading.Lock()

    def add_buffer(self, stream: Stream) -> None:
        self.buffers[stream] = FrameBuffer(stream, self)

    def set_control(self, name: str, value: Any) -> None:
        self.controls[name] = value

    def reuse(self) -> None:
        self.status = RequestStatus.Pending
        self.metadata = {}
        self.controls = {}

    def _fill(self, picture: _hardware.Picture, n: int, timestamp_ns: int) -> None:
        """The sensor's frame ``n``, into this request's buffers (the same memory each time)."""
        if self._main is None:
            self._main = picture.buffer()
        picture.render(n, out=self._main)
        with self._lock:
            self._scaled.clear()
        self.metadata = {"SensorTimestamp": timestamp_ns, "FrameNumber": n}

    def _array_of(self, stream: Stream) -> np.ndarray:
        assert self._main is not None, "no frame in this request"
        if stream.name == "main":
            return self._main
        with self._lock:  # the ISP's second output: the same frame, smaller
            scaled = self._scaled.get(stream)
            if scaled is None:
                scaled = self._scaled[stream] = _hardware.scale_i420(self._main, *stream.size)
            return scaled


class Camera:
    """One sensor behind libcamera."""

    def __init__(self, manager: CameraManager, num: int, model: str) -> None:
        self._manager = weakref.ref(manager)
        self.num = num
        self.model = model
        info = _hardware.MODELS[model]
        self.id = _hardware.camera_id(num, model)
        self.properties = {"Model": model, "Location": 2, "Rotation": 0,
                           "PixelArraySize": info["pixel_array"]}
        self.controls = {ControlId(name): ControlInfo(*value)
                         for name, value in info["controls"].items()}
        self._lock_file = _hardware.CameraLock(num)
        self._acquired = False
        self._streams: list[Stream] = []
        self._buffer_count = 0
        self._queued: list[Request] = []
        self._queue_lock = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._frame_interval = 1 / 30
        self._hdr_mode: Any = None

    def __repr__(self) -> str:
        return f"<libcamera.Camera '{self.id}'>"

    def acquire(self) -> None:
        self._lock_file.acquire()  # "Failed to acquire camera: Device or resource busy"
        self._acquired = True

    def release(self) -> None:
        if self._running:
            raise RuntimeError("Failed to release camera: Device or resource busy")
        self._lock_file.release()
        self._acquired = False

    def configure(self, streams: list[Stream], buffer_count: int) -> None:
        if not self._acquired:
            raise RuntimeError("Failed to configure camera: Operation not permitted")
        self._streams = list(streams)
        self._buffer_count = buffer_count

    def create_request(self, cookie: int, index: int) -> Request:
        request = Request(self, cookie, index)
        for stream in self._streams:
            request.add_buffer(stream)
        return request

    def queue_request(self, request: Request) -> None:
        with self._queue_lock:
            if not self._running:
                raise RuntimeError("Failed to queue request: Permission denied")
            self._queued.append(request)
            self._queue_lock.notify_all()

    def start(self, controls: dict[str, Any]) -> None:
        if not self._streams:
            raise RuntimeError("Failed to start camera: not configured")
        self._apply(controls)
        self._stop.clear()
        with self._queue_lock:
            self._running = True
        self._thread = threading.Thread(target=self._sensor, name=f"libcamera-sensor{self.num}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop streaming; requests still queued come back cancelled (as libcamera's)."""
        self._stop.set()
        with self._queue_lock:
            self._running = False
            self._queue_lock.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        with self._queue_lock:
            cancelled, self._queued = self._queued, []
        for request in cancelled:
            request.status = RequestStatus.Cancelled
            self._completed(request)

    def _completed(self, request: Request) -> None:
        manager = self._manager()
        if manager is not None:
            manager._complete(request)

    def _apply(self, controls: dict[str, Any]) -> None:
        """Controls reaching the IPA (at start, or with a request)."""
        if "FrameDurationLimits" in controls:
            low = controls["FrameDurationLimits"][0]
            self._frame_interval = max(int(low), 1) / 1_000_000
        if "HdrMode" in controls and controls["HdrMode"] != self._hdr_mode:
            self._hdr_mode = controls["HdrMode"]
            # Only the Pi 5's tunings have an HDR algorithm; on VC4 the IPA
            # logs "No HDR algorithm available" and goes on without it.
            applied = _hardware.platform_name() == "PISP"
            _hardware.record(f"camera.hdr_mode value={int(self._hdr_mode)} "
                             f"applied={int(applied)} num={self.num}")

    def _sensor(self) -> None:
        """libcamera's side of a started camera: a frame every interval, into a queued request."""
        main = next(s for s in self._streams if s.name == "main")
        picture = _hardware.Picture(*main.size)
        next_at = time.monotonic()
        n = 0
        wedged = False
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            next_at += self._frame_interval
            if next_at < time.monotonic() - self._frame_interval:  # fell behind: no burst
                next_at = time.monotonic() + self._frame_interval
            if not wedged and _hardware.take_command("stall-camera"):
                wedged = True  # the camera goes quiet until it is stopped
            if wedged:
                continue
            timestamp = time.monotonic_ns()
            n += 1
            with self._queue_lock:
                request = self._queued.pop(0) if self._queued else None
            if request is None:
                continue  # no request to put the frame in: dropped
            self._apply(request.controls)
            request._fill(picture, n, timestamp)
            request.status = RequestStatus.Complete
            self._completed(request)


class CameraHandle:
    """A camera as ``CameraManager.cameras`` gives it: like the bindings' Camera objects,
    it keeps the manager alive (the manager does not keep it)."""

    def __init__(self, camera: Camera, manager: CameraManager) -> None:
        self._camera = camera
        self._manager = manager

    def __getattr__(self, name: str) -> Any:
        return getattr(self._camera, name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CameraHandle) and other._camera is self._camera

    def __hash__(self) -> int:
        return id(self._camera)

    def __repr__(self) -> str:
        return repr(self._camera)


class CameraManager:
    """libcamera's CameraManager: the cameras found when it was made, and one event fd
    for completed requests. A new one (after the last reference to the old one is
    gone) looks for cameras again."""

    _instance: weakref.ReferenceType[CameraManager] | None = None
    _instance_lock = threading.Lock()

    @classmethod
    def singleton(cls) -> CameraManager:
        """The one manager while anything holds it (a weak singleton, as the bindings')."""
        with cls._instance_lock:
            manager = cls._instance() if cls._instance is not None else None
            if manager is None:
                manager = cls()
                cls._instance = weakref.ref(manager)
            return manager

    def __init__(self) -> None:
        self.event_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._ready: list[Request] = []
        self._ready_lock = threading.Lock()
        self._cameras = [Camera(self, num, model) for num, model in enumerate(_hardware.models())]

    @property
    def cameras(self) -> list[CameraHandle]:
        return [CameraHandle(camera, self) for camera in self._cameras]

    def __del__(self) -> None:
        fd, self.event_fd = getattr(self, "event_fd", -1), -1
        if fd >= 0:  # a listener still waiting on it hears nothing more, from any manager
            os.close(fd)

    def _complete(self, request: Request) -> None:
        with self._ready_lock:
            self._ready.append(request)
        if self.event_fd >= 0:
            os.eventfd_write(self.event_fd, 1)

    def get_ready_requests(self) -> list[Request]:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.event_fd)
        with self._ready_lock:
            ready, self._ready = self._ready, []
        return ready
