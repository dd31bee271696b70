"""Structured logging for the agent and the dev server.

Every log line is a structlog event with a stable dotted name
(``signaling.connected``, ``room.joined`` ...) so that fleets can alert on
names instead of prose. Under systemd (stdout is not a TTY) lines are JSON;
on a terminal they are rendered for people.

Secrets never reach a log line: a processor masks known secret keys and
anything that looks like a JWT in any string value, wherever it appears.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Keys whose values are secrets whatever they contain.
SECRET_KEYS = frozenset(
    {"token", "password", "credential", "authorization", "secret", "jwt", "signal_token"}
)
# Three base64url segments, the first one a JSON header ("eyJ" = '{"').
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")
REDACTED = "[redacted]"


def redact(value: Any) -> Any:
    """Return ``value`` with secrets masked, recursing into containers."""
    if isinstance(value, str):
        return _JWT_RE.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and k.lower() in SECRET_KEYS else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def _redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key.lower() in SECRET_KEYS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = redact(event_dict[key])
    return event_dict


def _exception_redactor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # Tracebacks are rendered to text by an earlier processor; mask them too.
    exc = event_dict.get("exception")
    if isinstance(exc, str):
        event_dict["exception"] = redact(exc)
    return event_dict


_current_level = logging.INFO
_METHOD_LEVELS = {name.lower(): level for name, level in logging.getLevelNamesMapping().items()}


def _level_filter(
    _logger: Any, name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if _METHOD_LEVELS.get(name, logging.INFO) < _current_level:
        raise structlog.DropEvent
    return event_dict


def configure_logging(
    level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog process-wide; safe to call again (on reload)."""
    global _current_level
    out = stream if stream is not None else sys.stdout
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    _current_level = _LEVELS.get(level, logging.INFO)
    processors: list[Any] = [
        _level_filter,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_processor,
    ]
    if fmt == "json":
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors += [
            structlog.processors.format_exc_info,
            _exception_redactor,
            structlog.dev.ConsoleRenderer(colors=out.isatty()),
        ]
    structlog.configure(
        processors=processors,
        # Loggers bound earlier (a peer session's) keep the wrapper class of
        # their time, so the level is enforced by _level_filter, which reads
        # the current one: a reload's new level applies to them at once.
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Libraries (hypercorn, httpx, aiortc) log through stdlib logging: route
    # their warnings into the same stream so nothing vanishes.
    root = logging.getLogger()
    root.handlers[:] = [_StdlibBridge()]
    root.setLevel(max(_current_level, logging.INFO))
    # httpx logs every request at INFO: that is our events' job.
    # aioice narrates every candidate pair at INFO; peer.* events cover it.
    for noisy in ("httpx", "httpcore", "aioice"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _StdlibBridge(logging.Handler):
    """Forward stdlib log records to structlog as ``lib.log`` events."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a library's bad format string must not kill us
            msg = str(record.msg)
        log = structlog.get_logger("lib")
        kw: dict[str, Any] = {"logger": record.name, "message": msg}
        if record.exc_info:
            kw["exc_info"] = record.exc_info
        level = record.levelname.lower()
        if level == "critical":
            level = "error"
        getattr(log, level if level in _LEVELS else "info")("lib.log", **kw)
