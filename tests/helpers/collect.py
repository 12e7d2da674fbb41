"""A JSON Lines sink for the end of a worker pool, for tests that compare the workers' raw results.

The aggregator turns results into counts and tracks; the YOLO tests need the boxes themselves.

Several workers reading one PUSH socket finish in any order, and the end-of-stream marker
travels through only one of them, so it may arrive before another worker's last results.
`CollectSink` therefore holds each marker until every input of its stream has come (``seq -
dropped`` distinct seqs) or `straggler_wait_s` has passed, then writes it and ends.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.message import Message
from stages.sinks import JsonlSink


class CollectSink(JsonlSink):
    """Writes every message's header as a JSON line (duplicates too, so a test can see them);
    writes each stream's end-of-stream marker last, once the stream is complete or given up on."""

    forwards_end_of_stream = False

    def __init__(self, path: Path, straggler_wait_s: float = 30.0):
        super().__init__(path, flush_every=1)
        self.straggler_wait_s = straggler_wait_s
        self.seen: dict[str, set[int]] = {}                   # open streams only
        self.held: dict[str, tuple[Message, float]] = {}      # stream -> (marker, when it came)

    def process(self, message: Message) -> list[Message]:
        self._write(message)
        self.seen.setdefault(message.stream, set()).add(message.seq)
        return self._release()

    def end_of_stream(self, message: Message) -> list[Message]:
        self.held[message.stream] = (message, time.monotonic())
        return self._release()

    def tick(self) -> list[Message]:
        return self._release()

    def _release(self) -> list[Message]:
        """The held markers whose streams are complete (or waited on long enough), written now."""
        released = []
        for stream, (marker, since) in list(self.held.items()):
            complete = len(self.seen.get(stream, ())) >= marker.seq - marker.dropped
            if complete or time.monotonic() - since > self.straggler_wait_s:
                del self.held[stream]
                self.seen.pop(stream, None)
                self._write(marker)
                released.append(marker)
        return released
