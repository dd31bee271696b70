"""The root nursery: wires configuration, signaling, the room and systemd together.

The agent owns every long-lived task through one nursery; each runs under a
restart policy (:mod:`.supervise`). Signals are handled here: SIGTERM/SIGINT
leave the room and stop within a few seconds; SIGHUP re-reads the
configuration and applies it, or keeps the running one and says exactly what
is wrong with the new one.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import structlog
import trio

from . import __version__
from .config import Config, ConfigError, check_secrets, load_config
from .logs import configure_logging
from .media.hub import MediaHub
from .room import Room
from .rtc.aio import open_aio_loop
from .rtc.manager import PeerManager
from .signaling.messages import WebRTCSignal
from .signaling.session import SignalingSession
from .signaling.tokens import LoginTokenSource, token_source
from .supervise import HealthRegistry, supervise
from .systemd import Notifier, feed_watchdog, watchdog_interval

log = structlog.get_logger(__name__)

STOP_TIMEOUT = 4.0


def load_checked(path: Path) -> Config:
    """Load and validate a configuration, secrets included (raises ConfigError)."""
    config = load_config(path)
    check_secrets(config)
    return config


@dataclass
class _Signaling:
    """The parts that live exactly as long as one server/auth/room setting."""

    room: Room
    session: SignalingSession
    peers: PeerManager | None
    scope: trio.CancelScope


def build_media_hub(config: Config, health: HealthRegistry) -> MediaHub | None:
    """The media hub for the configured sources, or None when both are off."""
    from .media.factory import make_audio_source, make_video_source

    video, audio = config.video, config.audio
    make_audio = None if audio.source == "none" else partial(make_audio_source, audio)
    return MediaHub(video, audio, partial(make_video_source, video),
                    make_audio,  # type: ignore[arg-type]
                    health=health)


class Agent:
    """One device in one room."""

    def __init__(self, config_path: Path, config: Config, notifier: Notifier) -> None:
        self.config_path = config_path
        self.config = config
        self.notifier = notifier
        self.health = HealthRegistry()
        self.started_at = time.time()
        self.loaded_at = time.time()
        self._signaling: _Signaling | None = None
        self._config_problem: str | None = None
        self.hub: MediaHub | None = None

    # -- status -------------------------------------------------------------

    def status_line(self) -> str:
        sig = self._signaling
        line = sig.session.state_detail if sig else "starting"
        if sig and sig.session.state == "joined":
            n = len(sig.room.participants)
            line = (f"joined room {sig.room.name or sig.room.room_id} with {n} participant"
                    + ("" if n == 1 else "s"))
        if self._config_problem:
            line += f"; configuration error, running on the previous one: {self._config_problem}"
        return line

    def _publish_status(self, _text: str = "") -> None:
        self.notifier.status(self.status_line())

    # -- lifecycle ----------------------------------------------------------

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT; raises only for fatal errors."""
        t0 = time.monotonic()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with open_aio_loop(), trio.open_nursery() as nursery:
                self.hub = build_media_hub(self.config, self.health)
                if self.hub is not None:
                    await nursery.start(self.hub.run)
                await nursery.start(self._run_signaling, self.config)
                interval = watchdog_interval()
                if interval is not None:
                    nursery.start_soon(
                        feed_watchdog, self.notifier, interval, lambda: not self.health.failed()
                    )
                log.info("agent.ready", version=__version__, config=str(self.config_path),
                         room=self.config.room.id,
                         startup_ms=round((time.monotonic() - t0) * 1000))
                self.notifier.ready(self.status_line())
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        await self.reload(nursery)
                        continue
                    log.info("agent.stopping", signal=signal.Signals(signum).name)
                    self.notifier.stopping()
                    await self._stop()
                    nursery.cancel_scope.cancel()
                    break
        log.info("agent.stopped")

    async def _stop(self) -> None:
        with trio.move_on_after(STOP_TIMEOUT):
            if self._signaling is not None:
                await self._signaling.session.leave(timeout=STOP_TIMEOUT - 0.5)

    async def _run_signaling(
        self, config: Config, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Signaling, token refresh and the room model for one configuration."""
        with trio.CancelScope() as scope:
            room = Room(config.room.id)
            tokens = token_source(config.server, config.auth)
            signals_in, signals_out = trio.open_memory_channel[WebRTCSignal](256)
            session = SignalingSession(config.server, room, tokens, on_status=self._publish_status,
                                       signals=signals_in)
            peers = None
            if self.hub is not None:
                peers = PeerManager(session, self.hub, config.peers, config.ice,
                                    config.video.codec)
            self._signaling = _Signaling(room, session, peers, scope)
            events = room.subscribe()
            async with trio.open_nursery() as nursery:
                if peers is not None:
                    nursery.start_soon(peers.run, room.subscribe(), signals_out)
                nursery.start_soon(partial(supervise, "signaling", session.run,
                                           health=self.health))
                if isinstance(tokens, LoginTokenSource):
                    nursery.start_soon(partial(supervise, "auth.refresh", tokens.refresh_loop,
                                               health=self.health))
                task_status.started()
                async with events:
                    async for _event in events:
                        self._publish_status()

    async def reload(self, nursery: trio.Nursery) -> None:
        """SIGHUP: validate the files again; apply what changed, or keep going as is."""
        self.notifier.reloading()
        log.info("config.reloading", path=str(self.config_path))
        try:
            new = load_checked(self.config_path)
        except ConfigError as exc:
            self._config_problem = str(exc)
            log.error("config.reload_failed", error=str(exc),
                      file=str(exc.file) if exc.file else None, key=exc.key, reason=exc.reason)
            self.notifier.ready(self.status_line())
            return
        old, self.config = self.config, new
        self._config_problem = None
        self.loaded_at = time.time()
        changed = [name for name in ("server", "auth", "room", "video", "audio", "ice",
                                     "peers", "observe", "log")
                   if getattr(old, name) != getattr(new, name)]
        log.info("config.reloaded", changed=changed)
        if "log" in changed:
            configure_logging(new.log.level, new.log.format)
        if {"server", "auth", "room"} & set(changed) and self._signaling is not None:
            old_sig = self._signaling
            if "room" in changed or "server" in changed:
                with trio.move_on_after(STOP_TIMEOUT):
                    await old_sig.session.leave(timeout=STOP_TIMEOUT - 0.5)
            old_sig.scope.cancel()
            await nursery.start(self._run_signaling, new)
        self.notifier.ready(self.status_line())


async def run_agent(config_path: Path, notifier: Notifier | None = None) -> None:
    """Load the configuration and run the agent (raises ConfigError when it is unusable)."""
    config = load_checked(config_path)
    configure_logging(config.log.level, config.log.format)
    agent = Agent(config_path, config, notifier or Notifier())
    await agent.run()
