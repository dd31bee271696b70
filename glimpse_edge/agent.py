"""The root nursery: wires configuration, the media hub, the room and systemd together.

The agent owns every long-lived task through one nursery; each runs under a
restart policy (:mod:`.supervise`). The room (its model, signaling link and
peers) is its :class:`~glimpse_edge.roomrunner.RoomRunner`'s. Signals are
handled here: SIGTERM/SIGINT leave the room and stop within a few seconds;
SIGHUP re-reads the configuration and applies it, or keeps the running one and
says exactly what is wrong with the new one.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import trio

from . import __version__, testhooks
from .config import Config, ConfigError, load_checked
from .logs import configure_logging
from .media.hub import CaptureProcessor, MediaHub
from .media.source import AnyVideoSource, AudioSource
from .room import Room
from .roomrunner import STOP_TIMEOUT, RoomRunner
from .rtc.aio import open_aio_loop
from .rtc.peer import PeerSession
from .signaling.session import SignalingSession
from .supervise import Backoff, HealthRegistry, RestartPolicy, supervise
from .systemd import Notifier, feed_watchdog, watchdog_interval

if TYPE_CHECKING:
    from .display.state import DisplayState
    from .media.playback import Speaker
    from .publish.publisher import Publisher
    from .publish.state import PublishState
    from .rtc.uplink import Uplink as UplinkOfPeers
    from .rtc.uplink import UplinkState

log = structlog.get_logger(__name__)

# What reload() can apply by itself; anything else needs a restart (logged).
_APPLIED = ("server", "auth", "room", "video", "camera", "audio", "display", "ice", "peers",
            "log", "publish")

# The kiosk display's tasks: restarted for as long as the agent runs (the call
# goes on without a screen; kiosk.run_screen retries a screen that will not open).
DISPLAY_POLICY = RestartPolicy(name="display", backoff=Backoff(initial=1.0, maximum=60.0),
                               max_restarts=None)
# The WHIP publisher retries its sessions itself; this restarts it after a bug.
PUBLISH_POLICY = RestartPolicy(name="publish", backoff=Backoff(initial=1.0, maximum=60.0),
                               max_restarts=None)


def _source_factories(
    config: Config,
) -> tuple[Callable[[], AnyVideoSource], Callable[[], AudioSource] | None]:
    from .media.factory import make_audio_source, make_video_source

    video, audio = config.video, config.audio
    make_audio = None if audio.source == "none" else partial(make_audio_source, audio)
    return (partial(make_video_source, video, config.camera),
            make_audio)  # type: ignore[return-value]


def state_directory() -> Path | None:
    """Where the agent may keep state across restarts: systemd's StateDirectory
    ($STATE_DIRECTORY, /var/lib/glimpse-edge), None when not run by systemd."""
    value = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(value) if value else None


def build_speaker(config: Config, health: HealthRegistry) -> Speaker | None:
    """The speakerphone, if ``[playback]`` is enabled (None otherwise)."""
    if not config.playback.enabled:
        return None
    from .media.playback import Speaker  # its ALSA and AEC bindings only when it is on

    return Speaker(config.playback, health=health)


def build_display(config: Config) -> DisplayState | None:
    """What the kiosk's screen shows, if ``[display]`` is enabled (None otherwise)."""
    if not config.display.enabled:
        return None
    from .display.state import DisplayState

    return DisplayState(config.room.id if config.room is not None else "")


def _canceller(speaker: Speaker | None) -> CaptureProcessor | None:
    """What the hub runs on captured audio: the speaker's echo canceller, if it has one."""
    if speaker is None or speaker.canceller is None:
        return None
    return speaker.process_capture


def build_media_hub(config: Config, health: HealthRegistry,
                    capture_processor: CaptureProcessor | None = None) -> MediaHub:
    """The media hub for the configured sources (video is always on; audio may be off),
    with ``capture_processor`` (the speakerphone's echo canceller) on the captured audio."""
    make_video, make_audio = _source_factories(config)
    return MediaHub(config.video, config.audio, make_video, make_audio, health=health,
                    capture_processor=capture_processor)


class Agent:
    """One device in one room."""

    def __init__(self, config_path: Path, config: Config, notifier: Notifier) -> None:
        self.config_path = config_path
        self.config = config
        self.notifier = notifier
        self.health = HealthRegistry()
        self.started_at = time.time()
        self.loaded_at = time.time()
        self.runner: RoomRunner | None = None  # the room, once run() has the hub
        self._config_problem: str | None = None
        self.hub: MediaHub | None = None
        # The kiosk display (None while [display] is off) and its tasks' scope.
        self.display: DisplayState | None = None
        self._display_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        # The WHIP publisher (None while [publish] is unset), its task's scope and end.
        self.publisher: Publisher | None = None
        self._publish_task: tuple[trio.CancelScope, trio.Event] | None = None
        # The room's task (None for a pure publisher) and the speaker it hands remote audio.
        self._room_task: tuple[trio.CancelScope, trio.Event] | None = None
        self._speaker: Speaker | None = None

    # -- status -------------------------------------------------------------

    def status_line(self) -> str:
        session, room = self.session, self.room
        line = session.state_detail if session is not None else "starting"
        if session is not None and room is not None and session.state == "joined":
            n = len(room.participants)
            line = (f"joined room {room.name or room.room_id} with {n} participant"
                    + ("" if n == 1 else "s"))
        publisher = self.publisher
        if publisher is not None:
            what = {"publishing": "publishing to", "connecting": "connecting to",
                    "retrying": "retrying", "auth_failed": "token refused by",
                    }.get(publisher.phase, publisher.phase)
            part = f"{what} {publisher.url}"
            line = part if not self.config.joins_room else f"{line}; {part}"
        if self._config_problem:
            line += f"; configuration error, running on the previous one: {self._config_problem}"
        return line

    def _publish_status(self) -> None:
        self.notifier.status(self.status_line())

    # -- what observe reads (observe.view.AgentView) --------------------------

    @property
    def config_problem(self) -> str | None:
        """Why the last reload was refused (the previous configuration still runs)."""
        return self._config_problem

    @property
    def session(self) -> SignalingSession | None:
        """The signaling session serving the room (None before the first one starts)."""
        return self.runner.session if self.runner is not None else None

    @property
    def room(self) -> Room | None:
        """The room model (None before the first session starts)."""
        return self.runner.room if self.runner is not None else None

    @property
    def peers(self) -> Mapping[str, PeerSession]:
        """The peer sessions, by participant id."""
        peers = self.runner.peers if self.runner is not None else None
        return peers.sessions if peers is not None else {}

    @property
    def uplink(self) -> UplinkState | None:
        """The device's upload as the peers see it together (None without peers)."""
        peers = self.runner.peers if self.runner is not None else None
        return peers.uplink.state(time.monotonic()) if peers is not None else None

    @property
    def publish(self) -> PublishState | None:
        """The WHIP session (None while [publish] is unset)."""
        return self.publisher.state() if self.publisher is not None else None

    @property
    def peers_refused(self) -> int:
        """Participants refused a session because ``peers.max_peers`` was reached (since
        the peers were last rebuilt)."""
        peers = self.runner.peers if self.runner is not None else None
        return peers.refused if peers is not None else 0

    # -- lifecycle ----------------------------------------------------------

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT; raises only for fatal errors."""
        t0 = time.monotonic()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with open_aio_loop(), trio.open_nursery() as nursery:
                # The speakerphone: the hub gets its echo canceller, the
                # peers hand it their remote audio.
                speaker = self._speaker = build_speaker(self.config, self.health)
                if speaker is not None:
                    nursery.start_soon(speaker.run)
                self.hub = build_media_hub(self.config, self.health, _canceller(speaker))
                await nursery.start(self.hub.run)
                # The kiosk display: the peers put remote video in its tiles.
                self._nursery = nursery
                self.display = build_display(self.config)
                if self.config.joins_room:
                    await self._start_room()
                self._start_display()
                await self._start_publisher()
                if self.config.observe.address is not None:
                    from .observe import run_observe  # its web stack only when it is on

                    nursery.start_soon(run_observe, self, self.config.observe.address)
                interval = watchdog_interval()
                if interval is not None:
                    nursery.start_soon(
                        feed_watchdog, self.notifier, interval, lambda: not self.health.failed()
                    )
                hang_file = testhooks.block_loop_file()  # test-only; None unless set
                if hang_file is not None:
                    nursery.start_soon(testhooks.block_loop_when_file_appears, hang_file)
                log.info("agent.ready", version=__version__, config=str(self.config_path),
                         room=self.config.room.id if self.config.room else None,
                         publish=self.publisher.url if self.publisher else None,
                         startup_ms=round((time.monotonic() - t0) * 1000))
                self.notifier.ready(self.status_line())
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        await self.reload()
                        continue
                    log.info("agent.stopping", signal=signal.Signals(signum).name)
                    self.notifier.stopping()
                    await self._stop()
                    nursery.cancel_scope.cancel()
                    break
        log.info("agent.stopped")

    # -- the kiosk display ------------------------------------------------------

    def _start_display(self) -> None:
        """Run the display's tasks (screen, room state) for the current [display], if on."""
        if self._display_scope is not None:
            self._display_scope.cancel()
            self._display_scope = None
        if self.display is None or self._nursery is None:
            return
        scope = self._display_scope = trio.CancelScope()
        self._nursery.start_soon(self._run_display, self.display, self.config, scope)

    async def _run_display(self, state: DisplayState, config: Config,
                           scope: trio.CancelScope) -> None:
        from .kiosk import follow_room, run_screen, screen_settings

        with scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(
                    supervise, "display.screen",
                    partial(run_screen, state, screen_settings(config.display)),
                    policy=DISPLAY_POLICY, health=self.health))
                nursery.start_soon(partial(
                    supervise, "display.room",
                    partial(follow_room, state, lambda: self.room, lambda: self.session,
                            lambda: self.peers),
                    policy=DISPLAY_POLICY, health=self.health))

    # -- the WHIP publisher -------------------------------------------------------

    async def _start_publisher(self) -> None:
        """Publish for the current [publish], if set, after the previous session's DELETE."""
        await self._stop_publisher()
        publish = self.config.publish
        if publish is None or self._nursery is None or self.hub is None:
            self.publisher = None
            return
        from .publish.publisher import Publisher

        def shared_uplink() -> UplinkOfPeers | None:
            peers = self.runner.peers if self.runner is not None else None
            return peers.uplink if peers is not None else None

        publisher = self.publisher = Publisher(publish, self.hub, self.config.ice,
                                               health=self.health,
                                               on_change=self._publish_status,
                                               uplink=shared_uplink,
                                               state_dir=state_directory())
        scope, ended = trio.CancelScope(), trio.Event()
        self._publish_task = (scope, ended)

        async def run() -> None:
            try:
                with scope:
                    await supervise("publish", publisher.run, policy=PUBLISH_POLICY,
                                    health=self.health)
            finally:
                ended.set()

        self._nursery.start_soon(run)

    async def _stop_publisher(self) -> None:
        """End the publisher's task and wait for it (its DELETE is bounded)."""
        task, self._publish_task = self._publish_task, None
        if task is not None:
            scope, ended = task
            scope.cancel()
            await ended.wait()

    # -- the room -----------------------------------------------------------------

    async def _start_room(self) -> None:
        """Join the room of ``self.config`` (a RoomRunner in its own scope)."""
        assert self._nursery is not None and self.hub is not None
        runner = RoomRunner(self.config, self.hub, self.health, self._publish_status,
                            speaker=self._speaker, display=self.display)
        scope, ended = trio.CancelScope(), trio.Event()

        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await runner.run(task_status=task_status)
            finally:
                ended.set()

        self.runner, self._room_task = runner, (scope, ended)
        await self._nursery.start(run)

    async def _stop_room(self) -> None:
        """Leave the room politely (bounded) and end its runner (a reload to publishing only)."""
        runner, task, self.runner, self._room_task = self.runner, self._room_task, None, None
        if runner is not None:
            with trio.move_on_after(STOP_TIMEOUT):
                await runner.leave()
        if task is not None:
            scope, ended = task
            scope.cancel()
            await ended.wait()

    async def _stop(self) -> None:
        with trio.move_on_after(STOP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_publisher)
                if self.runner is not None:
                    await self.runner.leave(timeout=STOP_TIMEOUT - 0.5)

    # -- reload ---------------------------------------------------------------

    async def reload(self) -> None:
        """SIGHUP: validate the files again; apply what changed, or keep going as is.

        Validation comes first and covers everything (secrets included), so a
        bad edit never half-applies: the agent keeps the running configuration,
        and the log and systemd's STATUS say which file, key and why. A good one
        is applied part by part, touching only what the change concerns (see
        docs/decisions.md, "Device service and live reconfiguration").
        """
        self.notifier.reloading()
        log.info("config.reloading", path=str(self.config_path))
        try:
            new = load_checked(self.config_path)
        except ConfigError as exc:
            self._config_problem = "; ".join(str(e) for e in exc.errors)
            log.error("config.reload_failed", error=str(exc),
                      file=str(exc.file) if exc.file else None, key=exc.key, reason=exc.reason,
                      problems=len(exc.errors))
            self.notifier.ready(self.status_line())
            return
        old, self.config = self.config, new
        self._config_problem = None
        self.loaded_at = time.time()
        changed = [name for name in (*_APPLIED, "observe")
                   if getattr(old, name) != getattr(new, name)]
        log.info("config.reloaded", changed=changed, sources=[str(f) for f in new.sources])
        if "log" in changed:
            configure_logging(new.log.level, new.log.format)
        new_tracks = self._apply_media(old, new)
        if old.display.enabled != new.display.enabled:
            # a new state for the peers the runner rebuilds (the video's direction changes)
            self.display = build_display(new)
            if self.runner is not None:
                self.runner.display = self.display
        if old.joins_room and not new.joins_room:
            log.info("room.leaving", reason="the configuration only publishes now")
            await self._stop_room()
        elif new.joins_room and not old.joins_room:
            log.info("room.starting", reason="the configuration joins a room now")
            await self._start_room()
        elif self.runner is not None:
            await self.runner.apply(old, new, new_tracks=new_tracks)
        if old.publish != new.publish or (new.publish is not None and (
                new_tracks or old.ice != new.ice or old.video.codec != new.video.codec)):
            log.info("publish.reloading", whip=None if new.publish is None else "set")
            await self._start_publisher()  # DELETE, then a new session with the new settings
        if old.display != new.display:
            self._start_display()  # the screen reopens with the new settings
        if "observe" in changed:
            log.warning("config.restart_required", keys=["observe"],
                        reason="the observe endpoint is set up at start")
        if old.playback != new.playback:
            log.warning("config.restart_required", keys=["playback"],
                        reason="the speaker and the connections' audio direction are set up "
                               "at start")
        self.notifier.ready(self.status_line())

    def _apply_media(self, old: Config, new: Config) -> bool:
        """New video/audio settings into the running hub; True if peers must renegotiate."""
        assert self.hub is not None  # built by run() before any reload
        if old.video == new.video and old.audio == new.audio and old.camera == new.camera:
            return False
        make_video, make_audio = _source_factories(new)
        self.hub.reconfigure(new.video, new.audio, make_video, make_audio)
        if old.camera != new.camera and new.video.source == "picamera2" and (
                old.video.source == "picamera2"):
            self.hub.restart_video("camera settings changed")
        # The tracks a connection carries: per-peer raw frames or shared
        # packets, audio or none. Only a new negotiation can change those.
        return (old.video.encode != new.video.encode
                or (old.audio.source == "none") != (new.audio.source == "none"))


async def run_agent(config_path: Path, notifier: Notifier | None = None) -> None:
    """Load the configuration and run the agent (raises ConfigError when it is unusable)."""
    config = load_checked(config_path)
    configure_logging(config.log.level, config.log.format)
    agent = Agent(config_path, config, notifier or Notifier())
    await agent.run()
