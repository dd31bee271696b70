"""Shared pytest configuration.

``tests/`` is not a package: pytest puts this directory on ``sys.path``, so
test modules import helpers as ``support.glimpse_client`` and
``support.devserver``. The dev server fixtures are registered here for all tests.
"""

import logging
from collections.abc import Iterator

import pytest
import structlog

pytest_plugins = ["support.devserver", "support.alsa", "support.picam"]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Tests that configure logging (to a StringIO, a captured stdout) must not
    leave later tests writing to a stream that is gone."""
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()
