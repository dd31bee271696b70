"""TEST-ONLY fault hooks: make the real process misbehave on purpose. Off by default.

Some promises can only be checked by breaking the real thing under the real
supervisor: "a hung event loop is killed by systemd's watchdog and restarted"
needs an agent whose Trio loop really stops. Nothing here runs unless its
environment variable is set, which no shipped unit, script or configuration
does; the tests set it in a unit drop-in inside a throwaway container
(tests/test_systemd_boot.py).

``GLIMPSE_EDGE_TEST_BLOCK_LOOP_FILE=PATH``
    Once PATH exists, a task blocks the Trio loop for good (``time.sleep`` in
    the loop's thread, as a hung C call or a runaway computation would): no
    task runs any more, so the watchdog keep-alives stop. PATH is polled twice
    a second; the agent logs ``test.fault_hook_enabled`` at start and
    ``test.loop_blocked`` just before it blocks.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NoReturn

import structlog
import trio

log = structlog.get_logger(__name__)

BLOCK_LOOP_ENV = "GLIMPSE_EDGE_TEST_BLOCK_LOOP_FILE"
POLL_INTERVAL = 0.5


def block_loop_file() -> Path | None:
    """The trigger file of the block-the-loop hook, or None (the default: no hook)."""
    value = os.environ.get(BLOCK_LOOP_ENV, "")
    return Path(value) if value else None


async def block_loop_when_file_appears(path: Path) -> NoReturn:
    """Wait for ``path`` to exist, then block the whole Trio loop forever (test-only)."""
    log.warning("test.fault_hook_enabled", hook="block_loop", env=BLOCK_LOOP_ENV, path=str(path))
    trigger = trio.Path(path)
    while True:  # polled, not watched: a stat twice a second costs nothing
        if await trigger.exists():
            break
        await trio.sleep(POLL_INTERVAL)
    log.warning("test.loop_blocked", path=str(path))
    while True:
        time.sleep(3600)  # noqa: ASYNC251 - blocking the loop is what this hook is for
