"""What media hardware this machine has, for ``glimpse-edge devices`` (and the doctor).

Three places a meeting-room device gets its picture and sound from:

* cameras as libcamera sees them, through picamera2 (``video.source =
  "picamera2"``, ``camera.index``), and whether this Pi encodes H.264 in
  hardware;
* V4L2 video devices (``/dev/video*``): USB webcams for ``video.source =
  "v4l2"``, and on a Pi the codec and ISP nodes, shown for what they are;
* ALSA sound cards and capture PCMs (``audio.device``);

and the decoders the kiosk display (``[display]``) would decode each
participant's H.264 and VP8 with (display/decode.py's choice: the hardware
``h264_v4l2m2m`` on a Pi 4 whose FFmpeg has it, software elsewhere).

Nothing here opens a camera or a microphone: listing must work while the
agent is running and holds them. Every part fails on its own (a missing
picamera2, no pyalsaaudio) with a line that says what to install.
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = ["Inventory", "V4l2Device", "display_decoders", "inventory", "list_v4l2_devices",
           "render"]

# VIDIOC_QUERYCAP = _IOR('V', 0, struct v4l2_capability), 104 bytes
VIDIOC_QUERYCAP: Final = 0x80685600
_CAPS: Final = struct.Struct("16s32s32sIII12x")
_CAP_VIDEO_CAPTURE: Final = 0x00000001
_CAP_VIDEO_OUTPUT: Final = 0x00000002
_CAP_VIDEO_CAPTURE_MPLANE: Final = 0x00001000
_CAP_VIDEO_OUTPUT_MPLANE: Final = 0x00002000
_CAP_VIDEO_M2M_MPLANE: Final = 0x00004000
_CAP_VIDEO_M2M: Final = 0x00008000
_CAP_META_CAPTURE: Final = 0x00800000
_CAP_DEVICE_CAPS: Final = 0x80000000
# Card names of a Pi's own video nodes: not cameras to point video.device at.
_PI_NODES: Final = {
    "unicam": "CSI-2 receiver (libcamera uses it: use video.source = \"picamera2\")",
    "rp1-cfe": "CSI-2 receiver (libcamera uses it: use video.source = \"picamera2\")",
    "bcm2835-isp": "ISP (libcamera uses it)",
    "pispbe": "Pi 5 ISP back end (libcamera uses it)",
    "bcm2835-codec-encode": "H.264 hardware encoder (picamera2 uses it)",
    "bcm2835-codec-decode": "H.264 hardware decoder",
    "bcm2835-codec-isp": "image converter",
    "bcm2835-codec-image_fx": "image effects",
    "bcm2835-codec-encode_image": "JPEG hardware encoder",
}


@dataclass
class V4l2Device:
    path: str
    card: str = ""
    driver: str = ""
    bus: str = ""
    kind: str = "unknown"  # capture | memory-to-memory | output | metadata | unknown
    note: str = ""
    error: str = ""


def _kind(caps: int) -> str:
    if caps & (_CAP_VIDEO_M2M | _CAP_VIDEO_M2M_MPLANE) or (
            caps & (_CAP_VIDEO_CAPTURE | _CAP_VIDEO_CAPTURE_MPLANE)
            and caps & (_CAP_VIDEO_OUTPUT | _CAP_VIDEO_OUTPUT_MPLANE)):
        return "memory-to-memory"
    if caps & (_CAP_VIDEO_CAPTURE | _CAP_VIDEO_CAPTURE_MPLANE):
        return "capture"
    if caps & (_CAP_VIDEO_OUTPUT | _CAP_VIDEO_OUTPUT_MPLANE):
        return "output"
    if caps & _CAP_META_CAPTURE:
        return "metadata"
    return "unknown"


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def query_v4l2(path: str) -> V4l2Device:
    """VIDIOC_QUERYCAP on one node: what it is (no streaming, nothing locked)."""
    device = V4l2Device(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        device.error = exc.strerror or str(exc)
        return device
    try:
        buf = bytearray(_CAPS.size)
        fcntl.ioctl(fd, VIDIOC_QUERYCAP, buf)
    except OSError as exc:
        device.error = f"not a V4L2 device ({exc.strerror or exc})"
        return device
    finally:
        os.close(fd)
    driver, card, bus, _version, caps, device_caps = _CAPS.unpack(bytes(buf))
    device.driver, device.card, device.bus = _text(driver), _text(card), _text(bus)
    device.kind = _kind(device_caps if caps & _CAP_DEVICE_CAPS else caps)
    device.note = _PI_NODES.get(device.card, "")
    if not device.note and device.kind == "capture":
        device.note = f'use it with video.source = "v4l2", video.device = "{path}"'
    return device


def list_v4l2_devices(dev: Path = Path("/dev")) -> list[V4l2Device]:
    """Every /dev/video* node, in numeric order."""
    nodes = sorted((p for p in dev.glob("video*") if p.name[5:].isdigit()),
                   key=lambda p: int(p.name[5:]))
    return [query_v4l2(str(p)) for p in nodes]


@dataclass
class Inventory:
    cameras: list[dict[str, Any]] = field(default_factory=list)
    camera_platform: str | None = None
    camera_hardware_h264: bool | None = None
    picamera2: str | None = None  # its version, and what it lacks
    camera_error: str | None = None
    v4l2: list[V4l2Device] = field(default_factory=list)
    sound_cards: list[tuple[int, str]] = field(default_factory=list)
    capture_pcms: list[str] = field(default_factory=list)
    alsa_error: str | None = None
    board: str | None = None  # /proc/device-tree/model, where there is one
    # {"codec", "decoder" (None: none), "hardware", "reason", "note"} for h264 and vp8
    display_decoders: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cameras(inv: Inventory) -> None:
    from .media.picamera import import_picamera2
    from .media.source import SourceError

    try:
        mods = import_picamera2()
        inv.cameras = [dict(c) for c in mods.Picamera2.global_camera_info()]
    except SourceError as exc:
        inv.camera_error = str(exc)
        return
    except Exception as exc:
        inv.camera_error = f"libcamera cannot list cameras: {type(exc).__name__}: {exc}"
        return
    inv.camera_platform = mods.platform
    inv.camera_hardware_h264 = mods.hardware_h264
    inv.picamera2 = mods.features.describe()


def _sound(inv: Inventory) -> None:
    from .media.alsa import list_capture_devices
    from .media.source import SourceError

    try:
        import alsaaudio
    except ImportError:
        alsaaudio = None
    if alsaaudio is not None:
        try:
            inv.sound_cards = [(int(i), str(alsaaudio.card_name(i)[1]))
                               for i in alsaaudio.card_indexes()]
        except Exception as exc:
            inv.alsa_error = f"cannot list sound cards: {exc}"
    else:  # the kernel's list needs no library
        try:
            lines = Path("/proc/asound/cards").read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            head = line.split("]:", 1)
            if len(head) == 2 and head[0].strip().split(" ")[0].isdigit():
                inv.sound_cards.append((int(head[0].split()[0]), head[1].strip()))
    try:
        inv.capture_pcms = list_capture_devices()
    except SourceError as exc:
        inv.alsa_error = str(exc)
    except Exception as exc:
        inv.alsa_error = f"cannot list capture devices: {exc}"


# The node h264_v4l2m2m opens on a Pi 4 (bcm2835-codec, /dev/video10).
_HW_DECODE_NODE: Final = "bcm2835-codec-decode"


def display_decoders(model: str | None, v4l2: list[V4l2Device]) -> list[dict[str, Any]]:
    """The decoder the display would use per codec on board ``model``, and why.

    A hardware choice whose device node is missing or cannot be opened gets a
    ``note``: FFmpeg's wrapper would not open, and the display's decoder falls
    back to software (``display.decoder.hardware_failed``).
    """
    from .display.decode import choose_decoder

    found = []
    for codec in ("h264", "vp8"):
        try:
            c = choose_decoder(codec, model)
        except (RuntimeError, ValueError) as exc:
            found.append({"codec": codec, "decoder": None, "hardware": False,
                          "reason": str(exc), "note": ""})
            continue
        note = ""
        if c.hardware:
            nodes = [d for d in v4l2 if d.card == _HW_DECODE_NODE]
            if not nodes:
                note = (f"but no {_HW_DECODE_NODE} device (/dev/video10) is there: is the "
                        "bcm2835-codec driver loaded? The display would fall back to software")
            elif all(d.error for d in nodes):
                note = (f"but {nodes[0].path} cannot be opened ({nodes[0].error}): the "
                        "display would fall back to software; is the user in group video?")
        found.append({"codec": codec, "decoder": c.decoder, "hardware": c.hardware,
                      "reason": c.reason, "note": note})
    return found


def decoder_line(d: dict[str, Any]) -> str:
    """``h264: h264_v4l2m2m — hardware (Raspberry Pi 4 ...)``, as describe_decoders says it."""
    line = f"{d['codec']}: {d['decoder'] or 'none'} — {d['reason']}"
    return line + (f"; {d['note']}" if d["note"] else "")


def inventory(model: str | None = None) -> Inventory:
    """Everything :func:`render` shows; each part fails on its own.

    ``model``: the board's model (default: this board's, from the device tree).
    """
    from .display.decode import board_model

    inv = Inventory()
    _cameras(inv)
    inv.v4l2 = list_v4l2_devices()
    _sound(inv)
    inv.board = board_model() if model is None else model
    inv.display_decoders = display_decoders(inv.board, inv.v4l2)
    return inv


def render(inv: Inventory) -> str:
    """The inventory as text for a person at the device."""
    out = ["Cameras (libcamera, through picamera2):"]
    if inv.camera_error:
        out.append(f"  not available: {inv.camera_error}")
    else:
        encoder = ("hardware H.264 encoder" if inv.camera_hardware_h264
                   else "no H.264 hardware (a Pi 5): software H.264 on the CPU")
        out.append(f"  platform {inv.camera_platform}: {encoder}; picamera2 {inv.picamera2}")
        if not inv.cameras:
            out.append("  no camera found: is one connected (ribbon cable seated, the right "
                       "way round)? `rpicam-hello --list-cameras` shows what libcamera sees")
        for i, cam in enumerate(inv.cameras):
            out.append(f"  camera.index = {i}: {cam.get('Model', '?')}  ({cam.get('Id', '')})")
    out.append("")
    out.append("Video devices (V4L2, /dev/video*):")
    if not inv.v4l2:
        out.append("  none")
    for dev in inv.v4l2:
        if dev.error:
            out.append(f"  {dev.path}: {dev.error}")
            continue
        line = f"  {dev.path}: {dev.card} [{dev.driver}, {dev.kind}]"
        out.append(line + (f" - {dev.note}" if dev.note else ""))
    out.append("")
    out.append("Sound (ALSA):")
    cards = ", ".join(f"{i}: {name}" for i, name in inv.sound_cards) or "none"
    out.append(f"  sound cards: {cards}")
    if inv.alsa_error:
        out.append(f"  capture devices: not available: {inv.alsa_error}")
    else:
        out.append("  capture devices (audio.device): "
                   + (", ".join(inv.capture_pcms) or "none"))
        if inv.capture_pcms and not inv.sound_cards:
            out.append("  (without a sound card these are software devices only: no "
                       "microphone)")
    out.append("")
    out.append(f"Display decoders ([display], each participant's video; board: "
               f"{inv.board or 'no device-tree model'}):")
    out.extend(f"  {decoder_line(d)}" for d in inv.display_decoders)
    return "\n".join(out)
