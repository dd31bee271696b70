"""Probing a limited uplink: padding past the link it knows, to see if it grew.

While the shared uplink (rtc/uplink.py) limits what we send, the encoders'
creep is its only test past the link, and it comes every ten seconds or so
(a decrease, a hold, the creep back). A cap that lifted just after an
overload showed only once the estimate had crept back up to ~1.2 x the
known link (what we send trails it by ~10 %): 13-15 s of 15-23 s
recoveries. A probe tests it whenever the link is clear: for a couple of
seconds the peers pad what they send past the known link; if the link
carries it, it grew.

The padding (:func:`pad`) is what libwebrtc pads with too, "payload
padding": resends, on the RTX stream, of the last few packets sent. A
receiver drops the copies and counts them in its report of the RTX stream,
which is how what got through is counted (rtc/feedback.py,
``_arrived_bps``). The pacer sends them free of its resend bounds and
unwatched by the repair (:attr:`~.pacer.Pacer.padding`); padding goes only
into the pacer's idle bucket, so a frame never waits behind it. Only a
peer whose own link has room gets padding (the uplink shares it out).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from . import compat
from .pacer import Pacer

__all__ = ["PADDING_SPAN", "Probe", "pad"]

# Padding resends the last PADDING_SPAN packets in turn (the newest first): the
# receiver has them, or is about to, and drops the copies.
PADDING_SPAN: Final = 16
_IDLE_S: Final = 0.01  # the wait when there is nothing to pad with yet


@dataclass(frozen=True)
class Probe:
    """Padding each peer adds while a probe runs (:attr:`.uplink.Uplink.probe`)."""

    start: float
    until: float  # the padding stops then
    padding_bps: dict[str, int]  # by peer, on the wire
    sent_bps: float  # what we sent all peers as it started (without padding)
    carried_bps: float  # what got through as it started
    # it pads up to the level a grown link jumps to (Uplink: "a jump is probed first")
    jump: bool = False

    @property
    def total_bps(self) -> int:
        return sum(self.padding_bps.values())


async def pad(sender: Any, pacer: Pacer, rate_bps: Callable[[], int | None]) -> None:
    """Resend ``sender``'s last few packets, in turn, at ``rate_bps()`` until it
    says None (the probe's time, or less: the uplink ends a probe early).

    The rate is asked for at each packet, not once: a probe that follows
    another at once (after a pass) found the last one's padding still
    running at its rate, padded less than a third of what it asked, and
    could not pass (Chromium viewers: a lifted cap found 8 s later).

    In aiortc's loop; only with RTX negotiated (``compat.sends_rtx``): on the
    video stream itself the copies would confuse the receiver's loss count.
    Raises what a closing connection raises.
    """
    ssrc = compat.sender_ssrc(sender)
    back = 0
    while (rate := rate_bps()) is not None:
        if (busy := pacer.queue_delay_s) > 0.0:  # video first
            await asyncio.sleep(busy)
            continue
        newest = pacer.newest(ssrc)
        if newest is None:
            await asyncio.sleep(_IDLE_S)
            continue
        sequence = (newest - back) % 65536
        back = (back + 1) % PADDING_SPAN
        before = pacer.stats.padding_bytes
        pacer.padding.add(sequence)
        await compat.resend(sender, sequence)
        pacer.padding.discard(sequence)  # (not in the history: nothing went)
        sent = pacer.stats.padding_bytes - before
        await asyncio.sleep(sent * 8 / max(rate, 1) if sent else _IDLE_S)
