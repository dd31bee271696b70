"""Restarting a receiver stuck behind old holes: a key frame sent 512 sequence numbers on.

aiortc's receiver (the lab's viewers, and another glimpse-edge device
receiving us) hands video frames out in order only. Its jitter buffer (512
packets) waits at its oldest hole until a packet 512 past it arrives, and
nothing it asks for, and no key frame, gets it out sooner. A cap's onset
left 30-120 holes per viewer whose resends and fillers were lost too
(rtc/repair.py): one viewer per run froze 12-22 s (scenario f), at the
lowest tier's ~30 packets a second.

The buffer has one clean way out: a packet at least 512 past the newest it
can hold. It then drops everything it holds (``smart_remove`` runs through
its whole capacity) and starts from that packet; if that packet starts a key
frame, the receiver shows it at once. So when a key frame leaves while the
receiver may still wait for something older (the repair ledger owes a
packet or watches a resend), or the first key frame after a cap's onset
(the shared uplink's ``cap_cuts``: every receiver lost a burst there, before
any report says what), the sender skips :data:`JUMP` sequence numbers
before it (:class:`SequenceShift`). The receiver also asks for a key frame
then (a PLI, answered by the one just sent: rtc/feedback.py's window).

What the skip costs, and how it is kept from costing more:

- the receiver counts the skipped numbers lost, in its reports' loss and
  in one NACK (aiortc's lists the last 100): rtc/feedback.py subtracts them
  from the loss it reads (:meth:`SequenceShift.passed`), and a NACK for
  one finds nothing in aiortc's history (its entry holds another number);
- libwebrtc's receiver takes them for a burst of 512 losses before a key
  frame: it NACKs them until that key frame is decoded, then drops them
  (fewer than its 1000-packet NACK list: more, and it would ask for a key
  frame);
- a resend of a packet sent before the key frame (a NACK sent before the
  restart, a repair) is refused (:meth:`SequenceShift.before_restart`):
  arriving after the key frame it would lie 512 behind the receiver's new
  start, which aiortc takes for a new stream, and it would wait again.

Every number after a restart is aiortc's own plus the shift: aiortc keeps
its next sequence number in a local of its sender's task. The pacer
rewrites each new packet's header and the sender's history entry for it
(rtc/compat.py, ``renumber_sent``), so a NACK for the new number finds it,
and an RTX resend carries it. The shift grows in steps of :data:`JUMP`, a
multiple of the history's size, so an entry keeps its place in the history.

Pure: nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections import deque
from typing import Final

__all__ = ["JUMP", "SequenceShift", "with_sequence"]

SEQ_MOD: Final = 65536
# aiortc's video jitter buffer holds 512 packets (rtcrtpreceiver.py): a packet
# 512 past the newest it holds empties it. A multiple of the sender's history
# (rtc/compat.py's RTP_HISTORY) and below libwebrtc's NACK list (1000).
JUMP: Final = 512
# After this many packets past a restart nothing sent before it is in the
# sender's history any more: resends of it are no longer refused by number
# (serial arithmetic would misjudge them 32768 on).
FORGET_AFTER: Final = 4 * JUMP


def _not_after(a: int, b: int) -> bool:
    """Sequence number ``a`` is ``b`` or older (RFC 1982 serial arithmetic, 16 bits)."""
    return (b - a) % SEQ_MOD < SEQ_MOD // 2


def with_sequence(data: bytes, sequence: int) -> bytes:
    """RTP packet ``data`` with its sequence number set to ``sequence``."""
    return data[:2] + sequence.to_bytes(2, "big") + data[4:]


class SequenceShift:
    """One video stream's sequence numbers as sent: aiortc's plus a shift that
    grows by :data:`JUMP` at each restart."""

    def __init__(self) -> None:
        self.shift = 0
        self.restarts = 0
        self.reported = 0  # skipped numbers the receiver's reports have passed
        self.start: int | None = None  # the first number sent after the last restart
        self._unreported: deque[int] = deque()  # each restart's first skipped number

    def sent_as(self, original: int) -> int:
        """The number aiortc's packet ``original`` goes out with."""
        return (original + self.shift) % SEQ_MOD

    def restart(self, original: int) -> int:
        """Skip :data:`JUMP` numbers before aiortc's packet ``original`` (a key frame's
        first); the number it goes out with."""
        self._unreported.append(self.sent_as(original))
        self.shift = (self.shift + JUMP) % SEQ_MOD
        self.restarts += 1
        self.start = self.sent_as(original)
        return self.start

    def before_restart(self, sequence: int) -> bool:
        """Whether ``sequence`` (as sent) was sent before the last restart: resending
        it would set the receiver back."""
        return self.start is not None and sequence != self.start \
            and _not_after(sequence, self.start)

    def sent(self, sequence: int) -> None:
        """``sequence`` (as sent) left: the last restart is forgotten once nothing
        sent before it can be resent."""
        if self.start is not None and (sequence - self.start) % SEQ_MOD > FORGET_AFTER:
            self.start = None

    def passed(self, highest: int) -> int:
        """How many skipped numbers a receiver's report newly covers: its highest
        sequence number received (low 16 bits) is past them. Each is counted once."""
        skipped = 0
        while self._unreported and _not_after(self._unreported[0], highest):
            self._unreported.popleft()
            skipped += JUMP
        self.reported += skipped
        return skipped
