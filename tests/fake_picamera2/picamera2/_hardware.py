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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

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
    # The Raspberry Pi IPA advertises HdrMode on every camera and both ISPs
    # (ipa_base.cpp); only a tuning with an HDR algorithm (the Pi 5's) acts on it.
    "HdrMode": (0, 4, 0),
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
_IMX708 = {  # Camera Module 3 (all four variants): autofocus, sensor HDR
    "driver": "imx708", "address": "1a", "pixel_array": (4608, 2592),
    "controls": {**_COMMON_CONTROLS, **_AF_CONTROLS},
}
MODELS: dict[str, dict[str, Any]] = {
    # libcamera's model names: the kernel driver is imx708 for all of them.
    "imx708": _IMX708,
    "imx708_wide": _IMX708,
    "imx708_noir": _IMX708,
    "imx708_wide_noir": _IMX708,
    "imx219": {  # Camera Module 2: fixed focus
        "driver": "imx219", "address": "10", "pixel_array": (3280, 2464),
        "controls": dict(_COMMON_CONTROLS),
    },
    "imx477": {  # HQ camera: manual lenses
        "driver": "imx477", "address": "1a", "pixel_array": (4056, 3040),
        "controls": dict(_COMMON_CONTROLS),
    },
}
NUM_REQUESTS_MAX = 32


_state_dir: Path | None = None


def state_dir() -> Path:
    """FAKE_PICAMERA2_DIR, as it was at first use: what this import of the stand-in
    left running (a hung camera of an earlier test) keeps writing there."""
    global _state_dir
    if _state_dir is None:
        default = Path(tempfile.gettempdir()) / f"fake-picamera2-{os.getuid()}"
        _state_dir = Path(os.environ.get("FAKE_PICAMERA2_DIR") or default)
    _state_dir.mkdir(parents=True, exist_ok=True)
    return _state_dir


def models() -> list[str]:
    """The connected sensors, in libcamera's order: list index = the camera's 'Num'."""
    text = os.environ.get("FAKE_PICAMERA2_CAMERAS", "imx708")
    names = [m.strip() for m in text.split(",") if m.strip()]
    for name in names:
        if name not in MODELS:
            raise ValueError(f"FAKE_PICAMERA2_CAMERAS: unknown model {name!r}")
    return names


def platform_name() -> str:
    return os.environ.get("FAKE_PICAMERA2_PLATFORM", "VC4").upper()


def camera_id(num: int, model: str) -> str:
    """libcamera's Id of camera ``num``: its device-tree path.

    Camera ``num`` sits on I2C bus ``num`` (VC4: i2c@0, i2c@1; Pi 5: the
    RP1's i2c@80000, i2c@88000), so with two cameras the reverse sort of
    global_camera_info() puts Num 1 first: a list position is not a Num.
    """
    info = MODELS[model]
    sensor = f"{info['driver']}@{info['address']}"
    if platform_name() == "PISP":
        return f"/base/axi/pcie@120000/rp1/i2c@{0x80000 + 0x8000 * num:x}/{sensor}"
    return f"/base/soc/i2c0mux/i2c@{num}/{sensor}"


def version() -> str:
    """The picamera2 release the stand-in behaves as (FAKE_PICAMERA2_VERSION)."""
    return os.environ.get("FAKE_PICAMERA2_VERSION") or "0.3.36"


def version_at_least(*wanted: int) -> bool:
    parts = tuple(int(p) for p in version().split(".")[:3])
    return parts >= wanted


_events_lock = threading.Lock()


def record(event: str) -> None:
    """Append to events.log: what the "hardware" was asked to do, for tests to check."""
    line = f"{time.time():.3f} {os.getpid()} {event}\n"
    with _events_lock, open(state_dir() / "events.log", "a") as f:
        f.write(line)


_command_lock = threading.Lock()
_command_seen: dict[Path, tuple[tuple[int, int, int], list[str]]] = {}


def take_command(command: str) -> bool:
    """True (once) if the control file asks for ``command``; the line is consumed."""
    path = state_dir() / "control"
    with _command_lock:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        seen = _command_seen.get(path)
        if seen is not None and seen[0] == key:
            lines = seen[1]  # unchanged since it was last read (polled every frame)
        else:
            try:
                lines = path.read_text().splitlines()
            except FileNotFoundError:
                return False
            _command_seen[path] = (key, lines)
        if command not in lines:
            return False
        lines = list(lines)
        lines.remove(command)
        tmp = path.with_name(f"control.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in lines))
        os.replace(tmp, path)
    record(f"fault {command}")
    return True


# -- hangs (stand-in only) ------------------------------------------------------
#
# A real Pi never gets out of the hangs below. So that a test process does not
# keep stuck threads, release_hangs() (the fake_camera fixture's teardown) and
# the control command "unhang" end them: a hung codec resumes, and a wait that
# could only end on a real Pi by rebooting raises Released.

_hang_lock = threading.Lock()
_hang_release = threading.Event()
_waiting = 0  # threads in a wait that only release_hangs ends


class Released(RuntimeError):
    """The stand-in ended a wait that never ends on a real Pi (release_hangs/unhang)."""


def release_hangs() -> None:
    """Un-wedge every hang started so far (later faults hang again)."""
    global _hang_release
    with _hang_lock:
        released, _hang_release = _hang_release, threading.Event()
    released.set()
    record("release_hangs")


def hang_token() -> threading.Event:
    """Set once the hangs that begin now are released."""
    with _hang_lock:
        return _hang_release


def waiting() -> int:
    """How many threads are in a wait that only release_hangs (or unhang) ends."""
    return _waiting


@contextlib.contextmanager
def waiting_for_ever() -> Iterator[None]:
    """Counts the calling thread in ``waiting()`` for the block."""
    global _waiting
    with _hang_lock:
        _waiting += 1
    try:
        yield
    finally:
        with _hang_lock:
            _waiting -= 1


def wait_released(token: threading.Event, timeout: float | None = None) -> bool:
    """Wait up to ``timeout`` (None: for ever) for ``token``; polls the control file
    for "unhang". True once released."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with waiting_for_ever() if timeout is None else contextlib.nullcontext():
        while True:
            step = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if step <= 0:
                return token.is_set()
            if token.wait(step):
                return True
            if take_command("unhang"):
                release_hangs()


def wait_for_ever(done: Callable[[float], T], what: str) -> T:
    """``done(timeout)`` repeatedly: returns what it returns, or raises TimeoutError
    to go on waiting. A real Pi waits for ever; once the stand-in's hangs are
    released it waits 1 s more (a resumed codec lets most waits end), then
    raises Released."""
    token = hang_token()
    give_up: float | None = None
    with waiting_for_ever():
        while True:
            try:
                return done(0.2)
            except TimeoutError:
                pass
            if give_up is None and (token.is_set() or take_command("unhang")):
                if not token.is_set():
                    release_hangs()
                give_up = time.monotonic() + 1.0
            if give_up is not None and time.monotonic() > give_up:
                raise Released(f"{what}: waited for ever (a real Pi never returns); "
                               "released by the stand-in")


# -- the camera lock, the sensor HDR control, the picture ------------------------


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
    An flock belongs to one open file, so a second acquire in the same process
    fails too, as libcamera's does.
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
    """A moving test picture in I420 (YUV420 planar), rendered per frame.

    With FAKE_PICAMERA2_FRAMECODE=1 each frame also carries glimpse-edge's frame
    code (glimpse_edge.media.framecode: the frame number and the wall-clock time of
    the capture), as if the camera filmed a clock: a receiver that decodes it reads
    the glass-to-glass delay (scripts/bench_media.py). Not part of picamera2.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.framecode = os.environ.get("FAKE_PICAMERA2_FRAMECODE") == "1"
        y, x = np.mgrid[0:height, 0:width]
        self._base = ((x * 255 // max(1, width - 1) + y * 64 // max(1, height)) % 256).astype(
            np.uint8)

    def buffer(self) -> np.ndarray:
        """An empty frame buffer of this size."""
        return np.empty((self.height * 3 // 2, self.width), dtype=np.uint8)

    def render(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frame ``n``, written into ``out`` (a camera buffer, reused) or a new array."""
        w, h = self.width, self.height
        frame = self.buffer() if out is None else out
        luma = frame[:h]
        np.add(self._base, np.uint8((n * 3) % 256), out=luma, casting="unsafe")
        size = max(8, min(w, h) // 5)
        x0 = (n * 7) % max(1, w - size)
        y0 = (n * 3) % max(1, h - size)
        luma[y0:y0 + size, x0:x0 + size] = 235
        chroma = frame[h:]  # U then V, each (h/2) x (w/2), packed as h/4 rows of w
        chroma[:] = 128
        chroma[: h // 8] = 90 + (n % 60)  # a band of colour in the U plane
        if self.framecode:
            from glimpse_edge.media.framecode import draw_code

            draw_code(luma, n, int(time.time() * 1000))
        return frame


def _i420_planes(array: np.ndarray, width: int, height: int) -> list[np.ndarray]:
    """Views of the Y, U and V planes of an I420 buffer (contiguous, as the ISP writes it)."""
    flat = array.reshape(-1)
    luma = width * height
    chroma = (width // 2) * (height // 2)
    return [flat[:luma].reshape(height, width),
            flat[luma:luma + chroma].reshape(height // 2, width // 2),
            flat[luma + chroma:luma + 2 * chroma].reshape(height // 2, width // 2)]


def scale_i420(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """An I420 picture (as Picture.render makes it) at another size, nearest-neighbour."""
    src_w, src_h = array.shape[1], array.shape[0] * 2 // 3
    out = np.empty((height * 3 // 2, width), dtype=array.dtype)
    for src, dst in zip(_i420_planes(array, src_w, src_h), _i420_planes(out, width, height),
                        strict=True):
        rows = np.arange(dst.shape[0]) * src.shape[0] // dst.shape[0]
        cols = np.arange(dst.shape[1]) * src.shape[1] // dst.shape[1]
        dst[:] = src[np.ix_(rows, cols)]
    return out
