"""Offline replay of filter policies over a recorded clip, as the live pipeline would run them.

Live, the filter stage decides each frame in order, YOLO answers the frames sent to it, the
aggregator resolves every decision into an answer (``skip``: no vehicle; ``reuse``: the answer
already given to ``ref_seq``) and publishes it back to the filter, which hands it to
`Policy.feedback` a little later. `replay` does the same on a clip whose YOLO counts are known
(models/labels.py), without any process, socket or model run:

- the costly, threshold-free part of each frame policy (`FramePolicy.prepare`: downscaling,
  the network's features, a background model) runs ONCE per frame and policy (`prepare_clip`),
  in one decode of the clip;
- the cheap decisions (`decide_prepared`) are then replayed for every threshold, or threshold
  tuple for a cascade (`sweep`): per frame in seq order the first policy that decides answers,
  else the model runs; the answer is the true count for ``infer``, 0 for ``skip`` and the
  answer given to ``ref_seq`` for ``reuse``; every policy gets ``feedback`` with that answer
  `lag` frames late (live feedback crosses the workers and the aggregator: by default
  `DEFAULT_LAG` = 2 frames), and ``end_stream`` at the end, which resets its state.

Policies that are not frame policies (``stride:N``) are replayed through `decide` on a
placeholder frame. A clip's frames are numbered as the project's source numbers them: the
decode index, which equals the label files' ``seq`` on a clip with no undecodable frame
(`decode_frames` refuses to guess otherwise).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from pipeline.errors import ConfigError
from pipeline.message import Message
from models import metrics
from models.dataset import Split, cached_frames, label_end, split_indices
from models.labels import COUNT_CONF, DetectorSettings, cached_labels, count_labels, default_label_dir
from models.base import FEEDBACK_LAG, REUSE_HORIZON, Answers, FramePolicy, Policy

#: Frames between a decision and the moment its answer reaches the policy's `feedback`: the
#: most the live filter allows (`models.base.FEEDBACK_LAG`); `replay(lag=0)` is the ideal of
#: feedback before the next frame.
DEFAULT_LAG = FEEDBACK_LAG

#: Frames before a scored part that are replayed first, unscored (`PreparedClip.warmup`): about
#: 6 s of video, so that Reuse's cache is judged as it mostly runs, warm.
WARMUP = 150

#: Action codes in `Replay.action`.
INFER, SKIP, REUSE, EXIT = 0, 1, 2, 3
ACTION_CODES = {"infer": INFER, "skip": SKIP, "reuse": REUSE, "exit": EXIT}
ACTION_NAMES = {code: name for name, code in ACTION_CODES.items()}

#: `Replay.answered_by` of a frame no policy decided (the cascade's fallback: infer).
NOBODY = -1

_PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)


class ClipAlignmentError(ValueError):
    """A clip's decoded frames do not line up with its label file's seqs."""


# --------------------------------------------------------------------------------------------
# Frames and features

def decode_frames(path: Path | str, indices: range | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(seq, BGR frame) of `path` in order, seq = decode index; only the frames in `indices`
    are converted to arrays (the others are decoded and dropped), and decoding stops after it."""
    import av
    stop = indices.stop if indices is not None else None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for seq, frame in enumerate(container.decode(stream)):
            if stop is not None and seq >= stop:
                break
            if indices is None or seq in indices:
                yield seq, frame.to_ndarray(format="bgr24")


@dataclass
class PreparedClip:
    """One segment of a clip, ready for replays: seqs, YOLO counts, each policy's features.

    The first `warmup` frames are replayed but not scored: they stand for the stream running
    before the scored part (a live filter is rarely cold), so that a cache that needs answers
    before it can reuse is judged warm, as it runs most of the time.
    """

    name: str
    seq: np.ndarray                      # int64, increasing
    truth: np.ndarray                    # int32 vehicle count per frame (the reference answers)
    features: dict[str, list[np.ndarray]] = field(default_factory=dict)   # policy name -> per frame
    warmup: int = 0

    def __len__(self) -> int:
        """Frames scored."""
        return len(self.seq) - self.warmup

    @property
    def scored_truth(self) -> np.ndarray:
        return self.truth[self.warmup:]

    def features_for(self, policies: Sequence[Policy]) -> list[list[np.ndarray] | None]:
        """Each policy's features (None for a policy that is not a frame policy)."""
        missing = [p.name for p in policies if isinstance(p, FramePolicy) and p.name not in self.features]
        if missing:
            raise KeyError(f"clip {self.name}: no prepared features for {missing}; prepare_clip them first")
        return [self.features[p.name] if isinstance(p, FramePolicy) else None for p in policies]


def prepare_clip(name: str, frames: Iterable[tuple[int, np.ndarray | dict[int, np.ndarray]]],
                 truth_by_seq: dict[int, int], policies: Sequence[FramePolicy], progress: Any = None) -> PreparedClip:
    """Run every policy's `prepare` once per frame, in seq order (a stateful prepare, such as a
    background model, sees the frames as live). A frame is a BGR image, or {size: the image
    shrunk to size} for policies that say their size (`policy_input_size`). `truth_by_seq` holds
    the YOLO count of every frame; a frame without one is an alignment error, not a silent zero."""
    names = [policy.name for policy in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"policies to prepare need distinct names, got {names}")
    seqs, truth = [], []
    features: dict[str, list[np.ndarray]] = {name_: [] for name_ in names}
    for seq, frame in frames:
        if seq not in truth_by_seq:
            raise ClipAlignmentError(f"clip {name}: decoded frame {seq} has no label; relabel the clip")
        seqs.append(seq)
        truth.append(truth_by_seq[seq])
        for policy in policies:
            image = frame[policy_input_size(policy)] if isinstance(frame, dict) else frame
            features[policy.name].append(policy.prepare(image))
        if progress is not None:
            progress.update(1)
    return PreparedClip(name, np.asarray(seqs, np.int64), np.asarray(truth, np.int32), features)


@dataclass(frozen=True)
class LabelledClip:
    """A clip with its YOLO count per frame and the protocol's split (models/dataset.py)."""

    name: str
    path: Path
    seq: np.ndarray        # int64, 0..N-1
    count: np.ndarray      # int32
    split: Split

    def part(self, which: str) -> np.ndarray:
        """Positions of the "train", "val" or "test" frames."""
        if which not in ("train", "val", "test"):
            raise ValueError(f"a clip's part is train, val or test, got {which!r}")
        return getattr(self.split, which)


def labelled_clip(path: Path | str, label_dir: Path | None = None,
                  settings: DetectorSettings = DetectorSettings(), conf: float = COUNT_CONF) -> LabelledClip:
    """`path` with its cached labels, counted at detector conf `conf` (the conf answers are
    compared at); never runs YOLO (that is `infistream filter label`). Labels made at `settings`
    (the floor) serve, and so do labels made at `conf` itself (as caches were before the floor)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such clip: {path}")
    found = cached_labels(path, settings, conf, label_dir)
    if found is None:
        raise ConfigError(f"{path.name} has no labels in {label_dir or default_label_dir()}; label it first: "
                          f"infistream filter label --source {path}")
    label_file, floor = found
    end = label_end(label_file)
    labels = count_labels(label_file, conf=conf, floor=floor)
    # Frames read but never decoded at the END (H.264 frames before a keyframe the stream never
    # reaches, which the source counts last) leave decode order = seq; a gap anywhere else does not.
    if len(labels.seq) > end["frames"] or not np.array_equal(labels.seq, np.arange(len(labels.seq))):
        raise ClipAlignmentError(f"{path.name}: {len(labels.seq)} labelled frames of {end['frames']} read, "
                                 f"with gaps (undecodable frames mid-stream): decode order cannot stand for seq")
    return LabelledClip(path.stem, path, labels.seq, labels.count, split_indices(len(labels.seq)))


def policy_input_size(policy: Policy) -> int | None:
    """The square frame side a frame policy shrinks every frame to first (`models.frames`), when
    it says so (``size``, as the learned filters and the baselines do, or ``input_size``)."""
    for attribute in ("input_size", "size"):
        size = getattr(policy, attribute, None)
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            return size
    return None


def prepare_part(clip: LabelledClip, part: str, policies: Sequence[FramePolicy], progress: Any = None,
                 warmup: int = 0) -> PreparedClip:
    """`prepare_clip` on one part of `clip`. When every policy says the square size it shrinks
    frames to, each gets its frames from models/dataset.py's cache at that size (`reduce_frame`
    of a frame already at the size is the frame itself, so the features are the live ones, and
    a second evaluation decodes nothing); otherwise the clip is decoded once, full size, up to
    the part's last frame. Up to `warmup` frames before the part come first, unscored."""
    scored = clip.part(part)
    start = max(0, int(scored[0]) - warmup) if len(scored) else 0
    positions = np.arange(start, int(scored[-1]) + 1) if len(scored) else scored
    truth = dict(zip(clip.seq.tolist(), clip.count.tolist()))
    name = f"{clip.name}:{part}"
    if not len(positions):
        return PreparedClip(name, np.zeros(0, np.int64), np.zeros(0, np.int32), {p.name: [] for p in policies})
    sizes = [policy_input_size(policy) for policy in policies]
    if None not in sizes:
        wanted = sorted(set(sizes))
        arrays = {size: cached_frames(clip.path, size, also=wanted) for size in wanted}
        for size, array in arrays.items():
            if len(array) != len(clip.seq):
                raise ClipAlignmentError(f"{clip.name}: {len(array)} decoded frames, {len(clip.seq)} labelled")
        frames: Iterable[tuple[int, Any]] = ((int(clip.seq[i]), {size: arrays[size][i] for size in wanted})
                                             for i in positions)
    else:
        frames = decode_frames(clip.path, range(int(positions[0]), int(positions[-1]) + 1))
    prepared = prepare_clip(name, frames, truth, policies, progress)
    if len(prepared.seq) != len(positions):
        raise ClipAlignmentError(f"{clip.name}: decoded {len(prepared.seq)} frames of the {len(positions)} in its {part} part")
    prepared.warmup = len(positions) - len(scored)
    return prepared


# --------------------------------------------------------------------------------------------
# Replays

@dataclass(frozen=True)
class Replay:
    """Per frame of one replay: the action, the answer given, which policy answered."""

    thresholds: tuple[float | None, ...]
    seq: np.ndarray             # int64
    action: np.ndarray          # int8 action codes (INFER, SKIP, REUSE, EXIT)
    answer: np.ndarray          # int32 answer the aggregator gives each frame
    answered_by: np.ndarray     # int8 index of the deciding policy, NOBODY for the fallback infer
    ref_seq: np.ndarray         # int64, -1 where the action is not reuse
    unresolved: int             # reuses pointing at an answer the aggregator does not hold (taken as 0)

    @property
    def filtered(self) -> float:
        """Share of frames kept away from the model."""
        return float(np.mean(self.action != INFER)) if len(self.action) else 0.0

    def agreement(self, truth: np.ndarray) -> float:
        """Share of frames whose answer equals the model's count (models/metrics.py)."""
        return metrics.agreement(self.answer, truth)

    def count_accuracy(self, truth: np.ndarray) -> float:
        """Reducto's per-frame count accuracy (models/metrics.py)."""
        return metrics.count_accuracy(self.answer, truth)


def replay(policies: Sequence[Policy], clip: PreparedClip, thresholds: Sequence[float | None] | None = None,
           lag: int = DEFAULT_LAG, stream: str | None = None) -> Replay:
    """One replay of the cascade `policies` (a single policy is a cascade of one) over `clip`,
    each frame policy at its threshold in `thresholds` (None: leave it as it is)."""
    if lag < 0:
        raise ValueError(f"feedback lag must be >= 0 frames, got {lag}")
    thresholds = tuple(thresholds) if thresholds is not None else (None,) * len(policies)
    if len(thresholds) != len(policies):
        raise ValueError(f"{len(policies)} policies but {len(thresholds)} thresholds")
    stream = stream or f"replay:{clip.name}"
    features = clip.features_for(policies)
    saved = [getattr(policy, "threshold", None) for policy in policies]
    n = len(clip.seq)
    action = np.zeros(n, np.int8)
    answer = np.zeros(n, np.int32)
    answered_by = np.full(n, NOBODY, np.int8)
    ref = np.full(n, -1, np.int64)
    answers = Answers()                   # what the aggregator holds: seq -> resolved count
    pending: deque[tuple[int, dict[str, Any]]] = deque()
    unresolved_at = np.zeros(n, bool)
    seqs, truth = clip.seq.tolist(), clip.truth.tolist()
    try:
        for policy, threshold in zip(policies, thresholds):
            if threshold is not None:
                policy.threshold = threshold
        for i in range(n):
            seq = seqs[i]
            if len(pending) > lag:                       # answers of frames <= i - lag - 1 arrive now
                done, result = pending.popleft()
                for policy in policies:
                    policy.feedback(stream, done, result)
            decision, who = None, NOBODY
            for k, policy in enumerate(policies):
                if features[k] is not None:
                    decision = policy.decide_prepared(stream, seq, features[k][i])
                else:
                    decision = policy.decide(Message("video", stream, seq, arrays=(_PLACEHOLDER,)))
                if decision is not None:
                    who = k
                    break
            name = decision.action if decision is not None else "infer"
            if name == "infer":
                value = truth[i]
            elif name == "skip":
                value = 0
            elif name == "reuse":
                r = decision.ref_seq
                ref[i] = r
                known = answers.get(r) if seq - r <= REUSE_HORIZON else None
                if known is not None:
                    value = known
                else:
                    unresolved_at[i] = True
                    value = 0
            else:   # exit: the early exit's own answer
                value = int((decision.result or {}).get("count", 0))
            action[i], answer[i], answered_by[i] = ACTION_CODES[name], value, who
            answers.put(seq, value)
            result = {"stream": stream, "seq": seq, "decision": name, "count": value}
            if who != NOBODY:
                result["policy"] = policies[who].name
            if name == "reuse":
                result["ref_seq"] = decision.ref_seq
            pending.append((seq, result))
        for done, result in pending:
            for policy in policies:
                policy.feedback(stream, done, result)
    finally:
        for policy in policies:
            policy.end_stream(stream)
        for policy, value in zip(policies, saved):
            if value is not None:
                policy.threshold = value
    w = clip.warmup                          # warm-up frames: replayed, not scored
    return Replay(thresholds, clip.seq[w:].copy(), action[w:], answer[w:], answered_by[w:], ref[w:],
                  int(np.sum(unresolved_at[w:])))


def sweep(policies: Sequence[Policy], clip: PreparedClip, grid: Iterable[Sequence[float | None]],
          lag: int = DEFAULT_LAG) -> list[Replay]:
    """One replay per threshold tuple of `grid` (features are prepared once, in `clip`)."""
    return [replay(policies, clip, thresholds, lag=lag) for thresholds in grid]


def thin_grid(grid: Sequence[float] | np.ndarray, most: int) -> np.ndarray:
    """At most `most` values of an increasing grid, both ends kept: half spread evenly by index
    (dense where the grid is dense, as a log-spaced start), half nearest to evenly spaced values
    (so a grid crowded at one end still covers the whole range)."""
    grid = np.asarray(grid, np.float64)
    if len(grid) <= most:
        return grid
    by_index = np.round(np.linspace(0, len(grid) - 1, most - most // 2)).astype(int)
    by_value = np.searchsorted(grid, np.linspace(grid[0], grid[-1], most // 2)).clip(0, len(grid) - 1)
    return grid[np.unique(np.concatenate([by_index, by_value]))]
