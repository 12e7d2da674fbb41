"""Media inputs as pipeline stages: any `open_source` spec, and Hollywood2 clip lists."""

from __future__ import annotations

from typing import Iterator

from pipeline.message import Message
from pipeline.stage import SourceStage
from stages.sources import MediaSource, open_source


class Source(SourceStage):
    """Decodes `uri` and emits its frames or audio windows.

    `uri` is what `stages.sources.open_source` takes: a video or audio file, ``cam0`` or
    ``/dev/videoN``, ``mic`` or ``mic:NAME``, or a network stream URL (rtsp, http, udp, tcp).
    Cameras, microphones and network streams are live: when the pipeline falls behind, the
    oldest inputs are dropped and counted. `realtime` paces a recorded file at its own frame
    rate, as if it were live.
    """

    def __init__(self, uri: str, stream: str | None = None, realtime: bool = False,
                 window_s: float = 2.0, hop_s: float = 1.0):
        if not uri:
            raise ValueError("uri must name a file, camera, microphone or URL")
        self.uri, self.stream, self.realtime = uri, stream, realtime
        self.window_s, self.hop_s = window_s, hop_s
        self.source: MediaSource | None = None

    def setup(self) -> None:
        self.source = open_source(self.uri, stream=self.stream, realtime=self.realtime,
                                  window_s=self.window_s, hop_s=self.hop_s)
        self.source.open()
        self.live = self.source.live

    def produce(self) -> Iterator[Message]:
        yield from self.source

    def teardown(self) -> None:
        if self.source is not None:
            self.source.close()
