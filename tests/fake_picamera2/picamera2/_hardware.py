"""The simulated hardware behind the stand-in: which cameras exist, who holds them, faults.

Not part of picamera2's API. Everything is read from the environment when it is
used (see ../README.md), so a test can set it per test in process or pass it to
the agent subprocess.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

# What libcamera reports for the sensors a Pi room camera is likely to have.
# camera_controls values are (min, max, default), as picamera2 presents them.
_COMMON_CONTROLS: dict[str, tuple[Any, Any, Any]] = {
    "AeEnable": (False, True, True),
    "AeExposureMode": (0, 3, 0),
    "AeMeteringMode": (0, 3, 0),
    "AeConstraintMode": (0, 3, 0),
    "AeFlickerMode": (0, 1, 0),
    "AeFlickerPeriod": (100, 1000000, None),
    "ExposureValue": (-8.0, 8.0, 0.0),
    "ExposureTime": (1, 66666, None),
    "AnalogueGain": (1.0, 16.0, None),
    "AwbEnable": (False, True, None),
    "AwbMode": (0, 7, 0),
    "ColourGains": (0.0, 32.0, None),
    "Brightness": (-1.0, 1.0, 0.0),
    "Contrast": (0.0, 32.0, 1.0),
    "Saturation": (0.0, 32.0, 1.0),
    "Sharpness": (0.0, 16.0, 1.0),
    "NoiseReductionMode": (0, 4, 0),
    "FrameDurationLimits": (33333, 120000, None),
    "ScalerCrop": ((0, 0, 64, 64), (0, 0, 3280, 2464), (0, 0, 3280, 2464)),
}
_AF_CONTROLS: dict[str, tuple[Any, Any, Any]] = {
    "AfMode": (0, 2, 0),
    "AfRange": (0, 2, 0),
    "AfSpeed": (0, 1, 0),
    "AfTrigger": (0, 1, 0),
    "AfMetering": (0, 1, 0),
    "AfWindows": ((0, 0, 0, 0), (65535, 65535, 65535, 65535), (0, 0, 0, 0)),
    "AfPause": (0, 2, 0),
    "LensPosition": (0.0, 15.0, 1.0),
}
MODELS: dict[str, dict[str, Any]] = {
    "imx708": {  # Camera Module 3: autofocus, sensor HDR
        "id": "/base/soc/i2c0mux/i2c@1/imx708@1a",
        "pixel_array": (4608, 2592),
        "controls": {**_COMMON_CONTROLS, **_AF_CONTROLS},
    },
    "imx219": {  # Camera Module 2: fixed focus
        "id": "/base/soc/i2c0mux/i2c@1/imx219@10",
        "pixel_array": (3280, 2464),
        "controls": dict(_COMMON_CONTROLS),
    },
    "imx477": {  # HQ camera: manual lenses
        "id": "/base/soc/i2c0mux/i2c@1/imx477@1a",
        "pixel_array": (4056, 3040),
        "controls": dict(_COMMON_CONTROLS),
    },
}
# Only the Pi 5's ISP (PiSP) has the HdrMode control.
PISP_CONTROLS: dict[str, tuple[Any, Any, Any]] = {"HdrMode": (0, 4, 0)}


def state_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"fake-picamera2-{os.getuid()}"
    path = Path(os.environ.get("FAKE_PICAMERA2_DIR") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def models() -> list[str]:
    text = os.environ.get("FAKE_PICAMERA2_CAMERAS", "imx708")
    names = [m.strip() for m in text.split(",") if m.strip()]
    for name in names:
        if name not in MODELS:
            raise ValueError(f"FAKE_PICAMERA2_CAMERAS: unknown model {name!r}")
    return names


def platform_name() -> str:
    return os.environ.get("FAKE_PICAMERA2_PLATFORM", "VC4").upper()


_events_lock = threading.Lock()


def record(event: str) -> None:
    """Append to events.log: what the "hardware" was asked to do, for tests to check."""
    line = f"{time.time():.3f} {os.getpid()} {event}\n"
    with _events_lock, open(state_dir() / "events.log", "a") as f:
        f.write(line)


def take_command(command: str) -> bool:
    """True (once) if the control file asks for ``command``; the line is consumed."""
    path = state_dir() / "control"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return False
    if command not in lines:
        return False
    lines.remove(command)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    os.replace(tmp, path)
    record(f"fault {command}")
    return True


def sensor_hdr(num: int) -> bool:
    try:
        return (state_dir() / f"camera{num}.hdr").read_text().strip() == "1"
    except FileNotFoundError:
        return False


def set_sensor_hdr(num: int, enable: bool) -> None:
    (state_dir() / f"camera{num}.hdr").write_text("1\n" if enable else "0\n")


class CameraLock:
    """libcamera's exclusive camera acquisition, across processes (an flock'ed file).

    The kernel drops the lock when the holder dies, like a camera fd closing.
    """

    def __init__(self, num: int) -> None:
        self.num = num
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(state_dir() / f"camera{self.num}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            # what libcamera's Camera::acquire() -> pybind11 raises (errno 16)
            raise RuntimeError("Failed to acquire camera: Device or resource busy") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Picture:
    """A moving test picture in I420 (YUV420 planar), rendered per frame."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        y, x = np.mgrid[0:height, 0:width]
        self._base = ((x * 255 // max(1, width - 1) + y * 64 // max(1, height)) % 256).astype(
            np.uint8)

    def render(self, n: int) -> np.ndarray:
        w, h = self.width, self.height
        frame = np.empty((h * 3 // 2, w), dtype=np.uint8)
        luma = frame[:h]
        np.add(self._base, np.uint8((n * 3) % 256), out=luma, casting="unsafe")
        size = max(8, min(w, h) // 5)
        x0 = (n * 7) % max(1, w - size)
        y0 = (n * 3) % max(1, h - size)
        luma[y0:y0 + size, x0:x0 + size] = 235
        chroma = frame[h:]  # U then V, each (h/2) x (w/2), packed as h/4 rows of w
        chroma[:] = 128
        chroma[: h // 8] = 90 + (n % 60)  # a band of colour in the U plane
        return frame
