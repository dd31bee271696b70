"""A receiver stuck behind an old hole restarts at a key frame sent 512 numbers on
(rtc/restart.py): aiortc's own jitter buffer, NACK generator and decoder on the
receiving side; the pacer, the repair ledger and the history renumbering on the
sending side."""

from __future__ import annotations

import types

import aiortc.rtcrtpsender
import pytest
from aiortc.codecs import depayload, get_decoder
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import RtpPacket, wrap_rtx
from support.encoded import MIME, encoded_packets

from glimpse_edge.rtc import compat
from glimpse_edge.rtc.bandwidth import ReportBlock, arrivals, without_skipped
from glimpse_edge.rtc.pacer import Pacer, starts_key_frame
from glimpse_edge.rtc.repair import RepairLedger
from glimpse_edge.rtc.restart import FORGET_AFTER, JUMP, SequenceShift

FIRST = 65300  # aiortc's numbers wrap during the stream
SSRC, RTX_SSRC = 1, 2


@pytest.fixture(autouse=True)
def history_sized(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiortc's senders keep the history the agent sizes at start-up (rtc/compat.py)."""
    monkeypatch.setattr(aiortc.rtcrtpsender, "RTP_HISTORY_SIZE", compat.RTP_HISTORY)


class Receiver:
    """aiortc's receiving side of one video stream, as rtcrtpreceiver.py wires it."""

    def __init__(self, codec: str) -> None:
        self.codec = RTCRtpCodecParameters(mimeType=MIME[codec], clockRate=90000,
                                           payloadType=96)
        self.buffer = JitterBuffer(capacity=512, is_video=True)
        self.nacks = NackGenerator()
        self.decoder = get_decoder(self.codec)
        self.shown: list[int] = []  # RTP timestamps of the frames decoded
        self.nacked: list[int] = []  # its last NACK

    def receive(self, data: bytes) -> None:
        packet = RtpPacket.parse(data)
        if self.nacks.add(packet):
            self.nacked = sorted(self.nacks.missing)
        packet._data = depayload(self.codec, packet.payload)  # type: ignore[attr-defined]
        _pli, frame = self.buffer.add(packet)
        if frame is not None and self.decoder.decode(frame):
            self.shown.append(frame.timestamp)


def sender(codec: str) -> tuple[Pacer, dict[int, RtpPacket]]:
    """A pacer as rtc/feedback.py sets one up, its history renumbered as
    rtc/compat.py's ``pace_rtp`` does (the sender stands in for aiortc's)."""
    history: dict[int, RtpPacket] = {}
    stand_in = types.SimpleNamespace(_RTCRtpSender__rtp_history=history)
    pacer = Pacer(2_000_000, codec=codec, clock=lambda: 0.0)
    pacer.ssrcs.add(SSRC)
    pacer.rtx_ssrcs.add(RTX_SSRC)
    pacer.repair = RepairLedger(compat.RTP_HISTORY)
    pacer.renumber = lambda original, sequence: compat.renumber_sent(stand_in, original,
                                                                     sequence)
    return pacer, history


def send(pacer: Pacer, history: dict[int, RtpPacket], data: bytes) -> bytes:
    """What aiortc's sender task does with one new packet: file it, hand it over."""
    packet = RtpPacket.parse(data)
    history[packet.sequence_number % compat.RTP_HISTORY] = packet
    return pacer.renumbered(data)


@pytest.mark.parametrize("codec", ["h264", "vp8"])
@pytest.mark.parametrize("restart", [True, False])
def test_a_receiver_stuck_behind_a_hole_shows_the_key_frame_sent_after_a_skip(
        codec: str, restart: bool) -> None:
    packets = encoded_packets(codec, frames=8, key_frames=(0, 5), first_sequence=FIRST)
    stamps = _timestamps(packets)
    key = next(p for p in packets if int.from_bytes(p[4:8], "big") == stamps[5])
    hole = next(n for n, p in enumerate(packets) if int.from_bytes(p[4:8], "big") == stamps[2])
    pacer, history = sender(codec)
    receiver = Receiver(codec)
    sent: list[bytes] = []
    for n, data in enumerate(packets):
        if data is key:
            # the hole's resend is watched, not yet reported: the receiver may wait
            pacer.repair.resent(RtpPacket.parse(packets[hole]).sequence_number, 7, 0.0)
            pacer.restarts_allowed = restart
        out = send(pacer, history, data)
        sent.append(out)
        if n != hole:
            receiver.receive(out)
    shown = receiver.shown
    key_ts = stamps[5]
    if not restart:
        assert key_ts not in shown, "without a restart the hole blocks every later frame"
        assert pacer.shift.restarts == 0
        return
    assert pacer.shift.restarts == 1
    assert key_ts in shown and stamps[6] in shown, (
        f"expected the key frame ({key_ts}) and the frame after it decoded; decoded {shown}")
    first_after = next(n for n, p in enumerate(packets) if p is key)
    numbers = [int.from_bytes(p[2:4], "big") for p in sent]
    assert (numbers[first_after] - numbers[first_after - 1]) % 65536 == JUMP + 1
    assert all((b - a) % 65536 == 1 for a, b in zip(numbers[first_after:],
                                                    numbers[first_after + 1:], strict=False))
    # what the receiver NACKs after the skip is only skipped numbers: nothing
    # in the history answers them; the packets sent after it are found under
    # their new numbers (a NACK for them is answered)
    skipped = {(numbers[first_after - 1] + k) % 65536 for k in range(1, JUMP + 1)}
    assert receiver.nacked and set(receiver.nacked) <= skipped, receiver.nacked
    for s in receiver.nacked:
        entry = history.get(s % compat.RTP_HISTORY)
        assert entry is None or entry.sequence_number != s
    for s in numbers[first_after:]:
        assert history[s % compat.RTP_HISTORY].sequence_number == s


def _timestamps(packets: list[bytes]) -> list[int]:
    out: list[int] = []
    for p in packets:
        ts = int.from_bytes(p[4:8], "big")
        if not out or out[-1] != ts:
            out.append(ts)
    return out


def test_no_restart_while_the_receiver_waits_for_nothing() -> None:
    packets = encoded_packets("vp8", frames=4, key_frames=(0, 2))
    pacer, history = sender("vp8")
    pacer.restarts_allowed = True
    sent = [send(pacer, history, p) for p in packets]
    assert sent == packets and pacer.shift.restarts == 0


def test_a_caps_onset_restarts_at_the_next_key_frame_once() -> None:
    """At a cap's onset the receiver lost a burst before any report said what:
    the next key frame restarts it, though the repair waits for nothing and
    restarts are not allowed yet (no report since the uplink limits), and
    only that one."""
    packets = encoded_packets("vp8", frames=6, key_frames=(0, 2, 4))
    pacer, history = sender("vp8")
    onsets = 3
    pacer.follow_onsets(lambda: onsets)
    starts = [n for n, p in enumerate(packets) if n and p[4:8] != packets[n - 1][4:8]
              and starts_key_frame(p, "vp8")]
    sent = [send(pacer, history, p) for p in packets[:starts[0] - 1]]
    assert pacer.shift.restarts == 0, "onsets before it followed them are not news"
    onsets += 1
    sent += [send(pacer, history, p) for p in packets[starts[0] - 1:]]
    assert pacer.shift.restarts == 1
    numbers = [int.from_bytes(p[2:4], "big") for p in sent]
    assert (numbers[starts[0]] - numbers[starts[0] - 1]) % 65536 == JUMP + 1, (
        "the first key frame after it skips")
    assert (numbers[starts[1]] - numbers[starts[1] - 1]) % 65536 == 1, "the next does not"


def test_resends_of_packets_sent_before_a_restart_are_refused() -> None:
    """One arriving after the key frame would lie 512 behind the receiver's new start:
    aiortc takes it for a new stream and waits again. Not owed either."""
    packets = encoded_packets("vp8", frames=4, key_frames=(0, 2))
    pacer, history = sender("vp8")
    ledger = pacer.repair
    assert ledger is not None
    pacer.restarts_allowed = True
    key = next(n for n, p in enumerate(packets) if n and p[4:8] != packets[n - 1][4:8]
               and starts_key_frame(p, "vp8"))
    sent = [send(pacer, history, p) for p in packets[:key]]
    ledger.resent(RtpPacket.parse(packets[1]).sequence_number, 0, 0.0)
    sent += [send(pacer, history, p) for p in packets[key:]]
    assert pacer.shift.restarts == 1 and not ledger.waits()
    before = RtpPacket.parse(sent[1])
    after = RtpPacket.parse(sent[-1])
    rtx_sequence = 1
    for packet, refused in ((before, True), (after, False)):
        rtx = wrap_rtx(packet, payload_type=97, sequence_number=rtx_sequence, ssrc=RTX_SSRC)
        rtx_sequence += 1
        assert (pacer.admit(rtx.serialize()) is None) is refused, packet.sequence_number
    assert pacer.stats.resends_refused == 1
    # the first report owes all it covers: the resend sent after the restart,
    # not the one watched before it
    ledger.report(2, 1, 1.0, None)
    assert ledger.owed == 1 and ledger.stats.cleared == 1


def test_a_restart_clears_what_is_owed() -> None:
    ledger = RepairLedger(compat.RTP_HISTORY)
    ledger.skipped(100, 1, 0.0, owed=True)
    assert ledger.owed == 1 and ledger.waits()
    ledger.restart()
    assert ledger.owed == 0 and not ledger.waits() and ledger.stats.cleared == 1


def test_the_skipped_numbers_are_taken_out_of_the_loss_a_report_shows() -> None:
    shift = SequenceShift()
    start = shift.restart(1000)
    assert start == 1000 + JUMP
    before = ReportBlock(0.0, 10, 999, 0, 0, 0)
    raw = ReportBlock(JUMP / (JUMP + 101) + 0.01, 10 + JUMP + 2, 1000 + JUMP + 100, 0, 0, 0)
    newly = shift.passed(raw.highest % 65536)
    assert newly == JUMP and shift.passed(raw.highest % 65536) == 0, "counted once"
    block = without_skipped(raw, before, shift.reported, newly)
    assert block.loss == pytest.approx(2 / 101)
    assert arrivals(before, block) == arrivals(before, raw) == 99
    later = ReportBlock(0.0, 12 + JUMP, 1300 + JUMP, 0, 0, 0)
    assert without_skipped(later, block, shift.reported, 0).packets_lost == 12
    assert without_skipped(raw, None, shift.reported, newly).loss == 0.0
    # libwebrtc's receiver takes the jump for a restarted stream: its loss never
    # counts the skipped numbers, and only its highest number is corrected
    webrtc = ReportBlock(0.01, 10 + 2, 1000 + JUMP + 100, 0, 0, 0)
    block = without_skipped(webrtc, before, shift.reported, newly, counted_lost=False)
    assert (block.loss, block.packets_lost) == (0.01, 12)
    assert arrivals(before, block) == 99


def test_a_restart_is_forgotten_once_nothing_before_it_can_be_resent() -> None:
    shift = SequenceShift()
    start = shift.restart(65500)
    assert shift.before_restart((start - 3) % 65536) and not shift.before_restart(start)
    shift.sent((start + FORGET_AFTER + 1) % 65536)
    assert not shift.before_restart((start - 3) % 65536)


def test_the_skip_keeps_a_packets_place_in_the_history() -> None:
    assert JUMP % compat.RTP_HISTORY == 0
    stand_in = types.SimpleNamespace(_RTCRtpSender__rtp_history={})
    with pytest.raises(ValueError):
        compat.renumber_sent(stand_in, 10, 11)
