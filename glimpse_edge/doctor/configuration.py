"""Does the configuration load and validate, and are its secret files usable?

Every later check needs a valid configuration: when it does not load, they
are skipped and this is the one to fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import Config, ConfigError, SecretFileError, check_secrets, load_config

if TYPE_CHECKING:
    from .run import Doctor

__all__ = ["check_config", "check_secret_files"]


def check_config(doctor: Doctor) -> Config | None:
    path = doctor.config_path
    try:
        config = load_config(path)
    except ConfigError as exc:
        missing = exc.file == path.absolute() and "does not exist" in exc.reason
        doctor.add("config", "fail",
                   f"{path} does not exist" if missing else
                   f"{len(exc.errors)} problem{'s' * (len(exc.errors) != 1)} in the "
                   "configuration",
                   "create it from the annotated example (config/glimpse-edge.toml), or "
                   "pass --config PATH" if missing else
                   "edit the files named above; `glimpse-edge check-config` checks again",
                   [] if missing else [str(e).splitlines()[0] for e in exc.errors])
        return None
    doctor.config = config
    files = len(config.sources)
    doctor.add("config", "pass", f"valid ({files} file{'s' * (files != 1)}: "
               + ", ".join(str(f) for f in config.sources) + ")")
    return config


def check_secret_files(doctor: Doctor, config: Config) -> bool:
    try:
        check_secrets(config)
    except SecretFileError as exc:
        doctor.add("secrets", "fail", "a secret file cannot be used",
                   "fix each file as said; the agent refuses secrets that others can read",
                   [str(e).splitlines()[0] for e in exc.errors])
        return False
    auth, publish = config.auth, config.publish
    names = [k for k, v in (("auth.token_file", auth and auth.token_file),
                            ("auth.password_file", auth and auth.password_file),
                            ("publish.token_file", publish and publish.token_file)) if v]
    names += [f"ice.servers[{i}].credential_file" for i, s in enumerate(config.ice.servers)
              if s.credential_file is not None]
    doctor.add("secrets", "pass", "readable and private (mode 600): " + ", ".join(names))
    return True
