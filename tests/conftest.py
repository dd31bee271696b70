"""Shared pytest configuration.

``tests/`` is not a package: pytest puts this directory on ``sys.path``, so
test modules import helpers as ``support.glimpse_client`` and
``support.devserver``. The dev server fixtures are registered here for all tests.
"""

pytest_plugins = ["support.devserver", "support.alsa", "support.picam"]
