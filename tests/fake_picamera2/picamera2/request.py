"""Completed requests (as picamera2's ``request.py``: CompletedRequest, MappedArray).

A CompletedRequest is reference counted: picamera2 holds it while it runs
the encoders, an encoder that keeps the frame (the V4L2 one until the codec
has read it, the libav one for one frame) acquires it, and the last release
queues the libcamera request again, with the controls set since, unless the
camera was stopped meanwhile. Until then the camera has one request fewer.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ._libcamera import Request
    from .picamera2 import Picamera2


class CompletedRequest:
    def __init__(self, request: Request, picam2: Picamera2) -> None:
        self.request: Request | None = request
        self.ref_count = 1
        self.lock: threading.Lock = picam2.request_lock
        self.picam2 = picam2
        self.stop_count = picam2.stop_count
        self.configure_count = picam2.configure_count
        self.config = dict(picam2.camera_config)
        self.stream_map = dict(picam2.stream_map)
        self.display = False

    def acquire(self) -> None:
        """Keep this frame: it is not given back to the camera until released."""
        with self.lock:
            if self.ref_count == 0:
                raise RuntimeError("CompletedRequest: acquiring lock with ref_count 0")
            self.ref_count += 1

    def release(self) -> None:
        """Give the frame back; the last release queues the request to the camera again."""
        with self.lock:
            self.ref_count -= 1
            if self.ref_count < 0:
                raise RuntimeError("CompletedRequest: lock now has negative ref_count")
            if self.ref_count > 0:
                return
            picam2 = self.picam2
            request = self.request
            assert request is not None
            if picam2.camera and self.stop_count == picam2.stop_count and picam2.started:
                request.reuse()
                for name, value in picam2.controls.get_libcamera_controls().items():
                    request.set_control(name, value)
                picam2.controls = type(picam2.controls)(picam2)
                picam2.camera.queue_request(request)
            self.request = None
            self.config = {}
            self.stream_map = {}

    def get_metadata(self) -> dict[str, Any]:
        assert self.request is not None
        return dict(self.request.metadata)

    def _buffer(self, name: Any) -> Any:
        stream = self.stream_map.get(name) if isinstance(name, str) else name
        if stream is None:
            raise RuntimeError(f"Stream {name!r} is not defined")
        assert self.request is not None, "the request was released"
        return self.request.buffers[stream]

    def make_array(self, name: str) -> np.ndarray:
        """A copy of the stream's pixels (YUV420 here: (height * 3 / 2, width))."""
        return np.array(self._buffer(name).array)


class MappedArray:
    """The stream's buffer itself, mapped (no copy): valid while the request is held."""

    def __init__(self, request: CompletedRequest, stream: Any, reshape: bool = True,
                 write: bool = True) -> None:
        self._request = request
        self._stream = stream
        self._array: np.ndarray | None = None

    def __enter__(self) -> MappedArray:
        self._array = self._request._buffer(self._stream).array
        return self

    def __exit__(self, *exc: object) -> None:
        self._array = None

    @property
    def array(self) -> np.ndarray | None:
        return self._array
