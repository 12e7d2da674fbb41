"""Audio files (and the sound track of video files) as 16 kHz mono float32 windows."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

from pipeline.errors import SourceFormatError
from pipeline.message import Message
from stages.sources.base import default_stream_id
from stages.sources.decoding import ContainerSource, decode_messages, open_input
from stages.sources.windows import DEFAULT_HOP_S, DEFAULT_WINDOW_S, WindowSpec

logger = logging.getLogger(__name__)


class AudioFileSource(ContainerSource):
    """Decodes the first audio track of a file into fixed, overlapping windows.

    Any format FFmpeg reads works (.wav, .flac, .mp3, the AC3 or AAC track of a video file).
    The track is resampled by libswresample (``av.AudioResampler(format="flt", layout="mono",
    rate=16000)``; more channels are down-mixed with FFmpeg's default matrix, e.g.
    (L + R) / sqrt(2), then clipped to [-1, 1]; the resampler is flushed at the end) and cut by the
    shared `stages.sources.windows.Windower`: windows of ``window_s`` seconds every ``hop_s``
    seconds, the last one zero-padded to full length with ``meta["valid_samples"]`` saying how
    many samples are real. Every sample lies in at least one window; the count is
    `stages.sources.windows.window_count`. A window's ``pts`` is the time of its first sample.

    Args:
        path: the audio (or video) file.
        stream: the stream id; default the file's stem.
        window_s: window length in seconds (default 2.0).
        hop_s: hop between window starts in seconds (default 1.0, 50 % overlap; <= window_s).
        realtime: sleep so that each window comes out when its last sample would have been heard.

    Raises (from ``open()``):
        SourceNotFoundError: the file does not exist.
        SourceFormatError: empty, unparseable, or without an audio track.
    """

    live = False

    def __init__(self, path: str | os.PathLike[str], *, stream: str | None = None,
                 window_s: float = DEFAULT_WINDOW_S, hop_s: float = DEFAULT_HOP_S,
                 realtime: bool = False) -> None:
        super().__init__(stream or default_stream_id(path))
        self.path = Path(path)
        self.windows = WindowSpec(window_s, hop_s)
        self.realtime = realtime
        self.input_sample_rate = 0
        self.input_channels = 0

    @property
    def location(self) -> str:
        return str(self.path)

    def _open(self) -> None:
        container = open_input(self.path, "audio")
        if not container.streams.audio:
            found = ", ".join(s.type for s in container.streams) or "no streams"
            container.close()
            raise SourceFormatError(f"expected a file with an audio track, got {found}: {self.path}")
        track = container.streams.audio[0]
        self.input_sample_rate = track.rate
        self.input_channels = track.channels
        self._container = container

    def _messages(self) -> Iterator[Message]:
        yield from decode_messages(self._container, self.path, video_id=None, audio_id=self.stream,
                                   windows=self.windows, realtime=self.realtime)
