"""``python -m glimpse_edge.devserver``: run the dev server as its own process.

Tests use this to kill the server for real (SIGKILL) and start it again on
the same port with the same database; the demo uses it to run the server
beside the agent. SIGTERM and SIGINT stop it cleanly (exit status 0).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from ..cli import DEVSERVER_DESCRIPTION, add_devserver_arguments
from ..logs import configure_logging
from .server import serve_until_signal


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and :func:`run`."""
    p = argparse.ArgumentParser(prog="python -m glimpse_edge.devserver",
                                description=DEVSERVER_DESCRIPTION)
    add_devserver_arguments(p)
    return run(p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Configure logging and serve until SIGTERM/SIGINT; returns the exit status."""
    if not 0 <= args.port <= 65535:
        print(f"invalid --port {args.port}", file=sys.stderr)
        return 2
    configure_logging(args.log_level, args.log_format)
    try:
        trio.run(serve_until_signal, args.host, args.port, args.db)
    except OSError as exc:  # e.g. address in use: say so without a traceback
        print(f"glimpse-devserver: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
