"""Control enums with libcamera's values (``libcamera/control_ids_core.yaml``)."""

from __future__ import annotations

from enum import IntEnum


class AfModeEnum(IntEnum):
    Manual = 0
    Auto = 1
    Continuous = 2


class AfRangeEnum(IntEnum):
    Normal = 0
    Macro = 1
    Full = 2


class AfSpeedEnum(IntEnum):
    Normal = 0
    Fast = 1


class AeExposureModeEnum(IntEnum):
    Normal = 0
    Short = 1
    Long = 2
    Custom = 3


class AeFlickerModeEnum(IntEnum):
    FlickerOff = 0
    FlickerManual = 1
    FlickerAuto = 2


class AwbModeEnum(IntEnum):
    Auto = 0
    Incandescent = 1
    Tungsten = 2
    Fluorescent = 3
    Indoor = 4
    Daylight = 5
    Cloudy = 6
    Custom = 7


class HdrModeEnum(IntEnum):
    Off = 0
    MultiExposureUnmerged = 1
    MultiExposure = 2
    SingleExposure = 3
    Night = 4


class draft:  # a submodule in the real bindings
    class NoiseReductionModeEnum(IntEnum):
        Off = 0
        Fast = 1
        HighQuality = 2
        Minimal = 3
        ZSL = 4
