"""The V4L2 (VC4 hardware codec) encoder, as picamera2's ``encoders/v4l2_encoder.py``.

The device is emulated: ``/dev/null`` opened in its place (a real fd, so fd
counts show what a failed start leaves open), "ioctls" that fail where the
driver does, and libx264 (``_x264``) in place of the codec block. The codec's
two queues are as the driver's: 16 input buffers that ``_encode`` takes (a
blocking ``get()``: the camera thread waits, holding the encoder's lock, while
all 16 are with the codec) and that come back as the codec reads them, and
the encoded buffers that ``thread_poll`` hands to the outputs from its own
thread. Each input buffer holds its camera request until it comes back.

Releases: before 0.3.26 an input buffer (and its request) came back only
together with an encoded buffer, and every encoded buffer was output,
SPS/PPS alone included; 0.3.26 added ``_check_for_picture`` and returns
input buffers on their own. Forced key frames came with 0.3.32.
"""

from __future__ import annotations

import errno
import queue
import threading
import time
from typing import Any

from .. import _hardware
from . import _x264
from .encoder import Encoder

NUM_OUTPUT_BUFFERS = 16  # the codec's input queue (V4L2 "OUTPUT")
NUM_CAPTURE_BUFFERS = 16
MAX_SIZE = 1920
BITRATE_RANGE = (25_000, 25_000_000)
_V4L2_FORMATS = ("RGB888", "BGR888", "XBGR8888", "XRGB8888", "YUV420")
_PICTURE_CHECK = _hardware.version_at_least(0, 3, 26)
_FORCE_KEY_FRAME = _hardware.version_at_least(0, 3, 32)


class _Device:
    """/dev/video11 as the encoder uses it: the codec behind its two queues.

    The codec works in the poll thread's ``poll`` (as the hardware would, in
    parallel, with the poll thread waiting on it). Faults (the control file):
    ``stall-encoder`` (frames are read, nothing comes out), ``skip-frame``
    (rate control drops one frame), ``hang-encoder`` (the codec stops reading
    frames and producing output, for good; stand-in: until release_hangs).
    """

    def __init__(self, encoder: V4L2Encoder) -> None:
        self.file = open("/dev/null", "rb+", buffering=0)  # noqa: SIM115 - closed by _stop
        self._encoder = encoder
        self._input: queue.Queue[tuple[int, Any, str, int, bool]] = queue.Queue()
        self.codec: _x264.Codec | None = None
        self.streaming = False
        self.error_polls = 0
        self._stalled = False
        self._hang: Any = None  # the release token of a hang in progress

    def queue_input(self, index: int, request: Any, stream: str, timestamp_us: int,
                    force: bool) -> None:
        """VIDIOC_QBUF on the input queue: the camera buffer, by reference (dmabuf)."""
        self._input.put((index, request, stream, timestamp_us, force))

    def poll(self, timeout: float) -> list[tuple[str, Any]]:
        """Wait up to ``timeout`` for the codec: [("in", index)] for an input buffer it
        has read, [("out", (bytes, key frame, timestamp))] for each encoded buffer."""
        encoder = self._encoder
        if not self.streaming:
            # Neither queue streams (a start that failed before VIDIOC_STREAMON): the
            # driver's poll returns EPOLLERR at once, and thread_poll goes round again,
            # using a whole core until the encoder is stopped (the stand-in naps 5 ms).
            time.sleep(0.005)
            self.error_polls += 1
            return [("err", None)]
        if self._hang is None and _hardware.take_command(encoder._fault("hang-encoder")):
            self._hang = _hardware.hang_token()
        if self._hang is not None:
            if not _hardware.wait_released(self._hang, timeout):
                return []
            self._hang = None
        try:
            index, request, stream, timestamp_us, force = self._input.get(timeout=timeout)
        except queue.Empty:
            return []
        events: list[tuple[str, Any]] = [("in", index)]
        if not self._stalled and _hardware.take_command(encoder._fault("stall-encoder")):
            self._stalled = True
        if self._stalled or self.codec is None:
            return events  # a frozen codec: frames go in, nothing comes out
        array = request.request.buffers[request.stream_map[stream]].array
        if _hardware.take_command(encoder._fault("skip-frame")):
            headers = self.codec.skip(array, timestamp_us, force)
            if headers is not None:
                events.append(("out", (headers, True, timestamp_us)))
            return events
        for data, key in self.codec.encode(array, timestamp_us, force):
            events.append(("out", (data, key, timestamp_us)))
        return events


class V4L2Encoder(Encoder):
    def __init__(self, bitrate: int | None, pixformat: str) -> None:
        super().__init__()
        self.bufs: dict[int, Any] = {}
        self.bitrate = bitrate
        self._pixformat = pixformat
        self._controls: list[tuple[str, Any]] = []
        self.vd: Any = None
        self.framerate: float | None = None
        self._enable_framerate = False
        if _FORCE_KEY_FRAME:
            self._key_frames_requested = 0
            self._key_frames_generated = 0

    def _v4l2_format(self) -> str:
        if self._format not in _V4L2_FORMATS:
            raise RuntimeError("Unrecognised format", self._format, "for V4L2")
        return str(self._format)

    def _start(self) -> None:
        """Open the device, start the poll thread, then the ioctls that can fail: a failed
        start leaves the device open and the poll thread running (it runs while _running)."""
        self._device = _Device(self)
        self.vd = self._device.file
        self.buf_available: queue.Queue[int] = queue.Queue()
        self.buf_frame: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self.thread_poll, args=(self.buf_available,),
                                       name=f"v4l2-encoder-{self.name}", daemon=True)
        self.thread.start()
        # VIDIOC_S_CTRL bitrate
        if self.bitrate is not None and not BITRATE_RANGE[0] <= self.bitrate <= BITRATE_RANGE[1]:
            raise OSError(errno.ERANGE, "Numerical result out of range")
        # VIDIOC_S_FMT, input then output
        fmt = self._v4l2_format()
        if self._width > MAX_SIZE or self._height > MAX_SIZE:
            raise OSError(errno.EINVAL, "Invalid argument")
        if fmt != "YUV420":
            raise RuntimeError("the picamera2 stand-in only encodes YUV420")
        # VIDIOC_S_EXT_CTRLS (the codec's controls), VIDIOC_REQBUFS
        controls = dict(self._controls)
        for i in range(NUM_OUTPUT_BUFFERS):
            self.buf_available.put(i)
        # VIDIOC_STREAMON
        if _hardware.take_command(self._fault("refuse-start")):
            raise OSError(errno.EBUSY, "Device or resource busy")
        period = controls.get("h264_i_period")
        gop = 60 if period is None else period  # 60: the firmware's own period
        self._device.codec = _x264.Codec(
            self._width, self._height, bitrate=self.bitrate, gop=gop or 1 << 16,
            repeat=bool(controls.get("repeat_sequence_header")),
            profile=controls.get("h264_profile"), framerate=self.framerate or 30,
            qp=controls.get("h264_min_qp"))
        self._device.streaming = True
        _hardware.record(f"encoder.start bitrate={self.bitrate} iperiod={gop} "
                         f"profile={controls.get('h264_profile')} "
                         f"repeat={bool(controls.get('repeat_sequence_header'))} "
                         f"stream={self.name}")

    def _stop(self) -> None:
        self.thread.join()
        self._device.streaming = False
        self._device.codec = None
        self.bufs = {}
        self.vd.close()
        _hardware.record(f"encoder.stop stream={self.name}")

    if _PICTURE_CHECK:
        def _check_for_picture(self, buf: bytes) -> bool:
            """Whether an encoded buffer holds a picture, not just SPS/PPS (from 0.3.26)."""
            if len(buf) > 64:  # SPS and PPS together are never this big
                return True
            at = 0
            while (at := buf.find(b"\x00\x00\x00\x01", at)) != -1:
                at += 4
                if at < len(buf) and buf[at] & 15 in (1, 5):  # a slice: non-IDR or IDR
                    return True
            return False

    def thread_poll(self, buf_available: queue.Queue[int]) -> None:
        """Give input buffers back as the codec reads them, and encoded buffers to the
        outputs (from this thread). Ends once stopped and drained, or 0.4 s after
        stopping with nothing from the codec (what is still queued is released)."""
        device = self._device
        read: list[int] = []  # inputs the codec has read, not yet given back (< 0.3.26)
        while self._running or self.buf_frame.qsize() > 0:
            events = device.poll(0.4)
            if not events and not self._running:
                while self.buf_frame.qsize() > 0:
                    self.buf_frame.get().release()
                break
            for kind, value in events:
                if kind == "err":
                    continue  # neither readable nor writable
                if kind == "in":
                    if _PICTURE_CHECK:
                        buf_available.put(value)
                        self.buf_frame.get().release()
                    else:
                        read.append(value)
                    continue
                data, keyframe, timestamp_us = value
                if _PICTURE_CHECK:
                    if self._check_for_picture(data):
                        self.outputframe(data, keyframe, timestamp_us)
                    continue
                if read:  # before 0.3.26: one input back per encoded buffer
                    buf_available.put(read.pop(0))
                self.outputframe(data, keyframe, timestamp_us)
                self.buf_frame.get().release()

    def _encode(self, stream: Any, request: Any) -> None:
        if self.vd is None or self.vd.closed:
            return
        if _FORCE_KEY_FRAME and self._key_frames_requested > self._key_frames_generated:
            self._key_frames_generated += 1
            force = True
        else:
            force = False
        request.acquire()
        timestamp_us = self._timestamp(request)
        if force:
            _hardware.record(f"encoder.force_key_frame ts={timestamp_us}")
        index = self._take_buffer()
        if _hardware.take_command(self._fault("wedge-encoder")):
            # stand-in only: VIDIOC_QBUF does not return (firmware that never answers)
            _hardware.wait_released(_hardware.hang_token())
        self._device.queue_input(index, request, stream, timestamp_us, force)
        self.buf_frame.put(request)

    def _take_buffer(self) -> int:
        """A free input buffer: waits (for ever, with no timeout) while the codec has all 16.
        (Stand-in: gives up with Released only if the poll thread is gone and the hangs
        were released.)"""
        try:
            return self.buf_available.get(timeout=0.2)
        except queue.Empty:
            pass
        token = _hardware.hang_token()
        with _hardware.waiting_for_ever():
            while True:
                try:
                    return self.buf_available.get(timeout=0.2)
                except queue.Empty:
                    if token.is_set() and not self.thread.is_alive():
                        raise _hardware.Released(
                            "V4L2Encoder._encode waited for ever for an input buffer") from None
