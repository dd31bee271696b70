"""Is the WHIP endpoint there, and does it take the token: one OPTIONS, nothing published.

RFC 9725 lets a client ask OPTIONS before offering (for ICE servers); it
carries the Bearer token like every request, so a server that checks it on
OPTIONS says 401/403 here. One that answers OPTIONS without looking at the
token (simple-whip-server does) can only be told "reachable": the token is
then checked by the first POST, which the doctor never sends.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from ..config import Config, SecretFileError, read_secret_file
from .network import tls_context

if TYPE_CHECKING:
    from .run import Doctor

__all__ = ["check_publish"]


async def check_publish(doctor: Doctor, config: Config) -> None:
    publish = config.publish
    if publish is None:
        doctor.add("publish", "skip", "no [publish]: nothing is published over WHIP")
        return
    from ..publish.whip import WhipClient, WhipError, redact

    url = redact(publish.whip_url)
    try:
        token = read_secret_file(publish.token_file) if publish.token_file else None
    except SecretFileError:
        doctor.add("publish", "skip", "publish.token_file cannot be read (see secrets)")
        return
    verify: ssl.SSLContext | bool = True
    if publish.ca_file is not None:
        context = tls_context(doctor, "publish", "publish.ca_file", publish.ca_file)
        if context is None:
            return
        verify = context
    try:
        async with WhipClient(publish.whip_url, token, timeout=doctor.timeout,
                              verify=verify) as client:
            status, links, allowed = await client.probe()
    except WhipError as exc:
        doctor.add("publish", "fail", f"WHIP endpoint {url}: {exc.reason}",
                   "check publish.whip_url, the network, and that the SFU runs")
        return
    details = [f"OPTIONS {url}: {status}"]
    if links:
        details.append("ICE servers offered: " + ", ".join(s.url for s in links))
    if allowed:
        details.append("allows: " + ", ".join(sorted(allowed)))
    if status in (401, 403):
        doctor.add("publish", "fail", f"WHIP endpoint {url} refused the token ({status})",
                   "provision the right token into publish.token_file (a new file is "
                   "picked up without a restart)", details)
    elif status == 404:
        doctor.add("publish", "fail", f"WHIP endpoint {url} does not exist (404)",
                   "check the path in publish.whip_url (create the endpoint on the SFU)",
                   details)
    elif 200 <= status < 300:
        doctor.add("publish", "pass", f"WHIP endpoint {url} answers"
                   + (" (token sent; servers that check it on OPTIONS accepted it)"
                      if token else ""), details=details)
    else:
        doctor.add("publish", "warn", f"WHIP endpoint {url} is reachable but answered "
                   f"OPTIONS with {status}; the token is checked when publishing",
                   details=details)
