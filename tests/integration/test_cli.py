"""The command line, as a user runs it: real subprocesses, exit codes, messages."""

from __future__ import annotations

import faulthandler
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from support.agent import write_config

from glimpse_edge import __version__
from glimpse_edge.cli import main
from glimpse_edge.config import ConfigError


def glimpse_edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "glimpse_edge", *args],
                          capture_output=True, text=True, timeout=60)


def test_version() -> None:
    result = glimpse_edge("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_check_config_accepts_a_valid_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, ws_url="wss://glimpse.example/ws", room_id="r1",
                          token="a.b.c")
    result = glimpse_edge("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"{config}: OK" in result.stdout and "room     r1" in result.stdout


def test_check_config_names_file_key_and_reason(tmp_path: Path) -> None:
    config = write_config(tmp_path, ws_url="wss://glimpse.example/ws", room_id="r1",
                          token="a.b.c")
    (tmp_path / "config.d").mkdir()
    dropin = tmp_path / "config.d" / "20-video.toml"
    dropin.write_text("[video]\nframerate = 500\n")
    result = glimpse_edge("check-config", str(config))
    assert result.returncode == 1
    assert str(dropin) in result.stderr and "video.framerate" in result.stderr, result.stderr


def test_check_config_refuses_world_readable_secret(tmp_path: Path) -> None:
    config = write_config(tmp_path, ws_url="ws://127.0.0.1:1/ws", room_id="r1", token="a.b.c")
    os.chmod(tmp_path / "token", 0o644)
    result = glimpse_edge("check-config", str(config))
    assert result.returncode == 1
    assert "chmod 600" in result.stderr and "token" in result.stderr, result.stderr


def test_run_with_unusable_config_exits_78_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[server]\nws_url = "ftp://x"\n')
    result = glimpse_edge("run", "--config", str(config))
    assert result.returncode == 78, (result.returncode, result.stderr)
    assert "configuration error" in result.stderr and "server.ws_url" in result.stderr


def test_run_with_missing_config_file(tmp_path: Path) -> None:
    result = glimpse_edge("run", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 78 and "nope.toml" in result.stderr, result.stderr


def test_run_exits_78_for_a_config_error_raised_inside_a_task_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A ConfigError is a Fatal one; found in a task group it still exits 78, not 70."""
    import glimpse_edge.agent

    async def fails_in_a_task(path: Path) -> None:
        async def check() -> None:
            raise ConfigError(path, "camera.af_mode", "this camera has no autofocus")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(check)

    monkeypatch.setattr(glimpse_edge.agent, "run_agent", fails_in_a_task)
    monkeypatch.setattr(faulthandler, "enable", lambda: None)  # pytest's stderr has no fd
    assert main(["run", "--config", str(tmp_path / "config.toml")]) == 78
    err = capsys.readouterr().err
    assert "configuration error" in err and "camera.af_mode" in err, err
