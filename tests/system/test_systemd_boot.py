"""The device service under a real systemd: provisioning inside a booted Debian machine.

A minimal Debian bookworm root (debootstrap, cached in /var/cache/glimpse-edge-test
and built once, see scripts/build-test-root.sh) is copied and booted with
``systemd-nspawn --boot``: systemd is PID 1 there, with its journal, D-Bus and
real unit semantics. ``scripts/provision.sh`` runs inside it (through
``nsenter``) with fleet flags that point the agent at a dev server this test
runs on the host's loopback (the machine shares the host's network). Then:

- the service is active (so systemd got READY=1: Type=notify), runs as its
  user in its sandbox, and joined the room;
- ``systemctl reload`` applies a configuration change (a new room);
- an invalid edit, picked up by the path unit, leaves it running, on the old
  configuration, with the reason in its status line; the fixed file applies;
- ``kill -9`` of the main process: systemd starts a new one;
- a blocked Trio loop (the test-only hook in glimpse_edge/testhooks.py, enabled
  by a runtime drop-in in the machine only): the watchdog kills it, with a
  traceback in the journal, and systemd starts a new one;
- a second provisioning run changes nothing;
- ``--uninstall`` leaves no unit behind.

The tests run in that order on one machine (module-scoped: booting and
provisioning once take most of the time). Every wait is bounded and
synchronised on journal entries (the agent's JSON events, systemd's own lines)
or on systemctl returning; nothing sleeps for synchronisation. Root only; they
are skipped, with systemd-nspawn's own words, only where the machine cannot
boot (not root, tools missing, or nspawn failing on this host).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from support.nspawn import (
    SOURCE_IN_MACHINE,
    CannotBoot,
    Container,
    Journal,
    ensure_root,
    missing_tools,
)

from glimpse_edge import testhooks
from glimpse_edge.devserver import LISTENING_PREFIX

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SERVICE = "glimpse-edge.service"
PATH_UNIT = "glimpse-edge-reload.path"
RELOADER = "glimpse-edge-reload.service"
PROVISION = f"{SOURCE_IN_MACHINE}/scripts/provision.sh"
CONF = "/etc/glimpse-edge"
# The test-only drop-in: in /run (systemctl edit --runtime), so it is the machine's
# alone, gone at its next boot, and apart from what provisioning manages in /etc.
HOOK_DROPIN = f"/run/systemd/system/{SERVICE}.d/50-test-fault-hook.conf"
HANG_FILE = "/run/glimpse-edge-test/block-loop"
TEST_WATCHDOG_SEC = 5
JOIN_TIMEOUT = 60.0
RESTART_TIMEOUT = 60.0
# What the machine's agent should not do on a shared host: bind 127.0.0.1:9750 (the
# observe endpoint) or spend a core on a 720p test pattern nobody watches.
SITE_DROPIN = """\
# Written by tests/system/test_systemd_boot.py before provisioning, as fleet tooling would.
[video]
source = "testpattern"
width = 320
height = 240
framerate = 10

[audio]
source = "tone"

[observe]
listen = ""

[server]
reconnect_min = 0.2
reconnect_max = 2.0
"""


# -- the dev server on the host --------------------------------------------------------


class DevServer:
    """``python -m glimpse_edge.devserver`` on 127.0.0.1, a free port, killed at the end."""

    def __init__(self, db: Path, timeout: float = 30.0) -> None:
        self.output: list[str] = []
        self._listening = threading.Event()
        self.port = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "glimpse_edge.devserver", "--host", "127.0.0.1",
             "--port", "0", "--db", str(db), "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._read, daemon=True).start()
        if not self._listening.wait(timeout) or not self.port:
            self.stop()
            raise RuntimeError("dev server did not listen within "
                               f"{timeout} s:\n" + "\n".join(self.output[-30:]))
        self.api_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            if line.startswith(LISTENING_PREFIX):
                self.port = int(line.strip().rsplit(":", 1)[1])
                self._listening.set()
        self._listening.set()

    def call(self, method: str, path: str, token: str | None = None,
             **body: str) -> dict[str, object]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # trust_env=False: no proxy from the environment for loopback
        with httpx.Client(timeout=10, trust_env=False) as http:
            resp = http.request(method, self.api_url + path, json=body or None, headers=headers)
        assert resp.status_code in (200, 201), f"{method} {path}: {resp.status_code} {resp.text}"
        data: dict[str, object] = resp.json()["data"]
        return data

    def register(self, username: str) -> str:
        data = self.call("POST", "/api/auth/register", username=username,
                         email=f"{username}@example.test", password=f"{username}-password")
        return str(data["token"])

    def create_room(self, token: str, name: str) -> str:
        return str(self.call("POST", "/api/rooms", token, name=name, description="")["_id"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


# -- the machine, provisioned ---------------------------------------------------------


@dataclass
class Device:
    """The booted machine with glimpse-edge provisioned in it, and what the test knows."""

    machine: Container
    journal: Journal
    server: DevServer
    fleet_args: list[str]
    rooms: dict[str, str]  # name -> id
    first_run: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    def provision(self, *args: str, timeout: float = 900.0) -> list[str]:
        proc = self.machine.run(["bash", PROVISION, *args], timeout=timeout)
        return proc.stdout.splitlines()

    def show(self, *props: str) -> dict[str, str]:
        return self.machine.show(SERVICE, *props)

    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])

    def write_conf(self, name: str, text: str) -> None:
        """A configuration file in place at once (renamed in), root:glimpse-edge 0640.

        Written beside, not in, the watched directories: only the rename is an event.
        """
        path = self.machine.path(f"{CONF}/{name}")
        tmp = self.machine.path("/root/.glimpse-edge-conf.tmp")  # same file system
        tmp.write_text(text)
        os.chown(tmp, 0, group_id(self.machine, "glimpse-edge"))
        tmp.chmod(0o640)
        tmp.replace(path)

    def wait_active(self, pid_not: int | None = None, timeout: float = RESTART_TIMEOUT) -> int:
        """Block until the service is active with a main PID (other than ``pid_not``).

        ``systemctl start`` on an active unit is a no-op that returns at once, and on
        one that is restarting waits for the queued start job: it is the bounded
        "wait until it is up" that systemctl offers for a Type=notify unit.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.machine.run(["systemctl", "start", SERVICE], timeout=timeout)
            props = self.show("ActiveState", "SubState", "MainPID")
            pid = int(props["MainPID"])
            if props["ActiveState"] == "active" and pid and pid != pid_not:
                return pid
            if time.monotonic() > deadline:
                raise AssertionError(f"{SERVICE} not active with a new PID: {props}")
            time.sleep(0.2)  # between polls of a bounded loop (it is deactivating)


def group_id(machine: Container, name: str) -> int:
    for line in machine.path("/etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"no group {name} in the machine")


def steps(lines: list[str]) -> dict[str, str]:
    """``{step: "changed" | "unchanged" | "skipped" ...}`` from provision.sh's output."""
    found = (re.fullmatch(r"(\w+):\s+(would change|\w+)\b.*", ln) for ln in lines)
    return {m[1]: m[2] for m in found if m and m[1] != "provision"}


def tree(root: Path) -> dict[str, tuple[int, int, int, int, int]]:
    """Mode, owner, size and mtime of everything under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st = Path(dirpath, name).lstat()
            out[os.path.join(dirpath, name)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                                st.st_mtime_ns)
    return out


def cannot_boot_reason() -> str | None:
    if os.geteuid() != 0:
        return "booting a machine with systemd-nspawn needs root"
    missing = missing_tools()
    if missing:
        return f"not installed: {' '.join(missing)} (scripts/setup-env.sh installs them as root)"
    return None


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    reason = cannot_boot_reason()
    if reason:
        pytest.skip(reason)
    timings: dict[str, float] = {}
    cached, timings["root (build or cache check)"] = ensure_root()
    workdir = tmp_path_factory.mktemp("machine")
    with contextlib.ExitStack() as stack:
        server = DevServer(workdir / "devserver.db")
        stack.callback(server.stop)
        device_token = server.register("camera-lobby")
        owner = server.register("owner")
        rooms = {name: server.create_room(owner, name) for name in ("Lobby", "Hall")}

        machine = stack.enter_context(Container(workdir, f"glimpse-edge-test-{os.getpid()}"))
        t0 = time.monotonic()
        machine.prepare(cached)
        timings["copy root"] = time.monotonic() - t0
        try:
            timings["boot"] = machine.boot()
        except CannotBoot as exc:
            pytest.skip(f"systemd-nspawn cannot boot a machine here: {exc}")
        # As fleet tooling would: site settings first, then the provisioning run.
        dropins = machine.path(f"{CONF}/config.d")
        dropins.mkdir(parents=True)
        (dropins / "10-site.toml").write_text(SITE_DROPIN)
        token = machine.path("/root/device-token")
        token.write_text(device_token + "\n")
        token.chmod(0o600)
        journal = machine.journal(SERVICE, PATH_UNIT, RELOADER)
        fleet = ["--ws-url", server.ws_url, "--room", rooms["Lobby"],
                 "--token-file", "/root/device-token"]
        dev = Device(machine, journal, server, fleet, rooms, [], timings)
        t0 = time.monotonic()
        dev.first_run = dev.provision(*fleet)
        timings["first provisioning (venv, pip install)"] = time.monotonic() - t0
        yield dev
        print("\ntimings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


# -- the checks, in order ---------------------------------------------------------------


def test_provisioned_service_is_active_ready_and_joined(device: Device) -> None:
    first = steps(device.first_run)
    for step in ("user", "dirs", "venv", "package", "config", "fleet", "secrets", "units"):
        assert first[step] == "changed", (step, device.first_run)
    # the root has provision.sh's OS packages already (no apt in the test's time budget)
    assert first["packages"] == "unchanged", device.first_run
    assert first["service"] == "changed", device.first_run
    assert device.first_run[-1].startswith("provision: ") and "changed" in device.first_run[-1]

    joined = device.journal.event("room.joined", room=device.rooms["Lobby"], timeout=JOIN_TIMEOUT)
    # Type=notify: "active" only after READY=1, and systemd logs "Started" only then.
    device.journal.systemd("Started", unit=SERVICE)
    props = device.show("Type", "ActiveState", "SubState", "MainPID", "StatusText",
                        "WatchdogUSec", "NRestarts", "UnitFileState", "NotifyAccess")
    assert props["Type"] == "notify" and props["NotifyAccess"] == "main", props
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert props["UnitFileState"] == "enabled" and props["WatchdogUSec"] == "30s", props
    assert int(props["MainPID"]) == joined.pid, (props, str(joined))
    ready = device.journal.event("agent.ready")
    assert ready.pid == joined.pid
    assert props["StatusText"] == "joined room Lobby with 0 participants", props
    assert device.machine.run(["systemctl", "is-active", PATH_UNIT]).stdout.strip() == "active"

    # the sandbox is real: the agent's user, no capabilities, no new privileges, seccomp
    pid = joined.pid
    status = device.machine.run(["cat", f"/proc/{pid}/status"]).stdout
    fields = dict(re.findall(r"^(\w+):\s+(.*)$", status, re.M))
    uid = device.machine.run(["id", "-u", "glimpse-edge"]).stdout.strip()
    assert fields["Uid"].split()[0] == uid, fields["Uid"]
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0, fields
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2", fields
    # ProtectSystem=strict: the agent's view of /opt is read-only
    mounts = device.machine.run(["cat", f"/proc/{pid}/mountinfo"]).stdout
    assert re.search(r"^\S+ \S+ \S+ \S+ / ro[,\s]", mounts, re.M), mounts[:2000]


def test_systemctl_reload_applies_a_config_change(device: Device) -> None:
    pid = device.wait_active()
    # Only `systemctl reload` this time: the path unit would react to the edit itself.
    device.machine.run(["systemctl", "stop", PATH_UNIT])
    try:
        mark = device.journal.mark()
        device.write_conf("config.d/50-room.toml", f'[room]\nid = "{device.rooms["Hall"]}"\n')
        # returns once the reload is done: RELOADING=1 ... READY=1 from the agent
        device.machine.run(["systemctl", "reload", SERVICE], timeout=60)
        reloaded = device.journal.event("config.reloaded", since=mark)
        assert reloaded.event is not None and "room" in reloaded.event["changed"], reloaded
        device.journal.event("room.left", since=mark, room=device.rooms["Lobby"])
        device.journal.event("room.joined", since=mark, room=device.rooms["Hall"],
                             timeout=JOIN_TIMEOUT)
        device.journal.systemd("Reloaded", unit=SERVICE, since=mark)
        props = device.show("ActiveState", "MainPID", "StatusText", "NRestarts")
        assert props["ActiveState"] == "active" and int(props["MainPID"]) == pid, props
        assert props["StatusText"] == "joined room Hall with 0 participants", props
    finally:
        device.machine.run(["systemctl", "start", PATH_UNIT])


def test_a_bad_edit_leaves_it_running_on_the_old_config(device: Device) -> None:
    pid = device.wait_active()
    mark = device.journal.mark()
    # An edit, and nothing else: the path unit sees it and reloads the service.
    device.write_conf("config.d/60-camera.toml", "[video]\nwidth = 641\n")  # odd: invalid
    failed = device.journal.event("config.reload_failed", since=mark)
    assert failed.event is not None
    assert failed.event["key"] == "video.width", failed
    assert failed.event["file"] == f"{CONF}/config.d/60-camera.toml", failed
    device.journal.systemd("Starting", unit=RELOADER, since=mark)
    props = device.show("ActiveState", "SubState", "MainPID", "StatusText")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert int(props["MainPID"]) == pid, props
    assert props["StatusText"].startswith(
        "joined room Hall with 0 participants; configuration error, running on the "
        "previous one: " f"{CONF}/config.d/60-camera.toml: video.width: "), props
    # still on the old configuration: nothing applied, still in the room
    for name in ("config.reloaded", "room.left", "media.reconfigured"):
        assert not [e for e in device.journal.entries[mark:] if e.name == name], name
    # fixing the file (removing it) applies and clears the complaint
    mark = device.journal.mark()
    device.machine.path(f"{CONF}/config.d/60-camera.toml").unlink()
    device.journal.event("config.reloaded", since=mark)
    status = device.show("StatusText")["StatusText"]
    assert "configuration error" not in status, status
    assert device.main_pid() == pid


def test_kill_9_of_the_main_process_is_restarted(device: Device) -> None:
    pid = device.wait_active()
    restarts = int(device.show("NRestarts")["NRestarts"])
    mark = device.journal.mark()
    t0 = time.monotonic()
    device.machine.run(["kill", "-9", str(pid)])
    device.journal.systemd("status=9/KILL", unit=SERVICE, since=mark)
    ready = device.journal.event("agent.ready", since=mark, timeout=RESTART_TIMEOUT,
                                 where=lambda e: e.pid != pid)
    device.journal.event("room.joined", since=mark, room=device.rooms["Hall"],
                         timeout=JOIN_TIMEOUT)
    device.timings["kill -9 to joined again"] = time.monotonic() - t0
    new = device.wait_active(pid_not=pid)
    assert new == ready.pid
    props = device.show("NRestarts", "ActiveState")
    assert int(props["NRestarts"]) == restarts + 1, props


def test_the_watchdog_restarts_a_blocked_event_loop(device: Device) -> None:
    machine = device.machine
    # The test-only hook and a short watchdog, for this machine only. No core dumps:
    # the host's core_pattern would write one per abort into the state directory.
    machine.sh(f"mkdir -p {os.path.dirname(HOOK_DROPIN)} {os.path.dirname(HANG_FILE)}; "
               f"cat > {HOOK_DROPIN}", input=(
                   "[Service]\n"
                   f"Environment={testhooks.BLOCK_LOOP_ENV}={HANG_FILE}\n"
                   f"WatchdogSec={TEST_WATCHDOG_SEC}\n"
                   "LimitCORE=0\n"))
    try:
        machine.run(["systemctl", "daemon-reload"])
        mark = device.journal.mark()
        machine.run(["systemctl", "restart", SERVICE], timeout=60)  # waits for READY=1
        device.journal.event("test.fault_hook_enabled", since=mark)
        pid = device.wait_active()
        assert device.show("WatchdogUSec")["WatchdogUSec"] == f"{TEST_WATCHDOG_SEC}s"
        restarts = int(device.show("NRestarts")["NRestarts"])

        mark = device.journal.mark()
        machine.run(["touch", HANG_FILE])
        blocked = device.journal.event("test.loop_blocked", since=mark)
        t_blocked = time.monotonic()
        machine.run(["rm", HANG_FILE])  # the next process must not block again
        assert blocked.pid == pid
        timeout = device.journal.systemd("Watchdog timeout", unit=SERVICE, since=mark,
                                         timeout=TEST_WATCHDOG_SEC * 4)
        waited = time.monotonic() - t_blocked
        device.journal.systemd("status=6/ABRT", unit=SERVICE, since=mark)
        # SIGABRT (WatchdogSignal=) and faulthandler: the journal shows where it hung
        device.journal.wait("with the traceback of the hang",
                            lambda e: e.pid == pid and "testhooks.py" in e.message, since=mark)
        ready = device.journal.event("agent.ready", since=mark, timeout=RESTART_TIMEOUT,
                                     where=lambda e: e.pid != pid)
        device.journal.event("room.joined", since=mark, room=device.rooms["Hall"],
                             timeout=JOIN_TIMEOUT)
        device.timings["loop blocked to watchdog timeout"] = waited
        assert waited <= TEST_WATCHDOG_SEC + 3, (waited, str(timeout))
        assert device.wait_active(pid_not=pid) == ready.pid
        assert int(device.show("NRestarts")["NRestarts"]) == restarts + 1
    finally:
        machine.run(["rm", "-rf", os.path.dirname(HOOK_DROPIN), HANG_FILE])
        machine.run(["systemctl", "daemon-reload"])
        # back to the unit as shipped (no hook in the process's environment)
        mark = device.journal.mark()
        machine.run(["systemctl", "restart", SERVICE], timeout=60)
        device.journal.systemd("Started", unit=SERVICE, since=mark)  # seen by the journal too


def test_a_second_provisioning_run_changes_nothing(device: Device) -> None:
    pid = device.wait_active()
    watched = [device.machine.path(p) for p in
               (CONF, "/etc/systemd/system", "/opt/glimpse-edge", "/var/lib/glimpse-edge")]
    before = {p: tree(p) for p in watched}
    accounts = {name: device.machine.path(f"/etc/{name}").read_bytes()
                for name in ("passwd", "group", "shadow", "gshadow")}
    started = device.show("ExecMainStartTimestampMonotonic")
    mark = device.journal.mark()
    t0 = time.monotonic()
    second = device.provision(*device.fleet_args)
    device.timings["second provisioning"] = time.monotonic() - t0
    assert all(v == "unchanged" for v in steps(second).values()), second
    assert second[-1] == "provision: nothing to do", second
    assert {p: tree(p) for p in watched} == before
    assert {name: device.machine.path(f"/etc/{name}").read_bytes() for name in accounts} \
        == accounts
    # not restarted, not reloaded
    assert device.main_pid() == pid
    assert device.show("ExecMainStartTimestampMonotonic") == started
    touched = [str(e) for e in device.journal.entries[mark:]
               if e.name == "config.reloading"
               or (e.pid == 1 and re.match(r"(Reloading|Stopping|Starting) ", e.message))]
    assert touched == []


def test_uninstall_leaves_no_unit_behind(device: Device) -> None:
    machine = device.machine
    pid = device.wait_active()
    mark = device.journal.mark()
    removed = steps(device.provision("--uninstall"))
    assert removed["units"] == "changed" and removed["venv"] == "changed", removed
    # stopped the way systemd stops it: SIGTERM, the agent leaves its room
    device.journal.event("agent.stopping", since=mark, signal="SIGTERM")
    device.journal.event("room.left", since=mark)
    device.journal.systemd("Deactivated successfully", unit=SERVICE, since=mark)

    # (list-unit-files exits 1 when nothing matches)
    files = machine.run(["systemctl", "list-unit-files", "--no-legend", "glimpse-edge*"],
                        check=False)
    assert files.stdout.strip() == "" and files.returncode in (0, 1), files
    units = machine.run(["systemctl", "list-units", "--all", "--no-legend", "glimpse-edge*"])
    assert units.stdout.strip() == "", units.stdout
    for unit in (SERVICE, PATH_UNIT, RELOADER):
        assert device.machine.show(unit, "LoadState")["LoadState"] == "not-found", unit
    leftovers = [str(p) for p in machine.path("/etc/systemd/system").rglob("glimpse-edge*")]
    assert leftovers == []
    assert not machine.path("/opt/glimpse-edge").exists()
    assert machine.run(["pgrep", "-u", "glimpse-edge"], check=False).returncode == 1
    assert machine.run(["kill", "-0", str(pid)], check=False).returncode != 0
    # configuration and secrets are kept (--purge removes them); nothing left to do
    token = machine.path(f"{CONF}/token").stat()
    assert stat.S_IMODE(token.st_mode) == 0o600
    assert machine.path(f"{CONF}/config.d/50-room.toml").exists()
    assert device.provision("--uninstall")[-1] == "provision: nothing to do"
    purged = steps(device.provision("--uninstall", "--purge"))
    assert purged["config"] == "changed" and purged["user"] == "changed", purged
    assert not machine.path(CONF).exists()
    assert machine.run(["id", "glimpse-edge"], check=False).returncode != 0


# -- the hook itself, without systemd (fast, any user) ---------------------------------------


def test_the_block_loop_hook_is_off_unless_its_variable_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(testhooks.BLOCK_LOOP_ENV, raising=False)
    assert testhooks.block_loop_file() is None
    monkeypatch.setenv(testhooks.BLOCK_LOOP_ENV, "")
    assert testhooks.block_loop_file() is None
    monkeypatch.setenv(testhooks.BLOCK_LOOP_ENV, str(tmp_path / "hang"))
    assert testhooks.block_loop_file() == tmp_path / "hang"
    shipped = (Path(__file__).parents[2] / "systemd" / SERVICE).read_text()
    assert testhooks.BLOCK_LOOP_ENV not in shipped
