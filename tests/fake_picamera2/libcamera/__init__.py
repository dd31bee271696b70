"""Stand-in for the parts of libcamera's Python bindings that picamera2 users touch.

``Transform`` (flips for a camera mounted upside down or mirrored) and the
control enums in :mod:`libcamera.controls`. See ../README.md.
"""

from __future__ import annotations

from . import controls


class Transform:
    """``libcamera.Transform(rotation=0, hflip=False, vflip=False, transpose=False)``."""

    def __init__(
        self, rotation: int = 0, hflip: bool = False, vflip: bool = False, transpose: bool = False
    ) -> None:
        if rotation not in (0, 180):
            # 90/270 need transpose, which the Pi's ISP cannot do
            raise ValueError(f"Invalid rotation {rotation}")
        flip = rotation == 180
        self.hflip = bool(hflip) != flip
        self.vflip = bool(vflip) != flip
        self.transpose = bool(transpose)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transform) and (self.hflip, self.vflip, self.transpose) == (
            other.hflip, other.vflip, other.transpose)

    def __hash__(self) -> int:
        return hash((self.hflip, self.vflip, self.transpose))

    def __repr__(self) -> str:
        parts = [n for n in ("hflip", "vflip", "transpose") if getattr(self, n)]
        return f"<libcamera.Transform '{'/'.join(parts) or 'identity'}'>"


class ColorSpace:
    """Enough of ``libcamera.ColorSpace`` for picamera2's video defaults."""

    def __init__(self, name: str) -> None:
        self.name = name

    @staticmethod
    def Smpte170m() -> ColorSpace:  # the real (non-PEP 8) name
        return ColorSpace("SMPTE170M")

    @staticmethod
    def Rec709() -> ColorSpace:
        return ColorSpace("Rec709")

    def __repr__(self) -> str:
        return f"<libcamera.ColorSpace '{self.name}'>"


__all__ = ["ColorSpace", "Transform", "controls"]
