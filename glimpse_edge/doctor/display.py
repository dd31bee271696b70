"""Which decoders the kiosk display would decode the participants' video with.

The choice is display/decode.py's (the hardware ``h264_v4l2m2m`` on a Pi 4
whose FFmpeg has it, software elsewhere), named here as ``devices`` names it.
With ``[display]`` off nothing is received: the check is skipped, but still
says what would be used. Nothing is opened but the V4L2 nodes' capabilities
(``devices``), so it also runs while the agent holds the screen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import Config

if TYPE_CHECKING:
    from .run import Doctor

__all__ = ["check_display"]


def check_display(doctor: Doctor, config: Config, *, model: str | None = None,
                  decoders: list[dict[str, Any]] | None = None) -> None:
    """``model``/``decoders``: another board's answer (tests); default: this board's."""
    from ..devices import decoder_line, display_decoders, list_v4l2_devices
    from ..display.decode import board_model

    if decoders is None:
        decoders = display_decoders(board_model() if model is None else model,
                                    list_v4l2_devices())
    details = [decoder_line(d) for d in decoders]
    named = " and ".join(f"{d['codec']} with {d['decoder'] or 'nothing'}" + (
        " (hardware)" if d["hardware"] else "") for d in decoders)
    if not config.display.enabled:
        doctor.add("display", "skip", f"[display] enabled = false: no video is received "
                   f"(it would decode {named})", details=details)
        return
    missing = [d["codec"] for d in decoders if d["decoder"] is None]
    if missing:
        doctor.add("display", "fail", f"no decoder for {', '.join(missing)}: those "
                   "participants' video cannot be shown", "install a PyAV (FFmpeg) with "
                   "H.264 and VP8 decoders: pip install the version pyproject.toml names",
                   details)
        return
    noted = [d for d in decoders if d["note"]]
    if noted:
        doctor.add("display", "warn", f"decodes {named}, {noted[0]['note']}",
                   "see `glimpse-edge devices`; on a Pi 4, dtoverlay=vc4-kms-v3d and the "
                   "bcm2835-codec module give /dev/video10", details)
        return
    doctor.add("display", "pass", f"decodes {named}", details=details)
