"""What goes wrong with a configuration, said so that an operator can act on it.

Every problem names the FILE that caused it, the dotted KEY
(``server.ping_interval``) and the REASON, because the journal is all an
operator of an unattended device sees. A configuration error is a
:class:`~glimpse_edge.fatal.Fatal` one: no restart cures a bad file, so
:func:`~glimpse_edge.supervise.supervise` never retries it.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..fatal import Fatal

__all__ = ["ConfigError", "SecretFileError"]


class ConfigError(Fatal):
    """The configuration cannot be used; ``str(e)`` is ``"FILE: KEY: REASON"``.

    Missing parts are omitted (a TOML syntax error has no key; a problem found while
    constructing structs by hand has no file).  When several problems were found at
    once, ``errors`` holds all of them (in file order) and ``str(e)`` has one line per
    problem, so an operator can fix everything in one edit instead of one restart per
    typo; ``file``/``key``/``reason`` then describe the first problem.
    """

    def __init__(self, file: Path | None, key: str | None, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        self.errors: tuple[ConfigError, ...] = (self,)
        super().__init__(self._line())

    def _line(self) -> str:
        parts = [str(self.file)] if self.file is not None else []
        if self.key:
            parts.append(self.key)
        parts.append(self.reason)
        return ": ".join(parts)

    def __str__(self) -> str:
        return "\n".join(e._line() for e in self.errors)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from the fields (the default would call cls(message) and fail).
        return (type(self), (self.file, self.key, self.reason), {"errors": self.errors})

    @classmethod
    def group(cls, errors: Sequence["ConfigError"]) -> "ConfigError":
        """Combine several problems into one exception to raise (``errors`` non-empty)."""
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        combined = cls(first.file, first.key, first.reason)
        combined.errors = tuple(e for err in errors for e in err.errors)
        combined.args = (str(combined),)
        return combined


class SecretFileError(ConfigError):
    """A secret file (token, password, TURN credential) is missing, empty or unsafe.

    ``file`` is the secret file itself; ``key`` is the config key that points to it
    when known (set by :func:`check_secrets`).
    """


class _InvalidKey(ValueError):
    """Raised from ``__post_init__`` to say *which* key is wrong, not just which table.

    msgspec keeps the original exception as ``__cause__`` of its ValidationError, so the
    loader can report ``video.path`` instead of ``video``.  ``key`` is relative to the
    struct raising it ("" for the struct itself).
    """

    def __init__(self, key: str, reason: str, related: tuple[str, ...] = ()) -> None:
        self.key = key
        self.reason = reason
        self.related = related  # other keys the check looked at (to find the file to blame)
        super().__init__(f"{key}: {reason}" if key else reason)
