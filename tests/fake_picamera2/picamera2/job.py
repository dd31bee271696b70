"""A job for the camera thread (as picamera2's ``job.py``).

``dispatch_functions`` queues a Job; the camera thread runs its functions in
``process_requests`` and signals it. ``get_result()`` with no timeout waits
for that: for ever if the camera thread is dead or stuck (on a real Pi; the
stand-in's release_hangs ends the wait with ``_hardware.Released``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from . import _hardware

__all__ = ["CancelledError", "Job"]


class Job:
    def __init__(self, functions: list[Callable[[], tuple[bool, Any]]],
                 signal_function: Callable[[Job], None] | None = None) -> None:
        self._functions = list(functions)
        self._future: Future[Any] = Future()
        self._future.set_running_or_notify_cancel()
        self._signal_function = signal_function
        self._result: Any = None
        self.calls = 0

    def execute(self) -> bool:
        """Run the functions in turn until one is not done yet; True when all are."""
        assert self._functions, "Job already completed!"
        try:
            result: Any = None
            while self._functions:
                done, result = self._functions[0]()
                self.calls += 1
                if not done:
                    break
                self._functions.pop(0)
            if not self._functions:
                self._result = result
        except Exception as e:
            self._future.set_exception(e)
            self._functions = []
        return not self._functions

    def signal(self) -> None:
        assert not self._functions, "Job not finished!"
        if not self._future.done():
            self._future.set_result(self._result)
        if self._signal_function:
            self._signal_function(self)

    def get_result(self, timeout: float | None = None) -> Any:
        if timeout is not None:
            return self._future.result(timeout=timeout)

        def poll(step: float) -> Any:
            try:
                return self._future.result(timeout=step)
            except FutureTimeout:
                raise TimeoutError from None

        return _hardware.wait_for_ever(poll, "Job.get_result() with no timeout")

    def cancel(self) -> None:
        self._future.set_exception(CancelledError())
