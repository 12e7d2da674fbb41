"""Video files through PyAV: threaded decode, BGR frames, pts from the container's clock."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

from pipeline.errors import SourceFormatError
from pipeline.message import Message
from stages.sources.base import default_stream_id
from stages.sources.decoding import ContainerSource, decode_messages, frame_rate, open_input, picture_stream
from stages.sources.windows import DEFAULT_HOP_S, DEFAULT_WINDOW_S, WindowSpec

logger = logging.getLogger(__name__)


class VideoFileSource(ContainerSource):
    """Decodes a video file (any container and codec FFmpeg reads) into BGR frame messages.

    Frames carry ``pts`` from the container's timestamps (``frame.time``), so variable frame
    rates and dropped-frame placeholders keep their real timing; ``media["fps"]`` is the
    stream's average rate. Decoding uses FFmpeg's frame and slice threads.

    With ``audio=True`` the file's first audio track is decoded in the same pass into 16 kHz
    mono windows, and the two streams are named ``<stream>/video`` and ``<stream>/audio``.

    Damaged input: a missing file raises `SourceNotFoundError`; an empty file, a file FFmpeg
    cannot parse, or one without a video stream raises `SourceFormatError` from ``open()``. A
    truncated file yields the frames that decode, then ends with a logged warning (or raises
    `SourceFormatError` if none decodes). All of them name the path.

    Args:
        path: the video file.
        stream: the stream id; default the file's stem.
        realtime: sleep so that frames come out at the pace of their timestamps.
        max_frames: stop after this many frames (None: all).
        audio: also emit the audio track as windows (see above).
        window_s: audio window length in seconds (with ``audio=True``).
        hop_s: audio hop in seconds (with ``audio=True``).
    """

    live = False

    def __init__(self, path: str | os.PathLike[str], *, stream: str | None = None, realtime: bool = False,
                 max_frames: int | None = None, audio: bool = False,
                 window_s: float = DEFAULT_WINDOW_S, hop_s: float = DEFAULT_HOP_S) -> None:
        super().__init__(stream or default_stream_id(path))
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or None, got {max_frames!r}")
        self.path = Path(path)
        self.realtime = realtime
        self.max_frames = max_frames
        self.audio = audio
        self.windows = WindowSpec(window_s, hop_s)
        self.expected_frames: int | None = None
        self.fps = 0.0
        self.width = 0
        self.height = 0

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def stream_ids(self) -> tuple[str, ...]:
        """The stream ids this source emits (the audio one only if the file has audio)."""
        if not self.audio:
            return (self.stream,)
        return (f"{self.stream}/video", f"{self.stream}/audio")

    def _open(self) -> None:
        container = open_input(self.path, "video")
        video = picture_stream(container)
        if video is None:
            found = ", ".join(s.type for s in container.streams) or "no streams"
            container.close()
            raise SourceFormatError(f"expected a file with a video stream, got {found}: {self.path}")
        # The container's own count (0 when it does not say): a total for progress bars.
        self.expected_frames = video.frames or None
        self.fps = frame_rate(video)
        self.width, self.height = video.codec_context.width, video.codec_context.height
        if self.audio and not container.streams.audio:
            logger.info("%s has no audio track; emitting video only", self.path)
        self._container = container

    def _messages(self) -> Iterator[Message]:
        video_id, audio_id = (self.stream, None) if not self.audio else self.stream_ids
        yield from decode_messages(self._container, self.path, video_id=video_id, audio_id=audio_id,
                                   windows=self.windows, max_frames=self.max_frames,
                                   realtime=self.realtime)
