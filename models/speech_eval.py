"""Speech filters judged on labelled mixture windows: metrics, thresholds for a target, val -> test.

Every audio policy here (models/baselines/vad.py's gates, the early-exit network, the audio
Skip filter) splits its work as frame policies do: `prepare(window)` computes what no threshold
changes, `decide_prepared` applies the threshold. So each policy's feature is computed ONCE per
window of a split (`prepare_policy`, which also times `prepare` per window), and any threshold,
or any threshold tuple of a cascade, is replayed on the stored features.

A window is SKIPPED when the policy decides ``skip`` or ``exit`` (the early exit's "no recognition
needed"): its answer becomes the empty transcript. A cascade of audio policies skips a window
when any of its gates does (the first decision wins, and each of these policies either skips or
has no opinion), and runs its gates cheapest first, so a later gate only sees what earlier ones
let through. ``stride:N`` skips N-1 windows of every N of a clip.

Metrics per threshold, over all windows and per subset (clean, noise, music, real):

- skip rate: skipped windows / windows;
- InFi accuracy: 1 - skipped windows that needed recognition / windows (a skipped window that
  did not need it is right; a window sent to the recognizer is always right);
- agreement: windows whose decision matches the rule (sent <=> needs recognition) / windows;
- time saved: (recognizer ms of the skipped windows - the filter's ms on every window it ran on)
  / recognizer ms of all windows, with the recognizer's ms as measured per window when the split
  was labelled and the filter's as the median of its `prepare` on this machine.

Calibration (`calibrate`) picks, on the VALIDATION split, the threshold (tuple) that skips the
most windows while both the pooled InFi accuracy and the mean of the per-subset InFi accuracies
reach the target (the mean keeps a large subset from hiding a small one the filter fails on, as
video calibration does with clips). The test split is read only to say how the picks hold
(`score_at`) and what the best threshold on test itself would have given (`oracle`: the ceiling,
never a pick). `cross_fit` says what calibrating on real recordings would give: each half of the
test clips scored at thresholds picked on val plus the other half.
"""

from __future__ import annotations

import datetime
import itertools
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.errors import ConfigError
from models.base import FramePolicy


def default_mixtures() -> Path:
    """The seed-0 mixtures `make train` builds (models/mixtures.py `default_mixture_dir`), under
    the cache directory of this run (`$INFI_CACHE`, else the checkout's .cache)."""
    from models.mixtures import default_mixture_dir
    return default_mixture_dir(0)


TARGETS = (0.9, 0.95, 0.98)
DEFAULT_TARGET = 0.95
SUBSETS = ("clean", "noise", "music", "real")
#: A cascade's joint grid holds at most this many threshold tuples (each gate's grid thinned).
CASCADE_POINTS = 40_000
#: Decisions that leave a window to its empty transcript.
SKIPPING = ("skip", "exit")
CALIBRATION_FORMAT = 1


# --------------------------------------------------------------------------------------------
# Windows of a split

@dataclass(frozen=True)
class Windows:
    """A split's windows: samples [windows, 32,000] float32 and, per window, the rule's answer
    (`needs`), the recognizer's ms when labelled, the subset, the clip and the window's index in it."""

    split: str
    samples: np.ndarray
    needs: np.ndarray
    infer_ms: np.ndarray
    subsets: np.ndarray
    clips: np.ndarray
    seqs: np.ndarray

    def __post_init__(self) -> None:
        count = len(self.needs)
        for name in ("samples", "infer_ms", "subsets", "clips", "seqs"):
            if len(getattr(self, name)) != count:
                raise ValueError(f"Windows: {name} has {len(getattr(self, name))} rows, needs has {count}")

    def __len__(self) -> int:
        return len(self.needs)

    def take(self, mask: np.ndarray) -> Windows:
        return Windows(self.split, self.samples[mask], self.needs[mask], self.infer_ms[mask], self.subsets[mask],
                       self.clips[mask], self.seqs[mask])

    def concat(self, other: Windows, split: str) -> Windows:
        """These windows then `other`'s, as one split named `split`."""
        return Windows(split, *(np.concatenate([getattr(self, name), getattr(other, name)])
                                for name in ("samples", "needs", "infer_ms", "subsets", "clips", "seqs")))

    def subset_names(self) -> list[str]:
        present = set(self.subsets.tolist())
        return [name for name in SUBSETS if name in present] + sorted(present - set(SUBSETS))

    @classmethod
    def from_rows(cls, split: str, samples: np.ndarray, needs: np.ndarray, rows: Sequence[dict]) -> Windows:
        return cls(split, np.asarray(samples, np.float32), np.asarray(needs, bool),
                   np.asarray([float(row["infer_ms"]) for row in rows], np.float64),
                   np.asarray([row["subset"] for row in rows]), np.asarray([row["clip"] for row in rows]),
                   np.asarray([int(row["seq"]) for row in rows], np.int64))


def load_windows(mixtures: Path | None = None, split: str = "val", words: int = 2,
                 label_dir: Path | None = None) -> Windows:
    """A labelled mixture split (models/mixtures.py `load_split`; labels come from the cache)."""
    from models.mixtures import load_split
    mixtures = Path(mixtures or default_mixtures())
    if not (mixtures / "manifest.json").is_file():
        raise ConfigError(f"{mixtures} is not a mixture directory (no manifest.json): build it with "
                          f"`infistream filter mixtures --seed 0 --label`")
    samples, needs, rows = load_split(mixtures, split, label_dir=label_dir, words=words)
    return Windows.from_rows(split, samples, needs, rows)


# --------------------------------------------------------------------------------------------
# Scores

@dataclass(frozen=True)
class Score:
    """What a set of skip decisions did to `windows` windows (see the module for each metric)."""

    windows: int
    skipped: int
    errors: int                  # skipped windows that needed recognition
    agreed: int                  # decisions that match the rule
    infer_ms: float              # the recognizer's ms over all windows
    saved_ms: float              # the recognizer's ms of the skipped windows
    filter_ms: float             # the filter's ms over all windows it ran on

    @property
    def skip_rate(self) -> float:
        return self.skipped / self.windows if self.windows else 0.0

    @property
    def infi_accuracy(self) -> float:
        return 1.0 - self.errors / self.windows if self.windows else 1.0

    @property
    def agreement(self) -> float:
        return self.agreed / self.windows if self.windows else 1.0

    @property
    def time_saved(self) -> float:
        return (self.saved_ms - self.filter_ms) / self.infer_ms if self.infer_ms else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"windows": self.windows, "skip_rate": round(self.skip_rate, 4),
                "infi_accuracy": round(self.infi_accuracy, 4), "agreement": round(self.agreement, 4),
                "time_saved": round(self.time_saved, 4), "skipped": self.skipped, "errors": self.errors,
                "filter_ms_per_window": round(self.filter_ms / self.windows, 4) if self.windows else 0.0}


def score(skipped: np.ndarray, windows: Windows, filter_ms: np.ndarray | float = 0.0) -> Score:
    """The metrics of boolean `skipped` [windows] on `windows`; `filter_ms` is the filter's ms
    per window (one number for every window, or one per window)."""
    skipped = np.asarray(skipped, bool)
    if skipped.shape != windows.needs.shape:
        raise ValueError(f"score: {skipped.shape[0] if skipped.ndim else 0} decisions for {len(windows)} windows")
    cost = np.broadcast_to(np.asarray(filter_ms, np.float64), skipped.shape)
    return Score(len(windows), int(skipped.sum()), int((skipped & windows.needs).sum()),
                 int(((~skipped) == windows.needs).sum()), float(windows.infer_ms.sum()),
                 float(windows.infer_ms[skipped].sum()), float(cost.sum()))


def score_by_subset(skipped: np.ndarray, windows: Windows, filter_ms: np.ndarray | float = 0.0) -> dict[str, Score]:
    """``{"all": Score, "clean": Score, ...}``."""
    skipped = np.asarray(skipped, bool)
    cost = np.broadcast_to(np.asarray(filter_ms, np.float64), skipped.shape)
    scores = {"all": score(skipped, windows, cost)}
    for name in windows.subset_names():
        mask = windows.subsets == name
        scores[name] = score(skipped[mask], windows.take(mask), cost[mask])
    return scores


# --------------------------------------------------------------------------------------------
# Policies prepared on a split

@dataclass
class Prepared:
    """One policy's `prepare` output for every window of a split, and what each call took."""

    spec: str
    policy: FramePolicy
    features: np.ndarray
    ms: np.ndarray

    @property
    def cost_ms(self) -> float:
        """The policy's cost per window: the median of its `prepare` time (the threshold test on
        a prepared feature is a comparison)."""
        return float(np.median(self.ms)) if len(self.ms) else 0.0

    def take(self, mask: np.ndarray) -> Prepared:
        return Prepared(self.spec, self.policy, self.features[mask], self.ms[mask])

    def concat(self, other: Prepared) -> Prepared:
        """These windows' features then `other`'s (the same policy on another split)."""
        return Prepared(self.spec, self.policy, np.concatenate([self.features, other.features]),
                        np.concatenate([self.ms, other.ms]))

    def grid(self) -> np.ndarray:
        """The policy's thresholds, rounded as a spec string writes them (6 significant digits),
        so that a threshold written into a spec skips exactly the windows it skipped here."""
        return np.asarray([float(f"{t:.6g}") for t in self.policy.threshold_grid()], np.float64)

    def skips(self, threshold: float) -> np.ndarray:
        """Which windows the policy skips at `threshold`."""
        from models.baselines.vad import AudioGate
        if isinstance(self.policy, AudioGate):          # its decision is exactly this comparison
            return self.features[:, 0] < threshold
        saved = self.policy.threshold
        try:
            self.policy.threshold = float(threshold)
            decisions = [self.policy.decide_prepared("eval", i, row) for i, row in enumerate(self.features)]
        finally:
            self.policy.threshold = saved
        return np.asarray([d is not None and d.action in SKIPPING for d in decisions], bool)

    def masks(self, grid: Sequence[float]) -> np.ndarray:
        """`skips` at every threshold of `grid`: bool [thresholds, windows]."""
        return np.stack([self.skips(t) for t in grid]) if len(grid) else np.zeros((0, len(self.features)), bool)


def open_policy(spec: str) -> FramePolicy:
    """The audio frame policy a spec names (one policy: cascades are lists of specs here)."""
    from models.registry import parse_policy
    if "+" in spec:
        raise ConfigError(f"{spec!r} is a cascade; give its parts one by one")
    policy = parse_policy(spec)
    if not isinstance(policy, FramePolicy) or policy.input_kind != "audio":
        raise ConfigError(f"{spec!r} is not an audio filter policy (vad:silero, vad:webrtc:3, energy, early-exit, "
                          f"audio-skip or a trained audio filter directory); got {type(policy).__name__}")
    return policy


def prepare_policy(policy: FramePolicy, windows: Windows, spec: str = "") -> Prepared:
    """`policy.prepare` on every window of `windows` (the policy open), timed one by one."""
    features, ms = [], np.empty(len(windows))
    for i, window in enumerate(windows.samples):
        started = time.perf_counter()
        features.append(np.asarray(policy.prepare(window)))
        ms[i] = (time.perf_counter() - started) * 1000
    return Prepared(spec or policy.name, policy, np.stack(features) if features else np.zeros((0, 1)), ms)


def cascade_outcome(parts: Sequence[Prepared], thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(skipped [windows], filter ms per window) of the gates in order at `thresholds`: each gate
    costs its median `prepare` on the windows the gates before it let through."""
    if len(parts) != len(thresholds):
        raise ValueError(f"{len(parts)} policies, {len(thresholds)} thresholds")
    windows = len(parts[0].features)
    skipped, cost = np.zeros(windows, bool), np.zeros(windows)
    for part, threshold in zip(parts, thresholds):
        cost[~skipped] += part.cost_ms
        skipped |= part.skips(threshold)
    return skipped, cost


def stride_skips(windows: Windows, n: int) -> np.ndarray:
    """``stride:N``: of every N windows of a clip (counted from its first), the first is recognized
    and the N-1 after it are skipped (their answer taken as the empty transcript)."""
    if n < 1:
        raise ConfigError(f"stride needs N >= 1, got {n}")
    skipped = np.zeros(len(windows), bool)
    for clip in set(windows.clips.tolist()):
        idx = np.flatnonzero(windows.clips == clip)
        order = idx[np.argsort(windows.seqs[idx], kind="stable")]
        skipped[order] = (np.arange(len(order)) % n) != 0
    return skipped


# --------------------------------------------------------------------------------------------
# Threshold tuples: scoring a grid, choosing for a target

@dataclass(frozen=True)
class GridPoint:
    """A threshold tuple's outcome on a split: pooled, and the InFi accuracy per subset."""

    thresholds: tuple[float, ...]
    skip_rate: float
    infi_accuracy: float
    agreement: float
    per_subset: dict[str, float] = field(default_factory=dict)       # subset -> InFi accuracy

    @property
    def subset_mean(self) -> float:
        return float(np.mean(list(self.per_subset.values()))) if self.per_subset else self.infi_accuracy

    def meets(self, target: float) -> bool:
        return min(self.infi_accuracy, self.subset_mean) >= target - 1e-12


def thin(grid: np.ndarray, most: int) -> np.ndarray:
    """At most `most` values of `grid` (in its order), both ends kept, spread by index."""
    grid = np.asarray(grid, np.float64)
    if len(grid) <= most:
        return grid
    return grid[np.unique(np.round(np.linspace(0, len(grid) - 1, max(most, 2))).astype(int))]


def score_grid(parts: Sequence[Prepared], windows: Windows, grids: Sequence[np.ndarray],
               by_subset: bool = True) -> list[GridPoint]:
    """Every tuple of the product of `grids` (one grid per part), scored on `windows` (with the
    InFi accuracy per subset unless not `by_subset`)."""
    if not parts:
        raise ValueError("score_grid needs at least one policy")
    masks = [part.masks(grid) for part, grid in zip(parts, grids)]
    subsets = windows.subset_names() if by_subset else []
    subset_masks = [windows.subsets == name for name in subsets]
    needs = windows.needs
    points = []
    for index in itertools.product(*(range(len(grid)) for grid in grids)):
        skipped = masks[0][index[0]].copy()
        for mask, i in zip(masks[1:], index[1:]):
            skipped |= mask[i]
        errors = skipped & needs
        per_subset = {name: 1.0 - float(errors[m].sum()) / int(m.sum()) for name, m in zip(subsets, subset_masks)}
        points.append(GridPoint(tuple(float(grid[i]) for grid, i in zip(grids, index)), float(skipped.mean()),
                                1.0 - float(errors.sum()) / len(needs), float(((~skipped) == needs).mean()),
                                per_subset))
    return points


def choose(points: Sequence[GridPoint], target: float) -> GridPoint | None:
    """The point that skips the most windows among those meeting `target` (ties: the higher InFi
    accuracy, then the earlier point: grids run from filtering least to most); None if none does."""
    best = None
    for point in points:
        if point.meets(target) and (best is None or (point.skip_rate, point.infi_accuracy) >
                                    (best.skip_rate, best.infi_accuracy)):
            best = point
    return best


def grids_for(parts: Sequence[Prepared], most: int = CASCADE_POINTS) -> list[np.ndarray]:
    """Each part's grid, thinned so that their product holds at most `most` tuples."""
    per_part = max(2, int(math.floor(most ** (1.0 / len(parts)))))
    return [thin(part.grid(), per_part) for part in parts]


# --------------------------------------------------------------------------------------------
# Spec strings with a threshold

def with_threshold(spec: str, threshold: float) -> str:
    """One policy's spec at `threshold`: ``energy`` -> ``energy:threshold=-62``, ``vad:webrtc:3``
    -> ``vad:webrtc:3,threshold=0.2``; a ``threshold=`` or ``target=`` already there is replaced."""
    value = f"{threshold:.6g}"
    name, _, argument = spec.partition(":")
    head, options = argument, ""
    if name == "vad":
        kind, _, rest = argument.partition(":")
        if kind == "webrtc":
            mode, _, options = rest.partition(",")
            if "=" in mode:
                mode, options = "", rest
            head = f"webrtc:{mode}" if mode else "webrtc"
        else:
            head, options = kind, rest
    elif "=" in argument:
        head, options = "", argument
    kept = [o for o in options.split(",") if o and not re.match(r"\s*(threshold|target)\s*=", o)]
    options = ",".join(kept + [f"threshold={value}"])
    if name == "vad" and head.startswith("webrtc:"):
        return f"vad:{head},{options}"
    prefix = f"{name}:{head}" if head else name
    return f"{prefix}:{options}"


def cascade_spec(specs: Sequence[str], thresholds: Sequence[float]) -> str:
    return "+".join(with_threshold(spec, t) for spec, t in zip(specs, thresholds))


# --------------------------------------------------------------------------------------------
# Calibration on validation, and how it holds on test

def calibrate(parts: Sequence[Prepared], windows: Windows, targets: Sequence[float] = TARGETS,
              most: int = CASCADE_POINTS) -> dict[str, Any]:
    """Thresholds for each target on `windows` (the validation split): one policy, or a cascade
    (the parts in order) searched jointly on a grid that also holds each gate alone (the others
    off), so the cascade never does worse on validation than its best gate alone.

    Returns ``{"targets": {"0.95": {"thresholds": [...], "spec": "...", "validation": {...}}},
    "unmet": {...}, "envelope": [[skip rate, InFi accuracy], ...]}``; a single policy's entries
    also say ``"threshold"``, as a filter's calibration.json does, and it has the whole "curve"."""
    parts = list(parts)
    grids = grids_for(parts, most)
    points = score_grid(parts, windows, grids)
    if len(parts) > 1:                   # each gate alone, at every threshold of its full grid
        offs = [float(part.grid()[0]) for part in parts]
        for k, part in enumerate(parts):
            alone = [np.asarray([o], np.float64) for o in offs]
            alone[k] = part.grid()
            points += score_grid(parts, windows, alone)
    specs = [part.spec for part in parts]
    chosen, unmet = {}, {}
    for target in targets:
        label = f"{target:g}"
        point = choose(points, target)
        if point is None:
            best = max(points, key=lambda p: (min(p.infi_accuracy, p.subset_mean), p.skip_rate))
            unmet[label] = {"best_infi_accuracy": round(best.infi_accuracy, 4), "at": list(best.thresholds)}
            continue
        skipped, cost = cascade_outcome(parts, point.thresholds)
        entry: dict[str, Any] = {"thresholds": list(point.thresholds), "spec": cascade_spec(specs, point.thresholds)}
        if len(parts) == 1:
            entry = {"threshold": point.thresholds[0], **entry}
        else:
            kept = unneeded_gates_dropped(parts, point.thresholds, skipped)
            if len(kept) < len(parts):
                entry["pruned"] = cascade_spec([parts[k].spec for k in kept], [point.thresholds[k] for k in kept])
                entry["kept"] = kept
        entry["validation"] = {name: s.to_json() for name, s in score_by_subset(skipped, windows, cost).items()}
        chosen[label] = entry
    result = {"targets": chosen, "unmet": unmet, "envelope": envelope(points)}
    if len(parts) == 1:                  # [threshold, skip rate, InFi accuracy, subset mean], by threshold
        curve = sorted({p.thresholds: p for p in points}.values(), key=lambda p: p.skip_rate)
        result["curve"] = [[*p.thresholds, round(p.skip_rate, 4), round(p.infi_accuracy, 4), round(p.subset_mean, 4)]
                           for p in curve]
    return result


def unneeded_gates_dropped(parts: Sequence[Prepared], thresholds: Sequence[float], skipped: np.ndarray) -> list[int]:
    """Indices of the gates to keep: a gate at its grid's first (least filtering) threshold is
    dropped when the others alone skip the same windows (it would only cost time)."""
    kept = list(range(len(parts)))
    for k in range(len(parts)):
        if thresholds[k] != parts[k].grid()[0] or len(kept) == 1:
            continue
        others = [i for i in kept if i != k]
        if np.array_equal(cascade_outcome([parts[i] for i in others], [thresholds[i] for i in others])[0], skipped):
            kept = others
    return kept


def score_at(parts: Sequence[Prepared], windows: Windows, thresholds: Sequence[float]) -> dict[str, dict[str, Any]]:
    """Per subset, what `thresholds` (picked elsewhere) do on `windows`."""
    skipped, cost = cascade_outcome(parts, thresholds)
    return {name: s.to_json() for name, s in score_by_subset(skipped, windows, cost).items()}


def oracle(parts: Sequence[Prepared], windows: Windows, target: float = DEFAULT_TARGET,
           most: int = CASCADE_POINTS) -> dict[str, Any]:
    """The best threshold tuple ON `windows` itself (the test split: a ceiling, never a pick),
    pooled and per subset (each subset its own best), and under "curves" the curve of skip rate
    against InFi accuracy, pooled and per subset (the upper-left envelope of the grid)."""
    grids = grids_for(parts, most)
    result: dict[str, Any] = {}
    curves: dict[str, list[list[float]]] = {}
    for name in ["all", *windows.subset_names()]:
        mask = np.ones(len(windows), bool) if name == "all" else windows.subsets == name
        sub, sub_parts = windows.take(mask), [part.take(mask) for part in parts]
        points = score_grid(sub_parts, sub, grids, by_subset=False)      # a subset is one group
        point = choose(points, target)
        if point is None:
            result[name] = None
            continue
        skipped, cost = cascade_outcome(sub_parts, point.thresholds)
        result[name] = {"thresholds": list(point.thresholds), **score(skipped, sub, cost).to_json()}
        curves[name] = envelope(points)
    result["curves"] = curves
    return result


def cross_fit_folds(windows: Windows, folds: int = 2) -> np.ndarray:
    """Fold index per window: the clips of each subset, in name order, dealt to the folds in turn
    (a clip's windows stay together, and each subset is spread over the folds)."""
    fold_of_clip: dict[str, int] = {}
    for name in windows.subset_names():
        for i, clip in enumerate(sorted(set(windows.clips[windows.subsets == name].tolist()))):
            fold_of_clip[clip] = i % folds
    return np.asarray([fold_of_clip[clip] for clip in windows.clips.tolist()], np.int64)


def cross_fit(val_parts: Sequence[Prepared], val: Windows, test_parts: Sequence[Prepared], test: Windows,
              target: float = DEFAULT_TARGET, folds: int = 2, most: int = CASCADE_POINTS) -> dict[str, Any]:
    """What calibrating on real recordings too would give, measured without picking on what is
    scored: the test clips are dealt into `folds` (`cross_fit_folds`); each fold's windows are
    scored at the thresholds `calibrate` picks on val plus the OTHER folds' test windows (so the
    pick sees real speech and real music, never the clip it is scored on, and the networks were
    trained on none of them). The folds' decisions together are scored per subset.

    Returns ``{"by_subset": {subset: Score json}, "folds": [{"thresholds", "calibrated_on"}...]}``,
    or ``{"unmet": fold}`` when a fold's calibration set has no tuple meeting `target`."""
    fold = cross_fit_folds(test, folds)
    skipped, cost = np.zeros(len(test), bool), np.zeros(len(test))
    picks = []
    for k in range(folds):
        scored, rest = fold == k, fold != k
        windows = val.concat(test.take(rest), "val+test")
        parts = [v.concat(t.take(rest)) for v, t in zip(val_parts, test_parts)]
        entry = calibrate(parts, windows, [target], most)["targets"].get(f"{target:g}")
        if entry is None:
            return {"unmet": k, "folds": picks}
        fold_skipped, fold_cost = cascade_outcome([t.take(scored) for t in test_parts], entry["thresholds"])
        skipped[scored], cost[scored] = fold_skipped, fold_cost
        picks.append({"thresholds": entry["thresholds"], "calibrated_on": len(windows),
                      "scored_clips": sorted(set(test.clips[scored].tolist()))})
    return {"by_subset": {name: s.to_json() for name, s in score_by_subset(skipped, test, cost).items()},
            "folds": picks}


def envelope(points: Sequence[GridPoint]) -> list[list[float]]:
    """[skip rate, InFi accuracy] of the points no other point beats on both, by skip rate."""
    ordered = sorted(points, key=lambda p: (-p.infi_accuracy, -p.skip_rate))
    front, best = [], -1.0
    for point in ordered:
        if point.skip_rate > best + 1e-12:
            front.append([round(point.skip_rate, 4), round(point.infi_accuracy, 4)])
            best = point.skip_rate
    return sorted(front)


# --------------------------------------------------------------------------------------------
# calibration.json for a filter directory, and the command's documents

def provenance(mixtures: Path, windows: Windows, words: int) -> dict[str, Any]:
    from models.export import git_commit
    return {"data": {"mixtures": str(mixtures), "split": windows.split, "windows": len(windows), "words": words,
                     "needs_recognition": round(float(windows.needs.mean()), 4) if len(windows) else None},
            "commit": git_commit(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def calibration_document(result: dict[str, Any], mixtures: Path, windows: Windows, words: int) -> dict[str, Any]:
    """What a filter directory's calibration.json holds for the speech task (models/filterdir.py
    reads ``targets -> {"0.95": {"threshold": t}}``)."""
    return {"format": CALIBRATION_FORMAT, "task": "speech", "metric": "infi-accuracy",
            "rule": f"more than {words} words needs recognition", **result, **provenance(mixtures, windows, words)}


def describe(spec: str, result: dict[str, Any]) -> list[str]:
    lines = []
    for target, entry in result.get("targets", {}).items():
        v = entry["validation"]["all"]
        lines.append(f"{spec} target {target}: {entry['spec']} -> validation skip {v['skip_rate']:.1%}, InFi accuracy "
                     f"{v['infi_accuracy']:.3f}, agreement {v['agreement']:.3f}, time saved {v['time_saved']:.1%}")
    for target, entry in result.get("unmet", {}).items():
        lines.append(f"{spec} target {target}: NOT MET on validation (best InFi accuracy {entry['best_infi_accuracy']:.3f})")
    return lines


# --------------------------------------------------------------------------------------------
# ``infistream filter calibrate --task speech SPEC [SPEC ...]``

def split_spec(spec: str) -> list[str]:
    parts = [part.strip() for part in spec.split("+")]
    if not spec.strip() or any(not part for part in parts):
        raise ConfigError(f"{spec!r}: give a policy (energy, vad:silero) or a cascade joined with + (energy+vad:silero)")
    return parts


def policy_directory(policy: FramePolicy) -> Path | None:
    """The filter directory a learned policy reads (its calibration.json goes there), or None."""
    directory = getattr(policy, "directory", None)
    path = getattr(directory, "path", None)
    return Path(path) if path is not None else None


def calibrate_specs(specs: Sequence[str], val: Windows, targets: Sequence[float] = TARGETS,
                    say: Any = None) -> tuple[dict[str, dict[str, Any]], dict[str, Prepared]]:
    """Every spec (a policy or a cascade) calibrated on `val`; each distinct policy prepared once
    and its policy left open (the caller closes them: `close_all`). A cascade's gates run
    cheapest first (by the median cost of their `prepare`), whatever the order given."""
    prepared: dict[str, Prepared] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        for spec in specs:
            parts = split_spec(spec)
            if len(set(parts)) < len(parts):
                raise ConfigError(f"{spec!r} names a policy twice")
            for part in parts:
                if part not in prepared:
                    policy = open_policy(part)
                    policy.open()
                    prepared[part] = prepare_policy(policy, val, part)
                    if say:
                        say(f"prepared {part} on {len(val)} {val.split} windows: {prepared[part].cost_ms:.2f} ms per window")
            ordered = sorted(parts, key=lambda part: prepared[part].cost_ms)
            result = calibrate([prepared[part] for part in ordered], val, targets)
            results[spec] = {"order": ordered, "cost_ms": {part: round(prepared[part].cost_ms, 4) for part in ordered},
                             **result}
    except BaseException:
        close_all(prepared)
        raise
    return results, prepared


def close_all(prepared: dict[str, Prepared]) -> None:
    for part in prepared.values():
        part.policy.close()


#: Shipping prefers fewer gates unless more of them skip this much more on validation, in
#: standard errors of the skip rate (sqrt(p (1 - p) / windows): 2.9 points on 290 windows): a
#: cascade's gain smaller than the sampling noise of the split that picked it is not a gain.
SHIP_MARGIN_SE = 1.0


def choose_shipped(results: dict[str, dict[str, Any]], targets: Sequence[float], windows: int) -> dict[str, Any]:
    """Per target, the spec to ship, from validation only: among the specs that met the target,
    those skipping within `SHIP_MARGIN_SE` standard errors of the most skipping one; of them the
    fewest gates, then the most recognizer time saved net of the filter's cost (the issue's other
    measure), then the most skipping. ``{"0.95": {"spec", "from", "validation"}}``."""
    shipped = {}
    for target in targets:
        label = f"{target:g}"
        met = [(name, result["targets"][label]) for name, result in results.items() if label in result["targets"]]
        if not met:
            continue
        rate = lambda entry: entry["validation"]["all"]["skip_rate"]      # noqa: E731
        best = max(rate(entry) for _, entry in met)
        margin = SHIP_MARGIN_SE * math.sqrt(max(best * (1 - best), 1e-12) / max(windows, 1))
        close = [(name, entry) for name, entry in met if rate(entry) >= best - margin - 1e-12]
        saved = lambda entry: entry["validation"]["all"]["time_saved"]    # noqa: E731
        name, entry = min(close, key=lambda item: (len(split_spec(prune(item[1]))), -saved(item[1]), -rate(item[1])))
        shipped[label] = {"spec": prune(entry), "from": name, "validation": entry["validation"]}
    return shipped


def prune(entry: dict[str, Any]) -> str:
    """The entry's spec without gates the joint search left at their least filtering threshold
    (the grid's first value, where they skip nothing or next to nothing): those only cost time.
    Kept when dropping them would change validation's skip count."""
    return entry.get("pruned", entry["spec"])


def cascade_document(shipped: dict[str, Any], results: dict[str, dict[str, Any]], mixtures: Path, val: Windows,
                     words: int) -> dict[str, Any]:
    """models/shipped/speech/cascade.json: the spec per target, what it was picked from and how."""
    return {"format": CALIBRATION_FORMAT, "task": "speech",
            "targets": {label: item["spec"] for label, item in shipped.items()},
            "calibrated_on": {**provenance(mixtures, val, words),
                              "rule": f"per target, among the specs meeting the target on val (pooled and subset-mean "
                                      f"InFi accuracy) that skip within {SHIP_MARGIN_SE:g} standard error of the most "
                                      f"skipping one: the fewest gates, then the most recognizer time saved net of "
                                      f"the filter's cost, then the most skipping",
                              "candidates": {name: {label: {"spec": entry["spec"],
                                                            "skip_rate": entry["validation"]["all"]["skip_rate"]}
                                                    for label, entry in result["targets"].items()}
                                             for name, result in results.items()}},
            "measured": {label: {"from": item["from"], "validation": item["validation"]}
                         for label, item in shipped.items()}}


def run_speech_calibrate(specs: Sequence[str], mixtures: Path | None, targets: Sequence[float], words: int,
                         label_dir: Path | None, out: Path, ship: Path | None, say: Any = print) -> dict[str, Path]:
    """The command: calibrate every spec on the val split, write a filter directory's
    calibration.json for a spec that is one learned filter, all results to `out`, and with
    `ship` the chosen spec per target (models/shipped/speech/cascade.json)."""
    from models.calibrate import write_json
    if words < 0:
        raise ConfigError(f"--words must be at least 0, got {words}")
    for spec in specs:
        split_spec(spec)
    mixtures = Path(mixtures or default_mixtures())
    val = load_windows(mixtures, "val", words, label_dir)
    results, prepared = calibrate_specs(specs, val, targets, say)
    written: dict[str, Path] = {}
    try:
        for spec, result in results.items():
            for line in describe(spec, result):
                say(line)
            directory = policy_directory(prepared[result["order"][0]].policy) if len(result["order"]) == 1 else None
            if directory is not None:
                document = calibration_document({k: result[k] for k in ("targets", "unmet", "curve") if k in result},
                                                mixtures, val, words)
                written[spec] = write_json(directory / "calibration.json", document)
                say(f"wrote {written[spec]}")
    finally:
        close_all(prepared)
    out.parent.mkdir(parents=True, exist_ok=True)
    written["all"] = write_json(out, {"format": CALIBRATION_FORMAT, "task": "speech", "specs": results,
                                      **provenance(mixtures, val, words)})
    say(f"wrote {written['all']}")
    if ship is not None:
        shipped = choose_shipped(results, targets, len(val))
        if not shipped:
            raise ConfigError("no spec met any target on validation: nothing to ship")
        ship.parent.mkdir(parents=True, exist_ok=True)
        written["ship"] = write_json(ship, cascade_document(shipped, results, mixtures, val, words))
        for label, item in shipped.items():
            say(f"ship for {label}: {item['spec']} (from {item['from']})")
        say(f"wrote {written['ship']}")
    return written
