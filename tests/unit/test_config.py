"""Configuration loading: merge order, defaults, and errors an operator can act on.

The agent runs unattended; the only feedback an operator gets about a bad config is the
error text in the journal, so most tests here pin down *which file* and *which key* an
error names, not just that loading fails.
"""

import json
import math
import os
import pickle
import re
import tempfile
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glimpse_edge.config import (
    DEFAULT_CONFIG_PATH,
    AuthConfig,
    Config,
    ConfigError,
    IceServer,
    RoomConfig,
    SecretFileError,
    ServerConfig,
    check_secrets,
    load_config,
    parse_listen,
    read_secret_file,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "glimpse-edge.toml"

MINIMAL = """
[server]
ws_url = "wss://glimpse.example.com/ws"
[auth]
token_file = "token"
[room]
id = "lobby"
"""


def with_server(extra: str) -> str:
    """MINIMAL with more keys in its [server] table (TOML forbids a second [server])."""
    return MINIMAL.replace("[server]\n", f"[server]\n{extra}\n")


def write(path: Path, text: str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        path.chmod(mode)
    return path


@pytest.fixture
def main(tmp_path: Path) -> Path:
    """A valid main file; tests add drop-ins or overwrite it."""
    return write(tmp_path / "etc" / "config.toml", MINIMAL)


def dropin(main: Path, name: str, text: str) -> Path:
    return write(main.parent / "config.d" / name, text)


def load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


# --------------------------------------------------------------------------- defaults


def test_minimal_file_gets_documented_defaults(main: Path) -> None:
    config = load_config(main)

    assert config.server.ws_url == "wss://glimpse.example.com/ws"
    assert config.server.api_url == ""
    assert config.server.connect_timeout == 10.0
    assert config.server.ping_interval == 15.0
    assert config.server.ping_timeout == 10.0
    assert config.server.ca_file is None
    assert config.server.max_message_size == 1048576
    assert (config.server.reconnect_min, config.server.reconnect_max) == (0.5, 30.0)
    assert config.server.auth_retry == 300.0
    assert config.auth == AuthConfig(token_file=main.parent / "token")
    assert config.auth.refresh_margin == 3600.0
    assert config.room == RoomConfig(id="lobby", display_name="")
    v = config.video
    assert (v.source, v.device, v.path, v.codec) == ("testpattern", "/dev/video0", None, "h264")
    assert (v.width, v.height, v.framerate, v.keyframe_interval) == (1280, 720, 30, 2.0)
    assert (v.max_bitrate, v.min_bitrate) == (2_500_000, 150_000)
    a = config.audio
    assert (a.source, a.device, a.rate, a.channels) == ("tone", "default", 48000, 1)
    assert (a.tone_frequency, a.period_ms) == (440.0, 20)
    assert config.ice.servers == (IceServer(urls=("stun:stun.l.google.com:19302",)),)
    assert config.ice.relay_only is False
    assert config.peers.max_peers == 8
    assert config.observe.listen == "127.0.0.1:9750"
    assert config.observe.address == ("127.0.0.1", 9750)
    assert (config.log.level, config.log.format) == ("info", "auto")
    d = config.display
    assert (d.enabled, d.driver, d.self_view, d.max_tiles, d.show_names) == (
        False, "auto", False, 9, True)
    assert config.sources == (main,)


@pytest.mark.parametrize("driver", ["auto", "kmsdrm", "x11", "wayland"])
@pytest.mark.parametrize("max_tiles", [1, 4, 9])
def test_display_accepts_every_driver_and_tile_count(main: Path, driver: str,
                                                     max_tiles: int) -> None:
    dropin(main, "20-display.toml",
           f'[display]\nenabled = true\ndriver = "{driver}"\nself_view = true\n'
           f"max_tiles = {max_tiles}\nshow_names = false\n")
    d = load_config(main).display
    assert (d.enabled, d.driver, d.self_view, d.max_tiles, d.show_names) == (
        True, driver, True, max_tiles, False)


def test_config_is_frozen(main: Path) -> None:
    config = load_config(main)
    with pytest.raises(AttributeError):
        config.server.ping_interval = 1.0  # type: ignore[misc]


def test_integers_are_accepted_for_float_keys(main: Path) -> None:
    dropin(main, "10.toml", "[server]\nping_interval = 5\n")
    assert load_config(main).server.ping_interval == 5.0


def test_relative_main_path_is_made_absolute(main: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(main.parent)
    config = load_config("config.toml")
    assert config.sources == (main,)
    assert config.auth.token_file == main.parent / "token"


def test_default_config_path() -> None:
    assert Path("/etc/glimpse-edge/config.toml") == DEFAULT_CONFIG_PATH


# --------------------------------------------------------------------------- drop-ins


def test_dropins_merge_in_file_name_order_over_the_main_file(main: Path) -> None:
    write(main, with_server("ping_interval = 1") + "[video]\nwidth = 640\nheight = 480\n")
    d = main.parent / "config.d"
    b = dropin(main, "20-b.toml", "[server]\nping_interval = 3\n")
    a = dropin(main, "10-a.toml", "[server]\nping_interval = 2\n[video]\nheight = 360\n")
    # Not drop-ins: wrong suffix, hidden (editor files), directories.  Invalid on purpose.
    write(d / "30-c.toml.disabled", "this is not toml")
    write(d / "README", "[server]\nping_interval = 99\n")
    write(d / ".#40-d.toml", "not toml either")
    (d / "50-dir.toml").mkdir()

    config = load_config(main)

    assert config.server.ping_interval == 3.0  # main < 10-a < 20-b
    assert (config.video.width, config.video.height) == (640, 360)  # tables merge per key
    assert config.server.ws_url == "wss://glimpse.example.com/ws"
    assert config.sources == (main, a, b)


def test_dropin_replaces_arrays_as_a_whole(main: Path) -> None:
    write(
        main,
        MINIMAL
        + '[[ice.servers]]\nurls = ["stun:a.example:3478"]\n'
        + '[[ice.servers]]\nurls = ["stun:b.example:3478", "stun:c.example:3478"]\n',
    )
    dropin(main, "10.toml", '[[ice.servers]]\nurls = ["stun:d.example:3478"]\n')
    assert load_config(main).ice.servers == (IceServer(urls=("stun:d.example:3478",)),)


def test_dropin_can_empty_the_ice_server_list(main: Path) -> None:
    dropin(main, "10.toml", "[ice]\nservers = []\n")
    assert load_config(main).ice.servers == ()


def test_empty_string_unsets_an_optional_path(main: Path) -> None:
    write(main, with_server('ca_file = "ca.pem"'))
    dropin(main, "10.toml", '[server]\nca_file = ""\n')
    assert load_config(main).server.ca_file is None


def test_dropin_can_switch_auth_from_token_to_login(main: Path) -> None:
    dropin(
        main,
        "10-login.toml",
        '[auth]\ntoken_file = ""\nusername = "cam"\npassword_file = "pw"\n'
        '[server]\napi_url = "https://glimpse.example.com"\n',
    )
    auth = load_config(main).auth
    assert auth.token_file is None
    assert auth.username == "cam"
    assert auth.password_file == main.parent / "config.d" / "pw"


def test_only_dropins_may_provide_everything(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", "")
    dropin(main, "00-all.toml", MINIMAL)
    assert load_config(main).room.id == "lobby"


# --------------------------------------------------------------------------- relative paths


def test_relative_paths_resolve_against_the_file_that_set_them(main: Path) -> None:
    write(
        main,
        with_server('ca_file = "certs/ca.pem"')
        + '[video]\nsource = "file"\npath = "/srv/clip.mp4"\n',
    )
    dropin(
        main,
        "10-turn.toml",
        '[auth]\ntoken_file = "secrets/token"\n'
        '[[ice.servers]]\nurls = ["turn:turn.example.com:3478"]\n'
        'username = "u"\ncredential_file = "turn.cred"\n',
    )
    config = load_config(main)
    etc, d = main.parent, main.parent / "config.d"
    assert config.server.ca_file == etc / "certs" / "ca.pem"
    assert config.video.path == Path("/srv/clip.mp4")  # absolute paths are kept
    assert config.auth.token_file == d / "secrets" / "token"
    assert config.ice.servers[0].credential_file == d / "turn.cred"


# --------------------------------------------------------------------------- errors

# (TOML text, key, reason fragment).  Each case is tried twice: merged into the main
# file, and as the drop-in "config.d/10-x.toml"; the error must name that file.
ERROR_CASES: list[tuple[str, str, str]] = [
    ("[video]\nwidht = 640\n", "video.widht", "unknown key; did you mean width?"),
    ("[sever]\nws_url = 'x'\n", "sever", "unknown table; did you mean [server]?"),
    ("sources = ['x']\n", "sources", "unknown table"),
    ('[server]\nping_interval = "fast"\n', "server.ping_interval", 'number, got "fast"'),
    ("[server]\nping_interval = 0\n", "server.ping_interval", "> 0.0, got 0"),
    ("[server]\nping_interval = inf\n", "server.ping_interval", "<= 3600.0"),
    ("[server]\nping_interval = nan\n", "server.ping_interval", "> 0.0"),
    ("[peers]\nmax_peers = 65\n", "peers.max_peers", "<= 64, got 65"),
    ("[peers]\nmax_peers = 1.5\n", "peers.max_peers", "expected an integer, got 1.5"),
    ("[video]\nframerate = 0\n", "video.framerate", ">= 1"),
    ("[video]\nwidth = 641\n", "video.width", "multiple of 2"),
    ("[audio]\nchannels = 3\n", "audio.channels", "<= 2"),
    ("[audio]\nrate = 96000\n", "audio.rate", "<= 48000"),
    ("[audio]\nperiod_ms = 25\n", "audio.period_ms", "10, 20, 40, 60"),
    ("[log]\nlevel = 'verbose'\n", "log.level", 'expected one of: "debug", "info"'),
    ("[ice]\nrelay_only = 'yes'\n", "ice.relay_only", "expected true or false"),
    ("[video]\nsource = 'file'\n", "video.path", 'required when video.source = "file"'),
    ("[video]\nmin_bitrate = 3000000\n", "video.min_bitrate", "must not exceed"),
    ("[video]\nmax_bitrate = 0\n", "video.max_bitrate", ">= 1, got 0"),
    ("[server]\nreconnect_min = 60\n", "server.reconnect_min", "must not exceed"),
    ("[server]\nws_url = 'https://x.example/ws'\n", "server.ws_url", "ws:// or wss://"),
    ("[server]\nws_url = 'wss://'\n", "server.ws_url", "no host name"),
    ("[server]\napi_url = 'ftp://x.example'\n", "server.api_url", "http:// or https://"),
    ("[server]\nws_url = 5\n", "server.ws_url", "expected a string, got 5"),
    ("[auth]\ntoken_file = 5\n", "auth.token_file", "expected a path string"),
    ("[auth]\nusername = 'cam'\n", "auth.token_file", "not both"),
    ("[room]\nid = ''\n", "room.id", "must be set"),
    ("[room]\nid = '  '\n", "room.id", "must be set"),
    ("[observe]\nlisten = 'localhost'\n", "observe.listen", "HOST:PORT"),
    ("[observe]\nlisten = '[nothost]:80'\n", "observe.listen", "not an IPv6 address"),
    ("[observe]\nlisten = '0.0.0.0:70000'\n", "observe.listen", "out of range"),
    ("[[ice.servers]]\nurls = ['http://x']\n", "ice.servers[0].urls[0]", "stun:"),
    ("[[ice.servers]]\nurls = []\n", "ice.servers[0].urls", "length >= 1"),
    ("[[ice.servers]]\nurls = ['turn:t.example']\n", "ice.servers[0].username", "turn:"),
    (
        "[[ice.servers]]\nurls = ['turn:t.example']\nusername = 'u'\n",
        "ice.servers[0].credential_file",
        "required for turn:",
    ),
    (
        "[[ice.servers]]\nurls = ['stun:s.example']\nbogus = 1\n",
        "ice.servers[0].bogus",
        "unknown key",
    ),
    ("[ice]\nrelay_only = true\n", "ice.relay_only", "no turn:/turns: URL"),
    ("server = 5\n", "server", "expected a table"),
    ("[display]\nenabled = 'yes'\n", "display.enabled", "expected true or false"),
    ("[display]\ndriver = 'fbdev'\n", "display.driver", 'expected one of: "auto", "kmsdrm"'),
    ("[display]\nmax_tiles = 0\n", "display.max_tiles", ">= 1, got 0"),
    ("[display]\nmax_tiles = 10\n", "display.max_tiles", "<= 9, got 10"),
    ("[display]\nself_view = 1\n", "display.self_view", "expected true or false"),
    ("[display]\nshow_names = 'no'\n", "display.show_names", "expected true or false"),
    ("[display]\nfullscreen = true\n", "display.fullscreen", "unknown key"),
]


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = _deep_merge(out[k], v) if both else v
    return out


def _dump(doc: dict[str, Any]) -> str:
    """Write a document as TOML (top-level keys with inline tables)."""
    return "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in doc.items())


@pytest.mark.parametrize(("text", "key", "reason"), ERROR_CASES)
@pytest.mark.parametrize("where", ["main", "dropin"])
def test_error_names_file_key_and_reason(
    main: Path, text: str, key: str, reason: str, where: str
) -> None:
    if where == "main":
        write(main, _dump(_deep_merge(tomllib.loads(MINIMAL), tomllib.loads(text))))
        expected_file = main
    else:
        expected_file = dropin(main, "10-x.toml", text)

    err = load_error(main)

    assert len(err.errors) == 1, str(err)
    assert (err.file, err.key) == (expected_file, key)
    assert reason in err.reason
    assert str(err) == f"{expected_file}: {key}: {err.reason}"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[server]\nws_url='wss://x.example'\n[auth]\ntoken_file='t'\n", "room.id", "required"),
        ("[room]\nid='r'\n[auth]\ntoken_file='t'\n", "server.ws_url", "required"),
        ("[server]\nws_url='wss://x.example'\n[room]\nid='r'\n", "auth", "no credentials"),
    ],
)
def test_missing_required_names_main_file(tmp_path: Path, text: str, key: str, reason: str) -> None:
    main = write(tmp_path / "config.toml", text)
    err = load_error(main)
    assert (err.file, err.key) == (main, key)
    assert reason in err.reason


@pytest.mark.parametrize(
    ("auth", "key", "reason"),
    [
        ('token_file = "t"\nusername = "u"\npassword_file = "p"', "auth.token_file", "not both"),
        ("", "auth", "no credentials"),
        ('username = "u"', "auth.password_file", "required when auth.username"),
        ('password_file = "p"', "auth.username", "required when auth.password_file"),
        ('username = "u"\npassword_file = "p"', "server.api_url", "required when auth.username"),
    ],
)
def test_auth_needs_exactly_one_method(tmp_path: Path, auth: str, key: str, reason: str) -> None:
    main = write(
        tmp_path / "config.toml",
        f'[server]\nws_url = "wss://x.example"\n[room]\nid = "r"\n[auth]\n{auth}\n',
    )
    err = load_error(main)
    assert (err.file, err.key) == (main, key)
    assert reason in err.reason


def test_login_auth_with_api_url_is_valid(tmp_path: Path) -> None:
    main = write(
        tmp_path / "config.toml",
        '[server]\nws_url = "wss://x.example/ws"\napi_url = "https://x.example"\n'
        '[room]\nid = "r"\n[auth]\nusername = "u"\npassword_file = "/run/pw"\n',
    )
    config = load_config(main)
    assert config.auth.uses_login
    assert config.auth.password_file == Path("/run/pw")


def test_error_names_the_dropin_that_overrode_a_good_value(main: Path) -> None:
    write(main, MINIMAL + "[peers]\nmax_peers = 4\n")
    dropin(main, "10-a.toml", "[peers]\nmax_peers = 5\n")
    bad = dropin(main, "20-b.toml", "[peers]\nmax_peers = 0\n")
    dropin(main, "30-c.toml", "[log]\nlevel = 'debug'\n")
    err = load_error(main)
    assert (err.file, err.key) == (bad, "peers.max_peers")


def test_cross_field_error_names_the_file_that_set_the_key(main: Path) -> None:
    bad = dropin(main, "10-video.toml", "[video]\nmin_bitrate = 3000000\n")
    err = load_error(main)
    assert (err.file, err.key) == (bad, "video.min_bitrate")


def test_errors_from_all_files_are_reported_together(main: Path) -> None:
    write(main, with_server("ping_interval = -1\nping_timout = 3"))
    d = dropin(main, "10-x.toml", "[log]\nlevel = 'loud'\n[peers]\nmax_peers = 0\n")
    err = load_error(main)
    found = [(e.file, e.key) for e in err.errors]
    assert found == [
        (main, "server.ping_interval"),
        (main, "server.ping_timout"),
        (d, "peers.max_peers"),
        (d, "log.level"),
    ]
    assert (err.file, err.key) == (main, "server.ping_interval")
    lines = str(err).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith(f"{d}: peers.max_peers: ")


def test_bad_field_does_not_hide_a_bad_url_in_the_same_table(main: Path) -> None:
    dropin(main, "10.toml", "[server]\nping_interval = 0\nws_url = 'http://x.example'\n")
    keys = [e.key for e in load_error(main).errors]
    assert keys == ["server.ping_interval", "server.ws_url"]


def test_dropped_field_does_not_cause_a_spurious_cross_field_error(main: Path) -> None:
    dropin(main, "10.toml", "[video]\nmin_bitrate = -1\nmax_bitrate = 100000\n")
    keys = [e.key for e in load_error(main).errors]
    assert keys == ["video.min_bitrate"]


# --------------------------------------------------------------------------- file errors


def test_toml_syntax_error_names_file_line_and_column(main: Path) -> None:
    bad = dropin(main, "10-bad.toml", "[video]\nwidth = 640\nheight = = 3\n")
    err = load_error(main)
    assert err.file == bad
    assert err.key is None
    assert "line 3, column" in err.reason
    assert str(err).startswith(f"{bad}: invalid TOML at line 3, column ")


def test_toml_syntax_errors_in_several_files_are_all_reported(main: Path) -> None:
    write(main, "[server\n")
    bad = dropin(main, "10.toml", '[log]\nlevel = "info\n')
    err = load_error(main)
    assert [e.file for e in err.errors] == [main, bad]
    assert all("line" in e.reason for e in err.errors)


def test_duplicate_key_is_a_syntax_error(main: Path) -> None:
    write(main, MINIMAL + '[log]\nlevel = "info"\nlevel = "debug"\n')
    err = load_error(main)
    assert err.file == main
    assert "invalid TOML at line" in err.reason


def test_missing_main_file(tmp_path: Path) -> None:
    err = load_error(tmp_path / "nope.toml")
    assert err.file == tmp_path / "nope.toml"
    assert "does not exist" in err.reason


def test_main_file_is_a_directory(tmp_path: Path) -> None:
    err = load_error(tmp_path)
    assert "is a directory" in err.reason


def test_non_utf8_file(main: Path) -> None:
    main.write_bytes(b'[room]\nid = "caf\xe9"\n')
    err = load_error(main)
    assert (err.file, err.key) == (main, None)
    assert "UTF-8" in err.reason


def test_utf8_bom_is_tolerated(main: Path) -> None:
    main.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_config(main).room.id == "lobby"


def test_dangling_dropin_symlink_is_reported(main: Path) -> None:
    link = main.parent / "config.d" / "10-gone.toml"
    link.parent.mkdir()
    link.symlink_to(main.parent / "missing.toml")
    err = load_error(main)
    assert (err.file, err.reason) == (link, "file does not exist")


def test_config_d_that_is_a_file(main: Path) -> None:
    write(main.parent / "config.d", "")
    err = load_error(main)
    assert err.file == main.parent / "config.d"
    assert "not a directory" in err.reason


# --------------------------------------------------------------------------- secrets


def test_secret_file_0600_is_read_and_stripped(tmp_path: Path) -> None:
    path = write(tmp_path / "token", "  s3cret\n", mode=0o600)
    assert read_secret_file(path) == "s3cret"


def test_secret_file_0400_is_accepted(tmp_path: Path) -> None:
    assert read_secret_file(write(tmp_path / "token", "x", mode=0o400)) == "x"


def test_secret_file_readable_by_others_is_refused_with_chmod_hint(tmp_path: Path) -> None:
    path = write(tmp_path / "token", "s3cret\n", mode=0o644)
    with pytest.raises(SecretFileError) as info:
        read_secret_file(path)
    err = info.value
    assert err.file == path
    assert err.reason == (f"is readable by group or others (mode 0644); fix with: chmod 600 {path}")
    assert "s3cret" not in str(err)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o610, 0o601])
def test_any_group_or_other_permission_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "token", "x", mode=mode)
    with pytest.raises(SecretFileError, match=f"mode {mode:04o}.*chmod 600"):
        read_secret_file(path)


def test_missing_secret_file(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match="does not exist") as info:
        read_secret_file(tmp_path / "nope")
    assert info.value.file == tmp_path / "nope"


def test_empty_secret_file(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match="is empty"):
        read_secret_file(write(tmp_path / "token", " \n", mode=0o600))


def test_secret_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(SecretFileError, match="not a regular file"):
        read_secret_file(tmp_path / "dir")


def test_secret_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(SecretFileError, match="not a regular file"):
        read_secret_file(fifo)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_secret_file(tmp_path: Path) -> None:
    path = write(tmp_path / "token", "x", mode=0o000)
    with pytest.raises(SecretFileError, match="permission denied"):
        read_secret_file(path)


def test_secret_file_error_is_a_config_error() -> None:
    assert issubclass(SecretFileError, ConfigError)


def test_check_secrets_accepts_private_files(main: Path) -> None:
    write(main.parent / "token", "tok\n", mode=0o600)
    check_secrets(load_config(main))


def test_check_secrets_reports_every_bad_secret_with_its_key(main: Path) -> None:
    write(
        main,
        '[server]\nws_url = "wss://x.example"\napi_url = "https://x.example"\n'
        '[room]\nid = "r"\n[auth]\nusername = "u"\npassword_file = "pw"\n'
        '[[ice.servers]]\nurls = ["turns:t.example"]\nusername = "u"\n'
        'credential_file = "turn"\n',
    )
    pw = write(main.parent / "pw", "hunter2", mode=0o644)
    config = load_config(main)
    with pytest.raises(SecretFileError) as info:
        check_secrets(config)
    errors = info.value.errors
    assert [(e.file, e.key) for e in errors] == [
        (pw, "auth.password_file"),
        (main.parent / "turn", "ice.servers[0].credential_file"),
    ]
    assert all(isinstance(e, SecretFileError) for e in errors)
    assert "chmod 600" in errors[0].reason
    assert "does not exist" in errors[1].reason
    assert str(info.value).splitlines()[0] == f"{pw}: auth.password_file: {errors[0].reason}"


# --------------------------------------------------------------------------- example file


FILLED = """
[server]
ws_url = "wss://glimpse.example.com/ws"
[auth]
token_file = "token"
[room]
id = "lobby"
"""


def _copy_example(tmp_path: Path) -> Path:
    return write(tmp_path / "config.toml", EXAMPLE.read_text())


def test_example_file_is_valid_once_required_values_are_filled(tmp_path: Path) -> None:
    main = _copy_example(tmp_path)
    dropin(main, "50-device.toml", FILLED)
    config = load_config(main)
    expected = Config(
        server=ServerConfig(ws_url="wss://glimpse.example.com/ws"),
        auth=AuthConfig(token_file=tmp_path / "config.d" / "token"),
        room=RoomConfig(id="lobby"),
    )
    # Every value written in the example is the real default.
    assert msgspec.structs.replace(config, sources=()) == expected


def test_example_file_as_shipped_explains_what_to_fill_in(tmp_path: Path) -> None:
    main = _copy_example(tmp_path)
    err = load_error(main)
    assert {(e.file, e.key) for e in err.errors} == {
        (main, "server.ws_url"),
        (main, "auth"),
        (main, "room.id"),
    }
    assert all(e.reason for e in err.errors)


def _documented_keys(tp: Any, prefix: str) -> set[str]:
    keys = set()
    for field in msgspec.structs.fields(tp):
        if field.name == "sources":
            continue
        inner = field.type
        while typing.get_origin(inner) is typing.Annotated:
            inner = typing.get_args(inner)[0]
        args = [a for a in typing.get_args(inner) if a is not type(None)]
        if isinstance(inner, types.UnionType) and len(args) == 1:
            inner = args[0]  # an optional table ([server] | None)
        name = f"{prefix}{field.name}"
        if typing.get_origin(inner) is tuple and typing.get_args(inner)[0] is IceServer:
            keys.add(name)
            keys |= _documented_keys(IceServer, f"{name}[].")
        elif isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            keys |= _documented_keys(inner, f"{name}.")
        else:
            keys.add(name)
    return keys


def _keys_in(doc: Any, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            keys |= _keys_in(value, f"{name}.")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            keys.add(name)
            for v in value:
                keys |= _keys_in(v, f"{name}[].")
        else:
            keys.add(name)
    return keys


def _commented_table(text: str, table: str) -> dict[str, Any]:
    """A table the example shows commented out (setting it turns it on): its
    ``# key = value`` lines from ``# [table]`` to the next table."""
    lines = text.splitlines()
    start = lines.index(f"# [{table}]")
    keep = [f"[{table}]"]
    for line in lines[start + 1:]:
        if line.startswith("["):
            break
        if re.fullmatch(r"# \w+ = .*", line):
            keep.append(line[2:])
    return tomllib.loads("\n".join(keep))


def test_example_file_lists_every_key() -> None:
    text = EXAMPLE.read_text()
    doc = tomllib.loads(text) | _commented_table(text, "publish")
    assert _keys_in(doc) == _documented_keys(Config, "")


def test_example_publish_values_are_the_defaults(tmp_path: Path) -> None:
    shown = _commented_table(EXAMPLE.read_text(), "publish")["publish"]
    config = load_config(write(tmp_path / "config.toml", "[publish]\n" + "\n".join(
        f"{k} = {_toml_value(v)}" for k, v in shown.items() if not k.endswith("_file"))))
    assert config.publish is not None
    for key, value in shown.items():
        if key not in ("whip_url", "token_file", "ca_file"):
            assert getattr(config.publish, key) == value, key


# --------------------------------------------------------------------------- misc


def test_parse_listen() -> None:
    assert parse_listen("[::1]:9750") == ("::1", 9750)
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_listen("localhost:80") == ("localhost", 80)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("::1:9750")


def test_observe_can_be_turned_off(main: Path) -> None:
    dropin(main, "10.toml", '[observe]\nlisten = ""\n')
    assert load_config(main).observe.address is None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return repr(value)


_KEYS = sorted(
    {k.split(".")[-1].removesuffix("[]") for k in _documented_keys(Config, "")} | {"bogus"}
)
_SCALARS = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=8),
    st.sampled_from(["wss://x.example/ws", "turn:t", "stun:s", "file", "../t", "[::1]:1"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)
    ),
    max_leaves=8,
)
_DOCS = st.dictionaries(
    st.sampled_from([*_KEYS, "server", "auth", "room", "video", "audio", "ice", "peers", "log"]),
    _VALUES,
    max_size=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(main_doc=_DOCS, dropin_doc=_DOCS)
def test_any_toml_input_gives_a_config_or_a_config_error(
    main_doc: dict[str, Any], dropin_doc: dict[str, Any]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        main = Path(tmp) / "config.toml"
        main.write_text(_dump(_deep_merge(tomllib.loads(MINIMAL), main_doc)))
        dropin(main, "10.toml", _dump(dropin_doc))
        try:
            load_config(main)
        except ConfigError as exc:
            for e in exc.errors:
                assert e.file in (main, main.parent / "config.d" / "10.toml")
                assert e.reason


def test_config_error_formatting() -> None:
    assert str(ConfigError(file=None, key="room.id", reason="missing")) == "room.id: missing"
    assert str(ConfigError(Path("/c.toml"), None, "bad")) == "/c.toml: bad"
    assert str(ConfigError(Path("/c.toml"), "a.b", "bad")) == "/c.toml: a.b: bad"
    group = ConfigError.group([ConfigError(None, "a", "x"), ConfigError(None, "b", "y")])
    assert (group.key, group.reason, str(group)) == ("a", "x", "a: x\nb: y")
    copied = pickle.loads(pickle.dumps(group))
    assert (type(copied), str(copied)) == (ConfigError, str(group))


def test_conflict_names_the_dropin_that_introduced_it(main: Path) -> None:
    # token_file comes from the main file; the drop-in adds a login on top of it.
    bad = dropin(main, "10-login.toml", '[auth]\nusername = "u"\npassword_file = "pw"\n')
    err = load_error(main)
    assert (err.file, err.key) == (bad, "auth.token_file")


def test_lowering_max_bitrate_in_a_dropin_blames_the_dropin(main: Path) -> None:
    bad = dropin(main, "10.toml", "[video]\nmax_bitrate = 100000\n")
    err = load_error(main)
    assert (err.file, err.key) == (bad, "video.min_bitrate")
    assert "video.max_bitrate (100000)" in err.reason


def test_nul_in_a_path_is_a_config_error(main: Path) -> None:
    dropin(main, "10.toml", '[auth]\ntoken_file = "a\\u0000b"\n')
    err = load_error(main)
    assert err.key == "auth.token_file"
    assert "NUL" in err.reason


def test_absurd_nesting_is_a_config_error(main: Path) -> None:
    dropin(main, "10.toml", "x = " + "[" * 20000 + "]" * 20000 + "\n")
    assert load_error(main).file is not None


# -- [publish] (issue 17) ---------------------------------------------------------

PUBLISH_ONLY = """
[publish]
whip_url = "https://sfu.example.com/whip/endpoint/lobby"
token_file = "whip-token"
"""


def test_publish_only_needs_no_room(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", PUBLISH_ONLY)
    config = load_config(main)
    assert config.room is None and config.server is None and config.auth is None
    assert not config.joins_room
    assert config.publish is not None
    assert config.publish.token_file == tmp_path / "whip-token"  # relative to the file
    assert (config.publish.tier, config.publish.audio) == (0, True)
    with pytest.raises(LookupError):
        _ = config.glimpse


def test_publish_beside_a_room(main: Path) -> None:
    write(main, MINIMAL + PUBLISH_ONLY)
    config = load_config(main)
    assert config.joins_room and config.publish is not None
    assert config.glimpse.room.id == "lobby"
    assert load_config(write(main, MINIMAL)).publish is None


@pytest.mark.parametrize(("text", "key", "reason"), [
    ('whip_url = "http://sfu.example.com/whip"', "publish.whip_url", "must be https://"),
    ('whip_url = "ftp://sfu.example.com/whip"', "publish.whip_url", "http:// or https://"),
    ('whip_url = ""', "publish.whip_url", "must be set"),
    ('whip_url = "https://sfu.example.com/w#x"', "publish.whip_url", "fragment"),
    ('whip_url = "https://x.example"\ntier = 9', "publish.tier", "<= 3"),
    ('whip_url = "https://x.example"\ntier = 2', "publish.tier", "not one of the 2"),
    ('whip_url = "https://x.example"\nreconnect_min = 9\nreconnect_max = 2',
     "publish.reconnect_min", "must not exceed"),
    ('whip_url = "https://x.example"\naudio = "yes"', "publish.audio", "true or false"),
    ('whip_url = "https://x.example"\nwhip = 1', "publish.whip", "unknown key"),
    ("tier = 1", "publish.whip_url", "required"),
])
def test_publish_errors(tmp_path: Path, text: str, key: str, reason: str) -> None:
    main = write(tmp_path / "config.toml", f"[publish]\n{text}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    problems = {(e.key, e.reason) for e in caught.value.errors}
    assert any(k == key and reason in r for k, r in problems), problems


@pytest.mark.parametrize("url", ["http://127.0.0.1:7080/whip/endpoint/x",
                                 "http://localhost:8889/cam/whip", "http://[::1]/whip"])
def test_plain_http_to_this_machine_is_fine(tmp_path: Path, url: str) -> None:
    main = write(tmp_path / "config.toml", f'[publish]\nwhip_url = "{url}"\n')
    assert load_config(main).publish is not None


def test_plain_http_elsewhere_when_asked_for(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml",
                 '[publish]\nwhip_url = "http://mediamtx.lan:8889/cam/whip"\nallow_http = true\n')
    assert load_config(main).publish is not None


def test_publish_audio_needs_an_audio_source(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", PUBLISH_ONLY + '[audio]\nsource = "none"\n')
    with pytest.raises(ConfigError, match=r"publish\.audio"):
        load_config(main)
    write(main, PUBLISH_ONLY + 'audio = false\n[audio]\nsource = "none"\n')
    assert load_config(main).publish is not None


def test_a_half_room_beside_publish_is_still_an_error(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", PUBLISH_ONLY + '[room]\nid = "r"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    assert {e.key for e in caught.value.errors} >= {"server.ws_url", "auth"}


def test_nothing_to_do_names_room_and_publish(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", "[video]\nwidth = 640\nheight = 360\n")
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    assert "room.id" in {e.key for e in caught.value.errors}
    with pytest.raises(ValueError, match=r"\[publish\]"):
        Config()


def test_the_publish_token_is_a_checked_secret(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", PUBLISH_ONLY)
    write(tmp_path / "whip-token", "key\n", mode=0o644)
    with pytest.raises(SecretFileError) as caught:
        check_secrets(load_config(main))
    assert caught.value.errors[0].key == "publish.token_file"
    assert "chmod 600" in str(caught.value)
    (tmp_path / "whip-token").chmod(0o600)
    check_secrets(load_config(main))


def test_publish_needs_the_shared_encoding(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", PUBLISH_ONLY + '[video]\nencode = "per-peer"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    assert [e.key for e in caught.value.errors] == ["video.encode"]
