"""One key frame answers every reader that asked before it came (media/fanout.py).

The key-frame spiral of issue 15: viewers behind one congested uplink lose
the same burst, each sends PLIs, and each PLI answered with its own IDR is
another burst the link loses. These tests drive a real PacketStream and its
queues, with packets from a real encoder.
"""

from __future__ import annotations

from typing import Any

import av
import pytest
from trio_asyncio import aio_as_trio

from glimpse_edge.media.encoder import VideoEncoder
from glimpse_edge.media.fanout import KEYFRAME_ASK_EXPIRY, PacketQueue, PacketStream
from glimpse_edge.media.testpattern import TestPatternSource
from glimpse_edge.rtc.aio import open_aio_loop

WINDOW = 0.5


def packets(n: int) -> list[Any]:
    """``n`` access units: a key frame, then ``n - 1`` others."""
    source = TestPatternSource(160, 96, 30)
    enc = VideoEncoder("h264", 160, 96, 30, 200_000, keyframe_interval=100.0)
    out: list[av.Packet] = []
    for i in range(n):
        out += enc.encode(source.render(i, 0, i * 3000))
    assert out[0].is_keyframe and not any(p.is_keyframe for p in out[1:])
    return out


def stream_with_asks() -> tuple[PacketStream, list[int]]:
    stream = PacketStream("video", "h264/test", queue_len=30)
    asked: list[int] = []
    stream.on_need_keyframe = lambda: asked.append(1)
    return stream, asked


async def take_all(queue: PacketQueue) -> None:
    while len(queue):
        await aio_as_trio(queue.get_aio)()


async def test_readers_asking_together_get_one_key_frame() -> None:
    stream, asked = stream_with_asks()
    readers = [stream.subscribe(f"viewer{i}") for i in range(3)]
    assert len(asked) == 1, "three joins before the first key frame: one ask"
    key, *rest = packets(4)
    async with open_aio_loop():
        for packet in [key, *rest]:
            stream.publish(packet)
        for queue in readers:
            await take_all(queue)
        taken = readers[0].keyframe_taken_at
        assert taken is not None
        # all three lose the same burst after the window: each PLIs
        later = taken + WINDOW + 0.1
        passed = [queue.ask_keyframe(WINDOW, now=later) for queue in readers]
    assert passed == [True, True, True], "each reader's window was over"
    assert len(asked) == 2, "but the stream asked its encoder once"
    # three joins and three PLIs; two of each served by the one asked for first
    assert stream.keyframe_requests == 6 and stream.keyframe_requests_coalesced == 4
    assert [q.keyframe_asks for q in readers] == [1, 1, 1]


async def test_a_pli_sent_before_the_key_frame_arrived_is_answered_by_it() -> None:
    stream, asked = stream_with_asks()
    queue = stream.subscribe("viewer")
    key, *rest = packets(3)
    async with open_aio_loop():
        for packet in [key, *rest]:
            stream.publish(packet)
        await take_all(queue)
    taken = queue.keyframe_taken_at
    assert taken is not None
    assert not queue.ask_keyframe(WINDOW, now=taken + WINDOW / 2)
    assert queue.keyframe_asks_coalesced == 1 and len(asked) == 1
    assert queue.ask_keyframe(WINDOW, now=taken + WINDOW), "the window is over: asked"
    assert len(asked) == 2


def test_a_reader_still_waiting_for_a_key_frame_does_not_ask_again() -> None:
    stream, asked = stream_with_asks()
    queue = stream.subscribe("viewer")
    for _ in range(5):
        assert not queue.ask_keyframe(WINDOW)
    assert len(asked) == 1 and queue.keyframe_asks_coalesced == 5


def test_an_ask_the_encoder_never_answered_is_made_again() -> None:
    """An encoder restarted in between may have forgotten it: not waited on forever."""
    stream, asked = stream_with_asks()
    assert stream.keyframe_wanted(now=10.0)
    assert not stream.keyframe_wanted(now=10.0 + KEYFRAME_ASK_EXPIRY / 2)
    assert stream.keyframe_wanted(now=10.0 + KEYFRAME_ASK_EXPIRY)
    assert len(asked) == 2


@pytest.mark.parametrize("readers", [1, 4, 9])
def test_a_published_key_frame_ends_the_wait(readers: int) -> None:
    stream, asked = stream_with_asks()
    queues = [stream.subscribe(f"v{i}") for i in range(readers)]
    key, other = packets(2)
    stream.publish(key)
    stream.publish(other)
    assert all(q.started for q in queues)
    assert stream.keyframe_wanted(), "nothing pending once a key frame was published"
    assert len(asked) == 2


def test_a_polling_reader_takes_packets_as_get_aio_would() -> None:
    """``get_nowait`` (the self-view's decoder feed, on the publishing thread): the same
    packets in order, counted as delivered, its key frame noted; None when empty."""
    stream, _asked = stream_with_asks()
    queue = stream.subscribe("self-view")
    sent = packets(4)
    assert queue.get_nowait() is None
    for packet in sent:
        stream.publish(packet)
    taken = [queue.get_nowait() for _ in range(5)]
    assert taken == [*sent, None], taken
    assert queue.delivered == 4 and queue.bytes_delivered == sum(p.size for p in sent)
    assert queue.keyframe_taken_at is not None
