"""The agent's configuration: one TOML file plus ``config.d/*.toml`` drop-ins.

One concept per module:

* :mod:`.schema`: the typed sections (``[server]`` ... ``[log]``) and their checks;
* :mod:`.load`: reading, merging and validating the files, naming the file and key
  at fault (:func:`load_config`, :func:`load_checked`);
* :mod:`.secrets`: reading secret files safely, and checking them at start;
* :mod:`.errors`: :class:`ConfigError` and :class:`SecretFileError`.

Import from here; names with a leading underscore are shared within this
package only. None of it imports the agent or its WebRTC stack, so that
``glimpse-edge check-config`` stays light.
"""

from .errors import ConfigError, SecretFileError
from .load import DEFAULT_CONFIG_PATH, DROPIN_DIR_NAME, load_checked, load_config
from .schema import (
    MAX_LOWER_TIERS,
    AudioConfig,
    AuthConfig,
    CameraConfig,
    Config,
    DisplayConfig,
    GlimpseSettings,
    IceConfig,
    IceServer,
    LogConfig,
    ObserveConfig,
    PeersConfig,
    PlaybackConfig,
    PublishConfig,
    QualityTier,
    RoomConfig,
    ServerConfig,
    VideoConfig,
    camera_buffers_needed,
    is_loopback_host,
    parse_listen,
)
from .secrets import check_secrets, read_secret_file

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DROPIN_DIR_NAME",
    "MAX_LOWER_TIERS",
    "AudioConfig",
    "AuthConfig",
    "CameraConfig",
    "Config",
    "ConfigError",
    "DisplayConfig",
    "GlimpseSettings",
    "IceConfig",
    "IceServer",
    "LogConfig",
    "ObserveConfig",
    "PeersConfig",
    "PlaybackConfig",
    "PublishConfig",
    "QualityTier",
    "RoomConfig",
    "SecretFileError",
    "ServerConfig",
    "VideoConfig",
    "camera_buffers_needed",
    "check_secrets",
    "is_loopback_host",
    "load_checked",
    "load_config",
    "parse_listen",
    "read_secret_file",
]
