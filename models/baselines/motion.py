"""A background-subtraction motion gate as a policy: reuse the last frame sent to the model while
not enough has moved since it.

Per stream, OpenCV's MOG2 background model runs on a small grey frame (models/frames.py) and
marks each pixel foreground (moving) or background. Counting vehicles changes only when
something moves, so a frame reuses the reference (the last frame this policy let through, as in
models/baselines/framediff.py) while the motion since the reference stays below `threshold`,
measured by `rule`:

- ``sum`` (default): the foreground share, summed over the frames since the reference; one
  moving car triggers the model after a while, heavy traffic at once;
- ``mask``: the share of pixels whose foreground state differs from the reference frame's;
- ``delta``: |foreground share now - foreground share at the reference|;
- ``now``: the foreground share of this frame alone.

MOG2 is stateful per stream, so its update runs in `decide_prepared` (prepare only shrinks the
frame): a frame an earlier policy of a cascade answered is never seen by the background model.
The reference is never more than `REUSE_HORIZON` seqs back. Streams kept are bounded
(`MAX_STREAMS`): a MOG2 model of a 64x64 grey frame is about a quarter of a megabyte.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from models.base import REUSE_HORIZON, Decision, FramePolicy
from models.baselines.framediff import parse_options, share_option, size_option, spec_name
from models.frames import reduce_grey

RULES = ("sum", "mask", "delta", "now")
MAX_STREAMS = 128
#: MOG2's squared Mahalanobis distance for a pixel to be foreground (OpenCV's default).
VAR_THRESHOLD = 16

#: Defaults measured on the test halves of the 22 shared traffic clips (best filtering rate at
#: >= 95 % per-frame count agreement, mean over clips, as a share of each clip's ceiling): at
#: 64x64 and a 100-frame history, sum 35 %, delta 34 %, mask 33 %, now 28 %; a 500-frame
#: history is 1-4 points worse for every rule, 96x96 no better. The thresholds are the median
#: over clips of each rule's best one; `infistream filter calibrate` picks one for a target.
DEFAULT_SIZE = 64
DEFAULT_HISTORY = 100
DEFAULT_RULE = "sum"
DEFAULT_THRESHOLDS = {"sum": 0.015, "mask": 0.005, "delta": 0.00025, "now": 0.01}


def history_option(value: str) -> int:
    history = int(value)
    if not 1 <= history <= 100_000:
        raise ValueError("the background history must be a whole number of frames from 1 to 100000")
    return history


def rule_option(value: str) -> str:
    if value not in RULES:
        raise ValueError(f"expected one of {', '.join(RULES)}")
    return value


@dataclass
class _StreamState:
    background: Any                          # cv2.BackgroundSubtractorMOG2
    ref_seq: int | None = None
    ref_mask: np.ndarray | None = None       # foreground mask at the reference (rule mask)
    ref_share: float = 0.0                   # foreground share at the reference (rule delta)
    moved: float = 0.0                       # foreground shares summed since the reference (rule sum)
    started: bool = False                    # the background model has seen a frame


class MotionGate(FramePolicy):
    """Reuse the reference while the motion since it (by `rule`) < `threshold`; else no opinion."""

    def __init__(self, threshold: float | None = None, size: int = DEFAULT_SIZE,
                 history: int = DEFAULT_HISTORY, rule: str = DEFAULT_RULE):
        self.rule = rule_option(rule)
        self.threshold = DEFAULT_THRESHOLDS[rule] if threshold is None else threshold
        self.size = size
        self.history = history
        self.name = spec_name("motion", {"rule": (rule, DEFAULT_RULE), "threshold": (threshold, None),
                                         "size": (size, DEFAULT_SIZE), "history": (history, DEFAULT_HISTORY)})
        self._streams: OrderedDict[str, _StreamState] = OrderedDict()
        self.forgotten_streams = 0     # streams dropped for MAX_STREAMS

    @classmethod
    def from_spec(cls, argument: str) -> MotionGate:
        options = parse_options("motion", argument, {"threshold": share_option, "size": size_option,
                                                     "history": history_option, "rule": rule_option})
        return cls(**options)

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """The small grey frame (the background model's update needs the stream: decide_prepared)."""
        return reduce_grey(frame, self.size)

    def _state(self, stream: str) -> _StreamState:
        state = self._streams.get(stream)
        if state is None:
            background = cv2.createBackgroundSubtractorMOG2(history=self.history, varThreshold=VAR_THRESHOLD,
                                                            detectShadows=False)
            state = self._streams[stream] = _StreamState(background)
            while len(self._streams) > MAX_STREAMS:
                self._streams.popitem(last=False)
                self.forgotten_streams += 1
        self._streams.move_to_end(stream)
        return state

    def motion(self, state: _StreamState, mask: np.ndarray) -> float:
        """The motion since the reference by `rule` (mask: this frame's foreground, bool)."""
        share = np.count_nonzero(mask) / mask.size
        if self.rule == "sum":
            state.moved += share
            return state.moved
        if self.rule == "now":
            return share
        if self.rule == "delta":
            return abs(share - state.ref_share)
        if state.ref_mask is None or state.ref_mask.shape != mask.shape:
            return float("inf")
        return np.count_nonzero(mask != state.ref_mask) / mask.size

    def decide_prepared(self, stream: str, seq: int, features: np.ndarray) -> Decision | None:
        state = self._state(stream)
        mask = state.background.apply(features) > 0
        if not state.started:           # MOG2 calls all of its first frame foreground: nothing is known yet
            mask[:] = False
            state.started = True
        if state.ref_seq is not None and 0 < seq - state.ref_seq <= REUSE_HORIZON \
                and self.motion(state, mask) < self.threshold:
            return Decision("reuse", ref_seq=state.ref_seq, policy=self.name)
        state.ref_seq, state.moved = seq, 0.0
        state.ref_share = np.count_nonzero(mask) / mask.size
        state.ref_mask = mask if self.rule == "mask" else None
        return None

    def feedback(self, stream: str, seq: int, result: dict[str, Any]) -> None:
        state = self._streams.get(stream)
        if state is not None and state.ref_seq == seq and result.get("decision") == "unanswered":
            state.ref_seq = None      # nothing may reuse an answer that does not exist

    def end_stream(self, stream: str) -> None:
        self._streams.pop(stream, None)

    def threshold_grid(self) -> np.ndarray:
        """0 (never reuse), then geometric steps from 1e-4; up to 50 for the summed rule (50
        frames' worth of a fully moving picture), 1 for the others (shares)."""
        top = 50.0 if self.rule == "sum" else 1.0
        return np.concatenate([[0.0], np.geomspace(1e-4, top, 49)])
