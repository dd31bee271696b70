"""The ``glimpse-edge`` command: run | check-config | status | devices | doctor | devserver | demo.

Imports are deferred to the subcommand that needs them, so that ``run`` on a
Pi does not pay for the dev server's web stack and ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__

DEFAULT_CONFIG = "/etc/glimpse-edge/config.toml"

# sysexits.h EX_CONFIG: systemd's unit does not restart on it in a loop, a
# person has to fix the file first.
EXIT_CONFIG = 78


DEVSERVER_DESCRIPTION = (
    "Glimpse-compatible development server (HTTP API + WebSocket on one port, state in "
    "SQLite) for development, demos and tests. Binds loopback unless told otherwise."
)


def add_devserver_arguments(p: argparse.ArgumentParser) -> None:
    """The dev server's options (also used by ``python -m glimpse_edge.devserver``)."""
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=8080, help="port; 0 picks a free one")
    p.add_argument("--db", default=":memory:", help="SQLite file (default: in memory)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="auto", choices=["auto", "json", "console"])


def _cmd_run(args: argparse.Namespace) -> int:
    import faulthandler

    import trio

    from .agent import run_agent
    from .config import ConfigError
    from .fatal import EXIT_FATAL, find_fatal

    # A hung agent is killed by systemd's watchdog with SIGABRT (WatchdogSignal=):
    # faulthandler's C-level handler prints every thread's stack to stderr (the
    # journal) first, even while the event loop is blocked. Same for a crash in C.
    faulthandler.enable()
    try:
        trio.run(run_agent, Path(args.config))
    except ConfigError as exc:  # before Fatal: a ConfigError is one, with its own code
        print(f"glimpse-edge: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BaseException as exc:
        fatal = find_fatal(exc)
        if fatal is None:
            raise
        if isinstance(fatal, ConfigError):  # one that left a task group
            print(f"glimpse-edge: configuration error: {fatal}", file=sys.stderr)
            return EXIT_CONFIG
        # Hardware that hangs (a camera that cannot be closed) would hang the
        # interpreter's exit handlers too (picamera2 closes its cameras at
        # exit): leave at once, and systemd starts a fresh process.
        print(f"glimpse-edge: fatal: {fatal}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_FATAL)
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    # Not from the agent: checking a file must not import the WebRTC stack.
    from .config import ConfigError, load_checked

    try:
        config = load_checked(Path(args.path))
    except ConfigError as exc:
        print(f"{exc}", file=sys.stderr)
        return 1
    print(f"{args.path}: OK")
    for source in config.sources:
        print(f"  loaded   {source}")
    if config.joins_room:
        server, auth_config, room = config.glimpse
        auth = (f"token file {auth_config.token_file}" if auth_config.token_file
                else f"login as {auth_config.username!r}")
        print(f"  server   {server.ws_url}")
        print(f"  auth     {auth}")
        print(f"  room     {room.id}")
    else:
        print("  room     none (only publishes)")
    if config.publish is not None:
        print(f"  publish  {config.publish.whip_url} (tier {config.publish.tier}"
              f"{', audio' if config.publish.audio else ''})")
    print(f"  video    {config.video.source} {config.video.width}x{config.video.height}"
          f"@{config.video.framerate} {config.video.codec}")
    print(f"  audio    {config.audio.source}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .observe.statusview import (
        DEFAULT_URL,
        StatusError,
        dumps,
        fetch_status,
        render,
        url_from_config,
    )

    try:
        if args.url:
            url = args.url
        elif args.config:
            url = url_from_config(Path(args.config))
        else:
            # The standard install's file; without it (or unreadable), the default address.
            try:
                url = url_from_config(Path(DEFAULT_CONFIG))
            except ConfigError:
                url = DEFAULT_URL
        status = fetch_status(url)
    except ConfigError as exc:
        print(f"glimpse-edge status: configuration error: {exc}", file=sys.stderr)
        return 1
    except StatusError as exc:
        print(f"glimpse-edge status: {exc}", file=sys.stderr)
        return exc.code
    print(dumps(status) if args.json else render(status))
    return 0


def _cmd_devices(args: argparse.Namespace) -> int:
    import json

    from .devices import inventory, render

    found = inventory()
    print(json.dumps(found.as_dict(), indent=2) if args.json else render(found))
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    import os

    import trio

    from .doctor import dumps, render, run_doctor
    from .logs import configure_logging

    # The checklist is the output; the agent's own log lines only with --verbose.
    quiet = None if args.verbose else open(os.devnull, "w")  # noqa: SIM115 - for the run
    configure_logging("debug" if args.verbose else "error", "console",
                      stream=sys.stderr if quiet is None else quiet)
    code, text = trio.run(run_doctor, Path(args.config), args.timeout,
                          dumps if args.json else render)
    print(text)
    return code


def _cmd_devserver(args: argparse.Namespace) -> int:
    from .devserver.__main__ import run

    return run(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    import trio

    from .demo import run_demo

    trio.run(run_demo, args.host, args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glimpse-edge",
        description="A device agent that joins a Glimpse video room and streams its camera "
        "and microphone to every participant.",
    )
    parser.add_argument("--version", action="version", version=f"glimpse-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the agent (what the systemd service runs)",
                       description="Join the configured room and stay joined until stopped. "
                       "SIGHUP reloads the configuration; SIGTERM leaves the room and exits.")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG,
                   help=f"main configuration file; drop-ins in config.d/ beside it "
                   f"(default {DEFAULT_CONFIG})")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check-config", help="validate a configuration file and its drop-ins",
                       description="Exit 0 and print a summary when the configuration is "
                       "valid; exit 1 naming the file, the key and the reason when it is not.")
    p.add_argument("path", nargs="?", default=DEFAULT_CONFIG, help="main configuration file")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("status", help="show what the running agent is doing",
                       description="Read the running agent's /status (the [observe] endpoint) "
                       "and print it as a table. Exit 0 when it answered, 3 when nothing is "
                       "listening (the agent is not running), 1 for other problems.")
    p.add_argument("--json", action="store_true", help="print the raw JSON, for scripts")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", "-c", default=None,
                       help=f"find the endpoint in this configuration's [observe] listen "
                       f"(default {DEFAULT_CONFIG}, else 127.0.0.1:9750)")
    where.add_argument("--url", default=None, help="the endpoint, e.g. http://127.0.0.1:9750")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("devices", help="list cameras, video devices and microphones",
                       description="List the cameras libcamera sees (through picamera2), the "
                       "V4L2 video devices, the ALSA sound cards and capture devices, and the "
                       "decoders the kiosk display would use (H.264, VP8), with the "
                       "configuration values that select them. Opens nothing, so it also "
                       "works while the agent runs. Exit 0.")
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p.set_defaults(func=_cmd_devices)

    p = sub.add_parser("doctor", help="check everything this device needs, and say what to fix",
                       description="Check the configuration, secret files, clock, server "
                       "(HTTP, TLS, WebSocket, token), camera, microphone, the display's "
                       "decoders, the WHIP endpoint, STUN/TURN servers and the systemd "
                       "service, and print a checklist with a fix for each "
                       "problem. Exit 0 when all passed, 1 with warnings, 2 with failures.")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG,
                   help=f"main configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for each network answer (default 5)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also show the agent's log lines (on stderr)")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("devserver", help="run the Glimpse-compatible development server",
                       description=DEVSERVER_DESCRIPTION)
    add_devserver_arguments(p)
    p.set_defaults(func=_cmd_devserver)

    p = sub.add_parser("demo", help="dev server + agent joined to a demo room, in one command",
                       description="Start the development server, create a demo room and "
                       "users, run the agent in it, and print where to look.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
