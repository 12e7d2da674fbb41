"""The binary early-exit network as a video Skip filter, beside the shipped InFi-Skip (issue 10, 4 b).

Both filters are judged as `infistream filter evaluate` judges a filter set (models/evaluate.py),
on the TEST half of every shared traffic clip (150 unscored warm-up frames before it, YOLO's
answers 2 frames late), through the same replay (models/simulate.py):

- per clip, the BEST share of frames kept from YOLO among each filter's thresholds meeting the
  target per-frame count agreement (an oracle on the test half, as the evaluation's "best"), as a
  fraction of the clip's ceiling; and the CALIBRATED point (calibration.json's threshold for the
  target, picked on the validation parts by `infistream filter calibrate`): its agreement and
  share kept, and the clips where it misses the target;
- the shipped Skip runs as it runs live, with its self-check (``max_run``: probes after 50 skips in
  a row), as the evaluation runs it; the early exit has no self-check;
- the early exit's exits on the test frames at each calibrated threshold (a confident "not
  needed" exits with {"count": 0}; a confident "needed" or no confident exit sends the frame to
  YOLO): the exit distribution, per class, and the binary operations (and full-precision
  multiply-adds) spent against running every block;
- latency per frame of each filter's live `decide` (the frame shrunk from full size, then the
  exported LiteRT model(s), one thread; the early exit stops at its first confident exit), on
  full-size test frames, the two filters interleaved in one process; and of the network alone on
  already-shrunk frames (every block, and the parts up to the exit taken).

    .venv/bin/python bench/early_exit_vehicles.py --early-exit .cache/early-exit/vehicles-v2 \\
        --out bench/results/early_exit_vehicles.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.calibrate import open_filter                                    # noqa: E402
from models.early_exit import exit_report                                   # noqa: E402
from models.evaluate import (Contender, calibrated_threshold, describe_row, evaluate_prepared,  # noqa: E402
                             summarize)
from models.simulate import (DEFAULT_LAG, WARMUP, decode_frames, labelled_clip, prepare_part,  # noqa: E402
                             thin_grid)
from pipeline.message import Message                                        # noqa: E402

GRID = 61                       # thresholds per curve, as the evaluation's EVAL_GRID
TARGETS = (0.9, 0.95, 0.98)


def grid_of(policy: Any, size: int = GRID) -> list[tuple[float]]:
    """`size` thresholds of the policy's grid (sorted first: the early exit's maxprob grid decreases)."""
    return [(float(v),) for v in thin_grid(np.sort(np.asarray(policy.threshold_grid(), np.float64)), size)]


def evaluate(clips: list[Path], skip_dir: Path, exit_dir: Path, target: float, lag: int) -> dict[str, Any]:
    """Per clip: both filters' curves, best and calibrated points (models/evaluate.py), and the
    early exit's per-exit probabilities on the scored frames."""
    rows, exit_probs, exit_labels = [], [], []
    skip_t, exit_t = calibrated_threshold(skip_dir, target), calibrated_threshold(exit_dir, target)
    for path in clips:
        clip = labelled_clip(path)
        skip = open_filter(skip_dir, self_check=True)        # as it runs, as the evaluation runs it
        early = open_filter(exit_dir)
        with skip, early:
            prepared = prepare_part(clip, "test", [skip, early], warmup=WARMUP)
            contenders = [Contender.sweep("skip", [skip], grid_of(skip), (skip_t,) if skip_t is not None else None),
                          Contender.sweep("early-exit", [early], grid_of(early),
                                          (exit_t,) if exit_t is not None else None)]
            row = evaluate_prepared(prepared, contenders, target, lag)
        row["clip"] = clip.name
        print(describe_row(row), flush=True)
        rows.append(row)
        scored = prepared.features[early.name][prepared.warmup:]
        exit_probs.append(np.stack(scored).reshape(len(scored), early.model.exits, -1))
        exit_labels.append((prepared.scored_truth > 0).astype(int))
    return {"rows": rows, "probs": np.concatenate(exit_probs), "labels": np.concatenate(exit_labels),
            "thresholds": {"skip": skip_t, "early-exit": exit_t}}


def exits_at_targets(exit_dir: Path, probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The exit report (models/early_exit.py) on the test frames at each calibrated threshold."""
    from models.early_exit import open_early_exit_dir
    from models.filterdir import read_json_file
    directory = open_early_exit_dir(exit_dir, read_json_file(exit_dir / "metadata.json", "filter metadata"))
    calibration = json.loads((exit_dir / "calibration.json").read_text())
    reports = {}
    for label, entry in calibration.get("targets", {}).items():
        report = exit_report(probs, labels, "maxprob", entry["threshold"], directory.costs())
        reports[label] = {key: report[key] for key in (
            "threshold", "inputs", "exit_counts", "none_confident", "per_class_exits", "mean_exit", "filtered",
            "per_exit_accuracy", "accuracy", "last_exit_accuracy", "mean_binary_ops", "mean_macs", "all_blocks",
            "binary_ops_saved", "macs_saved", "multiply_adds_saved")}
    return reports


def latency(clips: list[Path], skip_dir: Path, exit_dir: Path, target: float, frames_per_clip: int,
            rounds: int = 3) -> dict[str, Any]:
    """ms per frame of each filter's live decide on full-size test frames (interleaved, `rounds`
    passes), and of the early exit's network alone on shrunk frames (every block / up to its exit)."""
    from models.registry import parse_policy
    frames = []
    for path in clips:
        clip = labelled_clip(path)
        test = clip.part("test")
        picks = set(test[np.linspace(0, len(test) - 1, frames_per_clip).astype(int)].tolist())
        frames += [frame for seq, frame in decode_frames(path, range(int(min(picks)), int(max(picks)) + 1))
                   if seq in picks]
    skip = parse_policy(f"{skip_dir}:target={target:g}")
    early = parse_policy(f"{exit_dir}:target={target:g}")
    times: dict[str, list[float]] = {"skip": [], "early-exit": [], "early-exit every block": [],
                                     "early-exit network to its exit": []}
    with skip, early:
        from models.frames import reduce_frame
        shrunk = [reduce_frame(frame, early.size).astype(np.float32) for frame in frames]
        for _ in range(rounds):
            for seq, frame in enumerate(frames):
                for name, policy in (("skip", skip), ("early-exit", early)):
                    start = time.perf_counter()
                    policy.decide(Message("video", "bench", seq, arrays=(frame,)))
                    times[name].append((time.perf_counter() - start) * 1e3)
                x = shrunk[seq]
                start = time.perf_counter()
                early.model.run_all(x)
                times["early-exit every block"].append((time.perf_counter() - start) * 1e3)
                start = time.perf_counter()
                early.model.run_until(x, early.rule, early.threshold)
                times["early-exit network to its exit"].append((time.perf_counter() - start) * 1e3)
    return {"frames": len(frames), "frame_shapes": sorted({f"{f.shape[1]}x{f.shape[0]}" for f in frames}),
            "rounds": rounds, "threads": 1, "load_average": [round(v, 2) for v in os.getloadavg()],
            "ms": {name: {"median": round(float(np.median(v)), 4), "p90": round(float(np.percentile(v, 90)), 4)}
                   for name, v in times.items()},
            "what": "set input, invoke, read output; skip and early-exit decide include shrinking the full-size "
                    "frame; LiteRT, one thread; the filters interleaved frame by frame"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--early-exit", type=Path, default=Path(".cache/early-exit/vehicles-v2"))
    parser.add_argument("--skip", type=Path, default=Path("models/shipped/vehicle/skip"))
    parser.add_argument("--clips", type=Path, nargs="+", default=None)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--lag", type=int, default=DEFAULT_LAG)
    parser.add_argument("--latency-frames", type=int, default=20, help="test frames per clip timed (default 20)")
    parser.add_argument("--latency-clips", type=int, default=6,
                        help="clips timed, spread over the list (default 6: decoding full-size frames is slow)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/early_exit_vehicles.json"))
    args = parser.parse_args(argv)
    from models.dataset import default_clips
    clips = args.clips or default_clips()
    started = time.monotonic()
    result = evaluate(clips, args.skip, args.early_exit, args.target, args.lag)
    rows = result["rows"]
    summary = summarize(rows, args.target)
    ceiling = [row["ceiling"] for row in rows]
    table = {
        "what": "the early-exit network as a video Skip filter beside the shipped InFi-Skip, on the test halves "
                "(models/evaluate.py's replay and points; bench/early_exit_vehicles.py)",
        "target": args.target, "lag": args.lag, "warmup": WARMUP, "skip": str(args.skip),
        "early_exit": str(args.early_exit), "calibrated_thresholds": result["thresholds"],
        "summary": summary, "mean_ceiling": round(float(np.mean(ceiling)), 4),
        "exits": exits_at_targets(args.early_exit, result["probs"], result["labels"]),
        "test_frames": int(len(result["labels"])), "test_frames_with_vehicle": round(float(result["labels"].mean()), 4),
        "clips": rows,
    }
    timed = [clips[i] for i in np.unique(np.linspace(0, len(clips) - 1, args.latency_clips).astype(int))]
    table["latency"] = latency(timed, args.skip, args.early_exit, args.target, args.latency_frames)
    table["latency"]["clips"] = [clip.name for clip in timed]
    table["seconds"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    for name in ("skip", "early-exit"):
        item = summary[name]
        c = item.get("calibrated", {})
        print(f"{name:>10}: best fraction of ceiling at >= {args.target:g}: mean {item['mean_fraction_of_ceiling']:.3f} "
              f"(worst {item['worst_fraction_of_ceiling']:.3f}, {item['worst_clip']}); calibrated: agreement mean "
              f"{c.get('mean_agreement', float('nan')):.3f}, kept {c.get('mean_filtered', float('nan')):.3f}, "
              f"fraction {c.get('mean_fraction_of_ceiling', float('nan')):.3f}, "
              f"{len(c.get('missed_target', []))} clips below target")
    at = table["exits"].get(f"{args.target:g}")
    if at:
        print(f"exits at {at['threshold']}: {at['exit_counts']} (none confident {at['none_confident']}), binary ops "
              f"saved {at['binary_ops_saved']:.1%}, all multiply-adds {at['multiply_adds_saved']:.1%}, float ones "
              f"{at['macs_saved']:.1%}")
    print(f"latency ms (median): {json.dumps({k: v['median'] for k, v in table['latency']['ms'].items()})}")
    print(f"wrote {args.out} ({table['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
