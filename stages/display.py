"""Drawing results on frames: boxes, the counting line and region, the running count.

Shown in an OpenCV window (``show="window"``) or written to a video file (any other value is
the file's path), by the aggregator when asked. Inferred boxes are drawn solid green; boxes
carried over by a reuse decision are drawn orange, so a viewer sees what the filter saved.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.errors import ConfigError
from stages.results import VEHICLE_CLASSES, Detections
from stages.tracking import CountingLine, Region

_FRESH = (80, 200, 60)       # BGR
_CARRIED = (0, 150, 255)
_LINE = (255, 80, 255)
_REGION = (255, 200, 0)


def check_display() -> None:
    """Raise `ConfigError` saying what to do instead when there is no display to open a window on."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ConfigError("--show window needs a display (DISPLAY is not set); "
                          "pass --show annotated.mp4 to write an annotated video instead")


class Display:
    """An annotated view of the aggregated stream (window or video file)."""

    def __init__(self, target: str, line: CountingLine | None = None, region: Region | None = None):
        self.target = target
        self.line = None if line is None else np.rint(line.points).astype(np.int32).reshape(2, 2)
        self.region = None if region is None else np.rint(region.polygon).astype(np.int32)
        self.window = target == "window"
        self._writer: cv2.VideoWriter | None = None

    def open(self) -> None:
        if self.window:
            check_display()
            # Qt draws through X shared memory unless told not to. On Xvfb under heavy load a
            # window sometimes stays black for a whole run, the classic symptom of that path
            # failing in containers; plain X requests cost nothing that matters at a video's
            # frame rate. (Not proven to be the cause: it still happened once in 5 runs with it.)
            os.environ.setdefault("QT_X11_NO_MITSHM", "1")
            # Create and map the window before the first frame, and let the GUI toolkit handle
            # what mapping brings (its expose and first paint).
            cv2.namedWindow("infistream", cv2.WINDOW_AUTOSIZE)
            cv2.waitKey(50)
        if not self.window:
            Path(self.target).parent.mkdir(parents=True, exist_ok=True)

    def show(self, frame: np.ndarray, answer: Any, record: dict[str, Any], media: dict[str, Any]) -> None:
        if frame.ndim != 3:
            return   # audio: nothing to draw
        canvas = frame.copy()   # received frames are read-only views of the socket buffer
        if isinstance(answer, Detections):
            color = _FRESH if record.get("decision") == "infer" else _CARRIED
            for box, cls, score in zip(answer.boxes.astype(int), answer.classes, answer.scores):
                cv2.rectangle(canvas, tuple(box[:2]), tuple(box[2:]), color, 2)
                cv2.putText(canvas, f"{VEHICLE_CLASSES.get(int(cls), cls)} {score:.2f}", (box[0], max(12, box[1] - 4)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
        if self.region is not None:
            cv2.polylines(canvas, [self.region], True, _REGION, 2)
        if self.line is not None:
            cv2.line(canvas, tuple(self.line[0]), tuple(self.line[1]), _LINE, 2)
        text = f"{record.get('stream')} #{record.get('seq')} {record.get('decision')}  vehicles {record.get('count', 0)}"
        if record.get("in_region") is not None:
            text += f"  in region {record['in_region']}"
        if "crossings" in record:
            text += f"  crossed {record['crossings']}"
        cv2.rectangle(canvas, (0, 0), (canvas.shape[1], 22), (0, 0, 0), -1)
        cv2.putText(canvas, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        if self.window:
            cv2.imshow("infistream", canvas)
            cv2.waitKey(1)
            return
        if self._writer is None:
            fps = float(media.get("fps") or 25.0)
            self._writer = cv2.VideoWriter(self.target, cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                           (canvas.shape[1], canvas.shape[0]))
            if not self._writer.isOpened():
                raise OSError(f"cannot write an annotated video to {self.target}")
        self._writer.write(canvas)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
        if self.window:
            cv2.destroyAllWindows()
