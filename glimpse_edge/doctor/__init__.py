"""``glimpse-edge doctor``: one command that says why this device does not work.

The person holding a meeting-room device that shows nothing in the meeting
needs a checklist, not a journal: each check says PASS, WARN, FAIL or SKIP,
what it found, and for anything wrong the fix. The checks follow the path a
working device takes, and a check whose prerequisite failed is skipped with
the reason, so the first FAIL is the thing to fix:

1. ``config``     the files load and validate (every problem, with file and key);
2. ``secrets``    token/password/TURN credential files are readable and private;
3. ``clock``      plausible, synchronised, and close to the server's (JWT expiry);
4. ``server``     HTTP reachable, TLS verified, WebSocket handshake, token
                  accepted (authenticate only: the doctor never joins the room);
5. ``token``      expiry of the token in use;
6. ``camera``     the configured video source opens and delivers frames;
7. ``microphone`` the configured ALSA device opens and delivers non-silent audio;
8. ``display``    the decoders the kiosk display would use (hardware H.264 on
                  a Pi 4, software elsewhere); skipped, still named, when off;
9. ``ice``        every STUN/TURN server answers (TURN credentials tried);
10. ``service``   the systemd unit's state, when systemd runs here.

A camera or microphone held by the running agent is expected, not a fault:
when the service is active (or its status endpoint answers) a busy device is
a WARN that says so. Exit status: 0 all passed, 1 warnings, 2 failures.

The package, one module per concept: :mod:`.report` (:class:`Check`, the
exit status, the checklist and its JSON), :mod:`.run` (:class:`Doctor`, the
order of the checks), :mod:`.configuration` (config, secrets),
:mod:`.network` (server, token), :mod:`.media` (camera, microphone),
:mod:`.display` (the display's decoders),
:mod:`.ice` (STUN/TURN), :mod:`.host` (clock, service). Each check imports
what it probes (httpx, the media sources, numpy) only when it runs, so
importing this package stays light.
"""

from __future__ import annotations

from .report import Check, dumps, exit_code, render
from .run import Doctor, run_doctor

__all__ = ["Check", "Doctor", "dumps", "exit_code", "render", "run_doctor"]
