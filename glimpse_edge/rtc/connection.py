"""One RTCPeerConnection and what hangs off it, and the events it reports.

A :class:`~.peer.PeerSession` makes any number of connections to its
participant, one at a time (plus, briefly, one whose path was declared dead
and is kept open beside its replacement). Each is a :class:`Connection`:
its negotiation state, its liveness, and the media queues its tracks read.
Two modules work on it: ``peer.py`` (negotiation and lifecycle) and
``feedback.py`` (what its RTCP says). Everything the connection reports
from the asyncio side arrives at the session's task as one of the events
below, tagged with the connection's generation so that a late event of a
replaced connection is recognised and ignored.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..media.fanout import PacketQueue, PacketStream
from ..signaling.messages import IceCandidate
from .pacer import Pacer
from .tracks import FrameTrack, PacketTrack

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection, RTCRtpTransceiver

    from ..display.decode import VideoDecoder

__all__ = [
    "ConnState",
    "Connection",
    "ConnectionEvent",
    "PathRevived",
    "PcStateChanged",
    "TierChosen",
    "TrackEnded",
]

ConnState = Literal["offering", "negotiated", "connected", "closed"]


@dataclass(frozen=True)
class PcStateChanged:
    """aiortc's ``connectionstatechange``."""

    generation: int
    state: str


@dataclass(frozen=True)
class TrackEnded:
    """One of our tracks ended (aiortc's sender stopped it)."""

    generation: int
    kind: str


@dataclass(frozen=True)
class PathRevived:
    """RTCP arrived again on a connection whose path was declared dead."""

    generation: int


@dataclass(frozen=True)
class TierChosen:
    """The bandwidth estimate asks for another quality tier."""

    generation: int
    tier: int


ConnectionEvent = PcStateChanged | TrackEnded | PathRevived | TierChosen


@dataclass
class Connection:
    """One RTCPeerConnection and what hangs off it."""

    generation: int
    pc: RTCPeerConnection
    role: Literal["offerer", "answerer"]
    tracks: dict[str, PacketTrack | FrameTrack]
    transceivers: dict[str, RTCRtpTransceiver]
    state: ConnState = "offering"
    since: float = field(default_factory=time.monotonic)
    remote_ufrag: str | None = None
    has_remote: bool = False
    pending: list[IceCandidate | None] = field(default_factory=list)
    last_rtcp: float = 0.0
    connected_at: float | None = None
    lingering: bool = False  # declared dead, kept open in case the path comes back
    dead_at: float | None = None
    revived: bool = False
    codec: str | None = None
    subscriptions: list[tuple[PacketStream, PacketQueue]] = field(default_factory=list)
    released_bytes: int = 0  # video sent from queues no longer subscribed (tier switches)
    pacer: Pacer | None = None  # paces the video sender once negotiated (rtc/pacer.py)
    repair_task: asyncio.Task[None] | None = None  # resends sent again (rtc/repair.py)
    padding_task: asyncio.Task[None] | None = None  # a probe's padding (rtc/uplink.py)
    # the display's decoders of the remote video, by codec, made on its first frame
    decoders: dict[str, VideoDecoder] = field(default_factory=dict)
    shown_at: float | None = None  # the last decoded frame (monotonic; set by a decoder)
    no_video_at: float | None = None  # the shown_at/connected_at "no video" was said for

    def video_stream(self) -> PacketStream | None:
        """The stream the video track reads now."""
        track = self.tracks.get("video")
        queue = track.queue if isinstance(track, PacketTrack) else None
        return next((s for s, q in self.subscriptions if q is queue), None)

    def release(self, queue: PacketQueue) -> None:
        """A track stopped reading ``queue``: unsubscribe it (never raises)."""
        for entry in list(self.subscriptions):
            if entry[1] is queue:
                self.subscriptions.remove(entry)
                self.released_bytes += queue.bytes_delivered
                entry[0].unsubscribe(queue)
