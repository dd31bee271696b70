"""``glimpse-edge doctor``: one command that says why this device does not work.

The person holding a meeting-room device that shows nothing in the meeting
needs a checklist, not a journal: each check says PASS, WARN, FAIL or SKIP,
what it found, and for anything wrong the fix. The checks follow the path a
working device takes, and a check whose prerequisite failed is skipped with
the reason, so the first FAIL is the thing to fix:

1. ``config``     the files load and validate (every problem, with file and key);
2. ``secrets``    token/password/TURN credential files are readable and private;
3. ``clock``      plausible, synchronised, and close to the server's (JWT expiry);
4. ``server``     HTTP reachable, TLS verified, WebSocket handshake, token
                  accepted (authenticate only: the doctor never joins the room);
5. ``token``      expiry of the token in use;
6. ``camera``     the configured video source opens and delivers frames;
7. ``microphone`` the configured ALSA device opens and delivers non-silent audio;
8. ``ice``        every STUN/TURN server answers (TURN credentials tried);
9. ``service``    the systemd unit's state, when systemd runs here.

A camera or microphone held by the running agent is expected, not a fault:
when the service is active (or its status endpoint answers) a busy device is
a WARN that says so. Exit status: 0 all passed, 1 warnings, 2 failures.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import errno
import json
import math
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import trio

from .config import (
    Config,
    ConfigError,
    SecretFileError,
    check_secrets,
    load_config,
    read_secret_file,
)

__all__ = ["Check", "Doctor", "exit_code", "render"]

Status = Literal["pass", "warn", "fail", "skip"]

SERVICE: Final = "glimpse-edge.service"
# A Pi has no real-time clock: before network time it may think it is 1970
# (or whenever fake-hwclock last saved). Nothing released before this is right.
EARLIEST_PLAUSIBLE: Final = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC).timestamp()
CLOCK_WARN_S: Final = 30.0
CLOCK_FAIL_S: Final = 300.0
TOKEN_WARN_S: Final = 86_400.0  # a provisioned token that expires within a day
VIDEO_FRAMES: Final = 10  # frames (or packets) a camera must deliver
AUDIO_SECONDS: Final = 0.6
SILENT_DBFS: Final = -60.0


@dataclass
class Check:
    name: str
    status: Status
    summary: str
    fix: str = ""
    details: list[str] = field(default_factory=list)


def exit_code(checks: list[Check]) -> int:
    """0 when everything passed (or was skipped), 1 with warnings, 2 with failures."""
    statuses = {c.status for c in checks}
    return 2 if "fail" in statuses else 1 if "warn" in statuses else 0


def render(checks: list[Check], config_path: Path) -> str:
    """The checklist, for a person."""
    width = max((len(c.name) for c in checks), default=0)
    out = [f"glimpse-edge doctor: {config_path}", ""]
    for c in checks:
        out.append(f"  {c.status.upper():4}  {c.name:<{width}}  {c.summary}")
        pad = " " * (width + 10)
        out.extend(f"{pad}{line}" for line in c.details)
        if c.fix and c.status in ("warn", "fail"):
            out.append(f"{pad}fix: {c.fix}")
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    verdict = ("all checks passed" if not fails and not warns else
               ", ".join(part for part in (
                   f"{fails} failure{'s' * (fails != 1)}" if fails else "",
                   f"{warns} warning{'s' * (warns != 1)}" if warns else "") if part))
    out += ["", f"{verdict} (exit status {exit_code(checks)})"]
    return "\n".join(out)


def dumps(checks: list[Check], config_path: Path) -> str:
    return json.dumps({"config": str(config_path), "exit_code": exit_code(checks),
                       "checks": [asdict(c) for c in checks]}, indent=2)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything behind it: causes, contexts, members of groups."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 20:
        current = todo.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        if isinstance(current, BaseExceptionGroup):
            todo += list(current.exceptions)
    return seen


def _net_problem(exc: BaseException, what: str) -> tuple[str, str]:
    """(summary, fix) for a failed connection, by what the error (and its causes) say."""
    chain = _causes(exc)
    text = f"{exc}"
    for inner in chain[1:]:
        if str(inner) and str(inner) not in text:
            text = f"{text} ({inner})"
            break
    errnos = {e.errno for e in chain if isinstance(e, OSError) and e.errno}
    if errno.ECONNREFUSED in errnos:
        return (f"{what}: connection refused", "is the server running, and is the port in "
                "the URL right?")
    if errnos & {errno.ENETUNREACH, errno.EHOSTUNREACH}:
        return f"{what}: network unreachable ({text})", "is this device online? ip route"
    lowered = " ".join(str(e) for e in chain).lower()
    if "certificate" in lowered or "ssl" in lowered or "tls" in lowered:
        if "not yet valid" in lowered or "expired" in lowered:
            return (f"{what}: TLS certificate rejected: {text}",
                    "check the system clock (see the clock check), then the certificate")
        return (f"{what}: TLS certificate not trusted: {text}",
                "if the server uses a private CA, name its certificate in server.ca_file; "
                "verification cannot be switched off")
    if "refused" in lowered:
        return (f"{what}: connection refused", "is the server running, and is the port in "
                "the URL right?")
    if "name or service not known" in lowered or "name resolution" in lowered or (
            "nodename nor servname" in lowered) or "no address associated" in lowered:
        return (f"{what}: the host name does not resolve ({text})",
                "check the host name in the URL and this device's DNS (resolvectl status)")
    if "timed out" in lowered or "timeout" in lowered or isinstance(exc, trio.TooSlowError):
        return (f"{what}: no answer in time", "is the host reachable from this network (a "
                "firewall or proxy dropping it)? try: curl -v URL")
    if "unreachable" in lowered:
        return f"{what}: network unreachable ({text})", "is this device online? ip route"
    return f"{what}: {text}", "check the URL and the network"


class Doctor:
    """Runs the checks in order and collects the results."""

    def __init__(self, config_path: Path, *, timeout: float = 5.0) -> None:
        self.config_path = config_path
        self.timeout = timeout
        self.checks: list[Check] = []
        self.config: Config | None = None
        self.server_date: float | None = None
        self.token: str | None = None
        self._agent_running: bool | None = None

    def add(self, name: str, status: Status, summary: str, fix: str = "",
            details: list[str] | None = None) -> Check:
        check = Check(name, status, summary, fix, details or [])
        self.checks.append(check)
        return check

    async def run(self) -> list[Check]:
        config = self.check_config()
        if config is None:
            for name in ("secrets", "clock", "server", "token", "camera", "microphone", "ice"):
                self.add(name, "skip", "the configuration must be valid first")
        else:
            secrets_ok = self.check_secrets(config)
            await self.check_server(config, secrets_ok)
            self.check_clock()
            self.check_token(config)
            await self.check_camera(config)
            await self.check_microphone(config)
            await self.check_ice(config, secrets_ok)
        self.check_service()
        return self.checks

    # -- configuration ------------------------------------------------------

    def check_config(self) -> Config | None:
        path = self.config_path
        try:
            config = load_config(path)
        except ConfigError as exc:
            missing = exc.file == path.absolute() and "does not exist" in exc.reason
            self.add("config", "fail",
                     f"{path} does not exist" if missing else
                     f"{len(exc.errors)} problem{'s' * (len(exc.errors) != 1)} in the "
                     "configuration",
                     "create it from the annotated example (config/glimpse-edge.toml), or "
                     "pass --config PATH" if missing else
                     "edit the files named above; `glimpse-edge check-config` checks again",
                     [] if missing else [str(e).splitlines()[0] for e in exc.errors])
            return None
        self.config = config
        files = len(config.sources)
        self.add("config", "pass", f"valid ({files} file{'s' * (files != 1)}: "
                 + ", ".join(str(f) for f in config.sources) + ")")
        return config

    def check_secrets(self, config: Config) -> bool:
        try:
            check_secrets(config)
        except SecretFileError as exc:
            self.add("secrets", "fail", "a secret file cannot be used",
                     "fix each file as said; the agent refuses secrets that others can read",
                     [str(e).splitlines()[0] for e in exc.errors])
            return False
        names = [k for k, v in (("auth.token_file", config.auth.token_file),
                                ("auth.password_file", config.auth.password_file)) if v]
        names += [f"ice.servers[{i}].credential_file" for i, s in enumerate(config.ice.servers)
                  if s.credential_file is not None]
        self.add("secrets", "pass", "readable and private (mode 600): " + ", ".join(names))
        return True

    # -- time ---------------------------------------------------------------

    def check_clock(self) -> None:
        now = time.time()
        shown = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        synced = _ntp_synchronized()
        if now < EARLIEST_PLAUSIBLE:
            self.add("clock", "fail", f"the system clock says {shown} UTC, which cannot be right",
                     "a Pi has no battery clock: it needs network time at boot (sudo "
                     "timedatectl set-ntp true; NTP (UDP 123) must be allowed out). Tokens "
                     "and TLS certificates are checked against this clock")
            return
        if self.server_date is not None:
            skew = now - self.server_date
            where = f"{abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the server"
            if abs(skew) > CLOCK_FAIL_S:
                self.add("clock", "fail", f"{shown} UTC is {where}",
                         "enable network time: sudo timedatectl set-ntp true (token expiry is "
                         "judged by this clock)")
            elif abs(skew) > CLOCK_WARN_S:
                self.add("clock", "warn", f"{shown} UTC is {where}",
                         "enable network time: sudo timedatectl set-ntp true")
            else:
                self.add("clock", "pass", f"{shown} UTC, within {CLOCK_WARN_S:g} s of the "
                         "server" + (", synchronised" if synced else ""))
            return
        if synced is False:
            self.add("clock", "warn", f"{shown} UTC, not synchronised with network time",
                     "sudo timedatectl set-ntp true; check that NTP (UDP 123) may go out")
        else:
            self.add("clock", "pass", f"{shown} UTC" + (", synchronised" if synced else
                                                        " (the server's time is unknown)"))

    # -- server and token ----------------------------------------------------

    async def check_server(self, config: Config, secrets_ok: bool) -> None:
        from .tls import new_client_context

        server = config.server
        http_url = server.api_url or _http_url_for(server.ws_url)
        try:
            # its own: httpx sets its ALPN protocols on the context it is given
            ssl_context = new_client_context(server.ca_file)
        except (OSError, ValueError) as exc:
            self.add("server", "fail", f"server.ca_file {server.ca_file} cannot be loaded: "
                     f"{exc}", "point server.ca_file at the CA certificate (PEM)")
            return
        details: list[str] = []
        http = await self._http_probe(http_url, ssl_context)
        if http is not None:
            summary, fix = http
            self.add("server", "fail", summary, fix)
            return
        details.append(f"HTTP: {http_url} answered"
                       + (" (TLS verified)" if http_url.startswith("https:") else ""))
        if not secrets_ok:
            self.add("server", "warn", "reachable; the token was not tried (see secrets)",
                     details=details)
            return
        token = await self._token(config, details)
        if token is None:
            return
        self.token = token  # its expiry is checked even if the server rejects it
        result = await self._ws_authenticate(server.ws_url, token, ssl_context)
        if result[0] != "pass":
            status, summary, fix = result
            self.add("server", status, summary, fix, details)
            return
        details.append(f"WebSocket: {server.ws_url} handshake"
                       + (" (TLS verified)" if server.ws_url.startswith("wss:") else ""))
        self.add("server", "pass", result[1], details=details)

    async def _http_probe(self, url: str, ssl_context: Any) -> tuple[str, str] | None:
        """Any HTTP answer proves the server is there; remember its clock."""
        import httpx

        try:
            async with httpx.AsyncClient(verify=ssl_context, timeout=self.timeout,
                                         trust_env=False) as client:
                response = await client.get(url)
        except httpx.HTTPError as exc:
            return _net_problem(exc, url)
        date = response.headers.get("date")
        if date:
            with contextlib.suppress(TypeError, ValueError):
                self.server_date = email.utils.parsedate_to_datetime(date).timestamp()
        return None

    async def _token(self, config: Config, details: list[str]) -> str | None:
        from .signaling.tokens import CredentialsRejected, LoginTokenSource, TokenUnavailable

        auth = config.auth
        if auth.token_file is not None:
            return read_secret_file(auth.token_file)  # checked readable already
        source = LoginTokenSource(config.server, auth)
        try:
            with trio.fail_after(self.timeout + 1):
                token = await source.get()
        except CredentialsRejected as exc:
            self.add("server", "fail", f"login as {auth.username!r} rejected: {exc}",
                     "check auth.username and the password in auth.password_file", details)
            return None
        except (TokenUnavailable, trio.TooSlowError) as exc:
            summary, fix = _net_problem(exc, f"login at {config.server.api_url}")
            self.add("server", "fail", summary, fix, details)
            return None
        details.append(f"login: {auth.username!r} logged in at {config.server.api_url}")
        return token

    async def _ws_authenticate(self, url: str, token: str,
                               ssl_context: Any) -> tuple[Status, str, str]:
        from trio_websocket import ConnectionClosed, HandshakeError, connect_websocket_url

        from .signaling.messages import (
            Authenticate,
            Authenticated,
            AuthenticateResponse,
            AuthError,
            ProtocolError,
            decode,
            encode,
        )

        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(self.timeout):
                    ws = await connect_websocket_url(
                        nursery, url, ssl_context=ssl_context if url.startswith("wss:")
                        else None)
                try:
                    with trio.fail_after(self.timeout):
                        await ws.send_message(encode(Authenticate(token=token)))
                        while True:
                            try:
                                message = decode(await ws.get_message())
                            except ProtocolError:
                                continue
                            if isinstance(message, Authenticated) or (
                                    isinstance(message, AuthenticateResponse)
                                    and message.success):
                                who = message.username or message.user_id
                                return ("pass", f"token accepted: authenticated as {who!r} "
                                        f"(user id {message.user_id})", "")
                            if isinstance(message, AuthError | AuthenticateResponse):
                                return ("fail", f"the server rejected the token: "
                                        f"{message.message or 'no reason given'}",
                                        "put a valid token into auth.token_file (or use "
                                        "auth.username + auth.password_file to log in)")
                finally:
                    with trio.move_on_after(1):
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
        except trio.TooSlowError:
            return ("fail", f"{url}: no WebSocket handshake or answer within "
                    f"{self.timeout:g} s", "check server.ws_url (the port and path of the "
                    "WebSocket endpoint), and that no proxy holds the connection")
        except HandshakeError as exc:
            status = getattr(exc, "status_code", None)
            if status is not None:
                return ("fail", f"{url}: the server answered HTTP {status} instead of a "
                        "WebSocket", "check the path and port of server.ws_url")
            summary, fix = _net_problem(exc, url)
            return "fail", summary, fix
        except ConnectionClosed as exc:
            return "fail", f"{url}: the server closed the connection ({exc})", "see its logs"
        except (OSError, trio.BrokenResourceError) as exc:
            summary, fix = _net_problem(exc, url)
            return "fail", summary, fix
        except BaseExceptionGroup as group:
            from .supervise import sole_exception

            summary, fix = _net_problem(sole_exception(group), url)
            return "fail", summary, fix

    def check_token(self, config: Config) -> None:
        from .signaling.tokens import token_expiry

        if self.token is None:
            self.add("token", "skip", "no token was obtained (see server)")
            return
        exp = token_expiry(self.token)
        if exp is None:
            self.add("token", "pass", "the token has no expiry")
            return
        left = exp - time.time()
        until = datetime.datetime.fromtimestamp(exp, datetime.UTC).strftime("%Y-%m-%d %H:%M")
        if config.auth.uses_login:
            self.add("token", "pass", f"logged in; tokens last {_span(left)} and are renewed "
                     f"{_span(config.auth.refresh_margin)} before they expire")
        elif left <= 0:
            self.add("token", "fail", f"the token in {config.auth.token_file} expired "
                     f"{_span(-left)} ago ({until} UTC)",
                     "provision a new token into that file (the agent picks it up without "
                     "a restart), or log in with auth.username + auth.password_file")
        elif left < TOKEN_WARN_S:
            self.add("token", "warn", f"the token expires in {_span(left)} ({until} UTC)",
                     "provision a new token soon, or let the agent log in itself")
        else:
            self.add("token", "pass", f"valid until {until} UTC (in {_span(left)})")

    # -- media --------------------------------------------------------------

    async def check_camera(self, config: Config) -> None:
        from .media.factory import make_video_source
        from .media.picamera import PiCamera2Source
        from .media.source import EncodedVideoSource, SourceError

        video = config.video
        if video.source == "testpattern":
            self.add("camera", "skip", 'video.source = "testpattern": no camera is used')
            return
        try:
            source = make_video_source(video, config.camera)
            await source.prepare()
        except SourceError as exc:
            self.add("camera", "fail", str(exc), _camera_fix(str(exc)))
            return
        received = 0
        first_at: float | None = None
        done = trio.Event()
        started = time.monotonic()

        def sink(_item: object) -> None:
            nonlocal received, first_at
            received += 1
            first_at = first_at or time.monotonic()
            if received >= VIDEO_FRAMES:
                done.set()

        error = await _run_until(source.run, sink, done, self.timeout + 5)
        took = time.monotonic() - started
        if received >= VIDEO_FRAMES:
            what = "packets of H.264" if isinstance(source, EncodedVideoSource) else "frames"
            detail = f"{source.name} delivered {received} {what} in {took:.1f} s " + (
                f"({video.width}x{video.height}@{video.framerate})")
            note = None
            if isinstance(source, PiCamera2Source):
                detail += f"; picamera2 {source.mods.features.describe()}"
                if source.encode_delay_ms is not None:
                    detail += f", encoder delay {source.encode_delay_ms:.0f} ms"
                note = source.lores_note
            if note is not None:
                self.add("camera", "warn", f"{detail}; {note}",
                         "lower video.width/height/framerate, or the lower tier in video.tiers")
                return
            self.add("camera", "pass", detail)
            return
        message = str(error) if error is not None else (
            f"{source.name} opened but delivered {received} of {VIDEO_FRAMES} frames within "
            f"{self.timeout + 5:g} s")
        if error is not None and "busy" in message and self._agent_is_running():
            self.add("camera", "warn", "the camera is busy: the running glimpse-edge has it, "
                     "as it should", "to test the camera from here, stop the service first: "
                     "sudo systemctl stop glimpse-edge")
            return
        self.add("camera", "fail", message, _camera_fix(message))

    async def check_microphone(self, config: Config) -> None:
        from .media.factory import make_audio_source
        from .media.source import SourceError

        audio = config.audio
        if audio.source != "alsa":
            self.add("microphone", "skip", f'audio.source = "{audio.source}": no microphone '
                     "is used")
            return
        try:
            source = make_audio_source(audio)
        except SourceError as exc:
            self.add("microphone", "fail", str(exc), "install what the message names")
            return
        assert source is not None
        frames: list[Any] = []
        enough = max(1, round(AUDIO_SECONDS * 1000 / audio.period_ms))
        done = trio.Event()

        def sink(frame: Any) -> None:
            frames.append(frame.to_ndarray().copy())
            if len(frames) >= enough:
                done.set()

        error = await _run_until(source.run, sink, done, self.timeout)
        if len(frames) < enough:
            message = str(error) if error is not None else (
                f"{source.name} delivered no audio within {self.timeout:g} s")
            if "busy" in message and self._agent_is_running():
                self.add("microphone", "warn", "the microphone is busy: the running "
                         "glimpse-edge has it", "stop the service to test it from here")
                return
            self.add("microphone", "fail", message,
                     "check audio.device against `glimpse-edge devices` (or arecord -L)")
            return
        peak, rms_dbfs = _levels(frames)
        if peak == 0 or rms_dbfs < SILENT_DBFS:
            level = "all zero" if peak == 0 else f"level {rms_dbfs:.0f} dBFS"
            self.add("microphone", "warn", f"{source.name} opened, but its audio is silent "
                     f"({level})", "is it muted, or its capture gain at "
                     "zero? alsamixer -c CARD (F4 shows capture controls, M unmutes, "
                     "space turns capture on); is the right device configured?")
            return
        self.add("microphone", "pass", f"{source.name} delivers audio (level "
                 f"{rms_dbfs:.0f} dBFS over {len(frames) * audio.period_ms} ms)")

    # -- network ------------------------------------------------------------

    async def check_ice(self, config: Config, secrets_ok: bool) -> None:
        from .netprobe import probe_ice_server

        servers = config.ice.servers
        if not servers:
            self.add("ice", "warn", "no STUN/TURN servers: only peers on the same network "
                     "can connect", "add [[ice.servers]] (a STUN server, and a TURN server "
                     "for networks that block UDP)")
            return
        details: list[str] = []
        worst: Status = "pass"
        for i, server in enumerate(servers):
            credential = None
            if server.credential_file is not None and secrets_ok:
                credential = read_secret_file(server.credential_file)
            for url in server.urls:
                result = await probe_ice_server(url, username=server.username,
                                                credential=credential,
                                                ca_file=config.server.ca_file,
                                                timeout=min(self.timeout, 3.0))
                mark = "ok" if result.ok else "FAILED"
                details.append(f"ice.servers[{i}] {url}: {mark}: {result.summary}")
                if not result.ok:
                    details.append(f"  fix: {result.fix}")
                    worst = "fail"
        answered = sum(line.split(": ", 2)[1] == "ok" for line in details if ": " in line
                       and line.startswith("ice.servers"))
        total = sum(len(s.urls) for s in servers)
        if worst == "fail" and answered:
            worst = "warn"  # some path still works
        summary = f"{answered} of {total} STUN/TURN server URL{'s' * (total != 1)} answered"
        self.add("ice", worst, summary, "see each line above" if worst != "pass" else "",
                 details)

    # -- the service --------------------------------------------------------

    def check_service(self) -> None:
        state = _systemd_state()
        if state is None:
            self.add("service", "skip", "systemd is not running here (a container?)")
            return
        if state.get("LoadState") == "not-found":
            self.add("service", "warn", f"{SERVICE} is not installed",
                     "install it with scripts/provision.sh (or copy systemd/glimpse-edge.service "
                     "to /etc/systemd/system and systemctl enable --now glimpse-edge)")
            return
        active, sub = state.get("ActiveState", "?"), state.get("SubState", "?")
        restarts = state.get("NRestarts", "0")
        enabled = state.get("UnitFileState", "?")
        summary = f"{SERVICE} is {active} ({sub}), {enabled}, restarted {restarts} times"
        if active == "active":
            self.add("service", "pass", summary)
        elif active == "failed":
            self.add("service", "fail", summary + f", result {state.get('Result', '?')}",
                     "journalctl -u glimpse-edge -b shows why; an exit status of 78 means "
                     "the configuration (see the config check)")
        else:
            self.add("service", "warn", summary, "sudo systemctl enable --now glimpse-edge")

    def _agent_is_running(self) -> bool:
        """The service is active, or the agent's status endpoint answers."""
        if self._agent_running is None:
            state = _systemd_state()
            running = state is not None and state.get("ActiveState") == "active"
            if not running and self.config is not None and self.config.observe.address:
                try:
                    from .observe.statusview import fetch_status, url_for

                    host, port = self.config.observe.address
                    if port:
                        fetch_status(url_for("127.0.0.1" if host in ("0.0.0.0", "") else host,
                                             port), timeout=1.0)
                        running = True
                except Exception:
                    running = False
            self._agent_running = running
        return self._agent_running


# ------------------------------------------------------------------- helpers


def _span(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 7200:
        return f"{seconds / 3600:.0f} hours"
    return f"{max(0.0, seconds) / 60:.0f} minutes"


def _http_url_for(ws_url: str) -> str:
    """The http(s) URL of a WebSocket endpoint, for a plain reachability check."""
    scheme, rest = ws_url.split(":", 1)
    return ("https:" if scheme == "wss" else "http:") + rest


def _camera_fix(message: str) -> str:
    if "apt install" in message:
        return "install picamera2 as the message says"
    if "busy" in message:
        return "stop the other program (sudo fuser -v /dev/media* /dev/video* finds it)"
    if "no camera" in message:
        return "connect the camera with the Pi switched off, then check again"
    if "camera." in message:
        return "change or remove the [camera] setting named above"
    return "see the message; `glimpse-edge devices` lists what this machine has"


def _levels(frames: list[Any]) -> tuple[int, float]:
    import numpy as np

    samples = np.concatenate([f.reshape(-1) for f in frames]).astype(np.float64)
    peak = int(np.max(np.abs(samples))) if samples.size else 0
    rms = float(np.sqrt(np.mean(samples ** 2))) if samples.size else 0.0
    dbfs = 20 * math.log10(rms * math.sqrt(2) / 32767) if rms > 0 else -math.inf
    return peak, dbfs


def _run(argv: list[str], timeout: float = 5.0) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _systemd_state() -> dict[str, str] | None:
    if not _systemd_running():
        return None
    out = _run(["systemctl", "show", SERVICE, "--property=LoadState,ActiveState,SubState,"
                "UnitFileState,NRestarts,Result"])
    if out is None:
        return None
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _ntp_synchronized() -> bool | None:
    if not _systemd_running() or shutil.which("timedatectl") is None:
        return None
    out = _run(["timedatectl", "show", "--property=NTPSynchronized", "--value"])
    return None if out is None else out.strip() == "yes"


async def run_doctor(config_path: Path, timeout: float,
                     report: Callable[[list[Check], Path], str] = render) -> tuple[int, str]:
    """Run every check; (exit status, report text)."""
    doctor = Doctor(config_path, timeout=timeout)
    checks = await doctor.run()
    return exit_code(checks), report(checks, config_path)


async def _run_until(run: Callable[[Any], Any], sink: Callable[[Any], None], done: trio.Event,
                     timeout: float) -> BaseException | None:
    """Run a media source into ``sink`` until ``done`` is set or ``timeout`` passes;
    the error the source failed with, if it did (a doctor reports it, never raises)."""
    from .supervise import sole_exception

    with trio.move_on_after(timeout):
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, sink)
                await done.wait()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            return sole_exception(group)
        except Exception as exc:
            return exc
    return None
