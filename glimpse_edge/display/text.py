"""Text on the screen with SDL2_ttf: rendered once, kept as a texture, drawn every repaint.

Why a cache: a label is the same text for minutes, and rasterising it (FreeType)
costs far more than drawing a texture. The cache is bounded (least recently used
out), so a clock that changes every minute or names that come and go never grow
it. Only the screen's thread calls this (SDL's rule), so it takes no lock.
"""

from __future__ import annotations

import collections
import ctypes
from pathlib import Path
from typing import Any, Final

import structlog

__all__ = ["DEFAULT_FONT", "TextCache"]

log = structlog.get_logger(__name__)

DEFAULT_FONT: Final = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # fonts-dejavu-core
_MAX_TEXTURES: Final = 128

Colour = tuple[int, int, int]


class TextCache:
    """Textures of rendered strings by (text, size, colour); the fonts by size.

    ``font`` None (or a file that will not open) means no text at all: a kiosk that
    lost its font still shows its video, and says so once in the log.
    """

    def __init__(self, renderer: Any, font: Path | None) -> None:
        import sdl2
        import sdl2.sdlttf as ttf

        self._sdl, self._ttf = sdl2, ttf
        self._renderer = renderer
        self._font_path = font
        self._fonts: dict[int, Any] = {}
        self._textures: collections.OrderedDict[tuple[str, int, Colour], tuple[Any, int, int]] = (
            collections.OrderedDict())
        self._ttf_up = font is not None and ttf.TTF_Init() == 0
        self.enabled = self._ttf_up
        if font is not None and not self._ttf_up:
            log.warning("display.text.unavailable", error=sdl2.SDL_GetError().decode())

    def _font(self, size: int) -> Any:
        font = self._fonts.get(size)
        if font is None and self.enabled:
            assert self._font_path is not None
            font = self._ttf.TTF_OpenFont(str(self._font_path).encode(), size)
            if not font:
                log.warning("display.font_missing", font=str(self._font_path),
                            error=self._sdl.SDL_GetError().decode())
                self.enabled = False
                return None
            self._fonts[size] = font
        return font

    def texture(self, text: str, size: int, colour: Colour) -> tuple[Any, int, int] | None:
        """The texture of ``text`` and its size in pixels; None without a font or text."""
        if not text:
            return None
        key = (text, size, colour)
        hit = self._textures.get(key)
        if hit is not None:
            self._textures.move_to_end(key)
            return hit
        font = self._font(size)
        if font is None:
            return None
        sdl = self._sdl
        surface = self._ttf.TTF_RenderUTF8_Blended(font, text.encode(), sdl.SDL_Color(*colour, 255))
        if not surface:
            return None
        try:
            w, h = surface.contents.w, surface.contents.h
            tex = sdl.SDL_CreateTextureFromSurface(self._renderer, surface)
        finally:
            sdl.SDL_FreeSurface(surface)
        if not tex:
            return None
        self._textures[key] = (tex, w, h)
        while len(self._textures) > _MAX_TEXTURES:
            _, (old, _, _) = self._textures.popitem(last=False)
            sdl.SDL_DestroyTexture(old)
        return tex, w, h

    def draw(self, text: str, size: int, colour: Colour, x: int, y: int, *,
             centre: bool = False, max_width: int | None = None) -> tuple[int, int]:
        """Draw at (x, y) (its top-left, or its centre); clipped to ``max_width``.

        Returns the drawn size (0, 0 when nothing was drawn).
        """
        found = self.texture(text, size, colour)
        if found is None:
            return 0, 0
        tex, w, h = found
        shown_w = w if max_width is None else max(0, min(w, max_width))
        if centre:
            x, y = x - shown_w // 2, y - h // 2
        sdl = self._sdl
        src = sdl.SDL_Rect(0, 0, shown_w, h)
        dst = sdl.SDL_Rect(x, y, shown_w, h)
        sdl.SDL_RenderCopy(self._renderer, tex, ctypes.byref(src), ctypes.byref(dst))
        return shown_w, h

    def close(self) -> None:
        for tex, _, _ in self._textures.values():
            self._sdl.SDL_DestroyTexture(tex)
        self._textures.clear()
        for font in self._fonts.values():
            self._ttf.TTF_CloseFont(font)
        self._fonts.clear()
        if self._ttf_up:
            self._ttf.TTF_Quit()
            self._ttf_up = self.enabled = False
