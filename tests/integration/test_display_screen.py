"""The kiosk's screen on a real X server (issue 16): Debian's Xvfb, SDL's x11 driver,
screenshots read back from the X server.

Two tiles fed with the test pattern must appear where the layout puts them, their
pixels carrying the frame code that was drawn, with their names in the label bars;
no tile means the idle page; a tile whose video stopped shows no stale picture.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
from PIL import ImageGrab
from support import screenshot
from support.screenshot import label_bar, text_pixels
from support.xvfb import xvfb

from glimpse_edge.display.layout import Rect, fit, grid
from glimpse_edge.display.screen import DisplayOpenError, Screen, ScreenSettings
from glimpse_edge.display.state import DisplayState
from glimpse_edge.media.framecode import FrameCode
from glimpse_edge.media.testpattern import TestPatternSource

W, H = 1280, 720
FW, FH = 640, 360
TILE_GREY = (32, 32, 36)

@pytest.fixture
def display(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb not installed (Debian package xvfb; scripts/setup-env.sh installs it)")
    with xvfb(W, H) as name:
        monkeypatch.setenv("DISPLAY", name)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        yield name


@pytest.fixture
def screen(display: str) -> Iterator[tuple[Screen, DisplayState]]:
    state = DisplayState("Board room")
    scr = Screen(state, ScreenSettings(driver="x11", size=(W, H), position=(0, 0)))
    scr.open()
    try:
        yield scr, state
    finally:
        scr.close()
    assert not [t for t in threading.enumerate() if t.name == "display-screen"]


def shot(scr: Screen, state: DisplayState, display: str) -> npt.NDArray[np.uint8]:
    """The X server's picture once the state's newest version has been painted."""
    assert scr.wait_painted(state.snapshot().version)
    image = ImageGrab.grab(xdisplay=display).convert("RGB")
    assert image.size == (W, H)
    return np.asarray(image)


def code_in(rgb: npt.NDArray[np.uint8], rect: Rect) -> FrameCode | None:
    """The frame code read from the picture shown in ``rect``, scaled back to the frame's size."""
    return screenshot.code_in(rgb, rect, (FW, FH))


def test_two_tiles_show_their_frames_and_names(
        screen: tuple[Screen, DisplayState], display: str) -> None:
    scr, state = screen
    assert scr.driver == "x11" and scr.output_size == (W, H)
    alice, bob = TestPatternSource(FW, FH, 30), TestPatternSource(FW, FH, 30)
    state.set_tile("a", "Alice", "live")
    state.set_tile("b", "Bob", "live")
    state.set_speaker("b")
    assert state.push_frame("a", alice.render(1234, 1_700_000_000_000, 0))
    assert state.push_frame("b", bob.render(98765, 1_700_000_000_500, 0))
    rgb = shot(scr, state, display)

    tiles = grid(2, W, H).tiles
    codes = [code_in(rgb, fit(FW, FH, t)) for t in tiles]
    assert codes == [FrameCode(1234, 1_700_000_000_000), FrameCode(98765, 1_700_000_000_500)]
    for tile in tiles:
        assert text_pixels(rgb, label_bar(tile)) > 50, "a name in the label bar"
    # the speaker's highlight lies around Bob's tile, outside Alice's
    b = tiles[1]
    assert tuple(rgb[b.y - 2, b.x + b.w // 2]) == (255, 196, 0)
    a = tiles[0]
    assert tuple(rgb[a.y - 2, a.x + a.w // 2]) == (0, 0, 0)

    # a newer frame replaces the older one
    assert state.push_frame("a", alice.render(1235, 1_700_000_000_033, 3000))
    rgb = shot(scr, state, display)
    assert code_in(rgb, fit(FW, FH, tiles[0])) == FrameCode(1235, 1_700_000_000_033)


def test_the_idle_screen_when_nobody_is_there(
        screen: tuple[Screen, DisplayState], display: str) -> None:
    scr, state = screen
    state.set_connection(False, "connection refused")
    rgb = shot(scr, state, display)
    assert not (rgb == TILE_GREY).all(axis=2).any(), "no tile drawn"
    # the room's name, the notice and the clock: text across the middle of the screen
    assert text_pixels(rgb, Rect(W // 4, H // 6, W // 2, H // 2)) > 2000
    # the connection's state in red below
    red = rgb[H * 2 // 3:, :, 0] > 200
    assert red.sum() > 200

    # a participant arrives: the idle page gives way to a tile; leaves: it is back
    state.set_tile("a", "Alice", "connecting")
    rgb = shot(scr, state, display)
    assert (rgb == TILE_GREY).all(axis=2).sum() > W * H // 4
    state.remove_tile("a")
    rgb = shot(scr, state, display)
    assert not (rgb == TILE_GREY).all(axis=2).any()


def test_a_tile_without_video_shows_no_stale_frame(
        screen: tuple[Screen, DisplayState], display: str) -> None:
    scr, state = screen
    source = TestPatternSource(FW, FH, 30)
    state.set_tile("a", "Alice", "live")
    state.set_tile("b", "Bob", "live")
    state.push_frame("a", source.render(1, 1000, 0))
    state.push_frame("b", source.render(2, 2000, 0))
    tiles = grid(2, W, H).tiles
    rgb = shot(scr, state, display)
    assert code_in(rgb, fit(FW, FH, tiles[0])) == FrameCode(1, 1000)

    state.set_tile("a", "Alice", "no video")
    assert not state.push_frame("a", source.render(3, 3000, 0)), "a late frame is refused"
    rgb = shot(scr, state, display)
    tile = tiles[0]
    assert code_in(rgb, fit(FW, FH, tile)) is None
    # the tile's upper half is plain tile grey: no bars, no code, no box
    upper = rgb[tile.y:tile.y + tile.h // 3, tile.x:tile.right]
    assert (upper == TILE_GREY).all(axis=2).mean() > 0.99
    assert text_pixels(rgb, label_bar(tile)) > 50  # "Alice · no video"
    # Bob's tile goes on
    assert code_in(rgb, fit(FW, FH, tiles[1])) == FrameCode(2, 2000)


def test_open_and_close_again_leaves_no_thread_or_fd(display: str) -> None:
    """The caller retries a screen by opening a new one: SDL comes up and goes down cleanly."""

    def cycle() -> None:
        state = DisplayState("r")
        with Screen(state, ScreenSettings(driver="x11", size=(320, 180))) as scr:
            scr.open()
            state.set_tile("a", "A", "live")
            state.push_frame("a", TestPatternSource(FW, FH, 30).render(0, 0, 0))
            assert scr.wait_painted(state.snapshot().version)
        assert not [t for t in threading.enumerate() if t.name == "display-screen"]

    cycle()  # libraries' one-time descriptors (GL drivers, fontconfig) open here
    fds = sorted(os.listdir("/proc/self/fd"))
    for _ in range(5):
        cycle()
    assert sorted(os.listdir("/proc/self/fd")) == fds


def test_a_display_that_cannot_open_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPLAY", ":59999")
    scr = Screen(DisplayState(), ScreenSettings(driver="x11"))
    with pytest.raises(DisplayOpenError, match="x11"):
        scr.open()
    assert not [t for t in threading.enumerate() if t.name == "display-screen"]


@pytest.mark.skipif(os.path.exists("/dev/dri"), reason="this machine has a DRM device")
def test_kmsdrm_without_a_drm_device_says_so() -> None:
    """SDL's KMS/DRM driver is in the system's build; without /dev/dri it cannot open."""
    scr = Screen(DisplayState(), ScreenSettings(driver="kmsdrm"))
    with pytest.raises(DisplayOpenError, match="kmsdrm"):
        scr.open()


def test_the_display_package_imports_no_sdl() -> None:
    """SDL (and its ~0.1 s import) is paid only when a screen opens, never at import."""
    code = ("import sys, glimpse_edge.display.screen, glimpse_edge.display.decode, "
            "glimpse_edge.display.state, glimpse_edge.display.layout; "
            "print(sorted(m for m in sys.modules if m.startswith('sdl2')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
