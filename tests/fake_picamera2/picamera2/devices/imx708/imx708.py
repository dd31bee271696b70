"""Camera Module 3 sensor HDR (as picamera2's ``devices/imx708/imx708.py``).

``IMX708(camera_num)`` takes the Id of the camera whose 'Num' is
``camera_num`` (not its position in global_camera_info()) and opens the V4L2
subdevice whose driver is imx708 and whose device-tree node is that Id; so
any imx708 variant (wide, NoIR) works, and another sensor or a wrong number
fails. The setting lives in the sensor, so it persists until changed again,
across processes; the stand-in keeps it in a state file per camera, and
opens /dev/null in place of the subdevice.
"""

from __future__ import annotations

from typing import Any

from picamera2 import Picamera2

from ... import _hardware


def _subdevices() -> list[tuple[str, str, int]]:
    """(driver, device-tree node, camera Num) of each sensor subdevice."""
    return [(_hardware.MODELS[model]["driver"], _hardware.camera_id(num, model), num)
            for num, model in enumerate(_hardware.models())]


class IMX708:
    def __init__(self, camera_num: int | None = None) -> None:
        self.device_fd: Any = None
        self._num: int | None = None
        camera_info = Picamera2.global_camera_info()
        if camera_num is None:
            camera_id = next((c["Id"] for c in camera_info if c["Model"] == "imx708"), None)
        else:
            camera_id = next((c["Id"] for c in camera_info if c["Num"] == camera_num), None)
        if camera_id is None:
            raise RuntimeError("IMX708: Requested IMX708 camera device not be found")
        for driver, of_node, num in _subdevices():
            if driver == "imx708" and camera_id in of_node:
                self.device_fd = open("/dev/null", "rb+", buffering=0)  # noqa: SIM115
                self._num = num
                break
        if self.device_fd is None:
            raise RuntimeError("IMX708: Requested camera v4l2 device node not found")

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        if self.device_fd:
            self.device_fd.close()
            self.device_fd = None

    def __enter__(self) -> IMX708:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_sensor_hdr_mode(self, enable: bool) -> None:
        """Sensor HDR on or off; reopen the camera afterwards for its new sensor modes."""
        if self.device_fd is None or self._num is None:  # closed: the ioctl gets None
            raise TypeError("argument must be an int, or have a fileno() method.")
        _hardware.set_sensor_hdr(self._num, bool(enable))
        _hardware.record(f"imx708.hdr num={self._num} enable={int(bool(enable))}")
        Picamera2._cm.reset()
