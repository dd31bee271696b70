"""Reading an X server's picture back: frame codes and label text (display tests, issue 16)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import trio
from PIL import Image, ImageGrab

from glimpse_edge.display.layout import Rect
from glimpse_edge.media.framecode import FrameCode, read_luma_code

__all__ = ["CodesRead", "code_in", "grab", "label_bar", "luma", "read_codes", "text_pixels"]


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


@dataclass
class CodesRead:
    """What :func:`read_codes` saw: the codes in the order they were shown, how old each
    frame was when first seen (screenshot time - capture time, ms), the last picture."""

    codes: list[FrameCode] = field(default_factory=list)
    ages_ms: list[float] = field(default_factory=list)
    rgb: npt.NDArray[np.uint8] | None = None


async def read_codes(display: str, rect: Rect, size: tuple[int, int], count: int, *,
                     timeout: float = 20.0, captured_after_ms: float | None = None,
                     poll: float = 0.05) -> CodesRead:
    """``count`` different frame codes shown in ``rect`` in a row (the frame's ``size``).

    ``captured_after_ms`` (Unix ms): only frames captured after it count; older
    ones (what the tile still showed from before, e.g. of a participant who has
    left since) are passed over. Fails after ``timeout`` saying what it read.
    """
    out = CodesRead()
    older: list[FrameCode] = []
    unreadable = 0
    with trio.move_on_after(timeout):
        while len(out.codes) < count:
            t_ms = time.time() * 1000
            out.rgb = await trio.to_thread.run_sync(grab, display)
            code = code_in(out.rgb, rect, size)
            if code is None:
                unreadable += 1
            elif captured_after_ms is not None and code.wall_ms <= captured_after_ms:
                if not older or code != older[-1]:
                    older.append(code)
            elif not out.codes or code != out.codes[-1]:
                out.codes.append(code)
                out.ages_ms.append(t_ms - code.wall_ms)
            await trio.sleep(poll)
        return out
    after = "" if captured_after_ms is None else f" captured after {captured_after_ms:.0f} ms"
    raise AssertionError(
        f"expected {count} different frame codes{after} in {rect} within {timeout} s; "
        f"read {out.codes}; passed over {len(older)} older ones (last: "
        f"{older[-1] if older else None}); {unreadable} screenshots with no readable code")
