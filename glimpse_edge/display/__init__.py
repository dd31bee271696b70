"""The kiosk display (issue 16): remote participants' video on the device's own screen.

Small modules, one concept each:

* :mod:`.layout`: where each tile goes on a screen (pure arithmetic);
* :mod:`.state`: what the screen should show, a thread-safe hand-over between the
  Trio side (names, states, the speaker), the decoders (frames) and the screen;
* :mod:`.decode`: one remote video track's decoder, on a worker thread;
* :mod:`.screen`: the SDL2 renderer, on a thread of its own;
* :mod:`.text`: labels rendered with SDL2_ttf.

Importing this package imports no SDL: PySDL2 loads libSDL2 with ctypes when a
screen is opened (import time and memory matter on a Pi, and an agent with the
display off never pays for it).
"""
