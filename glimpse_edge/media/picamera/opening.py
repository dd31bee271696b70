"""Opening and configuring the camera: one blocking job for a worker thread.

Everything it needs is decided on the Trio thread beforehand and handed
over as a :class:`CameraPlan`; it returns what it found (the opened
camera and its model) instead of setting anything the Trio side reads, so
no state is shared with the thread, which may outlive its caller (an open
that takes too long is abandoned, and closes what it opened when it
finishes). Every failure is a :class:`SourceError` naming the cause.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Final

import structlog

from ...config import CameraConfig
from ..source import SourceError
from .compat import Picamera2Modules, forget_failed_open
from .controls import check_controls, hdr_plan, wanted_controls
from .errors import chain, describe_open_error, missing_text

__all__ = ["HW_MAX_SIZE", "CameraPlan", "open_camera"]

log = structlog.get_logger(__name__)

HW_MAX_SIZE: Final = 1920  # largest frame side the VC4 codec encodes


@dataclass(frozen=True)
class CameraPlan:
    """What to open, and how to configure it."""

    mods: Picamera2Modules
    camera: CameraConfig
    width: int
    height: int
    framerate: int
    lores: tuple[int, int] | None  # the lores stream's size, to start whenever a peer needs it

    @property
    def hardware(self) -> bool:
        return self.mods.hardware_h264


def open_camera(plan: CameraPlan, abandoned: threading.Event) -> tuple[Any, str]:
    """Open and configure the camera (a worker thread): the camera and its model.

    ``abandoned`` is set when nobody waits for the result any more: a camera
    opened after that is closed again here.
    """
    index, mods, camera = plan.camera.index, plan.mods, plan.camera
    try:
        cameras = list(mods.Picamera2.global_camera_info())
    except Exception as exc:
        raise SourceError(f"camera {index}: libcamera cannot list cameras: {chain(exc)}"
                          ) from exc
    if index >= len(cameras):
        raise SourceError(missing_text(index, cameras))
    model = str(cameras[index].get("Model", "unknown"))
    # libcamera's number of the camera: picamera2 sorts its list, so not the index
    num = int(cameras[index].get("Num", index))
    if plan.hardware and (plan.width > HW_MAX_SIZE or plan.height > HW_MAX_SIZE):
        raise SourceError(
            f"video.width x video.height = {plan.width}x{plan.height} is larger than the "
            f"Pi's H.264 encoder takes (at most {HW_MAX_SIZE} on a side)")
    hdr_by = hdr_plan(mods.platform, model)
    sensor_hdr = _set_sensor_hdr(num, camera.hdr) if hdr_by == "sensor" else False
    try:
        cam = mods.Picamera2(index)
    except Exception as exc:
        forget_failed_open(mods.Picamera2, num)
        raise SourceError(describe_open_error(exc, index, cameras)) from exc
    try:
        available = dict(cam.camera_controls)
        wanted = wanted_controls(camera, available, hdr_by=hdr_by)
        check_controls(wanted, available, f"camera {index} ({model})")
        controls: dict[str, Any] = {"FrameRate": plan.framerate}
        controls.update({w.control: w.value for w in wanted})
        lores = None if plan.lores is None else {"size": plan.lores, "format": "YUV420"}
        config = cam.create_video_configuration(
            main={"size": (plan.width, plan.height), "format": "YUV420"},
            lores=lores,
            controls=controls,
            buffer_count=camera.buffer_count,
            transform=mods.Transform(hflip=camera.hflip != (camera.rotation == 180),
                                     vflip=camera.vflip != (camera.rotation == 180)),
        )
        cam.configure(config)
    except SourceError:
        cam.close()
        raise
    except Exception as exc:
        cam.close()
        raise SourceError(f"camera {index} ({model}) refused its configuration: "
                          f"{describe_open_error(exc, index, cameras)}") from exc
    if abandoned.is_set():  # configuring took too long: nobody waits for it
        cam.close()
        raise SourceError(f"camera {index} opened too late")
    log.info("media.picamera2.opened", camera=index, model=model, platform=mods.platform,
             picamera2=mods.features.version, encoder="hardware" if plan.hardware
             else "software", width=plan.width, height=plan.height,
             framerate=plan.framerate, buffers=camera.buffer_count,
             controls={w.control: w.value for w in wanted}, sensor_hdr=sensor_hdr)
    if not plan.hardware:
        log.warning("media.picamera2.software_encoder", platform=mods.platform,
                    detail="this Pi (a Pi 5) has no H.264 hardware encoder: picamera2 "
                    "encodes with libx264 on the CPU, about one core at 1280x720@30; "
                    "lower video.width/height/framerate if the CPU runs short")
    return cam, model


def _set_sensor_hdr(num: int, hdr: bool) -> bool:
    """Camera Module 3 on VC4: sensor HDR on or off, as configured (before opening).

    The setting lives in the sensor's V4L2 subdevice and outlives us, so it
    is set either way: a camera that once ran with HDR must not keep it.
    ``num`` is libcamera's camera number, which ``IMX708`` looks cameras up by.
    """
    try:
        from picamera2.devices.imx708 import IMX708

        with IMX708(num) as sensor:
            sensor.set_sensor_hdr_mode(hdr)
    except Exception as exc:
        if hdr:
            raise SourceError(f"camera.hdr = true: the Camera Module 3's sensor HDR cannot "
                              f"be switched on: {chain(exc)}") from exc
        log.debug("media.picamera2.sensor_hdr_unset", error=str(exc))
        return False
    return hdr
