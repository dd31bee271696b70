"""Output frames from encoder (as picamera2's ``outputs/output.py``)."""

from __future__ import annotations

from typing import Any


class Output:
    """Handles output functionality of encoders."""

    def __init__(self, pts: Any = None) -> None:
        self.recording = False
        self.ptsoutput = pts
        self.needs_pacing = False
        self.needs_add_stream = False

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def outputframe(
        self, frame: Any, keyframe: bool = True, timestamp: int | None = None,
        packet: Any = None, audio: bool = False,
    ) -> None:
        """Called by the encoder, from its own thread, with all five arguments positionally."""

    def outputtimestamp(self, timestamp: int | None) -> None:
        if self.ptsoutput is not None and timestamp is not None:
            print(f"{timestamp // 1000}.{timestamp % 1000:03}", file=self.ptsoutput, flush=True)

    def _add_stream(self, encoder_stream: Any, *args: Any, **kwargs: Any) -> None:
        pass
