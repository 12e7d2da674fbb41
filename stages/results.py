"""What travels in a message's ``decision`` and ``result`` objects, as small checked dataclasses.

The filter stage writes a `Decision` into every input's header; an inference worker writes a
`Detections` or a `Transcript` into the ``result`` of the inputs it ran; the aggregator reads
both back. On the wire they are plain JSON objects (docs/protocol.md shows them), so a stage in
another language can produce or consume them:

    decision: {"action": "infer"}
              {"action": "skip", "policy": "stride:2"}
              {"action": "reuse", "ref_seq": 12}
              {"action": "exit", "exit": 1, "result": {...}}
              {"action": "infer", "audit": {"action": "skip"}}   (audited: docs/results.md)
    result:   {"task": "vehicles", "boxes": [[x1, y1, x2, y2], ...], "classes": [2, ...],
               "scores": [0.81, ...], "infer_ms": 31.2}
              {"task": "speech", "text": "ask not", "words": 2, "infer_ms": 410.0}

Box coordinates are pixels of the frame as the source sent it (x right, y down).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The schema's checks and the filter's `Decision` live in models/base.py: a policy builds
# decisions without importing stages.
from models.base import ResultError, _milliseconds

#: COCO class ids (0-based, as Ultralytics numbers them) that count as vehicles.
VEHICLE_CLASSES: dict[int, str] = {2: "car", 3: "motorcycle", 5: "bus", 7: "truck"}

@dataclass(frozen=True)
class Detections:
    """Boxes found in one frame: ``boxes`` (n, 4) float32 x1, y1, x2, y2 in pixels;
    ``classes`` (n,) int COCO ids; ``scores`` (n,) float32 confidences in [0, 1]."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    infer_ms: float = 0.0

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4) if len(self.boxes) else np.zeros((0, 4), np.float32)
        classes = np.asarray(self.classes, np.int64).reshape(-1)
        scores = np.asarray(self.scores, np.float32).reshape(-1)
        if not (len(boxes) == len(classes) == len(scores)):
            raise ResultError(f"detections need as many classes and scores as boxes, got "
                              f"{len(boxes)} boxes, {len(classes)} classes, {len(scores)} scores")
        if not np.isfinite(boxes).all() or (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
            raise ResultError("detection boxes must be finite x1, y1, x2, y2 with x2 >= x1 and y2 >= y1")
        if not np.isfinite(scores).all():
            raise ResultError("detection scores must be finite")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "scores", scores)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def centers(self) -> np.ndarray:
        """(n, 2) box centres, x and y."""
        return np.stack([(self.boxes[:, 0] + self.boxes[:, 2]) / 2, (self.boxes[:, 1] + self.boxes[:, 3]) / 2], axis=1)

    def select(self, keep: np.ndarray) -> "Detections":
        return Detections(self.boxes[keep], self.classes[keep], self.scores[keep], self.infer_ms)

    def to_wire(self) -> dict[str, Any]:
        return {"task": "vehicles",
                "boxes": [[round(float(v), 2) for v in box] for box in self.boxes],
                "classes": [int(c) for c in self.classes],
                "scores": [round(float(s), 4) for s in self.scores],
                "infer_ms": round(self.infer_ms, 3)}

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> "Detections":
        if not isinstance(wire, dict) or wire.get("task") != "vehicles":
            raise ResultError(f"expected a vehicles result object, got {wire!r:.200}")
        try:
            with np.errstate(over="ignore", invalid="ignore"):   # too large for float32: inf, refused below
                boxes = np.asarray(wire.get("boxes", []), np.float32)
                scores = np.asarray(wire.get("scores", []), np.float32)
            return cls(boxes, np.asarray(wire.get("classes", []), np.int64),
                       scores, _milliseconds(wire.get("infer_ms", 0.0), "infer_ms"))
        except (TypeError, ValueError, OverflowError) as error:
            if isinstance(error, ResultError):
                raise
            raise ResultError(f"malformed vehicles result: {error}") from error


EMPTY_DETECTIONS = Detections()

_WORD = re.compile(r"[A-Za-z0-9']+")


def count_words(text: str) -> int:
    """Words as the InFi speech rule counts them: runs of letters, digits and apostrophes."""
    return len(_WORD.findall(text))


@dataclass(frozen=True)
class Transcript:
    """What the recognizer heard in one audio window."""

    text: str = ""
    infer_ms: float = 0.0

    @property
    def words(self) -> int:
        return count_words(self.text)

    def to_wire(self) -> dict[str, Any]:
        return {"task": "speech", "text": self.text, "words": self.words, "infer_ms": round(self.infer_ms, 3)}

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> "Transcript":
        if not isinstance(wire, dict) or wire.get("task") != "speech" or not isinstance(wire.get("text", ""), str):
            raise ResultError(f"expected a speech result object, got {wire!r:.200}")
        return cls(wire.get("text", ""), _milliseconds(wire.get("infer_ms", 0.0), "infer_ms"))


EMPTY_TRANSCRIPT = Transcript()
