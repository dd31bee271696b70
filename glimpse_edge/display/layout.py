"""Where the tiles go: a grid of same-sized 16:9 tiles, as large as the screen allows.

Pure arithmetic, no SDL, so it is tested on its own and reused by the tests to say
where a tile must appear on a screenshot.

Why a grid of equal tiles: a kiosk shows a meeting room, not a presenter; equal
tiles are what a browser client shows too, and everybody stays recognisable.
The grid (rows x columns) is the one that gives each tile the largest area with
the content's aspect kept (letterboxed inside its cell, never stretched), so a
portrait screen stacks tiles and a wide one puts them side by side. The last row,
when not full, is centred, as is the whole grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

__all__ = ["DEFAULT_ASPECT", "DEFAULT_GAP", "MAX_TILES", "Grid", "Rect", "fit", "grid"]

DEFAULT_ASPECT: Final = 16 / 9
DEFAULT_GAP: Final = 8  # pixels between tiles and around the grid
MAX_TILES: Final = 9  # what the issue asks for; decoding more would not fit a Pi anyway


@dataclass(frozen=True, slots=True)
class Rect:
    """A rectangle in screen pixels (x to the right, y down)."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    def overlaps(self, other: Rect) -> bool:
        return (self.x < other.right and other.x < self.right
                and self.y < other.bottom and other.y < self.bottom)

    def inside(self, other: Rect) -> bool:
        return (other.x <= self.x and other.y <= self.y
                and self.right <= other.right and self.bottom <= other.bottom)


@dataclass(frozen=True, slots=True)
class Grid:
    """A layout: the participants' tiles in order, and the self-view's tile if asked."""

    rows: int
    cols: int
    tiles: tuple[Rect, ...]
    self_view: Rect | None


def fit(width: int, height: int, box: Rect) -> Rect:
    """The largest ``width:height`` rectangle inside ``box``, centred (letterbox/pillarbox).

    Used for the tile in its cell and for a frame in its tile: a frame whose aspect is
    not 16:9 (a phone in portrait) is shown whole, with bars, never stretched.
    """
    if width <= 0 or height <= 0 or box.w <= 0 or box.h <= 0:
        return Rect(box.x + box.w // 2, box.y + box.h // 2, 0, 0)
    if box.w * height <= box.h * width:  # the box is narrower than the content: full width
        w, h = box.w, box.w * height // width
    else:
        w, h = box.h * width // height, box.h
    return Rect(box.x + (box.w - w) // 2, box.y + (box.h - h) // 2, w, h)


def _aspect_ratio(aspect: float) -> tuple[int, int]:
    """16/9 as (16, 9): integer arithmetic keeps every tile's aspect exact to a pixel."""
    f = Fraction(aspect).limit_denominator(100)
    return f.numerator, f.denominator


def grid(count: int, width: int, height: int, *, self_view: bool = False,
         aspect: float = DEFAULT_ASPECT, gap: int = DEFAULT_GAP,
         max_tiles: int = MAX_TILES) -> Grid:
    """Lay out ``count`` participants (0..``max_tiles``) on a ``width`` x ``height`` screen.

    ``self_view`` adds one more tile, the last, for the device's own camera. With no
    tile at all the grid is empty (the screen shows its idle page). Raises ValueError
    for a count outside 0..max_tiles or a screen too small for a single pixel of tile.
    """
    if not 0 <= count <= max_tiles:
        raise ValueError(f"tile count must be 0..{max_tiles}, got {count}")
    if width <= 0 or height <= 0 or gap < 0:
        raise ValueError(f"bad screen {width}x{height} (gap {gap})")
    total = count + (1 if self_view else 0)
    if total == 0:
        return Grid(0, 0, (), None)
    num, den = _aspect_ratio(aspect)
    best: tuple[int, int, int, int, int] | None = None  # (area, -rows, rows, cols, tile w)
    for cols in range(1, total + 1):
        rows = math.ceil(total / cols)
        if (rows - 1) * cols >= total:
            continue  # an empty last row: the same as a grid with fewer rows
        cell_w = (width - gap * (cols + 1)) // cols
        cell_h = (height - gap * (rows + 1)) // rows
        tile = fit(num, den, Rect(0, 0, cell_w, cell_h))
        candidate = (tile.area, -rows, rows, cols, tile.w)
        if best is None or candidate > best:
            best = candidate
    assert best is not None
    area, _, rows, cols, _ = best
    if area == 0:
        raise ValueError(f"a {width}x{height} screen has no room for {total} tiles")
    cell_w = (width - gap * (cols + 1)) // cols
    cell_h = (height - gap * (rows + 1)) // rows
    tile = fit(num, den, Rect(0, 0, cell_w, cell_h))
    # The grid's outer size, with the tiles packed gap apart, centred on the screen.
    grid_h = rows * tile.h + (rows - 1) * gap
    top = (height - grid_h) // 2
    rects: list[Rect] = []
    for row in range(rows):
        in_row = min(cols, total - row * cols)
        row_w = in_row * tile.w + (in_row - 1) * gap
        left = (width - row_w) // 2
        y = top + row * (tile.h + gap)
        rects.extend(Rect(left + i * (tile.w + gap), y, tile.w, tile.h) for i in range(in_row))
    if self_view:
        return Grid(rows, cols, tuple(rects[:-1]), rects[-1])
    return Grid(rows, cols, tuple(rects), None)
