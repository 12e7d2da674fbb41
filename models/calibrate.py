"""Thresholds for a target accuracy: the operating point of a trained filter, picked on validation frames.

A frame policy has one knob, ``threshold`` (larger filters more; for the early-exit network's
maxprob rule, smaller does: `grid_directions`). For a target per-frame count
agreement (0.95 by default), calibration replays the filter (models/simulate.py) over the
VALIDATION part of every clip it was trained on (the shared split: the last 20 % of each clip's
first half) and picks, among the thresholds that meet the target, the one that keeps the most
frames from the model. A threshold meets the target when both the agreement over all frames
pooled AND the mean of the per-clip agreements reach it: pooled alone weighs cameras by their
frames, so a long clip hides a short one the filter fails on; the mean counts every camera
once. The worst clip's agreement is reported beside them: neither promises it per camera (the
live audit is what watches a camera).

- a single filter directory gets ``calibration.json`` (format in docs/filters.md), one entry per
  target (0.9, 0.95, 0.98 by default); a target no threshold meets is listed under ``unmet``
  with the best agreement seen, never given a threshold;
- a filter SET (a directory holding ``skip/`` and ``reuse/``, as models/shipped/vehicle) also
  gets ``cascade.json``: the skip and reuse thresholds picked JOINTLY on a grid, since Reuse
  sees only the frames Skip leaves and learns only from the answers that come back.
"""

from __future__ import annotations

import datetime
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from pipeline.errors import ConfigError
from models.base import FramePolicy
from models.export import git_commit
from models.labels import COUNT_CONF
from models.simulate import DEFAULT_LAG, WARMUP, LabelledClip, PreparedClip, labelled_clip, prepare_part, replay, thin_grid

log = logging.getLogger(__name__)

CALIBRATION_FORMAT = 1
DEFAULT_TARGET = 0.95
TARGETS = (0.9, 0.95, 0.98)
#: Thresholds tried per single filter, and per filter of a cascade's joint grid.
SINGLE_GRID = 201                 # every threshold of the learned filters' grids (183)
CASCADE_GRID = (16, 24)           # skip x reuse
#: Values per policy tried between a coarse pick's neighbours.
FINE = 9
CALIBRATION_FILE = "calibration.json"
CASCADE_FILE = "cascade.json"


@dataclass(frozen=True)
class GridPoint:
    """One threshold tuple's outcome, pooled over the validation parts, and per clip."""

    thresholds: tuple[float, ...]
    agreement: float
    filtered: float
    frames: int
    per_clip: dict[str, tuple[float, float, int]]     # clip -> (agreement, filtered, frames)

    @property
    def clip_mean(self) -> float:
        """The mean of the per-clip agreements: every camera counts once."""
        return float(np.mean([agreed for agreed, _, _ in self.per_clip.values()]))

    def meets(self, target: float) -> bool:
        return min(self.agreement, self.clip_mean) >= target - 1e-12

    def worst_clip(self) -> dict[str, Any]:
        name, (agreed, filtered, frames) = min(self.per_clip.items(), key=lambda item: item[1][0])
        return {"clip": name, "agreement": round(agreed, 4), "filtered": round(filtered, 4), "frames": frames}

    def summary(self) -> dict[str, Any]:
        return {"agreement": round(self.agreement, 4), "clip_mean": round(self.clip_mean, 4),
                "filtered": round(self.filtered, 4), "frames": self.frames, "worst_clip": self.worst_clip()}


def score_grid(policies: Sequence[FramePolicy], clips: Sequence[PreparedClip], grid: Iterable[Sequence[float]],
               lag: int = DEFAULT_LAG, progress: Any = None) -> list[GridPoint]:
    """Every threshold tuple of `grid`, replayed on every clip (each clip a stream of its own,
    starting cold as a live stream does), pooled by frames."""
    clips = [clip for clip in clips if len(clip)]
    if not clips:
        raise ConfigError("no validation frames to calibrate on")
    points = []
    for thresholds in grid:
        thresholds = tuple(float(t) for t in thresholds)
        per_clip, agreed, kept, frames = {}, 0, 0, 0
        for clip in clips:
            run = replay(policies, clip, thresholds, lag=lag)
            same, filtered = int(np.sum(run.answer == clip.scored_truth)), int(np.sum(run.action != 0))
            per_clip[clip.name] = (same / len(clip), filtered / len(clip), len(clip))
            agreed, kept, frames = agreed + same, kept + filtered, frames + len(clip)
        points.append(GridPoint(thresholds, agreed / frames, kept / frames, frames, per_clip))
        if progress is not None:
            progress.update(1)
    return points


def grid_directions(policies: Sequence[FramePolicy]) -> tuple[int, ...]:
    """Per policy, +1 when a larger threshold filters more (its `threshold_grid` increases, as
    most do), -1 when a smaller one does (the early exit's maxprob grid decreases)."""
    directions = []
    for policy in policies:
        grid = np.asarray(policy.threshold_grid(), np.float64).reshape(-1)
        directions.append(-1 if len(grid) > 1 and grid[0] > grid[-1] else 1)
    return tuple(directions)


def choose(points: Sequence[GridPoint], target: float, directions: Sequence[int] | None = None) -> GridPoint | None:
    """The point that keeps the most frames from the model among those that meet `target`
    (pooled and per-clip mean, `GridPoint.meets`; ties: the higher agreement, then the
    thresholds that filter least, `directions` saying per threshold which way filters more
    (`grid_directions`; default: larger values do): of thresholds that do the same on the
    validation frames, the most cautious); None if none does."""
    meeting = [p for p in points if p.meets(target)]
    if not meeting:
        return None
    signs = tuple(directions) if directions is not None else (1,) * len(meeting[0].thresholds)
    return max(meeting, key=lambda p: (p.filtered, p.agreement, tuple(-t * d for t, d in zip(p.thresholds, signs))))


def pick_targets(points: Sequence[GridPoint], targets: Sequence[float], keys: Sequence[str],
                 directions: Sequence[int] | None = None) -> dict[str, Any]:
    """``{"targets": {...}, "unmet": {...}}``: per target, the chosen thresholds under `keys`."""
    chosen, unmet = {}, {}
    for target in targets:
        point = choose(points, target, directions)
        label = f"{target:g}"
        if point is None:
            best = max(points, key=lambda p: (min(p.agreement, p.clip_mean), p.agreement))
            unmet[label] = {"best_agreement": round(best.agreement, 4), "clip_mean": round(best.clip_mean, 4),
                            "at": dict(zip(keys, (round(t, 6) for t in best.thresholds)))}
            log.warning("no threshold meets agreement %s on the validation frames (best %.4f)", label, best.agreement)
            continue
        chosen[label] = {**dict(zip(keys, (round(t, 6) for t in point.thresholds))), "validation": point.summary()}
    return {"targets": chosen, "unmet": unmet}


def _provenance(clips: Sequence[PreparedClip], lag: int) -> dict[str, Any]:
    # count_conf: the detector conf of the counts the agreement is measured on (models/labels.py)
    return {"data": [{"clip": clip.name, "frames": len(clip), "warmup": clip.warmup} for clip in clips], "lag": lag,
            "count_conf": COUNT_CONF,
            "commit": git_commit(), "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def search(policies: Sequence[FramePolicy], clips: Sequence[PreparedClip], coarse_sizes: Sequence[int],
           targets: Sequence[float], lag: int = DEFAULT_LAG, progress: Any = None,
           also: Iterable[Sequence[float]] = ()) -> list[GridPoint]:
    """Coarse to fine: every tuple of a coarse grid (each policy's `threshold_grid` thinned to
    `coarse_sizes`), plus the tuples in `also`; then, around each target's pick, the full grid's
    values between the pick's coarse neighbours (at most `FINE` per policy).

    A policy's grid runs from filtering least to most, which for most is increasing; the
    early-exit network's maxprob grid DEcreases (a larger maxprob filters less). Thinning and the
    neighbour search need increasing values, so each grid is sorted first (the set of
    thresholds tried is the same either way)."""
    full = [np.sort(np.asarray(policy.threshold_grid(), np.float64)) for policy in policies]
    coarse = [thin_grid(grid, size) for grid, size in zip(full, coarse_sizes)]
    grid = [tuple(float(v) for v in t) for t in itertools.product(*coarse)]
    seen = set(grid)
    for extra in also:
        extra = tuple(float(v) for v in extra)
        if extra not in seen:
            grid.append(extra)
            seen.add(extra)
    points = score_grid(policies, clips, grid, lag, progress)
    finer: list[tuple[float, ...]] = []
    directions = grid_directions(policies)
    for target in targets:
        point = choose(points, target, directions)
        if point is None:
            continue
        axes = []
        for values, grid_d, value in zip(coarse, full, point.thresholds):
            i = int(np.searchsorted(values, value))
            lo, hi = values[max(i - 1, 0)], values[min(i + 1, len(values) - 1)]
            axes.append(thin_grid(grid_d[(grid_d >= min(lo, value)) & (grid_d <= max(hi, value))], FINE))
        for t in itertools.product(*axes):
            t = tuple(float(v) for v in t)
            if t not in seen:
                finer.append(t)
                seen.add(t)
    return points + score_grid(policies, clips, finer, lag, progress) if finer else points


def search_targets(policies: Sequence[FramePolicy], clips: Sequence[PreparedClip], coarse_sizes: Sequence[int],
                   targets: Sequence[float], lag: int = DEFAULT_LAG, progress: Any = None,
                   also: Iterable[Sequence[float]] = ()) -> dict[float, list[GridPoint]]:
    """`search`'s points for each target: one search for all of them, unless a policy's
    decisions depend on the target (`FramePolicy.target_dependent`: Reuse's self-check spends
    1 - target), which is then searched once per target with its `target` set to it, so that
    the 0.9 threshold is picked with the self-check the 0.9 filter runs with."""
    dependent = [policy for policy in policies if policy.target_dependent]
    if not dependent:
        points = search(policies, clips, coarse_sizes, targets, lag, progress, also)
        return {target: points for target in targets}
    before = [policy.target for policy in dependent]
    found = {}
    try:
        for target in targets:
            for policy in dependent:
                policy.target = target
            found[target] = search(policies, clips, coarse_sizes, [target], lag, progress, also)
    finally:
        for policy, target in zip(dependent, before):
            policy.target = target
    return found


def _pick_each(found: dict[float, list[GridPoint]], keys: Sequence[str], directions: Sequence[int]) -> dict[str, Any]:
    picked: dict[str, Any] = {"targets": {}, "unmet": {}}
    for target, points in found.items():
        one = pick_targets(points, [target], keys, directions)
        picked["targets"].update(one["targets"])
        picked["unmet"].update(one["unmet"])
    return picked


def _listed_target(found: dict[float, list[GridPoint]]) -> float:
    """The target whose search a document lists: the default one when calibrated for it (all
    targets share one search when no policy depends on the target)."""
    return DEFAULT_TARGET if DEFAULT_TARGET in found else next(iter(found))


def _per_target_note(policies: Sequence[FramePolicy], found: dict[float, list[GridPoint]]) -> dict[str, Any]:
    if not any(policy.target_dependent for policy in policies):
        return {}
    return {"searched_per_target": True, "listed_target": _listed_target(found)}


def calibrate_policy(policy: FramePolicy, clips: Sequence[PreparedClip], targets: Sequence[float] = TARGETS,
                     thresholds: int = SINGLE_GRID, lag: int = DEFAULT_LAG, progress: Any = None) -> dict[str, Any]:
    """The content of a filter's calibration.json, for `clips` prepared for `policy`. Its
    "curve" lists the points of the default target's search when each target had its own
    (``searched_per_target``, ``listed_target``)."""
    found = search_targets([policy], clips, [thresholds], targets, lag, progress)
    picked = _pick_each(found, ["threshold"], grid_directions([policy]))
    points = sorted(found[_listed_target(found)], key=lambda p: p.thresholds)
    return {"format": CALIBRATION_FORMAT, "metric": "count-agreement", **picked, **_per_target_note([policy], found),
            "curve": [{"threshold": round(p.thresholds[0], 6), "agreement": round(p.agreement, 4),
                       "clip_mean": round(p.clip_mean, 4), "filtered": round(p.filtered, 4)} for p in points],
            **_provenance(clips, lag)}


def calibrate_cascade(skip: FramePolicy, reuse: FramePolicy, clips: Sequence[PreparedClip],
                      targets: Sequence[float] = TARGETS, grid_sizes: tuple[int, int] = CASCADE_GRID,
                      lag: int = DEFAULT_LAG, progress: Any = None,
                      alone: dict[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """The content of cascade.json: skip and reuse thresholds picked jointly (skip, then reuse).
    The grid also holds each filter alone (the other at its grid's first, least filtering
    value) at every threshold of its grid and at `alone` (each filter's own calibrated
    thresholds), so the cascade never does worse than either filter alone on validation."""
    skip_grid, reuse_grid = skip.threshold_grid(), reuse.threshold_grid()
    skip_off, reuse_off = float(skip_grid[0]), float(reuse_grid[0])
    also = [(t, reuse_off) for t in skip_grid] + [(skip_off, t) for t in reuse_grid]     # each alone
    if alone:
        also += [(t, reuse_off) for t in alone.get("skip", ())] + [(skip_off, t) for t in alone.get("reuse", ())]
    found = search_targets([skip, reuse], clips, grid_sizes, targets, lag, progress, also)
    picked = _pick_each(found, ["skip", "reuse"], grid_directions([skip, reuse]))
    return {"format": CALIBRATION_FORMAT, "metric": "count-agreement", "order": ["skip", "reuse"], **picked,
            **_per_target_note([skip, reuse], found),
            # [skip, reuse, pooled agreement, filtered, per-clip mean agreement]
            "tried": [[round(p.thresholds[0], 6), round(p.thresholds[1], 6), round(p.agreement, 4), round(p.filtered, 4),
                       round(p.clip_mean, 4)] for p in sorted(found[_listed_target(found)], key=lambda p: p.thresholds)],
            **_provenance(clips, lag)}


# --------------------------------------------------------------------------------------------
# Filter directories and the clips they were trained on

def is_filter_dir(directory: Path) -> bool:
    return (directory / "metadata.json").is_file()


def is_filter_set(directory: Path) -> bool:
    return is_filter_dir(directory / "skip") and is_filter_dir(directory / "reuse")


def read_metadata(directory: Path) -> dict[str, Any]:
    path = directory / "metadata.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{directory} is not a trained filter: no metadata.json") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None


def open_filter(directory: Path, self_check: bool = False, options: str = "") -> FramePolicy:
    """The frame policy of a trained filter directory, at an explicit threshold (calibration
    must not need a calibration), through the registry as ``--filter DIR:threshold=0``.

    A learned filter's self-check (Skip's probes, models/skip.py; Reuse's ``check``,
    models/reuse.py) is off unless `self_check`: calibration picks the threshold the network
    itself earns. With the check on, a threshold that skips nearly every frame can pass on short
    validation parts, the check switching Skip off on busy cameras during the unscored warm-up;
    live, that would mean two seconds of wrong answers each time a quiet camera gets busy; and
    Reuse's thresholds came out laxer, leaning on probes that come too late for a short burst of
    traffic. The checks stay a safety net, on when the filter runs (and in evaluation, which
    measures what runs). `options`: more of the policy's options (``refer=agree``), for
    calibrating or evaluating a variant of the filter; a ``check=N`` there calibrates Reuse with
    its check on, at N."""
    from models.options import parse_options
    from models.registry import parse_policy
    from models.reuse import REUSE_OPTIONS
    metadata = read_metadata(Path(directory))
    if metadata.get("kind") == "early-exit" and metadata.get("task") != "vehicles":
        raise ConfigError(f"{directory} is an early-exit filter for {metadata.get('task')}, not for video frames; "
                          f"calibrate it with `infistream filter calibrate --task speech {directory}`")
    extra = f",{options}" if options else ""
    if not self_check and metadata.get("kind") == "skip":
        policy = parse_policy(f"{directory}:threshold=0,max_run=0{extra}")
    elif not self_check and metadata.get("kind") == "reuse" and "check" not in parse_options("reuse", options, REUSE_OPTIONS):
        policy = parse_policy(f"{directory}:threshold=0,check=0{extra}")
    else:
        policy = parse_policy(f"{directory}:threshold=0{extra}")
    if not isinstance(policy, FramePolicy):
        raise ConfigError(f"{directory} does not build a frame policy (got {type(policy).__name__})")
    return policy


def training_clips(directories: Sequence[Path], given: Sequence[Path] | None = None) -> list[Path]:
    """`given`, or the clips every directory's metadata says it was trained on (by name, found
    under $INFI_ASSETS/traffic)."""
    if given:
        missing = [str(c) for c in given if not Path(c).is_file()]
        if missing:
            raise ConfigError(f"no such clip(s): {', '.join(missing)}")
        return [Path(c) for c in given]
    from models.dataset import default_clips
    available = {clip.stem: clip for clip in default_clips()} | {clip.name: clip for clip in default_clips()}
    names: list[str] = []
    for directory in directories:
        metadata = read_metadata(directory)
        # an early-exit directory written before its metadata had them at the top level keeps
        # its clips under "training"
        trained_on = metadata.get("trained_on") or (metadata.get("training") or {}).get("trained_on") or []
        if isinstance(trained_on, str):
            trained_on = []             # a speech filter's mixture directory: not clips
        for name in trained_on:
            if name not in names:
                names.append(name)
    if not names:
        raise ConfigError(f"{', '.join(map(str, directories))}: metadata names no training clips; pass --clips")
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ConfigError(f"training clips {unknown} not found under $INFI_ASSETS/traffic; pass --clips")
    return [available[name] for name in names]


def prepare_validation(clips: Sequence[LabelledClip], make: Callable[[], Sequence[FramePolicy]],
                       progress: Any = None) -> tuple[list[FramePolicy], list[PreparedClip]]:
    """Each clip's validation part prepared by fresh policies from `make` (a stateful prepare
    starts clean on every clip); returns the last policies built, to replay with."""
    prepared, policies = [], []
    for clip in clips:
        for policy in policies:
            policy.close()
        policies = list(make())
        for policy in policies:
            policy.open()
        prepared.append(prepare_part(clip, "val", policies, progress, warmup=WARMUP))
    return policies, prepared


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="step", leave=False)


def calibrate_directory(directory: Path, targets: Sequence[float] = TARGETS, clips: Sequence[Path] | None = None,
                        lag: int = DEFAULT_LAG, label_dir: Path | None = None, progress: bool = False,
                        reuse_options: str = "") -> dict[str, Path]:
    """Calibrate a filter directory (writes its calibration.json) or a filter set (its skip/ and
    reuse/, each calibration.json, and the set's cascade.json). Returns what it wrote.
    `reuse_options` (``refer=agree``) calibrate a variant of the Reuse filter; they are recorded
    in its calibration.json, since its thresholds hold only for that variant."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"no such filter directory: {directory}")
    members = [directory / "skip", directory / "reuse"] if is_filter_set(directory) else [directory]
    if not all(is_filter_dir(member) for member in members):
        raise ConfigError(f"{directory} is neither a trained filter (metadata.json) nor a filter set (skip/ and reuse/)")
    paths = training_clips(members, clips)
    labelled = [labelled_clip(path, label_dir) for path in paths]
    frames = sum(len(clip.part("val")) for clip in labelled)
    bar = _bar(frames, "prepare validation frames", progress)
    kinds = [read_metadata(member).get("kind") for member in members]
    policies, prepared = prepare_validation(
        labelled, lambda: [open_filter(member, options=reuse_options if kind == "reuse" else "")
                           for member, kind in zip(members, kinds)], bar)
    if bar is not None:
        bar.close()
    written: dict[str, Path] = {}
    try:
        alone = {}
        for policy, member in zip(policies, members):
            clips_for = [PreparedClip(c.name, c.seq, c.truth, {policy.name: c.features[policy.name]}, c.warmup)
                         for c in prepared]
            searches = len(targets) if policy.target_dependent else 1
            bar = _bar(searches * SINGLE_GRID + FINE * len(targets), f"calibrate {member.name}", progress)
            document = calibrate_policy(policy, clips_for, targets, lag=lag, progress=bar)
            if bar is not None:
                bar.close()
            if reuse_options and policy.kind == "reuse":
                document["options"] = reuse_options
            written[str(member)] = write_json(member / CALIBRATION_FILE, document)
            alone[member.name] = [entry["threshold"] for entry in document["targets"].values()]
        if len(members) == 2:
            searches = len(targets) if any(policy.target_dependent for policy in policies) else 1
            bar = _bar(searches * CASCADE_GRID[0] * CASCADE_GRID[1] + FINE * FINE * len(targets), "calibrate the cascade",
                       progress)
            document = calibrate_cascade(policies[0], policies[1], prepared, targets, lag=lag, progress=bar, alone=alone)
            if reuse_options:
                document["reuse_options"] = reuse_options
            if bar is not None:
                bar.close()
            written["cascade"] = write_json(directory / CASCADE_FILE, document)
    finally:
        for policy in policies:
            policy.close()
    return written


def calibrate_specs(specs: Sequence[str], clips: Sequence[Path], targets: Sequence[float] = (DEFAULT_TARGET,),
                    lag: int = DEFAULT_LAG, label_dir: Path | None = None, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Calibration documents (as calibration.json holds) for policies named on the command line
    (``framediff``, ``motion``): the baselines are calibrated like the learned filters, on the
    validation parts of `clips`, so that their operating points are compared on equal terms."""
    from models.registry import parse_policy
    labelled = [labelled_clip(path, label_dir) for path in clips]
    documents = {}
    for spec in specs:
        policies, prepared = prepare_validation(labelled, lambda: [parse_policy(spec)])
        try:
            bar = _bar(SINGLE_GRID + FINE * len(targets), f"calibrate {spec}", progress)
            documents[spec] = calibrate_policy(policies[0], prepared, targets, lag=lag, progress=bar)
            if bar is not None:
                bar.close()
        finally:
            for policy in policies:
                policy.close()
    return documents


def write_json(path: Path, document: dict[str, Any]) -> Path:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(document, indent=1) + "\n")
    partial.replace(path)
    return path


def describe(document: dict[str, Any], keys: Sequence[str] = ("threshold",)) -> list[str]:
    """One line per target, for the command's output."""
    lines = []
    for target, entry in document.get("targets", {}).items():
        validation = entry["validation"]
        worst = validation["worst_clip"]
        knobs = ", ".join(f"{key} {entry[key]:g}" for key in keys if key in entry)
        lines.append(f"target {target}: {knobs} -> validation agreement {validation['agreement']:.3f}, "
                     f"filtered {validation['filtered']:.1%} of {validation['frames']} frames; worst clip "
                     f"{worst['clip']} {worst['agreement']:.3f}")
    for target, entry in document.get("unmet", {}).items():
        lines.append(f"target {target}: NOT MET on validation (best agreement {entry['best_agreement']:.3f})")
    return lines
