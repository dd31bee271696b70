"""``glimpse-edge devices`` and ``glimpse-edge doctor``, as a person at the device runs them.

The real command line in a subprocess, on this machine (no camera, no sound
card, no systemd), against the dev server, a local STUN/TURN responder, the
picamera2 stand-in and ALSA's file plugin: each check is shown passing and
failing for real (a closed port, a rejected and an expired token, a readable
secret, a busy camera, silent capture, wrong TURN credentials).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import numpy as np
import pytest
import trio
from support.agent import write_secret
from support.alsa import MONO_DEVICE, SYSTEM_ALSA_CONF, alsa_config_text, sine, write_raw
from support.devserver import DevServer
from support.glimpse_client import register
from support.picam import FakeCamera
from support.stunserver import stun_server


async def glimpse_edge(*args: str, env: dict[str, str] | None = None,
                       timeout: float = 60) -> tuple[int, str]:
    """Run the CLI; (exit status, stdout). stderr must stay empty (no log noise)."""
    done = await trio.run_process(
        [sys.executable, "-m", "glimpse_edge", *args], capture_stdout=True,
        capture_stderr=True, check=False, env={**os.environ, **(env or {})})
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr, stderr
    return done.returncode, done.stdout.decode()


def lines_of(text: str, check: str) -> list[str]:
    """The lines of one check in the doctor's checklist (its line and what follows)."""
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith("  ") and line[2:6].strip() in ("PASS", "WARN", "FAIL", "SKIP"):
            if out:
                break
            if line.split()[1] == check:
                out.append(line.strip())
        elif out:
            out.append(line.strip())
    return out


def status_of(text: str, check: str) -> str:
    found = lines_of(text, check)
    assert found, f"no {check} check in:\n{text}"
    return found[0].split()[0]


def alsa_env(tmp_path: Path, samples: np.ndarray) -> dict[str, str]:
    """ALSA_CONFIG_PATH for a subprocess whose MONO_DEVICE captures ``samples``."""
    if not SYSTEM_ALSA_CONF.exists():
        pytest.skip("alsa-lib is not installed")
    raw = write_raw(tmp_path / "capture.raw", samples)
    conf = tmp_path / "asound.conf"
    conf.write_text(alsa_config_text(raw, raw))
    return {"ALSA_CONFIG_PATH": str(conf)}


def doctor_config(
    directory: Path, *, ws_url: str, api_url: str = "", token: str, ice: str = "",
    video: str = 'source = "testpattern"', audio: str = 'source = "tone"',
    token_mode: int = 0o600,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    secret = write_secret(directory / "token", token, token_mode)
    path = directory / "config.toml"
    path.write_text(
        f'[server]\nws_url = "{ws_url}"\napi_url = "{api_url}"\n\n'
        f'[auth]\ntoken_file = "{secret}"\n\n[room]\nid = "lobby"\n\n'
        f"[video]\n{video}\n\n[audio]\n{audio}\n\n"
        '[observe]\nlisten = ""\n\n' + (ice or "[ice]\nservers = []\n"))
    return path


# ------------------------------------------------------------------ devices


async def test_devices_lists_what_this_machine_has(fake_camera: FakeCamera) -> None:
    code, out = await glimpse_edge("devices", env={"PYTHONPATH": os.environ.get(
        "PYTHONPATH", "")})
    assert code == 0
    # no picamera2 here, no /dev/video*, no sound card: each says so
    assert "not available: video.source = \"picamera2\" needs the picamera2 library" in out
    assert "sudo apt install python3-picamera2" in out
    assert "Video devices (V4L2, /dev/video*):\n  none" in out
    assert "sound cards: none" in out
    assert "capture devices (audio.device): null" in out
    code, out = await glimpse_edge("devices", "--json", env=fake_camera.env())
    assert code == 0
    found = json.loads(out)
    assert found["cameras"][0]["Model"] == "imx708" and found["camera_platform"] == "VC4"
    assert found["camera_hardware_h264"] is True and found["v4l2"] == []
    code, out = await glimpse_edge("devices", env=fake_camera.env(platform="PISP"))
    assert "platform PISP: no H.264 hardware (a Pi 5): software H.264 on the CPU" in out
    assert "camera.index = 0: imx708" in out
    code, out = await glimpse_edge("devices", env=fake_camera.env(version="0.3.30"))
    assert "; picamera2 0.3.30 (lacks force_key_frame)" in out, out


def test_v4l2_nodes_are_queried_not_opened_for_streaming(tmp_path: Path) -> None:
    from glimpse_edge.devices import _kind, list_v4l2_devices

    for name in ("video10", "video2", "video-bogus"):
        (tmp_path / name).write_text("")
    found = list_v4l2_devices(tmp_path)
    assert [d.path for d in found] == [str(tmp_path / "video2"), str(tmp_path / "video10")]
    assert all(d.error.startswith("not a V4L2 device") for d in found)
    assert _kind(0x1) == "capture" and _kind(0x4000) == "memory-to-memory"
    assert _kind(0x1 | 0x2) == "memory-to-memory" and _kind(0x00800000) == "metadata"


# ------------------------------------------------------------------- doctor


async def test_doctor_passes_a_healthy_device(
    devserver: DevServer, tmp_path: Path, fake_camera: FakeCamera
) -> None:
    _uid, token = await register(devserver.api_url, "device", "device-password")
    tone = sine(440.0, 48000, 5.0)
    async with stun_server(password="turnpass") as stun:
        credential = write_secret(tmp_path / "turn-credential", "turnpass")
        ice = (f'[[ice.servers]]\nurls = ["{stun.stun_url}"]\n\n'
               f'[[ice.servers]]\nurls = ["{stun.turn_url}"]\nusername = "turnuser"\n'
               f'credential_file = "{credential}"\n')
        config = doctor_config(tmp_path, ws_url=devserver.ws_url, api_url=devserver.api_url,
                               token=token, ice=ice, video='source = "picamera2"\nwidth = 640\n'
                               'height = 360', audio=f'source = "alsa"\ndevice = "{MONO_DEVICE}"')
        t0 = time.monotonic()
        code, out = await glimpse_edge("doctor", "--config", str(config),
                                       env={**fake_camera.env(), **alsa_env(tmp_path, tone)})
        took = time.monotonic() - t0
    print(out, f"\n({took:.1f} s)")
    assert code == 0, out
    for check in ("config", "secrets", "clock", "server", "token", "camera", "microphone", "ice"):
        assert status_of(out, check) == "PASS", (check, out)
    assert status_of(out, "service") == "SKIP"  # no systemd in this container
    assert "token accepted: authenticated as 'device'" in out
    assert "within 30 s of the server" in out
    assert "picamera2:0 (VC4, hardware H.264) delivered 10 packets of H.264" in out
    assert "; picamera2 0.3.36, encoder delay " in out, "doctor reports the picamera2 release"
    assert "alsa:glimpsetest delivers audio (level -12 dBFS" in out
    assert "2 of 2 STUN/TURN server URLs answered" in out
    assert "accepted the credentials of 'turnuser'" in out
    assert stun.requests == ["BINDING", "ALLOCATE", "ALLOCATE", "REFRESH"]
    assert "all checks passed (exit status 0)" in out
    assert fake_camera.count("camera.close") == 1, "the doctor closes the camera again"


async def test_doctor_names_each_failure_and_its_fix(
    devserver: DevServer, tmp_path: Path, fake_camera: FakeCamera
) -> None:
    from picamera2 import Picamera2

    expired = jwt.encode({"id": "0" * 24, "username": "device", "exp": int(time.time()) - 7200},
                         "not-the-servers-secret-but-long-enough", algorithm="HS256")
    silence = np.zeros(48000 * 5, dtype=np.int16)
    holder = Picamera2(0)  # another program has the camera; the agent is not running
    try:
        async with stun_server(password="right") as stun:
            credential = write_secret(tmp_path / "turn-credential", "wrong")
            ice = (f'[[ice.servers]]\nurls = ["stun:127.0.0.1:9"]\n\n'
                   f'[[ice.servers]]\nurls = ["{stun.turn_url}"]\nusername = "turnuser"\n'
                   f'credential_file = "{credential}"\n')
            config = doctor_config(
                tmp_path, ws_url=devserver.ws_url, token=expired, ice=ice,
                video='source = "picamera2"\nwidth = 640\nheight = 360',
                audio=f'source = "alsa"\ndevice = "{MONO_DEVICE}"')
            code, out = await glimpse_edge(
                "doctor", "--config", str(config), "--timeout", "2",
                env={**fake_camera.env(), **alsa_env(tmp_path, silence)})
    finally:
        holder.close()
    print(out)
    assert code == 2
    server = lines_of(out, "server")
    assert server[0].startswith("FAIL  server      the server rejected the token: Invalid token")
    assert "fix: put a valid token into auth.token_file" in server[-1]
    token = lines_of(out, "token")
    assert token[0].startswith("FAIL  token       the token in ") and "expired 2 hours ago" in (
        token[0])
    camera = lines_of(out, "camera")
    assert "FAIL" in camera[0] and "camera 0 is busy: another process holds it" in camera[0]
    assert "fix: stop the other program" in camera[-1]
    microphone = lines_of(out, "microphone")
    assert microphone[0] == ("WARN  microphone  alsa:glimpsetest opened, but its audio is "
                             "silent (all zero)")
    assert "alsamixer" in microphone[-1]
    ice_lines = "\n".join(lines_of(out, "ice"))
    assert "FAIL  ice" in ice_lines and "0 of 2 STUN/TURN server URLs answered" in ice_lines
    assert "stun:127.0.0.1:9: FAILED: 127.0.0.1:9 refused (ICMP port unreachable" in ice_lines
    assert "rejected the credentials of 'turnuser' (401 Unauthorized)" in ice_lines
    assert "2 failures" not in out and "failures, 1 warning (exit status 2)" in out


async def test_doctor_without_server_config_or_camera(tmp_path: Path) -> None:
    # no file at all: one failure, everything else skipped with the reason
    code, out = await glimpse_edge("doctor", "--config", str(tmp_path / "missing.toml"))
    assert code == 2
    assert lines_of(out, "config")[0] == f"FAIL  config      {tmp_path / 'missing.toml'} " \
        "does not exist"
    assert status_of(out, "server") == "SKIP" and "must be valid first" in out
    # a closed port, a readable token, no picamera2, no STUN servers
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once it is closed
    config = doctor_config(tmp_path / "closed", ws_url=f"ws://127.0.0.1:{port}/ws", token="t",
                           token_mode=0o644, video='source = "picamera2"')
    code, out = await glimpse_edge("doctor", "--config", str(config), "--json")
    assert code == 2
    report = json.loads(out)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["exit_code"] == 2
    assert checks["secrets"]["status"] == "fail"
    assert "mode 0644" in checks["secrets"]["details"][0]
    assert "chmod 600" in checks["secrets"]["details"][0]
    assert checks["server"]["status"] == "fail"
    assert checks["server"]["summary"] == f"http://127.0.0.1:{port}/ws: connection refused"
    assert checks["token"]["status"] == "skip"
    assert checks["camera"]["status"] == "fail"
    assert "sudo apt install python3-picamera2" in checks["camera"]["summary"]
    assert checks["microphone"]["status"] == "skip"
    assert checks["ice"]["status"] == "warn"
    assert checks["ice"]["summary"].startswith("no STUN/TURN servers")


async def test_doctor_warnings_only_exit_1(devserver: DevServer, tmp_path: Path) -> None:
    _uid, token = await register(devserver.api_url, "device", "device-password")
    config = doctor_config(tmp_path, ws_url=devserver.ws_url, api_url=devserver.api_url,
                           token=token)
    code, out = await glimpse_edge("doctor", "--config", str(config))
    assert code == 1, out
    assert [status_of(out, c) for c in ("server", "token", "camera", "microphone", "ice")] == [
        "PASS", "PASS", "SKIP", "SKIP", "WARN"]
    assert out.rstrip().endswith("1 warning (exit status 1)")


def test_doctor_and_devices_are_in_the_help() -> None:
    done = subprocess.run([sys.executable, "-m", "glimpse_edge", "--help"], capture_output=True,
                          text=True, check=True)
    assert "devices" in done.stdout and "doctor" in done.stdout
