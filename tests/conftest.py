"""Shared pytest configuration.

``tests/`` is not a package: pytest puts this directory on ``sys.path``, so
test modules import helpers as ``support.glimpse_client`` and
``support.devserver``. The dev server fixtures are registered here for all tests.
"""

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
import trio

from glimpse_edge.rtc.aio import open_aio_loop

pytest_plugins = ["support.devserver", "support.alsa", "support.picam"]


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
