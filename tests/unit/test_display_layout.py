"""The kiosk's grid (issue 16): tile sizes, places and aspect for 0-9 tiles on odd screens."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glimpse_edge.display.layout import MAX_TILES, Rect, fit, grid

SCREENS = [(800, 480), (1920, 1080), (1080, 1920), (333, 777), (1280, 720), (640, 480)]


def _check(count: int, width: int, height: int, self_view: bool = False) -> None:
    g = grid(count, width, height, self_view=self_view)
    rects = [*g.tiles, *([g.self_view] if g.self_view else [])]
    assert len(g.tiles) == count
    assert len(rects) == count + self_view
    screen = Rect(0, 0, width, height)
    for i, r in enumerate(rects):
        assert r.w > 0 and r.h > 0
        assert r.inside(screen), (r, screen)
        # 16:9 to the pixel: the height is what the width gives, rounded either way
        assert abs(r.w * 9 - r.h * 16) < 16 + 9, r
        for other in rects[i + 1:]:
            assert not r.overlaps(other), (r, other)
    assert len({(r.w, r.h) for r in rects}) <= 1, "all tiles the same size"


@pytest.mark.parametrize(("width", "height"), SCREENS)
@pytest.mark.parametrize("count", range(1, MAX_TILES + 1))
def test_tiles_fit_the_screen(count: int, width: int, height: int) -> None:
    _check(count, width, height)
    _check(count, width, height, self_view=True)


@pytest.mark.parametrize(
    ("count", "width", "height", "rows", "cols"),
    [
        (1, 1920, 1080, 1, 1),
        (2, 1920, 1080, 1, 2),  # side by side on a wide screen
        (2, 1080, 1920, 2, 1),  # stacked on a portrait one
        (3, 1920, 1080, 2, 2),
        (4, 800, 480, 2, 2),
        (5, 1920, 1080, 2, 3),
        (9, 1920, 1080, 3, 3),
        (3, 1080, 1920, 3, 1),
        (4, 333, 777, 4, 1),
    ],
)
def test_the_grid_that_gives_the_largest_tiles(count: int, width: int, height: int,
                                                rows: int, cols: int) -> None:
    g = grid(count, width, height)
    assert (g.rows, g.cols) == (rows, cols)


def test_one_tile_fills_the_screen_letterboxed() -> None:
    (tile,) = grid(1, 1920, 1080, gap=0).tiles
    assert tile == Rect(0, 0, 1920, 1080)
    (tile,) = grid(1, 800, 480, gap=0).tiles
    assert (tile.w, tile.h) == (800, 450)
    assert tile.y == 15  # centred: 15 px bars above and below


def test_a_short_last_row_is_centred() -> None:
    g = grid(3, 1920, 1080)
    top, bottom = g.tiles[:2], g.tiles[2]
    assert top[0].y == top[1].y < bottom.y
    left, right = top[0].x, 1920 - top[1].right
    assert abs(left - right) <= 1
    assert abs(bottom.x - (1920 - bottom.right)) <= 1


def test_the_self_view_is_the_last_tile() -> None:
    g = grid(2, 1280, 720, self_view=True)
    assert g.self_view is not None and len(g.tiles) == 2
    assert g.self_view.y > g.tiles[0].y


def test_no_tiles_is_an_empty_grid() -> None:
    g = grid(0, 1280, 720)
    assert g.tiles == () and g.self_view is None
    assert grid(0, 1280, 720, self_view=True).self_view is not None


def test_bad_counts_and_screens_are_refused() -> None:
    with pytest.raises(ValueError):
        grid(MAX_TILES + 1, 1920, 1080)
    with pytest.raises(ValueError):
        grid(-1, 1920, 1080)
    with pytest.raises(ValueError):
        grid(1, 0, 1080)
    with pytest.raises(ValueError):
        grid(9, 20, 20)


def test_fit_keeps_a_portrait_frame_whole() -> None:
    r = fit(360, 640, Rect(100, 50, 640, 360))
    assert (r.w, r.h) == (202, 360) and r.y == 50
    assert r.x == 100 + (640 - 202) // 2


@given(count=st.integers(1, MAX_TILES), width=st.integers(200, 4000),
       height=st.integers(200, 4000), self_view=st.booleans())
def test_properties(count: int, width: int, height: int, self_view: bool) -> None:
    """Inside the screen, no overlap, same size, 16:9 kept: on any screen."""
    _check(count, width, height, self_view)


@given(w=st.integers(1, 4000), h=st.integers(1, 4000), bw=st.integers(1, 4000),
       bh=st.integers(1, 4000))
def test_fit_properties(w: int, h: int, bw: int, bh: int) -> None:
    box = Rect(7, 11, bw, bh)
    r = fit(w, h, box)
    assert r.inside(box)
    assert r.w == bw or r.h == bh  # touches two sides
    # aspect kept to the rounding of one pixel
    assert abs(r.w * h - r.h * w) <= max(w, h)
