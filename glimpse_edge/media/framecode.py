"""A machine-readable code burned into video, to measure latency and freezes end to end.

Every frame a source captures carries 96 bits in its luma: a 32-bit frame counter, the
48-bit capture wall-clock time in milliseconds (:func:`time.time`) and a CRC-16 over
both.  A receiver that decodes the stream (a browser test, another agent) reads the
code back with :func:`read_code` and gets, per frame, *which* frame it is (gaps and
repeats = drops and freezes) and *when* it was captured (latency, given synchronised
clocks).  Nothing here depends on the transport, so it also measures encoder and
jitter-buffer delays.

Why it looks the way it does:

* 3 rows x 32 blocks of pure black (Y=16) and white (Y=235), the legal video range,
  so range conversions in decoders do not clip the levels the reader thresholds;
* blocks are ``width // 33`` pixels square (20 px at 640x360, 38 px at 1280x720): big
  enough that a 300-400 kbit/s H.264/VP8 encode keeps each block's centre on the
  right side of mid-grey, while the code still covers only the top band of the frame;
  the 33rd block's worth of width pays for a mid-grey (Y=128) border of half a
  block around the grid, which separates it from the picture behind it;
* the reader samples only the central half of each block (ringing and chroma
  bleeding live at the edges) and checks the border is grey and the CRC matches,
  so an arbitrary picture practically never reads as a valid code (None instead).
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable
from typing import Final, NamedTuple

import av
import numpy as np
import numpy.typing as npt

from .source import plane_view

__all__ = [
    "CODE_BITS",
    "CODE_COLUMNS",
    "CODE_ROWS",
    "CodeGeometry",
    "FrameCode",
    "code_geometry",
    "draw_code",
    "read_code",
    "read_luma_code",
]

CODE_ROWS: Final = 3
CODE_COLUMNS: Final = 32
CODE_BITS: Final = CODE_ROWS * CODE_COLUMNS  # 96

_BLACK: Final = 16
_WHITE: Final = 235
_GREY: Final = 128
_THRESHOLD: Final = (_BLACK + _WHITE) / 2
_BORDER_TOLERANCE: Final = 40  # how far the border's mean may drift from grey
_COUNTER_MASK: Final = (1 << 32) - 1
_WALL_MASK: Final = (1 << 48) - 1
# Luma is plane 0, one byte per pixel, in these formats: read it without converting.
_LUMA_FIRST: Final = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p",
                                "yuvj444p", "nv12", "nv21", "gray"})


class FrameCode(NamedTuple):
    """What a frame code says: the capture counter and wall-clock time (ms)."""

    counter: int
    wall_ms: int


class CodeGeometry(NamedTuple):
    """Where the code sits in a frame of a given width (all in pixels)."""

    block: int  # side of one block
    border: int  # grey margin around the grid
    width: int  # the whole code area, border included
    height: int


def code_geometry(width: int) -> CodeGeometry:
    """The size of the code drawn into frames ``width`` pixels wide.

    Raises ValueError for frames narrower than 33 pixels (no room for one-pixel blocks).
    """
    block = width // (CODE_COLUMNS + 1)
    if block < 1:
        raise ValueError(f"a frame code needs a frame at least {CODE_COLUMNS + 1} px wide")
    border = block // 2
    return CodeGeometry(
        block, border, CODE_COLUMNS * block + 2 * border, CODE_ROWS * block + 2 * border
    )


def _payload(counter: int, wall_ms: int) -> bytes:
    return (counter & _COUNTER_MASK).to_bytes(4, "big") + (wall_ms & _WALL_MASK).to_bytes(6, "big")


def _crc(payload: bytes) -> int:
    # CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF)
    return binascii.crc_hqx(payload, 0xFFFF)


def draw_code(y_plane: npt.NDArray[np.uint8], counter: int, wall_ms: int) -> None:
    """Burn ``counter`` (mod 2**32) and ``wall_ms`` (mod 2**48) into a luma plane, in place.

    ``y_plane`` is the (height, width) luma of the frame (a view with any strides);
    the code goes into its top-left corner.  Raises ValueError if the frame is too
    small to hold it.
    """
    height, width = y_plane.shape
    geo = code_geometry(width)
    if geo.height > height:
        raise ValueError(f"a frame code for width {width} needs a height of {geo.height} px")
    payload = _payload(counter, wall_ms)
    data = payload + _crc(payload).to_bytes(2, "big")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).reshape(CODE_ROWS, CODE_COLUMNS)
    levels = np.where(bits.astype(bool), np.uint8(_WHITE), np.uint8(_BLACK)).astype(np.uint8)
    grid = np.repeat(np.repeat(levels, geo.block, axis=0), geo.block, axis=1)
    b, g = geo.block, geo.border
    y_plane[: geo.height, : geo.width] = _GREY
    y_plane[g : g + CODE_ROWS * b, g : g + CODE_COLUMNS * b] = grid


def _luma(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    if frame.format.name not in _LUMA_FIRST:
        frame = frame.reformat(format="yuv420p")
    return plane_view(frame, 0, frame.width, frame.height)


def read_luma_code(y_plane: npt.NDArray[np.uint8]) -> FrameCode | None:
    """Read a code from a luma plane; None if there is none (or it was damaged)."""
    height, width = y_plane.shape
    try:
        geo = code_geometry(width)
    except ValueError:
        return None
    if geo.height > height:
        return None
    b, g = geo.block, geo.border
    grid = y_plane[g : g + CODE_ROWS * b, g : g + CODE_COLUMNS * b].reshape(
        CODE_ROWS, b, CODE_COLUMNS, b
    )
    lo, hi = b // 4, b - b // 4
    means = grid[:, lo:hi, :, lo:hi].mean(axis=(1, 3), dtype=np.float32)
    if g >= 2:
        # the border's outer half, away from the blocks' ringing
        border = np.concatenate(
            (y_plane[: g // 2, : geo.width].ravel(), y_plane[: geo.height, : g // 2].ravel())
        )
        if abs(float(border.mean(dtype=np.float32)) - _GREY) > _BORDER_TOLERANCE:
            return None
    bits = (means > _THRESHOLD).astype(np.uint8).ravel()
    data = np.packbits(bits).tobytes()
    payload, check = data[:10], int.from_bytes(data[10:], "big")
    if _crc(payload) != check:
        return None
    return FrameCode(int.from_bytes(payload[:4], "big"), int.from_bytes(payload[4:], "big"))


def read_code(frame: av.VideoFrame, widths: Iterable[int] = ()) -> FrameCode | None:
    """Read the code from a decoded frame of any pixel format.

    The code's layout follows the width it was drawn at: for a picture sent
    smaller than it was made (a lower quality tier, scaled by any factor),
    ``widths`` are the widths it may have been drawn at, and the frame is
    also tried enlarged to each, in order (its aspect kept). Returns None
    when the frame carries no valid code (the CRC or border check fails).
    """
    code = read_luma_code(_luma(frame))
    for width in dict.fromkeys(w for w in widths if w > frame.width):
        if code is not None:
            break
        height = round(frame.height * width / frame.width)
        code = read_luma_code(_luma(frame.reformat(width=width, height=height,
                                                   format="yuv420p")))
    return code
