"""Curves and tables: how much each filter keeps from YOLO at a target agreement, on test halves.

For every clip, on its TEST part only (the second half of its frames, models/dataset.py), each
contender is replayed (models/simulate.py: features prepared once per frame, feedback 2 frames
late) over its thresholds:

- ``skip``, ``reuse``: the learned filters alone; ``cascade``: skip then reuse, on a joint grid
  of their thresholds (the curve is the grid's upper frontier);
- ``framediff`` (Reducto's features) and ``motion`` (MOG2 gate) over their threshold grids, and
  ``stride`` (``stride:N``, N = 1..30);
- ``blind``, a reference rather than a baseline (models/baselines/blind.py): reuse the last
  inferred count for a random share of the frames, looking at none; each point the mean of 8
  draws. Where a filter keeps less than it, the filter spends its error budget worse than chance.

A point is (filtering rate, per-frame count agreement); the clip's ceiling (models/metrics.py)
is drawn as a vertical line, the target as a horizontal one. Per contender the table gives the
BEST rate among its points meeting the target (an oracle choice on the test half, the same for
learned filters and baselines, as the papers report baselines), that rate as a fraction of the
ceiling, and Reducto's count accuracy there; and, for the learned filters, the CALIBRATED
operating point (the threshold picked on validation frames, calibrate.py) with the agreement
and rate it really gets on this clip, marked where it misses the target: that is what a user
gets. Summary: mean and worst over clips.

Outputs: ``<out>/<clip>.png`` per clip, ``<out>/summary.png`` and ``<out>/evaluation.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.errors import ConfigError
from models import metrics
from models.base import FramePolicy, Policy
from models.calibrate import CALIBRATION_FILE, CASCADE_FILE, DEFAULT_TARGET, is_filter_set, open_filter
from models.options import parse_options
from models.reuse import REUSE_OPTIONS, ReusePolicy
from models.simulate import DEFAULT_LAG, WARMUP, PreparedClip, labelled_clip, prepare_part, replay, thin_grid

log = logging.getLogger(__name__)

STRIDES = tuple(range(1, 31))
#: Thresholds per single-filter curve, and the cascade's joint grid (skip x reuse) on a test half;
#: the cascade's curve also has each filter alone (`ALONE` thresholds each). Learned filters
#: react sharply to their threshold, so the grids are fine; a replay of 600 frames costs
#: 10-400 ms here, a clip well under a minute.
EVAL_GRID = 61
EVAL_CASCADE_GRID = (16, 24)
ALONE = EVAL_GRID
LEARNED = ("skip", "reuse", "cascade")
BASELINES = ("framediff", "motion", "stride")
BLIND = "blind"
COLORS = {"cascade": "#d62728", "skip": "#ff7f0e", "reuse": "#9467bd", "framediff": "#1f77b4",
          "motion": "#2ca02c", "stride": "#7f7f7f", BLIND: "#bcbd22"}


@dataclass
class Contender:
    """One curve: named runs, each a cascade of policies at a threshold tuple (or as they are)."""

    name: str
    runs: list[tuple[Any, list[Policy], tuple[float | None, ...] | None]]
    calibrated: tuple[Any, list[Policy], tuple[float, ...]] | None = None
    note: str = ""

    @classmethod
    def sweep(cls, name: str, policies: list[FramePolicy], grid: Sequence[Sequence[float]],
              calibrated: tuple[float, ...] | None = None) -> Contender:
        label = (lambda t: round(float(t[0]), 6)) if len(policies) == 1 else (lambda t: [round(float(v), 6) for v in t])
        runs = [(label(t), policies, tuple(t)) for t in grid]
        return cls(name, runs, (label(calibrated), policies, tuple(calibrated)) if calibrated is not None else None)


def stride_contender(strides: Sequence[int] = STRIDES) -> Contender:
    from models.baselines.stride import Stride
    return Contender("stride", [(n, [Stride(n)], None) for n in strides])


def blind_entry(clip: PreparedClip, target: float = DEFAULT_TARGET, lag: int = DEFAULT_LAG,
                seeds: int = 0) -> dict[str, Any]:
    """The blind reference's curve on one clip: per share of frames reused blindly, the mean
    agreement and rate of `seeds` draws; its best point meeting the target, as for the others."""
    from models.baselines.blind import SEEDS, SHARES, BlindReuse
    seeds = seeds or SEEDS
    truth = clip.scored_truth
    ceiling = metrics.ceiling(truth, budget=1 - target)
    points = []
    for share in SHARES:
        runs = [replay([BlindReuse(share, seed)], clip, lag=lag) for seed in range(seeds)]
        agreements = [run.agreement(truth) for run in runs]
        points.append({"at": share, "agreement": round(float(np.mean(agreements)), 4),
                       "filtered": round(float(np.mean([run.filtered for run in runs])), 4),
                       "count_accuracy": round(float(np.mean([run.count_accuracy(truth) for run in runs])), 4),
                       "worst_draw_agreement": round(min(agreements), 4)})
        if share > 0.3 and points[-1]["agreement"] < target - 1e-9:
            break                       # past the budget; agreement only falls from here
    return {"curve": frontier(points), "points": len(points),
            "best": best_at_target(points, target, ceiling),          # share 0 always meets the target
            "note": f"reference, looks at no frame: reuses the last inferred count for a random share; "
                    f"mean of {seeds} draws"}


def best_at_target(points: Sequence[dict[str, Any]], target: float, ceiling: float) -> dict[str, Any]:
    """The point filtering the most while meeting `target` (on a tie, the higher agreement), with
    its rate as a fraction of `ceiling`; a point filtering nothing when none meets the target."""
    meeting = [p for p in points if p["agreement"] >= target - 1e-9]
    if not meeting:
        return {"at": None, "agreement": None, "filtered": 0.0, "count_accuracy": None, "fraction_of_ceiling": 0.0}
    best = max(meeting, key=lambda p: (p["filtered"], p["agreement"]))
    return {**best, "fraction_of_ceiling": round(metrics.fraction_of_ceiling(best["filtered"], ceiling), 4)}


def _point(run, truth: np.ndarray, at: Any) -> dict[str, Any]:
    return {"at": at, "agreement": round(run.agreement(truth), 4), "filtered": round(run.filtered, 4),
            "count_accuracy": round(run.count_accuracy(truth), 4)}


def frontier(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other beats on both filtering rate and agreement, by increasing rate."""
    best: list[dict[str, Any]] = []
    for point in sorted(points, key=lambda p: (-p["filtered"], -p["agreement"])):
        if not best or point["agreement"] > best[-1]["agreement"]:
            best.append(point)
    return best[::-1]


def evaluate_prepared(clip: PreparedClip, contenders: Sequence[Contender], target: float = DEFAULT_TARGET,
                      lag: int = DEFAULT_LAG, progress: Any = None, blind: bool = False) -> dict[str, Any]:
    """One clip's table row and curves: per contender its frontier, best point at the target and
    calibrated point; with `blind`, the blind reference's too."""
    truth = clip.scored_truth
    ceiling = metrics.ceiling(truth, budget=1 - target)
    row: dict[str, Any] = {"clip": clip.name, "frames": len(clip), "ceiling": round(ceiling, 4),
                           "repeat_share": round(metrics.repeat_share(truth), 4),
                           "mean_count": round(float(np.mean(truth)), 3), "policies": {}}
    for contender in contenders:
        points = []
        for at, policies, thresholds in contender.runs:
            points.append(_point(replay(policies, clip, thresholds, lag=lag), truth, at))
            if progress is not None:
                progress.update(1)
        calibrated = None
        if contender.calibrated is not None:
            at, policies, thresholds = contender.calibrated
            calibrated = _point(replay(policies, clip, thresholds, lag=lag), truth, at)
            points.append(dict(calibrated))          # a threshold like any other for the curve
        entry: dict[str, Any] = {"curve": frontier(points), "points": len(points),
                                 "best": best_at_target(points, target, ceiling)}
        if calibrated is not None:
            point = calibrated
            point["meets_target"] = point["agreement"] >= target - 1e-9
            point["fraction_of_ceiling"] = round(metrics.fraction_of_ceiling(point["filtered"], ceiling), 4)
            entry["calibrated"] = point
        if contender.note:
            entry["note"] = contender.note
        row["policies"][contender.name] = entry
    if blind:
        row["policies"][BLIND] = blind_entry(clip, target, lag)
    return row


def cascade_versus(rows: Sequence[dict[str, Any]], other: str) -> dict[str, Any]:
    """The clips where the cascade keeps fewer frames from YOLO at the target than `other`
    (behind) or the same share (tied: e.g. both at the ceiling of an empty scene), and how many
    where it keeps more (ahead)."""
    pairs = [(row["clip"], row["policies"]["cascade"]["best"]["filtered"], row["policies"][other]["best"]["filtered"])
             for row in rows if other in row["policies"] and "cascade" in row["policies"]]
    return {"behind": [clip for clip, ours, theirs in pairs if ours < theirs],
            "tied": [clip for clip, ours, theirs in pairs if ours == theirs],
            "ahead": sum(ours > theirs for _, ours, theirs in pairs)}


def summarize(rows: Sequence[dict[str, Any]], target: float) -> dict[str, Any]:
    """Per contender over clips: mean and worst fraction of ceiling at the target (best point),
    and how the calibrated point fared (mean, worst agreement; clips where it missed)."""
    names: list[str] = []
    for row in rows:
        names += [name for name in row["policies"] if name not in names]
    summary: dict[str, Any] = {}
    for name in names:
        entries = [(row["clip"], row["policies"][name]) for row in rows if name in row["policies"]]
        fractions = [(entry["best"]["fraction_of_ceiling"], clip) for clip, entry in entries]
        worst = min(fractions)
        item: dict[str, Any] = {
            "clips": len(entries),
            "mean_fraction_of_ceiling": round(float(np.mean([f for f, _ in fractions])), 4),
            "worst_fraction_of_ceiling": worst[0], "worst_clip": worst[1],
            "mean_filtered_at_target": round(float(np.mean([e["best"]["filtered"] for _, e in entries])), 4),
        }
        calibrated = [(clip, entry["calibrated"]) for clip, entry in entries if "calibrated" in entry]
        if calibrated:
            lowest = min(calibrated, key=lambda item_: item_[1]["agreement"])
            item["calibrated"] = {
                "mean_agreement": round(float(np.mean([c["agreement"] for _, c in calibrated])), 4),
                "worst_agreement": lowest[1]["agreement"], "worst_clip": lowest[0],
                "mean_filtered": round(float(np.mean([c["filtered"] for _, c in calibrated])), 4),
                "mean_fraction_of_ceiling": round(float(np.mean([c["fraction_of_ceiling"] for _, c in calibrated])), 4),
                "missed_target": [clip for clip, c in calibrated if not c["meets_target"]],
            }
        summary[name] = item
    if "cascade" in names:
        summary["cascade_vs_baselines"] = {baseline: cascade_versus(rows, baseline)
                                           for baseline in BASELINES if baseline in names}
        if BLIND in names:             # a reference, not a baseline: reported apart
            summary["cascade_vs_blind"] = cascade_versus(rows, BLIND)
    summary["target"] = target
    return summary


# --------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg: no display needed)

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_clip(row: dict[str, Any], target: float, path: Path) -> Path:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.6))
    for name, entry in row["policies"].items():
        color = COLORS.get(name, None)
        curve = entry["curve"]
        xs, ys = [p["filtered"] for p in curve], [p["agreement"] for p in curve]
        style = dict(ls=":", marker=".") if name in ("stride", BLIND) else dict(ls="-", marker="o", ms=3)
        axis.plot(xs, ys, color=color, lw=2.2 if name == "cascade" else 1.2, label=name, **style)
        if "calibrated" in entry:
            c = entry["calibrated"]
            axis.plot([c["filtered"]], [c["agreement"]], marker="*", ms=14, color=color, mec="k",
                      label=f"{name} calibrated" + ("" if c["meets_target"] else " (misses target)"))
    axis.axvline(row["ceiling"], color="k", ls="--", lw=1, label=f"ceiling {row['ceiling']:.2f}")
    axis.axhline(target, color="k", ls=":", lw=1, label=f"target {target:g}")
    axis.set_xlim(-0.02, 1.02)
    axis.set_ylim(max(0.0, target - 0.25), 1.005)     # the region that matters: near the target
    axis.set_xlabel("filtering rate (share of frames kept from YOLO)")
    axis.set_ylabel("per-frame count agreement")
    axis.set_title(f"{row['clip']} (test part, {row['frames']} frames)", fontsize=10)
    axis.legend(fontsize=7, loc="lower left")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_summary(rows: Sequence[dict[str, Any]], target: float, path: Path) -> Path:
    plt = _pyplot()
    names = [name for name in (*LEARNED, *BASELINES, BLIND) if any(name in row["policies"] for row in rows)]
    clips = [row["clip"].split(":")[0] for row in rows]
    figure, axis = plt.subplots(figsize=(max(8, 0.6 * len(rows) + 3), 5))
    width = 0.8 / max(1, len(names))
    x = np.arange(len(rows))
    for k, name in enumerate(names):
        values = [row["policies"].get(name, {}).get("best", {}).get("fraction_of_ceiling", 0.0) for row in rows]
        axis.bar(x + (k - (len(names) - 1) / 2) * width, values, width, label=name, color=COLORS.get(name))
    for i, row in enumerate(rows):      # the calibrated cascade: what a user gets (red x where it misses)
        c = row["policies"].get("cascade", {}).get("calibrated")
        if c is not None:
            axis.plot([i], [min(c["fraction_of_ceiling"], 1.05)], marker="x" if not c["meets_target"] else "_", ms=12,
                      mew=2, color="r" if not c["meets_target"] else "k")
    axis.set_ylim(0, 1.1)          # a missing calibrated point may filter past the ceiling: drawn at the top
    axis.axhline(0.8, color="k", ls="--", lw=0.8)
    axis.set_xticks(x, clips, rotation=60, ha="right", fontsize=7)
    axis.set_ylabel(f"fraction of ceiling at >= {target:g} agreement")
    axis.set_title("test halves: best point per policy (bars); calibrated cascade (black -, red x: misses target)",
                   fontsize=9)
    axis.legend(fontsize=7, ncol=3)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# --------------------------------------------------------------------------------------------
# Evaluating a filter set on clips

def calibrated_threshold(directory: Path, target: float) -> float | None:
    path = directory / CALIBRATION_FILE
    if not path.is_file():
        return None
    entry = json.loads(path.read_text()).get("targets", {}).get(f"{target:g}")
    return float(entry["threshold"]) if entry else None


def calibrated_cascade(directory: Path, target: float) -> tuple[float, float] | None:
    path = directory / CASCADE_FILE
    if not path.is_file():
        return None
    entry = json.loads(path.read_text()).get("targets", {}).get(f"{target:g}")
    return (float(entry["skip"]), float(entry["reuse"])) if entry else None


def _baseline(spec: str) -> FramePolicy | None:
    from models.registry import parse_policy
    try:
        policy = parse_policy(spec)
    except ConfigError as error:
        log.warning("baseline %s not available (%s); left out", spec, error)
        return None
    return policy if isinstance(policy, FramePolicy) else None


@dataclass
class ClipPolicies:
    """The frame policies built for one clip (fresh per clip: a stateful prepare starts clean)."""

    frame: dict[str, FramePolicy] = field(default_factory=dict)

    def close(self) -> None:
        for policy in self.frame.values():
            policy.close()


def build_policies(filters: Path | None, baselines: bool, reuse_options: str = "") -> ClipPolicies:
    built = ClipPolicies()
    try:
        if filters is not None:
            built.frame["skip"] = open_filter(filters / "skip", self_check=True)    # as it runs
            built.frame["reuse"] = open_filter(filters / "reuse", self_check=True, options=reuse_options)
        if baselines:
            for name in ("framediff", "motion"):
                policy = _baseline(name)
                if policy is not None:
                    built.frame[name] = policy
        for policy in built.frame.values():
            policy.open()
    except BaseException:
        built.close()
        raise
    return built


def contenders_for(built: ClipPolicies, filters: Path | None, target: float, strides: Sequence[int],
                   grid: int = EVAL_GRID, cascade_grid: tuple[int, int] = EVAL_CASCADE_GRID,
                   alone: int = ALONE, baseline_thresholds: dict[str, float] | None = None) -> list[Contender]:
    """The curves of one clip. `baseline_thresholds`: framediff's and motion's thresholds
    calibrated like the learned filters' (calibrate.calibrate_specs), for their operating points."""
    contenders = []
    frame = built.frame
    if filters is not None:
        skip, reuse = frame["skip"], frame["reuse"]
        for policy in (skip, reuse):
            if policy.target_dependent:
                policy.target = target      # as it runs at this target (Reuse's self-check budget)
        for name, policy in (("skip", skip), ("reuse", reuse)):
            t = calibrated_threshold(filters / name, target)
            contenders.append(Contender.sweep(name, [policy], [(v,) for v in thin_grid(policy.threshold_grid(), grid)],
                                              (t,) if t is not None else None))
        skip_grid = thin_grid(skip.threshold_grid(), cascade_grid[0])
        reuse_grid = thin_grid(reuse.threshold_grid(), cascade_grid[1])
        joint = [(a, b) for a in skip_grid for b in reuse_grid]
        # each filter alone is a cascade with the other off (its least filtering threshold), so
        # the cascade's curve is never below either filter's
        skip_off, reuse_off = skip.threshold_grid()[0], reuse.threshold_grid()[0]
        joint += [(a, reuse_off) for a in thin_grid(skip.threshold_grid(), alone)]
        joint += [(skip_off, b) for b in thin_grid(reuse.threshold_grid(), alone)]
        joint = list(dict.fromkeys((float(a), float(b)) for a, b in joint))
        contenders.append(Contender.sweep("cascade", [skip, reuse], joint, calibrated_cascade(filters, target)))
    for name in ("framediff", "motion"):
        if name in frame:
            policy = frame[name]
            t = (baseline_thresholds or {}).get(name)
            contenders.append(Contender.sweep(name, [policy], [(v,) for v in thin_grid(policy.threshold_grid(), grid)],
                                              (t,) if t is not None else None))
    if strides:
        contenders.append(stride_contender(strides))
    return contenders


def check_filters(filters: Path | None, reuse_options: str = "") -> None:
    if filters is not None and not is_filter_set(Path(filters)):
        raise ConfigError(f"--filters {filters}: expected a filter set, a directory holding skip/ and reuse/ "
                          f"(each with metadata.json and model.tflite), as models/shipped/vehicle")
    # A calibrated point holds only for the Reuse variant it was calibrated with.
    path = Path(filters) / "reuse" / CALIBRATION_FILE if filters is not None else None
    if path is not None and path.is_file():
        calibrated_with = json.loads(path.read_text()).get("options", "")
        # Reuse's self-check runs on thresholds calibrated without it, as Skip's does
        # (docs/filters.md): a set calibrated without it runs with any `check=N` (the default
        # one when not named); one calibrated with it, with the same N.
        requested = parse_options("reuse", reuse_options, REUSE_OPTIONS)
        calibrated = parse_options("reuse", calibrated_with, REUSE_OPTIONS)
        calibrated_check = calibrated.pop("check", 0)
        requested_check = requested.pop("check", ReusePolicy.defaults["check"])
        if calibrated != requested or calibrated_check not in (0, requested_check):
            raise ConfigError(f"{path.parent} was calibrated with Reuse options {calibrated_with or '(none)'!r}, "
                              f"not {reuse_options or '(none)'!r}: calibrate a copy with the same options first")


def evaluate_clips(clips: Sequence[Path], filters: Path | None, out: Path, target: float = DEFAULT_TARGET,
                   lag: int = DEFAULT_LAG, baselines: bool = True, strides: Sequence[int] = STRIDES,
                   label_dir: Path | None = None, progress: bool = True, part: str = "test",
                   say: Callable[[str], None] | None = None,
                   baseline_thresholds: dict[str, float] | None = None, reuse_options: str = "") -> dict[str, Any]:
    """Evaluate the filter set `filters` (and the baselines) on the `part` of every clip; write
    the PNGs and evaluation.json under `out`; return the table. `reuse_options` (``refer=agree``)
    evaluate a variant of the Reuse filter: calibrate the set with the same options first."""
    filters = Path(filters) if filters is not None else None
    check_filters(filters, reuse_options)
    if not clips:
        raise ConfigError("no clips to evaluate on")
    labelled = [labelled_clip(path, label_dir) for path in clips]     # every clip's labels checked first
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(labelled), desc="evaluate", unit="clip")
    try:
        for clip in labelled:
            built = build_policies(filters, baselines, reuse_options)
            try:
                prepared = prepare_part(clip, part, list(built.frame.values()), warmup=WARMUP)
                contenders = contenders_for(built, filters, target, strides,
                                            baseline_thresholds=baseline_thresholds)
                row = evaluate_prepared(prepared, contenders, target, lag, blind=baselines)
            finally:
                built.close()
            row["clip"] = clip.name
            plot_clip(row, target, out / f"{clip.name}.png")
            rows.append(row)
            if say is not None:
                say(describe_row(row))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return write_report(rows, out, target, lag, part, filters)


def write_report(rows: Sequence[dict[str, Any]], out: Path, target: float, lag: int, part: str = "test",
                 filters: Path | None = None) -> dict[str, Any]:
    """evaluation.json (the rows and their summary) and summary.png under `out`; the table."""
    table = {"target": target, "lag": lag, "part": part, "filters": str(filters) if filters else None,
             "clips": list(rows), "summary": summarize(rows, target)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(table, indent=1) + "\n")
    plot_summary(rows, target, out / "summary.png")
    return table


def describe_row(row: dict[str, Any]) -> str:
    parts = [f"{row['clip']}: ceiling {row['ceiling']:.2f}"]
    for name, entry in row["policies"].items():
        text = f"{name} {entry['best']['filtered']:.2f} ({entry['best']['fraction_of_ceiling']:.0%})"
        if "calibrated" in entry:
            c = entry["calibrated"]
            text += f" [cal {c['filtered']:.2f} @ {c['agreement']:.3f}{'' if c['meets_target'] else ' MISS'}]"
        parts.append(text)
    return "; ".join(parts)


def describe_summary(summary: dict[str, Any]) -> list[str]:
    lines = []
    for name, item in summary.items():
        if not isinstance(item, dict) or "mean_fraction_of_ceiling" not in item:
            continue
        line = (f"{name:>9}: fraction of ceiling at >= {summary['target']:g}: mean {item['mean_fraction_of_ceiling']:.2f}, "
                f"worst {item['worst_fraction_of_ceiling']:.2f} ({item['worst_clip']})")
        if "calibrated" in item:
            c = item["calibrated"]
            line += (f"; calibrated: agreement mean {c['mean_agreement']:.3f}, worst {c['worst_agreement']:.3f} "
                     f"({c['worst_clip']}), filtered {c['mean_filtered']:.2f}, missed on {len(c['missed_target'])} clip(s)")
        lines.append(line)
    return lines
