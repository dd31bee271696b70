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

A filler goes only to a packet the receiver very likely waits for: one it
lacks (each owed packet carries the odds: 1 when surely lost, because the
report's new loss covers every resend it covers, none arrived at all, or
its NACK was never answered; else the share of the covered resends the
report lost) lies before it or less than :data:`MISORDER_SAFE` after it
(aiortc's receiver takes a packet 100 behind where it got to as a new
stream, and starts over); a filler goes again only for a packet surely
lost since. When more is owed than the resend budget sends in a second
and no key frame followed the losses, the agent asks its encoder for one
(:func:`key_frame_would_help`), so the fillers can start; and a key frame
that leaves while the receiver may still wait for something older restarts
it instead (rtc/restart.py: nothing older is owed after that). And the ledger
acts only on what was owed
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

__all__ = ["TAIL_GRACE_S", "RepairLedger", "RepairStats", "filler_payload", "key_frame_would_help"]

SEQ_MOD: Final = 65536
TAIL_GRACE_S: Final = 0.25  # a resend not reported this long (plus a round trip) was lost
MAX_TRACKED: Final = 1024  # resends watched at once (the oldest are forgotten)
MAX_FILLS: Final = 4  # fillers sent for one packet at most
HISTORY_MARGIN: Final = 16  # packets sent while a repair waits for its turn
REASK_S: Final = 0.5  # (plus two round trips) a receiver that still asks has asked by then
# aiortc's receiver takes a packet this far behind the oldest it waits for as a
# new stream: it empties its jitter buffer and asks for a key frame
# (jitterbuffer.py, MAX_MISORDER = 100); a filler lands at most this far behind
# a packet the receiver lacks (RepairLedger._waited_for)...
MISORDER_SAFE: Final = 90
WAIT_ODDS: Final = 0.9  # ... with these odds at least
TAIL_LACKS: Final = 0.9  # a resend unreported a round trip and a grace later: lost, most likely


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


def key_frame_would_help(again: Sequence[int], key_frames: Sequence[Sequence[int]],
                         affordable: float) -> bool:
    """Whether to ask the encoder for a key frame rather than resend ``again``
    (owed packets, oldest first) one by one: more of them than the resend
    budget sends in its window (``affordable`` packets), and no key frame sent
    since the oldest (one is on its way: once the receiver has it whole, the
    packets before it get fillers).

    The receiver cannot skip a hole (aiortc's buffer waits for it until 512
    packets have passed) nor knows to ask for a key frame: a cap's onset lost
    200-300 packets per viewer, resent ~10 a report within the budget, and
    the viewers froze 15-28 s. libwebrtc's receiver does this itself (a NACK
    list too long or too old: it asks for a key frame instead).
    """
    if len(again) <= affordable:
        return False
    return not key_frames or _not_after(key_frames[-1][0], again[0])


@dataclass
class RepairStats:
    """What the ledger saw, for /metrics and /status."""

    tracked: int = 0  # resends watched
    confirmed: int = 0  # ... shown arrived by a report
    lost: int = 0  # ... found lost (or skipped over budget): owed again
    repaired: int = 0  # owed packets handed back to be sent again
    filled: int = 0  # ... as fillers (older than a key frame received whole, waited for)
    expired: int = 0  # owed packets that had left the sender's history
    # ... or were given up: filled MAX_FILLS times, or maybe received and the
    # receiver maybe 100 past them (nothing sent: see take_owed)
    abandoned: int = 0
    cleared: int = 0  # owed or watched when the receiver restarted (rtc/restart.py)


class RepairLedger:
    """One video sender's resends, until the receiver's reports account for them.

    ``history`` is how many packets the sender keeps for resending
    (rtc/compat.py's RTP_HISTORY): an owed packet older than that is gone.
    """

    def __init__(self, history: int) -> None:
        self.history = history
        self.stats = RepairStats()
        self._pending: dict[int, tuple[int, float]] = {}  # original -> (RTX seq, sent at)
        # originals to send again -> (since when, how likely the receiver lacks it:
        # 1.0 surely, else the share of the resends its report covered that it lost)
        self._owed: dict[int, tuple[float, float]] = {}
        self._skipped: dict[int, None] = {}  # RTX sequence numbers assigned, never sent
        self._lost: int | None = None  # the receiver's cumulative loss at its last report
        self._fills: dict[int, int] = {}  # original -> fillers handed out for it
        self._handed: dict[int, float] = {}  # what take_owed handed out last -> its odds
        self._moot: set[int] = set()  # watched resends sent before the receiver restarted
        # given up (too far behind for a full resend, filled MAX_FILLS times, or
        # maybe received): the receiver may still wait for them, until it
        # restarts, or the history has passed them (its 512-packet buffer has
        # then let go)
        self._given_up: dict[int, None] = {}

    @property
    def owed(self) -> int:
        return len(self._owed)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def waits(self) -> bool:
        """Whether the receiver may wait for a packet: one is owed, or was given up
        on, or a resend sent since its last restart is not yet reported.

        Given up too: twice in a dozen runs of scenario g1 a viewer waited
        12-15 s at holes the ledger had given up on (their resends maybe
        received, by a report that lost some of them), the 14-22 key frames it
        asked for meanwhile left without a restart, and its jitter buffer let
        go only 512 packets on. A restart that was not needed costs the few
        packets the receiver held; a missed one, seconds of frozen picture.
        """
        return bool(self._owed) or bool(self._given_up) \
            or any(s not in self._moot for s in self._pending)

    def restart(self) -> None:
        """A key frame leaves with a skip of sequence numbers (rtc/restart.py): the
        receiver will drop everything older, so nothing older is owed any more.
        The resends still watched go on being counted in its reports' loss (a
        report cannot say which were lost), but are never owed again."""
        self.stats.cleared += len(self._owed)
        self._owed.clear()
        self._fills.clear()
        self._given_up.clear()
        self._moot = set(self._pending)

    # -- what the pacer did --------------------------------------------------------

    def resent(self, original: int, rtx_sequence: int, now: float) -> None:
        """``original`` left again as RTX packet ``rtx_sequence``."""
        self._owed.pop(original, None)
        self._pending.pop(original, None)
        self._moot.discard(original)
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
            self._owe(original, now, lacks=1.0)  # nothing answered its NACK

    # -- what the receiver says -------------------------------------------------------

    def unreported(self, now: float, rtt_s: float | None) -> None:
        """A receiver report without a block for our RTX stream: the receiver got no
        resend yet (aiortc and libwebrtc report every stream they received), so
        every resend sent a round trip and a grace ago was lost."""
        overdue = now - TAIL_GRACE_S - (rtt_s or 0.0)
        for original, (_rtx, sent_at) in list(self._pending.items()):
            if sent_at < overdue:
                del self._pending[original]
                self._owe(original, now, lacks=1.0)

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
        # each of them lost with the odds of the report's share (all lost: surely);
        # the first report's loss says nothing of them
        lacks = 0.0 if first else min(1.0, new_loss / max(len(covered), 1))
        for original in covered:
            del self._pending[original]
            if grew:
                self._owe(original, now, lacks=lacks)
            else:
                self._moot.discard(original)
                self.stats.confirmed += 1
        for original, (_rtx, sent_at) in list(self._pending.items()):
            if sent_at < overdue:  # nothing at or after it arrived: the tail of a burst
                del self._pending[original]
                self._owe(original, now, lacks=TAIL_LACKS)

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
        docstring), ~60 bytes rather than a full one, if the receiver very
        likely waits for it (:meth:`_waited_for`); else nothing, and never a
        full resend. aiortc's receiver takes a packet 100 behind the oldest
        it waits for as a new stream: it empties its jitter buffer and waits
        from that packet on, until 512 have passed. A viewer that fillers had
        unblocked was set back so by the full resends of 39 older packets it
        had received, and froze 20 s more; so a full resend goes only where a
        filler may, or within :data:`MISORDER_SAFE` of ``newest`` (the
        receiver cannot be past that: one 100 behind, sent before the key
        frame after it was whole, set a viewer back so at 15 s and it froze
        till 35 s). Not merely older than the last key
        frame *sent*: the receiver has not decoded that one yet if it is
        stuck behind the hole, and key frames come often under loss (every
        PLI); filling up to the last one sent filled holes of every key frame
        in turn, and three viewers decoded nothing for 25 s.

        Only what was owed :data:`REASK_S` and two round trips ago (``now``,
        ``rtt_s``): a receiver that still asks for a packet (a browser every
        round trip; aiortc at each new gap, under steady loss several times a
        second) has it resent by its NACK, which settles the debt. Acting at
        once duplicated most resends under 10 % random loss (a report cannot
        say which one was lost), spent the resend budget on them, and NACKs
        of new losses went unanswered (a viewer froze 6.8 s).
        """
        due = now - REASK_S - 2 * (rtt_s or 0.0)
        owed = {s: lacks for s, (since, lacks) in self._owed.items() if since <= due}
        for s in owed:
            del self._owed[s]
        if newest is None:
            return [], []
        outstanding = [*owed, *self._owed, *self._pending]
        whole = next((first for first, last in reversed(list(key_frames)) if not any(
            _not_after(first, s) and _not_after(s, last) for s in outstanding)), None)
        waited_for = self._waited_for(newest, {**{s: v[1] for s, v in self._owed.items()},
                                               **owed})

        def held(s: int) -> bool:  # still in the sender's history
            return (newest - s) % SEQ_MOD < self.history - HISTORY_MARGIN

        def older(s: int) -> bool:  # older than a key frame the receiver has whole
            return whole is not None and s != whole and _not_after(s, whole)

        keep = sorted((s for s in owed if held(s)), key=lambda s: -((newest - s) % SEQ_MOD))
        self.stats.expired += len(owed) - len(keep)
        again, stale = [], []
        for s in keep:
            if not older(s):
                if s in waited_for or (newest - s) % SEQ_MOD < MISORDER_SAFE:
                    again.append(s)
                else:  # a full resend lands as far behind as a filler
                    self.stats.abandoned += 1
                    self._given_up[s] = None
            elif s not in waited_for or (fills := self._fills.get(s, 0)) >= MAX_FILLS or (
                    fills and owed[s] < 1.0):
                # filled before and not surely lost since: the receiver most likely
                # moved on past the key frame, and another filler lands behind it
                # (a batch's report that showed some loss refilled 63 packets the
                # receiver had passed 100 ago: it started over and froze 20 s)
                self.stats.abandoned += 1
                self._given_up[s] = None
            else:
                self._fills[s] = fills + 1
                stale.append(s)
        for s in [s for s in self._fills if not held(s)]:
            del self._fills[s]
        for s in [s for s in self._given_up if (newest - s) % SEQ_MOD >= self.history]:
            del self._given_up[s]
        # a key frame sent after the oldest of them is what the receiver will
        # show next: its packets (and later ones) go first, and once it is
        # whole the older ones get fillers (oldest first, it held them behind
        # a hundred older resends at ~10 a report, and never became whole)
        newest_key = next((first for first, _last in reversed(list(key_frames))), None)
        if again and newest_key is not None and _not_after(again[0], newest_key):
            again.sort(key=lambda s: not _not_after(newest_key, s))
        self._handed = owed
        self.stats.repaired += len(again)
        self.stats.filled += len(stale)
        return again, stale

    @staticmethod
    def _waited_for(newest: int, lacks: dict[int, float]) -> set[int]:
        """Of the owed packets (-> how likely the receiver lacks each), those it
        very likely has not got 100 past: one it lacks lies at most
        :data:`MISORDER_SAFE` after it, or anywhere before it, with odds of at
        least :data:`WAIT_ODDS`. Only those may get a filler.

        aiortc's receiver waits at its oldest hole, and takes a packet 100
        behind that for a new stream. A report's partial loss (60 of 100
        resends lost) cannot say which arrived: filling only the surely lost
        left every hole of a cap's onset burst to full resends at ~10 a
        report, or, older than a key frame, to nothing, and viewers froze
        13-28 s; but one resend of a few reported lost is most likely there.
        """
        ascending = sorted(lacks, key=lambda s: -((newest - s) % SEQ_MOD))
        out: set[int] = set()
        has_all = 1.0  # odds the receiver has every one up to the window's end
        end = 0
        for s in ascending:
            while end < len(ascending) and (ascending[end] - s) % SEQ_MOD < MISORDER_SAFE:
                has_all *= 1.0 - lacks[ascending[end]]
                end += 1
            if 1.0 - has_all >= WAIT_ODDS:
                out.add(s)
        return out

    def put_back(self, originals: list[int], *, fillers: bool) -> None:
        """Handed out by :meth:`take_owed` but not sent (no room in the resend
        budget): owed as before, first in line."""
        self._owed = {**{s: (-math.inf, self._handed.get(s, 0.0)) for s in originals},
                      **self._owed}
        if fillers:
            self.stats.filled -= len(originals)
            for s in originals:
                self._fills[s] -= 1
        else:
            self.stats.repaired -= len(originals)

    def _owe(self, original: int, now: float, *, lacks: float) -> None:
        if original in self._moot:
            self._moot.discard(original)
            self.stats.cleared += 1
            return
        self.stats.lost += 1
        self._owed.setdefault(original, (now, lacks))
