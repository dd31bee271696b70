"""What observe reads of a running agent: a read-only view.

Observe (metrics, status, the snapshot) reads the agent and never changes it.
It reads through :class:`AgentView`, which :class:`~glimpse_edge.agent.Agent`
implements, rather than through the agent's own structure (how it keeps its
room, sessions and peers together is the agent's business and changes with
it). So observe depends on this module, not on ``agent.py``; mypy checks that
the agent fits where the agent starts the endpoint (``run_observe(self, ...)``),
and a test serves the endpoint from a few plain objects in its place
(tests/test_observe_view.py).

Every member is something observe reads, named for what it means. Where it
reads a few members of a larger object (the signaling session, the room, a
peer session, the media hub), a protocol of its own lists them: the real
objects fit these without knowing of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    import av
    from aiortc import RTCPeerConnection

    from ..config import Config, VideoConfig
    from ..publish.state import PublishState
    from ..room import Participant
    from ..rtc.pacer import PacingState
    from ..rtc.uplink import UplinkState
    from ..supervise import HealthRegistry


class SessionView(Protocol):
    """The signaling session (:class:`~glimpse_edge.signaling.session.SignalingSession`)."""

    @property
    def state(self) -> str:
        """connecting, joining, joined, reconnecting, auth_rejected..."""

    @property
    def connects(self) -> int:
        """WebSocket connections established so far."""

    @property
    def auth_failures(self) -> int:
        """Times the server (or the login API) rejected the credentials."""

    @property
    def user_id(self) -> str | None:
        """Who the server says we are (None before the first authentication)."""

    @property
    def username(self) -> str: ...


class RoomView(Protocol):
    """The room model (:class:`~glimpse_edge.room.Room`)."""

    @property
    def room_id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def joined(self) -> bool: ...

    @property
    def participants(self) -> Sequence[Participant]:
        """The other participants, as the room lists them."""


class PeerView(Protocol):
    """The session with one participant (:class:`~glimpse_edge.rtc.peer.PeerSession`)."""

    @property
    def participant(self) -> Participant: ...

    @property
    def state(self) -> str:
        """idle, offering, negotiated, connected, closed."""

    @property
    def restarts(self) -> int:
        """Connections rebuilt for this peer."""

    @property
    def estimate_bps(self) -> int | None:
        """The peer's link estimate (None before the first receiver report)."""

    @property
    def video_tier(self) -> str | None:
        """The quality tier the peer is on, as "WIDTHxHEIGHT" (None without video)."""

    @property
    def pacing(self) -> PacingState | None:
        """The current connection's video pacer (None before negotiation)."""

    @property
    def keyframe_requests(self) -> tuple[int, int]:
        """Key frames the participant asked for (PLI, FIR), and how many were coalesced."""

    @property
    def connection(self) -> RTCPeerConnection | None:
        """The current connection (None between connections): observe reads its
        statistics (``getStats``), its senders and its descriptions, nothing else."""


class EncoderView(Protocol):
    """One shared video encoding (a software encoder, or a camera's own)."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def framerate(self) -> int: ...

    @property
    def bitrate(self) -> int:
        """The target bitrate."""

    @property
    def frames_encoded(self) -> int: ...

    @property
    def keyframes_encoded(self) -> int: ...

    @property
    def bytes_encoded(self) -> int: ...


class AudioStreamView(Protocol):
    """The shared Opus stream."""

    @property
    def published(self) -> int:
        """Packets encoded and offered to the peers."""

    @property
    def subscribers(self) -> int: ...


class HubView(Protocol):
    """The media hub (:class:`~glimpse_edge.media.hub.MediaHub`)."""

    @property
    def has_video(self) -> bool: ...

    @property
    def video_config(self) -> VideoConfig:
        """The video settings the hub runs on."""

    @property
    def video_source_name(self) -> str | None:
        """The running video source's own name (None before it started)."""

    @property
    def audio_source_name(self) -> str | None: ...

    @property
    def frames_in(self) -> int:
        """Frames (or packets, from a camera's own encoder) received from the source."""

    @property
    def latest_frame(self) -> av.VideoFrame | None:
        """The newest raw frame, shared with the encoders: only ever copy from it."""

    @property
    def latest_keyframe(self) -> tuple[str, Any] | None:
        """The newest key frame as (codec, packet), when there are no raw frames."""

    def encoders(self) -> Sequence[tuple[str, str, EncoderView]]:
        """The running video encodings as (codec, tier label "WxH", encoding), best first."""

    def audio_stream(self) -> AudioStreamView | None:
        """The Opus stream (None when audio is off)."""


class AgentView(Protocol):
    """Everything observe reads of the agent (see the module docstring)."""

    @property
    def config(self) -> Config:
        """The running configuration."""

    @property
    def config_path(self) -> Path:
        """The main configuration file."""

    @property
    def started_at(self) -> float:
        """Unix time."""

    @property
    def loaded_at(self) -> float:
        """When the running configuration was loaded (Unix time)."""

    @property
    def config_problem(self) -> str | None:
        """Why the last reload was refused (the previous configuration still runs)."""

    @property
    def health(self) -> HealthRegistry:
        """The supervised tasks' states; observe's own task reports into it too."""

    def status_line(self) -> str:
        """One line for people: what systemd's STATUS shows."""

    @property
    def session(self) -> SessionView | None:
        """The signaling session serving the room (None before the first one starts)."""

    @property
    def room(self) -> RoomView | None:
        """The room model (None before the first session starts)."""

    @property
    def peers(self) -> Mapping[str, PeerView]:
        """The peer sessions, by participant id."""

    @property
    def uplink(self) -> UplinkState | None:
        """The shared uplink estimate (rtc/uplink.py); None without a peer manager."""

    @property
    def publish(self) -> PublishState | None:
        """The WHIP publisher's session (publish/state.py); None while [publish] is unset."""

    @property
    def peers_refused(self) -> int:
        """Participants refused a session because ``peers.max_peers`` was reached."""

    @property
    def hub(self) -> HubView | None:
        """The media hub (None until the agent has built it)."""
