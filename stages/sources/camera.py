"""Cameras through OpenCV: ``cam0`` is device index 0, ``/dev/videoN`` that device node."""

from __future__ import annotations

import glob
import logging
import os
import re
import sys
import threading
import time
from typing import Any, Iterator

from pipeline.errors import SourceError, SourceNotFoundError, SourceTimeoutError
from pipeline.message import Message, eos
from stages.sources.base import MediaSource, default_stream_id, video_message

logger = logging.getLogger(__name__)

_CAMERA_NAME = re.compile(r"^cam(\d+)$")


def parse_camera(spec: str | int) -> int | str:
    """``cam3`` or ``3`` -> 3 (an OpenCV index); any other string (a device path) unchanged."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        return spec
    match = _CAMERA_NAME.match(str(spec))
    return int(match.group(1)) if match else str(spec)


def _video_devices() -> list[str]:
    return sorted(glob.glob("/dev/video*"))


class CameraSource(MediaSource):
    """Frames from a capture device, read with ``cv2.VideoCapture`` until a read fails.

    ``open()`` fails fast and clearly where there is no such camera: on Linux a missing
    ``/dev/videoN`` node is reported before OpenCV is asked (OpenCV would only print warnings
    and return a closed capture), and the OpenCV open itself runs under a time limit because
    some backends block on a device that does not answer. ``pts`` is the time since the
    first frame on the monotonic clock (cameras give no reliable timestamps through OpenCV);
    ``media["fps"]`` is what the driver reports (0.0 when unknown). Every frame is a new array.

    Args:
        device: an index (``0``), ``"camN"``, or a device path / anything OpenCV opens.
        stream: the stream id; default ``camN``.
        open_timeout_s: how long opening may take before `SourceTimeoutError`.
        max_frames: stop after this many frames (None: until the camera stops delivering).
        width, height, fps: capture settings to request from the driver (None: its default).
    """

    live = True

    def __init__(self, device: int | str = 0, *, stream: str | None = None, open_timeout_s: float = 10.0,
                 max_frames: int | None = None, width: int | None = None, height: int | None = None,
                 fps: float | None = None) -> None:
        self.device = parse_camera(device)
        super().__init__(stream or default_stream_id(self.device if isinstance(self.device, int) else device))
        if open_timeout_s <= 0:
            raise ValueError(f"open_timeout_s must be positive, got {open_timeout_s!r}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or None, got {max_frames!r}")
        self.open_timeout_s = open_timeout_s
        self.max_frames = max_frames
        self.requested = {"width": width, "height": height, "fps": fps}
        self.fps = 0.0
        self._capture: Any = None

    @property
    def location(self) -> str:
        return f"device {self.device}" if isinstance(self.device, int) else str(self.device)

    def _describe(self) -> str:
        return f"camera {self.stream!r} ({self.location})"

    def _open(self) -> None:
        import cv2  # heavy; only sources that need it import it

        if sys.platform.startswith("linux"):
            node = f"/dev/video{self.device}" if isinstance(self.device, int) else str(self.device)
            if node.startswith("/dev/") and not os.path.exists(node):
                found = ", ".join(_video_devices()) or "none"
                raise SourceNotFoundError(f"{self._describe()} could not be opened: no such device "
                                          f"{node} (video devices present: {found})")
        result: dict[str, Any] = {}

        def open_capture() -> None:
            try:
                result["capture"] = cv2.VideoCapture(self.device)
            except Exception as error:  # cv2.error and friends; reported below
                result["error"] = error

        opener = threading.Thread(target=open_capture, name=f"open-{self.stream}", daemon=True)
        opener.start()
        opener.join(self.open_timeout_s)
        if opener.is_alive():
            # The thread cannot be killed; it is a daemon and releases the capture if it ever returns.
            raise SourceTimeoutError(f"{self._describe()} did not open within {self.open_timeout_s} s")
        if "error" in result:
            raise SourceError(f"{self._describe()} could not be opened: {result['error']}")
        capture = result["capture"]
        if not capture.isOpened():
            capture.release()
            found = ", ".join(_video_devices()) or "none"
            raise SourceNotFoundError(f"{self._describe()} could not be opened: no such device, or it is "
                                      f"busy or unsupported (video devices present: {found})")
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.requested["width"]),
                            (cv2.CAP_PROP_FRAME_HEIGHT, self.requested["height"]),
                            (cv2.CAP_PROP_FPS, self.requested["fps"])):
            if value is not None and not capture.set(prop, float(value)):
                logger.warning("%s ignored the requested setting %s=%s", self._describe(), prop, value)
        self.fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self._capture = capture

    def _close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def _messages(self) -> Iterator[Message]:
        count = 0
        first: float | None = None
        while self.max_frames is None or count < self.max_frames:
            ok, frame = self._capture.read()  # OpenCV allocates a new array per call
            if not ok or frame is None:
                break
            now = time.monotonic()
            first = now if first is None else first
            if frame.ndim == 2:  # some drivers deliver grey frames; the contract is BGR
                import cv2

                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            yield video_message(self.stream, count, frame, now - first, self.fps)
            count += 1
        logger.info("%s stopped delivering after %d frames", self._describe(), count)
        yield eos(self.stream, count)
