"""Network namespaces for fault tests: hosts on one bridge, links that can be cut.

Layout (``N`` is a third octet chosen per run, so concurrent runs on one
machine do not collide)::

    root namespace ──veth── ┐
      10.77.N.254           │   <prefix>-br: bridge br0, nftables "gefault"
    <prefix>-agent ──veth── ┤   (one chain per port: cut / loss rules)
      10.77.N.10            │
    <prefix>-p1    ──veth── ┤
      10.77.N.11            │
    ...                     ┘

Each host namespace has only its veth (``eth0``) and ``lo``, and no default
route: traffic can reach the other test hosts and the root namespace's
10.77.N.254 (where the tests run the dev server), nothing else. Faults are
applied in the bridge namespace, in the middle of the path, so both ends see
what a real network does to them: packets vanish, sockets stay open.

Everything is named with a per-process prefix (``gef<pid>``) and removed in
:meth:`FaultNet.close`; namespaces left by a run that was killed are removed
by the next run (their pid is gone).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

SUBNET_PREFIX = "10.77"
ROOT_HOST = 254
TABLE = "gefault"
_NAME = re.compile(r"^gef(\d+)-")


class NetnsUnavailable(Exception):
    """Not root, or the kernel/tools cannot make namespaces: the caller skips."""


async def _run(*cmd: str, check: bool = True, stdin: bytes | None = None) -> str:
    result = await trio.run_process(list(cmd), capture_stdout=True, capture_stderr=True,
                                    check=False, stdin=stdin)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {result.returncode}: "
                           f"{result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode(errors="replace")


def unavailable_reason() -> str | None:
    """Why namespace tests cannot run here (None: they can).

    Only "not root" and "no network namespaces" skip; a missing nft or
    turnserver is a broken set-up (scripts/setup-env.sh installs them) and
    fails the tests that need it, with the tool's error.
    """
    if os.geteuid() != 0:
        return "fault tests need root (ip netns, nftables)"
    probe = f"gef{os.getpid()}-probe"
    try:
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False)
    except OSError as exc:
        return f"'ip netns add' fails here: {exc}"
    if made.returncode != 0:
        return f"'ip netns add' fails here: {made.stderr.decode(errors='replace').strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def remove_stale() -> None:
    """Delete namespaces of earlier runs whose process is gone (a killed test run)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, check=False)
    for line in listed.stdout.decode(errors="replace").splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME.match(name)
        if m and not os.path.exists(f"/proc/{m[1]}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _free_octet() -> int:
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, check=False)
    taken = {int(m) for m in re.findall(rf"{re.escape(SUBNET_PREFIX)}\.(\d+)\.",
                                        used.stdout.decode(errors="replace"))}
    choices = [n for n in range(1, 250) if n not in taken]
    return random.choice(choices)


@dataclass
class FaultNet:
    """A bridge namespace, one namespace per host, and the root namespace attached."""

    prefix: str = field(default_factory=lambda: f"gef{os.getpid()}")
    octet: int = 0
    hosts: dict[str, str] = field(default_factory=dict)  # name -> address

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}-br"

    @property
    def root_address(self) -> str:
        """Where hosts reach the root namespace (the dev server listens here)."""
        return f"{SUBNET_PREFIX}.{self.octet}.{ROOT_HOST}"

    @property
    def root_link(self) -> str:
        return f"{self.prefix}r"[:15]

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def exec_prefix(self, host: str) -> list[str]:
        """Prepend to a command to run it inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.ns(host)]

    def address(self, host: str) -> str:
        return self.hosts[host]

    async def start(self, hosts: Sequence[str]) -> None:
        remove_stale()
        self.octet = self.octet or _free_octet()
        br = self.bridge_ns
        await _run("ip", "netns", "add", br)
        await _run("ip", "-n", br, "link", "set", "lo", "up")
        await _run("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        await _run("ip", "-n", br, "link", "set", "br0", "up")
        nft = ["ip", "netns", "exec", br, "nft"]
        await _run(*nft, "add", "table", "bridge", TABLE)
        await _run(*nft, "add", "chain", "bridge", TABLE, "links",
                   "{ type filter hook forward priority 0; policy accept; }")
        # the root namespace: its end keeps our prefix, the bridge's end is "root"
        await _run("ip", "link", "add", self.root_link, "type", "veth", "peer", "name", "root",
                   "netns", br)
        await _run("ip", "addr", "add", f"{self.root_address}/24", "dev", self.root_link)
        await _run("ip", "link", "set", self.root_link, "up")
        await self._port("root")
        for i, host in enumerate(hosts):
            ns = self.ns(host)
            await _run("ip", "netns", "add", ns)
            await _run("ip", "-n", ns, "link", "set", "lo", "up")
            await _run("ip", "-n", br, "link", "add", host, "type", "veth", "peer", "name", "eth0",
                       "netns", ns)
            address = f"{SUBNET_PREFIX}.{self.octet}.{10 + i}"
            await _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            await _run("ip", "-n", ns, "link", "set", "eth0", "up")
            await self._port(host)
            self.hosts[host] = address

    async def _port(self, name: str) -> None:
        br = self.bridge_ns
        await _run("ip", "-n", br, "link", "set", name, "master", "br0")
        await _run("ip", "-n", br, "link", "set", name, "up")
        nft = ["ip", "netns", "exec", br, "nft"]
        await _run(*nft, "add", "chain", "bridge", TABLE, f"h_{name}")
        for direction in ("iifname", "oifname"):
            await _run(*nft, "add", "rule", "bridge", TABLE, "links", direction, name,
                       "jump", f"h_{name}")

    async def _nft(self, *args: str) -> None:
        await _run("ip", "netns", "exec", self.bridge_ns, "nft", *args)

    async def cut(self, host: str) -> None:
        """Drop everything to and from ``host`` (its cable pulled; its sockets stay open)."""
        await self.clear(host)
        await self._nft("add", "rule", "bridge", TABLE, f"h_{host}", "drop")

    async def loss(self, host: str, percent: int) -> None:
        """Drop ``percent`` % of the packets to and from ``host``, at random."""
        await self.clear(host)
        await self._nft("add", "rule", "bridge", TABLE, f"h_{host}", "numgen", "random", "mod",
                        "100", "<", str(int(percent)), "drop")

    async def cap(self, host: str, kbit: int, burst_bytes: int = 16_000,
                  latency_ms: int = 100) -> None:
        """Limit what reaches ``host`` to ``kbit`` kbit/s (a token bucket on its port).

        ``tc qdisc tbf`` on the bridge's end of the host's cable, so the
        host's downlink — what it receives — is shaped: packets wait up to
        ``latency_ms`` in the bucket's queue, then are dropped, as in front
        of a slow access link.
        """
        await _run("ip", "netns", "exec", self.bridge_ns, "tc", "qdisc", "replace", "dev", host,
                   "root", "tbf", "rate", f"{int(kbit)}kbit", "burst", str(int(burst_bytes)),
                   "latency", f"{int(latency_ms)}ms")

    async def uncap(self, host: str) -> None:
        """Lift :meth:`cap` (nothing happens if the link was not capped)."""
        await _run("ip", "netns", "exec", self.bridge_ns, "tc", "qdisc", "del", "dev", host,
                   "root", check=False)

    async def cap_uplink(self, host: str, kbit: int, burst_bytes: int = 16_000,
                         latency_ms: int = 150) -> None:
        """Limit what ``host`` sends to ``kbit`` kbit/s: a weak Wi-Fi uplink.

        :meth:`cap` shapes a host's downlink on the bridge's end of its
        cable, which models one viewer's slow access link. A device on weak
        Wi-Fi is limited the other way round: its *upload* is the
        bottleneck, and every viewer's stream queues in the same transmit
        queue of the same radio. So this puts ``tc qdisc tbf`` on the egress
        of the host's own ``eth0``, inside its namespace: every packet the
        host sends, to any peer, shares one bucket (``burst_bytes`` deep)
        and waits at most ``latency_ms`` in its queue before it is dropped,
        as in a Wi-Fi driver's queue in front of a slow link. What the host
        receives is untouched.
        """
        await _run(*self.exec_prefix(host), "tc", "qdisc", "replace", "dev", "eth0", "root",
                   "tbf", "rate", f"{int(kbit)}kbit", "burst", str(int(burst_bytes)),
                   "latency", f"{int(latency_ms)}ms")

    async def uplink_counters(self, host: str) -> tuple[int, int, int]:
        """What :meth:`cap_uplink`'s tbf saw so far: (bytes sent, packets sent, dropped).

        The link's own view, beside what the agent thinks it sends: the
        scenario reports the rate that really left and the share dropped.
        """
        out = await _run(*self.exec_prefix(host), "tc", "-s", "qdisc", "show", "dev", "eth0")
        found = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+)", out)
        if found is None:
            raise RuntimeError(f"no tbf counters on {host}'s eth0: {out.strip()!r}")
        return int(found[1]), int(found[2]), int(found[3])

    async def uncap_uplink(self, host: str) -> None:
        """Lift :meth:`cap_uplink` (nothing happens if the uplink was not capped)."""
        await _run(*self.exec_prefix(host), "tc", "qdisc", "del", "dev", "eth0", "root",
                   check=False)

    async def clear(self, host: str) -> None:
        """Back to a clean link (drop rules; a :meth:`cap` stays until :meth:`uncap`)."""
        await self._nft("flush", "chain", "bridge", TABLE, f"h_{host}")

    async def close(self) -> None:
        """Remove everything this net made (also after a failure half-way through start)."""
        for host in [*self.hosts, "br"]:
            await _run("ip", "netns", "del", self.ns(host), check=False)
        # the root end normally goes with the bridge namespace; make sure
        await _run("ip", "link", "del", self.root_link, check=False)
        # hosts whose start failed before they were recorded
        listed = await _run("ip", "netns", "list", check=False)
        for line in listed.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(f"{self.prefix}-"):
                await _run("ip", "netns", "del", name, check=False)
        self.hosts.clear()


@asynccontextmanager
async def fault_net(hosts: Sequence[str]) -> AsyncIterator[FaultNet]:
    """A started :class:`FaultNet`, removed when the block ends, however it ends."""
    net = FaultNet()
    try:
        await net.start(hosts)
        yield net
    finally:
        with trio.CancelScope(shield=True):
            await net.close()
