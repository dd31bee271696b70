"""TLS for outgoing connections: verification always on.

There is deliberately no switch to turn verification off. A server with a
private CA is trusted by naming its CA bundle (``server.ca_file``), which
keeps the device safe from whoever sits on the venue's network.

Building a context reads and parses the system's whole trust store (tens of
milliseconds on a Pi), so the signaling session, which connects again after
every outage, shares one: :func:`client_context` makes it once per CA file
*as it is on disk* (path, size, modification time, inode) and hands out the
same object until the file changes, so a CA bundle replaced for a reload is
read again on the next connect. The system store itself is read once per
process.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

# ca_file (None: the system store only) -> (its stat stamp, the context made from it).
# One entry per path: a changed file replaces its old context.
_shared: dict[str | None, tuple[tuple[int, int, int] | None, ssl.SSLContext]] = {}


def new_client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """A fresh context: the system's trust store, plus ``ca_file`` when given.

    For a caller that hands it to a library that changes it (httpx sets its
    ALPN protocols on the context it is given).
    """
    ctx = ssl.create_default_context()
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """The shared context for ``ca_file`` (see the module docstring); do not modify it.

    A CA file that cannot be read is not remembered: the error (OSError,
    ssl.SSLError) comes from building the context, on every call.
    """
    key = None if ca_file is None else str(ca_file)
    stamp = None if ca_file is None else _stamp(ca_file)
    known = _shared.get(key)
    if known is not None and known[0] == stamp:
        return known[1]
    ctx = new_client_context(ca_file)
    if ca_file is None or (stamp is not None and _stamp(ca_file) == stamp):
        _shared[key] = (stamp, ctx)  # not changed while we read it
    return ctx


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)
