"""Camera settings as libcamera controls: what the configuration asks for, and what is refused.

Pure functions of the configuration and of what the camera advertises
(``Picamera2.camera_controls``), so that ``doctor`` and the tests can use
them without a camera.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ...config import CameraConfig
from ..source import SourceError

__all__ = ["WantedControl", "check_controls", "hdr_plan", "is_camera_module_3", "wanted_controls"]

# libcamera enum values (control_ids_core.yaml); picamera2 accepts plain ints.
_AF_MODES: Final = {"manual": 0, "auto": 1, "continuous": 2}
_AF_RANGES: Final = {"normal": 0, "macro": 1, "full": 2}
_EXPOSURE_MODES: Final = {"normal": 0, "short": 1, "long": 2}
_AWB_MODES: Final = {"auto": 0, "incandescent": 1, "tungsten": 2, "fluorescent": 3,
                     "indoor": 4, "daylight": 5, "cloudy": 6}
_FLICKER_PERIOD_US: Final = {"50hz": 10_000, "60hz": 8_333}  # lights flicker at 2x mains
_AE_FLICKER_MANUAL: Final = 1
_HDR_SINGLE_EXPOSURE: Final = 3  # what picamera2's Pi 5 HDR example uses


def is_camera_module_3(model: str) -> bool:
    """libcamera names the Camera Module 3 variants imx708, imx708_wide, _noir, _wide_noir."""
    return model == "imx708" or model.startswith("imx708_")


def hdr_plan(platform: str, model: str) -> str | None:
    """How this camera does HDR: "sensor" (Camera Module 3 on a Pi 4 and older),
    "isp" (a Pi 5's ``HdrMode``), or None (it cannot).

    Decided from the platform, not from the control list: VC4's libcamera
    advertises ``HdrMode`` too, and ignores it.
    """
    if platform == "PISP":
        return "isp"
    return "sensor" if is_camera_module_3(model) else None


@dataclass(frozen=True)
class WantedControl:
    """One libcamera control the configuration asks for, and which key asked."""

    key: str  # "camera.af_mode"
    shown: str  # the value as written in the file
    control: str  # "AfMode"
    value: Any
    supported: bool = True  # False: refused whatever the camera advertises


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else f"{value:g}" if isinstance(
        value, float) else str(value)


def wanted_controls(
    camera: CameraConfig, available: Mapping[str, Any], *, hdr_by: str | None = "isp"
) -> list[WantedControl]:
    """The controls to send for ``camera``: only settings that differ from the defaults.

    ``af_mode = "default"`` becomes continuous autofocus on cameras that have
    autofocus (``AfMode`` in ``available``) and nothing elsewhere. ``hdr``
    becomes ``HdrMode`` where the ISP does HDR (``hdr_by``, from
    :func:`hdr_plan`: a Pi 5), no control where the sensor does it itself
    (Camera Module 3 on VC4), and a refusal where neither can. What the camera
    does not support is not filtered out here: :func:`check_controls` refuses it.
    """
    out: list[WantedControl] = []

    def want(key: str, value: object, control: str, sent: object) -> None:
        out.append(WantedControl(f"camera.{key}", _toml(value), control, sent))

    af_mode = camera.af_mode
    if af_mode == "default":
        af_mode = "continuous" if "AfMode" in available else "default"
    if af_mode != "default":
        want("af_mode", camera.af_mode if camera.af_mode != "default" else af_mode, "AfMode",
             _AF_MODES[af_mode])
        if af_mode == "manual":
            want("lens_position", camera.lens_position, "LensPosition", camera.lens_position)
        elif camera.af_range != "normal":
            want("af_range", camera.af_range, "AfRange", _AF_RANGES[camera.af_range])
    if camera.exposure_value != 0.0:
        want("exposure_value", camera.exposure_value, "ExposureValue", camera.exposure_value)
    if camera.exposure_mode != "normal":
        want("exposure_mode", camera.exposure_mode, "AeExposureMode",
             _EXPOSURE_MODES[camera.exposure_mode])
    if camera.flicker != "off":
        want("flicker", camera.flicker, "AeFlickerMode", _AE_FLICKER_MANUAL)
        want("flicker", camera.flicker, "AeFlickerPeriod", _FLICKER_PERIOD_US[camera.flicker])
    if camera.awb_mode != "auto":
        want("awb_mode", camera.awb_mode, "AwbMode", _AWB_MODES[camera.awb_mode])
    for key, default, control in (("brightness", 0.0, "Brightness"),
                                  ("contrast", 1.0, "Contrast"),
                                  ("saturation", 1.0, "Saturation"),
                                  ("sharpness", 1.0, "Sharpness")):
        value = getattr(camera, key)
        if value != default:
            want(key, value, control, value)
    if camera.hdr and hdr_by != "sensor":
        want("hdr", True, "HdrMode", _HDR_SINGLE_EXPOSURE)
        if hdr_by is None:  # VC4 advertises HdrMode, and ignores it
            out[-1] = WantedControl(out[-1].key, out[-1].shown, "HdrMode", None, supported=False)
    return out


_WHY_MISSING: Final = {
    "AfMode": "it has no autofocus (a Camera Module 3 has; set camera.af_mode = \"default\")",
    "LensPosition": "its lens has no motor to focus with",
    "AfRange": "it has no autofocus",
    "HdrMode": "HDR needs a Pi 5 (HDR in its ISP) or a Camera Module 3 (sensor HDR): on a Pi 4 "
               "and older only a Camera Module 3 (imx708, any variant) does HDR",
}


def check_controls(
    wanted: list[WantedControl], available: Mapping[str, Any], camera_name: str
) -> None:
    """Refuse, all at once and by config key, what this camera cannot do.

    ``available`` is ``Picamera2.camera_controls``: ``{name: (min, max, default)}``.
    A number outside the camera's own range is refused too (libcamera would
    clamp it silently, and the picture would not be what the file says).
    """
    problems = []
    for w in wanted:
        if not w.supported or w.control not in available:
            why = _WHY_MISSING.get(w.control, f"it has no {w.control} control")
            problems.append(f"{w.key} = {w.shown} is not supported by {camera_name}: {why}")
            continue
        low, high = [*available[w.control], None, None][:2]
        numbers = (int, float)
        if (isinstance(w.value, numbers) and not isinstance(w.value, bool)
                and isinstance(low, numbers) and isinstance(high, numbers)
                and not low <= w.value <= high):
            problems.append(f"{w.key} = {w.shown} is outside the range of {camera_name}'s "
                            f"{w.control} ({low:g} .. {high:g})")
    if problems:
        supported = ", ".join(sorted(available))
        raise SourceError("; ".join(problems) + f" (the camera's controls: {supported})")


