"""display/state.py: what the decoders may do to a tile (issue 16)."""

from __future__ import annotations

import av

from glimpse_edge.display.state import DisplayState


def _frame() -> av.VideoFrame:
    return av.VideoFrame(16, 16, "yuv420p")


def test_a_first_frame_makes_a_waiting_tile_live() -> None:
    state = DisplayState()
    for waiting in ("connecting", "reconnecting", "no video"):
        state.set_tile("a", "Alice", waiting)  # type: ignore[arg-type]
        assert state.push_frame("a", _frame()) is False  # only a live tile takes frames
        before = state.snapshot()
        assert state.show_frame("a", _frame()) is True
        tile = state.snapshot().tiles[0]
        assert (tile.state, tile.name, tile.frame is not None) == ("live", "Alice", True)
        assert tile.frame_seq == before.tiles[0].frame_seq + 1
        assert state.snapshot().version > before.version


def test_a_frame_never_brings_back_a_tile_that_left() -> None:
    state = DisplayState()
    state.set_tile("a", "Alice", "live")
    state.remove_tile("a")
    assert state.show_frame("a", _frame()) is False
    assert state.snapshot().tiles == ()
