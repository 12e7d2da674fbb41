"""Media inputs as pipeline stages: any `open_source` spec, and Hollywood2 clip lists."""

from __future__ import annotations

import sys
from typing import Iterator

from tqdm import tqdm

from pipeline.message import Message
from pipeline.stage import SourceStage
from stages.sources import DEFAULT_HOP_S, DEFAULT_WINDOW_S, MediaSource, ReconnectPolicy, open_source
from stages.sources.base import default_stream_id


class Source(SourceStage):
    """Decodes `uri` and emits its frames or audio windows.

    `uri` is what `stages.sources.open_source` takes: a video or audio file, ``cam0`` or
    ``/dev/videoN``, ``mic`` or ``mic:NAME``, or a network stream URL (rtsp, http, udp, tcp).
    Cameras, microphones and network streams are live: when the pipeline falls behind, the
    oldest inputs are dropped and counted. `realtime` paces a recorded file at its own frame
    rate, as if it were live. `media` picks what a file gives: ``auto`` (its picture, or its
    sound when it has no picture), ``video``, ``audio`` (16 kHz mono windows of `window_s`
    seconds every `hop_s`), or ``both`` as two streams. ``hollywood2:ROOT[:LIST]`` reads clips.
    A network stream that ends is reopened up to `reconnect_attempts` times, with back-off.
    Recorded media shows a progress bar on stderr: when it is a terminal (`progress` None),
    always (True) or never (False).
    """

    def __init__(self, uri: str, stream: str | None = None, media: str = "auto", realtime: bool = False,
                 max_frames: int | None = None, max_seconds: float | None = None,
                 window_s: float = DEFAULT_WINDOW_S, hop_s: float = DEFAULT_HOP_S, reconnect_attempts: int = 3,
                 progress: bool | None = None):
        if not uri:
            raise ValueError("uri must name a file, camera, microphone or URL")
        if media not in ("auto", "video", "audio", "both"):
            raise ValueError(f"media must be auto, video, audio or both, got {media!r}")
        self.uri, self.stream, self.media, self.realtime = uri, stream, media, realtime
        self.max_frames, self.max_seconds = max_frames, max_seconds
        self.window_s, self.hop_s = window_s, hop_s
        self.reconnect = ReconnectPolicy(attempts=reconnect_attempts)
        self.progress = progress
        self.source: MediaSource | None = None

    @property
    def stream_id(self) -> str:
        """The stream id (or prefix) of this source: named in its end of stream if it cannot start."""
        return self.stream or default_stream_id(self.uri)

    def setup(self) -> None:
        self.source = open_source(self.uri, stream=self.stream, media=self.media, realtime=self.realtime,
                                  max_frames=self.max_frames, max_seconds=self.max_seconds,
                                  window_s=self.window_s, hop_s=self.hop_s, reconnect=self.reconnect)
        self.source.open()
        self.live = self.source.live

    def produce(self) -> Iterator[Message]:
        if self.live or self.progress is False:
            yield from self.source
            return
        # Recorded media: a progress bar on stderr, by default only when it is a terminal.
        total = getattr(self.source, "expected_frames", None) if self.media in ("auto", "video") else None
        with tqdm(total=total, unit="frame" if total else "input", desc=self.source.stream, file=sys.stderr,
                  disable=None if self.progress is None else False, mininterval=0.5, dynamic_ncols=True) as bar:
            for message in self.source:
                if not message.is_eos:
                    bar.update()
                yield message

    def teardown(self) -> None:
        if self.source is not None:
            self.source.close()
