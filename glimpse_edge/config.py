"""Typed configuration for the agent: one TOML file plus ``config.d/*.toml`` drop-ins.

The agent runs unattended, so a bad configuration must be caught at start-up with a
message an operator can act on from the journal alone: every problem names the FILE
that caused it, the dotted KEY (``server.ping_interval``) and the REASON.  Fleets are
managed by copying files, so the layout is::

    /etc/glimpse-edge/config.toml          the main file (``DEFAULT_CONFIG_PATH``)
    /etc/glimpse-edge/config.d/*.toml      drop-ins, merged over it in file-name order

Merging is a deep merge of tables; scalars and arrays (including ``[[ice.servers]]``)
are replaced as a whole by the later file.  An empty string for an optional path key
(``token_file = ""``) means "not set", so that a drop-in can switch off a path the main
file set.  The merged document is validated into frozen :mod:`msgspec` structs that
forbid unknown keys, so a typo is an error rather than a silently ignored setting.

Relative paths (``auth.token_file``, ``auth.password_file``, ``server.ca_file``,
``video.path``, ``ice.servers[].credential_file``) are resolved against the directory
of the file that set them, so a drop-in and the secret it points to can be shipped
together.  ``~`` is not expanded (a systemd service has no meaningful home directory).
"""

import difflib
import ipaddress
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import msgspec

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DROPIN_DIR_NAME",
    "AudioConfig",
    "AuthConfig",
    "CameraConfig",
    "Config",
    "ConfigError",
    "IceConfig",
    "IceServer",
    "LogConfig",
    "ObserveConfig",
    "PeersConfig",
    "PlaybackConfig",
    "QualityTier",
    "RoomConfig",
    "SecretFileError",
    "ServerConfig",
    "VideoConfig",
    "check_secrets",
    "load_config",
    "parse_listen",
]

DEFAULT_CONFIG_PATH: Final = Path("/etc/glimpse-edge/config.toml")
DROPIN_DIR_NAME: Final = "config.d"

_MAX_CONFIG_BYTES: Final = 1 << 20  # a config file bigger than this is a mistake


# --------------------------------------------------------------------------- errors


class ConfigError(Exception):
    """The configuration cannot be used; ``str(e)`` is ``"FILE: KEY: REASON"``.

    Missing parts are omitted (a TOML syntax error has no key; a problem found while
    constructing structs by hand has no file).  When several problems were found at
    once, ``errors`` holds all of them (in file order) and ``str(e)`` has one line per
    problem, so an operator can fix everything in one edit instead of one restart per
    typo; ``file``/``key``/``reason`` then describe the first problem.
    """

    def __init__(self, file: Path | None, key: str | None, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        self.errors: tuple[ConfigError, ...] = (self,)
        super().__init__(self._line())

    def _line(self) -> str:
        parts = [str(self.file)] if self.file is not None else []
        if self.key:
            parts.append(self.key)
        parts.append(self.reason)
        return ": ".join(parts)

    def __str__(self) -> str:
        return "\n".join(e._line() for e in self.errors)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from the fields (the default would call cls(message) and fail).
        return (type(self), (self.file, self.key, self.reason), {"errors": self.errors})

    @classmethod
    def group(cls, errors: Sequence["ConfigError"]) -> "ConfigError":
        """Combine several problems into one exception to raise (``errors`` non-empty)."""
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        combined = cls(first.file, first.key, first.reason)
        combined.errors = tuple(e for err in errors for e in err.errors)
        combined.args = (str(combined),)
        return combined


class SecretFileError(ConfigError):
    """A secret file (token, password, TURN credential) is missing, empty or unsafe.

    ``file`` is the secret file itself; ``key`` is the config key that points to it
    when known (set by :func:`check_secrets`).
    """


class _InvalidKey(ValueError):
    """Raised from ``__post_init__`` to say *which* key is wrong, not just which table.

    msgspec keeps the original exception as ``__cause__`` of its ValidationError, so the
    loader can report ``video.path`` instead of ``video``.  ``key`` is relative to the
    struct raising it ("" for the struct itself).
    """

    def __init__(self, key: str, reason: str, related: tuple[str, ...] = ()) -> None:
        self.key = key
        self.reason = reason
        self.related = related  # other keys the check looked at (to find the file to blame)
        super().__init__(f"{key}: {reason}" if key else reason)


# --------------------------------------------------------------------------- helpers


def _show(value: object) -> str:
    """Render a value the way it would be written in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _check_url(key: str, value: str, schemes: tuple[str, ...], example: str) -> None:
    if not value:
        raise _InvalidKey(key, f"must be set, e.g. {_show(example)}")
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise _InvalidKey(key, f"is not a valid URL ({exc}): {_show(value)}") from None
    if parts.scheme not in schemes:
        allowed = " or ".join(f"{s}://" for s in schemes)
        raise _InvalidKey(
            key, f"must start with {allowed}, e.g. {_show(example)}; got {_show(value)}"
        )
    if not parts.hostname:
        raise _InvalidKey(key, f"has no host name, e.g. {_show(example)}; got {_show(value)}")


_LISTEN_RE: Final = re.compile(
    r"\[(?P<v6>[^\]]+)\]:(?P<p6>\d+)|(?P<host>[^:\[\]\s]+):(?P<port>\d+)"
)


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:9750`` for IPv6) into ``(host, port)``.

    Raises ValueError with an operator-facing message; the host is returned without
    brackets, ready for ``trio.open_tcp_listeners(port, host=host)``.
    """
    m = _LISTEN_RE.fullmatch(value)
    if m is None:
        raise ValueError(
            f'expected HOST:PORT (e.g. "127.0.0.1:9750" or "[::1]:9750"), '
            f'or "" to turn it off; got {_show(value)}'
        )
    if m["v6"] is not None:
        host, port_text = m["v6"], m["p6"]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_show(host)} in brackets is not an IPv6 address") from None
    else:
        host, port_text = m["host"], m["port"]
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range (0..65535)")
    return host, port


_OPUS_FRAME_MS: Final = (10, 20, 40, 60)
_ICE_URL_RE: Final = re.compile(r"(stuns?|turns?):(\S+)")

# --------------------------------------------------------------------------- structs


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base for all config tables: immutable, and unknown keys are errors (typos)."""


class ServerConfig(_Section, frozen=True, kw_only=True):
    """Where the Glimpse signaling server is and how to keep the connection healthy."""

    ws_url: str
    api_url: str = ""
    connect_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    ping_interval: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 15.0
    ping_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    ca_file: Path | None = None
    max_message_size: Annotated[int, msgspec.Meta(ge=1024, le=64 << 20)] = 1 << 20
    reconnect_min: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 0.5
    reconnect_max: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    auth_retry: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 300.0

    def __post_init__(self) -> None:
        _check_url("ws_url", self.ws_url, ("ws", "wss"), "wss://glimpse.example.com/ws")
        if self.api_url:
            _check_url("api_url", self.api_url, ("http", "https"), "https://glimpse.example.com")
        if self.reconnect_min > self.reconnect_max:
            raise _InvalidKey(
                "reconnect_min",
                f"({self.reconnect_min}) must not exceed server.reconnect_max "
                f"({self.reconnect_max})",
                related=("reconnect_max",),
            )


class AuthConfig(_Section, frozen=True, kw_only=True):
    """How the device proves who it is: a pre-issued token, or a login to refresh one."""

    token_file: Path | None = None
    username: str = ""
    password_file: Path | None = None
    refresh_margin: Annotated[float, msgspec.Meta(ge=0, le=30 * 86400)] = 3600.0

    @property
    def uses_login(self) -> bool:
        """True when the agent logs in with username + password (needs server.api_url)."""
        return bool(self.username or self.password_file)

    def __post_init__(self) -> None:
        if self.token_file is not None and self.uses_login:
            raise _InvalidKey(
                "token_file",
                "set either auth.token_file, or auth.username and auth.password_file, not both",
                related=("username", "password_file"),
            )
        if self.token_file is None and not self.uses_login:
            raise _InvalidKey(
                "",
                "no credentials: set auth.token_file (a pre-issued token), or auth.username "
                "and auth.password_file (log in via server.api_url)",
            )
        if self.username and self.password_file is None:
            raise _InvalidKey(
                "password_file", "is required when auth.username is set", related=("username",)
            )
        if self.password_file is not None and not self.username:
            raise _InvalidKey(
                "username", "is required when auth.password_file is set", related=("password_file",)
            )


class RoomConfig(_Section, frozen=True, kw_only=True):
    """Which room to join, and the name other participants see."""

    id: str
    display_name: str = ""

    def __post_init__(self) -> None:
        if not self.id.strip():
            raise _InvalidKey("id", "must be set to the id of the room to join")


class QualityTier(_Section, frozen=True, kw_only=True):
    """One lower quality tier: a shared encoding for peers whose link cannot carry more."""

    width: Annotated[int, msgspec.Meta(ge=16, le=4096, multiple_of=2)]
    height: Annotated[int, msgspec.Meta(ge=16, le=4096, multiple_of=2)]
    bitrate: Annotated[int, msgspec.Meta(gt=0, le=100_000_000)]


MAX_LOWER_TIERS: Final = 3


class VideoConfig(_Section, frozen=True, kw_only=True):
    """Camera source and encoder settings."""

    source: Literal["testpattern", "picamera2", "v4l2", "file"] = "testpattern"
    device: str = "/dev/video0"
    path: Path | None = None
    # grain on the test pattern (0..20), so that it needs the whole bitrate as a camera does
    pattern_noise: Annotated[int, msgspec.Meta(ge=0, le=20)] = 0
    width: Annotated[int, msgspec.Meta(ge=16, le=4096, multiple_of=2)] = 1280
    height: Annotated[int, msgspec.Meta(ge=16, le=4096, multiple_of=2)] = 720
    framerate: Annotated[int, msgspec.Meta(ge=1, le=120)] = 30
    codec: Literal["h264", "vp8"] = "h264"
    max_bitrate: Annotated[int, msgspec.Meta(gt=0, le=100_000_000)] = 2_500_000
    min_bitrate: Annotated[int, msgspec.Meta(gt=0, le=100_000_000)] = 150_000
    keyframe_interval: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0
    # "shared": one encoder per codec, its packets sent to every peer (what a Pi can
    # afford). "per-peer": aiortc's own encoder in every sender, N encoders for N
    # peers; kept to measure the difference and for receivers that need their own.
    encode: Literal["shared", "per-peer"] = "shared"
    # Lower quality tiers (see quality_tiers()): "auto" = one at half the size and a
    # quarter of max_bitrate; [] = none (every peer gets the full encoding).
    tiers: list[QualityTier] | Literal["auto"] = "auto"

    def quality_tiers(self) -> tuple[QualityTier, ...]:
        """Every shared encoding a peer can be given, best first.

        The first is the configured size at ``max_bitrate``; the lower ones
        are encoded only while some peer's estimated bandwidth puts it there.
        The lowest one's bitrate (and, below half of it, its frame rate)
        follows the worst link among its peers, down to ``min_bitrate``: the
        floor that keeps a bad link decoding (docs/decisions.md, "Quality tiers").
        """
        top = QualityTier(width=self.width, height=self.height, bitrate=self.max_bitrate)
        if self.tiers != "auto":
            return (top, *sorted(self.tiers, key=lambda t: -t.bitrate))
        width, height = self.width // 4 * 2, self.height // 4 * 2
        bitrate = self.max_bitrate // 4
        if width < 160 or height < 90 or bitrate < self.min_bitrate:
            return (top,)  # too small to be worth a second encoder
        return (top, QualityTier(width=width, height=height, bitrate=bitrate))

    def __post_init__(self) -> None:
        if self.tiers != "auto":
            if len(self.tiers) > MAX_LOWER_TIERS:
                raise _InvalidKey("tiers", f"at most {MAX_LOWER_TIERS} lower tiers "
                                  f"(each is an encoder); got {len(self.tiers)}")
            rates = [t.bitrate for t in self.tiers]
            if len(set(rates)) != len(rates):
                raise _InvalidKey("tiers", "two tiers have the same bitrate")
            for i, tier in enumerate(self.tiers):
                if tier.width > self.width or tier.height > self.height:
                    raise _InvalidKey(f"tiers[{i}]", f"{tier.width}x{tier.height} is larger "
                                      f"than video.width x height ({self.width}x{self.height})",
                                      ("width", "height"))
                if not self.min_bitrate <= tier.bitrate < self.max_bitrate:
                    raise _InvalidKey(f"tiers[{i}].bitrate", f"({tier.bitrate}) must lie between "
                                      f"video.min_bitrate ({self.min_bitrate}) and "
                                      f"video.max_bitrate ({self.max_bitrate}), below the latter",
                                      ("min_bitrate", "max_bitrate"))
        if self.source == "file" and self.path is None:
            raise _InvalidKey("path", 'is required when video.source = "file"', ("source",))
        if self.source == "v4l2" and not self.device:
            raise _InvalidKey("device", 'is required when video.source = "v4l2"', ("source",))
        if self.min_bitrate > self.max_bitrate:
            raise _InvalidKey(
                "min_bitrate",
                f"({self.min_bitrate}) must not exceed video.max_bitrate ({self.max_bitrate})",
                related=("max_bitrate",),
            )
        if self.source == "picamera2" and self.codec != "h264":
            raise _InvalidKey(
                "codec",
                'must be "h264" with video.source = "picamera2": the camera\'s encoder '
                "makes H.264, and its packets go to every peer untouched",
                related=("source",),
            )
        if self.source == "picamera2" and self.encode != "shared":
            raise _InvalidKey(
                "encode",
                'must be "shared" with video.source = "picamera2": the camera delivers '
                "encoded packets, not pictures for a per-peer encoder",
                related=("source",),
            )


class CameraConfig(_Section, frozen=True, kw_only=True):
    """Raspberry Pi camera (``video.source = "picamera2"``): which camera, picture controls.

    Every control is only sent to the camera when it differs from its default, so
    the defaults work on any camera; a setting the camera does not have (autofocus
    on a Camera Module 2) is refused at start with a message naming the key.
    """

    index: Annotated[int, msgspec.Meta(ge=0, le=7)] = 0
    af_mode: Literal["default", "continuous", "auto", "manual"] = "default"
    af_range: Literal["normal", "macro", "full"] = "normal"
    lens_position: Annotated[float, msgspec.Meta(ge=0, le=32)] = 1.0
    exposure_value: Annotated[float, msgspec.Meta(ge=-8, le=8)] = 0.0
    exposure_mode: Literal["normal", "short", "long"] = "normal"
    flicker: Literal["off", "50hz", "60hz"] = "off"
    awb_mode: Literal[
        "auto", "incandescent", "tungsten", "fluorescent", "indoor", "daylight", "cloudy"
    ] = "auto"
    brightness: Annotated[float, msgspec.Meta(ge=-1, le=1)] = 0.0
    contrast: Annotated[float, msgspec.Meta(ge=0, le=32)] = 1.0
    saturation: Annotated[float, msgspec.Meta(ge=0, le=32)] = 1.0
    sharpness: Annotated[float, msgspec.Meta(ge=0, le=16)] = 1.0
    hflip: bool = False
    vflip: bool = False
    rotation: Literal[0, 180] = 0
    hdr: bool = False
    buffer_count: Annotated[int, msgspec.Meta(ge=2, le=16)] = 6


def camera_buffers_needed(encoders: int) -> int:
    """Camera buffers that ``encoders`` picamera2 encoders need to run without stalling.

    libcamera keeps two queued to stream without dropping frames, picamera2
    holds the newest finished one, and each encoder holds one while it
    encodes (the libav encoder releases a frame only after the next one).
    With fewer, the camera waits on the encoders: a stall.
    """
    return 3 + encoders


class AudioConfig(_Section, frozen=True, kw_only=True):
    """Microphone source and capture settings (encoded as Opus)."""

    source: Literal["tone", "alsa", "none"] = "tone"
    device: str = "default"
    rate: Annotated[int, msgspec.Meta(ge=8000, le=48000)] = 48000
    channels: Annotated[int, msgspec.Meta(ge=1, le=2)] = 1
    tone_frequency: Annotated[float, msgspec.Meta(ge=20, le=20000)] = 440.0
    period_ms: int = 20
    mixer_control: str = ""
    capture_gain: Annotated[int, msgspec.Meta(ge=-1, le=100)] = -1
    capture_switch: Literal["unchanged", "on", "off"] = "unchanged"

    def __post_init__(self) -> None:
        if (self.capture_gain >= 0 or self.capture_switch != "unchanged") and (
            not self.mixer_control
        ):
            raise _InvalidKey(
                "mixer_control",
                "must name the ALSA mixer control (see: amixer scontrols) to set "
                "capture_gain or capture_switch",
                related=("capture_gain", "capture_switch"),
            )
        if self.period_ms not in _OPUS_FRAME_MS:
            choices = ", ".join(map(str, _OPUS_FRAME_MS))
            raise _InvalidKey(
                "period_ms", f"must be one of {choices} (Opus frame sizes); got {self.period_ms}"
            )
        if self.source == "tone" and self.tone_frequency >= self.rate / 2:
            raise _InvalidKey(
                "tone_frequency",
                f"({self.tone_frequency}) must be below half of audio.rate ({self.rate / 2})",
                related=("rate", "source"),
            )


class PlaybackConfig(_Section, frozen=True, kw_only=True):
    """Speakerphone: the remote participants' audio, mixed and played through ALSA.

    Off by default: a camera in a corridor has no speaker, and receiving audio
    costs a decoder per peer. When on, the microphone audio is echo-cancelled
    against what is played (``echo_cancellation``), because the remote
    participants would otherwise hear themselves back.
    """

    enabled: bool = False
    device: str = "default"
    volume: Annotated[int, msgspec.Meta(ge=0, le=100)] = 100
    echo_cancellation: bool = True


class IceServer(_Section, frozen=True, kw_only=True):
    """One STUN or TURN server, as in WebRTC's RTCIceServer."""

    urls: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)]
    username: str = ""
    credential_file: Path | None = None

    @property
    def is_turn(self) -> bool:
        """True if any URL is a TURN relay (these need username + credential)."""
        return any(u.startswith(("turn:", "turns:")) for u in self.urls)

    def __post_init__(self) -> None:
        for i, url in enumerate(self.urls):
            if _ICE_URL_RE.fullmatch(url) is None:
                raise _InvalidKey(
                    f"urls[{i}]",
                    "must start with stun:, stuns:, turn: or turns:, e.g. "
                    '"stun:stun.l.google.com:19302" or "turn:turn.example.com:3478"; '
                    f"got {_show(url)}",
                )
        has_user, has_cred = bool(self.username), self.credential_file is not None
        if self.is_turn and not has_user:
            raise _InvalidKey("username", "is required for turn:/turns: URLs", ("urls",))
        if self.is_turn and not has_cred:
            raise _InvalidKey("credential_file", "is required for turn:/turns: URLs", ("urls",))
        if has_user and not has_cred:
            raise _InvalidKey("credential_file", "is required when username is set", ("username",))
        if has_cred and not has_user:
            raise _InvalidKey(
                "username", "is required when credential_file is set", ("credential_file",)
            )


def _default_ice_servers() -> tuple[IceServer, ...]:
    return (IceServer(urls=("stun:stun.l.google.com:19302",)),)


class IceConfig(_Section, frozen=True, kw_only=True):
    """NAT traversal: STUN/TURN servers handed to every peer connection."""

    servers: tuple[IceServer, ...] = msgspec.field(default_factory=_default_ice_servers)
    relay_only: bool = False

    def __post_init__(self) -> None:
        if self.relay_only and not any(s.is_turn for s in self.servers):
            raise _InvalidKey(
                "relay_only",
                "is true but ice.servers has no turn:/turns: URL to relay through",
                related=("servers",),
            )


class PeersConfig(_Section, frozen=True, kw_only=True):
    """Limits on simultaneous peer connections (each costs an encoder slot and uplink)."""

    max_peers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    offer_wait: Annotated[float, msgspec.Meta(ge=0.0, le=60.0)] = 1.5
    connect_timeout: Annotated[float, msgspec.Meta(gt=0.0, le=120.0)] = 10.0
    dead_after: Annotated[float, msgspec.Meta(gt=0.0, le=120.0)] = 3.0
    restart_max: Annotated[float, msgspec.Meta(gt=0.0, le=3600.0)] = 30.0


class ObserveConfig(_Section, frozen=True, kw_only=True):
    """Local HTTP endpoint for health and metrics."""

    listen: str = "127.0.0.1:9750"

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to listen on, or None when turned off (``listen = ""``)."""
        return parse_listen(self.listen) if self.listen else None

    def __post_init__(self) -> None:
        if self.listen:
            try:
                parse_listen(self.listen)
            except ValueError as exc:
                raise _InvalidKey("listen", str(exc)) from None


class LogConfig(_Section, frozen=True, kw_only=True):
    """Log verbosity and format ("auto" = console on a terminal, JSON otherwise)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Config(_Section, frozen=True, kw_only=True):
    """The whole validated configuration.

    ``sources`` lists the files that were loaded (main file first, then drop-ins in
    merge order) so the agent can log where its settings came from; it is filled by
    :func:`load_config` and cannot be set from a TOML file.
    """

    server: ServerConfig
    auth: AuthConfig
    room: RoomConfig
    video: VideoConfig = msgspec.field(default_factory=VideoConfig)
    camera: CameraConfig = msgspec.field(default_factory=CameraConfig)
    audio: AudioConfig = msgspec.field(default_factory=AudioConfig)
    playback: PlaybackConfig = msgspec.field(default_factory=PlaybackConfig)
    ice: IceConfig = msgspec.field(default_factory=IceConfig)
    peers: PeersConfig = msgspec.field(default_factory=PeersConfig)
    observe: ObserveConfig = msgspec.field(default_factory=ObserveConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    sources: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if self.auth.uses_login and not self.server.api_url:
            raise _InvalidKey(
                "server.api_url",
                "is required when auth.username/auth.password_file are set "
                '(it is where the agent logs in), e.g. "https://glimpse.example.com"',
                related=("auth.username", "auth.password_file"),
            )
        if self.video.source == "picamera2":
            encoders = 1 + (len(self.video.quality_tiers()) > 1)  # main, and lores for a tier
            needed = camera_buffers_needed(encoders)
            if self.camera.buffer_count < needed:
                raise _InvalidKey(
                    "camera.buffer_count",
                    f"({self.camera.buffer_count}) is too few for "
                    f"{'the main and lores encoders' if encoders > 1 else 'the encoder'}: "
                    f"at least {needed} (libcamera keeps 2 queued, picamera2 holds 1, each "
                    "encoder 1)" + ("; or set video.tiers = [] for no lores encoder"
                                    if encoders > 1 else ""),
                    related=("video.tiers",),
                )
        if self.playback.enabled and self.audio.source == "none":
            raise _InvalidKey(
                "playback.enabled",
                'needs audio: the remote participants\' audio arrives on the audio '
                'connection, which audio.source = "none" leaves out (set audio.source)',
                related=("audio.source",),
            )


# The top-level tables a TOML file may contain, in the order they are validated.
_SECTIONS: Final[dict[str, type[_Section]]] = {
    "server": ServerConfig,
    "auth": AuthConfig,
    "room": RoomConfig,
    "video": VideoConfig,
    "camera": CameraConfig,
    "audio": AudioConfig,
    "playback": PlaybackConfig,
    "ice": IceConfig,
    "peers": PeersConfig,
    "observe": ObserveConfig,
    "log": LogConfig,
}

# Keys holding optional file paths: resolved per file, and "" means "not set".
_PATH_KEYS: Final = (
    ("server", "ca_file"),
    ("auth", "token_file"),
    ("auth", "password_file"),
    ("video", "path"),
)
_ICE_PATH_KEY: Final = "credential_file"


# --------------------------------------------------------------------------- loading

_KeyPath = tuple[str | int, ...]


def _dec_hook(typ: type, obj: object) -> object:
    """Teach msgspec to build Path values from TOML strings."""
    if typ is Path:
        if isinstance(obj, str):
            if "\0" in obj:
                raise ValueError("path must not contain a NUL character")
            return Path(obj)
        raise TypeError(f"Expected a path string, got `{type(obj).__name__}`")
    raise NotImplementedError(typ)


def _read_toml(path: Path) -> dict[str, Any]:
    """Parse one file; every failure becomes a ConfigError naming the file (and line)."""
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(path, None, "file does not exist") from None
    except IsADirectoryError:
        raise ConfigError(path, None, "is a directory, expected a TOML file") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a NUL character in the path
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ConfigError(path, None, f"is larger than {_MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8-sig")  # tolerate a BOM from Windows editors
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, f"is not valid UTF-8 (byte offset {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.fullmatch(r"(?s)(.*) \(at line (\d+), column (\d+)\)", msg)
        if m:
            reason = f"invalid TOML at line {m[2]}, column {m[3]}: {m[1]}"
        else:
            m = re.fullmatch(r"(?s)(.*) \(at end of document\)", msg)
            line = text.count("\n") + 1
            reason = f"invalid TOML at line {line} (end of file): {m[1] if m else msg}"
        raise ConfigError(path, None, reason) from None


def _dropin_files(main: Path) -> list[Path]:
    """``config.d/*.toml`` next to the main file, sorted by name.

    Hidden files (editor swap/backup files such as ``.#10-x.toml``) and directories are
    skipped; anything else ending in ``.toml`` is loaded, so that a dangling symlink is
    reported rather than silently ignored.
    """
    directory = main.parent / DROPIN_DIR_NAME
    try:
        with os.scandir(directory) as entries:
            names = sorted(
                e.name
                for e in entries
                if e.name.endswith(".toml") and not e.name.startswith(".") and not e.is_dir()
            )
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise ConfigError(directory, None, "is not a directory") from None
    except OSError as exc:
        raise ConfigError(directory, None, f"cannot list: {exc.strerror or exc}") from None
    return [directory / n for n in names]


def _resolve_paths(doc: dict[str, Any], base: Path) -> None:
    """Make relative path values absolute against ``base`` (the file's directory)."""

    def fix(table: object, key: str) -> None:
        if isinstance(table, dict):
            value = table.get(key)
            if isinstance(value, str) and value:
                table[key] = str(base / value)

    for section, key in _PATH_KEYS:
        fix(doc.get(section), key)
    ice = doc.get("ice")
    servers = ice.get("servers") if isinstance(ice, dict) else None
    if isinstance(servers, list):
        for server in servers:
            fix(server, _ICE_PATH_KEY)


def _drop_empty_paths(doc: dict[str, Any]) -> None:
    """After merging, ``key = ""`` on an optional path means "unset": use the default."""

    def drop(table: object, key: str) -> None:
        if isinstance(table, dict) and table.get(key) == "":
            del table[key]

    for section, key in _PATH_KEYS:
        drop(doc.get(section), key)
    ice = doc.get("ice")
    servers = ice.get("servers") if isinstance(ice, dict) else None
    if isinstance(servers, list):
        for server in servers:
            drop(server, _ICE_PATH_KEY)


class _Origins:
    """Which file set each key path, so errors can name the file to edit.

    Leaves and arrays remember the *last* file that set them (the value in effect);
    tables remember the *first* file that created them (where a missing key belongs).
    """

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)  # load order; files[0] is the main file
        self._by_path: dict[_KeyPath, Path] = {}
        self._tables: set[_KeyPath] = set()

    def merge(self, base: dict[str, Any], overlay: dict[str, Any], source: Path) -> None:
        self._merge(base, overlay, (), source)

    def _merge(
        self, base: dict[str, Any], overlay: dict[str, Any], prefix: _KeyPath, source: Path
    ) -> None:
        for key, value in overlay.items():
            path = (*prefix, key)
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                self._merge(base[key], value, path, source)
                continue
            self._forget(path)
            base[key] = value
            self._record(path, value, source)

    def _forget(self, path: _KeyPath) -> None:
        n = len(path)
        for p in [p for p in self._by_path if p[:n] == path]:
            del self._by_path[p]
            self._tables.discard(p)

    def _record(self, path: _KeyPath, value: object, source: Path) -> None:
        self._by_path[path] = source
        if isinstance(value, dict):
            self._tables.add(path)
            for key, sub in value.items():
                self._record((*path, key), sub, source)

    def setter(self, path: _KeyPath) -> Path | None:
        """The file whose value is in effect at ``path`` (None if it is not set)."""
        for n in range(len(path), 0, -1):
            prefix = path[:n]
            if prefix in self._tables:
                return None
            if prefix in self._by_path:
                return self._by_path[prefix]
        return None

    def file_for(self, path: _KeyPath, related: Iterable[_KeyPath] = ()) -> Path:
        """The file to blame for a problem at ``path``.

        For a cross-field problem (``related`` keys involved too) that is the latest
        file that set any of the keys: that file introduced the conflict.
        """
        setters = [f for f in map(self.setter, (path, *related)) if f is not None]
        if setters:
            return max(setters, key=self.files.index)
        for n in range(len(path), 0, -1):
            found = self._by_path.get(path[:n])
            if found is not None:
                return found
        return self.files[0]


def _dotted(path: _KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _parse_msgspec_path(text: str) -> _KeyPath:
    parts: list[str | int] = []
    for m in re.finditer(r"\.([^.\[]+)|\[(\d+)\]", text):
        parts.append(m[1] if m[1] is not None else int(m[2]))
    return tuple(parts)


def _unwrap(tp: Any) -> Any:
    """Strip Annotated/Optional so we can see the struct, tuple or Literal inside."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _type_at(path: _KeyPath) -> Any:
    """The declared type at ``path`` in Config (None if the path is not a known key)."""
    tp: Any = Config
    for part in path:
        tp = _unwrap(tp)
        if isinstance(part, int):
            if typing.get_origin(tp) is not tuple:
                return None
            tp = typing.get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            hints = {f.name: f.type for f in msgspec.structs.fields(tp)}
            if part not in hints:
                return None
            tp = hints[part]
        else:
            return None
    return _unwrap(tp)


def _value_at(data: object, path: _KeyPath) -> object:
    for part in path:
        # Two branches (not one `or`) so mypy can narrow the index type in each.
        if isinstance(part, int) and isinstance(data, list) and part < len(data):  # noqa: SIM114
            data = data[part]
        elif isinstance(part, str) and isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return data


_FRIENDLY_TYPES: Final = {
    "float": "a number",
    "int": "an integer",
    "str": "a string",
    "bool": "true or false",
    "object": "a table",
    "array": "an array",
    "datetime": "a date-time",
    "date": "a date",
    "time": "a time",
    "Path": "a path string",
}


def _friendly(text: str) -> str:
    return re.sub(r"`(\w+)`", lambda m: _FRIENDLY_TYPES.get(m[1], m[1]), text)


def _explain(
    exc: msgspec.ValidationError, prefix: _KeyPath, data: object, origins: _Origins
) -> tuple[_KeyPath, _KeyPath, ConfigError]:
    """Map msgspec's "REASON - at `$.a.b`" onto (msgspec path, key path, FILE: KEY: REASON)."""
    text = str(exc)
    m = re.fullmatch(r"(?s)(.*?)(?: - at `\$(.*)`)?", text)
    assert m is not None  # the pattern matches any string
    raw_reason, at = m[1], _parse_msgspec_path(m[2] or "")
    where: _KeyPath = (*prefix, *at)
    key = where
    cause = exc.__cause__
    related: list[_KeyPath] = []
    if isinstance(cause, _InvalidKey):
        key = (*where, *_parse_msgspec_path("." + cause.key)) if cause.key else where
        related = [(*where, *_parse_msgspec_path("." + r)) for r in cause.related]
        reason = cause.reason
    elif um := re.fullmatch(r"Object contains unknown field `(.*)`", raw_reason):
        key = (*where, um[1])
        reason = "unknown key"
        parent = _type_at(where)
        if isinstance(parent, type) and issubclass(parent, msgspec.Struct):
            valid = [f.name for f in msgspec.structs.fields(parent) if f.name != "sources"]
            close = difflib.get_close_matches(um[1], valid, n=1)
            reason += (
                f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(valid)}"
            )
    elif mm := re.fullmatch(r"Object missing required field `(.*)`", raw_reason):
        key = (*where, mm[1])
        reason = "is required but not set"
    elif em := re.fullmatch(r"Invalid enum value (.*)", raw_reason):
        tp = _type_at(where)
        choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else ()
        value = _value_at(data, at)
        reason = f"invalid value {_show(value) if value is not None else em[1]}"
        if choices:
            reason += "; expected one of: " + ", ".join(_show(c) for c in choices)
    elif isinstance(cause, (ValueError, TypeError)):
        reason = _friendly(str(cause))
        reason = reason[:1].lower() + reason[1:]
    else:  # a type or range error: say what was expected and show the value given
        value = _value_at(data, at)
        reason = raw_reason[:1].lower() + raw_reason[1:]
        if isinstance(value, (str, int, float)):
            reason = re.sub(r", got `\w+`$", "", reason) + f", got {_show(value)}"
        reason = _friendly(reason)
    return where, key, ConfigError(origins.file_for(key, related), _dotted(key), reason)


def _validate_section(
    name: str, tp: type[_Section], value: object, origins: _Origins
) -> list[ConfigError]:
    """Validate one table and report as many of its problems as can be found at once.

    msgspec stops at the first error, so after each error in a field that has a default
    we drop that field and try again, until the table validates or a cross-field check
    (``__post_init__``) fails; those run last and stop the search.
    """
    errors: list[ConfigError] = []
    data = dict(value) if isinstance(value, dict) else value
    required = {f.name for f in msgspec.structs.fields(tp) if f.required}
    for _ in range((len(data) if isinstance(data, dict) else 0) + 2):
        try:
            msgspec.convert(data, tp, dec_hook=_dec_hook)
            return errors
        except msgspec.ValidationError as exc:
            where, key, err = _explain(exc, (name,), data, origins)
            is_check = len(where) == 1 and isinstance(exc.__cause__, _InvalidKey)
        field = key[1] if len(key) > 1 else None
        if is_check:
            # A cross-field check sees defaults in place of the fields dropped so far;
            # trust it only if it complains about a field the user actually set.
            if not errors or (isinstance(data, dict) and field in data):
                errors.append(err)
            return errors
        errors.append(err)
        if field is None or field in required or not isinstance(data, dict) or field not in data:
            return errors
        del data[field]
    return errors


def _unknown_sections(data: dict[str, Any], origins: _Origins) -> list[ConfigError]:
    errors = []
    for key in data:
        if key not in _SECTIONS:
            close = difflib.get_close_matches(key, list(_SECTIONS), n=1)
            hint = f"; did you mean [{close[0]}]?" if close else f"; valid: {', '.join(_SECTIONS)}"
            errors.append(ConfigError(origins.file_for((key,)), key, "unknown table" + hint))
    return errors


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load, merge and validate the main file and its ``config.d/*.toml`` drop-ins.

    Raises ConfigError (and nothing else) for every way this can fail, listing all
    problems found across all files so an operator can fix them in one go.
    """
    try:
        return _load(Path(path))
    except RecursionError:  # absurdly deep nesting; keep the "only ConfigError" promise
        raise ConfigError(Path(path), None, "is nested too deeply") from None


def _load(path: Path) -> Config:
    main = path.absolute()  # keep symlinks: drop-ins live next to the named path
    files = [main, *_dropin_files(main)]

    docs: list[tuple[Path, dict[str, Any]]] = []
    read_errors: list[ConfigError] = []
    for file in files:
        try:
            doc = _read_toml(file)
        except ConfigError as exc:
            read_errors.append(exc)
            continue
        _resolve_paths(doc, file.parent)
        docs.append((file, doc))
    if read_errors:
        raise ConfigError.group(read_errors)

    origins = _Origins(files)
    merged: dict[str, Any] = {}
    for file, doc in docs:
        origins.merge(merged, doc, file)
    _drop_empty_paths(merged)

    errors = _unknown_sections(merged, origins)
    for name, tp in _SECTIONS.items():
        errors += _validate_section(name, tp, merged.get(name, {}), origins)
    if not errors:
        full = {**merged, "sources": [str(f) for f in files]}
        try:
            return msgspec.convert(full, Config, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:  # cross-table checks in Config.__post_init__
            errors.append(_explain(exc, (), full, origins)[2])
    errors.sort(key=lambda e: files.index(e.file) if e.file in files else len(files))
    raise ConfigError.group(errors)


def _secret_paths(config: Config) -> Iterable[tuple[str, Path]]:
    if config.auth.token_file is not None:
        yield "auth.token_file", config.auth.token_file
    if config.auth.password_file is not None:
        yield "auth.password_file", config.auth.password_file
    for i, server in enumerate(config.ice.servers):
        if server.credential_file is not None:
            yield f"ice.servers[{i}].credential_file", server.credential_file


def check_secrets(config: Config) -> None:
    """Read every secret file the config points to, failing early and all at once.

    Secrets are read again when used (tokens get rotated); this check exists so that a
    missing or world-readable secret stops the service at start-up with a clear message
    instead of surfacing later as a failed login.  Raises SecretFileError.
    """
    from glimpse_edge.secretfile import read_secret_file  # secretfile imports this module

    errors: list[ConfigError] = []
    for key, path in _secret_paths(config):
        try:
            read_secret_file(path)
        except SecretFileError as exc:
            errors.append(SecretFileError(exc.file, key, exc.reason))
    if errors:
        raise SecretFileError.group(errors)
