"""The doctor itself: the checks in their order, and what one of them learns
that a later one needs (the server's clock, the token, whether the agent
runs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..config import Config
from .configuration import check_config, check_secret_files
from .display import check_display
from .host import agent_running, check_clock, check_service
from .ice import check_ice
from .media import check_camera, check_microphone
from .network import check_server, check_token
from .publish import check_publish
from .report import Check, Status, exit_code, render

__all__ = ["Doctor", "run_doctor"]


class Doctor:
    """Runs the checks in order and collects the results."""

    def __init__(self, config_path: Path, *, timeout: float = 5.0) -> None:
        self.config_path = config_path
        self.timeout = timeout
        self.checks: list[Check] = []
        self.config: Config | None = None
        self.server_date: float | None = None
        self.token: str | None = None
        self._agent_running: bool | None = None

    def add(self, name: str, status: Status, summary: str, fix: str = "",
            details: list[str] | None = None) -> Check:
        check = Check(name, status, summary, fix, details or [])
        self.checks.append(check)
        return check

    async def run(self) -> list[Check]:
        config = check_config(self)
        if config is None:
            for name in ("secrets", "clock", "server", "token", "camera", "microphone", "ice",
                         "publish"):
                self.add(name, "skip", "the configuration must be valid first")
        else:
            secrets_ok = check_secret_files(self, config)
            await check_server(self, config, secrets_ok)
            check_clock(self)
            check_token(self, config)
            await check_camera(self, config)
            await check_microphone(self, config)
            check_display(self, config)
            await check_ice(self, config, secrets_ok)
            await check_publish(self, config)
        check_service(self)
        return self.checks

    def agent_is_running(self) -> bool:
        """The service is active, or the agent's status endpoint answers (asked once)."""
        if self._agent_running is None:
            self._agent_running = agent_running(self.config)
        return self._agent_running


async def run_doctor(config_path: Path, timeout: float,
                     report: Callable[[list[Check], Path], str] = render) -> tuple[int, str]:
    """Run every check; (exit status, report text)."""
    doctor = Doctor(config_path, timeout=timeout)
    checks = await doctor.run()
    return exit_code(checks), report(checks, config_path)
