"""Errors no restart inside the process can cure.

A leaf module (it imports nothing of the package) so that both the places
that raise such errors (the configuration, a camera driver) and the one that
must never retry them (:func:`glimpse_edge.supervise.supervise`) can depend on
it without depending on each other.
"""

from __future__ import annotations

__all__ = ["EXIT_FATAL", "Fatal", "find_fatal"]


class Fatal(Exception):
    """An error no restart inside the process can cure: the process must end.

    Raised, for example, when hardware hangs in a call that cannot be
    cancelled (a camera that cannot be closed): only a fresh process (systemd
    restarts it) gets the device back. Never retried by
    :func:`~glimpse_edge.supervise.supervise`; ``glimpse-edge run`` exits with
    :data:`EXIT_FATAL` without running exit handlers that could hang on the
    same hardware. :class:`~glimpse_edge.config.ConfigError` is one too (a
    person has to fix the file), but ``run`` catches it first and exits with
    its own code, 78.
    """


EXIT_FATAL = 70  # sysexits.h EX_SOFTWARE: systemd's Restart=on-failure restarts it


def find_fatal(exc: BaseException) -> Fatal | None:
    """The :class:`Fatal` error in ``exc`` (an exception group, at any depth), if any."""
    if isinstance(exc, Fatal):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_fatal(inner)
            if found is not None:
                return found
    return None
