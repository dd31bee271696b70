"""``picamera2.Picamera2``, over a simulated camera that delivers real-time frames.

The camera thread plays libcamera's event loop: it paces frames by
``FrameDurationLimits``, stamps them with the sensor clock (monotonic
nanoseconds, as ``SensorTimestamp``) and hands each to every running encoder
of its stream.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
from typing import Any

import libcamera

from . import _hardware
from .encoders import Encoder
from .outputs import Output
from .platform import Platform, get_platform

_log = logging.getLogger("picamera2.picamera2")

_FORMATS = ("YUV420", "YVU420", "NV12", "NV21", "XBGR8888", "XRGB8888", "RGB888", "BGR888")
_VIRTUAL = {"FrameRate": "FrameDurationLimits"}


class _CameraManager:
    def reset(self) -> None:
        """Re-read sensor modes (after IMX708.set_sensor_hdr_mode)."""


class _Request:
    """What an encoder gets for one frame: each stream's mapped buffer, and the metadata.

    The lores stream is the ISP's second, smaller output of the same sensor
    frame: made here (nearest-neighbour) only when an encoder reads it.
    """

    def __init__(self, array: Any, timestamp_ns: int,
                 lores_size: tuple[int, int] | None = None) -> None:
        self.array = array
        self._lores_size = lores_size
        self._lores: Any = None
        self.request = self  # picamera2 code reads request.request.metadata
        self.metadata = {"SensorTimestamp": timestamp_ns}
        self._refs = 1
        self._lock = threading.Lock()

    def make_array(self, name: str) -> Any:
        """The stream's pixels (as CompletedRequest.make_array; YUV420 here)."""
        if name == "main":
            return self.array
        if name != "lores" or self._lores_size is None:
            raise RuntimeError(f"Stream {name!r} is not configured")
        with self._lock:
            if self._lores is None:
                self._lores = _scale_i420(self.array, *self._lores_size)
            return self._lores

    def acquire(self) -> None:
        with self._lock:
            self._refs += 1

    def release(self) -> None:
        with self._lock:
            self._refs -= 1


def _scale_i420(array: Any, width: int, height: int) -> Any:
    """An I420 picture (as Picture.render makes it) at another size, nearest-neighbour."""
    import numpy as np

    src_h = array.shape[0] * 2 // 3
    src_w = array.shape[1]
    y = array[:src_h]
    out = np.empty((height * 3 // 2, width), dtype=array.dtype)
    out[:height] = y[np.ix_(np.arange(height) * src_h // height,
                            np.arange(width) * src_w // width)]
    for plane in range(2):  # U then V: (h/2) x (w/2) each, packed as h/4 rows of w
        src = array[src_h + plane * src_h // 4:src_h + (plane + 1) * src_h // 4].reshape(
            src_h // 2, src_w // 2)
        dst = src[np.ix_(np.arange(height // 2) * (src_h // 2) // (height // 2),
                         np.arange(width // 2) * (src_w // 2) // (width // 2))]
        out[height + plane * height // 4:height + (plane + 1) * height // 4] = dst.reshape(
            height // 4, width)
    return out


class Controls:
    """picamera2's Controls: only advertised names, FrameRate -> FrameDurationLimits."""

    def __init__(self, picam2: Picamera2, controls: dict[str, Any] | None = None) -> None:
        self._picam2 = picam2
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.set_controls(controls or {})

    def set_controls(self, controls: dict[str, Any]) -> None:
        if not isinstance(controls, dict):
            raise RuntimeError(f"Cannot update controls with {type(controls)} type")
        with self._lock:
            for name, value in controls.items():
                if name in _VIRTUAL:
                    rates = value if isinstance(value, (tuple, list)) else (value, value)
                    name, value = _VIRTUAL[name], (int(1_000_000 / rates[1]),
                                                   int(1_000_000 / rates[0]))
                if name not in self._picam2.camera_controls:
                    raise RuntimeError(f"Control {name} is not advertised by libcamera")
                self._values[name] = value

    def make_dict(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)


class Picamera2:
    _cm = _CameraManager()

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        """Id string and Model name for all attached cameras, one dict per camera."""
        return [
            {"Model": model, "Location": 2, "Rotation": 0,
             "Id": _hardware.MODELS[model]["id"].replace("i2c@1", f"i2c@{i + 1}"), "Num": i}
            for i, model in enumerate(_hardware.models())
        ]

    def __init__(self, camera_num: int = 0, verbose_console: Any = None, tuning: Any = None,
                 allocator: Any = None) -> None:
        self._preview = None
        self.is_open = False
        self.started = False
        self.camera: Any = None
        self.camera_config: dict[str, Any] | None = None
        self._encoders: set[Encoder] = set()
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        info = self.global_camera_info()
        camera_num = info[camera_num]["Num"]  # IndexError: no such camera, as the real one
        self.camera_idx = camera_num
        self._model = info[camera_num]["Model"]
        self._lock_file = _hardware.CameraLock(camera_num)
        try:
            self._open_camera()
            self.controls = Controls(self)
        except Exception as e:
            _log.error("Camera __init__ sequence did not complete.")
            raise RuntimeError("Camera __init__ sequence did not complete.") from e
        atexit.register(self.close)

    def _open_camera(self) -> None:
        self._lock_file.acquire()  # "Failed to acquire camera: Device or resource busy"
        self.camera = self._model
        self.is_open = True
        _hardware.record(f"camera.open num={self.camera_idx} model={self._model}")

    # -- properties ---------------------------------------------------------

    @property
    def camera_properties(self) -> dict[str, Any]:
        if self.camera is None:
            return {}
        return {"Model": self._model, "Location": 2, "Rotation": 0,
                "PixelArraySize": _hardware.MODELS[self._model]["pixel_array"]}

    @property
    def camera_controls(self) -> dict[str, tuple[Any, Any, Any]]:
        if self.camera is None:
            return {}
        controls = dict(_hardware.MODELS[self._model]["controls"])
        if get_platform() == Platform.PISP:
            controls.update(_hardware.PISP_CONTROLS)
        return controls

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
        config = {
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
        return config

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
        if not isinstance(camera_config, dict):
            raise TypeError("Invalid type for `camera_config` given")
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
        if not 1 <= int(camera_config["buffer_count"]) <= 32:
            raise RuntimeError(f"Invalid camera configuration: {camera_config}")
        for name in ("main", "lores"):
            stream = camera_config.get(name)
            if stream is not None:
                stream["stride"] = stream["size"][0] * (4 if "8888" in stream["format"] else 1)
        self.controls = Controls(self, camera_config["controls"])
        self.camera_config = camera_config
        _hardware.record(f"camera.configure main={camera_config['main']['size']} "
                         f"transform={camera_config['transform']} "
                         f"controls={sorted(self.controls.make_dict().items())}")

    def camera_configuration(self) -> dict[str, Any] | None:
        return self.camera_config

    def stream_configuration(self, name: str = "main") -> dict[str, Any]:
        assert self.camera_config is not None
        return dict(self.camera_config[name])

    def set_controls(self, controls: dict[str, Any]) -> None:
        """Set camera controls; delivered with the next request."""
        self.controls.set_controls(controls)

    # -- running ------------------------------------------------------------

    def start(self, config: Any = None, show_preview: Any = False) -> None:
        if self.camera_config is None and config is None:
            config = self.create_video_configuration()
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        if self.started:
            return
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._event_loop, name="picamera2-loop",
                                        daemon=True)
        self.started = True
        self._thread.start()
        _hardware.record("camera.start")

    def stop(self) -> None:
        if not self.started:
            return
        self._stop_event.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        self.started = False
        _hardware.record("camera.stop")

    def close(self) -> None:
        atexit.unregister(self.close)
        if not self.is_open:
            return
        self.stop()
        self._lock_file.release()
        self.is_open = False
        self.camera = None
        self.camera_config = None
        _hardware.record(f"camera.close num={self.camera_idx}")

    def __enter__(self) -> Picamera2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _event_loop(self) -> None:
        """libcamera's event loop: a frame every FrameDurationLimits, to every encoder."""
        from ._hardware import Picture

        assert self.camera_config is not None
        main = self.camera_config["main"]
        picture = Picture(*main["size"])
        lores = self.camera_config.get("lores")
        lores_size = tuple(lores["size"]) if lores is not None else None
        duration = self.controls.make_dict().get("FrameDurationLimits", (33333, 33333))[0]
        interval = max(duration, 1) / 1_000_000
        next_at = time.monotonic()
        n = 0
        wedged = False
        while not self._stop_event.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop_event.wait(delay):
                break
            next_at += interval
            if next_at < time.monotonic() - interval:  # fell behind: do not burst
                next_at = time.monotonic() + interval
            if not wedged and _hardware.take_command("stall-camera"):
                wedged = True  # the camera goes quiet until it is closed
            if wedged:
                continue
            request = _Request(picture.render(n), time.monotonic_ns(), lores_size)
            n += 1
            with self.lock:
                encoders = list(self._encoders)
            for encoder in encoders:
                encoder.encode(encoder.name or "main", request)
            request.release()

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
            if not isinstance(output, Output):
                raise RuntimeError("Must pass Output")
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
        min_frame_duration = max(self.camera_controls["FrameDurationLimits"][0], 33333)
        if getattr(_encoder, "framerate", None) is None:
            _encoder.framerate = 1_000_000 / min_frame_duration  # type: ignore[attr-defined]
        _encoder.start(quality=quality)
        with self.lock:
            self._encoders.add(_encoder)

    def stop_encoder(self, encoders: Any = None) -> None:
        remove: list[Encoder] = []
        if encoders is None:
            remove = list(self._encoders)
        elif isinstance(encoders, Encoder):
            remove = [encoders]
        else:
            remove = list(encoders)
        with self.lock:
            for encoder in remove:
                self._encoders.discard(encoder)
        for encoder in remove:
            encoder.stop()

    @property
    def encoders(self) -> set[Encoder]:
        return self._encoders

    def start_recording(self, encoder: Encoder, output: Any, pts: Any = None, config: Any = None,
                        quality: Any = None, name: str | None = None) -> None:
        if self.camera_config is None and config is None:
            config = self.create_video_configuration()
        if config is not None:
            self.configure(config)
        self.start_encoder(encoder, output, pts=pts, quality=quality, name=name)
        self.start()

    def stop_recording(self) -> None:
        self.stop()
        self.stop_encoder()
