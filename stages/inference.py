"""The shared shape of heavy-model workers (YOLO in stages/detect.py, Whisper in stages/speech.py).

A worker runs its model only on inputs whose decision is ``infer`` (or that carry no decision:
no filter ran). Every other input passes through untouched apart from its pixels, so the
aggregator downstream still sees every sequence number. Several workers may read one filter's
PUSH socket; each input reaches exactly one of them, and the aggregator restores the order.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from pipeline.message import Message
from pipeline.stage import Stage
from models.base import INFER, Decision

log = logging.getLogger(__name__)


class InferenceWorker(Stage):
    """Base class: subclasses load their model in `setup` and implement `infer`.

    keep_frames: pass the input arrays on with the result (for a display or an annotated video
        downstream); off by default, so results travel as small headers only.
    """

    #: The input kind this worker understands ("video" or "audio"); others are refused.
    input_kind = "video"

    def __init__(self, keep_frames: bool = False):
        self.keep_frames = keep_frames

    def infer(self, message: Message) -> Any:
        """Run the model on one input; return a result object with ``to_wire()`` and ``infer_ms``."""
        raise NotImplementedError

    def process(self, message: Message) -> Message:
        decision = Decision.from_wire(message.decision)
        if not decision.needs_model:
            return message if not message.arrays or self.keep_frames else replace(message, arrays=())
        if message.kind != self.input_kind or not message.arrays:
            raise ValueError(f"{type(self).__name__} runs on {self.input_kind} inputs with their samples; "
                             f"got a {message.kind} message with {len(message.arrays)} arrays "
                             f"({message.stream} seq {message.seq})")
        started = time.perf_counter()
        result = self.infer(message)
        infer_ms = (time.perf_counter() - started) * 1000
        wire = replace(result, infer_ms=infer_ms).to_wire()
        return Message(kind="result", stream=message.stream, seq=message.seq, pts=message.pts,
                       t_capture=message.t_capture, media=message.media,
                       arrays=message.arrays if self.keep_frames else (),
                       decision=message.decision or INFER.to_wire(), result=wire,
                       meta={**message.meta, "worker": self.name})
