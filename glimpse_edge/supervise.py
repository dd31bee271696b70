"""Restart policies, back-off with jitter, and a health registry.

A device agent runs for months with nobody watching. Every long-lived task
therefore runs under :func:`supervise`, which logs a crash with its traceback,
waits a jittered, growing delay and starts the task again. A task that keeps
crashing (or returning) faster than its policy allows is given up on: the exception then
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
from typing import Literal, NoReturn

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
    """How a supervised task (or any retry loop) is restarted.

    ``max_restarts`` failures within ``window`` seconds exhaust the policy and
    the failure is escalated to the caller (:class:`TaskGaveUp`); None never
    escalates (a policy that waits forever, such as signaling's reconnect: a
    device waits out a long server outage). ``restart_on_return`` restarts a
    task that returned normally (long-lived loops should never return); such a
    return counts against the same bound as a crash, so a task that keeps
    returning at once is given up on too. A run longer than ``stable_after``
    (default: the back-off's maximum) starts the back-off afresh.
    """

    name: str = "permanent"
    backoff: Backoff = Backoff()
    max_restarts: int | None = 10
    window: float = 60.0
    restart_on_return: bool = True
    stable_after: float | None = None


PERMANENT = RestartPolicy()
"""Restart always, escalate only when crashing more than 10 times a minute."""

TRANSIENT = RestartPolicy(name="transient", restart_on_return=False)
"""Restart after a crash; a normal return ends the task."""


class TaskGaveUp(Exception):
    """A supervised task failed more often than its policy allows."""


class RestartTracker:
    """One restart loop's bookkeeping under a :class:`RestartPolicy`.

    Every restart loop in the agent (:func:`supervise`, the peer manager's
    session loop, a peer's connection restarts, signaling's reconnect, the
    lores encoder's retry) asks this for its next delay, so that delays are
    computed (capped, jittered) and failures counted (within the window) one
    way. :meth:`failed` counts a failure and returns the delay before the next
    try, or raises :class:`TaskGaveUp` once the policy is exhausted.
    """

    def __init__(self, name: str, policy: RestartPolicy,
                 rng: random.Random | None = None) -> None:
        self.name = name
        self.policy = policy
        self.rng = rng
        self.attempt = 0  # failures since the back-off last started afresh
        self._times: deque[float] = deque()

    @property
    def recent(self) -> int:
        """Failures counted in the current window."""
        return len(self._times)

    def reset(self) -> None:
        """A stable run: the next failure's back-off starts afresh."""
        self.attempt = 0

    def at_least(self, attempt: int) -> None:
        """Jump the back-off to ``attempt`` (a failure known to last: back off far)."""
        self.attempt = max(self.attempt, attempt)

    def ran(self, seconds: float) -> None:
        """A try that ran ``seconds`` before failing: long enough resets the back-off."""
        stable = self.policy.stable_after
        if seconds > (self.policy.backoff.maximum if stable is None else stable):
            self.reset()

    def failed(self, now: float, error: BaseException | None = None) -> float:
        """Count a failure at ``now`` (trio or monotonic time: one clock per tracker);
        the delay before the next try. Raises :class:`TaskGaveUp` (from ``error``)
        when the policy allows no more."""
        policy = self.policy
        self._times.append(now)
        while self._times and now - self._times[0] > policy.window:
            self._times.popleft()
        if policy.max_restarts is not None and len(self._times) > policy.max_restarts:
            log.error("supervise.gave_up", task=self.name, policy=policy.name,
                      failures=len(self._times), window=policy.window, exc_info=error)
            raise TaskGaveUp(f"task {self.name!r} failed {len(self._times)} times "
                             f"in {policy.window:.0f} s") from error
        delay = policy.backoff.delay(self.attempt, self.rng)
        self.attempt += 1
        return delay


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one real error in a nursery's exception group, to raise in its place.

    Trio wraps every error that leaves a nursery in a group; where a nursery
    exists only to host one connection, callers want that one error back to
    handle it by type (:func:`raise_sole`, or ``raise error from error.__cause__``:
    never ``from None``, which would drop the siblings).
    Cancellations are not errors and are left out unless they are all there
    is. Several real errors: the first is returned with the whole group as its
    ``__cause__`` (or, if it already has a cause, a note naming the others), so
    its siblings are never lost.
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
    if not real:
        if not leaves:
            return group
        real = leaves[:1]
    first = real[0]
    if len(real) > 1:
        if first.__cause__ is None:
            first.__cause__ = group
        else:
            first.add_note("raised beside: " + "; ".join(
                f"{type(e).__name__}: {e}" for e in real[1:]))
    # raised in the group's except block: its context is the group, which
    # says nothing the error does not (the cause, if any, still shows)
    first.__suppress_context__ = True
    return first


def raise_sole(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise :func:`sole_exception` of ``group`` (in an ``except`` block for it)."""
    raise sole_exception(group)


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
    tracker = RestartTracker(name, policy)
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
            tracker.ran(now - t0)  # a task that ran well for a while backs off afresh
            try:
                delay = tracker.failed(now, exc)
            except TaskGaveUp:
                health.set_state(name, "failed")
                raise
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
        # A long-lived loop that returned: restarted, but a task that keeps
        # returning at once is given up on like one that keeps crashing.
        now = trio.current_time()
        tracker.ran(now - t0)
        try:
            delay = tracker.failed(now)
        except TaskGaveUp:
            health.set_state(name, "failed")
            raise
        log.warning("supervise.task_returned", task=name, policy=policy.name,
                    restart_in=round(delay, 2))
        await trio.sleep(delay)
