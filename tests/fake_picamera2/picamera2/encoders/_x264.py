"""libx264 through PyAV, standing in for the VC4's H.264 codec block (not part of picamera2).

Used by the V4L2 emulation only (``v4l2_encoder.py``); the libav encoder
uses PyAV the way picamera2's own does.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from av.video.frame import PictureType

_X264_PROFILES = {"baseline": "baseline", "constrained baseline": "baseline",
                  "main": "main", "high": "high"}
_HEADER_NALS = {7, 8}  # SPS, PPS


def _nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B buffer, each with its 4-byte start code."""
    units = []
    starts = []
    pos = 0
    while (pos := data.find(b"\x00\x00\x01", pos)) != -1:
        starts.append(pos - 1 if pos > 0 and data[pos - 1] == 0 else pos)
        pos += 3
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(data)
        body = data[start:end].lstrip(b"\x00")[1:]  # after the 00 00 01
        units.append(b"\x00\x00\x00\x01" + body)
    return units


class Codec:
    """A real-time H.264 encoder that behaves like the V4L2 one: no B-frames, closed
    GOPs whose I-frames are all IDR, SPS/PPS inline with every IDR when ``repeat``."""

    def __init__(self, width: int, height: int, *, bitrate: int | None, gop: int,
                 repeat: bool, profile: str | None, framerate: float, qp: int | None) -> None:
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
        self._ctx = ctx
        self._gop = gop
        self._since_idr: int | None = None  # frames taken since the last IDR
        self._force_next = False

    def _idr_due(self, force: bool) -> bool:
        return force or self._force_next or self._since_idr is None or (
            self._since_idr >= self._gop)

    def encode(self, array: np.ndarray, pts: int, force: bool) -> list[tuple[bytes, bool]]:
        """One frame in, its access unit(s) out: [(bytes, key frame)]."""
        force = force or self._force_next
        self._force_next = False
        frame = av.VideoFrame.from_ndarray(array, format="yuv420p")
        frame.pts = pts
        frame.pict_type = PictureType.I if force else PictureType.NONE
        out = [(bytes(p), bool(p.is_keyframe)) for p in self._ctx.encode(frame)]
        if any(key for _data, key in out):
            self._since_idr = 1
        elif self._since_idr is not None:
            self._since_idr += 1
        return out

    def skip(self, array: np.ndarray, pts: int, force: bool) -> bytes | None:
        """Rate control drops this frame. A P-frame leaves nothing; an IDR that was
        due leaves its SPS/PPS alone, and the IDR comes with the next frame."""
        if not self._idr_due(force):
            return None
        out = self.encode(array, pts, True)
        self._force_next = True  # the picture was dropped: the next frame is the IDR
        self._since_idr = None
        return b"".join(unit for data, _key in out for unit in _nal_units(data)
                        if unit[4] & 0x1F in _HEADER_NALS)
