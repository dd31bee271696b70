"""What the host says: its clock (and network time) and the systemd service.

systemd and timedatectl are asked with their own commands; where systemd
does not run (a container) those checks are skipped, never failed.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ..config import Config
    from .run import Doctor

__all__ = ["agent_running", "check_clock", "check_service"]

SERVICE: Final = "glimpse-edge.service"
# A Pi has no real-time clock: before network time it may think it is 1970
# (or whenever fake-hwclock last saved). Nothing released before this is right.
EARLIEST_PLAUSIBLE: Final = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC).timestamp()
CLOCK_WARN_S: Final = 30.0
CLOCK_FAIL_S: Final = 300.0


def check_clock(doctor: Doctor) -> None:
    now = time.time()
    shown = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    synced = _ntp_synchronized()
    if now < EARLIEST_PLAUSIBLE:
        doctor.add("clock", "fail", f"the system clock says {shown} UTC, which cannot be right",
                   "a Pi has no battery clock: it needs network time at boot (sudo "
                   "timedatectl set-ntp true; NTP (UDP 123) must be allowed out). Tokens "
                   "and TLS certificates are checked against this clock")
        return
    if doctor.server_date is not None:
        skew = now - doctor.server_date
        where = f"{abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the server"
        if abs(skew) > CLOCK_FAIL_S:
            doctor.add("clock", "fail", f"{shown} UTC is {where}",
                       "enable network time: sudo timedatectl set-ntp true (token expiry is "
                       "judged by this clock)")
        elif abs(skew) > CLOCK_WARN_S:
            doctor.add("clock", "warn", f"{shown} UTC is {where}",
                       "enable network time: sudo timedatectl set-ntp true")
        else:
            doctor.add("clock", "pass", f"{shown} UTC, within {CLOCK_WARN_S:g} s of the "
                       "server" + (", synchronised" if synced else ""))
        return
    if synced is False:
        doctor.add("clock", "warn", f"{shown} UTC, not synchronised with network time",
                   "sudo timedatectl set-ntp true; check that NTP (UDP 123) may go out")
    else:
        doctor.add("clock", "pass", f"{shown} UTC" + (", synchronised" if synced else
                                                      " (the server's time is unknown)"))


def check_service(doctor: Doctor) -> None:
    state = _systemd_state()
    if state is None:
        doctor.add("service", "skip", "systemd is not running here (a container?)")
        return
    if state.get("LoadState") == "not-found":
        doctor.add("service", "warn", f"{SERVICE} is not installed",
                   "install it with scripts/provision.sh (or copy systemd/glimpse-edge.service "
                   "to /etc/systemd/system and systemctl enable --now glimpse-edge)")
        return
    active, sub = state.get("ActiveState", "?"), state.get("SubState", "?")
    restarts = state.get("NRestarts", "0")
    enabled = state.get("UnitFileState", "?")
    summary = f"{SERVICE} is {active} ({sub}), {enabled}, restarted {restarts} times"
    if active == "active":
        doctor.add("service", "pass", summary)
    elif active == "failed":
        doctor.add("service", "fail", summary + f", result {state.get('Result', '?')}",
                   "journalctl -u glimpse-edge -b shows why; an exit status of 78 means "
                   "the configuration (see the config check)")
    else:
        doctor.add("service", "warn", summary, "sudo systemctl enable --now glimpse-edge")


def agent_running(config: Config | None) -> bool:
    """The service is active, or the agent's status endpoint answers."""
    state = _systemd_state()
    running = state is not None and state.get("ActiveState") == "active"
    if not running and config is not None and config.observe.address:
        try:
            from ..observe.statusview import fetch_status, url_for

            host, port = config.observe.address
            if port:
                fetch_status(url_for("127.0.0.1" if host in ("0.0.0.0", "") else host,
                                     port), timeout=1.0)
                running = True
        except Exception:
            running = False
    return running


def _run(argv: list[str], timeout: float = 5.0) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _systemd_state() -> dict[str, str] | None:
    if not _systemd_running():
        return None
    out = _run(["systemctl", "show", SERVICE, "--property=LoadState,ActiveState,SubState,"
                "UnitFileState,NRestarts,Result"])
    if out is None:
        return None
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _ntp_synchronized() -> bool | None:
    if not _systemd_running() or shutil.which("timedatectl") is None:
        return None
    out = _run(["timedatectl", "show", "--property=NTPSynchronized", "--value"])
    return None if out is None else out.strip() == "yes"
