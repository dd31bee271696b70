"""What went wrong opening a camera, in words that name the likely cause and the fix."""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Any

__all__ = ["chain", "describe_open_error", "missing_text"]


def chain(exc: BaseException) -> str:
    """The message of ``exc`` and of each cause behind it."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 5:
        parts.append(f"{seen}" or type(seen).__name__)
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return ": ".join(dict.fromkeys(parts))


def missing_text(index: int, cameras: list[Mapping[str, Any]]) -> str:
    if not cameras:
        return (f"no camera {index} found: libcamera sees no camera at all. Is one connected, "
                "with the ribbon cable fully inserted and the right way round at both ends "
                "(connect it only while the Pi is off)? `rpicam-hello --list-cameras` shows "
                "what libcamera sees")
    seen = ", ".join(f"{c.get('Num', i)}: {c.get('Model', '?')}" for i, c in enumerate(cameras))
    return (f"no camera {index} found: libcamera sees {len(cameras)} camera(s) ({seen}); "
            f"set camera.index to one of 0..{len(cameras) - 1}")


def describe_open_error(exc: BaseException, index: int, cameras: list[Mapping[str, Any]]) -> str:
    """What went wrong opening camera ``index``, with the likely cause and the fix."""
    text = chain(exc)
    lowered = text.lower()
    if isinstance(exc, IndexError) or "no camera" in lowered or "camera(s) not found" in lowered:
        return missing_text(index, cameras)
    if (isinstance(exc, OSError) and exc.errno == errno.ENOMEM) or (
            "cannot allocate memory" in lowered):
        return (f"camera {index}: not enough CMA memory for its buffers ({text}); lower "
                "camera.buffer_count or the video size, or give the kernel more CMA "
                "(dtoverlay=vc4-kms-v3d,cma-512 in /boot/firmware/config.txt)")
    if "busy" in lowered or "-16" in lowered or "did not complete" in lowered:
        certain = "busy" in lowered or "-16" in lowered
        return (f"camera {index} is busy: {'another' if certain else 'usually another'} "
                "process holds it (a second glimpse-edge, an rpicam-/libcamera- app, motion, "
                "a Python script); only one program can use a camera at a time. Find it with "
                f"`sudo fuser -v /dev/media* /dev/video*`. (picamera2: {text})")
    return f"camera {index} cannot be opened: {text}"


