"""Camera Module 3 sensor HDR (as picamera2's ``devices/imx708/imx708.py``).

The setting lives in the sensor's V4L2 subdevice, so it persists until changed
again, across processes; the stand-in keeps it in a state file per camera.
"""

from __future__ import annotations

from picamera2 import Picamera2

from ... import _hardware


class IMX708:
    def __init__(self, camera_num: int | None = None) -> None:
        self.device_fd: int | None = None
        camera_info = Picamera2.global_camera_info()
        if camera_num is None:
            found = next((c for c in camera_info if c["Model"] == "imx708"), None)
        else:
            found = next((c for c in camera_info if c["Num"] == camera_num), None)
        if found is None:
            raise RuntimeError("IMX708: Requested IMX708 camera device not be found")
        if found["Model"] != "imx708":  # no imx708 subdevice belongs to that camera
            raise RuntimeError("IMX708: Requested camera v4l2 device node not found")
        self.camera_num = int(found["Num"])
        self.device_fd = 1

    def close(self) -> None:
        self.device_fd = None

    def __enter__(self) -> IMX708:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_sensor_hdr_mode(self, enable: bool) -> None:
        _hardware.set_sensor_hdr(self.camera_num, bool(enable))
        _hardware.record(f"imx708.hdr num={self.camera_num} enable={int(bool(enable))}")
        Picamera2._cm.reset()
