"""What the Pi's one H.264 codec block can take: main + lores within its macroblock rate.

A VC4 board (Pi 4 and older) has one hardware H.264 codec, shared by every
encoder on it, and it encodes about as many macroblocks a second as H.264
level 4 allows (245,760: 1920x1080 at 30 fps). The camera's lores tier is a
second encoder on the same block, so main + lores must fit together: a
lores stream that does not fit is made smaller, or left out when even a
small one does not fit. Said in the log (``media.picamera2.lores_limited``)
and by ``doctor``. A Pi 5 encodes in software: its limit is the CPU,
which the frame rate adaptation already follows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from ...config import QualityTier

__all__ = ["VC4_MACROBLOCKS_PER_SECOND", "LoresFit", "fit_lores", "macroblocks_per_second"]

VC4_MACROBLOCKS_PER_SECOND: Final = 245_760  # H.264 level 4.0's MaxMBPS
MIN_LORES: Final = (160, 90)  # smaller is not worth a second encoder


def macroblocks_per_second(width: int, height: int, framerate: float) -> int:
    """16x16 macroblocks a second, as picamera2 counts them when it picks the H.264 level."""
    return math.ceil(((width + 15) // 16) * ((height + 15) // 16) * framerate)


@dataclass(frozen=True)
class LoresFit:
    """The lores tier to configure (None: none), and why it differs from the asked one."""

    tier: QualityTier | None
    note: str | None = None


def fit_lores(platform: str, width: int, height: int, framerate: float,
              lores: QualityTier) -> LoresFit:
    """``lores`` as the codec can encode it beside a ``width`` x ``height`` main stream."""
    if platform != "VC4":
        return LoresFit(lores)
    main = macroblocks_per_second(width, height, framerate)
    asked = macroblocks_per_second(lores.width, lores.height, framerate)
    room = VC4_MACROBLOCKS_PER_SECOND - main
    if main + asked <= VC4_MACROBLOCKS_PER_SECOND:
        return LoresFit(lores)
    what = (f"{width}x{height}@{framerate:g} ({main} macroblocks/s) and a "
            f"{lores.width}x{lores.height} lores stream ({asked}) exceed the Pi's H.264 codec "
            f"({VC4_MACROBLOCKS_PER_SECOND} macroblocks/s)")
    # shrink, keeping the aspect ratio: width a multiple of 32, height even
    scale = math.sqrt(max(room, 0) / asked)
    w = int(lores.width * scale) // 32 * 32
    while w >= MIN_LORES[0]:
        h = int(w * lores.height / lores.width) // 2 * 2
        if h >= MIN_LORES[1] and macroblocks_per_second(w, h, framerate) <= room:
            bitrate = max(1, lores.bitrate * w * h // (lores.width * lores.height))
            return LoresFit(QualityTier(width=w, height=h, bitrate=bitrate),
                            f"{what}: the lores tier is {w}x{h} instead")
        w -= 32
    return LoresFit(None, f"{what}: no lores tier (lower video.width/height/framerate to "
                          "have one)")
