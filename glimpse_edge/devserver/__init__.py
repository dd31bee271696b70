"""A Glimpse-compatible development server, for the demo and the integration tests.

It speaks the wire protocol of ``/work/shared/glimpse-protocol.md`` (HTTP API
and WebSocket signaling on one port) with state in SQLite, so that the agent
can be exercised end to end, restarts included, without the real Node.js
server.

Entry points: :func:`serve` (embed in a Trio nursery),
:func:`serve_until_signal` (a process's main task, stops on SIGTERM/SIGINT)
and ``python -m glimpse_edge.devserver`` (a separate process).
"""

from .app import create_app
from .hub import Hub
from .server import LISTENING_PREFIX, MAX_FRAME_BYTES, serve, serve_until_signal
from .store import Store

__all__ = [
    "LISTENING_PREFIX",
    "MAX_FRAME_BYTES",
    "Hub",
    "Store",
    "create_app",
    "serve",
    "serve_until_signal",
]
