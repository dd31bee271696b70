"""See what the device is doing: metrics, status and a snapshot over local HTTP.

The endpoint (``[observe] listen``, 127.0.0.1:9750 by default) serves:

- ``/metrics``: Prometheus text format. One custom collector reads the live
  objects (session, peers, encoders, health) at scrape time, so nothing on the
  media path counts anything for it, and a peer that leaves takes its series
  with it (no label leak);
- ``/status``: the same reading as JSON, read by ``glimpse-edge status``;
- ``/snapshot.jpg``: the newest camera picture, encoded at most once a second
  in a worker thread.

Observe reads the agent through :class:`.view.AgentView`, a read-only
protocol the agent implements, and never imports the agent. Modules:
:mod:`.view` (what observe reads), :mod:`.state` (one reading of it, the
only walk over the view), :mod:`.metrics` and :mod:`.status` (that reading
as Prometheus families and as JSON), :mod:`.peerstats` (aiortc's getStats,
rates), :mod:`.snapshot` (JPEG), :mod:`.server` (HTTP on hypercorn's Trio
worker), :mod:`.statusview` (the CLI's table). This module stays
import-light: the web stack is imported only when the endpoint is on, and
the CLI's ``status`` does not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .view import AgentView

__all__ = ["run_observe"]


async def run_observe(
    agent: AgentView,
    address: tuple[str, int],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the endpoint for ``agent`` on ``address`` until cancelled (see :mod:`.server`)."""
    from .server import run_observe_server

    await run_observe_server(agent, address, task_status=task_status)
