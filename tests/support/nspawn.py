"""A throwaway Debian bookworm machine booted with systemd-nspawn, for tests as root.

:func:`ensure_root` builds the root once (``scripts/build-test-root.sh``, cached
under /var/cache/glimpse-edge-test, locked against concurrent builds).
:class:`Container` boots a *copy* of it (the cache is never modified) with
systemd as PID 1, runs commands inside through ``nsenter`` into the
container's namespaces, follows its journal, and tears everything down again:
the container is powered off (killed if it does not stop in time) and the
copy removed, also when a test failed.

Networking: the container shares the host's network namespace (no
``--private-network``), so an agent inside reaches a dev server the test runs
on 127.0.0.1, and nothing (bridges, NAT, DHCP) has to be set up on the host.
The price is that whatever the container listens on is the host's loopback:
the tests switch the agent's observe endpoint off.

The machine is not registered with systemd-machined (``--register=no``: nobody
needs ``machinectl`` here, and there may be no machined), and where the host's
PID 1 is not systemd (containers, some CI runners, this project's sandbox) it
runs in the test's own cgroup (``--keep-unit``) instead of a scope that only a
host systemd could create.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent.parent
BUILD_ROOT = REPO / "scripts" / "build-test-root.sh"
CACHE = Path(os.environ.get("GLIMPSE_TEST_CACHE", "/var/cache/glimpse-edge-test"))
ROOT_CACHE = CACHE / "bookworm-root"
PIP_CACHE = CACHE / "pip"
# What the project's files are copied to inside the machine (provision.sh runs from there).
SOURCE_IN_MACHINE = "/root/glimpse-edge"
SOURCE_FILES = ("pyproject.toml", "README.md", "glimpse_edge", "config", "systemd", "scripts")

BUILD_TIMEOUT = 1200.0
BOOT_TIMEOUT = 90.0
POWEROFF_TIMEOUT = 30.0
# A clean environment for commands inside: nothing of the test's (PIP_*, proxies, venvs).
MACHINE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
}


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, however it dies.

    For systemd-nspawn SIGTERM means a clean poweroff of the machine, so a test
    run that is killed outright (no teardown) does not leave a machine running.
    """
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class CannotBoot(Exception):
    """systemd-nspawn could not boot the machine here (the message says why)."""


def missing_tools() -> list[str]:
    """Host commands this needs that are not installed, as Debian package names."""
    wanted = {"systemd-nspawn": "systemd-container", "debootstrap": "debootstrap",
              "nsenter": "util-linux"}
    return sorted({pkg for cmd, pkg in wanted.items() if shutil.which(cmd) is None})


def host_runs_systemd() -> bool:
    """sd_booted(3): the host's PID 1 is systemd (it can then give nspawn a scope)."""
    return os.path.isdir("/run/systemd/system")


# pip settings a root needs to reach the index the way the host does (a mirror, a
# proxy, a longer timeout). Local indexes, find-links and the host's cert path are
# the host's own files: they stay out (the host's extra CAs go into the root's store).
_PIP_NETWORK_KEYS = ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout",
                     "default-timeout", "retries")
_PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def pip_network_env() -> dict[str, str]:
    """``PIP_*`` (and proxy) variables for pip in a root, from the host's pip config and
    environment (``pip config list``: its files and its ``PIP_*`` variables)."""
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                             capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    env: dict[str, str] = {}
    for line in out.splitlines():  # global.index-url='https://...', :env:.timeout='60'
        m = re.fullmatch(r"\S*?\.([a-z-]+)='(.*)'", line.strip())
        if not m or m[1] not in _PIP_NETWORK_KEYS:
            continue
        value = m[2]
        if m[1].endswith("index-url"):
            value = " ".join(u for u in value.split() if u.startswith(("http://", "https://")))
        if value:
            env["PIP_" + m[1].upper().replace("-", "_")] = value
    env.update({k: os.environ[k] for k in _PROXY_VARS if os.environ.get(k)})
    return env


class CannotEmulate(Exception):
    """This host cannot run the root's architecture (no qemu-user through binfmt_misc)."""


def ensure_root(timeout: float = BUILD_TIMEOUT, *, suite: str | None = None,
                arch: str | None = None) -> tuple[Path, float]:
    """The cached root (built now if needed) and how long that took in seconds.

    By default this machine's bookworm root (what the boot test boots); ``suite``
    and ``arch`` (e.g. "trixie", "arm64") name another, cached beside it as
    ``[ARCH-]SUITE-root``. Raises :class:`CannotEmulate` when ``arch`` cannot run here.
    """
    argv = [str(BUILD_ROOT)]
    if suite is None and arch is None:
        argv.append(str(ROOT_CACHE))
    else:
        argv += ["--suite", suite or "bookworm"]
        if arch is not None:
            argv += ["--arch", arch]
        argv.append(str(CACHE / f"{arch + '-' if arch else ''}{suite or 'bookworm'}-root"))
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode == 3:
        raise CannotEmulate(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        raise RuntimeError(f"{BUILD_ROOT.name} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1]), time.monotonic() - t0


@dataclass
class Entry:
    """One journal entry; ``event`` is the agent's JSON log line, parsed, if it was one."""

    unit: str
    pid: int | None
    message: str
    event: dict[str, Any] | None

    @property
    def name(self) -> str | None:
        return None if self.event is None else self.event.get("event")

    def __str__(self) -> str:
        return f"[{self.unit} {self.pid}] {self.message}"


class Journal:
    """``journalctl -f -o json`` inside the machine, read by a thread; waits are bounded."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.entries: list[Entry] = []
        self._changed = threading.Condition()
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      stdin=subprocess.DEVNULL, env=MACHINE_ENV)
        self._thread = threading.Thread(target=self._read, name="journal", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            try:
                fields = json.loads(raw)
            except ValueError:
                continue
            message = fields.get("MESSAGE") or ""
            if isinstance(message, list):  # journald's encoding of non-UTF-8 messages
                message = bytes(message).decode("utf-8", "replace")
            event = None
            if message.startswith("{"):
                try:
                    event = json.loads(message)
                except ValueError:
                    event = None
            pid = fields.get("_PID")
            unit = fields.get("_SYSTEMD_UNIT") or fields.get("UNIT") or ""
            if fields.get("UNIT") and fields.get("_PID") == "1":
                unit = fields["UNIT"]  # systemd's own lines about a unit
            with self._changed:
                self.entries.append(Entry(unit, int(pid) if pid else None, message,
                                          event if isinstance(event, dict) else None))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def mark(self) -> int:
        with self._changed:
            return len(self.entries)

    def wait(self, what: str, pred: Callable[[Entry], bool], *, since: int = 0,
             timeout: float = 30.0) -> Entry:
        """The first entry after index ``since`` for which ``pred`` holds, within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for entry in self.entries[since:]:
                    if pred(entry):
                        return entry
                left = deadline - time.monotonic()
                if left <= 0 or self._proc.poll() is not None:
                    break
                self._changed.wait(left)
            tail = "\n".join(str(e) for e in self.entries[-40:])
        raise AssertionError(f"no journal entry {what} within {timeout} s "
                             f"(after entry {since}); last entries:\n{tail}")

    def event(self, name: str, *, since: int = 0, timeout: float = 30.0,
              where: Callable[[Entry], bool] = lambda _e: True, **fields: Any) -> Entry:
        """The agent's log event ``name`` (with ``fields``) after ``since``."""
        def pred(e: Entry) -> bool:
            return (e.event is not None and e.name == name
                    and all(e.event.get(k) == v for k, v in fields.items()) and where(e))
        return self.wait(f"with event {name!r} {fields or ''}", pred, since=since,
                         timeout=timeout)

    def systemd(self, text: str, *, unit: str, since: int = 0, timeout: float = 30.0) -> Entry:
        """systemd's own line about ``unit`` containing ``text``."""
        return self.wait(f"from systemd about {unit} containing {text!r}",
                         lambda e: e.pid == 1 and e.unit == unit and text in e.message,
                         since=since, timeout=timeout)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._thread.join(5)


def copy_root_and_project(cached_root: Path, root: Path, timeout: float) -> None:
    """A copy of ``cached_root`` at ``root`` (never the cache itself), with the project's
    files in it at SOURCE_IN_MACHINE, where provision.sh runs from."""
    subprocess.run(["cp", "-a", "--reflink=auto", str(cached_root), str(root)],
                   check=True, timeout=timeout)
    dest = root / SOURCE_IN_MACHINE.lstrip("/")
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore, symlinks=True)
        else:
            shutil.copy2(src, dest / name)


class Container:
    """One booted copy of the cached root; use as a context manager."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.name = name
        self.root = workdir / "root"
        self.log_path = workdir / "nspawn.log"
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None  # the machine's PID 1, as the host sees it
        self._journals: list[Journal] = []

    # -- setup ------------------------------------------------------------------

    def prepare(self, cached_root: Path) -> None:
        """Copy the cached root, the project's files and the host's extra CAs into place."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        copy_root_and_project(cached_root, self.root, timeout=300)
        # A TLS-intercepting proxy's CA (CI runners, sandboxes): pip inside must trust
        # what the host trusts. Debian keeps local additions here; none on a plain host.
        extra = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
        if extra:
            target = self.root / "usr/local/share/ca-certificates"
            for crt in extra:
                shutil.copy2(crt, target / crt.name)
            subprocess.run(["chroot", str(self.root), "update-ca-certificates"],
                           capture_output=True, check=True, timeout=120)
        PIP_CACHE.mkdir(parents=True, exist_ok=True)

    def boot(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Boot it and wait until systemd says the boot is finished; returns seconds taken.

        Raises :class:`CannotBoot` with systemd-nspawn's output when it exits
        before the machine's systemd answers (the host cannot run it).
        """
        t0 = time.monotonic()
        argv = ["systemd-nspawn", "--quiet", f"--directory={self.root}", "--boot",
                f"--machine={self.name}", "--register=no", "--console=read-only",
                # pip's downloads and built wheels survive the throwaway machine
                f"--bind={PIP_CACHE}:/root/.cache/pip"]
        if not host_runs_systemd():
            # Without it nspawn asks the host's systemd (over D-Bus) for a scope to run
            # in, and stops with "Failed to open system bus" where there is none.
            argv.append("--keep-unit")
        with self.log_path.open("wb") as log:
            self._nspawn = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=_die_with_parent)
        deadline = t0 + timeout
        state = ""
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise CannotBoot(f"systemd-nspawn exited with status {self._nspawn.returncode}"
                                 f" while booting: {self.nspawn_output()}")
            if self.leader is None:
                self.leader = self._find_leader()
            if self.leader is not None:
                # Blocks until the boot is finished; fails fast while PID 1 is not up yet.
                proc = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                                timeout=max(1.0, deadline - time.monotonic()))
                state = proc.stdout.strip()
                if state in ("running", "degraded"):
                    return time.monotonic() - t0
            time.sleep(0.2)
        raise AssertionError(f"the machine did not finish booting within {timeout} s (state "
                             f"{state!r}); systemd-nspawn said: {self.nspawn_output()}")

    def _find_leader(self) -> int | None:
        assert self._nspawn is not None
        try:
            for child in psutil.Process(self._nspawn.pid).children():
                if child.name() == "systemd":
                    return int(child.pid)
        except psutil.Error:
            return None
        return None

    def nspawn_output(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            text = ""
        return text[-3000:] or "(nothing)"

    # -- use ----------------------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run inside the machine (all its namespaces, its root)."""
        assert self.leader is not None, "not booted"
        return ["nsenter", f"--target={self.leader}", "--all", "--", *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside; with ``check``, a failure names its output."""
        proc = subprocess.run(self.command(argv), capture_output=True, text=True, input=input,
                              env=MACHINE_ENV, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: exit {proc.returncode}\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def sh(self, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-euc", script], **kwargs)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show`` properties of a unit."""
        out = self.run(["systemctl", "show", unit, "--property=" + ",".join(props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def path(self, inside: str) -> Path:
        """Where a path of the machine's disk is on the host (not for /run, /tmp: tmpfs)."""
        return self.root / inside.lstrip("/")

    def journal(self, *units: str) -> Journal:
        """Follow the journal of ``units`` from its beginning (closed with the machine)."""
        argv = ["journalctl", "--follow", "--output=json", "--lines=all", "--no-pager"]
        argv += [f"--unit={u}" for u in units]
        journal = Journal(self.command(argv))
        self._journals.append(journal)
        return journal

    # -- teardown -----------------------------------------------------------------

    def save_journal(self) -> None:
        """The whole journal as text beside the copy, for a person reading a failure."""
        if self.leader is None or self._nspawn is None or self._nspawn.poll() is not None:
            return
        try:
            proc = self.run(["journalctl", "--no-pager", "--output=short-precise"],
                            check=False, timeout=30)
            (self.workdir / "journal.txt").write_text(proc.stdout)
        except (subprocess.SubprocessError, OSError):
            pass

    def poweroff(self, timeout: float = POWEROFF_TIMEOUT) -> None:
        """Stop the machine: a clean poweroff, else kill its PID 1 (and with it everything)."""
        for journal in self._journals:
            journal.close()
        self._journals.clear()
        proc = self._nspawn
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # nspawn asks the machine's systemd to power off
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
        if self.leader is not None:
            # PID 1 of a PID namespace: killing it ends every process in it
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def remove(self) -> None:
        """Delete the copy (the logs beside it stay in the test's tmp directory)."""
        # rm(1): several times faster than shutil.rmtree on a root of this size, and
        # --one-file-system never follows a mount that should not be there anyway
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=False,
                       timeout=600)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            self.save_journal()
            self.poweroff()
        finally:
            self.remove()
