"""Back-off and restart policies."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from glimpse_edge.config import ConfigError
from glimpse_edge.supervise import (
    TRANSIENT,
    Backoff,
    Fatal,
    HealthRegistry,
    RestartPolicy,
    RestartTracker,
    TaskGaveUp,
    find_fatal,
    raise_sole,
    sole_exception,
    supervise,
)


def test_backoff_grows_caps_and_never_drops_below_floor() -> None:
    b = Backoff(initial=0.5, maximum=8.0, floor=0.1)
    rng = random.Random(1)
    for attempt in range(40):
        ceiling = min(8.0, 0.5 * 2**attempt)
        draws = [b.delay(attempt, rng) for _ in range(200)]
        assert all(0.1 <= d <= max(ceiling, 0.1) for d in draws), (attempt, min(draws), max(draws))
    # full jitter: late attempts spread over the whole [floor, maximum] range
    late = [b.delay(30, rng) for _ in range(2000)]
    assert min(late) < 1.0 and max(late) > 7.0
    assert 3.0 < sum(late) / len(late) < 5.0


async def test_crashing_task_is_restarted_and_recorded(autojump_clock: trio.abc.Clock) -> None:
    runs = 0
    health = HealthRegistry()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 4:
            raise RuntimeError(f"boom {runs}")

    await supervise("flaky", flaky, policy=TRANSIENT, health=health)
    assert runs == 4
    h = health.get("flaky")
    assert h.restarts == 3 and h.state == "stopped" and h.last_error == "RuntimeError: boom 3"


async def test_crash_loop_escalates(autojump_clock: trio.abc.Clock) -> None:
    async def always() -> None:
        raise ValueError("broken")

    health = HealthRegistry()
    policy = RestartPolicy(backoff=Backoff(initial=0.1, maximum=0.2), max_restarts=3, window=60)
    with pytest.raises(TaskGaveUp) as info:
        await supervise("loop", always, policy=policy, health=health)
    assert isinstance(info.value.__cause__, ValueError)
    assert health.failed() == ["loop"]


async def test_config_errors_are_not_retried() -> None:
    calls = 0

    async def needs_config() -> None:
        nonlocal calls
        calls += 1
        raise ConfigError(file=None, key="room.id", reason="missing")

    with pytest.raises(ConfigError):
        await supervise("cfg", needs_config)
    assert calls == 1
    # the rule is Fatal's: supervise knows nothing of the configuration
    assert issubclass(ConfigError, Fatal)


async def test_fatal_errors_are_not_retried_and_are_found_in_groups() -> None:
    calls = 0

    async def hung_hardware() -> None:
        nonlocal calls
        calls += 1
        raise Fatal("the camera cannot be closed")

    health = HealthRegistry()
    with pytest.raises(Fatal):
        await supervise("camera", hung_hardware, health=health)
    assert calls == 1 and health.get("camera").state == "failed"
    fatal = Fatal("deep")
    group = BaseExceptionGroup("root", [ValueError("x"), BaseExceptionGroup("hub", [fatal])])
    assert find_fatal(group) is fatal and find_fatal(ValueError("x")) is None


async def test_cancellation_stops_supervision(autojump_clock: trio.abc.Clock) -> None:
    async def forever() -> None:
        await trio.sleep_forever()

    health = HealthRegistry()
    with trio.move_on_after(5):
        await supervise("forever", forever, health=health)
    assert health.get("forever").restarts == 0


async def test_a_task_that_keeps_returning_escalates(autojump_clock: trio.abc.Clock) -> None:
    runs = 0

    async def returns_at_once() -> None:
        nonlocal runs
        runs += 1

    health = HealthRegistry()
    policy = RestartPolicy(backoff=Backoff(initial=0.1, maximum=0.2), max_restarts=3, window=60)
    with pytest.raises(TaskGaveUp):
        await supervise("returns", returns_at_once, policy=policy, health=health)
    assert runs == 4 and health.failed() == ["returns"]


def test_tracker_escalates_after_the_bound_and_forgets_old_failures() -> None:
    tracker = RestartTracker("t", RestartPolicy(max_restarts=2, window=10.0))
    tracker.failed(0.0)
    tracker.failed(1.0)
    tracker.failed(20.0)  # the first two are out of the window
    tracker.failed(21.0)
    with pytest.raises(TaskGaveUp) as info:
        tracker.failed(22.0, ValueError("third"))
    assert isinstance(info.value.__cause__, ValueError)


def test_tracker_without_a_bound_never_escalates_and_caps_its_delays_with_jitter() -> None:
    policy = RestartPolicy(name="forever", backoff=Backoff(initial=1.0, maximum=8.0, floor=0.1),
                           max_restarts=None)
    tracker = RestartTracker("t", policy, rng=random.Random(3))
    delays = [tracker.failed(0.0) for _ in range(500)]  # all at once: never given up
    assert all(0.1 <= d <= 8.0 for d in delays)
    assert len({round(d, 3) for d in delays[10:]}) > 100, "jittered"
    assert max(delays[10:]) > 7.0
    tracker.at_least(8)
    assert tracker.attempt == 500
    tracker.reset()
    assert tracker.attempt == 0 and tracker.failed(0.0) <= 1.0
    tracker.ran(9.0)  # longer than the back-off's maximum: afresh
    assert tracker.attempt == 0


def test_sole_exception_keeps_siblings_as_the_cause() -> None:
    first, second = OSError("first"), ValueError("second")
    group = BaseExceptionGroup("two", [first, BaseExceptionGroup("inner", [second])])
    picked = sole_exception(group)
    assert picked is first and picked.__cause__ is group
    with pytest.raises(OSError) as info:
        try:
            raise group
        except BaseExceptionGroup as caught:
            raise_sole(caught)
    assert info.value.__cause__ is group
    # one that has its own cause keeps it; the siblings are named in a note
    caused = RuntimeError("caused")
    caused.__cause__ = KeyError("why")
    picked = sole_exception(BaseExceptionGroup("two", [caused, ValueError("other")]))
    assert isinstance(picked.__cause__, KeyError)
    assert "ValueError: other" in "".join(getattr(picked, "__notes__", []))


def test_sole_exception_returns_the_one_real_error_without_the_group() -> None:
    only = OSError("only")
    group = BaseExceptionGroup("one", [only])
    with pytest.raises(OSError) as info:
        try:
            raise group
        except BaseExceptionGroup as caught:
            raise_sole(caught)
    assert info.value is only and info.value.__cause__ is None
    assert info.value.__suppress_context__
