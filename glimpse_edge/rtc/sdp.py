"""The little SDP and candidate handling the agent needs beyond aiortc.

aiortc has no ICE restart and ignores a candidate's ``usernameFragment``, so
the agent reads ICE credentials itself (to tell a renegotiation from a
restart, and to drop stale candidates), and it reads which video codec an
answer settled on (to subscribe the peer to the matching shared encoder).
With the kiosk display on, the descriptions it sends carry a bandwidth line
on the video (:func:`with_video_bitrate`): what the remote may send us.
"""

from __future__ import annotations

from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp

from ..signaling.messages import IceCandidate

# A signal bigger than this is not SDP a browser would send: refuse it
# before aiortc's parser spends time on it.
MAX_SDP_BYTES = 64 * 1024


class BadSignal(ValueError):
    """A description or candidate that cannot be used."""


def ice_credentials(sdp: str) -> tuple[str, str] | None:
    """The first ``a=ice-ufrag`` / ``a=ice-pwd`` pair (session or media level)."""
    ufrag = pwd = None
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:") and ufrag is None:
            ufrag = line.split(":", 1)[1].strip()
        elif line.startswith("a=ice-pwd:") and pwd is None:
            pwd = line.split(":", 1)[1].strip()
        if ufrag is not None and pwd is not None:
            return ufrag, pwd
    return None


def check_sdp(sdp: str) -> None:
    """Cheap sanity checks before handing SDP to aiortc (raises BadSignal)."""
    if len(sdp) > MAX_SDP_BYTES:
        raise BadSignal(f"SDP of {len(sdp)} bytes (limit {MAX_SDP_BYTES})")
    if not sdp.startswith("v=0"):
        raise BadSignal("SDP does not start with v=0")
    if "\nm=" not in sdp:
        raise BadSignal("SDP has no media section")
    if ice_credentials(sdp) is None:
        raise BadSignal("SDP has no ICE credentials")


def negotiated_codecs(sdp: str) -> dict[str, str | None]:
    """The first codec of each accepted m-line, by kind: {"video": "h264", "audio": "opus"}.

    A rejected (port 0) or inactive m-line maps to None.
    """
    result: dict[str, str | None] = {}
    kind: str | None = None
    first_pt: str | None = None
    rtpmap: dict[str, str] = {}
    inactive = False

    def finish() -> None:
        if kind is not None and kind not in result:
            name = rtpmap.get(first_pt or "")
            result[kind] = None if inactive or name is None else name.lower()

    for line in sdp.splitlines():
        if line.startswith("m="):
            finish()
            parts = line[2:].split()
            kind = parts[0] if parts else None
            first_pt = parts[3] if len(parts) > 3 else None
            rtpmap = {}
            inactive = len(parts) > 1 and parts[1] == "0"
        elif kind is not None and line.startswith("a=rtpmap:"):
            pt, _, rest = line[len("a=rtpmap:"):].partition(" ")
            rtpmap[pt] = rest.split("/", 1)[0]
        elif kind is not None and line.strip() == "a=inactive":
            inactive = True
    finish()
    return result


def header_extension_id(sdp: str, kind: str, uri: str) -> int | None:
    """The id ``a=extmap`` gives ``uri`` in the first m-line of ``kind`` (None: not there).

    Both descriptions of a negotiation carry the same ids (the answer takes
    the offer's), so either one tells what the packets carry.
    """
    in_kind = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            if in_kind:
                return None
            in_kind = line[2:].split(" ", 1)[0] == kind
        elif in_kind and line.startswith("a=extmap:"):
            head, _, rest = line[len("a=extmap:"):].partition(" ")
            if rest.split(" ", 1)[0].strip() == uri:
                try:
                    return int(head.split("/", 1)[0])
                except ValueError:
                    return None
    return None


def with_video_bitrate(sdp: str, bps: int | None) -> str:
    """``sdp`` with ``b=AS`` and ``b=TIAS`` on each accepted video m-section: ``bps`` at most.

    A description's bandwidth lines say what its author wants to *receive*:
    Chromium applies the remote description's ``b=AS`` (kbit/s) or, when
    present, ``b=TIAS`` (bit/s, preferred over AS) to its sender's maximum
    bitrate; Firefox reads TIAS. aiortc ignores both (its senders follow
    REMB, rtc/compat.cap_remb). Existing AS/TIAS lines of those sections are
    replaced; the lines go after ``c=`` (RFC 8866's order: m, i, c, b), or
    after ``m=``/``i=`` when there is no ``c=``. ``None``: ``sdp`` unchanged.
    Rejected (port 0) sections are left alone. Line endings are kept.
    """
    if bps is None:
        return sdp
    if bps <= 0:
        raise ValueError(f"a bitrate must be positive, not {bps}")
    newline = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(newline)
    bandwidth = [f"b=AS:{max(1, bps // 1000)}", f"b=TIAS:{bps}"]
    out: list[str] = []
    in_video = False
    pending = False  # the b= lines are still to be written in this section

    def flush() -> None:
        nonlocal pending
        if pending:
            out.extend(bandwidth)
            pending = False

    for line in lines:
        if line.startswith("m="):
            flush()
            parts = line[2:].split()
            in_video = len(parts) > 1 and parts[0] == "video" and parts[1] != "0"
            out.append(line)
            pending = in_video
            continue
        if in_video:
            if line.startswith(("b=AS:", "b=TIAS:")):
                continue
            if pending and not line.startswith(("i=", "c=")):
                flush()
        out.append(line)
    if pending:  # a video section with nothing after m=/i=/c=: before a final blank
        if out and out[-1] == "":
            out[-1:] = [*bandwidth, ""]
        else:
            out.extend(bandwidth)
    return newline.join(out)


def parse_candidate(c: IceCandidate) -> RTCIceCandidate | None:
    """A browser's trickled candidate as aiortc's type; None means end of candidates."""
    text = c.candidate.strip()
    if not text:
        return None
    if text.startswith("candidate:"):
        text = text[len("candidate:"):]
    if c.sdp_mid is None and c.sdp_m_line_index is None:
        raise BadSignal("candidate has neither sdpMid nor sdpMLineIndex")
    try:
        candidate = candidate_from_sdp(text)
    except (ValueError, IndexError, AssertionError) as exc:
        raise BadSignal(f"unparsable candidate: {exc or type(exc).__name__}") from None
    candidate.sdpMid = c.sdp_mid
    candidate.sdpMLineIndex = c.sdp_m_line_index
    return candidate
