"""``glimpse-edge devices`` and ``doctor`` name the decoders of the kiosk display (issue 16).

The real command line in a subprocess on this machine (a PC: no device tree,
so software H.264), and the same functions for a Pi 4 (the hardware
``h264_v4l2m2m``, its bcm2835-codec node there or not) and a Pi 5 (none).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.agent import write_secret

from glimpse_edge.config import load_config
from glimpse_edge.devices import V4l2Device, decoder_line, display_decoders, inventory, render
from glimpse_edge.doctor import Doctor

PI4 = "Raspberry Pi 4 Model B Rev 1.4"
PI5 = "Raspberry Pi 5 Model B Rev 1.0"
CODEC_NODE = V4l2Device("/dev/video10", card="bcm2835-codec-decode", driver="bcm2835-codec",
                        kind="memory-to-memory")


def cli(*args: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "glimpse_edge", *args], capture_output=True,
                          text=True, timeout=120, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout


def config_file(directory: Path, display: bool) -> Path:
    """A valid configuration whose server is a closed port (the doctor fails fast there)."""
    directory.mkdir(parents=True, exist_ok=True)
    token = write_secret(directory / "token", "t")
    path = directory / "config.toml"
    path.write_text(
        f'[server]\nws_url = "ws://127.0.0.1:9/ws"\n\n[auth]\ntoken_file = "{token}"\n\n'
        '[room]\nid = "lobby"\n\n[video]\nsource = "testpattern"\n\n[audio]\nsource = "tone"\n\n'
        f'[observe]\nlisten = ""\n\n[ice]\nservers = []\n\n'
        f'[display]\nenabled = {str(display).lower()}\n')
    return path


@pytest.mark.skipif(Path("/proc/device-tree/model").exists(), reason="a board with a device tree")
def test_devices_names_the_display_decoders_here() -> None:
    code, out = cli("devices")
    assert code == 0
    section = out.split("Display decoders", 1)[1].splitlines()
    assert section[0] == " ([display], each participant's video; board: no device-tree model):"
    assert section[1:3] == [
        "  h264: h264 — software (no H.264 hardware decoder on this board)",
        "  vp8: libvpx — software (no VP8 hardware decoder)"], out
    code, out = cli("devices", "--json")
    found = json.loads(out)
    assert found["board"] is None
    assert [(d["codec"], d["decoder"], d["hardware"]) for d in found["display_decoders"]] == [
        ("h264", "h264", False), ("vp8", "libvpx", False)]


def test_a_pi_4_decodes_h264_in_hardware_where_its_codec_node_is() -> None:
    h264, vp8 = display_decoders(PI4, [CODEC_NODE])
    assert (h264["decoder"], h264["hardware"], h264["note"]) == ("h264_v4l2m2m", True, "")
    assert decoder_line(h264) == f"h264: h264_v4l2m2m — hardware ({PI4})"
    assert (vp8["decoder"], vp8["hardware"]) == ("libvpx", False)
    # no bcm2835-codec node: named, and the fallback said
    h264, _ = display_decoders(PI4, [])
    assert h264["decoder"] == "h264_v4l2m2m" and "no bcm2835-codec-decode device" in h264["note"]
    # a node the service may not open (not in group video)
    h264, _ = display_decoders(PI4, [V4l2Device("/dev/video10", card="bcm2835-codec-decode",
                                                error="Permission denied")])
    assert "cannot be opened (Permission denied)" in h264["note"]
    h264, _ = display_decoders(PI5, [])
    assert (h264["decoder"], h264["hardware"]) == ("h264", False)
    assert h264["reason"] == f"software ({PI5} has no H.264 decode block)"
    text = render(inventory(model=PI4))
    assert f"board: {PI4}):" in text and "  h264: h264_v4l2m2m — hardware" in text


def doctor_check(tmp_path: Path, display: bool, model: str | None = None,
                 nodes: list[V4l2Device] | None = None) -> tuple[str, str, list[str]]:
    from glimpse_edge.doctor.display import check_display

    doctor = Doctor(tmp_path / "config.toml")
    config = load_config(config_file(tmp_path, display))
    decoders = None if model is None else display_decoders(model, nodes or [])
    check_display(doctor, config, decoders=decoders)
    (check,) = doctor.checks
    assert check.name == "display"
    return check.status, check.summary, check.details


def test_doctor_display_check_on_a_pi_4_and_a_pi_5(tmp_path: Path) -> None:
    status, summary, details = doctor_check(tmp_path, True, PI4, [CODEC_NODE])
    assert status == "pass"
    assert summary == "decodes h264 with h264_v4l2m2m (hardware) and vp8 with libvpx"
    assert details[0] == f"h264: h264_v4l2m2m — hardware ({PI4})"
    status, summary, _ = doctor_check(tmp_path, True, PI4, [])
    assert status == "warn" and "no bcm2835-codec-decode device" in summary
    status, summary, _ = doctor_check(tmp_path, True, PI5)
    assert (status, summary) == ("pass", "decodes h264 with h264 and vp8 with libvpx")
    status, summary, details = doctor_check(tmp_path, False, PI4, [CODEC_NODE])
    assert status == "skip" and summary.startswith("[display] enabled = false: no video is "
                                                   "received (it would decode h264 with "
                                                   "h264_v4l2m2m (hardware)")
    assert len(details) == 2


def test_doctor_names_the_display_decoders_in_text_and_json(tmp_path: Path) -> None:
    config = config_file(tmp_path / "on", display=True)
    _code, out = cli("doctor", "--config", str(config), "--timeout", "1")
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[1:2] == ["display"])
    if Path("/proc/device-tree/model").exists():
        return  # a board: what it says is its own; the JSON shape below still holds
    assert lines[at].split(None, 2)[0] == "PASS", out
    assert lines[at].endswith("display     decodes h264 with h264 and vp8 with libvpx"), out
    assert lines[at + 1].strip() == ("h264: h264 — software (no H.264 hardware decoder on "
                                     "this board)")
    assert lines[at + 2].strip() == "vp8: libvpx — software (no VP8 hardware decoder)"
    _code, out = cli("doctor", "--config", str(config_file(tmp_path / "off", display=False)),
                     "--timeout", "1", "--json")
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    display = checks["display"]
    assert display["status"] == "skip"
    assert display["summary"].startswith("[display] enabled = false")
    assert display["details"] == [
        "h264: h264 — software (no H.264 hardware decoder on this board)",
        "vp8: libvpx — software (no VP8 hardware decoder)"]
