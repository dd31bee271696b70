"""The protocol codec: round trips, both signal dialects, and fuzzing."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glimpse_edge.signaling.messages import (
    Authenticate,
    Authenticated,
    AuthenticateResponse,
    AuthError,
    ErrorMessage,
    IceCandidate,
    JoinRoom,
    LeaveRoom,
    ProtocolError,
    RoomJoined,
    RoomUser,
    SessionDescription,
    UnknownMessage,
    UserJoined,
    UserLeft,
    UserOffline,
    WebRTCSignal,
    decode,
    encode,
)

USER = "65a1b2c3d4e5f60718293a4b"
ROOM = "65a1b2c3d4e5f60718293a4c"
CAND = {"candidate": "candidate:842163049 1 udp 1677729535 192.0.2.7 50174 typ srflx "
        "raddr 0.0.0.0 rport 0 generation 0 ufrag sWvl network-cost 999",
        "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "sWvl"}


def test_outgoing_messages_are_canonical() -> None:
    assert json.loads(encode(Authenticate(token="t"))) == {"type": "authenticate", "token": "t"}
    assert json.loads(encode(JoinRoom(room_id=ROOM))) == {"type": "join_room", "roomId": ROOM}
    assert json.loads(encode(LeaveRoom(room_id=ROOM))) == {"type": "leave_room", "roomId": ROOM}
    offer = WebRTCSignal(signal_type="offer", peer_id=USER, room_id=ROOM,
                         signal=SessionDescription(type="offer", sdp="v=0\r\n"))
    assert json.loads(encode(offer)) == {
        "type": "webrtc_signal", "signalType": "offer", "peerId": USER, "roomId": ROOM,
        "signal": {"type": "offer", "sdp": "v=0\r\n"}}


def test_authenticate_repr_hides_token() -> None:
    assert "secret-token" not in repr(Authenticate(token="secret-token"))


@pytest.mark.parametrize("message", [
    WebRTCSignal(signal_type="offer", peer_id=USER, room_id=ROOM,
                 signal=SessionDescription(type="offer", sdp="v=0\r\n")),
    WebRTCSignal(signal_type="answer", peer_id=USER, room_id=ROOM,
                 signal=SessionDescription(type="answer", sdp="v=0\r\n")),
    WebRTCSignal(signal_type="ice-candidate", peer_id=USER, room_id=ROOM,
                 signal=IceCandidate(candidate="candidate:1 1 udp 2 192.0.2.1 9 typ host",
                                     sdp_mid="0", sdp_m_line_index=0)),
    WebRTCSignal(signal_type="ice-candidate", peer_id=USER, room_id=ROOM, signal=None),
])
def test_signal_round_trip(message: WebRTCSignal) -> None:
    assert decode(encode(message)) == message


def test_browser_dialect_is_accepted() -> None:
    frame = json.dumps({"type": "ice-candidate", "roomId": ROOM, "peerId": USER, "signal": CAND})
    msg = decode(frame)
    assert isinstance(msg, WebRTCSignal)
    assert msg.signal_type == "ice-candidate" and msg.peer_id == USER
    assert isinstance(msg.signal, IceCandidate)
    assert msg.signal.sdp_m_line_index == 0 and msg.signal.username_fragment == "sWvl"
    end = decode(json.dumps({"type": "ice-candidate", "peerId": USER,
                             "signal": {"candidate": "", "sdpMid": "0"}}))
    assert isinstance(end, WebRTCSignal) and isinstance(end.signal, IceCandidate)
    assert end.signal.is_end_of_candidates


def test_server_messages() -> None:
    joined = decode(json.dumps({
        "type": "room_joined", "roomId": ROOM, "name": "Lobby", "description": "",
        "messages": [{"content": "hi"}], "extra": True,
        "users": [{"id": USER, "username": "alice", "isActive": True,
                   "lastActive": "2026-11-26T00:00:00Z"}]}))
    assert joined == RoomJoined(room_id=ROOM, name="Lobby", description="",
                                messages=[{"content": "hi"}],
                                users=[RoomUser(id=USER, username="alice", is_active=True,
                                                last_active="2026-11-26T00:00:00Z")])
    assert decode('{"type":"authenticated","userId":"u","username":"d"}') == Authenticated(
        user_id="u", username="d")
    assert decode('{"type":"authenticate_response","success":false}') == AuthenticateResponse(
        success=False)
    assert decode('{"type":"auth_error","message":"Invalid token"}') == AuthError(
        message="Invalid token")
    assert decode('{"type":"error","message":"Room not found"}') == ErrorMessage(
        message="Room not found")
    for kind, cls in (("user_joined", UserJoined), ("user_left", UserLeft),
                      ("user_offline", UserOffline)):
        msg = decode(json.dumps({"type": kind, "userId": USER, "username": "bob",
                                 "message": {"content": "x"}}))
        assert msg == cls(user_id=USER, username="bob")
    assert decode('{"type":"typing_status","userId":"u"}') == UnknownMessage(type="typing_status")


@pytest.mark.parametrize("frame, reason", [
    (b"\x00binary", "binary frame"),
    ("not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"no": "type"}', "no string 'type'"),
    ('{"type": 5}', "no string 'type'"),
    ('{"type": "user_joined"}', "bad user_joined"),
    ('{"type": "room_joined", "roomId": "r", "users": [{"id": 7}]}', "bad room_joined"),
    ('{"type": "webrtc_signal", "signalType": "bogus", "peerId": "p"}', "unknown signalType"),
    ('{"type": "offer", "signal": {"type": "offer", "sdp": ""}}', "without a peerId"),
    ('{"type": "offer", "peerId": "p", "signal": {"type": "answer", "sdp": ""}}',
     "description of type 'answer'"),
    ('{"type": "answer", "peerId": "p", "signal": "v=0"}', "bad answer signal"),
    ('{"type": "ice-candidate", "peerId": "p", "signal": {"sdpMLineIndex": "x"}}',
     "bad ice-candidate signal"),
])
def test_malformed_frames_raise_protocol_error(frame: str | bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert reason in info.value.reason, f"expected {reason!r} in {info.value.reason!r}"


def test_protocol_error_excerpt_hides_tokens() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJpZCI6IjEyMyJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    with pytest.raises(ProtocolError) as info:
        decode('{"type": "authenticated", "token": "' + jwt + '"}')
    assert jwt not in info.value.excerpt and jwt not in str(info.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["room_joined", "user_joined", "user_left", "user_offline",
                              "authenticated", "authenticate_response", "auth_error", "error",
                              "room_users", "room_left", "webrtc_signal", "offer", "answer",
                              "ice-candidate", "new_message"])},
    optional={"userId": json_values, "roomId": json_values, "peerId": json_values,
              "signalType": json_values, "signal": json_values, "users": json_values,
              "success": json_values, "message": json_values},
)


def _decode_or_protocol_error(frame: Any) -> None:
    with contextlib.suppress(ProtocolError):
        decode(frame)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fuzz_arbitrary_json_only_raises_protocol_error(value: Any) -> None:
    _decode_or_protocol_error(json.dumps(value))


@settings(max_examples=300, deadline=None)
@given(message_like)
def test_fuzz_message_shaped_json_only_raises_protocol_error(value: Any) -> None:
    _decode_or_protocol_error(json.dumps(value))


@settings(max_examples=300, deadline=None)
@given(st.binary() | st.text())
def test_fuzz_arbitrary_bytes_and_text_only_raise_protocol_error(frame: bytes | str) -> None:
    _decode_or_protocol_error(frame)
