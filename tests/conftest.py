"""Shared pytest configuration.

``tests/`` is not a package: pytest puts this directory on ``sys.path``, so
test modules import helpers as ``support.glimpse_client`` and
``support.devserver``. The dev server fixtures are registered here for all tests.

Tests live in three tiers, and each test is marked with its directory's name
(``pytest -m unit`` runs the fast tier):

* ``tests/unit``: pure and fast; no subprocess, no network server, no aiortc
  peer connection.
* ``tests/integration``: the real dev server over real WebSockets, agent
  subprocesses, aiortc peers, headless Chromium, ALSA's file plugin, the
  picamera2 stand-in.
* ``tests/system``: root, namespaces, containers or emulation (skipped, saying
  why, where those are missing).
"""

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog
import trio

from glimpse_edge.rtc.aio import open_aio_loop

pytest_plugins = ["support.devserver", "support.alsa", "support.picam"]

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier, from the directory it is in."""
    for item in items:
        try:
            tier = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Tests that configure logging (to a StringIO, a captured stdout) must not
    leave later tests writing to a stream that is gone."""
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery on a trio-asyncio loop (aiortc peers need it), cancelled at the end."""
    async with open_aio_loop(), trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()
