"""A receiving peer in its own process: a BrowserPeer that reports what it decoded.

Fault tests put each receiver in its own network namespace, and a namespace
belongs to a process, so the receivers cannot live in the test's process as
they do elsewhere. This runs one :class:`~support.rtcpeer.BrowserPeer`
(reconnecting its signaling like a browser) and prints JSON lines on
stdout, which :class:`~support.peerproc.PeerProcess` reads:

- ``{"event": "joined", "user_id": ...}`` once, when it is in the room;
- ``{"event": "report", "t": wall s, "peers": {remote_id: {...}}, "log": [...]}``
  every ``--interval`` seconds, per remote participant: decoded ``video``
  and ``audio`` frame totals, the burned-in frame ``codes`` decoded since the
  last report (``[counter, sent_ms, received_ms]``; wall clock, the same on
  every namespace of the machine), the transport's ``bytes`` received so
  far, the peer connection's ``state`` and its video jitter buffer's ``jb``
  (:func:`jitter_buffer`); ``log`` holds the BrowserPeer's new log lines
  (states, signaling lost/joined).

Run as ``python tests/support/peer_runner.py --ws-url ... --token ... --room ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import structlog
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the support package

from glimpse_edge.rtc.aio import open_aio_loop
from support.rtcpeer import BrowserPeer


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def jitter_buffer(pc: Any) -> dict[str, Any] | None:
    """Where aiortc's video jitter buffer stands: its ``origin`` (the oldest
    sequence number it waits for), how many packets it ``held``, the ``span``
    from the origin to the newest one, and the ``missing`` sequence numbers
    within that span (the first ten; ``gaps`` counts them all).

    aiortc's buffer releases frames only in order, and asks for a lost packet
    only when a new gap appears: one lost retransmission holds every later
    frame until 512 packets have passed (issue 15). A fault benchmark that
    sees a freeze needs this to tell such a hole from a slow link. It reads
    aiortc's private state, so a version that renamed it reports None.
    """
    for receiver in pc.getReceivers() if pc is not None else ():
        if receiver.track is None or receiver.track.kind != "video":
            continue
        buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
        slots = getattr(buffer, "_packets", None)
        if buffer is None or slots is None or buffer._origin is None:
            return None
        origin, size = buffer._origin, len(slots)
        present = [slots[(origin + i) % size] is not None for i in range(size)]
        span = max((i + 1 for i, here in enumerate(present) if here), default=0)
        missing = [(origin + i) % 65536 for i in range(span) if not present[i]]
        return {"origin": origin, "held": sum(present), "span": span,
                "gaps": len(missing), "missing": missing[:10]}
    return None


async def report(peer: BrowserPeer, interval: float) -> None:
    sent_codes: dict[str, int] = {}
    sent_sizes: dict[str, int] = {}
    sent_log = 0
    while True:
        peers: dict[str, Any] = {}
        for remote_id, rec in list(peer.received.items()):
            start = sent_codes.get(remote_id, 0)
            codes = rec.codes[start:]
            sent_codes[remote_id] = start + len(codes)
            sizes = rec.size_changes[sent_sizes.get(remote_id, 0):]
            sent_sizes[remote_id] = len(rec.size_changes)
            pc = peer.pcs.get(remote_id)
            try:
                received = await peer.received_bytes(remote_id)
            except Exception:  # a connection being replaced
                received = None
            peers[remote_id] = {
                "video": rec.video_frames, "audio": rec.audio_frames, "codes": codes,
                "sizes": sizes,
                "bytes": received, "state": pc.connectionState if pc is not None else None,
                "jb": jitter_buffer(pc),
            }
        new_log, sent_log = peer.log[sent_log:], len(peer.log)
        emit({"event": "report", "t": time.time(), "peers": peers, "log": new_log})
        await trio.sleep(interval)  # the reporting period, not a synchronisation


async def main(args: argparse.Namespace) -> None:
    async with open_aio_loop():
        peer = BrowserPeer(args.name, read_codes=True)
        peer.reconnect_delay = args.reconnect_delay
        async with peer.joined(args.ws_url, args.token, args.room, reconnect=True):
            emit({"event": "joined", "user_id": peer.user_id, "t": time.time()})
            await report(peer, args.interval)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--ws-url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--name", default="peer")
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--reconnect-delay", type=float, default=0.3,
                   help="seconds between signaling reconnection attempts")
    return p.parse_args()


if __name__ == "__main__":
    # stdout carries the reports: aiortc's and the loop's log lines go to stderr
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    trio.run(main, parse_args())
