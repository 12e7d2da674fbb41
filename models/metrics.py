"""How good a filter is, per clip: the numbers every curve, table and target of the filters uses.

A filter's run over a clip gives, per frame, an action (infer, skip, reuse, exit) and the answer
the application ends up with (the model's count on inferred frames, 0 on skipped ones, the
referenced frame's count on reused ones). Against the unfiltered run's counts (the truth):

- `agreement`: the share of frames whose answer equals the truth exactly (the target, 0.95 by
  default, is set on this);
- `count_accuracy`: Reducto's per-frame counting accuracy, 1 - |a - b| / max(a, b), which dense
  scenes (counts that jitter by one) can reach where exact agreement cannot;
- `filtering_rate`: the share of frames kept away from the model;
- `ceiling`: what any filter can keep from the model at the target, about (share of frames whose
  count repeats the previous frame's) + the error budget (1 - target);
- `rate_at_target` and `fraction_of_ceiling`: one curve (agreement vs filtering rate over the
  thresholds) summed up as the best rate that meets the target, and that rate as a share of the
  ceiling.

Plain numpy; shares of nothing are undefined, so empty inputs are refused with a ValueError.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np

#: The actions a frame's answer can come from (models/base.py); "unanswered" is what the
#: aggregator records when no answer came (it is not kept from the model by the filter).
ACTIONS = ("infer", "skip", "reuse", "exit", "unanswered")


def _counts(values: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one count per frame (a 1-D sequence), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{what} is empty: a share over no frames is undefined")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{what} must hold numbers, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(f"{what} must hold finite counts")
    if (array < 0).any():
        raise ValueError(f"{what} must hold counts >= 0, got {array.min()}")
    return array


def _pair(answers: Sequence[int] | np.ndarray, truth: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _counts(answers, "answers"), _counts(truth, "truth")
    if a.shape != b.shape:
        raise ValueError(f"answers and truth must cover the same frames: {a.size} answers, {b.size} true counts")
    return a, b


def agreement(answers: Sequence[int] | np.ndarray, truth: Sequence[int] | np.ndarray) -> float:
    """The share of frames whose answer equals the true (unfiltered) count exactly, in [0, 1]."""
    a, b = _pair(answers, truth)
    return float(np.mean(a == b))


def count_accuracy(answers: Sequence[int] | np.ndarray, truth: Sequence[int] | np.ndarray) -> float:
    """Reducto's counting accuracy: the mean over frames of 1 - |a - b| / max(a, b), where a frame
    whose answer and truth are both 0 scores 1 (and one that is 0 against a non-zero count, 0)."""
    a, b = _pair(answers, truth)
    a, b = a.astype(np.float64), b.astype(np.float64)
    top = np.maximum(a, b)
    score = np.ones_like(top)
    nonzero = top > 0
    score[nonzero] = 1.0 - np.abs(a[nonzero] - b[nonzero]) / top[nonzero]
    return float(score.mean())


def repeat_share(counts: Sequence[int] | np.ndarray) -> float:
    """The share of frames whose count equals the previous frame's (the first frame has no
    previous one and never counts as a repeat): what reuse of the frame before can answer
    without any error."""
    array = _counts(counts, "counts")
    return float(np.count_nonzero(array[1:] == array[:-1]) / array.size)


def ceiling(counts: Sequence[int] | np.ndarray, budget: float = 0.05) -> float:
    """A clip's ceiling at an error budget (1 - target agreement): min(1, repeat_share(counts) +
    budget), with `counts` the unfiltered per-frame counts in frame order.

    Not a strict bound (a filter may reuse further back, or spend its budget better), but what
    a perfect "same as the frame before" filter keeps from the model: every filter is reported
    as a fraction of it.
    """
    if not 0 <= budget <= 1:
        raise ValueError(f"budget must be a share of frames in [0, 1], got {budget!r}")
    return min(1.0, repeat_share(counts) + budget)


def filtering_rate(actions: Iterable[str]) -> float:
    """The share of frames kept away from the model: actions skip, reuse and exit over all
    actions (infer and unanswered are not kept from it)."""
    values = list(actions)
    if not values:
        raise ValueError("actions is empty: a share over no frames is undefined")
    unknown = set(values) - set(ACTIONS)
    if unknown:
        raise ValueError(f"actions must be among {ACTIONS}, got {sorted(map(repr, unknown))[:5]}")
    kept = sum(1 for action in values if action in ("skip", "reuse", "exit"))
    return kept / len(values)


class CurvePoint(NamedTuple):
    """One threshold's outcome on a clip; as a tuple it starts (agreement, filtered), so plain
    pairs work wherever points are taken."""

    agreement: float
    filtered: float
    threshold: float | None = None


def rate_at_target(curve_points: Iterable[Sequence[float]], target: float) -> float:
    """The highest filtering rate among the points whose agreement is >= `target`; 0 when no
    point meets it (then only running the model on every frame does).

    `curve_points`: (agreement, filtering rate, ...) per threshold, in any order (`CurvePoint`s
    or plain pairs).
    """
    best = 0.0
    for point in curve_points:
        agreed, filtered = float(point[0]), float(point[1])
        if agreed >= target - 1e-12 and filtered > best:   # 1e-12: a share computed two ways
            best = filtered
    return best


def fraction_of_ceiling(rate: float, ceiling_value: float) -> float:
    """`rate` (frames kept from the model) as a fraction of the clip's ceiling. Not clipped: a
    filter that beats the "same as the frame before" estimate scores above 1."""
    if not ceiling_value > 0:
        raise ValueError(f"the ceiling must be > 0 to compare against, got {ceiling_value!r}")
    return float(rate) / float(ceiling_value)
