"""Every private part of aiortc, aioice and trio-websocket the agent uses, in one place.

None of these libraries offers what the agent needs through public API: a
hook for the RTCP a sender receives, the NTP time of its last sender report,
the ICE candidate pair in use, a connect that stops when its connection was
closed, the TCP stream under a WebSocket. So the agent reaches into their
internals, and does so only here: each function below says what the library
does, why we step in, and what breaks without it.

Internals change without notice between releases. Two guards:

* the versions are pinned in ``pyproject.toml`` to the ones tested
  (:data:`TESTED`; docs/decisions.md, "aiortc behind one module");
* :func:`check` verifies at start-up (:func:`install`, run by
  :func:`~glimpse_edge.rtc.aio.open_aio_loop` before anything else) that
  every attribute, method and call these functions rely on is there, with
  the signature they assume. A mismatch raises :class:`IncompatibleLibrary`
  naming the library, the version found, the version tested and what is
  missing, when the agent starts, instead of a hook that silently stops
  firing, or an AttributeError deep inside one peer's task hours later.

Nothing here imports the libraries at module level: signaling imports this
module without pulling in the WebRTC stack.
"""

from __future__ import annotations

import copy
import inspect
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any, Final, Literal

import structlog

from ..fatal import Fatal

if TYPE_CHECKING:
    from .pacer import Pacer

log = structlog.get_logger(__name__)

__all__ = [
    "AUDIO_LEVEL_NEEDS",
    "NEEDS",
    "TESTED",
    "IncompatibleLibrary",
    "Need",
    "cap_remb",
    "check",
    "guard_connect_task",
    "guard_ice_connect",
    "hook_audio_level",
    "hook_keyframe_request",
    "hook_rtcp",
    "install",
    "installed_version",
    "last_sender_report",
    "pace_rtp",
    "problems",
    "renumber_sent",
    "resend",
    "rtx_ssrc",
    "selected_candidates",
    "send_pli",
    "sender_ssrc",
    "sends_rtx",
    "size_rtp_history",
    "tap_encoded_video",
    "websocket_stream",
]

# The versions the agent is tested with; pyproject.toml pins the same ones
# (tests/test_compat.py checks that they agree).
TESTED: Final[dict[str, str]] = {
    "aiortc": "1.16.0",
    "aioice": "0.13.0",
    "trio-websocket": "0.12.2",
}


class IncompatibleLibrary(Fatal):
    """An installed library lacks an internal the agent relies on: no restart cures it.

    A :class:`~glimpse_edge.fatal.Fatal`: ``glimpse-edge run`` prints it and
    exits (70) rather than starting with hooks that would not work.
    """


# -- what is relied on ----------------------------------------------------------

Kind = Literal["coroutine", "function", "attribute", "used_by", "global"]


@dataclass(frozen=True)
class Need:
    """One internal of one library that a function of this module relies on.

    ``owner`` is ``"module:Class"``. Kinds:

    * ``coroutine``/``function``: ``Class.attribute`` is an async/plain
      method whose parameters are named ``params`` (we call it or replace it
      with a function of the same shape);
    * ``attribute``: ``Class.attribute`` exists (a property, a method);
    * ``used_by``: the code of ``Class.<in_method>`` names ``attribute`` (it
      sets it, reads it or calls it): instance attributes set in ``__init__``,
      and the calls that make a replaced method actually run;
    * ``global``: the module of ``owner`` has an int ``attribute`` (a
      module constant we change).
    """

    library: str  # the distribution, as pip names it
    owner: str
    attribute: str
    kind: Kind
    used_for: str  # the function of this module that relies on it
    params: tuple[str, ...] = ()
    in_method: str = ""


NEEDS: Final[tuple[Need, ...]] = (
    # hook_rtcp
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_handle_rtcp_packet", "coroutine",
         "hook_rtcp", params=("self", "packet")),
    Need("aiortc", "aiortc.rtcdtlstransport:RTCDtlsTransport", "_handle_rtcp_packet",
         "used_by", "hook_rtcp", in_method="_handle_rtcp_data"),
    # hook_keyframe_request
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_send_keyframe", "function",
         "hook_keyframe_request", params=("self",)),
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_send_keyframe", "used_by",
         "hook_keyframe_request", in_method="_handle_rtcp_packet"),
    # sender_ssrc, last_sender_report
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_ssrc", "used_by", "sender_ssrc",
         in_method="__init__"),
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_rtx_ssrc", "used_by", "pace_rtp",
         in_method="_retransmit"),
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_RTCRtpSender__lsr", "used_by",
         "last_sender_report", in_method="__init__"),
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_RTCRtpSender__lsr_time", "used_by",
         "last_sender_report", in_method="__init__"),
    # selected_candidates
    Need("aiortc", "aiortc.rtcdtlstransport:RTCDtlsTransport", "transport", "attribute",
         "selected_candidates"),
    Need("aiortc", "aiortc.rtcicetransport:RTCIceTransport", "_connection", "used_by",
         "selected_candidates", in_method="__init__"),
    Need("aioice", "aioice.ice:Connection", "_nominated", "used_by", "selected_candidates",
         in_method="__init__"),
    Need("aioice", "aioice.ice:CandidatePair", "local_candidate", "attribute",
         "selected_candidates"),
    Need("aioice", "aioice.ice:CandidatePair", "remote_candidate", "used_by",
         "selected_candidates", in_method="__init__"),
    # guard_ice_connect
    Need("aioice", "aioice.ice:Connection", "connect", "coroutine", "guard_ice_connect",
         params=("self",)),
    Need("aioice", "aioice.ice:Connection", "close", "coroutine", "guard_ice_connect",
         params=("self",)),
    Need("aioice", "aioice.ice:Connection", "_closing", "used_by", "guard_ice_connect",
         in_method="close"),
    # guard_connect_task
    Need("aiortc", "aiortc.rtcpeerconnection:RTCPeerConnection", "_RTCPeerConnection__connect",
         "coroutine", "guard_connect_task", params=("self",)),
    Need("aiortc", "aiortc.rtcpeerconnection:RTCPeerConnection", "_RTCPeerConnection__isClosed",
         "used_by", "guard_connect_task", in_method="close"),
    # pace_rtp
    Need("aiortc", "aiortc.rtcdtlstransport:RTCDtlsTransport", "_send_rtp", "coroutine",
         "pace_rtp", params=("self", "data")),
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_send_rtp", "used_by", "pace_rtp",
         in_method="_run_rtp"),
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "transport", "attribute", "pace_rtp"),
    # rtx_ssrc, resend
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_RTCRtpSender__rtp_history", "used_by",
         "resend", in_method="__init__"),
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_RTCRtpSender__rtp_history", "used_by",
         "resend", in_method="_retransmit"),
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_rtx_ssrc", "used_by", "rtx_ssrc",
         in_method="__init__"),
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_retransmit", "coroutine", "resend",
         params=("self", "sequence_number")),
    # sends_rtx
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_RTCRtpSender__rtx_payload_type",
         "used_by", "sends_rtx", in_method="__init__"),
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_RTCRtpSender__rtx_payload_type",
         "used_by", "sends_rtx", in_method="_retransmit"),
    # renumber_sent
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_RTCRtpSender__rtp_history", "used_by",
         "renumber_sent", in_method="_run_rtp"),
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "_RTCRtpSender__rtp_history", "used_by",
         "renumber_sent", in_method="_retransmit"),
    # size_rtp_history
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "RTP_HISTORY_SIZE", "global",
         "size_rtp_history"),
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "RTP_HISTORY_SIZE", "used_by",
         "size_rtp_history", in_method="_run_rtp"),
    Need("aiortc", "aiortc.rtcrtpsender:RTCRtpSender", "RTP_HISTORY_SIZE", "used_by",
         "size_rtp_history", in_method="_retransmit"),
    # tap_encoded_video
    Need("aiortc", "aiortc.rtcrtpreceiver:RTCRtpReceiver", "_RTCRtpReceiver__decoder_queue",
         "used_by", "tap_encoded_video", in_method="__init__"),
    Need("aiortc", "aiortc.rtcrtpreceiver:RTCRtpReceiver", "_RTCRtpReceiver__decoder_queue",
         "used_by", "tap_encoded_video", in_method="_handle_rtp_packet"),
    Need("aiortc", "aiortc.rtcrtpreceiver:RTCRtpReceiver", "_RTCRtpReceiver__decoder_queue",
         "used_by", "tap_encoded_video", in_method="_RTCRtpReceiver__stop_decoder"),
    # send_pli
    Need("aiortc", "aiortc.rtcrtpreceiver:RTCRtpReceiver", "_send_rtcp_pli", "coroutine",
         "send_pli", params=("self", "media_ssrc")),
    Need("aiortc", "aiortc.rtcrtpreceiver:RTCRtpReceiver", "getSynchronizationSources",
         "attribute", "send_pli"),
    # cap_remb
    Need("aiortc", "aiortc.rtcrtpreceiver:RTCRtpReceiver",
         "_RTCRtpReceiver__remote_bitrate_estimator", "used_by", "cap_remb",
         in_method="__init__"),
    Need("aiortc", "aiortc.rtcrtpreceiver:RTCRtpReceiver", "add", "used_by", "cap_remb",
         in_method="_handle_rtp_packet"),
    Need("aiortc", "aiortc.rtcrtpreceiver:RTCRtpReceiver", "pack_remb_fci", "used_by",
         "cap_remb", in_method="_handle_rtp_packet"),
    Need("aiortc", "aiortc.rate:RemoteBitrateEstimator", "add", "function", "cap_remb",
         params=("self", "arrival_time_ms", "abs_send_time", "payload_size", "ssrc")),
    # websocket_stream
    Need("trio-websocket", "trio_websocket:WebSocketConnection", "_stream", "used_by",
         "websocket_stream", in_method="__init__"),
)


def installed_version(library: str) -> str:
    """The installed version of a distribution, as its metadata says."""
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return "not installed"


# What the display's active speaker reads (hook_audio_level). Checked when a
# display first hooks a receiver (rtc/levels.py), not at start-up: without it
# the call goes on with no highlight.
AUDIO_LEVEL_NEEDS: Final[tuple[Need, ...]] = (
    Need("aiortc", "aiortc.rtcrtpreceiver:RTCRtpReceiver", "_handle_rtp_packet", "coroutine",
         "hook_audio_level", params=("self", "packet", "arrival_time_ms")),
    Need("aiortc", "aiortc.rtcdtlstransport:RTCDtlsTransport", "_handle_rtp_packet", "used_by",
         "hook_audio_level", in_method="_handle_rtp_data"),
    Need("aiortc", "aiortc.rtp:HeaderExtensionsMap", "audio_level", "used_by",
         "hook_audio_level", in_method="get"),
    Need("aiortc", "aiortc.rtp:HeaderExtensions", "audio_level", "attribute",
         "hook_audio_level"),
)

def _names_in(code: types.CodeType) -> Iterator[str]:
    """Attribute and global names a function's code uses, nested functions included."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names_in(const)


def _problem(need: Need) -> str | None:
    """What is wrong with one need, or None."""
    module_name, _, class_name = need.owner.partition(":")
    try:
        module = import_module(module_name)
        owner = getattr(module, class_name)
    except (ImportError, AttributeError):
        return f"{need.owner.replace(':', '.')} is missing (needed by {need.used_for})"
    if need.kind == "global":
        if not isinstance(getattr(module, need.attribute, None), int):
            return (f"{module_name}.{need.attribute} is no longer a module constant "
                    f"(needed by {need.used_for})")
        return None
    where = f"{class_name}.{need.attribute}"
    if need.kind == "used_by":
        method = getattr(owner, need.in_method, None)
        code = getattr(method, "__code__", None)
        if code is None:
            return f"{class_name}.{need.in_method} is missing (needed by {need.used_for})"
        if need.attribute not in set(_names_in(code)):
            return (f"{class_name}.{need.in_method} no longer uses {need.attribute} "
                    f"(needed by {need.used_for})")
        return None
    if not hasattr(owner, need.attribute):
        return f"{where} is missing (needed by {need.used_for})"
    if need.kind == "attribute":
        return None
    value = getattr(owner, need.attribute)
    is_coroutine = inspect.iscoroutinefunction(value)
    if need.kind == "coroutine" and not is_coroutine:
        return f"{where} is no longer a coroutine function (needed by {need.used_for})"
    if need.kind == "function" and (is_coroutine or not callable(value)):
        return f"{where} is no longer a plain method (needed by {need.used_for})"
    try:
        params = tuple(inspect.signature(value).parameters)
    except (TypeError, ValueError):
        params = ()
    if params != need.params:
        return (f"{where} takes ({', '.join(params)}), not ({', '.join(need.params)}) "
                f"(needed by {need.used_for})")
    return None


def problems(needs: tuple[Need, ...] = NEEDS) -> dict[str, list[str]]:
    """What the installed libraries lack, by library (empty: all is there)."""
    found: dict[str, list[str]] = {}
    for need in needs:
        problem = _problem(need)
        if problem is not None:
            found.setdefault(need.library, []).append(problem)
    return found


def check(needs: tuple[Need, ...] = NEEDS) -> None:
    """Raise :class:`IncompatibleLibrary` unless every internal we rely on is there.

    The message names, per library, the version found, the version tested and
    each missing piece, and how to install the tested version.
    """
    found = problems(needs)
    if not found:
        return
    lines = []
    for library, missing in found.items():
        tested = TESTED.get(library, "?")
        lines.append(f"{library} {installed_version(library)} (glimpse-edge is tested with "
                     f"{library} {tested}) lacks what glimpse-edge relies on: "
                     + "; ".join(missing)
                     + f". Install the tested version (pip install '{library}=={tested}'), "
                     "or adapt glimpse_edge/rtc/compat.py to the new one.")
    raise IncompatibleLibrary(" ".join(lines))


def install() -> None:
    """Check every library (:func:`check`), then apply the class-wide patches.

    Run once when the asyncio loop opens (:func:`~.aio.open_aio_loop`), i.e.
    when the agent starts; idempotent. The per-sender hooks are applied to
    each sender as it is made.
    """
    check()
    guard_ice_connect()
    guard_connect_task()
    size_rtp_history()


# -- aiortc: a sender's RTCP -----------------------------------------------------

RtcpFilter = Callable[[Any], bool]
ErrorSink = Callable[[Exception], None]


def hook_rtcp(sender: Any, on_packet: RtcpFilter, on_error: ErrorSink) -> None:
    """See every RTCP packet that reaches ``sender``, and decide whether aiortc does too.

    aiortc: the DTLS transport's receive loop routes each RTCP packet to its
    sender and awaits ``sender._handle_rtcp_packet(packet)`` (looked up on
    the instance), which records receiver reports for ``getStats``, answers
    NACKs from its history and turns PLI/FIR into ``_send_keyframe()``.
    There is no public event for any of it.

    Why: the agent needs each packet as it arrives: any RTCP is the
    liveness signal (a connection without it for ``peers.dead_after`` is
    dead), receiver reports and REMB feed the bandwidth estimate, and on a
    connection whose path is being revived NACKs must *not* reach aiortc
    (resending its stale 128-packet history floods a link that just came
    back). ``on_packet`` runs first; when it returns False aiortc never sees
    the packet.

    Without it: no liveness (every connection declared dead after
    ``dead_after``), no estimate, no tiers. Both callbacks run inside
    aiortc's DTLS receive loop, where an exception would end the loop and
    close the transport: errors of ``on_packet`` and of aiortc's own handler
    go to ``on_error`` (which must not raise either) and the packet still
    reaches aiortc after an ``on_packet`` error.
    """
    original = sender._handle_rtcp_packet

    async def handle_rtcp(packet: Any) -> None:
        try:
            forward = on_packet(packet)
        except Exception as exc:
            on_error(exc)
            forward = True
        if not forward:
            return
        try:
            await original(packet)
        except Exception as exc:
            on_error(exc)

    sender._handle_rtcp_packet = handle_rtcp


def hook_keyframe_request(sender: Any, on_request: Callable[[], None],
                          on_error: ErrorSink) -> None:
    """Call ``on_request`` whenever the receiver asks ``sender`` for a key frame.

    aiortc: ``_handle_rtcp_packet`` turns a PLI or FIR into
    ``self._send_keyframe()``, which only sets a private flag that aiortc's
    own encoder reads on its next frame.

    Why: the agent's tracks hand aiortc packets already encoded (by the
    shared encoder of a quality tier); in that mode aiortc never reads the
    flag, so the request would be lost. We keep aiortc's behaviour (call the
    original, which the per-peer encoding mode still uses) and pass the
    request on to the shared encoder, which rate-limits it.

    Without it: a receiver that lost a key frame (a joiner mid-GOP, a loss
    burst) shows a frozen or broken picture until the encoder's next
    scheduled key frame, seconds later. Runs in aiortc's DTLS receive loop:
    errors go to ``on_error``, never up.
    """
    original = sender._send_keyframe

    def on_keyframe_request() -> None:
        try:
            original()
            on_request()
        except Exception as exc:
            on_error(exc)

    sender._send_keyframe = on_keyframe_request


def sender_ssrc(sender: Any) -> int:
    """The SSRC of ``sender``'s media stream.

    aiortc draws it at random in ``RTCRtpSender.__init__`` and keeps it in
    ``_ssrc``; its public ``getStats`` is a coroutine and too slow for every
    RTCP packet. Why: a receiver report carries one block per stream it
    receives, and a REMB lists the SSRCs it applies to; only ours count.
    Without it the estimate would take other streams' reports for ours.
    """
    ssrc: int = sender._ssrc
    return ssrc


def rtx_ssrc(sender: Any) -> int:
    """The SSRC of ``sender``'s retransmission (RTX) stream.

    aiortc draws it with the media SSRC in ``RTCRtpSender.__init__`` and
    wraps every resend in it once RTX is negotiated (``_retransmit``). Why:
    the receiver reports that stream in its own report block, whose loss
    says whether our resends arrived (rtc/repair.py). Without it no resend
    is repaired.
    """
    ssrc: int = sender._rtx_ssrc
    return ssrc


def sends_rtx(sender: Any) -> bool:
    """Whether ``sender`` resends on its RTX stream (RTX was negotiated).

    aiortc: ``_retransmit`` wraps a resend in RTX when the private
    ``__rtx_payload_type`` is set (``send`` sets it from the negotiated
    codecs; ``__init__`` to None). Why: a probe's padding is resends of packets
    the receiver has already (rtc/probe.py); on the RTX stream a receiver
    counts them there and drops the duplicate, on the video stream itself they
    would confuse its loss count. Without RTX, no padding.
    """
    return sender._RTCRtpSender__rtx_payload_type is not None


async def resend(sender: Any, sequence: int, *, filler: bytes | None = None) -> None:
    """Send packet ``sequence`` again from ``sender``'s history, as if NACKed;
    with ``filler``, its header with that payload instead of its own.

    aiortc: ``_retransmit(sequence_number)`` is what answers a NACK: it
    looks the packet up in the history (``__rtp_history``, keyed by the
    sequence number modulo its size), wraps it in RTX when negotiated (with
    the RTX stream's next sequence number) and awaits the transport's
    ``_send_rtp`` (so the pacer bounds it); a packet no longer in the
    history is ignored. For a filler the history's entry is swapped for a
    copy carrying it during that call, and put back unless aiortc replaced
    it meanwhile. Why: a receiver that asks once (aiortc's) never asks again
    for a resend that was lost, and a lost packet of a frame older than the
    last key frame is better answered with a filler (rtc/repair.py).
    Without it those holes stay until its jitter buffer gives up.
    """
    if filler is None:
        await sender._retransmit(sequence)
        return
    history: dict[int, Any] = sender._RTCRtpSender__rtp_history
    key = sequence % _history_size()
    packet = history.get(key)
    if packet is None or packet.sequence_number != sequence:
        return
    stand_in = copy.copy(packet)
    stand_in.payload = filler
    history[key] = stand_in
    try:
        await sender._retransmit(sequence)
    finally:
        if history.get(key) is stand_in:
            history[key] = packet


def renumber_sent(sender: Any, original: int, sequence: int) -> None:
    """The packet ``sender`` just handed over as ``original`` goes out as ``sequence``:
    its history entry is renumbered, so a NACK for ``sequence`` finds it and
    its RTX resend names it.

    aiortc: ``_run_rtp`` files each packet (an ``RtpPacket``) in
    ``__rtp_history`` under ``sequence_number % RTP_HISTORY_SIZE`` before it
    awaits the transport's ``_send_rtp`` (the pacer, which calls this), and
    ``_retransmit`` looks a NACKed number up there and checks the entry's
    ``sequence_number``. The two numbers must share the entry's place (they
    differ by a multiple of the history's size: rtc/restart.py). Why: aiortc
    keeps its next sequence number in a local of that task, and a restart
    skips numbers (rtc/restart.py). Without it: packets after a restart are
    never resent.
    """
    size = _history_size()
    if (sequence - original) % size:
        raise ValueError(f"{original} and {sequence} do not share a place in the history")
    packet = sender._RTCRtpSender__rtp_history.get(original % size)
    if packet is not None and packet.sequence_number == original:
        packet.sequence_number = sequence


def _history_size() -> int:
    """The size of aiortc senders' RTP history (:func:`size_rtp_history`)."""
    import aiortc.rtcrtpsender as sender_module

    size: int = sender_module.RTP_HISTORY_SIZE  # type: ignore[attr-defined]
    return size


def last_sender_report(sender: Any) -> tuple[int | None, float | None]:
    """The middle 32 bits of the NTP time of ``sender``'s last SR, and when (wall clock).

    aiortc keeps both privately (``__lsr``, ``__lsr_time``, set in its RTCP
    loop each time it sends an SR) to compute a round-trip time it exposes
    only through ``getStats``, a coroutine. Why: a receiver report that
    echoes our last SR (LSR, DLSR) gives the round-trip time of that moment,
    the bandwidth estimate's early signal of a queue building up. Without
    it (None, None) the estimate works from loss and REMB alone, and reacts
    to a narrowing link only once packets are lost.
    """
    return (getattr(sender, "_RTCRtpSender__lsr", None),
            getattr(sender, "_RTCRtpSender__lsr_time", None))


# -- aiortc: a sender's RTP ---------------------------------------------------------

RTP_HISTORY: Final = 512  # packets a sender keeps for NACKs (aiortc: 128)


def size_rtp_history(size: int = RTP_HISTORY) -> None:
    """Keep ``size`` sent packets per sender for retransmission, instead of 128.

    aiortc: every RTP packet a sender sends is kept in a dict keyed by
    ``sequence number % RTP_HISTORY_SIZE`` (a module constant of
    ``aiortc.rtcrtpsender``, read on each send and each NACK); a NACK for a
    packet no longer there is ignored. Why: under congestion a NACK's
    answer is far cheaper than the key frame a receiver asks for once
    retransmission fails, and with pacing (rtc/pacer.py) a packet is NACKed
    later after it was handed to the sender: 128 packets are ~0.4 s of a
    720p stream, shorter than a congested round trip plus a paced key
    frame. 512 (a power of two, so the ring survives the sequence number's
    wrap) hold ~1.5 s of 720p, 2+ s of the lower tiers, ~600 kB per sender
    at most. Without it: lost packets older than 128 are never resent, and
    each such loss costs an IDR. Process-wide; idempotent.
    """
    import aiortc.rtcrtpsender as sender_module

    if 65536 % size:
        raise ValueError(f"the RTP history must divide 65536, not {size}")
    sender_module.RTP_HISTORY_SIZE = size  # type: ignore[attr-defined]


def pace_rtp(sender: Any, pacer: Pacer) -> None:
    """Send ``sender``'s RTP through ``pacer`` (rtc/pacer.py).

    aiortc: a sender's task awaits ``self.transport._send_rtp(data)`` for
    each packet (``_run_rtp``; ``_retransmit`` for NACKs); the DTLS
    transport protects it with SRTP and sends it. With BUNDLE, audio, video
    and RTCP of a connection share one transport. Why: aiortc has no pacer,
    and a key frame leaves back to back (rtc/pacer.py). The transport's
    ``_send_rtp`` is wrapped on the instance, once; the pacer delays only
    packets of the SSRCs registered with it (the video sender's, and its RTX
    SSRC for resends), so audio and RTCP pass straight on. Call once both descriptions are set (the
    transport is then the bundled one). Without it: no pacing, nothing
    else changes. A second call for another sender on the same transport
    adds its SSRC to the pacer installed first.
    """
    transport = sender.transport
    installed: Pacer | None = getattr(transport, "_glimpse_pacer", None)
    target = installed if installed is not None else pacer
    target.ssrcs.add(sender_ssrc(sender))
    # aiortc's _retransmit wraps a NACKed packet in RTX (RFC 4588) on the
    # sender's ``_rtx_ssrc`` when RTX was negotiated (a browser always does):
    # the pacer must know those for resends, or they pass unbounded
    target.rtx_ssrcs.add(sender._rtx_ssrc)
    if installed is not None:
        return
    pacer.renumber = partial(renumber_sent, sender)
    original = transport._send_rtp

    async def send_rtp(data: bytes) -> None:
        await pacer.send(data, original)

    transport._send_rtp = send_rtp
    transport._glimpse_pacer = pacer


# -- aiortc: a receiver's audio levels (the active speaker) ------------------------

def hook_audio_level(receiver: Any, on_level: Callable[[float], None],
                     on_error: Callable[[Exception], None]) -> None:
    """Call ``on_level(dbov)`` with the level of each audio packet ``receiver`` gets.

    aiortc: the DTLS transport parses each RTP packet with the negotiated
    header extensions and awaits ``receiver._handle_rtp_packet(packet,
    arrival_time_ms=...)``, looked up on the instance each time; the level
    is ``packet.extensions.audio_level``, ``(voice_activity, -dBov)``, or
    None when the sender did not send it. The wrapper reads it, then hands
    the packet on unchanged. ``on_level`` runs in aiortc's RTP path: its
    errors go to ``on_error``, never up.
    """
    original = receiver._handle_rtp_packet

    async def handle(packet: Any, arrival_time_ms: int) -> None:
        level = packet.extensions.audio_level
        if level is not None:
            try:
                on_level(-float(level[1]))
            except Exception as exc:
                on_error(exc)
        await original(packet, arrival_time_ms=arrival_time_ms)

    receiver._handle_rtp_packet = handle


# -- aiortc: a receiver's encoded video -------------------------------------------

EncodedSink = Callable[[str, bytes, int], None]


class _EncodedTap:
    """Stands where aiortc's receiver keeps its decoder's input queue.

    ``put((codec, frame))`` hands the frame to the sink instead; aiortc's
    decoder thread, which reads this queue, waits in :meth:`get` until the
    receiver stops (``put(None)``), and ends without decoding anything.
    """

    def __init__(self, sink: EncodedSink, on_error: ErrorSink) -> None:
        self._sink = sink
        self._on_error = on_error
        self._stopped = threading.Event()

    def put(self, task: Any) -> None:
        if task is None:
            self._stopped.set()
            return
        codec, frame = task
        try:
            self._sink(codec.mimeType.split("/", 1)[-1].lower(), bytes(frame.data),
                       int(frame.timestamp))
        except Exception as exc:
            self._on_error(exc)

    def get(self) -> None:
        self._stopped.wait()


def tap_encoded_video(receiver: Any, sink: EncodedSink, on_error: ErrorSink) -> None:
    """Hand ``receiver``'s encoded video frames to ``sink(codec, data, timestamp)``.

    aiortc: the receiver reassembles each frame from RTP in its jitter buffer
    and puts ``(codec, frame)`` on ``__decoder_queue``, an unbounded
    ``queue.Queue`` that a thread of its own decodes (always in software,
    into another unbounded queue, whether or not anyone reads the track).
    Why: the kiosk display decodes what it shows, with a hardware decoder
    where the board has one, bounded, and drops to the next key frame when
    behind (display/decode.py). Call before the receiver starts (before the
    descriptions are set): the tap replaces the queue, so aiortc's decoder
    thread starts, waits, and ends when the receiver stops. Without it:
    every remote video is decoded twice, and a slow screen grows aiortc's
    queues without limit. ``sink`` runs in aiortc's RTP path (asyncio):
    errors go to ``on_error``, never up.
    """
    receiver._RTCRtpReceiver__decoder_queue = _EncodedTap(sink, on_error)


async def send_pli(receiver: Any) -> bool:
    """Ask the sender of ``receiver``'s newest stream for a key frame (an RTCP PLI).

    aiortc: ``RTCRtpReceiver._send_rtcp_pli(media_ssrc)`` sends one (aiortc
    calls it itself when its jitter buffer gives up on a frame); there is no
    public API for it. The media SSRC is the stream that sent last, from the
    public ``getSynchronizationSources()`` (the streams heard in the last 10 s).
    Why: with :func:`tap_encoded_video` the display's decoder decodes the
    frames itself, and asks for a key frame when it starts mid-GOP, falls
    behind, is shown again or hits a broken frame. Without it: that tile
    stays blank or broken until the sender's next scheduled key frame, which
    a browser may not send for a long time. Runs on the asyncio loop (cross
    to it from another thread with ``aio.spawn_aio_threadsafe``). Returns
    False when no stream has been heard yet (nobody to ask).
    """
    sources = receiver.getSynchronizationSources()
    if not sources:
        return False
    newest = max(sources, key=lambda s: s.timestamp)
    await receiver._send_rtcp_pli(newest.source)
    return True


def cap_remb(receiver: Any, cap: Callable[[], int | None]) -> bool:
    """Never let ``receiver`` ask its sender for more than ``cap()`` bits per second.

    aiortc: a video receiver feeds each RTP packet carrying abs-send-time to
    its ``RemoteBitrateEstimator`` (``__remote_bitrate_estimator``); when
    ``add`` returns ``(bitrate, ssrcs)`` (at least every 0.5 s, at once on
    overuse) the receiver sends that as a REMB, which a browser's (and
    aiortc's) sender takes as the most it may send. Why: the kiosk shows a
    participant in a tile, often a small one; a sender estimating a fast LAN
    would send 720p at 2+ Mbit/s that a Pi then decodes to shrink it. The
    estimator's ``add`` is wrapped on the instance: its result is clamped to
    ``cap()`` (None: no cap), read on every estimate, so a new cap (the
    layout changed) goes out with the next REMB, within 0.5 s. The
    estimator itself runs on unchanged (a raised cap gets its estimate back
    at once). Without it: the sender sends what the link carries, and only
    the SDP's b=AS of the last negotiation limits it. Returns False for a
    receiver with no estimator (audio). Runs in aiortc's RTP path: ``cap``
    must be quick and must not raise.
    """
    estimator = getattr(receiver, "_RTCRtpReceiver__remote_bitrate_estimator", None)
    if estimator is None:
        return False
    original = estimator.add

    def add(arrival_time_ms: int, abs_send_time: int, payload_size: int,
            ssrc: int) -> tuple[int, list[int]] | None:
        result = original(arrival_time_ms=arrival_time_ms, abs_send_time=abs_send_time,
                          payload_size=payload_size, ssrc=ssrc)
        limit = cap()
        if result is None or limit is None:
            return result  # type: ignore[no-any-return]
        bitrate, ssrcs = result
        return min(int(bitrate), limit), ssrcs

    estimator.add = add
    return True


# -- aiortc / aioice: ICE --------------------------------------------------------


def selected_candidates(pc: Any) -> dict[str, str | None]:
    """Types of the ICE candidate pair in use ("host", "srflx", "prflx", "relay").

    aiortc does not expose the selected pair; aioice keeps the nominated pair
    per component in ``Connection._nominated``, and aiortc's ICE transport
    keeps aioice's connection in ``_connection``. This reads component 1 of
    the first transport (everything is bundled on it).

    Why: logged when a connection comes up, so that a relay-only deployment
    (TURN) can be checked from the journal. Without it those fields are
    None; nothing else depends on them, so any error gives None values.
    """
    try:
        transceiver = pc.getTransceivers()[0]
        connection = transceiver.sender.transport.transport._connection
        pair = connection._nominated[1]
        local, remote = pair.local_candidate, pair.remote_candidate
        return {"ice_local": local.type, "ice_remote": remote.type,
                "ice_protocol": local.transport.lower()}
    except Exception:
        return {"ice_local": None, "ice_remote": None, "ice_protocol": None}


def guard_ice_connect() -> None:
    """Make an ICE connection closed while connecting fail, instead of living on.

    aioice (0.13): ``Connection.connect()`` starts the consent-freshness task
    once its check list completed, even when ``close()`` ran after the check
    list completed and before ``connect()`` got to read that: the task then
    runs forever (one asyncio task and the connection's objects per peer that
    left in those milliseconds; 19 of 120 closes at random moments of a
    connect, measured). Why: the agent closes connections mid-connect all
    the time (a viewer who leaves while connecting, a timeout, glare, a
    restart). The wrapper: a connect that finds its connection closed
    (``_closing``, set by ``close()``) closes it again, which stops that
    task, and raises, which also stops aiortc from starting DTLS and RTP on
    the closed connection. Without it: a slow leak of tasks that, in the
    soak test, starved the other peers within minutes. Installed once on the
    class, for every connection made afterwards.
    """
    from aioice.ice import Connection

    original = Connection.connect
    if getattr(original, "_closed_while_connecting_guard", False):
        return

    async def connect(self: Connection) -> None:
        await original(self)
        if getattr(self, "_closing", False):
            await self.close()
            raise ConnectionError("ICE connection closed while connecting")

    connect._closed_while_connecting_guard = True  # type: ignore[attr-defined]
    Connection.connect = connect  # type: ignore[method-assign]


def guard_connect_task() -> None:
    """Let aiortc's connect task end quietly when its connection closed meanwhile.

    aiortc (1.x) checks once, when its connect task starts, that the
    connection is open; a ``close()`` while the task awaits ICE or DTLS
    makes its next step raise ``InvalidStateError`` ("RTCIceTransport is
    closed") in a task nobody awaits, which asyncio reports as an error
    (seen in the soak test's churn: a viewer that leaves while connecting).
    Nothing is wrong then, and nothing is left to do. Any other failure, or
    one on an open connection, is raised as before. Installed once on the
    class.
    """
    from aiortc.exceptions import InvalidStateError
    from aiortc.rtcpeerconnection import RTCPeerConnection

    original = RTCPeerConnection._RTCPeerConnection__connect  # type: ignore[attr-defined]
    if getattr(original, "_closed_while_connecting_guard", False):
        return

    async def connect(self: RTCPeerConnection) -> None:
        try:
            await original(self)
        except InvalidStateError:
            if getattr(self, "_RTCPeerConnection__isClosed", None) is None:
                raise
            log.info("rtc.closed_while_connecting")

    connect._closed_while_connecting_guard = True  # type: ignore[attr-defined]
    RTCPeerConnection._RTCPeerConnection__connect = connect  # type: ignore[attr-defined]


# -- trio-websocket ----------------------------------------------------------------


def websocket_stream(ws: Any) -> Any | None:
    """The TCP (or TLS) stream under a trio-websocket connection, if it has one.

    trio-websocket (0.12) keeps it in ``WebSocketConnection._stream`` and
    offers no public accessor. It never closes that stream when the *server*
    ended the connection without a close handshake (a crash, a kill -9):
    ``aclose()`` returns at once because the connection is already marked
    closed. Why: so that :func:`~glimpse_edge.signaling.session.close_websocket`
    can close it itself. Without it: one socket left in CLOSE_WAIT per server
    restart until the cyclic garbage collector finds it (found by the soak
    test: fds 14 to 19 over 10 restarts).
    """
    return getattr(ws, "_stream", None)
