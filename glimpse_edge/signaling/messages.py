"""The Glimpse WebSocket protocol as typed messages.

Decoding is strict about what we use and lenient about what we do not: every
message we act on is validated field by field, extra fields are ignored (the
server may add some), unknown types become :class:`UnknownMessage`, and
*anything* malformed becomes exactly one exception type, :class:`ProtocolError`,
so the session can log it and go on. Both dialects of WebRTC signals are
accepted (``type: webrtc_signal`` with ``signalType``, and the browser's
``type: offer|answer|ice-candidate``); we always send the canonical one.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import msgspec

from ..logs import redact

SignalType = Literal["offer", "answer", "ice-candidate"]
SIGNAL_TYPES: frozenset[str] = frozenset({"offer", "answer", "ice-candidate"})


class ProtocolError(Exception):
    """A frame we cannot understand. Carries a short, secret-free excerpt."""

    def __init__(self, reason: str, raw: str | bytes | None = None) -> None:
        self.reason = reason
        excerpt = ""
        if raw is not None:
            text = raw if isinstance(raw, str) else repr(raw[:120])
            excerpt = redact(text[:160])
        self.excerpt: str = excerpt
        super().__init__(reason)


class _Msg(msgspec.Struct, tag_field="type", rename="camel", frozen=True):
    """Base of every message; ``type`` is the tag."""


# --- payloads --------------------------------------------------------------


class SessionDescription(msgspec.Struct, frozen=True):
    """An SDP offer or answer, as RTCSessionDescription.toJSON()."""

    type: Literal["offer", "answer"]
    sdp: str


class IceCandidate(msgspec.Struct, rename="camel", frozen=True, omit_defaults=True):
    """A trickled candidate, as RTCIceCandidate.toJSON(); empty = end of candidates."""

    candidate: str = ""
    sdp_mid: str | None = None
    sdp_m_line_index: int | None = None
    username_fragment: str | None = None

    @property
    def is_end_of_candidates(self) -> bool:
        return not self.candidate


class RoomUser(msgspec.Struct, rename="camel", frozen=True):
    """One member of a room as listed by room_joined / room_users."""

    id: str
    username: str = ""
    is_active: bool = False
    last_active: str | float | None = None


# --- client -> server ------------------------------------------------------


class Authenticate(_Msg, tag="authenticate", frozen=True):
    token: str

    def __repr__(self) -> str:  # never show the token, even in a traceback
        return "Authenticate(token=[redacted])"


class JoinRoom(_Msg, tag="join_room", frozen=True):
    room_id: str


class LeaveRoom(_Msg, tag="leave_room", frozen=True):
    room_id: str


# --- server -> client ------------------------------------------------------


class Authenticated(_Msg, tag="authenticated", frozen=True):
    user_id: str
    username: str = ""


class AuthenticateResponse(_Msg, tag="authenticate_response", frozen=True):
    """The browser client's form of the authentication reply."""

    success: bool
    user_id: str | None = None
    username: str = ""
    message: str = ""


class AuthError(_Msg, tag="auth_error", frozen=True):
    message: str = ""


class ErrorMessage(_Msg, tag="error", frozen=True):
    message: str = ""


class RoomJoined(_Msg, tag="room_joined", frozen=True):
    room_id: str
    name: str = ""
    description: str = ""
    users: list[RoomUser] = []
    messages: list[Any] = []


class RoomLeft(_Msg, tag="room_left", frozen=True):
    room_id: str = ""


class UserJoined(_Msg, tag="user_joined", frozen=True):
    user_id: str
    username: str = ""


class UserLeft(_Msg, tag="user_left", frozen=True):
    user_id: str
    username: str = ""


class UserOffline(_Msg, tag="user_offline", frozen=True):
    user_id: str
    username: str = ""


class RoomUsers(_Msg, tag="room_users", frozen=True):
    users: list[RoomUser]
    room_id: str = ""


class WebRTCSignal(_Msg, tag="webrtc_signal", frozen=True):
    """A signal between two participants; on receipt ``peer_id`` is the sender."""

    signal_type: SignalType
    peer_id: str
    signal: SessionDescription | IceCandidate | None
    room_id: str = ""


class UnknownMessage(msgspec.Struct, frozen=True):
    """A well-formed message of a type we do not act on (chat, typing ...)."""

    type: str


IncomingMessage = (
    Authenticated
    | AuthenticateResponse
    | AuthError
    | ErrorMessage
    | RoomJoined
    | RoomLeft
    | UserJoined
    | UserLeft
    | UserOffline
    | RoomUsers
    | WebRTCSignal
    | UnknownMessage
)
OutgoingMessage = Authenticate | JoinRoom | LeaveRoom | WebRTCSignal

_INCOMING: dict[str, type[_Msg]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        Authenticated,
        AuthenticateResponse,
        AuthError,
        ErrorMessage,
        RoomJoined,
        RoomLeft,
        UserJoined,
        UserLeft,
        UserOffline,
        RoomUsers,
    )
}

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def encode(message: OutgoingMessage) -> str:
    """Serialise an outgoing message to one text frame."""
    return _encoder.encode(message).decode()


def _signal_payload(kind: str, signal: Any, raw: str) -> SessionDescription | IceCandidate | None:
    try:
        if kind == "ice-candidate":
            if signal is None:
                return None
            return msgspec.convert(signal, IceCandidate)
        desc = msgspec.convert(signal, SessionDescription)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"bad {kind} signal: {exc}", raw) from None
    if desc.type != kind:
        raise ProtocolError(f"{kind} signal carries a description of type {desc.type!r}", raw)
    return desc


def decode(frame: str | bytes) -> IncomingMessage:
    """Decode one WebSocket frame; raise :class:`ProtocolError` for anything malformed."""
    if not isinstance(frame, str):
        raise ProtocolError("binary frame (the protocol uses text frames)", frame)
    try:
        obj = _decoder.decode(frame)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"invalid JSON: {exc}", frame) from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"expected a JSON object, got {type(obj).__name__}", frame)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("message has no string 'type'", frame)

    if kind in SIGNAL_TYPES:  # the browser dialect
        obj = {**obj, "type": "webrtc_signal", "signalType": kind}
        kind = "webrtc_signal"
    if kind == "webrtc_signal":
        signal_type = obj.get("signalType")
        if not isinstance(signal_type, str) or signal_type not in SIGNAL_TYPES:
            raise ProtocolError(f"unknown signalType {signal_type!r}", frame)
        payload = _signal_payload(signal_type, obj.get("signal"), frame)
        peer_id, room_id = obj.get("peerId"), obj.get("roomId", "")
        if not isinstance(peer_id, str) or not peer_id:
            raise ProtocolError("webrtc_signal without a peerId", frame)
        if not isinstance(room_id, str):
            raise ProtocolError("webrtc_signal roomId is not a string", frame)
        return WebRTCSignal(signal_type=cast(SignalType, signal_type), peer_id=peer_id,
                            signal=payload, room_id=room_id)

    cls = _INCOMING.get(kind)
    if cls is None:
        return UnknownMessage(type=kind)
    try:
        msg: IncomingMessage = msgspec.convert(obj, cls)  # type: ignore[assignment]
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"bad {kind} message: {exc}", frame) from None
    return msg
