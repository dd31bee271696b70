"""Shared steps of the quality-tier tests (software encoders and the Pi camera)."""

from __future__ import annotations

from support.agent import AgentProcess
from support.rtcpeer import BrowserPeer, Received


async def climb_back(agent: AgentProcess, peer: BrowserPeer, got: Received,
                     size: tuple[int, int]) -> int:
    """Lift ``peer``'s REMB cap and see it climb back to the top tier.

    Waits for the agent to move the peer to the top stream ("h264"), for the
    peer to decode ``size`` again, and for the lower tier's encoder to stop
    once nobody is on it (after its idle time). Returns the event mark taken
    before the cap was lifted.
    """
    mark = len(agent.events)
    peer.remb_cap = None
    await agent.wait_for("peer.tier_changed", since=mark, peer=peer.user_id, stream="h264",
                         timeout=60)
    await peer.wait_until(lambda: got.size_changes[-1][1:] == size, "the full size again", 10)
    await agent.wait_for("media.encoder.stopped", since=mark, tier=1, timeout=30)
    return mark
