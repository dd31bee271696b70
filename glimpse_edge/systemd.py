"""sd_notify(3) over $NOTIFY_SOCKET: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

The protocol is one datagram of ``KEY=VALUE`` lines to a unix socket, which
is why this is a few lines here rather than a dependency (the PyPI wrappers
are unmaintained or pull in libsystemd). Without $NOTIFY_SOCKET (a terminal,
the tests' subprocesses that do not set it) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import structlog
import trio

log = structlog.get_logger(__name__)


class Notifier:
    """Sends state notifications to systemd; never raises."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if addr:
            # A leading "@" names a socket in the abstract namespace.
            self._address = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        self._last_status: str | None = None
        self.dropped = 0  # datagrams dropped on a full socket
        self._dropping = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram without ever blocking; False if it could not be sent.

        The socket is non-blocking: this runs on the Trio thread, and a
        manager that does not drain its socket (a full queue: 10 datagrams on
        a stock kernel) must not freeze the agent, SIGTERM handling included.
        A datagram that finds the queue full is dropped and counted
        (``dropped``); the next keep-alive or status says the same again.
        """
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except BlockingIOError:
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warning("systemd.notify_dropped", dropped=self.dropped,
                            reason="the service manager's socket is full")
            return False
        except OSError as exc:
            log.warning("systemd.notify_failed", error=str(exc))
            return False
        self._dropping = False
        return True

    def ready(self, status: str | None = None) -> None:
        if status:
            self._last_status = status
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half the interval systemd expects keep-alives at, or None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


async def feed_watchdog(
    notifier: Notifier, interval: float, healthy: Callable[[], bool] = lambda: True
) -> None:
    """Send WATCHDOG=1 every ``interval`` seconds while the loop and ``healthy()`` are fine.

    Running as a Trio task is itself the responsiveness check: a blocked loop
    stops the keep-alives and systemd restarts us. ``healthy`` lets other
    parts (media) withhold them when they are wedged in a way the loop is not.
    """
    while True:
        if healthy():
            notifier.watchdog()
        else:
            log.warning("systemd.watchdog_withheld")
        await trio.sleep(interval)
