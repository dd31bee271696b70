"""Build the configured media sources.

The hub calls these, on the Trio thread, whenever it (re)starts a source, so they
only read the configuration.  An unknown kind fails here with a SourceError; a
missing optional dependency when the source is prepared (picamera2: ``prepare()``,
which imports it in a worker thread and which the hub awaits next) or run
(pyalsaaudio), with a SourceError saying what to install.  Device problems (no
camera plugged in) are reported by ``run()``, under supervision, because they can
fix themselves.
"""

from __future__ import annotations

from ..config import AudioConfig, CameraConfig, VideoConfig
from .source import AnyVideoSource, AudioSource, SourceError

__all__ = ["make_audio_source", "make_video_source"]


def make_video_source(cfg: VideoConfig, camera: CameraConfig | None = None) -> AnyVideoSource:
    """The video source for ``video.source``: testpattern, v4l2, file or picamera2.

    ``camera`` (the ``[camera]`` table) is used by picamera2 only. A picamera2
    source imports picamera2 when prepared (in a worker thread, not here on
    the Trio thread), so a machine without it gets a SourceError saying what
    to install from ``prepare()``.
    """
    if cfg.source == "testpattern":
        from .testpattern import TestPatternSource

        return TestPatternSource(cfg.width, cfg.height, cfg.framerate, cfg.pattern_noise)
    if cfg.source == "v4l2":
        from .avinput import V4l2Source

        return V4l2Source(cfg.device, cfg.width, cfg.height, cfg.framerate)
    if cfg.source == "file":
        from .avinput import FileSource

        if cfg.path is None:  # the config validation already requires it
            raise SourceError('video.source = "file" needs video.path')
        return FileSource(cfg.path, cfg.width, cfg.height, cfg.framerate)
    if cfg.source == "picamera2":
        from .picamera import PiCamera2Source

        return PiCamera2Source(cfg, camera or CameraConfig())
    raise SourceError(f"unknown video.source {cfg.source!r}")


def make_audio_source(cfg: AudioConfig) -> AudioSource | None:
    """The audio source for ``audio.source``: tone, alsa, or None for "none".

    pyalsaaudio is only imported when an ALSA source runs, so a board without it
    still runs the tone source.
    """
    if cfg.source == "none":
        return None
    if cfg.source == "tone":
        from .tone import ToneSource

        return ToneSource(cfg.rate, cfg.channels, cfg.tone_frequency, cfg.period_ms)
    if cfg.source == "alsa":
        from .alsa import AlsaSource, MixerSettings

        return AlsaSource(cfg.device, cfg.rate, cfg.channels, cfg.period_ms,
                          mixer=MixerSettings(cfg.mixer_control, cfg.capture_gain,
                                              cfg.capture_switch))
    raise SourceError(f"unknown audio.source {cfg.source!r}")
