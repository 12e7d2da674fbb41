"""A stand-in for the YOLO worker where a test is about the pipeline, not the model: its
"detections" follow from the frame's seq (CountingSource frames spell it in their pixels)."""

from __future__ import annotations

import time

from pipeline.message import Message
from stages.inference import InferenceWorker
from stages.results import Detections
from tests.helpers.stages import frame_seq


class SeqDetector(InferenceWorker):
    """Finds ``seq % 3`` cars in frame `seq`, after `delay_ms`."""

    def __init__(self, delay_ms: float = 0.0, keep_frames: bool = False):
        super().__init__(keep_frames=keep_frames)
        self.delay_s = delay_ms / 1000

    def infer(self, message: Message) -> Detections:
        if self.delay_s:
            time.sleep(self.delay_s)
        n = frame_seq(message.arrays[0]) % 3
        return Detections([[10.0 * i, 10.0, 10.0 * i + 8, 18.0] for i in range(n)], [2] * n, [0.9] * n)


def expected_count(seq: int) -> int:
    return seq % 3
