"""The little SDP and candidate handling the agent needs beyond aiortc.

aiortc has no ICE restart and ignores a candidate's ``usernameFragment``, so
the agent reads ICE credentials itself (to tell a renegotiation from a
restart, and to drop stale candidates), and it reads which video codec an
answer settled on (to subscribe the peer to the matching shared encoder).
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
