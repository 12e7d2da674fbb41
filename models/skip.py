"""InFi-Skip on video frames: a small network says how likely the detector is to find anything.

Per frame: shrink it to the network's input (models/frames.py, the same pixels it was trained
on), run the network (models/lite.py: LiteRT, no TensorFlow) for p = P(the model is needed),
i.e. P(at least one vehicle). Below the threshold the frame is skipped (its answer is the empty
result, count 0); otherwise the policy has no opinion, so in a cascade the next policy (Reuse)
decides, and alone the frame goes to the model. A larger threshold skips more.

The threshold comes from the filter's calibration for a per-frame agreement target
(``skip:target=0.9``; default 0.95) or is given (``skip:threshold=0.2``).

"The model is needed" means YOLO finds a vehicle scoring above the filter's conf floor (its
metadata's ``detector_conf_floor``: the conf its training labels were read at, 0.25 for the
shipped Skip): a frame it skips is empty for a worker run at any conf from the floor up, since
YOLO at a higher conf keeps a subset of those boxes. A worker run below the floor could find
vehicles in frames Skip skips, and skipped frames never reach the tracker: `conf_floor_problem`
says so before a run.

Skip checks itself. A network calibrated on some cameras can be wrong on a new one, or on its
own camera in new weather: in fog it calls every frame empty, and since a skipped frame never
reaches the model, nothing would ever say so. So, per stream:

- after `max_run` skips since the last probe (in a row or not: on a busy camera Skip is wrong
  on, it skips in short runs between frames it lets through) the next frame the network would
  skip goes to the model instead (a *probe*, an ``infer`` decision of this policy), so at
  least 1 in `max_run` + 1 would-skip frames is checked; until a stream has `window` checks,
  probes come twice as often (every `CHECK_SPACING` skips), so a camera Skip is wrong on is
  found out in seconds;
- every frame the network would have skipped and the model answered anyway (a probe, an
  audited skip, a frame Skip let through while distrusted) is a *check*; a check in which the
  model found a vehicle is a *miss*. Checks count at most once per `CHECK_SPACING` frames,
  except a miss right after a miss: after a miss the next probe comes after `CONFIRM_AFTER`
  skips, and a vehicle still there and still called empty counts at once (in fog a second
  miss otherwise took another 25 wrong skips to come). Skip skips on a stream only while at most `max_misses` of
  its last `window` checks there were misses. Distrusted, it lets would-skip frames through
  (to Reuse in a cascade, else to the model), and those answers are the checks that restore
  trust once the scene is empty again.

The feedback only steers; it does not gate: Skip does not ask the filter stage to wait for
answers (`uses_feedback` stays False), so a late answer only makes the distrust start later.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.base import Decision, FramePolicy, Policy
from models.filterdir import FilterDir, open_filter_dir, resolve_threshold, shipped_dir
from models.frames import reduce_frame
from models.lite import LiteModel
from models.options import Option, number, parse_options, stated_number, whole
from pipeline.errors import ConfigError
from pipeline.message import Message

SKIP_OPTIONS: dict[str, Option] = {"target": number(0, 1), "threshold": number(0, 1), "max_run": whole(0),
                                   "window": whole(1, 1024), "max_misses": whole(0)}

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
    defaults: dict[str, Any] = {}           # the options besides target/threshold, with their defaults

    def __init__(self, directory: FilterDir, threshold: float, name: str, outputs: int, settings: dict[str, Any]):
        unknown = set(settings) - set(self.defaults)
        if unknown:
            raise ConfigError(f"{self.kind} takes {', '.join(self.defaults)}, got {', '.join(sorted(unknown))}")
        self.directory = directory
        self.threshold = float(threshold)
        self.name = name
        self.size = directory.input_size
        self.model = LiteModel(directory.model_path, self.size, outputs=outputs)
        self.settings = {**self.defaults, **settings}

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
        policy = cls(directory, threshold, name, **settings)
        policy.target = options.get("target")
        return policy

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


def conf_floor_problem(policy: Policy, conf: float) -> str | None:
    """Why a detector run at confidence `conf` should not sit behind `policy` (a Skip, or a
    cascade holding one), or None: a Skip answers "no vehicle" for frames in which YOLO found
    nothing above its conf floor; below the floor YOLO may find vehicles in them, and they are
    lost. A Skip whose metadata does not state its floor is not judged, nor one at threshold 0
    (it never skips)."""
    for each in getattr(policy, "policies", [policy]):
        floor = getattr(each, "conf_floor", None)
        if isinstance(each, SkipPolicy) and each.threshold > 0 and floor is not None and conf < floor - 1e-9:
            return (f"the detector runs at conf {conf:g} but Skip ({each.name}) learned \"YOLO needed\" "
                    f"as a vehicle scoring above {floor:g}: it skips frames in which YOLO at conf {conf:g} may find "
                    f"vehicles, and those are lost (train a Skip with `infistream filter train skip --needed-conf "
                    f"{conf:g}`, or use a filter without Skip, such as reuse)")
    return None


@dataclass
class SkipStats:
    """What Skip's self-check did, over all streams (counters only grow)."""

    skipped: int = 0
    probes: int = 0              # would-skip frames sent to the model after max_run skips
    checked: int = 0             # would-skip frames the model answered (probes, audits, distrusted)
    misses: int = 0              # ... in which the model found a vehicle
    held_back: int = 0           # would-skip frames let through because the stream distrusted Skip
    streams_dropped: int = 0     # the least recently seen stream's state, when too many were open

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _StreamWatch:
    run: int = 0                             # skips since the last probe (or since distrust)
    checks: deque = field(default_factory=deque)   # the last `window` checks: True for a miss
    misses: int = 0                          # True values in `checks`
    last_check: int = -(1 << 62)             # seq of the last check counted
    # Would-skip seqs whose answers may still come back (the feedback runs a few inputs behind).
    unchecked: deque = field(default_factory=lambda: deque(maxlen=SkipPolicy.MAX_UNCHECKED))

    @property
    def after_miss(self) -> bool:
        """The last check counted was a miss (`SkipPolicy.CONFIRM_AFTER` follows it up)."""
        return bool(self.checks) and self.checks[-1]


class SkipPolicy(LearnedFramePolicy):
    """Skips a frame whose P(model needed) is below `threshold`; no opinion otherwise.

    Options: ``target`` or ``threshold``; ``max_run`` (at most this many skips per stream, in a
    row or not, before a would-skip frame goes to the model, 50; 0: never probe); ``window`` and
    ``max_misses`` (skip only while at most `max_misses` of the last `window` checks found a
    vehicle, 1 of 20). 50 frames are two seconds of 25 fps video: on an empty scene the probes
    cost 1 frame in 51. 1 in 20 is the 5 % error a 0.95 target allows, measured on the frames
    Skip would skip. These are design bounds, not tuned on the test halves.
    """

    options = SKIP_OPTIONS
    kind = "skip"
    defaults = {"max_run": 50, "window": 20, "max_misses": 1}
    #: Streams whose state is kept (the least recently seen are forgotten).
    MAX_STREAMS = 1024
    #: Checks count at most once per this many seqs of a stream. Consecutive frames are nearly
    #: the same picture: twenty checks in a row on an empty second of a busy foggy road would
    #: otherwise restore the trust that one probe a few seconds later takes away again.
    CHECK_SPACING = 25
    #: After a miss, the next probe comes after this many skips (not a whole spacing), and a
    #: miss there counts although close to the last check: it confirms the vehicle Skip is
    #: wrong about is still there. A clean check that close still does not count (the car may
    #: have just left; trust comes back only from spaced checks). 0: off.
    CONFIRM_AFTER = 5
    #: Would-skip seqs remembered per stream while their answers are on the way.
    MAX_UNCHECKED = 64

    def __init__(self, directory: FilterDir, threshold: float, name: str = "skip", **settings: Any):
        super().__init__(directory, threshold, name, 1, settings)
        self.max_run = int(self.settings["max_run"])
        self.window = int(self.settings["window"])
        self.max_misses = int(self.settings["max_misses"])
        self.stats = SkipStats()
        self._streams: OrderedDict[str, _StreamWatch] = OrderedDict()
        self._skip = Decision("skip", policy=name)     # immutable: one for every skipped frame
        self._probe = Decision("infer", policy=name)
        #: The lowest detector conf for which a skip is right (None: the metadata does not say).
        self.conf_floor = stated_number(directory.metadata.get("detector_conf_floor"))

    def _watch(self, stream: str) -> _StreamWatch:
        watch = self._streams.pop(stream, None)
        if watch is None:
            watch = _StreamWatch()
            if len(self._streams) >= self.MAX_STREAMS:
                self._streams.popitem(last=False)
                self.stats.streams_dropped += 1
        self._streams[stream] = watch                  # most recently seen last
        return watch

    def decide_prepared(self, stream: str, seq: int, features: np.ndarray) -> Decision | None:
        """`features`: [P(model needed)] (`prepare`)."""
        if features[0] >= self.threshold:
            # No reset of the stream's skips here: on a busy camera Skip wrongly calls empty, it
            # skips in short runs between frames it lets through, and a probe only after skips
            # in a row would never come (a dense highway held out of training: 254 skips, all
            # wrong, not one probe).
            return None
        watch = self._watch(stream)
        watch.unchecked.append(seq)
        if watch.misses > self.max_misses:
            watch.run = 0
            self.stats.held_back += 1
            return None
        spacing = self.max_run if len(watch.checks) >= self.window else min(self.max_run, self.CHECK_SPACING)
        if self.CONFIRM_AFTER and watch.after_miss:
            spacing = min(spacing, self.CONFIRM_AFTER)
        if self.max_run and watch.run >= spacing:
            watch.run = 0
            self.stats.probes += 1
            return self._probe
        watch.run += 1
        self.stats.skipped += 1
        return self._skip

    def feedback(self, stream: str, seq: int, result: dict[str, Any]) -> None:
        """A model answer to a frame Skip would have skipped is a check of Skip on this stream."""
        watch = self._streams.get(stream)
        if watch is None or not watch.unchecked or seq < watch.unchecked[0] or seq not in watch.unchecked:
            return
        if result.get("decision") != "infer":
            return
        count = result.get("count")
        if isinstance(count, bool) or not isinstance(count, int):
            return
        miss = count > 0
        self.stats.checked += 1
        self.stats.misses += miss
        confirms = bool(self.CONFIRM_AFTER and miss and watch.after_miss)
        if seq - watch.last_check < self.CHECK_SPACING and not confirms:
            return                  # the frame next to the last check says little more than it did
        watch.last_check = seq
        watch.checks.append(miss)
        watch.misses += miss
        if len(watch.checks) > self.window:
            watch.misses -= watch.checks.popleft()

    def end_stream(self, stream: str) -> None:
        self._streams.pop(stream, None)
