"""Stages used only by tests: a synthetic frame source and a relay that can be made slow.

The synthetic source stands in for decoded media where the test is about the runtime,
not about decoding; every frame carries its seq in its pixels so receivers can check content.
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from pipeline.message import Message, eos
from pipeline.stage import SourceStage, Stage


def numbered_frame(seq: int, height: int, width: int) -> np.ndarray:
    """A frame whose first 8 bytes spell `seq` (little-endian), the rest a seq-dependent value."""
    frame = np.full((height, width, 3), seq % 251, dtype=np.uint8)
    frame.reshape(-1)[:8] = np.frombuffer(np.int64(seq).tobytes(), dtype=np.uint8)
    return frame


def frame_seq(frame: np.ndarray) -> int:
    return int(np.frombuffer(frame.reshape(-1)[:8].tobytes(), dtype=np.int64)[0])


class CountingSource(SourceStage):
    """Emits `count` numbered frames per stream on `streams` streams, `interval_ms` apart."""

    def __init__(self, count: int = 100, streams: int = 1, width: int = 64, height: int = 48,
                 interval_ms: float = 0.0, live: bool = False, prefix: str = "synthetic"):
        self.count, self.streams, self.width, self.height = count, streams, width, height
        self.interval_s = interval_ms / 1000
        self.live = live
        self.prefix = prefix

    def produce(self) -> Iterator[Message]:
        names = [f"{self.prefix}{i}" for i in range(self.streams)]
        for seq in range(self.count):
            for name in names:
                yield Message("video", name, seq, pts=seq / 25, media={"fps": 25.0, "width": self.width,
                              "height": self.height, "pixel_format": "bgr24"},
                              arrays=(numbered_frame(seq, self.height, self.width),))
            if self.interval_s:
                time.sleep(self.interval_s)
        for name in names:
            yield eos(name, self.count)


class SlowRelay(Stage):
    """Forwards messages after sleeping `delay_ms` each; with `verify`, checks CountingSource
    frames' pixels match their seq; sleeps `teardown_ms` in teardown (a model runtime that takes
    its time to close)."""

    def __init__(self, delay_ms: float = 0.0, verify: bool = True, teardown_ms: float = 0.0):
        self.delay_s = delay_ms / 1000
        self.verify = verify
        self.teardown_s = teardown_ms / 1000

    def teardown(self) -> None:
        time.sleep(self.teardown_s)

    def process(self, message: Message) -> Message:
        if self.verify and message.arrays and frame_seq(message.arrays[0]) != message.seq:
            raise ValueError(f"frame pixels say seq {frame_seq(message.arrays[0])}, header says {message.seq}")
        if self.delay_s:
            time.sleep(self.delay_s)
        return message


class SideReader(Stage):
    """Relays its inputs; counts the messages of its side inputs and writes, at teardown, how
    many it saw and how many inputs it had, as JSON, to `report`."""

    def __init__(self, report: str, max_ahead: int | None = None):
        self.report = report
        self.max_ahead = max_ahead   # hold the input while more than this many inputs are not echoed back
        self.side_seen: list[tuple[str, int]] = []
        self.inputs = 0
        self.ahead: list[int] = []   # per input once echoes flow: inputs not yet echoed back
        self._held_since: float | None = None

    def process(self, message: Message) -> Message:
        if self.side_seen:
            self.ahead.append(message.seq - 1 - self.side_seen[-1][1])
        self.inputs += 1
        return message

    def ready_for_input(self) -> bool:
        if self.max_ahead is None:
            return True
        if self.side_seen:
            return self.inputs - 1 - self.side_seen[-1][1] <= self.max_ahead
        # The first echoes may be lost (a subscriber joins late): hold at most 2 s for one.
        if self.inputs <= self.max_ahead:
            return True
        self._held_since = self._held_since or time.monotonic()
        return time.monotonic() - self._held_since > 2.0

    def side_input(self, message: Message) -> None:
        self.side_seen.append((message.stream, message.seq))

    def teardown(self) -> None:
        import json
        with open(self.report, "w") as report:
            json.dump({"inputs": self.inputs, "side": len(self.side_seen), "most_ahead": max(self.ahead, default=None),
                       "side_seqs_in_order": all(a[1] < b[1] for a, b in zip(self.side_seen, self.side_seen[1:])
                                                 if a[0] == b[0])}, report)
