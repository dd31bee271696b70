"""rtc/compat.py: the start-up check of aiortc's, aioice's and trio-websocket's internals.

The check must pass on the installed (pinned) versions, and against a
library that lacks something it must fail when the agent starts, with a
message naming the library, the version found, the version tested and what
is missing.
"""

from __future__ import annotations

import asyncio
import threading
import tomllib
from pathlib import Path
from typing import Any

import aioice.ice
import aiortc.rtcrtpsender
import pytest
import trio_websocket

from glimpse_edge.fatal import Fatal, find_fatal
from glimpse_edge.rtc import compat
from glimpse_edge.rtc.aio import open_aio_loop, spawn_aio_threadsafe

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_libraries_have_everything_compat_relies_on() -> None:
    assert compat.problems() == {}
    compat.check()
    for library, tested in compat.TESTED.items():
        assert compat.installed_version(library) == tested, (
            f"{library}: installed {compat.installed_version(library)}, tested {tested}: "
            "run the suite on the new version, then update compat.TESTED and the pin")


def test_pyproject_pins_the_tested_versions() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for library, tested in compat.TESTED.items():
        assert f"{library}=={tested}" in deps, (library, deps)


def test_every_compat_function_is_checked() -> None:
    """A function reaching into a library's internals is covered by the start-up check."""
    checked = {need.used_for for need in compat.NEEDS}
    patches = {"hook_rtcp", "hook_keyframe_request", "sender_ssrc", "last_sender_report",
               "selected_candidates", "guard_ice_connect", "guard_connect_task",
               "websocket_stream", "pace_rtp", "size_rtp_history", "tap_encoded_video",
               "send_pli", "cap_remb", "resend", "rtx_ssrc", "renumber_sent", "sends_rtx"}
    assert patches <= set(compat.__all__)
    assert checked == patches


def test_a_module_constant_that_became_something_else_is_named() -> None:
    need = compat.Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "RTP_HISTORY_SIZE",
                       "global", "size_rtp_history")
    assert compat.problems((need,)) == {}
    gone = compat.Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "RTP_HISTORY_LENGTH",
                       "global", "size_rtp_history")
    assert compat.problems((gone,)) == {"aiortc": [
        "aiortc.rtcrtpsender.RTP_HISTORY_LENGTH is no longer a module constant "
        "(needed by size_rtp_history)"]}


def test_the_rtp_history_holds_what_a_paced_link_needs() -> None:
    import aiortc.rtcrtpsender as sender_module

    compat.install()
    assert sender_module.RTP_HISTORY_SIZE == compat.RTP_HISTORY
    assert 65536 % compat.RTP_HISTORY == 0, "the ring must survive the sequence number's wrap"
    with pytest.raises(ValueError, match="divide 65536"):
        compat.size_rtp_history(500)


def _sender_without_keyframe() -> type:
    """A stand-in RTCRtpSender from a release that renamed ``_send_keyframe``."""

    class RTCRtpSender:  # its own name: private attributes are mangled with it
        def __init__(self) -> None:
            self._ssrc = 1
            self.__lsr = None
            self.__lsr_time = None

        async def _handle_rtcp_packet(self, packet: Any) -> None:
            self._request_keyframe()

        def _request_keyframe(self) -> None:
            print(self.__lsr, self.__lsr_time)

    return RTCRtpSender


def _incompatible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiortc.rtcrtpsender, "RTCRtpSender", _sender_without_keyframe())
    monkeypatch.setattr(compat, "installed_version",
                        lambda library: "1.99.0" if library == "aiortc" else "0")


def test_a_missing_attribute_fails_with_library_versions_and_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _incompatible(monkeypatch)
    with pytest.raises(compat.IncompatibleLibrary) as caught:
        compat.check()
    message = str(caught.value)
    assert message.startswith("aiortc 1.99.0 (glimpse-edge is tested with aiortc 1.16.0)"), message
    assert "RTCRtpSender._send_keyframe is missing (needed by hook_keyframe_request)" in message
    assert "RTCRtpSender._handle_rtcp_packet no longer uses _send_keyframe" in message
    assert "pip install 'aiortc==1.16.0'" in message
    # what the stand-in still has is not reported
    assert "uses _ssrc " not in message and "__lsr" not in message, message
    assert "aioice" not in message and "trio-websocket" not in message
    assert isinstance(caught.value, Fatal)  # glimpse-edge run exits, never retries


def test_a_changed_signature_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    class Connection:
        def __init__(self) -> None:
            self._nominated: dict[int, Any] = {}

        def connect(self, timeout: float) -> None:  # no longer a coroutine, another shape
            pass

        async def close(self) -> None:
            self._closing = True

    monkeypatch.setattr(aioice.ice, "Connection", Connection)
    found = compat.problems()
    assert list(found) == ["aioice"]
    assert found["aioice"] == [
        "Connection.connect is no longer a coroutine function (needed by guard_ice_connect)"]


def test_a_missing_class_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(trio_websocket, "WebSocketConnection")
    assert compat.problems() == {"trio-websocket": [
        "trio_websocket.WebSocketConnection is missing (needed by websocket_stream)"]}


async def test_the_agent_stops_at_start_on_an_incompatible_library(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """open_aio_loop (the agent's first step) raises before any loop or peer exists."""
    _incompatible(monkeypatch)
    entered = False
    with pytest.raises(compat.IncompatibleLibrary) as caught:
        async with open_aio_loop():
            entered = True
    assert not entered
    assert find_fatal(caught.value) is caught.value


class _Sender:
    """What the hooks touch of an aiortc sender: its RTCP handler and key-frame flag."""

    def __init__(self) -> None:
        self.handled: list[str] = []
        self.flagged = 0

    async def _handle_rtcp_packet(self, packet: str) -> None:
        if packet == "aiortc-fails":
            raise ValueError("aiortc failed")
        self.handled.append(packet)
        if packet == "pli":
            self._send_keyframe()

    def _send_keyframe(self) -> None:
        self.flagged += 1


def test_the_rtcp_hook_sees_first_may_withhold_and_never_raises() -> None:
    sender = _Sender()
    errors: list[str] = []
    seen: list[str] = []

    def on_packet(packet: str) -> bool:
        seen.append(packet)
        if packet == "we-fail":
            raise RuntimeError("our bug")
        return packet != "nack"  # withheld from aiortc

    requests: list[str] = []
    compat.hook_rtcp(sender, on_packet, lambda exc: errors.append(str(exc)))
    compat.hook_keyframe_request(sender, lambda: requests.append("idr"),
                                 lambda exc: errors.append(str(exc)))

    async def feed() -> None:
        for packet in ("rr", "nack", "we-fail", "aiortc-fails", "pli"):
            await sender._handle_rtcp_packet(packet)

    asyncio.run(feed())
    assert seen == ["rr", "nack", "we-fail", "aiortc-fails", "pli"]
    assert sender.handled == ["rr", "we-fail", "pli"]  # ours failing still lets aiortc see it
    assert errors == ["our bug", "aiortc failed"]
    # aiortc's own flag is still set (its encoder reads it) and ours is asked too
    assert sender.flagged == 1 and requests == ["idr"]


def test_the_keyframe_hook_never_raises() -> None:
    sender = _Sender()
    errors: list[Exception] = []

    def broken() -> None:
        raise RuntimeError("encoder gone")

    compat.hook_keyframe_request(sender, broken, errors.append)
    sender._send_keyframe()
    assert sender.flagged == 1 and [str(e) for e in errors] == ["encoder gone"]


def test_private_reads_of_a_sender() -> None:
    class RTCRtpSender:  # the real name: aiortc's private attributes are mangled with it
        def __init__(self) -> None:
            self._ssrc = 1234
            self.__lsr = 0x00010000
            self.__lsr_time = 1000.0

    assert compat.sender_ssrc(RTCRtpSender()) == 1234
    assert compat.last_sender_report(RTCRtpSender()) == (0x00010000, 1000.0)
    assert compat.last_sender_report(object()) == (None, None)
    assert compat.selected_candidates(object()) == {
        "ice_local": None, "ice_remote": None, "ice_protocol": None}


class _Transport:
    """What an RTCRtpSender asks of its DTLS transport: registration and _send_rtp."""

    state = "connected"

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def _register_rtp_sender(self, sender: object, parameters: object) -> None:
        pass

    def _unregister_rtp_sender(self, sender: object) -> None:
        pass

    async def _send_rtp(self, data: bytes) -> None:
        self.sent.append(data)


def test_a_nack_for_a_packet_a_paced_key_frame_ago_is_answered_from_the_history() -> None:
    """aiortc answers NACKs from its history: 128 packets, too short once paced (rtc/pacer.py);
    with compat's 512 a packet 400 back is still resent."""
    import asyncio
    import os
    from fractions import Fraction

    import av
    from aiortc import RTCRtpSender
    from aiortc.mediastreams import MediaStreamTrack
    from aiortc.rtcrtpparameters import (
        RTCRtcpParameters,
        RTCRtpCodecParameters,
        RTCRtpSendParameters,
    )
    from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRtpfbPacket, is_rtcp

    frames = 15

    class KeyFrames(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.n = 0
            self.all_sent = asyncio.Event()

        async def recv(self) -> av.Packet:
            if self.n >= frames:  # asked for the next: every frame before is sent
                self.all_sent.set()
                await asyncio.Event().wait()
            packet = av.Packet(b"\0\0\0\1\x65" + os.urandom(60_000))  # ~46 FU-A packets
            packet.pts, packet.time_base = self.n * 3000, Fraction(1, 90_000)
            self.n += 1
            return packet

    async def run() -> tuple[list[int], list[int]]:
        compat.install()
        transport = _Transport()
        track = KeyFrames()
        sender = RTCRtpSender(track, transport)  # type: ignore[arg-type]
        await sender.send(RTCRtpSendParameters(
            codecs=[RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000,
                                          payloadType=102)],
            rtcp=RTCRtcpParameters(cname="test"), muxId="0"))
        await asyncio.wait_for(track.all_sent.wait(), timeout=10)
        sent = [int.from_bytes(d[2:4], "big") for d in transport.sent if not is_rtcp(d)]
        before = len(transport.sent)
        lost = [sent[-400], sent[-600]]  # within 512 packets, and beyond
        await sender._handle_rtcp_packet(RtcpRtpfbPacket(
            fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=compat.sender_ssrc(sender), lost=lost))
        resent = [int.from_bytes(d[2:4], "big") for d in transport.sent[before:]
                  if not is_rtcp(d)]
        await sender.stop()
        return lost, resent

    lost, resent = asyncio.run(run())
    assert len(resent) == 1 and resent[0] == lost[0], (
        f"expected only {lost[0]} (400 packets back) to be resent, not {lost[1]} (600 back); "
        f"resent {resent}")


def test_a_pli_goes_to_the_newest_stream_and_none_before_any() -> None:
    class Source:
        def __init__(self, source: int, timestamp: float) -> None:
            self.source, self.timestamp = source, timestamp

    class Receiver:
        def __init__(self, sources: list[Source]) -> None:
            self.sources = sources
            self.plis: list[int] = []

        def getSynchronizationSources(self) -> list[Source]:
            return self.sources

        async def _send_rtcp_pli(self, media_ssrc: int) -> None:
            self.plis.append(media_ssrc)

    quiet = Receiver([])
    assert asyncio.run(compat.send_pli(quiet)) is False and quiet.plis == []
    heard = Receiver([Source(111, 1.0), Source(222, 3.0), Source(333, 2.0)])
    assert asyncio.run(compat.send_pli(heard)) is True and heard.plis == [222]


def test_a_pli_crosses_from_a_thread_to_the_loop() -> None:
    async def run() -> int:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        ran_on: list[int] = []

        async def on_loop() -> None:
            ran_on.append(threading.get_ident())
            done.set()

        thread = threading.Thread(target=spawn_aio_threadsafe, args=(loop, on_loop))
        thread.start()
        await asyncio.wait_for(done.wait(), 5)
        thread.join()
        return ran_on[0]

    assert asyncio.run(run()) == threading.get_ident()  # the loop's thread, not the caller's
    closed = asyncio.new_event_loop()
    closed.close()

    async def never() -> None:
        raise AssertionError("must not run")

    assert spawn_aio_threadsafe(closed, never) is False
