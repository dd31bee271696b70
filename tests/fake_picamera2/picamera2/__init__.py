"""A stand-in for picamera2 (the Raspberry Pi camera library), for tests: see ../README.md."""

from .job import CancelledError
from .picamera2 import Picamera2
from .platform import Platform, get_platform
from .request import CompletedRequest, MappedArray

__all__ = ["CancelledError", "CompletedRequest", "MappedArray", "Picamera2", "Platform",
           "get_platform"]
