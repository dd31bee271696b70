"""libx264 through PyAV, standing in for the Pi's codec block (not part of picamera2)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import av
import numpy as np
from av.video.frame import PictureType

_X264_PROFILES = {"baseline": "baseline", "constrained baseline": "baseline",
                  "main": "main", "high": "high"}


def open_x264(
    width: int, height: int, *, bitrate: int | None, gop: int, repeat: bool,
    profile: str | None, framerate: float, qp: int | None,
) -> Any:
    """A real-time H.264 encoder that behaves like the V4L2 one: no B-frames, closed
    GOPs whose I-frames are all IDR, SPS/PPS inline with every IDR when ``repeat``."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1, 1_000_000)
    ctx.framerate = Fraction(round(framerate * 1000), 1000)
    params = [f"keyint={gop}", f"min-keyint={gop}", "scenecut=0", "bframes=0",
              f"repeat-headers={1 if repeat else 0}"]
    if bitrate is not None and qp is None:
        ctx.bit_rate = bitrate
        params += [f"vbv-maxrate={max(1, bitrate // 1000)}",
                   f"vbv-bufsize={max(1, bitrate // 2000)}", "nal-hrd=none"]
    if qp is not None:
        ctx.qmin = ctx.qmax = qp
    ctx.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "profile": _X264_PROFILES.get((profile or "high").lower(), "high"),
        "forced-idr": "1",
        "x264-params": ":".join(params),
    }
    ctx.thread_count = 1
    ctx.open()
    return ctx


def encode(ctx: Any, array: np.ndarray, pts: int, force_idr: bool) -> list[Any]:
    frame = av.VideoFrame.from_ndarray(array, format="yuv420p")
    frame.pts = pts
    frame.pict_type = PictureType.I if force_idr else PictureType.NONE
    return list(ctx.encode(frame))
