"""``glimpse-edge status``: find the running agent's endpoint, read /status, show it.

Kept free of the server's imports (Starlette, hypercorn, prometheus_client,
aiortc): a person typing ``glimpse-edge status`` on a Pi should get an answer
in well under a second. The agent's address comes from ``--url``, or from the
configuration (``[observe] listen``), so the command works with no arguments
on a device set up the standard way.

Exit status: 0 with the table; 3 when nothing answers (the LSB "program is not
running" code that ``systemctl status`` also uses); 1 for anything else.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:9750"
TIMEOUT = 3.0
EXIT_NOT_RUNNING = 3

# A wildcard listen address is reached through loopback.
_LOCAL_FOR = {"0.0.0.0": "127.0.0.1", "::": "::1"}


class StatusError(Exception):
    """A message for the person at the terminal, and the exit status to use."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def url_for(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def url_from_config(path: Path) -> str:
    """The endpoint's URL from a configuration file (raises ConfigError, StatusError)."""
    from ..config import load_config

    config = load_config(path)
    address = config.observe.address
    if address is None:
        raise StatusError(f'{path}: the observe endpoint is off ([observe] listen = ""); '
                          "turn it on to use glimpse-edge status")
    host, port = address
    if port == 0:
        raise StatusError(f"{path}: [observe] listen has port 0, so the agent picked a free "
                          "port; find it in its observe.listening log event and pass --url")
    return url_for(_LOCAL_FOR.get(host, host), port)


def fetch_status(url: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """GET ``url``/status; StatusError with a plain explanation for every failure."""
    import httpx

    target = url.rstrip("/") + "/status"
    try:
        # a local endpoint: an HTTP(S)_PROXY from the environment would only be in the way
        response = httpx.get(target, timeout=timeout, trust_env=False)
    except httpx.ConnectError as exc:
        raise StatusError(f"glimpse-edge is not running, or not listening at {url} ({exc}); "
                          "check the service: systemctl status glimpse-edge",
                          EXIT_NOT_RUNNING) from None
    except httpx.TimeoutException:
        raise StatusError(f"glimpse-edge at {url} did not answer within {timeout:g} s",
                          EXIT_NOT_RUNNING) from None
    except httpx.HTTPError as exc:
        raise StatusError(f"cannot read {target}: {exc}") from None
    if response.status_code != 200:
        raise StatusError(f"{target} answered HTTP {response.status_code}: "
                          f"{response.text.strip()[:300]}")
    try:
        data = response.json()
    except ValueError:
        raise StatusError(f"{target} did not answer with JSON: is this glimpse-edge?") from None
    if not isinstance(data, dict) or "version" not in data:
        raise StatusError(f"{target} did not answer with glimpse-edge status JSON")
    return data


# --------------------------------------------------------------------------- rendering


def render(status: dict[str, Any]) -> str:
    """The status document as a few lines and tables for a terminal."""
    lines = [f"glimpse-edge {status.get('version', '?')} (pid {status.get('pid', '?')}), "
             f"up {duration(status.get('uptime_s'))}"]
    config = status.get("config") or {}
    files = config.get("files") or [config.get("path", "?")]
    lines.append(f"config      {files[0]}, loaded {when(config.get('loaded_at'))}")
    lines += [f"            + {f}" for f in files[1:]]
    if config.get("reload_error"):
        lines.append(f"            last reload refused: {config['reload_error']}")
    sig = status.get("signaling") or {}
    connects = sig.get("connects", 0)
    if sig.get("state") == "off":  # no [room]: the device only publishes
        lines.append("room        none (only publishes)")
    else:
        lines.append(f"signaling   {sig.get('state', '?')}: {sig.get('detail') or '-'} "
                     f"({connects} connect{'' if connects == 1 else 's'} to "
                     f"{sig.get('server', '?')})")
        room = status.get("room") or {}
        name = f"{room['name']} ({room.get('id')})" if room.get("name") else room.get("id", "?")
        lines.append(f"room        {name}: {'joined' if room.get('joined') else 'not joined'}, "
                     f"{room.get('participants', 0)} other participant"
                     f"{'' if room.get('participants') == 1 else 's'}")

    uplink = status.get("uplink")
    if uplink:
        estimate = uplink.get("estimate_bps")
        lines.append(f"uplink      sending {kbits(uplink.get('sent_bps'))} kbit/s; "
                     + (f"estimate {kbits(estimate)} kbit/s shared out"
                        if estimate is not None else "no shared limit")
                     + (", congested" if uplink.get("congested") else "")
                     + f" ({uplink.get('episodes', 0)} episode"
                     + f"{'' if uplink.get('episodes') == 1 else 's'}"
                     + (f"; {uplink['probes']} probe{'' if uplink['probes'] == 1 else 's'}, "
                        f"{uplink.get('probes_passed', 0)} carried"
                        if uplink.get("probes") else "")
                     + (f"; found grown {uplink['grown']} time"
                        f"{'' if uplink['grown'] == 1 else 's'}" if uplink.get("grown") else "")
                     + ")")
    publish = status.get("publish")
    if publish:
        n = publish.get("reconnects", 0)
        rtt = publish.get("rtt_ms")
        lines.append(f"publish     {publish.get('state', '?')} to {publish.get('url', '?')}"
                     + (f" ({publish['codec']} {publish.get('tier') or ''})".replace(" )", ")")
                        if publish.get("codec") else "")
                     + f": sending {kbits(publish.get('bitrate_bps'))} kbit/s"
                     + (f", estimate {kbits(publish['estimate_bps'])} kbit/s"
                        if publish.get("estimate_bps") is not None else "")
                     + (f", RTT {rtt:.0f} ms" if rtt is not None else "")
                     + f", {n} reconnect{'' if n == 1 else 's'}")
        if publish.get("last_error"):
            lines.append(f"            last error: {publish['last_error']}")
    people = status.get("participants") or []
    lines.append("")
    if people:
        rows = []
        for p in people:
            stats = p.get("stats") or {}
            video, audio = stats.get("video") or {}, stats.get("audio") or {}
            loss = video.get("loss_ratio")
            rows.append([
                p.get("username") or p.get("user_id", "?"), p.get("state", "?"),
                p.get("tier") or "-", (p.get("codecs") or {}).get("video") or "-",
                kbits(video.get("bitrate_bps")), kbits(audio.get("bitrate_bps")),
                number(video.get("rtt_ms"), 1), number(None if loss is None else loss * 100, 1),
                number(video.get("frames_sent")),
                number((p.get("pacing") or {}).get("queue_delay_ms"), 1),
                "{received}/{coalesced}".format(**(p.get("keyframe_requests")
                                                   or {"received": 0, "coalesced": 0})),
                str(p.get("restarts", 0)),
            ])
        lines += table(["PARTICIPANT", "STATE", "TIER", "CODEC", "VIDEO kbit/s",
                        "AUDIO kbit/s", "RTT ms", "LOSS %", "FRAMES", "PACER ms",
                        "PLI/COALESCED", "RESTARTS"], rows, right_from=4)
        errors = [f"  {p.get('username') or p.get('user_id')}: {p['stats_error']}"
                  for p in people if p.get("stats_error")]
        if errors:
            lines += ["stats unavailable for:", *errors]
    else:
        lines.append("no other participants")

    sources = status.get("sources") or []
    if sources:
        lines.append("")
        lines += table(["SOURCE", "TYPE", "STATE", "RESTARTS", "FRAMES", "LAST ERROR"], [
            [s.get("kind", "?"), s.get("name") or s.get("source") or "-", s.get("state", "?"),
             str(s.get("restarts", 0)), number(s.get("frames")), s.get("last_error") or "-"]
            for s in sources
        ], right=(3, 4))
    encoders = status.get("encoders") or []
    if encoders:
        lines.append("")
        lines += table(["ENCODER", "TIER", "ENCODED", "FRAMES", "KEY FRAMES", "TARGET kbit/s"], [
            [e.get("codec", "?"), e.get("tier") or "-", _encoded(e), number(e.get("frames")),
             number(e.get("keyframes")), kbits(e.get("target_bitrate_bps"))]
            for e in encoders
        ], right_from=3)

    tasks = status.get("tasks") or []
    if tasks:
        lines.append("")
        lines.append("tasks       " + ", ".join(
            f"{t.get('name')} {t.get('state')}"
            + (f" ({t['restarts']} restarts)" if t.get("restarts") else "") for t in tasks))
    for err in status.get("errors") or []:
        lines.append(f"last error  {when(err.get('at'))} {err.get('task')}: {err.get('error')}")
    res = status.get("resources") or {}
    if res:
        rss = res.get("rss_bytes")
        lines.append(f"resources   cpu {number(res.get('cpu_seconds'), 1)} s, "
                     f"rss {number(None if rss is None else rss / 1e6, 1)} MB, "
                     f"fds {res.get('fds', '-')}, threads {res.get('threads', '-')}, "
                     f"trio tasks {res.get('trio_tasks', '-')}, "
                     f"asyncio tasks {res.get('asyncio_tasks', '-')}")
    return "\n".join(lines)


def _encoded(encoder: dict[str, Any]) -> str:
    """The size an encoder runs at now, and its frame-rate limit: the lowest tier
    shrinks, then skips frames, on a slow link (media/pipeline.py)."""
    if not encoder.get("width"):
        return "-"
    fps = encoder.get("max_fps")
    return f"{encoder['width']}x{encoder['height']}" + (f" {fps:g} fps" if fps else "")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *,
          right: Sequence[int] = (), right_from: int | None = None) -> list[str]:
    """Aligned columns; numbers (columns in ``right``, or from ``right_from`` on) flush right."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            flush_right = i in right or (right_from is not None and i >= right_from)
            out.append(str(cell).rjust(widths[i]) if flush_right else str(cell).ljust(widths[i]))
        return "  ".join(out).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def kbits(bps: float | None) -> str:
    return "-" if bps is None else f"{bps / 1000:.1f}"


def number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if digits else f"{round(value)}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {s:02d}s" if minutes else f"{s}s"


def when(stamp: str | None) -> str:
    """``2026-01-02T03:04:05Z`` as ``2026-01-02 03:04:05 UTC``."""
    if not stamp:
        return "-"
    try:
        moment = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def dumps(status: dict[str, Any]) -> str:
    return json.dumps(status, indent=2, sort_keys=False)
