"""Resends a receiver may not have got, sent again until its reports show they arrived.

A receiver asks for a lost packet with a NACK and we resend it (aiortc, from
its history, through the pacer). On a congested uplink the resend is lost as
easily as the packet was. A browser then asks again, every round trip, up to
ten times. aiortc's receiver (the lab's viewers, and another glimpse-edge
device receiving us) does not: it sends a NACK only when it notices a *new*
gap, and its jitter buffer hands frames out in order only. So one packet that
never arrives blocks every later frame until 512 packets have passed: 22 to
27 s of frozen picture for all three viewers after a 1 Mbit/s uplink cap hit
(scenario f), though the link lost nothing after the first second.

With RTX (RFC 4588, negotiated by browsers and aiortc alike) a resend has
its own SSRC and sequence numbers, and the receiver reports that stream like
any other: aiortc sends one report block per SSRC it receives. Its
cumulative loss says whether the resends up to its highest sequence number
arrived:

- unchanged (apart from the RTX sequence numbers the pacer skipped, which
  the receiver counts as lost too): all of them did;
- grown: some did not, and the report cannot say which, so every resend it
  covers is owed again;
- a resend beyond the highest reported though sent a round trip and a grace
  before the report is the tail of a loss burst: owed again.

A resend the pacer skipped for its budget is owed as well. What is owed is
sent again (:meth:`RepairLedger.take_owed`) while aiortc's history still
holds it, through the same pacer and bounds as a NACK's answer, one packet
at a time at the pacer's rate (a batch sent at once overflowed the queue it
was repairing: of ~200 resends a report, almost none arrived).

Unless a key frame was sent since: a packet of an older frame is worth
nothing to the receiver any more, and resending every packet a sudden cap
lost at the top tier (hundreds per viewer) would take the capped link
seconds. It gets a *filler* of its sequence number instead: the original
header with a payload a decoder skips (:func:`filler_payload`: an H.264
filler-data NAL unit, a VP8 continuation byte), wrapped in RTX like any
resend, ~60 bytes. aiortc's receiver files it in its jitter buffer, which
then moves on (the old frame it belonged to is broken; the key frame after
it decodes). Not an empty payload: aiortc hands a frame of only empty
packets to libavcodec as an empty packet, which is the decoder's drain
signal, and it decodes nothing ever after (seen: every viewer stopped for
good). libwebrtc treats the filler as one more packet of a frame older
than its last key frame, which it drops. Fillers are watched like any
resend, but one packet gets at most :data:`MAX_FILLS`: a report cannot say
which of a few hundred was lost, so any one lost owes them all again, and
without a bound that went on report after report. (Sent once and not
watched, a lost filler left its hole: 6-12 s freezes remained.)

A filler goes only to a packet surely lost (the report's new loss covers
every resend it covers, none arrived at all, or its NACK was never
answered): one that lands on a packet the receiver has, still in its jitter
buffer, overwrites it. And the ledger acts only on what was owed
:data:`REASK_S` and two round trips ago: a receiver that still asks has the
packet resent by its own NACK. The agent repairs only while its shared
uplink limits (rtc/feedback.py says why).

A receiver report with no block for the RTX stream means no resend has
arrived yet (aiortc and libwebrtc report every stream they received from):
what was resent a round trip and a grace before it is owed as well. A
connection without RTX resends on the video stream itself, and nothing is
watched.

Pure: time comes in as ``now``; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["TAIL_GRACE_S", "RepairLedger", "RepairStats", "filler_payload"]

SEQ_MOD: Final = 65536
TAIL_GRACE_S: Final = 0.25  # a resend not reported this long (plus a round trip) was lost
MAX_TRACKED: Final = 1024  # resends watched at once (the oldest are forgotten)
MAX_FILLS: Final = 4  # fillers sent for one packet at most
HISTORY_MARGIN: Final = 16  # packets sent while a repair waits for its turn
REASK_S: Final = 0.5  # (plus two round trips) a receiver that still asks has asked by then


def filler_payload(codec: str) -> bytes:
    """An RTP payload of ``codec`` that carries nothing a decoder uses.

    H.264 (RFC 6184 single NAL unit): a filler-data NAL unit (type 12, nal_ref_idc
    0) with its RBSP trailing bits. VP8 (RFC 7741): a payload descriptor that
    continues partition 0 (S=0), and one byte.
    """
    return b"\x0c\x80" if codec == "h264" else b"\x00\x00"


def _not_after(a: int, b: int) -> bool:
    """Sequence number ``a`` is ``b`` or older (RFC 1982 serial arithmetic, 16 bits)."""
    return (b - a) % SEQ_MOD < SEQ_MOD // 2


@dataclass
class RepairStats:
    """What the ledger saw, for /metrics and /status."""

    tracked: int = 0  # resends watched
    confirmed: int = 0  # ... shown arrived by a report
    lost: int = 0  # ... found lost (or skipped over budget): owed again
    repaired: int = 0  # owed packets handed back to be sent again
    filled: int = 0  # ... as fillers (surely lost, older than a key frame received whole)
    expired: int = 0  # owed packets that had left the sender's history
    abandoned: int = 0  # ... or been filled MAX_FILLS times already


class RepairLedger:
    """One video sender's resends, until the receiver's reports account for them.

    ``history`` is how many packets the sender keeps for resending
    (rtc/compat.py's RTP_HISTORY): an owed packet older than that is gone.
    """

    def __init__(self, history: int) -> None:
        self.history = history
        self.stats = RepairStats()
        self._pending: dict[int, tuple[int, float]] = {}  # original -> (RTX seq, sent at)
        # originals to send again -> (since when, surely lost: may get a filler)
        self._owed: dict[int, tuple[float, bool]] = {}
        self._skipped: dict[int, None] = {}  # RTX sequence numbers assigned, never sent
        self._lost: int | None = None  # the receiver's cumulative loss at its last report
        self._fills: dict[int, int] = {}  # original -> fillers handed out for it

    @property
    def owed(self) -> int:
        return len(self._owed)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- what the pacer did --------------------------------------------------------

    def resent(self, original: int, rtx_sequence: int, now: float) -> None:
        """``original`` left again as RTX packet ``rtx_sequence``."""
        self._owed.pop(original, None)
        self._pending.pop(original, None)
        self._pending[original] = (rtx_sequence, now)
        self.stats.tracked += 1
        if len(self._pending) > MAX_TRACKED:
            del self._pending[next(iter(self._pending))]

    def skipped(self, original: int, rtx_sequence: int, now: float, *, owed: bool) -> None:
        """The pacer did not send RTX packet ``rtx_sequence`` (resending ``original``).

        ``owed``: skipped for the resend budget, so nothing answered the NACK
        (skipped because it was resent within a round trip: that resend is
        watched already).
        """
        self._skipped[rtx_sequence] = None
        if len(self._skipped) > MAX_TRACKED:
            del self._skipped[next(iter(self._skipped))]
        if owed and original not in self._pending:
            self._owe(original, now, sure=True)  # nothing answered its NACK

    # -- what the receiver says -------------------------------------------------------

    def unreported(self, now: float, rtt_s: float | None) -> None:
        """A receiver report without a block for our RTX stream: the receiver got no
        resend yet (aiortc and libwebrtc report every stream they received), so
        every resend sent a round trip and a grace ago was lost."""
        overdue = now - TAIL_GRACE_S - (rtt_s or 0.0)
        for original, (_rtx, sent_at) in list(self._pending.items()):
            if sent_at < overdue:
                del self._pending[original]
                self._owe(original, now, sure=True)

    def report(self, highest: int, lost: int, now: float, rtt_s: float | None) -> None:
        """A report block for our RTX stream: ``highest`` sequence number received
        (its low 16 bits), ``lost`` its cumulative loss."""
        skipped = [s for s in self._skipped if _not_after(s, highest)]
        for s in skipped:
            del self._skipped[s]
        # the first report cannot show what was lost before the receiver's first
        # RTX packet arrived: what it covers is owed once more
        first = self._lost is None
        new_loss = 0 if self._lost is None else lost - self._lost - len(skipped)
        grew = first or new_loss > 0
        self._lost = lost
        overdue = now - TAIL_GRACE_S - (rtt_s or 0.0)
        covered = [o for o, (rtx, _at) in self._pending.items() if _not_after(rtx, highest)]
        sure = not first and new_loss >= len(covered)  # all of them were lost
        for original in covered:
            del self._pending[original]
            if grew:
                self._owe(original, now, sure=sure)
            else:
                self.stats.confirmed += 1
        for original, (_rtx, sent_at) in list(self._pending.items()):
            if sent_at < overdue:
                del self._pending[original]
                self._owe(original, now, sure=False)

    # -- what to send again ---------------------------------------------------------

    def take_owed(self, newest: int | None, key_frames: Iterable[Sequence[int]] = (), *,
                  now: float = math.inf, rtt_s: float | None = None
                  ) -> tuple[list[int], list[int]]:
        """The owed packets still in the sender's history (``newest``: the last one
        it sent), oldest first (the receiver is stuck on the oldest), as (to
        send again, to send as fillers); the ledger forgets them until they are
        sent (:meth:`put_back` for those that could not be).

        ``key_frames``: the last few key frames sent, oldest first, as their
        first and last sequence numbers. A packet older than the newest one of
        them that is believed whole at the receiver (none of its packets owed
        or awaiting a report) holds nothing the receiver will show: it gets a
        filler of that sequence number instead (see the module's
        docstring), ~60 bytes rather than a full one. Not merely older than
        the last key frame *sent*: the receiver has not decoded that one yet
        if it is stuck behind the hole, and key frames come often under loss
        (every PLI); filling up to the last one sent filled holes of every key
        frame in turn, and three viewers decoded nothing for 25 s.

        Only what was owed :data:`REASK_S` and two round trips ago (``now``,
        ``rtt_s``): a receiver that still asks for a packet (a browser every
        round trip; aiortc at each new gap, under steady loss several times a
        second) has it resent by its NACK, which settles the debt. Acting at
        once duplicated most resends under 10 % random loss (a report cannot
        say which one was lost), spent the resend budget on them, and NACKs
        of new losses went unanswered (a viewer froze 6.8 s).
        """
        due = now - REASK_S - 2 * (rtt_s or 0.0)
        owed = [s for s, (since, _sure) in self._owed.items() if since <= due]
        sure = {s for s in owed if self._owed[s][1]}
        for s in owed:
            del self._owed[s]
        if newest is None:
            return [], []
        outstanding = [*owed, *self._owed, *self._pending]
        whole = next((first for first, last in reversed(list(key_frames)) if not any(
            _not_after(first, s) and _not_after(s, last) for s in outstanding)), None)

        def held(s: int) -> bool:  # still in the sender's history
            return (newest - s) % SEQ_MOD < self.history - HISTORY_MARGIN

        def older(s: int) -> bool:
            """Older than a key frame the receiver has whole, and surely lost: a
            filler that lands on a packet the receiver has, still in its
            jitter buffer, overwrites it (a report that shows some loss cannot
            say which; under 10 % random loss fillers broke frames that had
            arrived whole, and a viewer froze 7.9 s)."""
            return (s in sure and whole is not None and s != whole
                    and _not_after(s, whole))

        keep = sorted((s for s in owed if held(s)), key=lambda s: -((newest - s) % SEQ_MOD))
        self.stats.expired += len(owed) - len(keep)
        again = [s for s in keep if not older(s)]
        stale = []
        for s in keep:
            if older(s):
                if (fills := self._fills.get(s, 0)) >= MAX_FILLS:
                    self.stats.abandoned += 1
                    continue
                self._fills[s] = fills + 1
                stale.append(s)
        for s in [s for s in self._fills if not held(s)]:
            del self._fills[s]
        self.stats.repaired += len(again)
        self.stats.filled += len(stale)
        return again, stale

    def put_back(self, originals: list[int], *, fillers: bool) -> None:
        """Handed out by :meth:`take_owed` but not sent (no room in the resend
        budget): owed as before, first in line."""
        self._owed = {**dict.fromkeys(originals, (-math.inf, fillers)), **self._owed}
        if fillers:
            self.stats.filled -= len(originals)
            for s in originals:
                self._fills[s] -= 1
        else:
            self.stats.repaired -= len(originals)

    def _owe(self, original: int, now: float, *, sure: bool) -> None:
        self.stats.lost += 1
        self._owed.setdefault(original, (now, sure))
