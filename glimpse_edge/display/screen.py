"""The kiosk's screen: SDL2 on a thread of its own, painting what a DisplayState holds.

Why a thread: SDL's video calls must all come from the thread that initialised the
video subsystem, and a repaint (texture uploads, a present that may wait for the
vertical blank) must never hold up the Trio thread. The screen only reads the
:class:`~.state.DisplayState`; writers never wait for it.

Why SDL2 through PySDL2 (docs/decisions.md, "Kiosk display"): the system's SDL2 has
the KMS/DRM driver (full screen on a Pi's console with no desktop) and the X11 and
Wayland ones (a window where a desktop runs); a decoded frame's Y, U and V planes
go to a streaming IYUV texture with ``SDL_UpdateYUVTexture``, strides as they are,
and the renderer converts and scales them (on the GPU with the GL/GLES renderers),
so Python touches no pixel.

The driver setting: ``"auto"`` tries Wayland (when ``WAYLAND_DISPLAY`` is set),
X11 (when ``DISPLAY`` is set), then KMS/DRM; a named driver is tried alone. A
screen that cannot be opened raises :class:`DisplayOpenError` from :meth:`Screen.open`
saying what was tried and why each failed; the caller retries later, the call goes on.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import av
import structlog

from .layout import DEFAULT_GAP, MAX_TILES, Rect, fit, grid
from .state import SELF_KEY, DisplayState, Snapshot, TileView
from .text import DEFAULT_FONT, TextCache

__all__ = ["DisplayOpenError", "Driver", "Screen", "ScreenSettings", "driver_candidates"]

log = structlog.get_logger(__name__)

Driver = Literal["auto", "kmsdrm", "x11", "wayland"]

_BACKGROUND: Final = (0, 0, 0)
_TILE: Final = (32, 32, 36)
_TEXT: Final = (235, 235, 235)
_DIM: Final = (150, 150, 160)
_SPEAKER: Final = (255, 196, 0)
_ERROR: Final = (255, 120, 110)
_STATE_TEXT: Final = {"connecting": "connecting…", "no video": "no video",
                      "reconnecting": "reconnecting…"}
_EVENT_PERIOD: Final = 0.25  # pump window events at least this often, even when idle


class DisplayOpenError(RuntimeError):
    """No screen could be opened (no X server, no DRM device, no permission...)."""


@dataclass(frozen=True, slots=True)
class ScreenSettings:
    """How to open the screen. ``size`` and ``position`` are for a window (x11/wayland);
    KMS/DRM (and ``fullscreen=True``) take the whole display at its current mode."""

    driver: Driver = "auto"
    size: tuple[int, int] = (1280, 720)
    position: tuple[int, int] | None = None
    fullscreen: bool | None = None  # None: full screen on kmsdrm only
    max_fps: float = 30.0
    font: Path | None = DEFAULT_FONT
    show_names: bool = True
    self_view: bool = False
    max_tiles: int = MAX_TILES


def driver_candidates(driver: Driver, env: Mapping[str, str] | None = None) -> list[str]:
    """SDL's video drivers to try, in order, for the ``driver`` setting."""
    if driver != "auto":
        return [driver]
    env = os.environ if env is None else env
    found = []
    if env.get("WAYLAND_DISPLAY"):
        found.append("wayland")
    if env.get("DISPLAY"):
        found.append("x11")
    found.append("kmsdrm")
    return found


@dataclass(slots=True)
class _Texture:
    handle: Any
    width: int
    height: int
    seq: int


class Screen:
    """Opens the display on its own thread and repaints it whenever the state changes.

    ``open`` blocks until the screen is up (or raises :class:`DisplayOpenError`): from
    Trio, call it through ``trio.to_thread.run_sync``. ``close`` stops the thread and
    gives back everything SDL holds. One Screen opens once.
    """

    def __init__(self, state: DisplayState, settings: ScreenSettings | None = None) -> None:
        self.state = state
        self.settings = settings or ScreenSettings()
        self.driver: str | None = None  # the SDL driver that opened
        self.renderer_name: str | None = None
        self.yuv_native = False  # the renderer takes IYUV textures itself (no SDL conversion)
        self.output_size = (0, 0)
        self.failure: BaseException | None = None  # why the thread ended early, if it did
        self._opened = threading.Event()
        self._stop = threading.Event()
        self._open_error: DisplayOpenError | None = None
        self._painted_version = -1
        self._painted = threading.Condition()
        self._thread: threading.Thread | None = None

    # -- the owner's side -----------------------------------------------------------------

    def open(self, timeout: float = 15.0) -> None:
        if self._thread is not None:
            raise RuntimeError("a Screen opens once")
        self._thread = threading.Thread(target=self._run, name="display-screen", daemon=True)
        self._thread.start()
        if not self._opened.wait(timeout):
            self.close()
            raise DisplayOpenError(f"the display did not open within {timeout} s")
        if self._open_error is not None:
            self._thread.join()
            raise self._open_error

    @property
    def running(self) -> bool:
        """True while the screen's thread paints (False before open, after close or a crash)."""
        return self._thread is not None and self._thread.is_alive() and self._opened.is_set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop painting and free the window, textures and SDL itself. Idempotent."""
        self._stop.set()
        self.state.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("display.stuck", timeout=timeout)

    def __enter__(self) -> Screen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_painted(self, version: int, timeout: float = 5.0) -> bool:
        """Block until a snapshot at least as new as ``version`` is on the screen."""
        with self._painted:
            return self._painted.wait_for(lambda: self._painted_version >= version, timeout)

    # -- the screen's thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            session = _Session.open(self.settings)
        except DisplayOpenError as exc:
            self._open_error = exc
            self._opened.set()
            return
        except Exception as exc:  # a broken library is an open error too, said as such
            self._open_error = DisplayOpenError(f"cannot start SDL2: {exc}")
            self._opened.set()
            return
        self.driver, self.renderer_name = session.driver, session.renderer_name
        self.yuv_native, self.output_size = session.yuv_native, session.output_size()
        log.info("display.opened", driver=self.driver, renderer=self.renderer_name,
                 yuv_native=self.yuv_native, width=self.output_size[0],
                 height=self.output_size[1])
        self.state.set_screen_size(*self.output_size)  # the tiles' sizes, for the peers
        self._opened.set()
        try:
            self._paint_loop(session)
        except Exception as exc:
            self.failure = exc
            log.exception("display.crashed")
        finally:
            session.close()
            log.info("display.closed", driver=self.driver)

    def _paint_loop(self, session: _Session) -> None:
        min_period = 1.0 / self.settings.max_fps
        version, clock, last = -1, "", 0.0
        while not self._stop.is_set():
            dirty = session.pump_events()
            if dirty and session.output_size() != self.output_size:  # a resized window
                self.output_size = session.output_size()
                self.state.set_screen_size(*self.output_size)
            snap = self.state.snapshot()
            now_clock = time.strftime("%H:%M")
            if snap.version != version or dirty or now_clock != clock:
                session.paint(snap, self.settings, now_clock)
                version, clock, last = snap.version, now_clock, time.monotonic()
                with self._painted:
                    self._painted_version = version
                    self._painted.notify_all()
            self.state.wait_changed(version, _EVENT_PERIOD)
            pause = last + min_period - time.monotonic()
            if pause > 0 and not self._stop.is_set():
                self._stop.wait(pause)  # at most max_fps repaints, frames in between skipped


class _Session:
    """One opened SDL video subsystem, window and renderer (the screen's thread only)."""

    def __init__(self, sdl: Any, driver: str, window: Any, renderer: Any) -> None:
        self.sdl = sdl
        self.driver = driver
        self.window = window
        self.renderer = renderer
        info = sdl.SDL_RendererInfo()
        sdl.SDL_GetRendererInfo(renderer, ctypes.byref(info))
        self.renderer_name = info.name.decode()
        formats = {info.texture_formats[i] for i in range(info.num_texture_formats)}
        self.yuv_native = sdl.SDL_PIXELFORMAT_IYUV in formats
        self.text: TextCache | None = None
        self.textures: dict[str, _Texture] = {}

    @classmethod
    def open(cls, settings: ScreenSettings) -> _Session:
        import sdl2 as sdl

        errors = []
        for driver in driver_candidates(settings.driver):
            sdl.SDL_SetHint(sdl.SDL_HINT_VIDEODRIVER, driver.encode())
            if sdl.SDL_InitSubSystem(sdl.SDL_INIT_VIDEO) != 0:
                errors.append(f"{driver}: {sdl.SDL_GetError().decode() or 'failed'}")
                continue
            try:
                session = cls._window(sdl, driver, settings)
            except DisplayOpenError as exc:
                sdl.SDL_QuitSubSystem(sdl.SDL_INIT_VIDEO)
                errors.append(f"{driver}: {exc}")
                continue
            session.text = TextCache(session.renderer, settings.font)
            return session
        sdl.SDL_Quit()
        raise DisplayOpenError("cannot open the display (" + "; ".join(errors) + ")")

    @classmethod
    def _window(cls, sdl: Any, driver: str, settings: ScreenSettings) -> _Session:
        full = settings.fullscreen if settings.fullscreen is not None else driver == "kmsdrm"
        flags = sdl.SDL_WINDOW_SHOWN
        w, h = settings.size
        if full:
            flags |= sdl.SDL_WINDOW_FULLSCREEN_DESKTOP
            mode = sdl.SDL_DisplayMode()
            if sdl.SDL_GetDesktopDisplayMode(0, ctypes.byref(mode)) == 0:
                w, h = mode.w, mode.h
        else:
            flags |= sdl.SDL_WINDOW_BORDERLESS if settings.position is not None else 0
        x, y = settings.position or (sdl.SDL_WINDOWPOS_UNDEFINED, sdl.SDL_WINDOWPOS_UNDEFINED)
        window = sdl.SDL_CreateWindow(b"glimpse-edge", x, y, w, h, flags)
        if not window:
            raise DisplayOpenError(f"no window: {sdl.SDL_GetError().decode()}")
        # linear scaling: a 640x360 frame in a 628x353 tile must not alias
        sdl.SDL_SetHint(sdl.SDL_HINT_RENDER_SCALE_QUALITY, b"linear")
        renderer = (sdl.SDL_CreateRenderer(window, -1, sdl.SDL_RENDERER_ACCELERATED)
                    or sdl.SDL_CreateRenderer(window, -1, sdl.SDL_RENDERER_SOFTWARE))
        if not renderer:
            error = sdl.SDL_GetError().decode()
            sdl.SDL_DestroyWindow(window)
            raise DisplayOpenError(f"no renderer: {error}")
        if full:
            sdl.SDL_ShowCursor(sdl.SDL_DISABLE)
        return cls(sdl, driver, window, renderer)

    def output_size(self) -> tuple[int, int]:
        w, h = ctypes.c_int(), ctypes.c_int()
        self.sdl.SDL_GetRendererOutputSize(self.renderer, ctypes.byref(w), ctypes.byref(h))
        return w.value, h.value

    def pump_events(self) -> bool:
        """Drain SDL's events; True when the window needs a repaint (exposed, resized)."""
        sdl = self.sdl
        event = sdl.SDL_Event()
        dirty = False
        while sdl.SDL_PollEvent(ctypes.byref(event)):
            if event.type == sdl.SDL_WINDOWEVENT:
                dirty = True
            # SDL_QUIT is ignored: a kiosk is closed by the agent, not by a key press
        return dirty

    # -- painting ---------------------------------------------------------------------------

    def _fill(self, rect: Rect, colour: tuple[int, int, int], alpha: int = 255) -> None:
        sdl = self.sdl
        sdl.SDL_SetRenderDrawColor(self.renderer, *colour, alpha)
        sdl.SDL_RenderFillRect(self.renderer, ctypes.byref(sdl.SDL_Rect(rect.x, rect.y,
                                                                         rect.w, rect.h)))

    def paint(self, snap: Snapshot, settings: ScreenSettings, clock: str) -> None:
        sdl = self.sdl
        sdl.SDL_SetRenderDrawBlendMode(self.renderer, sdl.SDL_BLENDMODE_BLEND)
        sdl.SDL_SetRenderDrawColor(self.renderer, *_BACKGROUND, 255)
        sdl.SDL_RenderClear(self.renderer)
        width, height = self.output_size()
        tiles = snap.tiles[: settings.max_tiles]
        own = snap.self_view if settings.self_view else None
        if settings.self_view and own is None:  # its place is kept (the peers' caps count it)
            own = TileView(SELF_KEY, "me", "no video")
        if not tiles:
            self._paint_idle(snap, clock, width, height)
        else:
            layout = grid(len(tiles), width, height, self_view=own is not None,
                          max_tiles=settings.max_tiles)
            for tile, rect in zip(tiles, layout.tiles, strict=True):
                self._paint_tile(tile, rect, snap.speaker == tile.key, settings.show_names)
            if own is not None and layout.self_view is not None:
                self._paint_tile(own, layout.self_view, False, settings.show_names)
        shown = {t.key for t in (*tiles, *((own,) if own else ())) if t.state == "live"}
        for key in [k for k in self.textures if k not in shown]:
            # gone, or not live: its texture goes too (no stale picture can come back)
            sdl.SDL_DestroyTexture(self.textures.pop(key).handle)
        sdl.SDL_RenderPresent(self.renderer)

    def _upload(self, key: str, frame: av.VideoFrame, seq: int) -> _Texture | None:
        sdl = self.sdl
        tex = self.textures.get(key)
        if tex is not None and (tex.width, tex.height) != (frame.width, frame.height):
            sdl.SDL_DestroyTexture(self.textures.pop(key).handle)
            tex = None
        if tex is None:
            handle = sdl.SDL_CreateTexture(self.renderer, sdl.SDL_PIXELFORMAT_IYUV,
                                           sdl.SDL_TEXTUREACCESS_STREAMING,
                                           frame.width, frame.height)
            if not handle:
                log.warning("display.texture_failed", error=sdl.SDL_GetError().decode())
                return None
            tex = self.textures[key] = _Texture(handle, frame.width, frame.height, -1)
        if tex.seq != seq:
            y, u, v = frame.planes[0], frame.planes[1], frame.planes[2]
            byte_p = ctypes.POINTER(ctypes.c_uint8)
            # the decoder's planes as they are, strides included: no copy in Python
            sdl.SDL_UpdateYUVTexture(
                tex.handle, None,
                ctypes.cast(y.buffer_ptr, byte_p), y.line_size,
                ctypes.cast(u.buffer_ptr, byte_p), u.line_size,
                ctypes.cast(v.buffer_ptr, byte_p), v.line_size)
            tex.seq = seq
        return tex

    def _paint_tile(self, tile: TileView, rect: Rect, speaking: bool, show_names: bool) -> None:
        sdl = self.sdl
        self._fill(rect, _TILE)
        text = self.text
        unit = max(10, rect.h // 14)  # the label's font size follows the tile's size
        if tile.state == "live" and tile.frame is not None:
            tex = self._upload(tile.key, tile.frame, tile.frame_seq)
            if tex is not None:
                dst = fit(tex.width, tex.height, rect)
                sdl.SDL_RenderCopy(self.renderer, tex.handle, None,
                                   ctypes.byref(sdl.SDL_Rect(dst.x, dst.y, dst.w, dst.h)))
        elif text is not None:
            text.draw(_STATE_TEXT.get(tile.state, tile.state), unit, _DIM,
                      rect.x + rect.w // 2, rect.y + rect.h // 2, centre=True,
                      max_width=rect.w - 2 * unit)
        if show_names and text is not None and tile.name:
            label = tile.name if tile.state == "live" else f"{tile.name} · {tile.state}"
            pad = max(4, unit // 3)
            bar = Rect(rect.x, rect.bottom - unit - 2 * pad, rect.w, unit + 2 * pad)
            self._fill(bar, (0, 0, 0), 160)
            text.draw(label, unit, _TEXT, bar.x + pad * 2, bar.y + pad // 2,
                      max_width=rect.w - 4 * pad)
        if speaking:
            # around the tile, in the gap: the highlight hides no part of the picture
            b = max(2, DEFAULT_GAP // 2)
            x, y, w = rect.x - b, rect.y - b, rect.w + 2 * b
            for edge in (Rect(x, y, w, b), Rect(x, rect.bottom, w, b),
                         Rect(x, rect.y, b, rect.h), Rect(rect.right, rect.y, b, rect.h)):
                self._fill(edge, _SPEAKER)

    def _paint_idle(self, snap: Snapshot, clock: str, width: int, height: int) -> None:
        text = self.text
        if text is None:
            return
        unit = max(12, height // 18)
        cx = width // 2
        y = height // 4
        _, h = text.draw(snap.room or "glimpse-edge", unit * 2, _TEXT, cx, y, centre=True,
                         max_width=width - 2 * unit)
        y += h + unit
        text.draw("waiting for participants", unit, _DIM, cx, y, centre=True,
                  max_width=width - 2 * unit)
        y += unit * 3
        text.draw(clock, unit * 3, _TEXT, cx, y, centre=True)
        y += unit * 3
        conn = snap.connection
        status = "signaling: connected" if conn.signaling_up else "signaling: down"
        text.draw(status, unit * 2 // 3, _DIM if conn.signaling_up else _ERROR, cx, y,
                  centre=True)
        if conn.last_error:
            y += unit
            text.draw(f"last error: {conn.last_error}", unit * 2 // 3, _ERROR, cx, y,
                      centre=True, max_width=width - 2 * unit)

    def close(self) -> None:
        sdl = self.sdl
        for tex in self.textures.values():
            sdl.SDL_DestroyTexture(tex.handle)
        self.textures.clear()
        if self.text is not None:
            self.text.close()
        sdl.SDL_DestroyRenderer(self.renderer)
        sdl.SDL_DestroyWindow(self.window)
        sdl.SDL_QuitSubSystem(sdl.SDL_INIT_VIDEO)
        sdl.SDL_Quit()
