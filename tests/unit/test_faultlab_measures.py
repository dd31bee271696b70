"""The uplink scenarios' arithmetic (support/faultlab.py): step series, spreads, recovery."""

from __future__ import annotations

from support.faultlab import _back_at, frame_sizes, held, spread
from support.peerproc import RemoteView


def test_held_splits_a_step_series_at_the_window() -> None:
    changes = [(5.0, 300.0), (12.0, 150.0), (30.0, 400.0)]
    assert held(changes, 200.0, 10.0, 20.0) == [(200.0, 2.0), (150.0, 8.0)]
    assert held([], None, 0.0, 10.0) == []
    assert held([], 150.0, 0.0, 10.0) == [(150.0, 10.0)]


def test_spread_weighs_by_time_and_measures_the_swing() -> None:
    got = spread([(150.0, 8.0), (300.0, 1.0), (150.0, 1.0)])
    assert got == {"min": 150.0, "median": 150.0, "max": 300.0, "swing": 1.0}
    assert spread([])["swing"] is None


def _view(frames: list[float], sizes: list[tuple[float, int, int]]) -> RemoteView:
    view = RemoteView()
    view.codes = [(i, t * 1000, t * 1000) for i, t in enumerate(frames)]
    view.sizes = sizes
    return view


def test_back_at_ignores_a_picture_frozen_at_the_top_size() -> None:
    top = (1280, 720)
    frozen = _view([1.0, 1.1], [(1.0, 1280, 720)])
    assert _back_at(frozen, top, since=5.0) is None  # nothing decoded after the lift
    climbed = _view([1.0, 6.0, 9.0, 9.1, 9.2],
                    [(1.0, 1280, 720), (6.0, 640, 360), (9.0, 1280, 720)])
    assert _back_at(climbed, top, since=5.0, frames=3) == 9.0
    assert _back_at(climbed, top, since=5.0, frames=4) is None
    assert frame_sizes(climbed, 5.0, 10.0) == [(640, 360), top, top, top]


def test_the_longest_hole_is_the_longest_run_of_reports_with_a_gap() -> None:
    view = RemoteView()
    view.jitter = [(1.0, 10, False), (1.2, 10, True), (1.4, 10, True), (1.6, 40, False),
                   (2.0, 40, True), (2.2, 41, True), (2.4, 41, True), (2.6, 41, True)]
    assert view.longest_hole(0.0, 3.0) == 0.6, "the run still open at the window's end counts"
    assert view.longest_hole(0.0, 1.9) == 0.4
    assert RemoteView().longest_hole(0.0, 3.0) is None, "a peer that did not report it"
