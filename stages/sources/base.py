"""The `MediaSource` contract every source follows, and the helpers the sources share.

A source turns one input (a file, a camera, a microphone, a network stream, a clip dataset)
into `pipeline.message.Message` objects. The runtime only ever sees this contract, so every
concrete source in this package honours it exactly; the docstring of `MediaSource` is the
written version.
"""

from __future__ import annotations

import logging
import os
import re
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import numpy as np

from pipeline.errors import SourceError
from pipeline.message import Message, eos

logger = logging.getLogger(__name__)

#: Every audio message carries 16 kHz mono float32 samples, whatever the input's own format.
AUDIO_SAMPLE_RATE = 16000
AUDIO_MEDIA: dict[str, Any] = {"sample_rate": AUDIO_SAMPLE_RATE, "channels": 1, "sample_format": "f32"}

_CAMERA_NAME = re.compile(r"^cam(\d+)$")
_VIDEO_DEVICE = re.compile(r"^/dev/video(\d+)$")


def video_media(fps: float, width: int, height: int) -> dict[str, Any]:
    """The ``media`` facts of a BGR video frame message."""
    return {"fps": float(fps), "width": int(width), "height": int(height), "pixel_format": "bgr24"}


def audio_media() -> dict[str, Any]:
    """The ``media`` facts of an audio window message (a fresh dict: messages may be mutated)."""
    return dict(AUDIO_MEDIA)


def video_message(stream: str, seq: int, frame: np.ndarray, pts: float, fps: float,
                  meta: dict[str, Any] | None = None, t_capture: float | None = None) -> Message:
    """A ``video`` message for one HxWx3 uint8 BGR frame (made C-contiguous if it is not).

    PyAV 18 returns frames whose width is not a multiple of its line alignment as a view with
    padded rows; the wire format and the stages expect contiguous pixels.
    """
    frame = np.ascontiguousarray(frame)
    height, width = frame.shape[:2]
    return Message("video", stream, seq, pts=float(pts),
                   t_capture=time.time() if t_capture is None else t_capture,
                   media=video_media(fps, width, height), arrays=(frame,), meta=dict(meta or {}))


def audio_message(stream: str, seq: int, samples: np.ndarray, pts: float,
                  meta: dict[str, Any] | None = None, t_capture: float | None = None) -> Message:
    """An ``audio`` message for one 1-D float32 window of 16 kHz mono samples."""
    return Message("audio", stream, seq, pts=float(pts),
                   t_capture=time.time() if t_capture is None else t_capture,
                   media=audio_media(), arrays=(samples,), meta=dict(meta or {}))


def source_eos(stream: str, count: int, dropped: dict[str, int], uncounted: dict[str, int] | None = None,
               error: str | None = None) -> Message:
    """A source's end-of-stream marker carrying its own counters (zero counts are left out).

    Args:
        count: inputs numbered on the stream (``seq`` 0..count-1), sent or not.
        dropped: inputs numbered but not sent, by reason (e.g. ``undecodable``); their sum is
            the marker's ``dropped``.
        uncounted: input lost that cannot be counted as inputs (e.g. ``undecodable-packets`` of
            audio, whose windows are cut from the samples that decoded): the stream's accounting
            is then incomplete, and the summary says so.
        error: why the source failed, if it did.
    """
    dropped = {reason: n for reason, n in dropped.items() if n}
    marker = eos(stream, count, dropped=sum(dropped.values()))
    source: dict[str, Any] = {}
    if dropped:
        source["dropped"] = dropped
    uncounted = {what: n for what, n in (uncounted or {}).items() if n}
    if uncounted:
        source["uncounted"] = uncounted
    if error:
        source["error"] = error
    if source:
        marker.meta = {"source": source}
    return marker


def default_stream_id(spec: str | os.PathLike[str] | int) -> str:
    """The stream id a source uses when none is given.

    ``cam0`` and ``/dev/video0`` give ``cam0`` (an int N gives ``camN``); ``mic`` and
    ``mic:NAME`` give ``mic``; a URL gives its host (with port) and path, e.g.
    ``127.0.0.1:8554/live.ts``; a file path gives the file's stem.

    Examples:
        >>> default_stream_id("/data/traffic/highway_cctv.avi")
        'highway_cctv'
        >>> default_stream_id("tcp://127.0.0.1:9000")
        '127.0.0.1:9000'
        >>> default_stream_id("/dev/video2")
        'cam2'
    """
    if isinstance(spec, int) and not isinstance(spec, bool):
        return f"cam{spec}"
    text = os.fspath(spec)
    if _CAMERA_NAME.match(text):
        return text
    device = _VIDEO_DEVICE.match(text)
    if device:
        return f"cam{device.group(1)}"
    if text == "mic" or text.startswith("mic:"):
        return "mic"
    if "://" in text:
        parts = urlsplit(text)
        # netloc may carry credentials ("user:pass@host"); never put them in a stream id.
        host = parts.netloc.rsplit("@", 1)[-1]
        name = (host + parts.path).strip("/")
        return name or parts.scheme
    return Path(text).stem or text


class MediaSource(ABC):
    """A context-managed producer of media messages.

    Lifecycle: ``open()`` acquires the input (file container, capture device, connection) and
    fails early with a `pipeline.errors.SourceError` subclass that names the path, URL or
    device; ``close()`` releases it and may be called any number of times. ``with source:``
    does both. Iterating an unopened source opens it; a source is iterated once, and its
    iterator closes the source when it ends or is closed (generators free their containers
    in ``finally``).

    What iteration yields:

    * data messages, kind ``"video"``: one array HxWx3 ``uint8`` BGR, media
      ``{"fps", "width", "height", "pixel_format": "bgr24"}``; or kind ``"audio"``: one 1-D
      ``float32`` array of mono samples in [-1, 1], media
      ``{"sample_rate": 16000, "channels": 1, "sample_format": "f32"}``;
    * per stream, ``seq`` counts from 0; it skips a number only for an input the source read
      but could not decode (a video packet the decoder rejected), and for nothing else;
      ``pts`` is the presentation time in
      seconds from the stream's start; ``t_capture`` is the wall-clock time (``time.time()``)
      at which the source produced the data (decoded it, or read it from the device);
    * after a stream's last data message, its end-of-stream marker (`source_eos`): ``seq`` =
      ``count``, the inputs numbered on it (yielded or skipped), ``dropped`` = the skipped ones,
      with the reasons and any loss it cannot count as inputs in ``meta["source"]``. A source
      never sets the EOS ``final`` flag: the runtime does, once the source has no more streams.

    Arrays yielded are never reused or overwritten by the source afterwards: the runtime sends
    them without copying and may hold them.

    Attributes:
        live: True for inputs that run in real time whether or not anyone reads them (camera,
            microphone, network stream); the runtime drops the oldest data of live sources
            under back-pressure and blocks recorded ones.
        stream: the source's stream id (for a multi-stream source, the prefix of its ids).
    """

    live: bool = False

    def __init__(self, stream: str) -> None:
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"stream id must be a non-empty string, got {stream!r}")
        self.stream = stream
        self._state = "new"  # new -> open -> closed

    @property
    @abstractmethod
    def location(self) -> str:
        """The path, URL or device this source reads, for messages and logs."""

    @abstractmethod
    def _open(self) -> None:
        """Acquire the input; raise a `SourceError` subclass naming `location` on failure."""

    @abstractmethod
    def _close(self) -> None:
        """Release the input. Called once, also after a failed or abandoned iteration."""

    @abstractmethod
    def _messages(self) -> Iterator[Message]:
        """Yield the data and eos messages, on an open source."""

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    def open(self) -> MediaSource:
        """Acquire the input (idempotent); returns the source itself."""
        if self._state == "closed":
            raise SourceError(f"source {self.location!r} is closed; a source is read once, "
                              f"open a new one to read it again")
        if self._state == "new":
            try:
                self._open()
            except BaseException:
                self._state = "closed"
                self._close_quietly()
                raise
            self._state = "open"
        return self

    def close(self) -> None:
        """Release the input (idempotent)."""
        if self._state != "closed":
            self._state = "closed"
            self._close_quietly()

    def _close_quietly(self) -> None:
        try:
            self._close()
        except Exception:  # closing must never mask the error that brought us here
            logger.warning("closing source %r failed", self.location, exc_info=True)

    def __enter__(self) -> MediaSource:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Message]:
        self.open()
        try:
            yield from self._messages()
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r}, stream={self.stream!r}, state={self._state})"
