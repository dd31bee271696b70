"""The doctor's results: one :class:`Check` each, and the report of them all,
as a checklist for a person (:func:`render`) or JSON (:func:`dumps`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["Check", "Status", "dumps", "exit_code", "render"]

Status = Literal["pass", "warn", "fail", "skip"]


@dataclass
class Check:
    name: str
    status: Status
    summary: str
    fix: str = ""
    details: list[str] = field(default_factory=list)


def exit_code(checks: list[Check]) -> int:
    """0 when everything passed (or was skipped), 1 with warnings, 2 with failures."""
    statuses = {c.status for c in checks}
    return 2 if "fail" in statuses else 1 if "warn" in statuses else 0


def render(checks: list[Check], config_path: Path) -> str:
    """The checklist, for a person."""
    width = max((len(c.name) for c in checks), default=0)
    out = [f"glimpse-edge doctor: {config_path}", ""]
    for c in checks:
        out.append(f"  {c.status.upper():4}  {c.name:<{width}}  {c.summary}")
        pad = " " * (width + 10)
        out.extend(f"{pad}{line}" for line in c.details)
        if c.fix and c.status in ("warn", "fail"):
            out.append(f"{pad}fix: {c.fix}")
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    verdict = ("all checks passed" if not fails and not warns else
               ", ".join(part for part in (
                   f"{fails} failure{'s' * (fails != 1)}" if fails else "",
                   f"{warns} warning{'s' * (warns != 1)}" if warns else "") if part))
    out += ["", f"{verdict} (exit status {exit_code(checks)})"]
    return "\n".join(out)


def dumps(checks: list[Check], config_path: Path) -> str:
    return json.dumps({"config": str(config_path), "exit_code": exit_code(checks),
                       "checks": [asdict(c) for c in checks]}, indent=2)
