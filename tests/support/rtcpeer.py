"""An aiortc peer that behaves like Glimpse's browser client, for integration tests.

It joins the room over the real dev server and, like the browser client:
offers to newcomers on ``user_joined``, answers any offer (on its existing
connection when it has one), and on ``failed``/``closed`` builds a new
connection and offers again. It receives and decodes the agent's video and
audio and records what arrived, so tests can wait on frame counts.

aiortc runs inside the test's trio-asyncio loop (the test opens it with
``trio_asyncio.open_loop()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
import trio
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from trio_asyncio import aio_as_trio, trio_as_aio
from trio_websocket import ConnectionClosed, HandshakeError

from glimpse_edge.media.framecode import read_code
from glimpse_edge.rtc.closing import close_peer_connection
from glimpse_edge.rtc.sdp import ice_credentials

from .glimpse_client import GlimpseClient

RECONNECT_DELAY = 0.3


class ToneTrack(MediaStreamTrack):
    """A microphone that hears a sine: 20 ms s16 mono frames at 48 kHz, in real time.

    What a browser sends when its user talks, for tests of the agent's speaker.
    """

    kind = "audio"
    RATE = 48000
    SAMPLES = 960

    def __init__(self, frequency: float, dbfs: float = -12.0) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = 32767 * 10 ** (dbfs / 20)
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._pts / self.RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))  # real-time pacing
        n = np.arange(self._pts, self._pts + self.SAMPLES)
        wave = np.rint(self.amplitude * np.sin(2 * np.pi * self.frequency * n / self.RATE))
        frame = av.AudioFrame.from_ndarray(wave.astype(np.int16).reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate = self.RATE
        frame.pts = self._pts
        frame.time_base = Fraction(1, self.RATE)
        self._pts += self.SAMPLES
        return frame


class PatternTrack(MediaStreamTrack):
    """A camera that films the test pattern with its frame code, at 30 fps in real time.

    What a browser sends when its camera is on, for tests of the agent's display.
    The code carries the frame's counter and the wall-clock ms it was made.
    """

    kind = "video"
    FPS = 30

    def __init__(self, width: int = 640, height: int = 360) -> None:
        from glimpse_edge.media.testpattern import TestPatternSource

        super().__init__()
        self.source = TestPatternSource(width, height, self.FPS)
        self.n = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.n / self.FPS
        await asyncio.sleep(max(0.0, due - time.monotonic()))  # real-time pacing
        pts = self.n * 90_000 // self.FPS
        frame = self.source.render(self.n, int(time.time() * 1000), pts)
        frame.pts, frame.time_base = pts, Fraction(1, 90_000)
        self.n += 1
        return frame


@dataclass(frozen=True)
class RtpArrival:
    """One RTP packet of the remote's video as it arrived (``record_rtp``)."""

    at: float  # wall seconds
    sequence: int
    timestamp: int  # RTP: one value per frame
    marker: bool
    abs_send_time: int | None  # 6.18 fixed point seconds, 24 bits
    size: int  # payload bytes


@dataclass
class Received:
    """What one peer received from one remote participant."""

    video_frames: int = 0
    audio_frames: int = 0
    sizes: set[tuple[int, int]] = field(default_factory=set)
    codes: list[tuple[int, int, float]] = field(default_factory=list)  # counter, sent ms, recv ms
    first_frame_at: float | None = None
    last_frame_at: float | None = None
    audio_samples: list[Any] = field(default_factory=list)
    codec: str | None = None
    # (wall ms, width, height) of the first frame and of every change of size
    size_changes: list[tuple[float, int, int]] = field(default_factory=list)
    frame_times: list[float] = field(default_factory=list)  # wall ms of each video frame
    rtp: list[RtpArrival] = field(default_factory=list)  # video packets, with ``record_rtp``

    def fps_since(self, t_ms: float) -> float:
        """Video frames a second decoded from ``t_ms`` (wall ms) on."""
        times = [t for t in self.frame_times if t >= t_ms]
        return 1000 * (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0

    def longest_gap_ms(self, t0: float, t1: float) -> float:
        """The longest time between two decoded video frames within [t0, t1] (wall ms)."""
        times = [t for t in self.frame_times if t0 <= t <= t1]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


class BrowserPeer:
    """A Glimpse participant made of aiortc."""

    def __init__(
        self, name: str, *, read_codes: bool = False, keep_audio: int = 0,
        video_codecs: list[str] | None = None, send_tone: float | None = None,
        record_rtp: bool = False, send_video: tuple[int, int] | None = None,
    ) -> None:
        """``video_codecs`` (e.g. ["VP8"]) limits what this peer offers, like an old browser.

        ``record_rtp``: note every video RTP packet as it arrives
        (:attr:`Received.rtp`), to see how the sender spaced them.

        ``send_tone`` (Hz): send a sine as this participant's microphone
        (sendrecv audio) instead of only receiving.

        ``send_video`` (width, height): send the test pattern as this
        participant's camera (sendrecv video) instead of only receiving.
        """
        self.send_tone = send_tone
        self.send_video = send_video
        self.record_rtp = record_rtp
        self.name = name
        self.video_codecs = video_codecs
        self.client = GlimpseClient(name)
        self.read_codes = read_codes
        self.keep_audio = keep_audio
        self.pcs: dict[str, RTCPeerConnection] = {}
        # connections whose offer has gone out: only those can take an answer
        self._offered: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()
        self.received: dict[str, Received] = {}
        self.room_id = ""
        self._changed = trio.Condition()
        self._nursery: trio.Nursery | None = None
        self.offers_received = 0
        self._consumers: set[asyncio.Future[None]] = set()
        self.log: list[str] = []
        self.signaling_connects = 0  # times joined over a (new) WebSocket
        # Caps the REMB this peer's video receivers send, like a browser whose
        # own estimate says its link is slow (None: aiortc's estimate as is).
        self.remb_cap: int | None = None
        self._reconnecting = False
        self.reconnect_delay = RECONNECT_DELAY

    @property
    def user_id(self) -> str:
        assert self.client.user_id is not None
        return self.client.user_id

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Any, what: str, timeout: float = 30.0) -> None:
        with trio.move_on_after(timeout):
            while not predicate():
                async with self._changed:
                    with trio.move_on_after(0.5):
                        await self._changed.wait()
            return
        raise AssertionError(f"{self.name}: expected {what} within {timeout} s; received: "
                             f"{ {k: (v.video_frames, v.audio_frames, v.sizes) for k, v in self.received.items()} }; "  # noqa: E501
                             f"log: {self.log[-15:]}")

    async def wait_frames(self, peer_id: str, video: int, audio: int = 0,
                          timeout: float = 30.0) -> Received:
        def ok() -> bool:
            r = self.received.get(peer_id)
            return r is not None and r.video_frames >= video and r.audio_frames >= audio

        await self.wait_until(ok, f">= {video} video and >= {audio} audio frames from {peer_id}",
                              timeout)
        return self.received[peer_id]

    # -- connection handling ---------------------------------------------

    def _new_pc(self, peer_id: str) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: no network here
        self.pcs[peer_id] = pc
        rec = self.received.setdefault(peer_id, Received())

        @pc.on("track")  # type: ignore[misc]
        def on_track(track: Any) -> None:
            if track.kind == "video":
                for transceiver in pc.getTransceivers():
                    if transceiver.receiver.track is track:
                        self._cap_remb(transceiver.receiver)
                        if self.record_rtp:
                            self._record_rtp(transceiver.receiver, rec)
            task = asyncio.ensure_future(self._consume(peer_id, track, rec))
            self._consumers.add(task)
            task.add_done_callback(self._consumers.discard)

        @pc.on("connectionstatechange")  # type: ignore[misc]
        def on_state() -> None:
            self.log.append(f"{peer_id[:6]} {pc.connectionState}")
            if pc.connectionState in ("failed", "closed") and self.pcs.get(peer_id) is pc:
                assert self._nursery is not None
                with contextlib.suppress(RuntimeError):  # closed after we left: no re-offer
                    self._nursery.start_soon(self._reoffer, peer_id, pc)

        return pc

    def _cap_remb(self, receiver: Any) -> None:
        """Make the REMB this receiver sends respect :attr:`remb_cap`."""
        estimator = getattr(receiver, "_RTCRtpReceiver__remote_bitrate_estimator", None)
        if estimator is None:
            return
        add = estimator.add

        def capped_add(**kwargs: Any) -> Any:
            remb = add(**kwargs)
            if remb is None or self.remb_cap is None:
                return remb
            return min(remb[0], self.remb_cap), remb[1]

        estimator.add = capped_add

    @staticmethod
    def _record_rtp(receiver: Any, rec: Received) -> None:
        """Note each video packet before aiortc's receiver handles it (its private
        ``_handle_rtp_packet``, called per packet by the DTLS transport's router)."""
        handle = receiver._handle_rtp_packet

        async def recording(packet: Any, arrival_time_ms: int) -> None:
            rec.rtp.append(RtpArrival(time.time(), packet.sequence_number, packet.timestamp,
                                      bool(packet.marker), packet.extensions.abs_send_time,
                                      len(packet.payload)))
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = recording

    async def _consume(self, peer_id: str, track: Any, rec: Received) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.time() * 1000
            if isinstance(frame, av.VideoFrame):
                rec.video_frames += 1
                rec.sizes.add((frame.width, frame.height))
                rec.frame_times.append(now)
                if not rec.size_changes or rec.size_changes[-1][1:] != (frame.width,
                                                                        frame.height):
                    rec.size_changes.append((now, frame.width, frame.height))
                rec.first_frame_at = rec.first_frame_at or now
                rec.last_frame_at = now
                if self.read_codes:
                    # lower tiers are smaller, by any factor: the code was drawn at the
                    # widest size seen, or (a first frame on a lower tier) 2 or 4 times it
                    widest = max(w for w, _h in rec.sizes)
                    code = read_code(frame, (widest, 2 * frame.width, 4 * frame.width))
                    if code is not None:
                        rec.codes.append((code.counter, code.wall_ms, now))
            else:
                rec.audio_frames += 1
                if len(rec.audio_samples) < self.keep_audio:
                    rec.audio_samples.append(frame.to_ndarray().copy())
            if (rec.video_frames + rec.audio_frames) % 10 == 0:
                await trio_as_aio(self._notify)()

    async def _reoffer(self, peer_id: str, old: RTCPeerConnection) -> None:
        await trio.sleep(0.2)  # Glimpse waits 2 s; tests do not need to
        if self.pcs.get(peer_id) is old:
            try:
                await self.offer(peer_id)
            except InvalidStateError as exc:  # closed meanwhile (the other left)
                self.log.append(f"ignored (re-offer): {exc}")

    async def offer(self, peer_id: str, close_old_first: bool = True) -> None:
        """Offer on a new connection; the old one is closed before, or after the offer."""
        old = self.pcs.pop(peer_id, None)
        if old is not None and close_old_first:
            await aio_as_trio(close_peer_connection)(old)
        pc = self._new_pc(peer_id)
        if self.send_video is not None:
            video = pc.addTransceiver(PatternTrack(*self.send_video), direction="sendrecv")
        else:
            video = pc.addTransceiver("video", direction="recvonly")
        if self.video_codecs is not None:
            wanted = {f"video/{c}".lower() for c in [*self.video_codecs, "rtx"]}
            video.setCodecPreferences([
                c for c in RTCRtpReceiver.getCapabilities("video").codecs
                if c.mimeType.lower() in wanted])
        if self.send_tone is not None:
            pc.addTransceiver(ToneTrack(self.send_tone), direction="sendrecv")
        else:
            pc.addTransceiver("audio", direction="recvonly")
        offer = await aio_as_trio(pc.createOffer)()
        await aio_as_trio(pc.setLocalDescription)(offer)
        self._offered.add(pc)
        await self.signal(peer_id, "offer", {"type": "offer", "sdp": pc.localDescription.sdp})
        if old is not None and not close_old_first:
            await aio_as_trio(close_peer_connection)(old)

    async def signal(self, peer_id: str, kind: str, payload: Any) -> None:
        try:
            await self.client.signal(self.room_id, peer_id, kind, payload)
        except (ConnectionClosed, RuntimeError, trio.BrokenResourceError,
                trio.ClosedResourceError) as exc:
            if not self._reconnecting:
                raise
            # like a browser whose socket is down: the signal is lost
            self.log.append(f"signal lost ({kind}): {type(exc).__name__}")

    async def _on_message(self, msg: dict[str, Any]) -> None:
        try:
            await self._handle_message(msg)
        except InvalidStateError as exc:
            # a connection closed under an operation in flight (we are leaving,
            # or the other left meanwhile): a browser logs it and carries on
            self.log.append(f"ignored ({msg.get('type')}): {exc}")

    async def _handle_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if msg.get("userId") == self.client.user_id:
            pass
        elif kind == "user_joined":
            await self.offer(msg["userId"])
        elif kind in ("user_left", "user_offline"):
            pc = self.pcs.pop(msg["userId"], None)
            if pc is not None:
                await aio_as_trio(close_peer_connection)(pc)
        elif kind == "webrtc_signal":
            peer_id, signal_type, signal = msg["peerId"], msg["signalType"], msg["signal"]
            if signal_type == "offer":
                self.offers_received += 1
                pc = self.pcs.get(peer_id)
                if pc is not None and (pc.signalingState == "have-local-offer" or (
                    pc.remoteDescription is not None
                    and ice_credentials(pc.remoteDescription.sdp)
                    != ice_credentials(signal["sdp"]))):
                    # Glare or an ICE restart: a browser rolls back / restarts
                    # ICE on the same connection; aiortc cannot, so a new one.
                    self.pcs.pop(peer_id, None)
                    await aio_as_trio(close_peer_connection)(pc)
                    pc = None
                pc = pc or self._new_pc(peer_id)
                await aio_as_trio(pc.setRemoteDescription)(
                    RTCSessionDescription(signal["sdp"], "offer"))
                if self.send_tone is not None and not any(
                        t.sender.track is not None and t.kind == "audio"
                        for t in pc.getTransceivers()):
                    pc.addTrack(ToneTrack(self.send_tone))  # reuses the offered audio m-line
                if self.send_video is not None and not any(
                        t.sender.track is not None and t.kind == "video"
                        for t in pc.getTransceivers()):
                    pc.addTrack(PatternTrack(*self.send_video))  # the offered video m-line
                answer = await aio_as_trio(pc.createAnswer)()
                await aio_as_trio(pc.setLocalDescription)(answer)
                await self.signal(peer_id, "answer",
                                  {"type": "answer", "sdp": pc.localDescription.sdp})
            elif signal_type == "answer":
                pc = self.pcs.get(peer_id)
                if pc is None or pc.signalingState != "have-local-offer":
                    pass  # a browser drops an answer it has no offer for
                elif pc not in self._offered:
                    # Our new offer is still being set (aiortc says
                    # have-local-offer before it holds the description, and
                    # would fail on an answer then): the answer is to an
                    # offer of a connection since replaced.
                    self.log.append(f"{peer_id[:6]} answer before our offer went out: ignored")
                else:
                    self._offered.discard(pc)
                    try:
                        await aio_as_trio(pc.setRemoteDescription)(
                            RTCSessionDescription(signal["sdp"], "answer"))
                    except Exception as exc:
                        # a browser logs a failed answer; it is only harmless if
                        # the connection was closed or replaced meanwhile
                        if pc is self.pcs.get(peer_id) and pc.signalingState != "closed":
                            raise
                        self.log.append(f"{peer_id[:6]} late answer ignored: {exc!r}")
        await self._notify()

    async def _receive_loop(self) -> None:
        while True:
            msg = await self.client.recv(timeout=3600)
            self.log.append(str(msg.get("type")))
            await self._on_message(msg)

    @asynccontextmanager
    async def joined(
        self, ws_url: str, token: str, room_id: str, *, leave: bool = False,
        reconnect: bool = False,
    ) -> AsyncIterator[BrowserPeer]:
        """In the room for the block; ``leave`` ends membership (else: just goes offline).

        ``reconnect``: when the signaling socket is lost (the server went
        away), connect, authenticate and join again every ``reconnect_delay``
        seconds, as a browser does, while the peer connections carry on.
        """
        self.room_id = room_id
        if reconnect:
            self._reconnecting = True
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._stay_connected, ws_url, token, room_id)
                try:
                    yield self
                finally:
                    with trio.CancelScope(shield=True):
                        await self._close_all(leave)
                    nursery.cancel_scope.cancel()
            return
        async with self.client, trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.client.connect(ws_url)
            await self.client.authenticate(token)
            await self.client.join(room_id)
            self.signaling_connects += 1
            nursery.start_soon(self._receive_loop)
            try:
                yield self
            finally:
                with trio.CancelScope(shield=True):
                    await self._close_all(leave)
                nursery.cancel_scope.cancel()

    async def _close_all(self, leave: bool) -> None:
        """Leave (if asked) and close every connection, as a closing browser tab does;
        the connections are closed even when the signaling socket is already gone."""
        try:
            if leave:
                with trio.move_on_after(3):
                    await self.client.send({"type": "leave_room", "roomId": self.room_id})
        except ConnectionClosed as exc:
            self.log.append(f"leave_room not sent: {exc!r}")
        finally:
            for pc in list(self.pcs.values()):
                with trio.move_on_after(3) as scope:
                    scope.shield = True  # also when the peer's block is being cancelled
                    await aio_as_trio(close_peer_connection)(pc)

    async def _stay_connected(
        self, ws_url: str, token: str, room_id: str,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False
        while True:
            try:
                async with GlimpseClient(self.name) as client:
                    await client.connect(ws_url, timeout=3.0)
                    await client.authenticate(token, timeout=3.0)
                    await client.join(room_id, timeout=3.0)
                    self.client = client
                    self.signaling_connects += 1
                    self.log.append("signaling joined")
                    await self._notify()
                    if not started:
                        started = True
                        task_status.started()
                    await self._receive_loop()
            except (ConnectionClosed, HandshakeError, OSError, trio.TooSlowError,
                    trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.log.append(f"signaling lost: {type(exc).__name__}")
            except AssertionError as exc:  # an expected reply did not come (server died)
                self.log.append(f"signaling lost: {exc}")
            await trio.sleep(self.reconnect_delay)  # a retry pause, as a browser's

    def pc_for(self, peer_id: str) -> RTCPeerConnection:
        return self.pcs[peer_id]

    async def received_bytes(self, peer_id: str) -> int:
        """Bytes that reached the connection to ``peer_id`` (SRTP, RTP and RTCP), 0 if none."""
        pc = self.pcs.get(peer_id)
        if pc is None:
            return 0
        report = await aio_as_trio(pc.getStats)()
        return int(sum(s.bytesReceived for s in report.values() if s.type == "transport"))

    async def renegotiate(self, peer_id: str) -> None:
        """A new offer on the live connection (same ICE credentials), as on camera on/off."""
        pc = self.pcs[peer_id]
        offer = await aio_as_trio(pc.createOffer)()
        await aio_as_trio(pc.setLocalDescription)(offer)
        self._offered.add(pc)
        await self.signal(peer_id, "offer", {"type": "offer", "sdp": pc.localDescription.sdp})

    def blackhole(self, peer_id: str) -> None:
        """Silently drop everything this peer's connection sends (a dead path)."""
        pc = self.pcs[peer_id]
        for transceiver in pc.getTransceivers():
            connection = transceiver.receiver.transport.transport._connection
            for protocol in connection._protocols:
                protocol.transport.sendto = lambda *_a, **_k: None
