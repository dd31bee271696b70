"""The configuration's typed sections, one frozen :mod:`msgspec` struct per TOML table.

The structs forbid unknown keys, so a typo is an error rather than a silently
ignored setting. Checks that involve more than one key run in
``__post_init__`` and raise :class:`~.errors._InvalidKey`, so that the loader
can name the key at fault (``video.path``) and not just its table.
Constructing a struct by hand (tests, the agent's own defaults) runs the same
checks as loading a file.
"""

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Final, Literal, NamedTuple
from urllib.parse import urlsplit

import msgspec

from .errors import _InvalidKey

__all__ = [
    "MAX_LOWER_TIERS",
    "AudioConfig",
    "AuthConfig",
    "CameraConfig",
    "Config",
    "DisplayConfig",
    "GlimpseSettings",
    "IceConfig",
    "IceServer",
    "LogConfig",
    "ObserveConfig",
    "PeersConfig",
    "PlaybackConfig",
    "PublishConfig",
    "QualityTier",
    "RoomConfig",
    "ServerConfig",
    "VideoConfig",
    "camera_buffers_needed",
    "is_loopback_host",
    "parse_listen",
]


def _show(value: object) -> str:
    """Render a value the way it would be written in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _check_backoff(section: str, reconnect_min: float, reconnect_max: float) -> None:
    """A reconnect back-off's bounds: the first wait may not exceed the longest."""
    if reconnect_min > reconnect_max:
        raise _InvalidKey("reconnect_min", f"({reconnect_min}) must not exceed "
                          f"{section}.reconnect_max ({reconnect_max})",
                          related=("reconnect_max",))


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

# --------------------------------------------------------------------------- sections


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
        _check_backoff("server", self.reconnect_min, self.reconnect_max)


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


class DisplayConfig(_Section, frozen=True, kw_only=True):
    """Kiosk display: the remote participants' video on the device's own screen.

    Off by default: a camera in a corridor has no screen, and receiving video
    costs a decoder per participant. When on, every connection's video is
    ``sendrecv`` and the participants are shown in a grid (glimpse_edge/display/).
    """

    enabled: bool = False
    # "auto": Wayland (if WAYLAND_DISPLAY), X11 (if DISPLAY), then KMS/DRM (the console)
    driver: Literal["auto", "kmsdrm", "x11", "wayland"] = "auto"
    self_view: bool = False
    max_tiles: Annotated[int, msgspec.Meta(ge=1, le=9)] = 9
    show_names: bool = True


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): this machine."""
    if host.lower() in ("localhost", "localhost.") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class PublishConfig(_Section, frozen=True, kw_only=True):
    """Publish once to an SFU over WHIP (RFC 9725): the fan-out to a large audience is
    the SFU's, the device sends one stream (glimpse_edge/publish/).

    Absent (no ``[publish]`` table): nothing is published. The stream is one of
    the hub's shared encodings (``tier``: 0 is the best, the configured size
    at ``video.max_bitrate``), never an extra encode.
    """

    whip_url: str
    # The Bearer token (a stream key, a JWT): a secret file, like auth.token_file.
    # Unset: no Authorization header (a server without authentication).
    token_file: Path | None = None
    tier: Annotated[int, msgspec.Meta(ge=0, le=MAX_LOWER_TIERS)] = 0
    audio: bool = True
    # Plain http:// to a host other than this machine sends the token and the
    # SDP (the DTLS fingerprints) in the clear: refused unless asked for.
    allow_http: bool = False
    ca_file: Path | None = None
    request_timeout: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0
    connect_timeout: Annotated[float, msgspec.Meta(gt=0, le=120)] = 15.0
    reconnect_min: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 1.0
    # short: an SFU that restarts is published to again within seconds of being
    # back (issue 17: within 5 s), and a try costs one small POST
    reconnect_max: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 2.0
    auth_retry: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 300.0

    def __post_init__(self) -> None:
        example = "https://sfu.example.com/whip/endpoint/lobby"
        _check_url("whip_url", self.whip_url, ("http", "https"), example)
        parts = urlsplit(self.whip_url)
        if parts.fragment:
            raise _InvalidKey("whip_url", f"must not have a #fragment; got {_show(self.whip_url)}")
        if (parts.scheme == "http" and not self.allow_http
                and not is_loopback_host(parts.hostname or "")):
            raise _InvalidKey(
                "whip_url",
                "must be https:// (plain http:// would send the token and the session in "
                "the clear); http:// is accepted for this machine (localhost, 127.0.0.1, "
                f"::1) or with publish.allow_http = true; got {_show(self.whip_url)}",
                related=("allow_http",),
            )
        _check_backoff("publish", self.reconnect_min, self.reconnect_max)


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


class GlimpseSettings(NamedTuple):
    """The sections a Glimpse room needs (:attr:`Config.glimpse`)."""

    server: ServerConfig
    auth: AuthConfig
    room: RoomConfig


class Config(_Section, frozen=True, kw_only=True):
    """The whole validated configuration.

    ``sources`` lists the files that were loaded (main file first, then drop-ins in
    merge order) so the agent can log where its settings came from; it is filled by
    :func:`load_config` and cannot be set from a TOML file.
    """

    # The Glimpse room: all three, or none of them when [publish] is set (a
    # device that only publishes to an SFU). See :attr:`glimpse`.
    server: ServerConfig | None = None
    auth: AuthConfig | None = None
    room: RoomConfig | None = None
    video: VideoConfig = msgspec.field(default_factory=VideoConfig)
    camera: CameraConfig = msgspec.field(default_factory=CameraConfig)
    audio: AudioConfig = msgspec.field(default_factory=AudioConfig)
    playback: PlaybackConfig = msgspec.field(default_factory=PlaybackConfig)
    display: DisplayConfig = msgspec.field(default_factory=DisplayConfig)
    ice: IceConfig = msgspec.field(default_factory=IceConfig)
    peers: PeersConfig = msgspec.field(default_factory=PeersConfig)
    observe: ObserveConfig = msgspec.field(default_factory=ObserveConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    publish: PublishConfig | None = None
    sources: tuple[Path, ...] = ()

    @property
    def joins_room(self) -> bool:
        """True when the device joins a Glimpse room (False: it only publishes)."""
        return self.room is not None

    @property
    def glimpse(self) -> GlimpseSettings:
        """``[server]``, ``[auth]`` and ``[room]``; raises LookupError for a device that
        only publishes (check :attr:`joins_room` first)."""
        if self.server is None or self.auth is None or self.room is None:
            raise LookupError("no Glimpse room configured ([publish] only)")
        return GlimpseSettings(self.server, self.auth, self.room)

    def __post_init__(self) -> None:
        present = [n for n in ("server", "auth", "room") if getattr(self, n) is not None]
        if len(present) < 3 and (present or self.publish is None):
            missing = next(n for n in ("server", "auth", "room") if n not in present)
            raise _InvalidKey(
                missing,
                "is required: set [server], [auth] and [room] to join a Glimpse room"
                + ("" if present else ", or [publish] to only publish to an SFU"),
            )
        if self.publish is not None and self.publish.tier >= len(self.video.quality_tiers()):
            n = len(self.video.quality_tiers())
            raise _InvalidKey(
                "publish.tier",
                f"({self.publish.tier}) is not one of the {n} quality tier"
                f"{'' if n == 1 else 's'} (0 is the best; see video.tiers)",
                related=("video.tiers",),
            )
        if self.publish is not None and self.video.encode != "shared":
            raise _InvalidKey(
                "video.encode",
                'must be "shared" with [publish]: the published stream is one of the '
                "shared encodings (per-peer encoding has none to send)",
                related=("publish.whip_url",),
            )
        if self.publish is not None and self.publish.audio and self.audio.source == "none":
            raise _InvalidKey(
                "publish.audio",
                'is true but audio.source = "none" (set publish.audio = false, or a source)',
                related=("audio.source",),
            )
        if self.auth is not None and self.server is not None:
            self._check_login(self.auth, self.server)
        self._check_media()

    def _check_login(self, auth: AuthConfig, server: ServerConfig) -> None:
        if auth.uses_login and not server.api_url:
            raise _InvalidKey(
                "server.api_url",
                "is required when auth.username/auth.password_file are set "
                '(it is where the agent logs in), e.g. "https://glimpse.example.com"',
                related=("auth.username", "auth.password_file"),
            )

    def _check_media(self) -> None:
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
    "display": DisplayConfig,
    "ice": IceConfig,
    "peers": PeersConfig,
    "observe": ObserveConfig,
    "log": LogConfig,
    "publish": PublishConfig,
}

# Tables that may be absent: None in Config rather than their defaults.
_OPTIONAL_SECTIONS: Final = frozenset({"server", "auth", "room", "publish"})
