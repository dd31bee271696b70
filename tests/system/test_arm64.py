"""glimpse-edge on arm64, the Raspberry Pi's architecture: both Raspberry Pi OS bases, emulated.

For Debian 12 bookworm (Python 3.11) and Debian 13 trixie (Python 3.13), the two
bases of Raspberry Pi OS: an arm64 root (debootstrap minbase plus what
``scripts/provision.sh`` would apt-get, built once per base by
``scripts/build-test-root.sh --arch arm64 --suite SUITE`` and cached in
/var/cache/glimpse-edge-test/arm64-SUITE-root) is copied, and in the copy, with
qemu-user running its programs through binfmt_misc:

- ``scripts/provision.sh`` installs the service as on a device: the user, the
  venv, ``pip install`` of the checkout with the ``alsa`` extra (aarch64 wheels
  where PyPI has them, the rest built from source with the root's gcc);
- the provisioned venv's ``glimpse-edge check-config``, ``devices`` and
  ``doctor`` exit 0 (doctor reaches the dev server and a STUN server the test
  runs on the host's loopback: the root shares the host's network);
- ``glimpse-edge run`` streams the test pattern (320x180, 10 fps: emulation is
  slow) and a tone, and an aiortc peer on the host, outside the root, joins the
  room and decodes its frames; SIGTERM ends it with exit status 0.

Commands run in the root with ``systemd-nspawn`` without ``--boot`` (its mounts,
the host's network, nothing left behind), as the service's user where the
service would, in a clean environment. The emulated CPU is a Cortex-A72 (a Pi 4;
``QEMU_CPU``, see scripts/build-test-root.sh). pip's cache is bind-mounted from
the cache directory; the host's pip network settings (index, proxy, timeout) and
locally added CAs go in, so pip reaches PyPI the way the host does.

It prints what it measured (``-s``): root build, provisioning, what pip built
from source and how long that took, the agent's peak RSS under emulation (qemu's
own memory included), frames decoded. It asserts behaviour only. Every wait is
bounded and synchronised on the agent's log events or the peer's decoded
frames. Root only; skipped where qemu-user or debootstrap is missing or
binfmt_misc cannot be set up (scripts/setup-env.sh installs the packages).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
from support.agent import AgentProcess
from support.devserver import DevServer
from support.glimpse_client import create_room, register
from support.nspawn import (
    CACHE,
    MACHINE_ENV,
    PIP_CACHE,
    SOURCE_IN_MACHINE,
    CannotEmulate,
    copy_root_and_project,
    ensure_root,
    host_runs_systemd,
    pip_network_env,
)
from support.rtcpeer import BrowserPeer
from support.stunserver import stun_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

# Raspberry Pi OS's bases and their Python
SUITES = {"bookworm": "3.11", "trixie": "3.13"}
ARCH = "arm64"
QEMU_CPU = "cortex-a72"  # a Pi 4's core; qemu's default ("max") is far slower on trixie
USER = "glimpse-edge"
CONF = "/etc/glimpse-edge"
GLIMPSE = "/opt/glimpse-edge/venv/bin/glimpse-edge"
PROVISION = f"{SOURCE_IN_MACHINE}/scripts/provision.sh"
PIP_LOG = "/root/pip-provision.log"
WIDTH, HEIGHT, FPS = 320, 180, 10
FRAMES = 50  # decoded by the peer: 5 s of video

BUILD_TIMEOUT = 1800.0  # debootstrap under emulation: 3-4 min here, a loaded CI more
PROVISION_TIMEOUT = 1200.0  # pip under emulation: about 2 min here
COMMAND_TIMEOUT = 180.0
JOIN_TIMEOUT = 180.0
FRAMES_TIMEOUT = 240.0
STOP_TIMEOUT = 60.0

SITE_DROPIN = f"""\
# Written by tests/system/test_arm64.py before provisioning, as fleet tooling would.
[video]
source = "testpattern"
width = {WIDTH}
height = {HEIGHT}
framerate = {FPS}
codec = "h264"
max_bitrate = 300000

[audio]
source = "tone"

[observe]
listen = ""

[log]
format = "json"

[server]
reconnect_min = 0.2
reconnect_max = 2.0

[peers]
offer_wait = 0.5
"""

# suite -> what was measured, for the table at the end of the module
FIGURES: dict[str, dict[str, str]] = {}


def missing_tools() -> list[str]:
    """Host commands this needs that are not installed, as Debian package names."""
    wanted = {"systemd-nspawn": "systemd-container", "debootstrap": "debootstrap",
              "qemu-aarch64-static": "qemu-user-static", "update-binfmts": "binfmt-support"}
    return sorted({pkg for cmd, pkg in wanted.items() if shutil.which(cmd) is None})


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "building and running an arm64 root (debootstrap, binfmt_misc) needs root"
    missing = missing_tools()
    if missing:
        return f"not installed: {' '.join(missing)} (scripts/setup-env.sh installs them as root)"
    return None


# -- the root ----------------------------------------------------------------------------


class EmulatedRoot:
    """A copy of a cached arm64 root; commands run in it with systemd-nspawn (no boot)."""

    def __init__(self, workdir: Path, suite: str) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.name = f"glimpse-edge-{ARCH}-{suite}-{os.getpid()}"

    def prepare(self, cached: Path) -> None:
        """Copy the root, the project's files and the host's extra CAs into place."""
        copy_root_and_project(cached, self.root, timeout=600)
        # A TLS-intercepting proxy's CA (CI runners, sandboxes): pip inside must trust
        # what the host trusts. Appended to the bundle pip and OpenSSL read, which is
        # what update-ca-certificates would do (it takes half a minute emulated).
        extra = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
        if extra:
            with self.path("/etc/ssl/certs/ca-certificates.crt").open("a") as bundle:
                for crt in extra:
                    bundle.write("\n" + crt.read_text().strip() + "\n")
        PIP_CACHE.mkdir(parents=True, exist_ok=True)

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def command(self, argv: Sequence[str], *, user: str = "root",
                env: Mapping[str, str] | None = None,
                binds: Mapping[Path, str] | None = None) -> list[str]:
        """``argv`` as run in the root by ``user``, with a clean environment plus ``env``."""
        home = "/root" if user == "root" else "/var/lib/glimpse-edge"
        clean = {**MACHINE_ENV, "HOME": home, "QEMU_CPU": QEMU_CPU, **(env or {})}
        nspawn = ["systemd-nspawn", "--quiet", f"--directory={self.root}",
                  f"--machine={self.name}", "--register=no", "--console=pipe",
                  # a stub init as PID 1 reaps; the command is PID 2
                  "--as-pid2", f"--user={user}", f"--setenv=QEMU_CPU={QEMU_CPU}"]
        nspawn += [f"--bind={src}:{dst}" for src, dst in (binds or {}).items()]
        if not host_runs_systemd():
            nspawn.append("--keep-unit")  # no host systemd to ask for a scope
        return [*nspawn, "--", "env", "-i", *(f"{k}={v}" for k, v in clean.items()), *argv]

    async def run(self, argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT,
                  check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """Run a command in the root; with ``check``, a failure names its output."""
        what = " ".join(argv)
        with trio.move_on_after(timeout) as scope:
            proc = await trio.run_process(self.command(argv, **kwargs), capture_stdout=True,
                                          capture_stderr=True, check=False, env=MACHINE_ENV)
        if scope.cancelled_caught:
            raise AssertionError(f"{what} (in the {ARCH} root) did not finish within "
                                 f"{timeout} s")
        if check and proc.returncode != 0:
            raise AssertionError(f"{what} (in the {ARCH} root): exit {proc.returncode}\n"
                                 f"{text(proc.stdout)[-4000:]}\n{text(proc.stderr)[-4000:]}")
        return proc

    def remove(self) -> None:
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=False,
                       timeout=600)


def text(data: bytes) -> str:
    return data.decode(errors="replace")


class EmulatedAgent(AgentProcess):
    """``glimpse-edge run`` in the root: AgentProcess's event following, another command."""

    def __init__(self, argv: list[str], log_dir: Path) -> None:
        super().__init__(log_dir / "config.toml")  # names only where agent.log goes
        self.argv = argv

    async def start(self, nursery: trio.Nursery) -> None:
        # (No PR_SET_PDEATHSIG: trio starts processes from a worker thread, and the
        # signal follows that thread, which ends when idle for 10 s, not this process.)
        self.process = await trio.lowlevel.open_process(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=MACHINE_ENV)
        nursery.start_soon(self._read_stdout)
        nursery.start_soon(self._read_stderr)

    def emulated(self) -> psutil.Process:
        """The agent's own process as the host sees it (qemu running the arm64 Python)."""
        assert self.process is not None
        for child in psutil.Process(self.process.pid).children(recursive=True):
            with_args = child.cmdline()
            if GLIMPSE in with_args and "run" in with_args:
                return child
        raise AssertionError(f"no {GLIMPSE} run process under systemd-nspawn "
                             f"{self.process.pid}")


def peak_rss_mib(proc: psutil.Process) -> float:
    """VmHWM: the most resident memory the process ever had (qemu's JIT included)."""
    status = Path(f"/proc/{proc.pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert match, status
    return int(match[1]) / 1024


# -- what pip did ------------------------------------------------------------------------

_PIP_STEP = re.compile(r"^(\S+)\s+(?:Building wheel for|Running setup\.py install for) "
                       r"(\S+)(?: \([^)]*\))?: (started|finished)")


def built_from_source(pip_log: str, site_packages: Path) -> dict[str, str]:
    """``{package: how}`` for what had no wheel for this platform and was compiled here.

    From pip's log: a wheel built, or a legacy ``setup.py install`` (bookworm's pip
    23.0 without ``wheel``), with its duration. From the venv: a wheel tagged
    ``linux_aarch64`` (not manylinux) came from pip's cache of a build of an earlier run.
    """
    started: dict[str, datetime.datetime] = {}
    found: dict[str, str] = {}
    for line in pip_log.splitlines():
        m = _PIP_STEP.match(line)
        if not m or m[2] == "glimpse-edge":  # the checkout itself, pure Python
            continue
        when = datetime.datetime.strptime(m[1], "%Y-%m-%dT%H:%M:%S,%f")
        if m[3] == "started":
            started[m[2]] = when
        elif m[2] in started:
            found[m[2]] = f"{(when - started[m[2]]).total_seconds():.1f} s"
    for wheel in site_packages.glob("*.dist-info/WHEEL"):
        tags = re.findall(r"^Tag: (\S+)", wheel.read_text(), re.M)
        if any(t.endswith("-linux_aarch64") for t in tags):
            name = wheel.parent.name.split("-")[0].replace("_", "-")
            found.setdefault(name, "built earlier, from pip's wheel cache")
    return found


def steps(lines: list[str]) -> dict[str, str]:
    """``{step: "changed" | "unchanged" | "skipped"}`` from provision.sh's output."""
    found = (re.fullmatch(r"(\w+):\s+(\w+)\b.*", ln) for ln in lines)
    return {m[1]: m[2] for m in found if m and m[1] != "provision"}


# -- the report --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _figures_table() -> Iterator[None]:
    yield
    if not FIGURES:
        return
    suites = [s for s in SUITES if s in FIGURES]
    rows = list(dict.fromkeys(k for s in suites for k in FIGURES[s]))
    width = max(len(r) for r in rows)
    cols = [max(len(s), *(len(FIGURES[s].get(r, "-")) for r in rows)) for s in suites]
    lines = [f"{'':<{width}}  " + "  ".join(f"{s:<{c}}" for s, c in zip(suites, cols,
                                                                          strict=True))]
    for r in rows:
        lines.append(f"{r:<{width}}  " + "  ".join(
            f"{FIGURES[s].get(r, '-'):<{c}}" for s, c in zip(suites, cols, strict=True)))
    print(f"\n\nglimpse-edge on {ARCH} (qemu-user, -cpu {QEMU_CPU}):\n" + "\n".join(lines))


# -- the test ------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", list(SUITES))
async def test_provisioned_agent_streams_on_arm64(
    suite: str, devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    figures = FIGURES.setdefault(suite, {})

    was_cached = (CACHE / f"{ARCH}-{suite}-root" / ".glimpse-edge-test-root").exists()
    try:
        cached, took = await trio.to_thread.run_sync(
            lambda: ensure_root(BUILD_TIMEOUT, suite=suite, arch=ARCH))
    except CannotEmulate as exc:
        pytest.skip(str(exc))
    figures["root (debootstrap)"] = "cached" if was_cached else f"built in {took:.0f} s"

    root = EmulatedRoot(tmp_path, suite)
    try:
        await run_in_root(root, cached, suite, devserver, tmp_path, nursery, figures)
    finally:
        await trio.to_thread.run_sync(root.remove)
        print(f"\n{suite} ({ARCH}): " + "; ".join(f"{k}: {v}" for k, v in figures.items()))


async def run_in_root(root: EmulatedRoot, cached: Path, suite: str, devserver: DevServer,
                      tmp_path: Path, nursery: trio.Nursery, figures: dict[str, str]) -> None:
    t0 = trio.current_time()
    await trio.to_thread.run_sync(root.prepare, cached)
    figures["copy of the root"] = f"{trio.current_time() - t0:.0f} s"
    version = await root.run(["python3", "-c", "import platform, sys; print(platform.machine(),"
                              " '%d.%d.%d' % sys.version_info[:3])"])
    machine, python = text(version.stdout).split()
    assert machine == "aarch64", f"the root's python3 says it runs on {machine}"
    assert python.startswith(SUITES[suite] + "."), (suite, python)
    figures["python"] = python

    # the room (its owner's), the device's account, and a viewer's: a newcomer to the
    # room, announced to the agent, which offers at once
    _owner_id, owner_token = await register(devserver.api_url, "owner", "owner-password")
    device_id, device_token = await register(devserver.api_url, "device", "device-password")
    _viewer_id, viewer_token = await register(devserver.api_url, "viewer", "viewer-password")
    room_id = await create_room(devserver.api_url, owner_token, "Pi room")
    async with stun_server() as stun:  # for doctor's check, and the agent's ICE
        await provision(root, devserver, room_id, device_token, stun.stun_url, figures)
        await device_commands(root, room_id, figures)
        await stream(root, devserver, room_id, device_id, viewer_token, tmp_path, nursery,
                     figures)


async def provision(root: EmulatedRoot, devserver: DevServer, room_id: str, device_token: str,
                    stun_url: str, figures: dict[str, str]) -> None:
    """provision.sh in the root, as fleet tooling would run it: site settings first."""
    dropins = root.path(f"{CONF}/config.d")
    dropins.mkdir(parents=True)
    (dropins / "10-site.toml").write_text(
        SITE_DROPIN + f'\n[[ice.servers]]\nurls = ["{stun_url}"]\n')
    token = root.path("/root/device-token")
    token.write_text(device_token + "\n")
    token.chmod(0o600)

    t0 = trio.current_time()
    provisioned = await root.run(
        ["bash", PROVISION, "--ws-url", devserver.ws_url, "--room", room_id,
         "--token-file", "/root/device-token"],
        timeout=PROVISION_TIMEOUT, env={"PIP_LOG": PIP_LOG, **pip_network_env()},
        binds={PIP_CACHE: "/root/.cache/pip"})
    figures["provision.sh (venv, pip install)"] = f"{trio.current_time() - t0:.0f} s"
    output = text(provisioned.stdout)
    done = steps(output.splitlines())
    for step in ("user", "dirs", "venv", "package", "config", "fleet", "secrets", "units"):
        assert done.get(step) == "changed", (step, output)
    # the root has provision.sh's OS packages already (no apt in the test's time)
    assert done.get("packages") == "unchanged", output
    site = next(root.path("/opt/glimpse-edge/venv/lib").glob("python3.*/site-packages"))
    compiled = built_from_source(root.path(PIP_LOG).read_text(errors="replace"), site)
    figures["built from source (no aarch64 wheel)"] = ", ".join(
        f"{name} ({how})" for name, how in sorted(compiled.items())) or "nothing"


async def device_commands(root: EmulatedRoot, room_id: str, figures: dict[str, str]) -> None:
    """What a person runs on the device, as the service's user: all exit 0."""
    t0 = trio.current_time()
    checked = text((await root.run([GLIMPSE, "check-config"], user=USER)).stdout)
    assert f"room     {room_id}" in checked, checked
    assert f"video    testpattern {WIDTH}x{HEIGHT}@{FPS}" in checked, checked
    devices = text((await root.run([GLIMPSE, "devices"], user=USER)).stdout)
    assert "Sound (ALSA):" in devices, devices
    doctor = await root.run([GLIMPSE, "doctor", "--json", "--timeout", "30"], user=USER,
                            check=False)
    report = parse_doctor(doctor)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert doctor.returncode == 0 and report["exit_code"] == 0, (
        f"doctor exit {doctor.returncode}: " + json.dumps(report["checks"], indent=1))
    for name in ("config", "secrets", "server", "ice"):
        assert statuses.get(name) == "pass", statuses
    skipped = [name for name, status in statuses.items() if status == "skip"]
    figures["doctor"] = (f"{len(statuses) - len(skipped)} passed, skipped: "
                         f"{', '.join(skipped) or 'none'}")
    figures["check-config + devices + doctor"] = f"{trio.current_time() - t0:.0f} s"


def parse_doctor(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    try:
        report: dict[str, Any] = json.loads(text(proc.stdout))
    except ValueError:
        raise AssertionError(f"doctor --json printed no JSON (exit {proc.returncode}):\n"
                             f"{text(proc.stdout)[-3000:]}\n{text(proc.stderr)[-3000:]}"
                             ) from None
    return report


async def stream(root: EmulatedRoot, devserver: DevServer, room_id: str, device_id: str,
                 viewer_token: str, tmp_path: Path, nursery: trio.Nursery,
                 figures: dict[str, str]) -> None:
    """glimpse-edge run in the root; a peer on the host decodes its frames; SIGTERM."""
    agent = EmulatedAgent(root.command([GLIMPSE, "run"], user=USER), tmp_path)
    t0 = trio.current_time()
    await agent.start(nursery)
    try:
        await agent.wait_for("room.joined", room=room_id, timeout=JOIN_TIMEOUT)
        figures["run: start to joined"] = f"{trio.current_time() - t0:.1f} s"
        emulated = agent.emulated()
        peer = BrowserPeer("viewer")
        async with peer.joined(devserver.ws_url, viewer_token, room_id):
            t0 = trio.current_time()
            received = await peer.wait_frames(device_id, video=FRAMES, audio=1,
                                              timeout=FRAMES_TIMEOUT)
            figures["peer joined to frames decoded"] = f"{trio.current_time() - t0:.1f} s"
            assert received.sizes == {(WIDTH, HEIGHT)}, received.sizes
            assert received.first_frame_at is not None
            fps = received.fps_since(received.first_frame_at)
            figures["frames decoded by the peer"] = (
                f"{received.video_frames} at {fps:.1f} fps, {WIDTH}x{HEIGHT}; "
                f"{received.audio_frames} audio")
            figures["agent peak RSS (qemu's included)"] = f"{peak_rss_mib(emulated):.0f} MiB"
            mark = len(agent.events)
            emulated.send_signal(signal.SIGTERM)  # what systemd's stop does
            code = await agent.wait_exit(timeout=STOP_TIMEOUT)
        assert code == 0, f"exit {code} after SIGTERM; stderr: {text(agent.stderr)[-3000:]}"
        assert agent.find("room.left", since=mark), [e.get("event") for e in agent.events[-20:]]
    finally:
        await agent.stop()
