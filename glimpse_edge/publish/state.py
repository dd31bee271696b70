"""What the WHIP publisher shows of itself (observe reads it): light, no media imports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["PUBLISH_PHASES", "PublishPhase", "PublishState"]

PublishPhase = Literal["starting", "connecting", "publishing", "retrying", "auth_failed",
                       "stopped"]


@dataclass(frozen=True)
class PublishState:
    """What observe shows of the WHIP session (a copy, taken per request)."""

    url: str  # without query or user info
    state: PublishPhase
    since: float  # wall clock of the last state change
    codec: str | None
    tier: str | None  # "WIDTHxHEIGHT"
    bitrate_bps: int | None  # video + audio payload sent, over the last few seconds
    estimate_bps: int | None  # what the SFU's reports say the path carries
    rtt_ms: float | None
    reconnects: int  # sessions after the first
    sessions: int  # POSTs answered with 201
    last_error: str | None
    resource: str | None


PUBLISH_PHASES: Final[tuple[PublishPhase, ...]] = (
    "starting", "connecting", "publishing", "retrying", "auth_failed", "stopped")
