"""The dev server against the Glimpse wire protocol, over real sockets.

Absence of a notification ("nobody else is told anything") is checked with
``GlimpseClient.drain()``, a ping round trip that fences the socket's queue,
never with a sleep; see tests/support/glimpse_client.py for why that is sound.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.devserver import DevServer, devserver_process, run_devserver
from support.glimpse_client import GlimpseClient, create_room, login, register
from trio_websocket import ConnectionClosed

from glimpse_edge.devserver import MAX_FRAME_BYTES, Store
from glimpse_edge.devserver.auth import issue_token

HEX24 = re.compile(r"[0-9a-f]{24}")
PASSWORD = "correct horse battery"
OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\n"}
CANDIDATE = {
    "candidate": "candidate:1 1 udp 2122260223 192.0.2.7 50174 typ host",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
    "usernameFragment": "sWvl",
}


def http(server: DevServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.api_url, timeout=10, trust_env=False)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def types(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]


@contextlib.asynccontextmanager
async def client(server: DevServer, token: str | None, name: str) -> AsyncIterator[GlimpseClient]:
    """A connected (and, given a token, authenticated) client."""
    async with GlimpseClient(name) as c:
        await c.connect(server.ws_url)
        if token is not None:
            await c.authenticate(token)
        yield c


async def wait_until(condition: Callable[[], Any], timeout: float = 10) -> None:
    """Poll a condition observable over HTTP, bounded by ``timeout``.

    Only for server state that by design produces no message at all (a user's
    second socket closing), so there is nothing to wait for but the state itself.
    """
    with trio.fail_after(timeout):
        while not await condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


# -- HTTP API ------------------------------------------------------------------


async def test_register_login_and_token_claims(devserver: DevServer) -> None:
    async with http(devserver) as h:
        r = await h.post(
            "/api/auth/register",
            json={"username": "alice", "email": "alice@example.test", "password": PASSWORD},
        )
        assert r.status_code == 201
        body = r.json()
        assert body["success"] is True and isinstance(body["message"], str)
        user = body["data"]["user"]
        assert HEX24.fullmatch(user["id"])
        assert user == {"id": user["id"], "username": "alice", "email": "alice@example.test"}

        claims = jwt.decode(body["data"]["token"], options={"verify_signature": False})
        assert claims["id"] == user["id"] and claims["username"] == "alice"
        assert claims["exp"] - claims["iat"] == 7 * 24 * 3600
        assert abs(claims["iat"] - time.time()) < 60

        r = await h.post(
            "/api/auth/register",
            json={"username": "alice", "email": "other@example.test", "password": "x"},
        )
        assert r.status_code == 409 and r.json()["success"] is False

        for bad in (
            {"email": "a@b.c", "password": "x"},
            {"username": "bob", "password": "x"},
            {"username": "bob", "email": "not-an-email", "password": "x"},
            {"username": "bob", "email": "b@b.c"},
            {"username": 5, "email": "b@b.c", "password": "x"},
        ):
            r = await h.post("/api/auth/register", json=bad)
            assert r.status_code == 400, bad
            assert r.json()["success"] is False
        for raw in (
            b"{not json",
            b"[1, 2]",
            b"",
            b"\xff\xfe",
            b'{"username": "\\ud800", "email": "a@b.c", "password": "x"}',
        ):
            r = await h.post("/api/auth/register", content=raw)
            assert r.status_code == 400 and r.json()["success"] is False

        r = await h.post("/api/auth/login", json={"username": "alice", "password": PASSWORD})
        assert r.status_code == 200
        data = r.json()
        assert data["success"] is True and isinstance(data["message"], str)
        assert data["data"]["user"]["id"] == user["id"]
        assert (
            jwt.decode(data["data"]["token"], options={"verify_signature": False})["id"]
            == (user["id"])
        )

        for creds in (
            {"username": "alice", "password": "wrong"},
            {"username": "nobody", "password": "x"},
        ):
            r = await h.post("/api/auth/login", json=creds)
            assert r.status_code == 401
            assert r.json() == {"success": False, "message": "Invalid username or password"}
        r = await h.post("/api/auth/login", content=b"{{{")
        assert r.status_code == 400


async def test_rooms_api_and_bearer_auth(devserver: DevServer) -> None:
    alice_id, token = await register(devserver.api_url, "alice", PASSWORD)
    async with http(devserver) as h:
        r = await h.post(
            "/api/rooms", json={"name": "Lobby", "description": "hi"}, headers=bearer(token)
        )
        assert r.status_code == 201
        room = r.json()["data"]
        assert r.json()["success"] is True
        assert HEX24.fullmatch(room["_id"])
        assert room["name"] == "Lobby" and room["description"] == "hi"
        assert room["createdBy"] == alice_id and room["members"] == [alice_id]
        assert isinstance(room["createdAt"], str)

        r = await h.get("/api/rooms", headers=bearer(token))
        assert r.status_code == 200
        assert r.json() == {"success": True, "data": [room]}
        r = await h.get(f"/api/rooms/{room['_id']}", headers=bearer(token))
        assert r.status_code == 200 and r.json()["data"] == room
        r = await h.get("/api/rooms/0123456789abcdef01234567", headers=bearer(token))
        assert r.status_code == 404 and r.json()["success"] is False

        for headers in ({}, bearer("garbage"), {"Authorization": token}, bearer(token + "x")):
            for method, url in (
                ("GET", "/api/rooms"),
                ("POST", "/api/rooms"),
                ("GET", f"/api/rooms/{room['_id']}"),
            ):
                r = await h.request(method, url, json={"name": "x"}, headers=headers)
                assert r.status_code == 401, (method, url, headers)
                assert r.json()["success"] is False

        r = await h.post("/api/rooms", content=b"nope", headers=bearer(token))
        assert r.status_code == 400
        r = await h.post("/api/rooms", json={"description": "no name"}, headers=bearer(token))
        assert r.status_code == 400

        r = await h.get("/api/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        r = await h.get("/")
        assert r.status_code == 200


# -- WebSocket: authentication ---------------------------------------------------


async def test_authenticate_ok_and_failures(tmp_path: Path) -> None:
    db = tmp_path / "glimpse.db"
    async with run_devserver(db) as server:
        alice_id, token = await register(server.api_url, "alice", PASSWORD)
        room_id = await create_room(server.api_url, token, "Lobby")
        secret = Store(db).jwt_secret  # a second reader of the same file
        ghost = issue_token(secret, "0123456789abcdef01234567", "ghost")
        expired = issue_token(secret, alice_id, "alice", now=time.time() - 8 * 24 * 3600)

        async with client(server, None, "c") as c:
            await c.send({"type": "join_room", "roomId": room_id})
            assert await c.recv() == {"type": "error", "message": "Authentication required"}
            await c.send({"type": "no_such_type"})
            assert await c.recv() == {"type": "error", "message": "Authentication required"}

            for frame, message in (
                ({"type": "authenticate"}, "No token provided"),
                ({"type": "authenticate", "token": ""}, "No token provided"),
                ({"type": "authenticate", "token": 42}, "No token provided"),
                ({"type": "authenticate", "token": "not.a.jwt"}, "Invalid token"),
                ({"type": "authenticate", "token": token[:-3] + "AAA"}, "Invalid token"),
                ({"type": "authenticate", "token": expired}, "Invalid token"),
                ({"type": "authenticate", "token": ghost}, "User not found"),
            ):
                await c.send(frame)
                assert await c.recv() == {"type": "auth_error", "message": message}, frame

            # The socket stayed open through all of that.
            msg = await c.authenticate(token)
            assert msg == {"type": "authenticated", "userId": alice_id, "username": "alice"}
            joined = await c.join(room_id)
            assert joined["name"] == "Lobby"


async def test_websocket_served_at_root_and_ws(devserver: DevServer) -> None:
    alice_id, token = await register(devserver.api_url, "alice", PASSWORD)
    for url in (devserver.ws_root_url, devserver.ws_url):
        async with GlimpseClient(url) as c:
            await c.connect(url)
            assert (await c.authenticate(token))["userId"] == alice_id
    async with http(devserver) as h:  # and plain HTTP on "/" still works
        assert (await h.get("/")).status_code == 200


# -- WebSocket: rooms --------------------------------------------------------------


async def test_join_notifies_only_new_members(devserver: DevServer) -> None:
    api = devserver.api_url
    alice_id, alice_tok = await register(api, "alice", PASSWORD)
    bob_id, bob_tok = await register(api, "bob", PASSWORD)
    carol_id, carol_tok = await register(api, "carol", PASSWORD)
    room_id = await create_room(api, alice_tok, "Lobby", "the lobby")

    async with (
        client(devserver, alice_tok, "alice") as alice,
        client(devserver, bob_tok, "bob") as bob,
    ):
        # Bob is new: he joins first, so nobody is there to be told.
        joined = await bob.join(room_id)
        assert joined["roomId"] == room_id and joined["name"] == "Lobby"
        assert joined["description"] == "the lobby"
        users = {u["id"]: u for u in joined["users"]}
        assert set(users) == {alice_id, bob_id}
        assert users[bob_id]["isActive"] is True and users[bob_id]["username"] == "bob"
        assert users[alice_id]["isActive"] is True  # connected, though not joined
        assert all(isinstance(u["lastActive"], str) for u in joined["users"])
        assert any(m["content"] == "bob joined the room" for m in joined["messages"])

        # The creator was a member from the start: her first join tells nobody.
        await alice.join(room_id)
        assert "user_joined" not in types(await bob.drain())

        await alice.send({"type": "join_room", "roomId": "0123456789abcdef01234567"})
        assert await alice.expect("error") == {"type": "error", "message": "Room not found"}

        async with client(devserver, carol_tok, "carol") as carol:
            await carol.join(room_id)
            for member in (alice, bob):
                note = await member.expect("user_joined")
                assert note["userId"] == carol_id and note["username"] == "carol"
                assert note["message"]["content"] == "carol joined the room"
                assert note["message"]["type"] == "system"
            assert "user_joined" not in types(await carol.drain())

            # Bob reconnects and joins again: he is told about the room, nobody about him.
            await bob.close()
            await alice.expect("user_offline", lambda m: m["userId"] == bob_id)
            async with client(devserver, bob_tok, "bob2") as bob2:
                again = await bob2.join(room_id)
                assert {u["id"] for u in again["users"]} == {alice_id, bob_id, carol_id}
                assert all(u["isActive"] for u in again["users"])
                for other in (alice, carol):
                    assert "user_joined" not in types(await other.drain())

                # Chat and typing go through the room too.
                await bob2.send(
                    {"type": "send_message", "roomId": room_id, "content": "héllo ✓ 👋"}
                )
                for member in (alice, carol, bob2):
                    msg = await member.expect("new_message")
                    assert msg["message"]["content"] == "héllo ✓ 👋"
                    assert msg["message"]["sender"] == {"id": bob_id, "username": "bob"}
                await bob2.send({"type": "typing", "roomId": room_id, "isTyping": True})
                status = await alice.expect("typing_status")
                assert status["userId"] == bob_id and status["isTyping"] is True
                assert "typing_status" not in types(await bob2.drain())


async def test_leave_room(devserver: DevServer) -> None:
    api = devserver.api_url
    alice_id, alice_tok = await register(api, "alice", PASSWORD)
    bob_id, bob_tok = await register(api, "bob", PASSWORD)
    room_id = await create_room(api, alice_tok, "Lobby")
    async with (
        client(devserver, alice_tok, "alice") as alice,
        client(devserver, bob_tok, "bob") as bob,
    ):
        await alice.join(room_id)
        await bob.join(room_id)
        await alice.expect("user_joined")

        assert await bob.leave(room_id) == {"type": "room_left", "roomId": room_id}
        left = await alice.expect("user_left")
        assert left["userId"] == bob_id and left["username"] == "bob"
        assert left["message"]["content"] == "bob left the room"

        async with http(devserver) as h:
            r = await h.get(f"/api/rooms/{room_id}", headers=bearer(alice_tok))
            assert r.json()["data"]["members"] == [alice_id]

        # Bob no longer gets the room's traffic...
        await alice.send({"type": "send_message", "roomId": room_id, "content": "bye bob"})
        await alice.expect("new_message")
        assert "new_message" not in types(await bob.drain())
        # ... and coming back makes him a new member again.
        await bob.join(room_id)
        assert (await alice.expect("user_joined"))["userId"] == bob_id


async def test_disconnect_sends_user_offline_and_keeps_membership(devserver: DevServer) -> None:
    api = devserver.api_url
    alice_id, alice_tok = await register(api, "alice", PASSWORD)
    bob_id, bob_tok = await register(api, "bob", PASSWORD)
    room_id = await create_room(api, alice_tok, "Lobby")

    async def connections() -> int:
        async with http(devserver) as h:
            return int((await h.get("/api/health")).json()["connections"])

    async with client(devserver, alice_tok, "alice") as alice:
        await alice.join(room_id)
        async with (
            client(devserver, bob_tok, "bob") as bob,
            client(devserver, bob_tok, "bob-tab2") as bob2,
        ):
            await bob.join(room_id)
            await bob2.join(room_id)
            await alice.expect("user_joined")
            # One of Bob's two sockets closes: he is still online.
            await bob2.close()
            await wait_until(lambda: _equals(connections, 2))
            assert "user_offline" not in types(await alice.drain())
            # The last one closes: now he is offline.
            await bob.close()
            offline = await alice.expect("user_offline")
        assert offline["userId"] == bob_id and offline["username"] == "bob"
        assert isinstance(offline["message"], dict)

        await alice.send({"type": "get_room_users", "roomId": room_id})
        users = {u["id"]: u for u in (await alice.expect("room_users"))["users"]}
        assert set(users) == {alice_id, bob_id}
        assert users[bob_id]["isActive"] is False and users[alice_id]["isActive"] is True
        async with http(devserver) as h:
            r = await h.get(f"/api/rooms/{room_id}", headers=bearer(alice_tok))
            assert set(r.json()["data"]["members"]) == {alice_id, bob_id}


async def _equals(probe: Callable[[], Any], value: Any) -> bool:
    return bool(await probe() == value)


# -- WebSocket: signaling ------------------------------------------------------------


async def test_relay_rewrites_peer_id_in_both_dialects(devserver: DevServer) -> None:
    api = devserver.api_url
    alice_id, alice_tok = await register(api, "alice", PASSWORD)
    bob_id, bob_tok = await register(api, "bob", PASSWORD)
    mallory_id, mallory_tok = await register(api, "mallory", PASSWORD)
    _, dave_tok = await register(api, "dave", PASSWORD)
    room_id = await create_room(api, alice_tok, "Lobby")
    async with (
        client(devserver, alice_tok, "alice") as alice,
        client(devserver, bob_tok, "bob") as bob,
        client(devserver, mallory_tok, "mallory") as mallory,
    ):
        await alice.join(room_id)
        await bob.join(room_id)

        # Canonical dialect.
        await alice.signal(room_id, bob_id, "offer", OFFER)
        got = await bob.expect("webrtc_signal")
        assert got == {
            "type": "webrtc_signal",
            "signalType": "offer",
            "roomId": room_id,
            "peerId": alice_id,
            "signal": OFFER,
        }
        # Browser dialect: the kind is the type; it goes out canonical.
        await bob.send({"type": "answer", "roomId": room_id, "peerId": alice_id, "signal": ANSWER})
        got = await alice.expect("webrtc_signal")
        assert got == {
            "type": "webrtc_signal",
            "signalType": "answer",
            "roomId": room_id,
            "peerId": bob_id,
            "signal": ANSWER,
        }
        await bob.send(
            {"type": "ice-candidate", "roomId": room_id, "peerId": alice_id, "signal": CANDIDATE}
        )
        got = await alice.expect("webrtc_signal")
        assert got["signalType"] == "ice-candidate" and got["peerId"] == bob_id
        assert got["signal"] == CANDIDATE
        # End of candidates.
        await alice.signal(room_id, bob_id, "ice-candidate", {"candidate": "", "sdpMid": "0"})
        assert (await bob.expect("webrtc_signal"))["signal"]["candidate"] == ""

        # A member that is not connected.
        async with client(devserver, dave_tok, "dave") as dave:
            dave_id = dave.user_id
            await dave.join(room_id)
        await alice.expect("user_offline")
        await alice.signal(room_id, str(dave_id), "offer", OFFER)
        assert await alice.expect("error") == {"type": "error", "message": "Peer not connected"}

        # A sender that is not a member cannot signal into the room.
        await mallory.signal(room_id, bob_id, "offer", OFFER)
        assert (await mallory.expect("error"))["message"] == "Not a member of this room"
        await alice.signal(room_id, mallory_id, "bogus", OFFER)
        assert "signalType" in (await alice.expect("error"))["message"]
        await alice.send(
            {"type": "webrtc_signal", "signalType": "offer", "roomId": room_id, "peerId": bob_id}
        )
        assert "signal" in (await alice.expect("error"))["message"]
        assert "webrtc_signal" not in types(await bob.drain())


# -- bad input -----------------------------------------------------------------------


async def test_bad_input_gets_errors_and_socket_stays_open(devserver: DevServer) -> None:
    _, token = await register(devserver.api_url, "alice", PASSWORD)
    room_id = await create_room(devserver.api_url, token, "Lobby")
    async with client(devserver, token, "alice") as alice:
        await alice.join(room_id)
        frames: list[str | bytes] = [
            "{not json",
            "",
            b"\x00\x01binary",
            b'{"type": "ping"}',
            "[1, 2, 3]",
            '"just a string"',
            "null",
            "{}",
            '{"type": 7}',
            '{"type": "does_not_exist"}',
            '{"type": "join_room"}',
            '{"type": "join_room", "roomId": 12}',
            '{"type": "join_room", "roomId": ["x"]}',
            '{"type": "leave_room", "roomId": null}',
            '{"type": "webrtc_signal", "signalType": 1, "roomId": "r", "peerId": "p", "signal": 0}',
            '{"type": "offer", "roomId": "r", "peerId": {}, "signal": {}}',
            json.dumps({"type": "send_message", "roomId": room_id, "content": 5}),
            json.dumps({"type": "typing", "roomId": room_id, "isTyping": "yes"}),
            json.dumps({"type": "send_message", "roomId": room_id, "content": "\ud800"}),
            '{"type": "join_room", "roomId": "\\udfff"}',
            "[" * 100_000 + "]" * 100_000,
            "1" * 10_000,
        ]
        for frame in frames:
            await alice.send_raw(frame)
            replies = await alice.drain()
            assert types(replies) == ["error"], (frame[:80], replies)
            assert isinstance(replies[0]["message"], str) and replies[0]["message"]
        # Still fully functional.
        await alice.send({"type": "get_room_users", "roomId": room_id})
        assert (await alice.expect("room_users"))["roomId"] == room_id


async def test_oversized_frame_closes_only_that_socket(devserver: DevServer) -> None:
    api = devserver.api_url
    alice_id, alice_tok = await register(api, "alice", PASSWORD)
    bob_id, bob_tok = await register(api, "bob", PASSWORD)
    _, eve_tok = await register(api, "eve", PASSWORD)
    room_id = await create_room(api, alice_tok, "Lobby")
    async with (
        client(devserver, alice_tok, "alice") as alice,
        client(devserver, bob_tok, "bob") as bob,
        client(devserver, eve_tok, "eve") as eve,
    ):
        await alice.join(room_id)
        await bob.join(room_id)
        await eve.join(room_id)
        big = json.dumps(
            {"type": "send_message", "roomId": room_id, "content": "x" * MAX_FRAME_BYTES}
        )
        with contextlib.suppress(ConnectionClosed):
            await eve.send_raw(big)
        assert await eve.expect_closed() == 1009

        await alice.expect("user_offline", lambda m: m["username"] == "eve")
        await alice.signal(room_id, bob_id, "offer", OFFER)
        assert (await bob.expect("webrtc_signal"))["peerId"] == alice_id
        async with http(devserver) as h:
            assert (await h.get("/api/health")).json()["status"] == "ok"
        # Just under the limit is fine (the server caps chat content itself).
        await alice.send_raw(" " * (MAX_FRAME_BYTES - 100) + '{"type": "ping", "id": 1}')
        assert (await alice.expect("pong"))["id"] == 1


async def test_client_that_stops_reading_is_dropped_not_waited_for(devserver: DevServer) -> None:
    api = devserver.api_url
    _, alice_tok = await register(api, "alice", PASSWORD)
    bob_id, bob_tok = await register(api, "bob", PASSWORD)
    _, slow_tok = await register(api, "slow", PASSWORD)
    room_id = await create_room(api, alice_tok, "Lobby")
    async with (
        client(devserver, alice_tok, "alice") as alice,
        client(devserver, bob_tok, "bob") as bob,
        client(devserver, slow_tok, "slow") as slow,
    ):
        for c in (alice, bob, slow):
            await c.join(room_id)
        # Slow never reads again; Alice chats until the server gives up on Slow.
        chunk = "y" * 9000
        with trio.fail_after(30):
            while True:
                await alice.send({"type": "send_message", "roomId": room_id, "content": chunk})
                await alice.expect("new_message")
                if any(m["type"] == "user_offline" for m in await bob.drain()):
                    break
        await alice.signal(room_id, bob_id, "offer", OFFER)
        assert (await bob.expect("webrtc_signal"))["signal"] == OFFER
        assert await slow.expect_closed() == 1008


# -- persistence across a real restart ---------------------------------------------------


@pytest.mark.slow
async def test_membership_and_tokens_survive_kill_and_restart(tmp_path: Path) -> None:
    db = tmp_path / "glimpse.db"
    async with devserver_process(db) as proc:
        server = proc.server
        alice_id, alice_tok = await register(server.api_url, "alice", PASSWORD)
        bob_id, bob_tok = await register(server.api_url, "bob", PASSWORD)
        room_id = await create_room(server.api_url, alice_tok, "Lobby")
        async with client(server, bob_tok, "bob") as bob:
            await bob.join(room_id)  # Bob becomes a member
        old_port = proc.port

        await proc.kill()
        assert not proc.running
        assert await proc.start() == old_port

        # Same port, same database: tokens issued before the crash still work.
        assert (await login(server.api_url, "alice", PASSWORD))[0] == alice_id
        async with (
            client(server, alice_tok, "alice") as alice,
            client(server, bob_tok, "bob") as bob,
        ):
            await alice.join(room_id)
            joined = await bob.join(room_id)
            assert {u["id"] for u in joined["users"]} == {alice_id, bob_id}
            assert "user_joined" not in types(await alice.drain())

        assert await proc.restart() == old_port
        async with http(server) as h:
            r = await h.get(f"/api/rooms/{room_id}", headers=bearer(bob_tok))
            assert set(r.json()["data"]["members"]) == {alice_id, bob_id}
        assert await proc.terminate() == 0  # SIGTERM is a clean stop


# -- arbitrary input -----------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
message_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "authenticate",
                "join_room",
                "leave_room",
                "webrtc_signal",
                "offer",
                "answer",
                "ice-candidate",
                "send_message",
                "typing",
                "get_room_users",
                "user_joined",
                "",
            ]
        )
    },
    optional={
        "token": json_values,
        "roomId": json_values,
        "peerId": json_values,
        "signalType": json_values,
        "signal": json_values,
        "content": json_values,
        "isTyping": json_values,
    },
)


async def test_arbitrary_json_always_answered(devserver: DevServer) -> None:
    _, token = await register(devserver.api_url, "alice", PASSWORD)
    room_id = await create_room(devserver.api_url, token, "Lobby")
    async with client(devserver, token, "alice") as alice:
        await alice.join(room_id)

        sent: list[Any] = []

        async def probe(value: Any) -> None:
            sent.append(value)
            await alice.send_raw(json.dumps(value))
            replies = await alice.drain()
            assert replies, f"no reply to {value!r}"
            assert all(m["type"] in {"error", "auth_error"} for m in replies), replies

        # Hypothesis drives a sync function; run it in a thread that calls back into Trio,
        # so that every example reuses the one connection.
        @settings(
            max_examples=50,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(json_values | message_like)
        def check(value: Any) -> None:
            trio.from_thread.run(probe, value)

        await trio.to_thread.run_sync(check)
        assert len(sent) >= 40  # hypothesis really ran (it may stop short of 50 on duplicates)
        assert any(isinstance(v, dict) and v.get("type") for v in sent)
        await alice.send({"type": "get_room_users", "roomId": room_id})
        assert (await alice.expect("room_users"))["roomId"] == room_id
