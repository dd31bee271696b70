"""Restart policies, back-off with jitter, and a health registry.

A device agent runs for months with nobody watching. Every long-lived task
therefore runs under :func:`supervise`, which logs a crash with its traceback,
waits a jittered, growing delay and starts the task again. A task that keeps
crashing faster than its policy allows is given up on: the exception then
propagates to the root nursery, the agent exits non-zero and systemd restarts
the whole process fresh, which is the right cure for state we cannot repair.
A :class:`~glimpse_edge.fatal.Fatal` error is never retried: a configuration
error needs a person, hung hardware a fresh process.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import structlog
import trio

# Fatal lives in a leaf module so that what raises it (the configuration, a
# camera) need not import supervise; these names stay importable from here.
from .fatal import EXIT_FATAL as EXIT_FATAL
from .fatal import Fatal as Fatal
from .fatal import find_fatal as find_fatal

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Capped exponential back-off with full jitter and a floor.

    The n-th delay is drawn uniformly from ``[0, min(maximum, initial * 2**n)]``
    (AWS's "full jitter", which spreads a fleet's reconnects after a server
    restart) and then raised to at least ``floor`` so that an unlucky draw of
    zeros can never turn into a tight loop.
    """

    initial: float = 0.5
    maximum: float = 30.0
    floor: float = 0.1

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before retry number ``attempt`` (0-based)."""
        ceiling = min(self.maximum, self.initial * (2 ** min(attempt, 32)))
        draw = (rng or random).uniform(0.0, ceiling)
        return max(self.floor, draw)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        attempt = 0
        while True:
            yield self.delay(attempt, rng)
            attempt += 1


TaskState = Literal["starting", "running", "restarting", "stopped", "failed"]


@dataclass
class TaskHealth:
    """What the health registry knows of one supervised task."""

    name: str
    state: TaskState = "starting"
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    since: float = field(default_factory=time.time)


class HealthRegistry:
    """Named task states, for status reporting and the watchdog."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskHealth] = {}

    def get(self, name: str) -> TaskHealth:
        if name not in self._tasks:
            self._tasks[name] = TaskHealth(name)
        return self._tasks[name]

    def set_state(self, name: str, state: TaskState) -> None:
        health = self.get(name)
        health.state = state
        health.since = time.time()

    def snapshot(self) -> dict[str, TaskHealth]:
        return dict(self._tasks)

    def failed(self) -> list[str]:
        return [n for n, h in self._tasks.items() if h.state == "failed"]


@dataclass(frozen=True)
class RestartPolicy:
    """How a supervised task is restarted.

    ``max_restarts`` crashes within ``window`` seconds exhaust the policy and
    the crash is escalated to the caller. ``restart_on_return`` restarts a task
    that returned normally (long-lived loops should never return).
    """

    name: str = "permanent"
    backoff: Backoff = Backoff()
    max_restarts: int = 10
    window: float = 60.0
    restart_on_return: bool = True


PERMANENT = RestartPolicy()
"""Restart always, escalate only when crashing more than 10 times a minute."""

TRANSIENT = RestartPolicy(name="transient", restart_on_return=False)
"""Restart after a crash; a normal return ends the task."""


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one real error in a nursery's exception group, or the group itself.

    Trio wraps every error that leaves a nursery in a group; where a nursery
    exists only to host one connection, callers want that one error back to
    handle it by type. Cancellations are not errors and are left out unless
    they are all there is.
    """
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    if len(real) == 1:
        return real[0]
    if not real and leaves:
        return leaves[0]
    return group


class TaskGaveUp(Exception):
    """A supervised task crashed more often than its policy allows."""


async def supervise(
    name: str,
    fn: Callable[[], Awaitable[object]],
    *,
    policy: RestartPolicy = PERMANENT,
    health: HealthRegistry | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``fn`` under ``policy`` until it returns for good or is cancelled."""
    health = health if health is not None else HealthRegistry()
    crashes: deque[float] = deque()
    attempt = 0
    started = False
    while True:
        health.set_state(name, "running")
        if not started:
            task_status.started()
            started = True
        t0 = trio.current_time()
        try:
            await fn()
        except Fatal:  # a ConfigError among them: no restart can cure it
            health.set_state(name, "failed")
            raise
        except Exception as exc:
            now = trio.current_time()
            h = health.get(name)
            h.last_error = f"{type(exc).__name__}: {exc}"
            h.last_error_at = time.time()
            crashes.append(now)
            while crashes and now - crashes[0] > policy.window:
                crashes.popleft()
            if len(crashes) > policy.max_restarts:
                health.set_state(name, "failed")
                log.error(
                    "supervise.gave_up", task=name, policy=policy.name,
                    crashes=len(crashes), window=policy.window, exc_info=exc,
                )
                raise TaskGaveUp(f"task {name!r} crashed {len(crashes)} times "
                                 f"in {policy.window:.0f} s") from exc
            # A task that ran well for a while starts its back-off afresh.
            if now - t0 > policy.backoff.maximum:
                attempt = 0
            delay = policy.backoff.delay(attempt)
            attempt += 1
            h.restarts += 1
            health.set_state(name, "restarting")
            log.error(
                "supervise.task_crashed", task=name, policy=policy.name,
                restart_in=round(delay, 2), restarts=h.restarts, exc_info=exc,
            )
            await trio.sleep(delay)
            log.info("supervise.task_restarted", task=name, restarts=h.restarts)
            continue
        if not policy.restart_on_return:
            health.set_state(name, "stopped")
            return
        log.warning("supervise.task_returned", task=name, policy=policy.name)
        await trio.sleep(policy.backoff.delay(0))
