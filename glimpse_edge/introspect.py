"""Counting what the process holds: Trio tasks, asyncio tasks, file descriptors.

A device that runs for months dies of slow leaks. These counts are logged on
every peer removal and exposed to status, so a leak shows as a number that
only grows.
"""

from __future__ import annotations

import asyncio
import os

import trio


def trio_task_count() -> int:
    """Tasks alive in this Trio run (walks the task tree from the root)."""
    count = 0
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None:
            continue
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


def asyncio_task_count() -> int:
    """asyncio tasks alive on the running trio-asyncio loop (0 without one)."""
    try:
        from .rtc.aio import current_aio_loop  # not at import: keeps light commands light

        loop = current_aio_loop()
    except ImportError:
        return 0
    if loop is None:
        return 0
    return len(asyncio.all_tasks(loop))


def open_fd_count() -> int:
    """Open file descriptors of this process (Linux /proc)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def resource_counts() -> dict[str, int]:
    return {
        "trio_tasks": trio_task_count(),
        "asyncio_tasks": asyncio_task_count(),
        "fds": open_fd_count(),
    }
