"""The picamera2 stand-in (tests/fake_picamera2) for tests, in process or for the agent.

Production code just does ``import picamera2``; tests make that import find
the stand-in by putting its directory first on ``sys.path`` (in process) or
on ``PYTHONPATH`` (the agent subprocess). The stand-in decides its platform
(VC4 or PiSP) at import, like the real one, so the in-process fixture drops
its modules again after each test.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

FAKE_PICAMERA2 = Path(__file__).resolve().parent.parent / "fake_picamera2"
_MODULES = ("picamera2", "libcamera")


def _forget_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in _MODULES:
            del sys.modules[name]


@dataclass
class FakeCamera:
    """Where the stand-in keeps its state, and how to steer it."""

    state: Path

    def env(self, cameras: str = "imx708", platform: str = "VC4") -> dict[str, str]:
        """Environment for an agent subprocess that should see this stand-in."""
        path = os.environ.get("PYTHONPATH", "")
        return {
            "PYTHONPATH": f"{FAKE_PICAMERA2}{os.pathsep}{path}" if path else str(FAKE_PICAMERA2),
            "FAKE_PICAMERA2_DIR": str(self.state),
            "FAKE_PICAMERA2_CAMERAS": cameras,
            "FAKE_PICAMERA2_PLATFORM": platform,
        }

    def command(self, command: str) -> None:
        """A fault for the stand-in to act on once (stall-encoder, stall-camera)."""
        with open(self.state / "control", "a") as f:
            f.write(command + "\n")

    def events(self) -> list[str]:
        """What the stand-in's "hardware" was asked to do, one line each."""
        try:
            text = (self.state / "events.log").read_text()
        except FileNotFoundError:
            return []
        return [line.split(" ", 2)[2] for line in text.splitlines()]

    def count(self, prefix: str) -> int:
        return sum(1 for e in self.events() if e.startswith(prefix))


@pytest.fixture
def fake_camera(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCamera]:
    """The stand-in importable in this process (VC4, one Camera Module 3 by default).

    Set FAKE_PICAMERA2_CAMERAS / FAKE_PICAMERA2_PLATFORM with monkeypatch before the
    first import in a test to change them.
    """
    state = tmp_path / "fake-picamera2"
    state.mkdir()
    monkeypatch.setenv("FAKE_PICAMERA2_DIR", str(state))
    monkeypatch.setenv("FAKE_PICAMERA2_CAMERAS", "imx708")
    monkeypatch.setenv("FAKE_PICAMERA2_PLATFORM", "VC4")
    monkeypatch.syspath_prepend(str(FAKE_PICAMERA2))
    _forget_modules()
    yield FakeCamera(state)
    _forget_modules()
