"""``picamera2.Picamera2`` over a simulated libcamera (``_libcamera``), threads as the real one.

Three threads carry a frame, as in picamera2 (``picamera2.py``,
``previews/null_preview.py``):

* libcamera's (here ``_libcamera.Camera._sensor``) completes a queued request
  per frame interval and signals the camera manager's event fd;
* ``CameraManager.listen`` (one per process, started by the first
  ``Picamera2()``) moves completed requests to their camera's ``_requests``
  and writes a byte to that camera's notify pipe;
* the camera thread, a ``NullPreview`` started by ``start()``, wakes on the
  pipe and runs ``process_requests``: jobs (``stop_``), then every frame to
  every running encoder of its stream.

``stop()`` asks the camera thread to stop the camera and waits for it with no
timeout; ``close()`` joins the camera thread. See ../README.md for the
failures this brings.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import selectors
import threading
from typing import Any

import libcamera

from . import _hardware, _libcamera
from .encoders import Encoder
from .job import Job
from .outputs import Output
from .platform import Platform, get_platform
from .previews import NullPreview
from .request import CompletedRequest

_log = logging.getLogger("picamera2.picamera2")

_FORMATS = ("YUV420", "YVU420", "NV12", "NV21", "XBGR8888", "XRGB8888", "RGB888", "BGR888")
_VIRTUAL = {"FrameRate": "FrameDurationLimits"}


class CameraManager:
    """picamera2's camera manager: the open cameras by Num, and the listener thread."""

    def __init__(self) -> None:
        self.running = False
        self.cameras: dict[int, Picamera2] = {}
        self._lock = threading.Lock()
        self._cms: _libcamera.CameraManager | None = None
        self.thread: threading.Thread | None = None

    def setup(self) -> None:
        self.thread = threading.Thread(target=self.listen, name="picamera2-camera-manager",
                                       daemon=True)
        self.running = True
        self.thread.start()

    @property
    def cms(self) -> _libcamera.CameraManager:
        if self._cms is None:
            self._cms = _libcamera.CameraManager.singleton()
        return self._cms

    def reset(self) -> None:
        """Forget libcamera's manager, so that sensor modes are read again."""
        with self._lock:
            self._cms = None
            self._cms = _libcamera.CameraManager.singleton()

    def add(self, index: int, camera: Picamera2) -> None:
        """Register a Picamera2 (replacing any earlier one with this Num)."""
        with self._lock:
            self.cameras[index] = camera
            if not self.running:
                self.setup()

    def cleanup(self, index: int) -> None:
        """Drop camera ``index``; the last one out stops the listener thread."""
        last = False
        with self._lock:
            del self.cameras[index]
            if self.cameras == {}:
                self.running = False
                last = True
        if last:
            assert self.thread is not None
            self.thread.join()
            self._cms = None

    def listen(self) -> None:
        selector = selectors.DefaultSelector()
        event_fd = self.cms.event_fd
        selector.register(event_fd, selectors.EVENT_READ, self.handle_request)
        while self.running:
            for key, _events in selector.select(0.2):
                key.data()
        selector.unregister(event_fd)
        self._cms = None

    def handle_request(self, flushid: int | None = None) -> None:
        """Hand completed requests to their cameras and wake their camera threads.

        Requests of camera ``flushid`` (one that is stopping) are dropped.
        """
        with self._lock:
            woken = set()
            for request in self.cms.get_ready_requests():
                if (request.status == _libcamera.RequestStatus.Complete
                        and request.cookie != flushid):
                    woken.add(request.cookie)
                    camera = self.cameras[request.cookie]
                    with camera._requestslock:
                        camera._requests.append(CompletedRequest(request, camera))
            for cookie in woken:
                # a non-blocking pipe: BlockingIOError once 64 KiB wait unread
                os.write(self.cameras[cookie].notifyme_w, b"\x00")


class Controls:
    """picamera2's Controls: only advertised names, FrameRate -> FrameDurationLimits."""

    def __init__(self, picam2: Picamera2, controls: dict[str, Any] | None = None) -> None:
        self._picam2 = picam2
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.set_controls(controls or {})

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
        else:
            self.set_controls({name: value})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _VIRTUAL:
            low, high = self._values[_VIRTUAL[name]]
            return 1_000_000 / low if low == high else (1_000_000 / high, 1_000_000 / low)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def set_controls(self, controls: Any) -> None:
        if isinstance(controls, Controls):
            controls = controls.make_dict()
        if not isinstance(controls, dict):
            raise RuntimeError(f"Cannot update controls with {type(controls)} type")
        with self._lock:
            for name, value in controls.items():
                if name in _VIRTUAL:
                    rates = value if isinstance(value, (tuple, list)) else (value, value)
                    name, value = _VIRTUAL[name], (int(1_000_000 / rates[1]),
                                                   int(1_000_000 / rates[0]))
                if name not in self._picam2.camera_ctrl_info:
                    raise RuntimeError(f"Control {name} is not advertised by libcamera")
                self._values[name] = value

    def get_libcamera_controls(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def make_dict(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)


class Picamera2:
    _cm = CameraManager()

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        """Model, Location, Rotation, Id and Num of every camera: reverse-sorted by Id
        with USB cameras last (as picamera2 sorts them), so position i is not Num i."""
        cameras = []
        for num, cam in enumerate(Picamera2._cm.cms.cameras):
            info = {k: v for k, v in cam.properties.items()
                    if k in ("Model", "Location", "Rotation")}
            info["Id"] = cam.id
            info["Num"] = num
            cameras.append(info)
        return sorted(cameras, key=lambda c: ("/usb" not in c["Id"], c["Id"]), reverse=True)

    def __init__(self, camera_num: int = 0, verbose_console: Any = None, tuning: Any = None,
                 allocator: Any = None) -> None:
        # The notify pipe comes first, the camera manager knows us before the
        # camera opens, and a failure cleans up neither (as picamera2).
        self.notifyme_r, self.notifyme_w = os.pipe2(os.O_NONBLOCK)
        self.notifymeread = os.fdopen(self.notifyme_r, "rb")
        self._preview: NullPreview | None = None
        self.is_open = False
        camera_num = self.global_camera_info()[camera_num]["Num"]  # IndexError: no camera
        self._cm.add(camera_num, self)
        self.camera_idx = camera_num
        self.request_lock = threading.Lock()
        self._requestslock = threading.Lock()
        self._requests: list[CompletedRequest] = []
        self._reset_flags()
        try:
            self._open_camera()
        except Exception as e:
            _log.error("Camera __init__ sequence did not complete.")
            raise RuntimeError("Camera __init__ sequence did not complete.") from e
        atexit.register(self.close)

    def _reset_flags(self) -> None:
        self.camera: _libcamera.CameraHandle | None = None
        self.camera_ctrl_info: dict[str, tuple[Any, Any]] = {}
        self.camera_config: dict[str, Any] = {}
        self.streams: list[_libcamera.Stream] = []
        self.stream_map: dict[str, Any] = {}
        self.started = False
        self.stop_count = 0
        self.configure_count = 0
        self.frames = 0
        self._job_list: list[Job] = []
        self._encoders: set[Encoder] = set()
        self.completed_requests: list[CompletedRequest] = []
        self.lock = threading.Lock()  # the job list and completed_requests
        self._event_loop_running = False
        self._preview_stopped = threading.Event()
        self.camera_properties_: dict[str, Any] = {}
        self.controls = Controls(self)
        self._max_queue_len = 1

    @property
    def camera_manager(self) -> _libcamera.CameraManager:
        return Picamera2._cm.cms

    def _open_camera(self) -> None:
        cameras = self.camera_manager.cameras
        if not cameras:
            raise RuntimeError("Camera(s) not found (Do not forget to disable legacy camera "
                               "with raspi-config).")
        camera = cameras[self.camera_idx]
        for name, info in ((c.name, (c, i)) for c, i in camera.controls.items()):
            self.camera_ctrl_info[name] = info
        self.camera_properties_ = dict(camera.properties)
        camera.acquire()  # RuntimeError "... Device or resource busy"
        self.camera = camera
        self.is_open = True
        _hardware.record(f"camera.open num={self.camera_idx} model={camera.model}")

    # -- properties ---------------------------------------------------------

    @property
    def camera_properties(self) -> dict[str, Any]:
        return {} if self.camera is None else self.camera_properties_

    @property
    def camera_controls(self) -> dict[str, tuple[Any, Any, Any]]:
        return {name: (info.min, info.max, info.default)
                for name, (_cid, info) in self.camera_ctrl_info.items()}

    # -- configuration ------------------------------------------------------

    def create_video_configuration(
        self, main: dict[str, Any] | None = None, lores: dict[str, Any] | None = None,
        raw: dict[str, Any] | None = None, transform: Any = None, colour_space: Any = None,
        buffer_count: int = 6, controls: dict[str, Any] | None = None, display: str | None = "main",
        encode: str | None = "main", queue: bool = True, sensor: dict[str, Any] | None = None,
        use_case: str = "video",
    ) -> dict[str, Any]:
        """Make a configuration suitable for video recording (defaults as picamera2's)."""
        if self.camera is None:
            raise RuntimeError("Camera not opened")
        main = {"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True, **(main or {})}
        if lores is not None:
            lores = {"format": "YUV420", "size": main["size"], "preserve_ar": False, **lores}
        if colour_space is None:
            w, h = main["size"]
            colour_space = (libcamera.ColorSpace.Smpte170m() if w < 1280 or h < 720
                            else libcamera.ColorSpace.Rec709())
        return {
            "use_case": use_case,
            "transform": libcamera.Transform() if transform is None else transform,
            "colour_space": colour_space,
            "buffer_count": buffer_count,
            "queue": queue,
            "main": main,
            "lores": lores,
            "raw": raw,
            "controls": {"NoiseReductionMode": 1, "FrameDurationLimits": (33333, 33333),
                         **(controls or {})},
            "sensor": sensor,
            "display": display,
            "encode": encode,
        }

    def _check_stream(self, stream: Any, name: str) -> None:
        if not isinstance(stream, dict):
            raise RuntimeError(name + " stream should be a dictionary")
        if "format" not in stream:
            raise RuntimeError("format not found in " + name + " stream")
        if "size" not in stream:
            raise RuntimeError("size not found in " + name + " stream")
        if stream["format"] not in _FORMATS:
            raise RuntimeError("Bad format " + str(stream["format"]) + " in stream " + name)
        size = stream["size"]
        if not isinstance(size, tuple) or len(size) != 2:
            raise RuntimeError("size in " + name + " stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")

    def configure(self, camera_config: dict[str, Any] | None = None) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if camera_config is None:
            camera_config = self.create_video_configuration()
        if not isinstance(camera_config, dict):
            raise TypeError("Invalid type for `camera_config` given")
        camera_config = dict(camera_config)
        self.camera_config = {}
        self._check_stream(camera_config["main"], "main")
        if not isinstance(camera_config["transform"], libcamera.Transform):
            raise RuntimeError("Transform has incorrect type")
        lores = camera_config.get("lores")
        if lores is not None:
            self._check_stream(lores, "lores")
            if get_platform() == Platform.VC4:
                if (lores["size"][0] > camera_config["main"]["size"][0]
                        or lores["size"][1] > camera_config["main"]["size"][1]):
                    raise RuntimeError("lores stream dimensions may not exceed main stream")
                if lores["format"] not in ("YUV420", "YVU420"):
                    raise RuntimeError("lores stream must be YUV")
        buffer_count = int(camera_config["buffer_count"])
        if not 1 <= buffer_count <= _hardware.NUM_REQUESTS_MAX:
            raise RuntimeError(f"Invalid camera configuration: {camera_config}")
        streams = []
        for name in ("main", "lores"):
            stream = camera_config.get(name)
            if stream is not None:
                stream["stride"] = stream["size"][0] * (4 if "8888" in stream["format"] else 1)
                streams.append(_libcamera.Stream(name, tuple(stream["size"]), stream["format"]))
        assert self.camera is not None
        self.camera.configure(streams, buffer_count)
        self.streams = streams
        self.stream_map = {"main": streams[0], "lores": streams[1] if lores is not None else None,
                           "raw": None}
        self._max_queue_len = 1 if camera_config["queue"] and buffer_count > 1 else 0
        self.camera_config = camera_config
        self.controls = Controls(self, camera_config["controls"])
        self.configure_count += 1
        _hardware.record(f"camera.configure main={camera_config['main']['size']} "
                         f"transform={camera_config['transform']} "
                         f"controls={sorted(self.controls.make_dict().items())}")

    def camera_configuration(self) -> dict[str, Any]:
        return self.camera_config

    def stream_configuration(self, name: str = "main") -> dict[str, Any]:
        return dict(self.camera_config[name])

    def set_controls(self, controls: dict[str, Any]) -> None:
        """Set camera controls; delivered with the next request queued to the camera."""
        self.controls.set_controls(controls)

    # -- the camera thread --------------------------------------------------

    def attach_preview(self, preview: NullPreview) -> None:
        if self._preview:
            raise RuntimeError("Preview is already running")
        self._preview = preview
        self._event_loop_running = True

    def start_preview(self, preview: Any = None, **kwargs: Any) -> None:
        if self._event_loop_running:
            raise RuntimeError("An event loop is already running")
        if preview is True or not isinstance(preview, (bool, NullPreview, type(None))):
            raise RuntimeError("the picamera2 stand-in has only the NULL preview")
        if preview is False or preview is None:
            preview = NullPreview(**kwargs)
        self._preview_stopped.clear()
        preview.start(self)

    def detach_preview(self) -> None:
        self._preview = None
        self._event_loop_running = False
        self._preview_stopped.set()

    def stop_preview(self) -> None:
        if self._preview is None:
            raise RuntimeError("No preview specified.")
        try:
            self._preview.stop()
            self._preview_stopped.wait()
        except Exception as e:
            raise RuntimeError("Unable to stop preview.") from e

    def _make_requests(self) -> list[_libcamera.Request]:
        assert self.camera is not None
        count = int(self.camera_config["buffer_count"])
        return [self.camera.create_request(self.camera_idx, i) for i in range(count)]

    def start_(self) -> None:
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        if self.started:
            return
        assert self.camera is not None
        controls = self.controls.get_libcamera_controls()
        self.controls = Controls(self)
        self.camera.start(controls)
        for request in self._make_requests():
            self.camera.queue_request(request)
        self.started = True
        _hardware.record("camera.start")

    def start(self, config: Any = None, show_preview: Any = False) -> None:
        if not self.camera_config and config is None:
            config = self.create_video_configuration()
        if config is not None:
            self.configure(config)
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        if show_preview is not None and not self._event_loop_running:
            self.start_preview(show_preview)
        self.start_()

    def stop_(self, request: Any = None) -> tuple[bool, None]:
        """Stop the camera (in the camera thread, or directly when none runs)."""
        if self.started:
            assert self.camera is not None
            self.stop_count += 1
            self.camera.stop()
            self._cm.handle_request(self.camera_idx)  # drop what it still delivered
            self.started = False
            with self._requestslock:
                unseen, self._requests = self._requests, []
            for r in unseen:
                r.release()
            while self.completed_requests:
                self.completed_requests.pop(0).release()
            _hardware.record("camera.stop")
        return (True, None)

    def stop(self) -> None:
        """Stop the camera: through the camera thread, waiting with no timeout, if it runs."""
        if not self.started:
            return
        if self._preview is not None and self._event_loop_running:
            self.dispatch_functions([self.stop_], wait=True, immediate=True)
        else:
            self.stop_()

    def close(self) -> None:
        atexit.unregister(self.close)
        if self._preview:
            self.stop_preview()  # joins the camera thread
        if not self.is_open:
            return
        self.stop()
        assert self.camera is not None
        self.camera.release()
        self._cm.cleanup(self.camera_idx)
        self.is_open = False
        self.streams = []
        self.stream_map = {}
        self.camera = None
        self.camera_ctrl_info = {}
        self.camera_config = {}
        self.notifymeread.close()
        os.close(self.notifyme_w)
        _hardware.record(f"camera.close num={self.camera_idx}")

    def __enter__(self) -> Picamera2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def process_requests(self, display: Any) -> None:
        """The camera thread's work for each wake-up: jobs, then frames to the encoders."""
        with self._requestslock:
            requests, self._requests = self._requests, []
        self.frames += len(requests)
        with self.lock:
            for req in requests:
                req.acquire()
            self.completed_requests += requests
            display_request = None
            if requests:
                display_request = requests[-1]
                display_request.acquire()
            finished = []
            while self._job_list:
                if self._job_list[0].execute():
                    finished.append(self._job_list.pop(0))
                else:
                    break
            for req in requests:
                for encoder in self._encoders:
                    if encoder.name in self.stream_map:
                        encoder.encode(encoder.name, req)
                req.release()
            while len(self.completed_requests) > self._max_queue_len:
                self.completed_requests.pop(0).release()
        if display_request is not None:
            display.render_request(display_request)
            display_request.release()
        for job in finished:
            job.signal()

    def _run_process_requests(self) -> None:
        os.write(self.notifyme_w, b"\x00")

    def dispatch_functions(self, functions: list[Any], wait: Any,
                           signal_function: Any = None, immediate: bool = False) -> Any:
        """A job for the camera thread; ``wait=True`` waits for it with no timeout."""
        if wait is None:
            wait = signal_function is None
        timeout = None if wait is True else wait
        with self.lock:
            only_job = not self._job_list
            job = Job(functions, signal_function)
            self._job_list.append(job)
            if only_job and (self.completed_requests or immediate):
                self._run_process_requests()
        return job.get_result(timeout=timeout) if wait else job

    # -- encoders -----------------------------------------------------------

    def start_encoder(self, encoder: Encoder | None = None, output: Any = None, pts: Any = None,
                      quality: Any = None, name: str | None = None) -> None:
        _encoder = encoder
        if _encoder is None:
            if len(self._encoders) > 1:
                raise RuntimeError("Multiple possible encoders, need to pass encoder")
            if len(self._encoders) == 1:
                _encoder = next(iter(self._encoders))
        if _encoder is None:
            raise RuntimeError("No encoder specified")
        if output is not None:
            if isinstance(output, str):
                raise RuntimeError("the picamera2 stand-in has no FileOutput")
            _encoder.output = output
        streams = self.camera_configuration()
        if not streams:
            raise RuntimeError("Camera has not been configured")
        if name is None:
            name = streams.get("encode") or "main"
        if streams.get(name) is None:
            raise RuntimeError(f"Encode stream {name} was not defined")
        _encoder.name = name
        _encoder.width, _encoder.height = streams[name]["size"]
        _encoder.format = streams[name]["format"]
        _encoder.stride = streams[name]["stride"]
        min_frame_duration = max(self.camera_ctrl_info["FrameDurationLimits"][1].min, 33333)
        with contextlib.suppress(AttributeError):
            if _encoder.framerate is None:  # type: ignore[attr-defined]
                _encoder.framerate = 1_000_000 / min_frame_duration  # type: ignore[attr-defined]
        _encoder.start(quality=quality)
        with self.lock:
            self._encoders.add(_encoder)

    def stop_encoder(self, encoders: Any = None) -> None:
        """Stop each encoder, and only then forget them: the first failure ends it all."""
        remove: list[Encoder] = []
        if encoders is None:
            for encoder in self._encoders:
                encoder.stop()
                remove.append(encoder)
        elif isinstance(encoders, Encoder):
            encoders.stop()
            remove.append(encoders)
        elif isinstance(encoders, (list, set)):
            for encoder in encoders:
                encoder.stop()
                remove.append(encoder)
        with self.lock:
            for encoder in remove:
                self._encoders.remove(encoder)

    @property
    def encoders(self) -> set[Encoder]:
        return self._encoders

    @encoders.setter
    def encoders(self, value: Encoder | set[Encoder]) -> None:
        # without the lock, as picamera2: a set changing while the camera thread
        # iterates it ends that thread ("Set changed size during iteration")
        if isinstance(value, Encoder):
            self._encoders.add(value)
        elif isinstance(value, set):
            self._encoders.update(value)
        else:
            raise RuntimeError("Must pass Encoder or set of")

    def start_recording(self, encoder: Encoder, output: Any, pts: Any = None, config: Any = None,
                        quality: Any = None, name: str | None = None) -> None:
        if not self.camera_config and config is None:
            config = self.create_video_configuration()
        if config is not None:
            self.configure(config)
        self.start_encoder(encoder, output, pts=pts, quality=quality, name=name)
        self.start()

    def stop_recording(self) -> None:
        self.stop()
        self.stop_encoder()


__all__ = ["CameraManager", "Output", "Picamera2"]
