"""Secret files (tokens, passwords, TURN credentials): read safely, checked at start.

Secrets live in their own files rather than in the config so the config can be copied
around a fleet, checked into version control and shown in bug reports.  That only helps
if the secret files themselves are private, so a file that group or others can access
is refused outright (like ssh does with private keys) instead of being used with a
warning nobody reads on an unattended device.
"""

import os
import shlex
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from .errors import ConfigError, SecretFileError
from .schema import Config

__all__ = ["MAX_SECRET_BYTES", "check_secrets", "read_secret_file"]

MAX_SECRET_BYTES: Final = 64 * 1024
"""A secret larger than this is almost certainly the wrong file (e.g. a log)."""


def read_secret_file(path: str | os.PathLike[str]) -> str:
    """Return the file's content with surrounding whitespace (the trailing newline) removed.

    Raises SecretFileError if the file is missing, unreadable, not a regular file, not
    UTF-8, empty, or accessible by group or others (``mode & 0o077``).  The permission
    check uses the opened file descriptor, so it describes the file actually read.
    Symlinks are followed (systemd credentials and Kubernetes secrets use them).
    """
    path = Path(path)
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY
    flags |= os.O_NONBLOCK  # a FIFO must not hang start-up; no effect on regular files
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise SecretFileError(path, None, "secret file does not exist") from None
    except PermissionError:
        raise SecretFileError(
            path,
            None,
            f"permission denied: the agent's user (uid {os.geteuid()}) cannot read it; "
            f"make that user its owner: chown USER {shlex.quote(str(path))}",
        ) from None
    except OSError as exc:
        raise SecretFileError(path, None, f"cannot open: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL character in the path
        raise SecretFileError(path, None, f"cannot open: {exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(path, None, "is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            what = "readable" if mode & 0o044 else "writable"
            raise SecretFileError(
                path,
                None,
                f"is {what} by group or others (mode {mode:04o}); "
                f"fix with: chmod 600 {shlex.quote(str(path))}",
            )
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_SECRET_BYTES:
            chunk = os.read(fd, MAX_SECRET_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise SecretFileError(path, None, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > MAX_SECRET_BYTES:
        raise SecretFileError(path, None, f"is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise SecretFileError(path, None, "is not valid UTF-8 text") from None
    secret = text.strip()
    if not secret:
        raise SecretFileError(path, None, "is empty")
    return secret


def _secret_paths(config: Config) -> Iterable[tuple[str, Path]]:
    if config.auth is not None and config.auth.token_file is not None:
        yield "auth.token_file", config.auth.token_file
    if config.auth is not None and config.auth.password_file is not None:
        yield "auth.password_file", config.auth.password_file
    if config.publish is not None and config.publish.token_file is not None:
        yield "publish.token_file", config.publish.token_file
    for i, server in enumerate(config.ice.servers):
        if server.credential_file is not None:
            yield f"ice.servers[{i}].credential_file", server.credential_file


def check_secrets(config: Config) -> None:
    """Read every secret file the config points to, failing early and all at once.

    Secrets are read again when used (tokens get rotated); this check exists so that a
    missing or world-readable secret stops the service at start-up with a clear message
    instead of surfacing later as a failed login.  Raises SecretFileError.
    """
    errors: list[ConfigError] = []
    for key, path in _secret_paths(config):
        try:
            read_secret_file(path)
        except SecretFileError as exc:
            errors.append(SecretFileError(exc.file, key, exc.reason))
    if errors:
        raise SecretFileError.group(errors)
