"""Fault tests run only as root with working network namespaces (CI runs as root).

They are skipped, saying why, anywhere else; everything they create is named
``gef<pid>-...`` and removed when each test ends.
"""

from __future__ import annotations

import pytest
from support.netns import unavailable_reason

_REASON = unavailable_reason()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _REASON is not None and "tests/system/faults/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.skip(reason=_REASON))
