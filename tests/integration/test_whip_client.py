"""The WHIP client (publish/whip.py) against tiny local HTTP servers that misbehave on
purpose: slow, dripping, garbage, huge, not HTTP at all; and one that behaves, to
check what the client sends (Authorization on every request, the offer as
application/sdp) and how it reads the answer (relative Location, Link ICE servers).
Then the agent itself against a server that answers garbage: a named error and
back-off, no retry storm.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
import trio
from support.agent import AgentProcess, write_secret

from glimpse_edge.publish.whip import WhipAuthError, WhipClient, WhipError

TOKEN = "s3cret-stream-key"
ANSWER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"

Handler = Callable[[trio.SocketStream, bytes], Awaitable[None]]


async def read_request(stream: trio.SocketStream) -> bytes:
    """One request: headers and a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + body


class Server:
    """A one-handler HTTP-ish server on loopback; ``requests`` keeps what it got."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> None:
        async def serve(stream: trio.SocketStream) -> None:
            # the client may hang up on a bad answer; the handler may close first
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while True:
                    request = await read_request(stream)
                    if not request:
                        return
                    self.requests.append(request)
                    await self.handler(stream, request)

        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/whip/endpoint/cam"


def response(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()),
             f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


async def good(stream: trio.SocketStream, request: bytes) -> None:
    method = request.split(b" ", 1)[0]
    if method == b"POST":
        await stream.send_all(response("201 Created", {
            "Content-Type": "application/sdp",
            "Location": "../resource/42",
            "Link": '<stun:stun.example.net:3478>; rel="ice-server", '
                    '<turn:turn.example.net?transport=udp>; rel="ice-server"; '
                    'username="u"; credential="p"; credential-type="password", '
                    '<https://example.net/x>; rel="other"',
            "Allow": "OPTIONS, POST",
        }, ANSWER.encode()))
    elif method == b"OPTIONS":
        await stream.send_all(response("204 No Content", {
            "Link": '<stun:stun.example.net:3478>; rel="ice-server"'}))
    else:
        await stream.send_all(response("200 OK", {}))


async def test_the_offer_the_answer_location_links_and_auth_on_every_request() -> None:
    server = Server(good)
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        async with WhipClient(server.url, TOKEN, timeout=2) as client:
            links, _allowed = await client.options()
            session = await client.publish("v=0\r\noffer\r\n")
            status = await client.delete(session.resource)
        nursery.cancel_scope.cancel()
    assert [s.url for s in links] == ["stun:stun.example.net:3478"]
    assert session.answer == ANSWER
    assert session.resource == f"http://127.0.0.1:{server.port}/whip/resource/42"
    assert [(s.url, s.username, s.credential) for s in session.ice_servers] == [
        ("stun:stun.example.net:3478", None, None),
        ("turn:turn.example.net?transport=udp", "u", "p")]
    assert session.can_patch is False  # Allow lists no PATCH: none is ever sent
    assert status == 200
    methods = [r.split(b" ", 2)[:2] for r in server.requests]
    assert methods == [[b"OPTIONS", b"/whip/endpoint/cam"], [b"POST", b"/whip/endpoint/cam"],
                       [b"DELETE", b"/whip/resource/42"]]
    for request in server.requests:
        assert f"\r\nauthorization: Bearer {TOKEN}\r\n".encode().lower() in request.lower()
    post = server.requests[1]
    assert b"content-type: application/sdp" in post.lower()
    assert post.endswith(b"v=0\r\noffer\r\n")


async def failing(handler: Handler, timeout: float = 1.0) -> tuple[WhipError, float, str]:
    server = Server(handler)
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        t0 = trio.current_time()
        async with WhipClient(server.url, TOKEN, timeout=timeout) as client:
            with pytest.raises(WhipError) as caught:
                await client.publish("v=0\r\n")
        took = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    text = str(caught.value)
    assert TOKEN not in text
    assert server.url in text, text
    return caught.value, took, text


async def test_a_server_that_never_answers_is_cut_off_at_the_timeout() -> None:
    async def silent(stream: trio.SocketStream, request: bytes) -> None:
        await trio.sleep_forever()

    error, took, text = await failing(silent)
    assert 0.9 < took < 1.6
    assert "no complete response within 1 s" in text and error.status is None


async def test_an_answer_that_drips_is_cut_off_at_the_timeout() -> None:
    async def drip(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(b"HTTP/1.1 201 Created\r\nContent-Type: application/sdp\r\n"
                              b"Location: /r/1\r\nContent-Length: 100000\r\n\r\n")
        while True:
            await stream.send_all(b"v")
            await trio.sleep(0.05)

    _error, took, text = await failing(drip)
    assert took < 1.6 and "no complete response" in text


@pytest.mark.parametrize(("reply", "expected"), [
    (response("201 Created", {"Content-Type": "application/sdp", "Location": "/r/1"},
              b"<html>hello</html>"), "the answer is not SDP"),
    (response("201 Created", {"Content-Type": "text/html", "Location": "/r/1"},
              ANSWER.encode()), "not application/sdp"),
    (response("201 Created", {"Content-Type": "application/sdp"}, ANSWER.encode()),
     "201 without a Location"),
    (response("200 OK", {"Content-Type": "application/sdp"}, ANSWER.encode()),
     "expected 201 Created"),
    (response("503 Service Unavailable", {}, b"Janus unavailable"), "503 Janus unavailable"),
    (response("201 Created", {"Content-Type": "application/sdp", "Location": "/r/1"},
              b"v=0" + b"x" * 300_000), "larger than"),
    (b"this is not HTTP\r\n\r\n", "broke the HTTP protocol"),
])
async def test_garbage_is_named(reply: bytes, expected: str) -> None:
    async def answer(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(reply)
        await stream.aclose()

    _error, took, text = await failing(answer)
    assert expected in text, text
    assert took < 1.0


async def test_a_refused_token_is_an_auth_error_with_its_status() -> None:
    async def refuse(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(response("401 Unauthorized", {}, b"bad token"))

    error, _took, text = await failing(refuse)
    assert isinstance(error, WhipAuthError) and error.status == 401
    assert "401 bad token" in text


@pytest.mark.timeout(60)
async def test_the_agent_backs_off_from_a_server_that_answers_garbage(tmp_path: Path) -> None:
    async def garbage(stream: trio.SocketStream, request: bytes) -> None:
        if request.startswith(b"POST"):
            await stream.send_all(response("201 Created", {"Content-Type": "application/sdp",
                                                           "Location": "/r/1"}, b"garbage"))
        else:
            await stream.send_all(response("204 No Content", {}))

    server = Server(garbage)
    directory = tmp_path / "agent"
    directory.mkdir()
    token = write_secret(directory / "whip-token", TOKEN)
    config = directory / "config.toml"
    config.write_text(
        f'[publish]\nwhip_url = "{{url}}"\ntoken_file = "{token}"\n'
        "reconnect_min = 0.5\nreconnect_max = 2.0\nrequest_timeout = 2.0\n\n"
        '[ice]\nservers = []\n\n[observe]\nlisten = ""\n\n'
        '[log]\nlevel = "debug"\nformat = "json"\n\n'
        '[video]\nwidth = 320\nheight = 180\nframerate = 15\n\n[audio]\nsource = "tone"\n')
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        config.write_text(config.read_text().replace("{url}", server.url))
        agent = AgentProcess(config)
        await agent.start(nursery)
        ended = await agent.wait_for("publish.session_ended", timeout=15)
        assert "the answer is not SDP" in ended["error"] and server.url in ended["error"]
        # capped (2 s), jittered back-off, never a storm: each failure waits within
        # the bounds, and the server saw one POST per try
        t0 = trio.current_time()
        await agent.wait_for("publish.session_ended", count=4, timeout=20)
        took = trio.current_time() - t0
        ends = agent.find("publish.session_ended")
        delays = [e["retry_s"] for e in ends[:3]]
        assert all(0 < d <= 2.0 for d in delays), f"expected delays within (0, 2] s: {delays}"
        assert took >= 0.9 * sum(delays[:3]), f"3 retries took {took:.2f} s, delays {delays}"
        posts = [r for r in server.requests if r.startswith(b"POST")]
        assert len(posts) <= len(agent.find("publish.session_ended")) + 1, (
            f"expected one POST per try, saw {len(posts)} for {len(ends)} failures")
        assert TOKEN not in "\n".join(agent.raw_lines)
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit(10) == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("status", "expected", "summary"), [
    ("204 No Content", "pass", "answers"),
    ("401 Unauthorized", "fail", "refused the token (401)"),
    ("404 Not Found", "fail", "does not exist"),
    ("405 Method Not Allowed", "warn", "checked when publishing"),
])
async def test_doctor_asks_the_endpoint_without_publishing(
        tmp_path: Path, status: str, expected: str, summary: str) -> None:
    from glimpse_edge.config import load_config
    from glimpse_edge.doctor.publish import check_publish
    from glimpse_edge.doctor.run import Doctor

    async def answer(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(response(status, {
            "Link": '<stun:stun.example.net>; rel="ice-server"'}))

    server = Server(answer)
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        token = write_secret(tmp_path / "whip-token", TOKEN)
        config_path = tmp_path / "config.toml"
        config_path.write_text(f'[publish]\nwhip_url = "{server.url}"\n'
                               f'token_file = "{token}"\n')
        doctor = Doctor(config_path, timeout=2)
        await check_publish(doctor, load_config(config_path))
        nursery.cancel_scope.cancel()
    [check] = doctor.checks
    assert (check.name, check.status) == ("publish", expected), check
    assert summary in check.summary and TOKEN not in check.summary
    assert [r.split(b" ", 1)[0] for r in server.requests] == [b"OPTIONS"]  # nothing published


@pytest.mark.timeout(60)
async def test_a_stop_while_the_post_is_out_still_deletes_the_session(tmp_path: Path) -> None:
    posted = trio.Event()
    stopping = trio.Event()  # the agent logged that it stops: answer the POST then

    async def slow(stream: trio.SocketStream, request: bytes) -> None:
        if request.startswith(b"POST"):
            posted.set()
            await stopping.wait()
            await stream.send_all(response("201 Created", {
                "Content-Type": "application/sdp", "Location": "/whip/resource/7"},
                ANSWER.encode()))
        else:
            await stream.send_all(response("204 No Content", {}))

    server = Server(slow)
    directory = tmp_path / "agent"
    directory.mkdir()
    token = write_secret(directory / "whip-token", TOKEN)
    config = directory / "config.toml"
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        config.write_text(
            f'[publish]\nwhip_url = "{server.url}"\ntoken_file = "{token}"\n'
            "request_timeout = 5.0\n\n"
            '[ice]\nservers = []\n\n[observe]\nlisten = ""\n\n'
            '[log]\nlevel = "debug"\nformat = "json"\n\n'
            '[video]\nwidth = 320\nheight = 180\nframerate = 15\n\n[audio]\nsource = "tone"\n')
        agent = AgentProcess(config)
        await agent.start(nursery)
        with trio.fail_after(20):
            await posted.wait()
        agent.signal(signal.SIGTERM)  # while the POST waits for its answer
        await agent.wait_for("agent.stopping", timeout=10)
        stopping.set()
        assert await agent.wait_exit(10) == 0
        nursery.cancel_scope.cancel()
    methods = [r.split(b" ", 2)[:2] for r in server.requests]
    assert [b"DELETE", b"/whip/resource/7"] in methods, methods
    assert agent.find("publish.deleted", reason="stopped")
