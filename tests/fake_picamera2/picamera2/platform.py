"""``picamera2.platform``: which Raspberry Pi ISP this is, decided once at import.

The real module reads the card names of /dev/video* (``pispbe`` = Pi 5) and
assumes VC4 when it finds nothing; the stand-in reads FAKE_PICAMERA2_PLATFORM.
"""

from enum import Enum

from . import _hardware


class Platform(Enum):
    VC4 = 0
    PISP = 1


_platform = Platform.PISP if _hardware.platform_name() == "PISP" else Platform.VC4


def get_platform() -> Platform:
    return _platform
