"""Provisioning and the systemd units, checked without a running systemd.

``scripts/provision.sh --root DIR`` runs for real into a throwaway root (users
and groups in DIR/etc, a real virtualenv with the package installed, units
enabled with ``systemctl --root``): the first run changes every step, the
second changes nothing (byte for byte, owners, modes and times), ``--dry-run``
changes nothing, ``--uninstall`` keeps the configuration and ``--purge`` does
not. The units are checked with ``systemd-analyze verify`` and ``security``
in offline mode, which read unit files and need no systemd as PID 1.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROVISION = REPO / "scripts" / "provision.sh"
UNITS = ("glimpse-edge.service", "glimpse-edge-reload.path", "glimpse-edge-reload.service")
MAX_EXPOSURE = 2.5

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="provisioning creates users: root only")
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


def make_root(path: Path) -> Path:
    """A minimal Debian-like root: account databases, systemd's own units, /bin/sh and kill."""
    etc = path / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\naudio:x:29:\nvideo:x:44:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\naudio:*::\nvideo:*::\n")
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o640)
    system = Path("/usr/lib/systemd/system")
    if system.is_dir():  # targets the units refer to, for systemd-analyze verify
        shutil.copytree(system, path / "usr/lib/systemd/system", symlinks=True)
    (path / "bin").mkdir()
    for tool in ("sh", "kill"):
        found = shutil.which(tool)
        if found:
            shutil.copy2(found, path / "bin" / tool)
    return path


def provision(root: Path, *args: str) -> list[str]:
    """Run the script; its stdout lines (one per step), failing with its stderr."""
    proc = subprocess.run(
        ["bash", str(PROVISION), "--root", str(root), *args],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout.splitlines()


def steps(lines: list[str]) -> dict[str, str]:
    """``{step: "changed" | "unchanged" | "would change" | "skipped"}`` from the output."""
    found = (re.fullmatch(r"(\w+):\s+(would change|\w+)\b.*", ln) for ln in lines)
    return {m[1]: m[2] for m in found if m and m[1] != "provision"}


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int, int, str]]:
    """Everything about every path under root that a change would show in."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath, name)
            st = p.lstat()
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                              st.st_mtime_ns, link)
    return out


def account_id(root: Path, db: str, name: str) -> int | None:
    for line in (root / "etc" / db).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    return None


def test_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    proc = subprocess.run(["shellcheck", str(PROVISION)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_help_and_bad_arguments() -> None:
    out = subprocess.run(["bash", str(PROVISION), "--help"], capture_output=True, text=True,
                         check=True).stdout
    for option in ("--ws-url", "--token-file", "--uninstall", "--purge", "--dry-run", "--root"):
        assert option in out
    bad = subprocess.run(["bash", str(PROVISION), "--token-file", "/etc/hostname",
                          "--username", "u", "--password-file", "/etc/hostname", "--dry-run"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "not both" in bad.stderr


@needs_root
@pytest.mark.slow
def test_provision_is_idempotent_and_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    token = tmp_path / "token-in"
    token.write_text("header.payload.signature\n")
    fleet = ["--ws-url", "wss://glimpse.example.com/ws", "--room", "lobby",
             "--display-name", 'Lobby "east"', "--token-file", str(token)]

    first = steps(provision(root, *fleet))
    for step in ("user", "dirs", "venv", "package", "config", "fleet", "secrets", "units"):
        assert first[step] == "changed", (step, first)
    assert first["packages"] == "skipped" and first["service"] == "skipped"

    uid = account_id(root, "passwd", "glimpse-edge")
    gid = account_id(root, "group", "glimpse-edge")
    assert uid is not None and gid is not None
    group = (root / "etc/group").read_text()
    for supplementary in ("video", "audio", "render"):
        assert re.search(rf"^{supplementary}:x:\d+:.*glimpse-edge", group, re.M), group
    conf = root / "etc/glimpse-edge"
    secret = (conf / "token").stat()
    assert (stat.S_IMODE(secret.st_mode), secret.st_uid) == (0o600, uid)
    config = (conf / "config.toml").stat()
    assert (stat.S_IMODE(config.st_mode), config.st_uid, config.st_gid) == (0o640, 0, gid)
    assert (conf / "config.toml").read_bytes() == (REPO / "config/glimpse-edge.toml").read_bytes()
    dropin = (conf / "config.d/00-provision.toml").read_text()
    assert 'id = "lobby"' in dropin and 'display_name = "Lobby \\"east\\""' in dropin
    assert 'token_file = "/etc/glimpse-edge/token"' in dropin  # the path the service sees
    for unit in ("glimpse-edge.service", "glimpse-edge-reload.path"):
        assert (root / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink()
    version = subprocess.run([str(root / "opt/glimpse-edge/venv/bin/glimpse-edge"), "--version"],
                             capture_output=True, text=True, check=True).stdout
    assert version.startswith("glimpse-edge ")

    # the operator edits config.toml: a re-run must keep it
    edited = (conf / "config.toml").read_text().replace('level = "info"', 'level = "debug"')
    (conf / "config.toml").write_text(edited)
    before = snapshot(root)
    second = provision(root, *fleet)
    assert all(v in ("unchanged", "skipped") for v in steps(second).values()), second
    assert second[-1] == "provision: nothing to do"
    assert snapshot(root) == before
    assert (conf / "config.toml").read_text() == edited

    # a dry run with new settings says what it would do, and does none of it
    password = tmp_path / "password-in"
    password.write_text("s3cret\n")
    dry = provision(root, "--dry-run", "--room", "hall", "--username", "cam",
                    "--password-file", str(password))
    assert steps(dry)["fleet"] == "would change" and steps(dry)["secrets"] == "would change"
    assert snapshot(root) == before

    # switching to a login for real: the drop-in unsets the token, the password is private
    provision(root, "--room", "hall", "--username", "cam", "--password-file", str(password))
    dropin = (conf / "config.d/00-provision.toml").read_text()
    assert 'token_file = ""' in dropin and 'username = "cam"' in dropin
    secret = (conf / "password").stat()
    assert (stat.S_IMODE(secret.st_mode), secret.st_uid) == (0o600, uid)

    if shutil.which("systemd-analyze"):
        analyze_verify(root)

    # uninstall keeps the configuration; a second uninstall has nothing to do
    removed = steps(provision(root, "--uninstall"))
    assert removed["units"] == "changed" and removed["venv"] == "changed"
    assert not list((root / "etc/systemd/system").glob("glimpse-edge*"))
    assert not list((root / "etc/systemd/system").rglob("glimpse-edge*"))
    assert not (root / "opt/glimpse-edge").exists()
    assert (conf / "config.toml").read_text() == edited
    assert provision(root, "--uninstall")[-1] == "provision: nothing to do"
    provision(root, "--uninstall", "--purge")
    assert not conf.exists() and not (root / "var/lib/glimpse-edge").exists()
    assert account_id(root, "passwd", "glimpse-edge") is None
    assert account_id(root, "group", "glimpse-edge") is None


def analyze_verify(root: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "--man=no", *UNITS],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def exposure(root: Path, unit: str) -> float:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
                           "--no-pager", unit], capture_output=True, text=True, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    return float(m[1])


@needs_analyze
def test_units_verify_clean_and_service_exposure_is_low(tmp_path: Path) -> None:
    """The units as shipped, installed into a root where ExecStart exists."""
    root = make_root(tmp_path / "root")
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(REPO / "systemd" / unit, units / unit)
    exe = root / "opt/glimpse-edge/venv/bin/glimpse-edge"
    exe.parent.mkdir(parents=True)
    exe.write_text(f"#!{sys.executable}\n")
    exe.chmod(0o755)
    analyze_verify(root)
    score = exposure(root, "glimpse-edge.service")
    print(f"systemd-analyze security glimpse-edge.service: {score}")
    assert score <= MAX_EXPOSURE


def test_units_match_the_code() -> None:
    """What the unit promises depends on the agent: keep the two in step."""
    from glimpse_edge.cli import DEFAULT_CONFIG, EXIT_CONFIG

    service = (REPO / "systemd/glimpse-edge.service").read_text()
    assert f"RestartPreventExitStatus={EXIT_CONFIG}" in service
    assert f"--config {DEFAULT_CONFIG}" in service
    assert "Type=notify" in service and "ExecReload=/bin/kill -HUP $MAINPID" in service
    path_unit = (REPO / "systemd/glimpse-edge-reload.path").read_text()
    conf_dir = str(Path(DEFAULT_CONFIG).parent)
    assert f"PathChanged={conf_dir}\n" in path_unit
    assert f"PathChanged={conf_dir}/config.d\n" in path_unit


def unit_values(text: str, key: str) -> list[str]:
    """Every value of ``key`` in a unit file, in order (comments skipped)."""
    return [line.split("=", 1)[1].strip() for line in text.splitlines()
            if line.startswith(f"{key}=")]


def test_unit_grants_what_the_kiosk_display_needs() -> None:
    """The display (issue 16) needs no unit of its own: the one unit always grants it.

    KMS/DRM is ``/dev/dri/card*`` and the GPU ``/dev/dri/renderD*`` (both the
    ``drm`` character class, groups video and render); a Pi 4's H.264 decoder
    is bcm2835-codec at ``/dev/video10..12`` (``video4linux``, group video).
    Nothing opens the framebuffer or a tty, so neither is allowed.
    """
    service = (REPO / "systemd/glimpse-edge.service").read_text()
    assert unit_values(service, "DevicePolicy") == ["closed"]
    allowed = unit_values(service, "DeviceAllow")
    for device in ("char-drm rw", "char-video4linux rw"):
        assert device in allowed, allowed
    assert not [d for d in allowed if "fb" in d or "tty" in d], allowed
    groups = " ".join(unit_values(service, "SupplementaryGroups")).split()
    assert {"video", "render"} <= set(groups), groups
    script = PROVISION.read_text()
    wanted = re.search(r"^GROUPS_WANTED=\((.*)\)$", script, re.M)
    assert wanted and {"video", "render"} <= set(wanted[1].split()), wanted
