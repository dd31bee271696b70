"""Media for the agent: raw frames in from sources, one encode, fan-out to every peer.

Sources (this package's ``source``, ``testpattern``, ``tone``, ``alsa``, ``avinput``,
``factory`` modules) produce ``yuv420p`` video frames and ``s16`` audio frames in real
time and push them into non-blocking sinks; see :mod:`glimpse_edge.media.source` for
the contract (time stamps, pacing, errors, threads).  ``framecode`` burns a
machine-readable counter and capture time into every test-pattern frame so that a
receiver can measure latency and freezes.

Importing this package does not import pyalsaaudio; only running an ALSA source does.
"""

from .alsa import AlsaSource, list_capture_devices
from .avinput import FileSource, V4l2Source
from .factory import make_audio_source, make_video_source
from .framecode import FrameCode, draw_code, read_code
from .source import AudioSink, AudioSource, SourceError, VideoSink, VideoSource
from .testpattern import TestPatternSource
from .tone import ToneSource

__all__ = [
    "AlsaSource",
    "AudioSink",
    "AudioSource",
    "FileSource",
    "FrameCode",
    "SourceError",
    "TestPatternSource",
    "ToneSource",
    "V4l2Source",
    "VideoSink",
    "VideoSource",
    "draw_code",
    "list_capture_devices",
    "make_audio_source",
    "make_video_source",
    "read_code",
]
