"""``picamera2.encoders``: H264Encoder is the hardware class on VC4 only (as the real one)."""

from ..platform import Platform, get_platform
from .encoder import Encoder, Quality
from .libav_h264_encoder import LibavH264Encoder

_hw_encoder_available = get_platform() == Platform.VC4

if _hw_encoder_available:
    from .h264_encoder import H264Encoder
else:
    from .libav_h264_encoder import LibavH264Encoder as H264Encoder  # type: ignore[assignment]

__all__ = ["Encoder", "H264Encoder", "LibavH264Encoder", "Quality"]
