"""Quality tiers: the selector's rules, the lowest tier's floor, and real peers moving.

The end-to-end test runs the real agent, the dev server and two aiortc
receivers; one of them says its link is slow the way a browser does, with
REMB (its receiver's estimate is capped), and must get the lower tier while
the other keeps the full picture. The same under a real token-bucket cap is
tests/system/faults (scenario b).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Callable
from pathlib import Path

import av
import msgspec
import pytest
import trio
from aiortc.mediastreams import MediaStreamError
from support.agent import (
    STREAMING_HEIGHT,
    STREAMING_MAX_BITRATE,
    STREAMING_MEDIA,
    STREAMING_WIDTH,
    AgentProcess,
    write_config,
)
from support.devserver import DevServer
from support.glimpse_client import create_room, register
from support.rtcpeer import BrowserPeer
from support.tiering import climb_back

from glimpse_edge.config import ConfigError, QualityTier, VideoConfig, load_config
from glimpse_edge.media.fanout import PacketQueue, PacketStream
from glimpse_edge.media.pipeline import (
    LOW_FRAMERATE_SHARE,
    LOWEST_FPS,
    SCALE_UP_MARGIN,
    TIER_SCALES,
    LowestRate,
    lowest_tier_rate,
    scaled_size,
)
from glimpse_edge.rtc.bandwidth import BandwidthEstimator, RateMeter
from glimpse_edge.rtc.tiers import TierSelector, TierTuning, link_bps, video_budget
from glimpse_edge.rtc.tracks import PacketTrack

TOP, LOW = 800_000, 200_000


# -- the selector -----------------------------------------------------------------


def test_a_congested_peer_moves_down_at_once_to_the_tier_its_budget_keeps() -> None:
    sel = TierSelector([2_500_000, 1_200_000, 500_000])
    assert sel.update(0.0, 2_400_000) is None and sel.tier == 0
    assert sel.update(1.0, 1_000_000) == 1  # 1.0 M keeps 0.75 x 1.2 M
    sel = TierSelector([2_500_000, 1_200_000, 500_000])
    assert sel.update(1.0, 300_000) == 2  # straight to the bottom, no stop on the way
    assert sel.update(2.0, 10_000) is None, "nothing below the lowest tier"


def test_it_tries_the_tier_above_only_after_the_wait_and_backs_off_when_that_fails() -> None:
    tuning = TierTuning(probe_initial=8.0, probe_max=32.0, trial_window=8.0)
    sel = TierSelector([TOP, LOW], tuning)
    assert sel.update(0.0, 100_000) == 1
    # the budget is back at once, but the try waits for probe_wait
    assert sel.update(7.9, TOP) is None
    assert sel.update(8.0, TOP) == 0
    # congestion 2 s into the try: back down, and the next wait is twice as long
    assert sel.update(10.0, 300_000) == 1 and sel.failed_trials == 1
    assert sel.probe_wait == 16.0
    assert sel.update(25.9, TOP) is None and sel.update(26.0, TOP) == 0
    assert sel.update(27.0, 100_000) == 1 and sel.probe_wait == 32.0
    assert sel.update(60.0, 100_000) is None
    assert sel.update(200.0, TOP) == 0
    # this try holds for the trial window: the wait is reset
    assert sel.update(208.0, TOP) is None and sel.probe_wait == 8.0
    # a later drop is no failed try
    assert sel.update(300.0, 100_000) == 1 and sel.probe_wait == 8.0


def test_hysteresis_between_keeping_and_trying_a_tier() -> None:
    sel = TierSelector([TOP, LOW], TierTuning(probe_initial=0.0))
    keep, up = 0.75 * TOP, 0.95 * TOP
    assert sel.update(0.0, int(keep)) is None and sel.tier == 0  # just kept
    assert sel.update(1.0, int(keep) - 1) == 1
    assert sel.update(2.0, int(up) - 1) is None and sel.tier == 1  # not enough to try
    assert sel.update(3.0, int(up)) == 0


def test_new_tiers_keep_the_position_within_the_new_list() -> None:
    sel = TierSelector([TOP, 400_000, LOW])
    sel.update(0.0, 10_000)
    assert sel.tier == 2
    sel.set_bitrates([TOP])
    assert sel.tier == 0 and sel.update(1.0, 10_000) is None


def test_budget_and_link_are_inverse_and_leave_room_for_audio() -> None:
    assert video_budget(link_bps(TOP, True), True) in (TOP - 1, TOP)
    assert video_budget(64_000, True) == 0 and video_budget(10, True) == 0
    assert video_budget(1_000_000, False) > video_budget(1_000_000, True)


# -- the lowest tier's floor ---------------------------------------------------------


def test_the_lowest_tier_follows_its_worst_peer_then_lowers_its_frame_rate() -> None:
    """A tier that cannot be resized (the Pi's lores stream): frames are skipped."""
    tier = QualityTier(width=320, height=180, bitrate=LOW)
    assert lowest_tier_rate(tier, 30, 50_000, None) == LowestRate(LOW)
    assert lowest_tier_rate(tier, 30, 50_000, 10_000_000) == LowestRate(LOW)
    knee = int(LOW * LOW_FRAMERATE_SHARE)
    assert lowest_tier_rate(tier, 30, 50_000, knee + 50_000) == LowestRate(knee + 50_000)
    assert lowest_tier_rate(tier, 30, 50_000, knee) == LowestRate(knee)
    rate = lowest_tier_rate(tier, 30, 50_000, 55_000)
    assert (rate.bitrate, rate.scale) == (55_000, 1.0)
    assert rate.max_fps == pytest.approx(30 * 55_000 / knee)
    # below min_bitrate: the bitrate stops there, the frame rate goes on down to its floor
    assert lowest_tier_rate(tier, 30, 50_000, 1_000) == LowestRate(50_000, 1.0, 30 * 50_000 / knee)
    assert lowest_tier_rate(tier, 30, 10_000, 1_000).max_fps == LOWEST_FPS


@pytest.mark.parametrize("bitrate", [LOW, 800_000])
def test_a_resizable_lowest_tier_gets_smaller_before_it_gets_slower(bitrate: int) -> None:
    """Each size at the knee's bits per pixel and frame; frames skipped only below the
    smallest; a step up only with SCALE_UP_MARGIN to spare."""
    tier = QualityTier(width=640, height=360, bitrate=bitrate)
    knee = bitrate * LOW_FRAMERATE_SHARE

    def rate(demand: float, now: float = 1.0) -> LowestRate:
        return lowest_tier_rate(tier, 30, 10_000, int(demand), TIER_SCALES, now)

    assert rate(knee) == LowestRate(int(knee), 1.0)
    for big, small in itertools.pairwise(TIER_SCALES):
        edge = knee * small * small
        assert rate(knee * big * big - 1, big).scale == small, (big, small)
        assert rate(edge, big) == LowestRate(int(edge), small)
        # coming back up: the step's own threshold is not enough, the margin is
        assert rate(knee * big * big, small).scale == small
        assert rate(knee * big * big * SCALE_UP_MARGIN + 1, small).scale == big
    smallest = TIER_SCALES[-1]
    slow = rate(knee * smallest * smallest / 2)
    assert slow.scale == smallest and slow.max_fps == pytest.approx(15, abs=0.1)
    assert scaled_size(tier, 0.75) == (480, 270) and scaled_size(tier, 0.5) == (320, 180)
    assert all(n % 2 == 0 for n in scaled_size(QualityTier(width=1366, height=766,
                                                            bitrate=LOW), 0.75))


# -- REMB: a cap only when the receiver asks for less than we send ------------------


def test_a_remb_above_what_we_send_does_not_cap_the_estimate() -> None:
    est = BandwidthEstimator(150_000, 2_500_000)
    est.on_report(0.0, 0.0)
    # a receiver on a low tier reports ~1.5x what reaches it: no complaint
    assert est.on_remb(1.0, 330_000, sending_bps=220_000).estimate_bps == 2_500_000
    assert est.remb_bps == 330_000
    # below 0.8 x what we send: the receiver's queue grew, that caps
    assert est.on_remb(2.0, 150_000, sending_bps=220_000).estimate_bps == 150_000
    # unknown sending rate: a REMB caps, as before
    est = BandwidthEstimator(150_000, 2_500_000)
    assert est.on_remb(0.0, 400_000).estimate_bps == 400_000


def test_after_a_rise_a_lagging_remb_is_no_complaint_but_a_falling_one_is() -> None:
    est = BandwidthEstimator(150_000, 2_500_000)
    est.on_report(0.0, 0.0)
    assert est.on_remb(1.0, 330_000, sending_bps=220_000).estimate_bps == 2_500_000
    est.expect_rise(2.0, 10.0)  # a try of the tier above: we now send 2 Mbit/s
    assert est.on_remb(3.0, 356_000, sending_bps=2_000_000).estimate_bps == 2_500_000
    assert est.on_remb(4.0, 384_000, sending_bps=2_000_000).estimate_bps == 2_500_000
    assert est.on_remb(5.0, 300_000, sending_bps=2_000_000).estimate_bps == 300_000
    # once the rise is over, the level counts again
    est = BandwidthEstimator(150_000, 2_500_000)
    est.expect_rise(0.0, 10.0)
    est.on_remb(1.0, 500_000, sending_bps=2_000_000)
    assert est.on_remb(11.0, 500_000, sending_bps=2_000_000).estimate_bps == 500_000


def test_the_rate_meter_measures_a_window_and_restarts_with_a_new_counter() -> None:
    meter = RateMeter(window=2.0)
    assert meter.rate_bps() is None
    for i in range(11):
        meter.add(i * 0.5, i * 12_500)  # 25 kB/s
    assert meter.rate_bps() == pytest.approx(200_000)
    meter.add(6.0, 100)  # a smaller total: a new connection's counter
    assert meter.rate_bps() is None


# -- a track moving between streams -------------------------------------------------------


def packet(pts: int, key: bool = False) -> av.Packet:
    out = av.Packet(b"\0" * 100)
    out.pts, out.is_keyframe = pts, key
    return out


def test_a_track_switches_at_a_key_frame_of_a_picture_it_has_not_sent() -> None:
    async def scenario() -> None:
        top, low = PacketStream("video", "top", 30), PacketStream("video", "low", 30)
        released: list[str] = []

        def release(stream: PacketStream, name: str) -> Callable[[PacketQueue], None]:
            def unsubscribe(queue: PacketQueue) -> None:
                stream.unsubscribe(queue)
                released.append(name)
            return unsubscribe

        track = PacketTrack("video")
        track.bind(top.subscribe("peer"), release(top, "top"))
        top.publish(packet(0, key=True))
        top.publish(packet(1))
        assert [(await track.recv()).pts for _ in range(2)] == [0, 1]
        track.switch(low.subscribe("peer"), release(low, "low"))
        # the new stream's first packets are not key frames: dropped there, old goes on
        low.publish(packet(2))
        top.publish(packet(2))
        assert (await track.recv()).pts == 2 and track.pending is not None
        # a key frame of a picture already sent is no place to switch: a later one is
        low.publish(packet(2, key=True))
        top.publish(packet(3))
        assert (await track.recv()).pts == 3 and track.pending is not None
        # both streams' packets of picture 4, published together: the new key
        # frame takes the old packet's place
        top.publish(packet(4))
        low.publish(packet(4, key=True))
        got = await track.recv()
        assert (got.pts, got.is_keyframe) == (4, True)
        assert track.pending is None and released == ["top"] and top.subscribers == 0
        assert track.delivered == 5 and track.switches == 1
        # a switch cancelled before its key frame came releases its queue
        track.switch(top.subscribe("peer"), release(top, "top again"))
        track.cancel_switch()
        assert released == ["top", "top again"] and top.subscribers == 0

    asyncio.run(scenario())


def test_a_track_whose_stream_closed_says_so() -> None:
    """A stream that closes (the hub replaced its video pipeline: a camera that
    encodes found as the peer negotiated) ends the track as planned, which the
    peer logs as a source change, not as aiortc's RTP task dying (an error)."""
    async def scenario() -> None:
        stream = PacketStream("video", "top", 30)
        track = PacketTrack("video")
        track.bind(stream.subscribe("peer"), stream.unsubscribe)
        stream.publish(packet(0, key=True))
        assert (await track.recv()).pts == 0 and not track.source_closed
        stream.close()
        with pytest.raises(MediaStreamError):
            await track.recv()
        assert track.source_closed and track.readyState == "ended"
        stopped = PacketTrack("video")  # stopped by aiortc: not the source's doing
        stopped.bind(PacketStream("video", "other", 30).subscribe("peer"))
        stopped.stop()
        with pytest.raises(MediaStreamError):
            await stopped.recv()
        assert not stopped.source_closed

    asyncio.run(scenario())


# -- configuration -----------------------------------------------------------------------

MINIMAL = '[server]\nws_url = "ws://127.0.0.1:1/ws"\n[auth]\ntoken_file = "token"\n' \
    '[room]\nid = "lobby"\n'


def test_auto_tiers_halve_the_picture_and_quarter_the_rate() -> None:
    cfg = VideoConfig(width=1280, height=720, max_bitrate=2_500_000)
    assert [(t.width, t.height, t.bitrate) for t in cfg.quality_tiers()] == [
        (1280, 720, 2_500_000), (640, 360, 625_000)]
    small = VideoConfig(width=240, height=136, max_bitrate=300_000)
    assert len(small.quality_tiers()) == 1, "too small for a second encoder"
    assert len(msgspec.structs.replace(cfg, tiers=[]).quality_tiers()) == 1


@pytest.mark.parametrize(("tiers", "key", "reason"), [
    ("[{ width = 1920, height = 1080, bitrate = 500000 }]", "video.tiers[0]", "larger"),
    ("[{ width = 640, height = 360, bitrate = 3000000 }]", "video.tiers[0].bitrate",
     "between"),
    ("[{ width = 640, height = 360, bitrate = 500000 }, "
     "{ width = 320, height = 180, bitrate = 500000 }]", "video.tiers", "same bitrate"),
    ('"some"', "video.tiers", ""),
])
def test_bad_tiers_name_the_key(tmp_path: Path, tiers: str, key: str, reason: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"{MINIMAL}[video]\ntiers = {tiers}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.errors) == 1, str(info.value)
    assert key in str(info.value) and reason in str(info.value), str(info.value)


def test_explicit_tiers_come_out_best_first(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(MINIMAL + "[video]\ntiers = [{ width = 320, height = 180, bitrate = 300000 },\n"
                    "         { width = 960, height = 540, bitrate = 1200000 }]\n")
    tiers = load_config(path).video.quality_tiers()
    assert [t.bitrate for t in tiers] == [2_500_000, 1_200_000, 300_000]


# -- real peers ---------------------------------------------------------------------------

WIDTH, HEIGHT = STREAMING_WIDTH, STREAMING_HEIGHT
# a floor low enough for the lowest tier to show its size rule
MEDIA = STREAMING_MEDIA.replace("[video]\n", "[video]\nmin_bitrate = 50000\n")
assert TOP == STREAMING_MAX_BITRATE
LOW_SIZE = (WIDTH // 2, HEIGHT // 2)
# the sizes the low tier is encoded at as bob's link slows (its own, then smaller)
LOW_SIZES = {scaled_size(QualityTier(width=LOW_SIZE[0], height=LOW_SIZE[1], bitrate=LOW), s)
             for s in TIER_SCALES}


async def test_a_peer_that_says_its_link_is_slow_gets_the_low_tier_alone(
    devserver: DevServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    names = ("alice", "bob", "device", "owner")
    accounts = {n: await register(devserver.api_url, n, f"{n}-password") for n in names}
    room_id = await create_room(devserver.api_url, accounts["owner"][1], "Room")
    device_id = accounts["device"][0]
    config = write_config(tmp_path, ws_url=devserver.ws_url, room_id=room_id,
                          token=accounts["device"][1], log_level="info", extra=MEDIA)
    agent = AgentProcess(config)
    await agent.start(nursery)
    await agent.wait_for("room.joined", timeout=20)
    alice, bob = BrowserPeer("alice"), BrowserPeer("bob")
    async with alice.joined(devserver.ws_url, accounts["alice"][1], room_id), \
            bob.joined(devserver.ws_url, accounts["bob"][1], room_id):
        got_alice = await alice.wait_frames(device_id, video=30)
        got_bob = await bob.wait_frames(device_id, video=30)
        assert got_bob.sizes == {(WIDTH, HEIGHT)}, got_bob.sizes

        # 1. bob's receiver says 60 kbit/s: bob alone moves to the low tier, at a key
        #    frame, without a gap; the low tier's rate follows him, then its size
        mark = len(agent.events)
        bob.remb_cap = 60_000
        changed = await agent.wait_for("peer.tier_changed", since=mark, peer=bob.user_id,
                                       timeout=15)
        assert changed["stream"] == f"h264/{LOW_SIZE[0]}x{LOW_SIZE[1]}", changed
        await bob.wait_until(lambda: bool(got_bob.sizes & LOW_SIZES), "the low tier's size", 10)
        switched_at = next(t for t, w, h in got_bob.size_changes if (w, h) in LOW_SIZES)
        adapted = await agent.wait_for("media.tier.adapted", since=mark, timeout=15,
                                       where=lambda e: e.get("width", 0) < LOW_SIZE[0])
        small = (adapted["width"], adapted["height"])
        assert small in LOW_SIZES, (small, LOW_SIZES)
        await bob.wait_until(lambda: small in got_bob.sizes, f"the smaller size {small}", 10)
        resized_at = next(t for t, w, h in got_bob.size_changes if (w, h) == small)
        n = got_bob.video_frames
        await bob.wait_frames(device_id, video=n + 45)
        fps = got_bob.fps_since(got_bob.frame_times[n])
        print(f"low tier adapted to {adapted['bitrate']} bit/s, {small}, at "
              f"{adapted['max_fps'] or 'full'} fps; bob decoded {fps:.1f} fps")
        if adapted["max_fps"] is None:  # smaller, and every frame
            assert fps > 24, (fps, adapted)
        else:  # the smallest size, and frames skipped too
            assert small == min(LOW_SIZES) and 0.7 < fps / adapted["max_fps"] < 1.2, \
                (fps, adapted)
        for at, what in ((switched_at, "the switch waits for the new stream's key frame"),
                         (resized_at, "the new size starts at its own key frame")):
            assert got_bob.longest_gap_ms(at - 2000, at + 2000) < 500, f"{what}: no freeze"
        # alice never left the top tier
        a0 = got_alice.video_frames
        await alice.wait_frames(device_id, video=a0 + 30)
        assert got_alice.sizes == {(WIDTH, HEIGHT)}, got_alice.size_changes
        assert not agent.find("peer.tier_changed", peer=alice.user_id)
        assert got_alice.fps_since(got_alice.frame_times[a0]) > 25

        # 2. a reload without lower tiers puts bob back on the one encoding at once;
        #    with them again, his link sends him down again. The one encoding is
        #    the lowest tier now, and follows its worst peer (docs/decisions.md,
        #    "The lowest tier follows"): bob sees it at the full size, or at the
        #    size it adapted to for him, whichever came first
        dropin = config.parent / "config.d" / "50-tiers.toml"
        dropin.parent.mkdir(exist_ok=True)
        dropin.write_text("[video]\ntiers = []\n")
        mark = len(agent.events)
        agent.signal(signal.SIGHUP)
        await agent.wait_for("config.reloaded", since=mark, timeout=10)
        await agent.wait_for("peer.tier_changed", since=mark, peer=bob.user_id, stream="h264",
                             timeout=10)
        n = got_bob.video_frames

        def on_the_one_encoding() -> bool:
            sizes = {(WIDTH, HEIGHT)} | {(e["width"], e["height"]) for e in agent.find(
                "media.tier.adapted", since=mark, stream="h264")}
            return got_bob.video_frames >= n + 15 and got_bob.size_changes[-1][1:] in sizes

        await bob.wait_until(on_the_one_encoding, "15 frames of the one encoding after the "
                             "reload, at the full size or the size it adapted to", 10)
        dropin.unlink()
        mark = len(agent.events)
        agent.signal(signal.SIGHUP)
        # (if the move up had not completed yet, bob simply stays where he is)
        await agent.wait_for("peer.tier_chosen", since=mark, peer=bob.user_id, tier=1,
                             timeout=15)
        await bob.wait_until(lambda: got_bob.size_changes[-1][1:] in LOW_SIZES,
                             "the low tier's size again", 10)

        # 3. the cap is lifted: bob's estimate climbs, a try of the top tier holds
        await climb_back(agent, bob, got_bob, (WIDTH, HEIGHT))
        await agent.stop()
    errors = [e for e in agent.events if e.get("level") == "error"]
    assert not errors, errors[:5]
