"""sd_notify over a real unix datagram socket, including one nobody reads."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from glimpse_edge.systemd import Notifier


async def test_notifications_reach_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        notifier = Notifier(path)
        notifier.ready("joined")
        notifier.status("joined")  # unchanged: not sent again
        notifier.watchdog()
        got = [server.recv(4096).decode() for _ in range(2)]
        notifier.close()
    assert got == ["READY=1\nSTATUS=joined", "WATCHDOG=1"]


async def test_a_manager_that_never_reads_does_not_block_the_agent(tmp_path: Path) -> None:
    """A full socket (the kernel queues 10 datagrams per socket by default) used to
    block ``sendto`` on the Trio thread forever: the whole agent froze."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        notifier = Notifier(path)
        sent = 0
        with trio.fail_after(10):  # the sends run in a thread: a blocked one fails here
            for i in range(200):
                sent += await trio.to_thread.run_sync(notifier.notify, f"STATUS={i}",
                                                      abandon_on_cancel=True)
        queued = 0
        server.setblocking(False)
        while True:
            try:
                server.recv(4096)
            except BlockingIOError:
                break
            queued += 1
        notifier.close()
    assert notifier.dropped > 0, "200 datagrams into a socket nobody reads: some are dropped"
    assert sent == queued and sent + notifier.dropped == 200, (sent, queued, notifier.dropped)
