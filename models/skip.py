"""InFi-Skip on video frames: a small network says how likely the detector is to find anything.

Per frame: shrink it to the network's input (models/frames.py, the same pixels it was trained
on), run the network (models/lite.py: LiteRT, no TensorFlow) for p = P(the model is needed),
i.e. P(at least one vehicle). Below the threshold the frame is skipped (its answer is the empty
result, count 0); otherwise the policy has no opinion, so in a cascade the next policy (Reuse)
decides, and alone the frame goes to the model. A larger threshold skips more.

The threshold comes from the filter's calibration for a per-frame agreement target
(``skip:target=0.9``; default 0.95) or is given (``skip:threshold=0.2``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.base import Decision, FramePolicy
from models.filterdir import FilterDir, open_filter_dir, resolve_threshold, shipped_dir
from models.frames import reduce_frame
from models.lite import LiteModel
from models.options import Option, number, parse_options
from pipeline.message import Message

SKIP_OPTIONS: dict[str, Option] = {"target": number(0, 1), "threshold": number(0, 1)}

def threshold_grid() -> np.ndarray:
    """0..1, finer near 0 where probabilities of nothing-there frames gather (log-spaced to 1e-4)."""
    return np.unique(np.concatenate([[0.0], np.geomspace(1e-4, 1.0, 81), np.linspace(0.0, 1.0, 101)]))


# The last frame shrunk, per size: in a cascade, Skip and Reuse read the same small image of the
# same frame, so it is shrunk once (a tenth of a millisecond on a 1080p frame, a sizeable share of
# a filter's budget). Keyed by the message's stream and seq and the frame's buffer and shape: the
# same input of one decide() round, never a later frame that happens to reuse the memory.
_last_reduced: dict[int, tuple[tuple, np.ndarray]] = {}


def reduce_message_frame(message: Message, size: int) -> np.ndarray:
    """The message's frame shrunk to `size` (models/frames.py), once per input and size."""
    frame = message.arrays[0]
    key = (message.stream, message.seq, frame.__array_interface__["data"][0], frame.shape, frame.strides)
    last = _last_reduced.get(size)
    if last is not None and last[0] == key:
        return last[1]
    image = reduce_frame(frame, size)
    if len(_last_reduced) >= 4 and size not in _last_reduced:
        _last_reduced.clear()
    _last_reduced[size] = (key, image)
    return image


class LearnedFramePolicy(FramePolicy):
    """What Skip and Reuse share: a network on the frame shrunk to `size`, run by `model`."""

    size: int
    model: LiteModel
    kind: str = ""                          # "skip" or "reuse": the filter directory's kind
    options: dict[str, Option] = {}

    @classmethod
    def from_spec(cls, argument: str) -> LearnedFramePolicy:
        """The shipped filter of this kind (models/shipped/vehicle/KIND)."""
        return cls.from_directory(shipped_dir(cls.kind), argument,
                                  name=f"{cls.kind}:{argument}" if argument else cls.kind)

    @classmethod
    def from_directory(cls, path: Path | str | FilterDir, argument: str = "",
                       name: str | None = None) -> LearnedFramePolicy:
        directory = path if isinstance(path, FilterDir) else open_filter_dir(path, cls.kind)
        name = name or str(directory.path)
        options = parse_options(name, argument, cls.options)
        threshold = resolve_threshold(directory, options, name)
        settings = {key: value for key, value in options.items() if key not in ("target", "threshold")}
        return cls(directory, threshold, name, **settings)

    def open(self) -> None:
        self.model.open()

    def close(self) -> None:
        self.model.close()

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """The network's output for the frame (threshold-free)."""
        return self.model.run(reduce_frame(frame, self.size))

    def decide(self, message: Message) -> Decision | None:
        if message.kind != "video" or not message.arrays:
            return None                     # not a frame: no opinion
        features = self.model.run(reduce_message_frame(message, self.size))
        return self.decide_prepared(message.stream, message.seq, features)

    def threshold_grid(self) -> np.ndarray:
        return threshold_grid()


class SkipPolicy(LearnedFramePolicy):
    """Skips a frame whose P(model needed) is below `threshold`; no opinion otherwise."""

    options = SKIP_OPTIONS
    kind = "skip"

    def __init__(self, directory: FilterDir, threshold: float, name: str = "skip"):
        self.directory = directory
        self.threshold = float(threshold)
        self.name = name
        self.size = directory.input_size
        self.model = LiteModel(directory.model_path, self.size, outputs=1)
        self._skip = Decision("skip", policy=name)     # immutable: one for every skipped frame

    def decide_prepared(self, stream: str, seq: int, features: np.ndarray) -> Decision | None:
        """`features`: [P(model needed)] (`prepare`)."""
        if features[0] < self.threshold:
            return self._skip
        return None
