"""The Raspberry Pi camera through picamera2 (see :mod:`.source` for how it runs).

* :mod:`.source`: the video source, the camera's H.264 to the hub: camera
  sessions, the stall watchdog, the hub's requests;
* :mod:`.stream`: one camera stream and its encoder (main or lores), as the
  Trio side keeps track of it: rate, key frames, packets;
* :mod:`.driver`: the encoders of an open camera, one task per stream;
* :mod:`.calls`: every picamera2 call in a worker thread, bounded;
* :mod:`.bridge`: access units from the encoders' threads to Trio;
* :mod:`.clock`: packet time stamps, one ``pts`` per camera frame;
* :mod:`.opening`: opening and configuring the camera;
* :mod:`.compat`: picamera2 as it really is (releases, features, fixes);
* :mod:`.budget`: what the Pi's codec takes (main + lores);
* :mod:`.controls`: configuration → libcamera controls;
* :mod:`.errors`: open errors in words that name the fix.

picamera2 itself is imported only when a source is prepared (in a worker
thread, :meth:`PiCamera2Source.prepare`), or ``doctor`` or ``devices`` asks.
"""

from .calls import CameraHung
from .compat import INSTALL_HINT, Picamera2Features, Picamera2Modules, import_picamera2
from .controls import WantedControl, check_controls, wanted_controls
from .errors import describe_open_error
from .source import PiCamera2Source

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
