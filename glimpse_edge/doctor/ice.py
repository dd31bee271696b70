"""Do the configured STUN and TURN servers answer (TURN credentials tried)?

Without them only peers on the same network can connect; the probe itself
is :mod:`glimpse_edge.netprobe`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import Config, read_secret_file

if TYPE_CHECKING:
    from .report import Status
    from .run import Doctor

__all__ = ["check_ice"]


async def check_ice(doctor: Doctor, config: Config, secrets_ok: bool) -> None:
    from ..netprobe import probe_ice_server

    servers = config.ice.servers
    if not servers:
        doctor.add("ice", "warn", "no STUN/TURN servers: only peers on the same network "
                   "can connect", "add [[ice.servers]] (a STUN server, and a TURN server "
                   "for networks that block UDP)")
        return
    details: list[str] = []
    worst: Status = "pass"
    ca_file = config.server.ca_file if config.server else None
    for i, server in enumerate(servers):
        credential = None
        if server.credential_file is not None and secrets_ok:
            credential = read_secret_file(server.credential_file)
        for url in server.urls:
            result = await probe_ice_server(url, username=server.username,
                                            credential=credential, ca_file=ca_file,
                                            timeout=min(doctor.timeout, 3.0))
            mark = "ok" if result.ok else "FAILED"
            details.append(f"ice.servers[{i}] {url}: {mark}: {result.summary}")
            if not result.ok:
                details.append(f"  fix: {result.fix}")
                worst = "fail"
    answered = sum(line.split(": ", 2)[1] == "ok" for line in details if ": " in line
                   and line.startswith("ice.servers"))
    total = sum(len(s.urls) for s in servers)
    if worst == "fail" and answered:
        worst = "warn"  # some path still works
    summary = f"{answered} of {total} STUN/TURN server URL{'s' * (total != 1)} answered"
    doctor.add("ice", worst, summary, "see each line above" if worst != "pass" else "",
               details)
