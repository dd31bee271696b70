"""The WHIP publisher's bookkeeping that needs no SFU (the rest: tests/integration/
test_publish_janus.py against a real Janus, test_whip_client.py against bad servers)."""

from glimpse_edge.config import AudioConfig, IceConfig, PublishConfig, VideoConfig
from glimpse_edge.media.hub import MediaHub
from glimpse_edge.publish.publisher import Publisher
from glimpse_edge.rtc.uplink import Uplink


def publisher(shared: list[Uplink | None]) -> Publisher:
    hub = MediaHub(VideoConfig(width=640, height=360), AudioConfig(), None, None)
    return Publisher(PublishConfig(whip_url="https://sfu.example/whip/cam"), hub,
                     IceConfig(servers=()), uplink=lambda: shared[0])


def test_the_session_takes_its_share_of_the_rooms_uplink() -> None:
    room: list[Uplink | None] = [None]
    pub = publisher(room)
    own = pub.feedback.uplink
    pub._join_uplink()  # no room (a pure publisher): its own estimate
    assert pub.feedback.uplink is own
    room[0] = shared = Uplink()
    pub._join_uplink()  # the next session reports where the peers do
    assert pub.feedback.uplink is shared


def test_the_state_before_any_session() -> None:
    state = publisher([None]).state()
    assert (state.state, state.url, state.sessions, state.reconnects) == (
        "starting", "https://sfu.example/whip/cam", 0, 0)
    assert state.bitrate_bps is None and state.resource is None and state.codec is None
    assert state.tier is None  # this hub has no video source
