"""The NULL preview: the camera thread (as picamera2's ``previews/null_preview.py``).

``Picamera2.start()`` (``show_preview=False``) starts one. Its thread waits on
the camera's notify pipe and runs ``process_requests`` for each wake-up, which
hands every frame to the running encoders. An exception from there is logged
("Exception during process_requests()") and raised again: the thread ends,
and with it every frame and every job for this camera, for good.
"""

from __future__ import annotations

import logging
import selectors
import threading
from typing import Any

from .. import _hardware

_log = logging.getLogger("picamera2.previews.null_preview")


class NullPreview:
    def __init__(self, x: Any = None, y: Any = None, width: Any = None, height: Any = None,
                 transform: Any = None) -> None:
        self.size = (width, height)
        self._abort = threading.Event()
        self._started = threading.Event()
        self.picam2: Any = None

    def thread_func(self, picam2: Any) -> None:
        selector = selectors.DefaultSelector()
        selector.register(picam2.notifyme_r, selectors.EVENT_READ, self.handle_request)
        self._started.set()
        while not self._abort.is_set():
            for key, _events in selector.select(0.2):
                picam2.notifymeread.read()
                key.data(picam2)

    def start(self, picam2: Any) -> None:
        self.picam2 = picam2
        picam2.attach_preview(self)
        self._started.clear()
        self._abort.clear()
        self.thread = threading.Thread(target=self.thread_func, args=(picam2,),
                                       name=f"picamera2-camera{picam2.camera_idx}", daemon=True)
        self.thread.start()
        self._started.wait()

    def set_overlay(self, overlay: Any) -> None:
        pass

    def render_request(self, completed_request: Any) -> None:
        pass

    def handle_request(self, picam2: Any) -> None:
        try:
            picam2.process_requests(self)
        except Exception as e:
            _log.exception("Exception during process_requests()", exc_info=e)
            _hardware.record(f"camera.thread_died num={picam2.camera_idx} "
                             f"error={type(e).__name__}: {e}")
            raise

    def stop(self) -> None:
        self._abort.set()
        # joins for ever if the thread is stuck (in an encoder, say)
        thread = self.thread

        def join(step: float) -> None:
            thread.join(step)
            if thread.is_alive():
                raise TimeoutError

        _hardware.wait_for_ever(join, "NullPreview.stop() joining the camera thread")
        self.picam2.detach_preview()
        self.picam2 = None

    def set_title_function(self, function: Any) -> None:
        pass
