"""A stand-in for picamera2 (the Raspberry Pi camera library), for tests: see ../README.md."""

from .picamera2 import Picamera2
from .platform import Platform, get_platform

__all__ = ["Picamera2", "Platform", "get_platform"]
