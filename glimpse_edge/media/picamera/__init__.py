"""The Raspberry Pi camera through picamera2 (see :mod:`.source` for how it runs).

* :mod:`.source`: the video source, the camera's H.264 to the hub;
* :mod:`.compat`: picamera2 as it really is (releases, features, fixes);
* :mod:`.budget`: what the Pi's codec takes (main + lores);
* :mod:`.controls`: configuration → libcamera controls;
* :mod:`.errors`: open errors in words that name the fix.

picamera2 itself is imported only when a source is made (or ``doctor`` asks).
"""

from .compat import INSTALL_HINT, Picamera2Features, Picamera2Modules, import_picamera2
from .controls import WantedControl, check_controls, wanted_controls
from .errors import describe_open_error
from .source import CameraHung, PiCamera2Source

__all__ = [
    "INSTALL_HINT",
    "CameraHung",
    "PiCamera2Source",
    "Picamera2Features",
    "Picamera2Modules",
    "WantedControl",
    "check_controls",
    "describe_open_error",
    "import_picamera2",
    "wanted_controls",
]
