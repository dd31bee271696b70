"""publish/whip.py's pure parts: Link headers (RFC 9725 section 4.6) and URL redaction."""

from glimpse_edge.publish.whip import LinkIceServer, WhipError, parse_ice_links, redact


def test_link_headers_give_ice_servers_and_nothing_else() -> None:
    links = parse_ice_links([
        '<stun:stun.example.net>; rel="ice-server"',
        '<turn:turn.example.net?transport=udp>; rel="ice-server"; username="user"; '
        'credential="pass word"; credential-type="password", '
        '<turns:turn.example.net:443?transport=tcp>;rel=ice-server;username=u2;credential=c2',
        '<https://example.net/next>; rel="next", <stun:x.example>; rel="other"',
        "garbage without brackets",
    ])
    assert links == (
        LinkIceServer("stun:stun.example.net"),
        LinkIceServer("turn:turn.example.net?transport=udp", "user", "pass word"),
        LinkIceServer("turns:turn.example.net:443?transport=tcp", "u2", "c2"),
    )
    assert parse_ice_links([]) == ()
    assert parse_ice_links(['<http://x>; rel="ice-server"']) == ()  # not a STUN/TURN URL


def test_redact_drops_query_and_user_info() -> None:
    assert redact("https://user:key@sfu.example:8443/whip/cam?key=SECRET#x") == (
        "https://sfu.example:8443/whip/cam")
    assert redact("http://127.0.0.1:7080/whip/endpoint/a") == "http://127.0.0.1:7080/whip/endpoint/a"


def test_errors_say_method_url_and_status() -> None:
    err = WhipError("POST", "https://sfu.example/whip", "Service Unavailable", 503)
    assert str(err) == "WHIP POST https://sfu.example/whip: 503 Service Unavailable"
    assert str(WhipError("DELETE", "https://sfu.example/r/1", "connection lost")) == (
        "WHIP DELETE https://sfu.example/r/1: connection lost")
