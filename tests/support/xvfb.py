"""A real X server for display tests: Debian's Xvfb, on a display number it picks itself.

``-displayfd`` makes Xvfb choose a free display and write its number once it
accepts connections, so there is neither a guessed number nor a poll for a socket.
The server is stopped (and reaped) when the context ends.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["xvfb"]


@contextmanager
def xvfb(width: int = 1280, height: int = 720, depth: int = 24,
         timeout: float = 15.0) -> Iterator[str]:
    """Run ``Xvfb -screen 0 WxHxD``; yields its display name (":N")."""
    binary = shutil.which("Xvfb")
    if binary is None:
        raise FileNotFoundError("Xvfb not installed (Debian package xvfb; scripts/setup-env.sh)")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [binary, "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x{depth}",
         "-nolisten", "tcp", "-noreset"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], timeout)
        number = os.read(read_fd, 32).decode().strip() if ready else ""
        if not number:
            proc.kill()
            _, err = proc.communicate(timeout=5)
            raise RuntimeError(f"Xvfb did not start: {err.decode(errors='replace')[-500:]}")
        yield f":{number}"
    finally:
        os.close(read_fd)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
