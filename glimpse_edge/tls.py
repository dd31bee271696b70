"""TLS for outgoing connections: verification always on.

There is deliberately no switch to turn verification off. A server with a
private CA is trusted by naming its CA bundle (``server.ca_file``), which
keeps the device safe from whoever sits on the venue's network.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """The system's trust store, plus ``ca_file`` when given."""
    ctx = ssl.create_default_context()
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
    return ctx
