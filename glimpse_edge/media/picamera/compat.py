"""picamera2 as it really is: which release, what it can do, and where it must be helped.

Everything here was read from picamera2's own source (0.3.x, ``picamera2/``)
and is checked by the stand-in in tests/fake_picamera2, which follows the
same source (its README says which file each behaviour mirrors):

* Features come with releases: ``force_key_frame()`` from 0.3.32, the H.264
  ``profile=`` argument from 0.3.17, and before 0.3.26 the V4L2 encoder
  passes on buffers without a picture and freezes the camera at low
  bitrates (picamera2 issue 1228). :func:`features` tests for each feature
  itself (distributions patch releases), and :func:`check_features` refuses
  what cannot be worked around, saying what to upgrade.
* On a Pi 5, ``H264Encoder`` is ``LibavH264Encoder``, which forces a key
  frame with ``frame.pict_type = "I"``: PyAV 13 and newer raise TypeError
  there, in the camera thread, which dies with it. It also encodes with
  frame threads (``thread_type = FRAME``, automatic count), a delay of
  about five frames. :func:`encoder_class` gives a subclass that forces IDRs
  with ``PictureType.I`` and encodes with slice threads (no frame delay).
* A ``Picamera2()`` that fails (camera busy) leaves its notify pipe open and
  itself registered with the camera manager; :func:`forget_failed_open`
  closes what it left. A failed ``start_encoder`` leaves the encoder
  "running" (``_running`` is set before the device is opened) with its
  device and poll thread: :func:`stop_failed_encoder` stops it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import structlog

from ..source import SourceError

__all__ = [
    "INSTALL_HINT",
    "Picamera2Features",
    "Picamera2Modules",
    "check_features",
    "encoder_class",
    "features",
    "forget_failed_open",
    "import_picamera2",
    "stop_failed_encoder",
]

log = structlog.get_logger(__name__)

INSTALL_HINT: Final = (
    'on Raspberry Pi OS install it with "sudo apt install python3-picamera2", and run '
    "glimpse-edge from a virtualenv created with --system-site-packages (python3 -m venv "
    "--system-site-packages VENV) so that it sees the OS's picamera2 and libcamera; a "
    "picamera2 installed with pip does not match the OS's libcamera"
)
UPGRADE_HINT: Final = "upgrade it: sudo apt update && sudo apt install python3-picamera2"


@dataclass(frozen=True)
class Picamera2Features:
    """What the installed picamera2 can do, found by looking, not by version number."""

    version: str | None  # from the package metadata; None if it has none
    force_key_frame: bool  # encoders force an IDR in place (0.3.32)
    profile: bool  # H264Encoder(profile=...) (0.3.17)
    picture_check: bool  # the V4L2 encoder drops buffers with no picture (0.3.26)

    def describe(self) -> str:
        missing = [name for name, ok in (("force_key_frame", self.force_key_frame),
                                         ("profile", self.profile),
                                         ("picture check", self.picture_check)) if not ok]
        version = self.version or "unknown version"
        return f"{version} (lacks {', '.join(missing)})" if missing else version


class Picamera2Modules(NamedTuple):
    """What this package needs from picamera2, imported once per source."""

    Picamera2: Any
    H264Encoder: Any  # the installed class, as picamera2 chose it for this platform
    Output: Any
    Transform: Any
    platform: str  # "VC4" (Pi 4 and older) or "PISP" (Pi 5)
    features: Picamera2Features

    @property
    def hardware_h264(self) -> bool:
        """picamera2 makes ``H264Encoder`` the V4L2 hardware class only on VC4."""
        return self.platform == "VC4"


def _version() -> str | None:
    try:
        return importlib.metadata.version("picamera2")
    except importlib.metadata.PackageNotFoundError:
        return None


def features(h264_encoder: Any) -> Picamera2Features:
    """The installed picamera2's features, from ``h264_encoder`` (its ``H264Encoder``)."""
    try:
        params = inspect.signature(h264_encoder.__init__).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    # the picture check exists only on the V4L2 class; the libav one needs none
    v4l2 = any(c.__name__ == "V4L2Encoder" for c in getattr(h264_encoder, "__mro__", ()))
    return Picamera2Features(
        version=_version(),
        force_key_frame=callable(getattr(h264_encoder, "force_key_frame", None)),
        profile="profile" in params,
        picture_check=not v4l2 or callable(getattr(h264_encoder, "_check_for_picture", None)),
    )


def check_features(found: Picamera2Features) -> None:
    """Refuse a picamera2 this agent cannot work with; say what to upgrade.

    A missing ``force_key_frame`` is no reason: the source restarts the
    encoder for an IDR instead (see ``PiCamera2Source``).
    """
    version = found.version or "of unknown version"
    if not found.profile:
        raise SourceError(
            f"picamera2 {version} is too old: it cannot ask the encoder for the constrained "
            "baseline H.264 profile that every browser decodes (needs picamera2 0.3.17 or "
            f"newer); {UPGRADE_HINT}")
    if not found.picture_check:
        raise SourceError(
            f"picamera2 {version} is too old: before 0.3.26 its hardware H.264 encoder can "
            "freeze the camera at low bitrates (picamera2 issue 1228), and this agent lowers "
            f"the bitrate for weak links; {UPGRADE_HINT}")


def import_picamera2() -> Picamera2Modules:
    """Import picamera2 (and libcamera) on first use, or say how to get them.

    Raises SourceError rather than ImportError: on a machine without them
    (x86: "No module named 'libcamera'") the message must say what to install.
    Called in a worker thread by the source: importing picamera2 probes
    /dev/video* and starts libcamera.
    """
    try:
        import picamera2
        from libcamera import Transform
        from picamera2.encoders import H264Encoder
        from picamera2.outputs import Output
    except Exception as exc:  # ImportError, or libcamera failing to load its library
        raise SourceError(
            f'video.source = "picamera2" needs the picamera2 library, which {sys.executable} '
            f"cannot import ({type(exc).__name__}: {exc}): {INSTALL_HINT}"
        ) from exc
    platform = picamera2.get_platform()
    return Picamera2Modules(picamera2.Picamera2, H264Encoder, Output, Transform,
                            str(getattr(platform, "name", platform)), features(H264Encoder))


# ------------------------------------------------------------ the encoder


class _KeyframeStream:
    """A libav stream that turns a pending key-frame request into ``PictureType.I``.

    picamera2's ``LibavH264Encoder._encode`` calls ``self._stream.encode(frame)``;
    this stands in for ``_stream`` and marks the frame on the way, with the
    enum PyAV takes, where picamera2 itself would set the string "I".
    """

    def __init__(self, stream: Any, pending: threading.Event) -> None:
        self._stream = stream
        self._pending = pending

    def encode(self, frame: Any = None) -> Any:
        if frame is not None and self._pending.is_set():
            from av.video.frame import PictureType

            self._pending.clear()
            frame.pict_type = PictureType.I
        return self._stream.encode(frame)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _libav_subclass(base: Any) -> Any:
    class LibavH264Encoder(base):  # type: ignore[misc]
        """picamera2's software H.264 encoder, with IDRs and latency that work.

        ``force_key_frame`` marks the next frame ``PictureType.I`` (picamera2's
        own sets "I", a TypeError with PyAV 13+ that kills the camera thread);
        slice threads instead of frame threads (about five frames of delay at
        an automatic count). Works whatever the picamera2 release: older ones
        have no ``force_key_frame`` at all.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._glimpse_idr: threading.Event | None = threading.Event()

        def _start(self) -> None:
            super()._start()
            import av

            stream: Any = getattr(self, "_stream", None)  # made by picamera2's _start
            if stream is None or not hasattr(stream, "codec_context"):
                log.warning("media.picamera2.libav_unpatched",
                            detail="this picamera2's LibavH264Encoder has no PyAV stream: "
                            "its own key frames and threads are used")
                self._glimpse_idr = None
                return
            ctx = stream.codec_context
            ctx.thread_type = av.codec.context.ThreadType.SLICE
            ctx.options["forced-idr"] = "1"  # a frame marked "I" becomes an IDR
            assert self._glimpse_idr is not None
            setattr(self, "_stream", _KeyframeStream(stream, self._glimpse_idr))  # noqa: B010

        def force_key_frame(self) -> None:
            if self._glimpse_idr is not None:
                self._glimpse_idr.set()
            else:
                super().force_key_frame()

    return LibavH264Encoder


_ENCODER_CLASSES: dict[Any, Any] = {}


def encoder_class(mods: Picamera2Modules) -> Any:
    """The H.264 encoder class to use: picamera2's, or on a Pi 5 the fixed subclass."""
    base = mods.H264Encoder
    if mods.hardware_h264:
        return base
    cls = _ENCODER_CLASSES.get(base)
    if cls is None:
        cls = _ENCODER_CLASSES[base] = _libav_subclass(base)
    return cls


# ------------------------------------------------------------ what failures leave


def forget_failed_open(picamera2_class: Any, num: int) -> None:
    """Close what a failed ``Picamera2(num)`` left behind (a worker thread).

    picamera2 opens a notify pipe and registers the new object with its
    camera manager before it opens the camera, and cleans neither up when
    that fails: one fd per failed open (a busy camera retried every 30 s is
    2,900 a day) and the manager's listener thread kept running.
    """
    manager: Any = getattr(picamera2_class, "_cm", None)
    cameras = getattr(manager, "cameras", None)
    half = cameras.get(num) if isinstance(cameras, dict) else None
    if half is None or getattr(half, "is_open", True):
        return  # nothing left, or a camera this process really holds
    with contextlib.suppress(Exception):
        half.notifymeread.close()
    with contextlib.suppress(Exception):
        os.close(half.notifyme_w)
    try:
        manager.cleanup(num)  # stops the listener thread when no camera is left
    except Exception as exc:
        log.debug("media.picamera2.cleanup_failed", error=str(exc))


def stop_failed_encoder(encoder: Any) -> None:
    """Stop an encoder whose ``start`` raised (a worker thread).

    ``Encoder.start`` sets ``_running`` before it opens the device and
    starts the poll thread, so a start that failed half-way leaves both
    behind; its ``stop`` releases them. Whatever ``stop`` itself fails to
    do, the device is closed.
    """
    if not getattr(encoder, "running", False):
        return
    try:
        encoder.stop()
    except Exception as exc:
        log.debug("media.picamera2.failed_encoder_stop", error=str(exc))
    device = getattr(encoder, "vd", None)
    if isinstance(device, int):
        with contextlib.suppress(OSError):
            os.close(device)
    elif device is not None and not getattr(device, "closed", True):
        with contextlib.suppress(Exception):
            device.close()
    with contextlib.suppress(Exception):
        encoder.vd = None
