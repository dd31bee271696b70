"""Reading an X server's picture back: frame codes and label text (display tests, issue 16)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageGrab

from glimpse_edge.display.layout import Rect
from glimpse_edge.media.framecode import FrameCode, read_luma_code

__all__ = ["code_in", "grab", "label_bar", "luma", "text_pixels"]


def grab(display: str) -> npt.NDArray[np.uint8]:
    """The X server's whole screen, as RGB."""
    return np.asarray(ImageGrab.grab(xdisplay=display).convert("RGB"))


def luma(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """BT.601 limited-range luma: black 16, white 235, as the frame code was drawn."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def code_in(rgb: npt.NDArray[np.uint8], rect: Rect, size: tuple[int, int]) -> FrameCode | None:
    """The frame code read from the picture shown in ``rect``, scaled back to the frame's
    ``size`` (width, height)."""
    crop = Image.fromarray(rgb[rect.y:rect.bottom, rect.x:rect.right])
    return read_luma_code(luma(np.asarray(crop.resize(size, Image.Resampling.BILINEAR))))


def text_pixels(rgb: npt.NDArray[np.uint8], rect: Rect) -> int:
    """How many near-white pixels (label text) lie in ``rect``."""
    area = rgb[rect.y:rect.bottom, rect.x:rect.right]
    return int((area.min(axis=2) > 200).sum())


def label_bar(tile: Rect) -> Rect:
    """The bottom strip of a tile where its name is written (the lowest eighth)."""
    return Rect(tile.x, tile.bottom - tile.h // 8, tile.w // 2, tile.h // 8)


def save_for_docs(rgb: npt.NDArray[np.uint8], name: str) -> None:
    """Keep a screenshot for the documentation when ``GLIMPSE_DOCS_SCREENSHOTS`` names a
    directory (the README's picture of the kiosk comes from a real test run)."""
    directory = os.environ.get("GLIMPSE_DOCS_SCREENSHOTS")
    if directory:
        Image.fromarray(rgb).save(Path(directory) / name, optimize=True)
