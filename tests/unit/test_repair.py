"""Resends watched until the receiver's RTX reports show them arrived (rtc/repair.py),
the pacer's key-frame mark it relies on, and fillers a real depayloader accepts."""

from __future__ import annotations

import pytest
from aiortc.codecs.h264 import H264PayloadDescriptor
from aiortc.codecs.vpx import VpxPayloadDescriptor
from support.encoded import encoded_packets

from glimpse_edge.rtc.pacer import Pacer, starts_key_frame
from glimpse_edge.rtc.repair import (
    HISTORY_MARGIN,
    MAX_FILLS,
    MISORDER_SAFE,
    REASK_S,
    TAIL_GRACE_S,
    RepairLedger,
    filler_payload,
    key_frame_would_help,
)

HISTORY = 512


def test_resends_a_report_covers_without_new_loss_are_confirmed() -> None:
    ledger = RepairLedger(HISTORY)
    ledger.report(highest=99, lost=0, now=0.0, rtt_s=0.01)  # the RTX stream, before
    for n in range(5):
        ledger.resent(1000 + n, 100 + n, now=1.0)
    ledger.report(highest=104, lost=0, now=1.5, rtt_s=0.01)
    assert ledger.pending == 0 and ledger.owed == 0
    assert ledger.stats.confirmed == 5


def test_new_loss_in_a_report_owes_every_resend_it_covers() -> None:
    ledger = RepairLedger(HISTORY)
    ledger.report(highest=99, lost=3, now=0.0, rtt_s=0.01)
    for n in range(4):
        ledger.resent(1000 + n, 100 + n, now=1.0)
    ledger.report(highest=103, lost=4, now=1.5, rtt_s=0.01)
    assert ledger.owed == 4, "which one was lost the report cannot say"
    again, fillers = ledger.take_owed(newest=1050)
    assert again == [1000, 1001, 1002, 1003] and fillers == []
    assert ledger.owed == 0, "handed out: forgotten until sent"


def test_rtx_numbers_the_pacer_skipped_are_not_taken_for_loss() -> None:
    """aiortc numbers a resend before the pacer decides; a skipped one is a gap the
    receiver counts as lost."""
    ledger = RepairLedger(HISTORY)
    ledger.report(highest=99, lost=0, now=0.0, rtt_s=None)
    ledger.resent(1000, 100, now=1.0)
    ledger.skipped(1000, 101, 0.0, owed=False)  # again within a round trip: watched already
    ledger.resent(1001, 102, now=1.0)
    ledger.report(highest=102, lost=1, now=1.5, rtt_s=None)
    assert ledger.owed == 0 and ledger.stats.confirmed == 2


def test_a_resend_skipped_for_the_budget_is_owed() -> None:
    ledger = RepairLedger(HISTORY)
    ledger.skipped(1000, 100, 0.0, owed=True)
    assert ledger.owed == 1
    assert ledger.take_owed(newest=1010) == ([1000], [])


def test_a_resend_never_reported_after_a_round_trip_and_grace_is_owed() -> None:
    """The tail of a burst: no later RTX packet arrived to show it missing."""
    ledger = RepairLedger(HISTORY)
    ledger.report(highest=99, lost=0, now=0.0, rtt_s=0.05)
    ledger.resent(1000, 100, now=1.0)
    ledger.report(highest=99, lost=0, now=1.0 + TAIL_GRACE_S / 2, rtt_s=0.05)
    assert ledger.owed == 0 and ledger.pending == 1, "too early to tell"
    ledger.report(highest=99, lost=0, now=1.0 + TAIL_GRACE_S + 0.06, rtt_s=0.05)
    assert ledger.owed == 1 and ledger.pending == 0


def test_the_first_report_owes_what_it_covers() -> None:
    """A receiver counts RTX loss from the first RTX packet it got: what was lost
    before that it never reports."""
    ledger = RepairLedger(HISTORY)
    ledger.resent(1000, 100, now=1.0)
    ledger.resent(1001, 101, now=1.0)
    ledger.report(highest=101, lost=0, now=1.5, rtt_s=None)
    assert ledger.owed == 2


def test_owed_packets_older_than_the_last_key_frame_get_fillers() -> None:
    ledger = RepairLedger(HISTORY)
    for n in (1000, 1001, 1050):
        ledger.skipped(n, n - 900, 0.0, owed=True)
    again, fillers = ledger.take_owed(newest=1100, key_frames=[[1040, 1045]])
    assert again == [1050] and fillers == [1000, 1001]
    assert ledger.stats.filled == 2 and ledger.stats.repaired == 1


def test_fillers_only_below_a_key_frame_the_receiver_has_whole() -> None:
    """A receiver stuck behind a hole has not decoded the last key frame sent; if
    that one lacks a packet too, only an older whole one makes the rest stale."""
    ledger = RepairLedger(HISTORY)
    for n in (1000, 1030, 1062):
        ledger.skipped(n, n - 900, 0.0, owed=True)
    again, fillers = ledger.take_owed(newest=1100, key_frames=[[1020, 1025], [1060, 1064]])
    assert fillers == [1000], "the key frame at 1060 lacks 1062: 1020 is the whole one"
    assert again == [1062, 1030], "the last key frame sent first: it is what the receiver shows"
    ledger.skipped(1001, 2000, 0.0, owed=True)
    ledger.resent(1061, 2001, now=1.0)  # awaiting a report: not known whole either
    assert ledger.take_owed(newest=1100, key_frames=[[1060, 1064]]) == ([1001], [])


def test_a_packet_gets_a_bounded_number_of_fillers() -> None:
    """Fillers are watched like resends, but a report cannot say which was lost:
    without a bound, hundreds of them went again report after report."""
    ledger = RepairLedger(HISTORY)
    ledger.resent(1000, 100, now=0.0)
    fills = 0
    for n in range(1, 10):
        ledger.unreported(now=float(n), rtt_s=None)  # none of them arrives
        _again, fillers = ledger.take_owed(newest=1100, key_frames=[[1040, 1045]])
        if not fillers:
            break
        assert fillers == [1000]
        fills += 1
        ledger.resent(1000, 100 + n, now=float(n))
    assert fills == MAX_FILLS and ledger.stats.abandoned == 1


def test_a_hole_given_up_on_still_restarts_the_receiver_at_the_next_key_frame() -> None:
    """Every filler for a packet lost: the ledger gives up on it, but the receiver
    may still wait there (aiortc's waits until 512 packets have passed: viewers
    froze 12-15 s, scenario g1). It still counts as waited for, so the next key
    frame restarts the receiver; until the history has passed it."""
    ledger = RepairLedger(HISTORY)
    ledger.resent(1000, 100, now=0.0)
    for n in range(1, 10):
        ledger.unreported(now=float(n), rtt_s=None)  # none of them arrives
        _again, fillers = ledger.take_owed(newest=1100, key_frames=[[1040, 1045]])
        if not fillers:
            break
        ledger.resent(1000, 100 + n, now=float(n))
    assert ledger.stats.abandoned == 1 and ledger.owed == 0 and ledger.pending == 0
    assert ledger.waits(), "expected the receiver taken to wait at the hole given up on"
    ledger.restart()
    assert not ledger.waits(), "expected nothing waited for after a restart"

    ledger = RepairLedger(HISTORY)  # the same, and no restart: the history passes it
    ledger.resent(1000, 100, now=0.0)
    for n in range(1, 10):
        ledger.unreported(now=float(n), rtt_s=None)
        _again, fillers = ledger.take_owed(newest=1100, key_frames=[[1040, 1045]])
        if not fillers:
            break
        ledger.resent(1000, 100 + n, now=float(n))
    assert ledger.waits()
    ledger.take_owed(newest=1000 + HISTORY, key_frames=[[1040, 1045]])
    assert not ledger.waits(), f"expected the hole forgotten {HISTORY} packets on"


def test_a_filler_goes_again_only_if_it_was_surely_lost() -> None:
    """Once fillers went out the receiver most likely moved past the key frame;
    another filler of a packet it has passed by 100 makes it start over. A
    report that lost some of a batch (which ones, it cannot say) refills none."""
    burst = list(range(1000, 1020))
    ledger = _partly_lost(*burst, lost=20)
    _again, fillers = ledger.take_owed(newest=1300, key_frames=[[1200, 1205]])
    assert fillers == burst
    for n, original in enumerate(burst):
        ledger.resent(original, 120 + n, now=2.0)
    ledger.report(highest=139, lost=25, now=2.5, rtt_s=None)  # 5 of the 20 fillers lost
    assert ledger.take_owed(newest=1300, key_frames=[[1200, 1205]]) == ([], [])
    assert ledger.stats.abandoned == 20
    ledger = _partly_lost(*burst, lost=20)
    ledger.take_owed(newest=1300, key_frames=[[1200, 1205]])
    for n, original in enumerate(burst):
        ledger.resent(original, 120 + n, now=2.0)
    ledger.report(highest=139, lost=40, now=2.5, rtt_s=None)  # every one lost
    assert ledger.take_owed(newest=1300, key_frames=[[1200, 1205]]) == ([], burst)


def test_a_report_without_an_rtx_block_means_no_resend_arrived() -> None:
    ledger = RepairLedger(HISTORY)
    ledger.resent(1000, 100, now=1.0)
    ledger.unreported(now=1.0 + TAIL_GRACE_S / 2, rtt_s=None)
    assert ledger.owed == 0, "too early to tell"
    ledger.unreported(now=1.0 + TAIL_GRACE_S + 0.01, rtt_s=None)
    assert ledger.owed == 1 and ledger.pending == 0


def test_owed_packets_no_longer_in_the_history_expire() -> None:
    ledger = RepairLedger(HISTORY)
    ledger.skipped(100, 5, 0.0, owed=True)
    ledger.skipped(65530, 6, 0.0, owed=True)  # before the wrap
    newest = (100 + HISTORY - HISTORY_MARGIN) % 65536
    again, fillers = ledger.take_owed(newest=newest)
    assert again == [] and fillers == []
    assert ledger.stats.expired == 2
    ledger.skipped(65530, 7, 0.0, owed=True)
    assert ledger.take_owed(newest=20) == ([65530], []), "across the wrap, still held"


def test_sequence_numbers_wrap_in_reports() -> None:
    ledger = RepairLedger(HISTORY)
    ledger.report(highest=65534, lost=0, now=0.0, rtt_s=None)
    ledger.resent(1, 65535, now=1.0)
    ledger.resent(2, 0, now=1.0)
    ledger.report(highest=0, lost=0, now=1.5, rtt_s=None)
    assert ledger.stats.confirmed == 2 and ledger.owed == 0


# -- what the ledger relies on: key frames seen in the pacer, fillers received ------

@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_the_pacer_marks_where_the_last_key_frame_starts(codec: str) -> None:
    packets = encoded_packets(codec)
    frames = {data[4:8] for data in packets if starts_key_frame(data, codec)}
    assert frames == {packets[0][4:8]}, "only the first frame is a key frame"
    assert starts_key_frame(packets[0], codec)
    pacer = Pacer(400_000, codec=codec)
    pacer.ssrcs.add(1)
    pacer.repair = RepairLedger(HISTORY)
    for data in packets:
        pacer.admit(data)
    key_end = max(n for n, data in enumerate(packets) if data[4:8] == packets[0][4:8])
    assert list(pacer.key_frames) == [[0, key_end]], "its first and last packet"
    again = encoded_packets(codec, frames=1)[0]
    key = again[:2] + (len(packets) + 5).to_bytes(2, "big") + (99).to_bytes(4, "big") + again[8:]
    pacer.admit(key)
    assert pacer.key_frames[-1] == [len(packets) + 5, len(packets) + 5]


def test_fillers_are_payloads_the_depayloaders_accept() -> None:
    """aiortc's receiver depayloads them without error, and never to nothing: an
    empty frame handed to libavcodec is its drain signal."""
    _descriptor, h264 = H264PayloadDescriptor.parse(filler_payload("h264"))
    assert h264 == b"\x00\x00\x00\x01" + filler_payload("h264")
    descriptor, vp8 = VpxPayloadDescriptor.parse(filler_payload("vp8"))
    assert not descriptor.partition_start and vp8


def test_what_the_receiver_asks_for_again_is_left_to_its_nack() -> None:
    """A receiver that still asks (a browser every round trip, aiortc at each new
    gap) gets the packet through its NACK; the ledger acts only on what nobody asks
    for any more, or it duplicates resends and spends the budget on them."""
    ledger = RepairLedger(HISTORY)
    ledger.report(highest=99, lost=0, now=0.0, rtt_s=0.01)
    ledger.resent(1000, 100, now=1.0)
    ledger.resent(1001, 101, now=1.0)
    ledger.report(highest=101, lost=1, now=1.5, rtt_s=0.01)
    assert ledger.owed == 2
    assert ledger.take_owed(newest=1100, now=1.6, rtt_s=0.01) == ([], []), "too soon"
    ledger.resent(1000, 102, now=1.7)  # the receiver asked again: its NACK's answer
    assert ledger.owed == 1
    assert ledger.take_owed(newest=1050, now=1.5 + REASK_S + 0.03, rtt_s=0.01) == ([1001], [])


def _partly_lost(*originals: int, lost: int = 1) -> RepairLedger:
    """A ledger whose resends of ``originals`` a report showed ``lost`` of lost."""
    ledger = RepairLedger(HISTORY)
    ledger.report(highest=99, lost=0, now=0.0, rtt_s=None)
    for n, original in enumerate(originals):
        ledger.resent(original, 100 + n, now=1.0)
    ledger.report(highest=99 + len(originals), lost=lost, now=1.5, rtt_s=None)
    return ledger


def test_a_packet_likely_received_before_a_whole_key_frame_gets_nothing() -> None:
    """A report that shows one of ten resends lost cannot say which. Anything sent
    for one that arrived, if the receiver got 100 past it, makes aiortc's receiver
    start over from it; and before a key frame it has whole, the packet is worth
    nothing to show."""
    burst = list(range(1000, 1010))
    ledger = _partly_lost(*burst, lost=1)
    assert ledger.take_owed(newest=1300, key_frames=[[1200, 1205]]) == ([], [])
    assert ledger.stats.abandoned == 10
    # the one lost may still hold the receiver: the next key frame restarts it
    assert ledger.waits(), "expected the holes given up on still taken as waited for"
    assert _partly_lost(*burst, lost=1).take_owed(
        newest=1050, key_frames=[[900, 905]]) == (burst, []), (
        "after the last whole key frame, the receiver not 100 past them: resent in full")
    ledger = _partly_lost(*burst, lost=1)
    assert ledger.take_owed(newest=1300, key_frames=[[900, 905]]) == ([], []), (
        "300 behind the newest, most likely received: a full resend lands as far behind")
    assert ledger.stats.abandoned == 10


def test_a_burst_mostly_lost_gets_fillers() -> None:
    """Fifteen of twenty lost: the receiver lacks one of them (almost surely) and
    waits at the oldest it lacks, so none is 100 behind where it got to."""
    burst = list(range(1000, 1020))
    again, fillers = _partly_lost(*burst, lost=15).take_owed(
        newest=1300, key_frames=[[1200, 1205]])
    assert fillers == burst and again == [], (again, fillers)


def test_a_packet_maybe_lost_is_filled_just_behind_one_surely_lost() -> None:
    """The receiver waits at the surely lost packet, so it is not past one
    shortly before it: a filler there cannot land 100 behind where it got to."""
    lost = 1000 + 2 * MISORDER_SAFE
    far, near = 1000, lost - 5
    ledger = _partly_lost(far, near)  # one of the two
    ledger.skipped(lost, 102, now=1.5, owed=True)  # its NACK unanswered: surely lost
    again, fillers = ledger.take_owed(newest=lost + 100, key_frames=[[lost + 10, lost + 20]])
    assert fillers == [near, lost], f"expected {near}, 5 before {lost}: got {fillers}"
    assert again == [] and ledger.stats.abandoned == 1, (
        f"{far} lies {2 * MISORDER_SAFE} before {lost}, with nothing lacked before it: "
        f"the receiver may be past it; got {again}, abandoned {ledger.stats.abandoned}")
    ledger = _partly_lost(far)
    ledger.resent(far, 101, now=3.0)
    ledger.report(highest=101, lost=2, now=3.5, rtt_s=None)  # the one resent, lost
    assert ledger.take_owed(newest=1300, key_frames=[[1240, 1245]]) == ([], [far])


def test_a_key_frame_is_asked_for_when_more_is_owed_than_the_budget_resends() -> None:
    owed = list(range(1000, 1040))
    assert key_frame_would_help(owed, [[900, 910]], affordable=20)
    assert not key_frame_would_help(owed, [[900, 910]], affordable=40), "within the budget"
    assert not key_frame_would_help(owed, [[900, 910], [1050, 1060]], affordable=20), (
        "a key frame after the losses is on its way")
    assert key_frame_would_help(owed, [], affordable=20), "none sent yet"
    wrapped = list(range(65530, 65536)) + list(range(0, 30))
    assert not key_frame_would_help(wrapped, [[10, 20]], affordable=20)
    assert key_frame_would_help(wrapped, [[65500, 65510]], affordable=20)
