"""The picamera2 stand-in (tests/fake_picamera2) for tests, in process or for the agent.

Production code just does ``import picamera2``; tests make that import find
the stand-in by putting its directory first on ``sys.path`` (in process) or
on ``PYTHONPATH`` (the agent subprocess), next to a directory holding a
``picamera2-<version>.dist-info`` so that ``importlib.metadata.version
("picamera2")`` says which release the stand-in plays. The stand-in decides
its platform (VC4 or PiSP) and release at import, like the real one, so the
in-process fixture drops its modules again after each test.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

FAKE_PICAMERA2 = Path(__file__).resolve().parent.parent / "fake_picamera2"
DEFAULT_VERSION = "0.3.36"
_MODULES = ("picamera2", "libcamera")
# Another program holding a camera: Picamera2(index) until its stdin closes.
_HOLDER = """
import sys
from picamera2 import Picamera2
cam = Picamera2(int(sys.argv[1]))
print("held", flush=True)
sys.stdin.read()
cam.close()
"""


def _forget_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in _MODULES:
            del sys.modules[name]


def write_metadata(root: Path, version: str) -> Path:
    """``root`` with only a ``picamera2-<version>.dist-info`` in it (for importlib.metadata)."""
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("picamera2-*.dist-info"):
        shutil.rmtree(old)
    info = root / f"picamera2-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: picamera2\nVersion: {version}\n"
        "Summary: the glimpse-edge tests' stand-in for picamera2\n")
    importlib.invalidate_caches()
    return root


@dataclass
class FakeCamera:
    """Where the stand-in keeps its state, and how to steer it."""

    state: Path

    def env(self, cameras: str = "imx708", platform: str = "VC4",
            version: str = DEFAULT_VERSION) -> dict[str, str]:
        """Environment for an agent subprocess that should see this stand-in."""
        dist = write_metadata(self.state / f"dist-{version}", version)
        path = os.environ.get("PYTHONPATH", "")
        ours = f"{FAKE_PICAMERA2}{os.pathsep}{dist}"
        return {
            "PYTHONPATH": f"{ours}{os.pathsep}{path}" if path else ours,
            "FAKE_PICAMERA2_DIR": str(self.state),
            "FAKE_PICAMERA2_CAMERAS": cameras,
            "FAKE_PICAMERA2_PLATFORM": platform,
            "FAKE_PICAMERA2_VERSION": version,
        }

    def use_version(self, version: str) -> None:
        """In process: the stand-in plays picamera2 ``version`` from its next import on
        (importlib.metadata says so too). Modules already imported are dropped."""
        os.environ["FAKE_PICAMERA2_VERSION"] = version  # restored by the fixture
        write_metadata(self.state / "dist", version)
        _forget_modules()

    @contextlib.contextmanager
    def held_elsewhere(self, index: int = 0) -> Iterator[None]:
        """Another process holds camera ``index`` (a list position, as ``Picamera2(index)``)
        for the block: as picamera2 keeps per-process state (its camera manager), a
        ``Picamera2`` in the test's own process is not another program holding it."""
        env = {**os.environ, **self.env(
            cameras=os.environ.get("FAKE_PICAMERA2_CAMERAS", "imx708"),
            platform=os.environ.get("FAKE_PICAMERA2_PLATFORM", "VC4"),
            version=os.environ.get("FAKE_PICAMERA2_VERSION") or DEFAULT_VERSION)}
        holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(index)], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdin is not None and holder.stdout is not None
        try:
            if holder.stdout.readline().strip() != "held":
                raise RuntimeError(f"the holder of camera {index} did not open it")
            yield
        finally:
            holder.stdin.close()
            try:
                holder.wait(10)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()

    def command(self, command: str) -> None:
        """A fault for the stand-in to act on once (stall-encoder, hang-encoder, ...)."""
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


def _end_stand_in() -> None:
    """Teardown (stand-in only): release hung codecs and waits that never end on a real
    Pi, and stop the camera-manager thread a failed open left running."""
    hardware = sys.modules.get("picamera2._hardware")
    if hardware is not None:
        hardware.release_hangs()
        deadline = time.monotonic() + 5
        while hardware.waiting() and time.monotonic() < deadline:
            time.sleep(0.05)  # the released waits end (in the threads that made them)
    core = sys.modules.get("picamera2.picamera2")
    manager = getattr(getattr(core, "Picamera2", None), "_cm", None)
    if manager is not None and manager.running:
        with contextlib.suppress(Exception):
            manager.running = False
            if manager.thread is not None:
                manager.thread.join(2)


@pytest.fixture
def fake_camera(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCamera]:
    """The stand-in importable in this process (VC4, one Camera Module 3, picamera2
    0.3.36 by default).

    Set FAKE_PICAMERA2_CAMERAS / FAKE_PICAMERA2_PLATFORM with monkeypatch before the
    first import in a test to change them; FakeCamera.use_version for the release.
    """
    state = tmp_path / "fake-picamera2"
    state.mkdir()
    monkeypatch.setenv("FAKE_PICAMERA2_DIR", str(state))
    monkeypatch.setenv("FAKE_PICAMERA2_CAMERAS", "imx708")
    monkeypatch.setenv("FAKE_PICAMERA2_PLATFORM", "VC4")
    monkeypatch.setenv("FAKE_PICAMERA2_VERSION", DEFAULT_VERSION)
    monkeypatch.syspath_prepend(str(write_metadata(state / "dist", DEFAULT_VERSION)))
    monkeypatch.syspath_prepend(str(FAKE_PICAMERA2))
    _forget_modules()
    try:
        yield FakeCamera(state)
    finally:
        _end_stand_in()
        _forget_modules()
        importlib.invalidate_caches()
