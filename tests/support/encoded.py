"""Real RTP video packets from aiortc's own encoders, for tests of what handles them."""

from __future__ import annotations

import fractions
from collections.abc import Collection

import av
import numpy as np
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

MIME = {"h264": "video/H264", "vp8": "video/VP8"}


def encoded_packets(codec: str, frames: int = 3, *, key_frames: Collection[int] = (0,),
                    first_sequence: int = 0, ssrc: int = 1) -> list[bytes]:
    """``frames`` frames of noise encoded by aiortc's ``codec`` encoder and packetized
    as its sender does: frames numbered in ``key_frames`` are key frames,
    sequence numbers consecutive from ``first_sequence``."""
    encoder = get_encoder(RTCRtpCodecParameters(mimeType=MIME[codec], clockRate=90000,
                                                payloadType=96))
    out: list[bytes] = []
    rng = np.random.default_rng(1)
    for n in range(frames):
        frame = av.VideoFrame.from_ndarray(
            rng.integers(0, 255, (180, 320, 3), dtype=np.uint8), format="rgb24")
        frame.pts, frame.time_base = n * 3000, fractions.Fraction(1, 90000)
        payloads, timestamp = encoder.encode(frame, force_keyframe=n in key_frames)
        for i, payload in enumerate(payloads):
            out.append(RtpPacket(payload_type=96,
                                 sequence_number=(first_sequence + len(out)) % 65536,
                                 timestamp=timestamp, marker=i == len(payloads) - 1,
                                 ssrc=ssrc, payload=payload).serialize())
    return out
