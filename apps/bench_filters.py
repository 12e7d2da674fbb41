"""Benchmark the learned filters against the ceiling and the baselines, and their cost against YOLO.

    python apps/bench_filters.py [--filters models/shipped/vehicle] [--target 0.95] [--runs 3]
                                 [--loco [--folds 5] [--epochs N] [--loco-reuse OPTIONS ...]]
                                 [--end-to-end]
    python apps/bench_filters.py --task speech [...]     (the audio filters: apps/bench_speech.py)

1. Accuracy (always): `infistream filter evaluate` on the test half of every clip under
   $INFI_ASSETS/traffic: skip, reuse, their cascade, framediff, motion and stride:1..30 (and the
   blind reference: the last inferred count reused for a random share of frames), as
   filtering rate at >= target per-frame count agreement and as a fraction of each clip's
   ceiling; and the calibrated operating points' real agreement per clip (framediff and motion
   calibrated on the same validation parts as the learned filters). PNGs under
   bench/results/filters/.
2. Cost (always): the cascade's per-frame decision (everything the filter stage does for a
   frame: shrink, both networks, the cache lookup, the feedback) beside the YOLO detector on
   the same decoded frames, interleaved, --runs repetitions, medians.
3. --end-to-end: `apps/vehicle_count.py --filter cascade` and `--filter none` on
   intel_car_detection.mp4, alternately --runs times, end-to-end frames/s from their summaries.
4. --loco: leave-one-camera-out as grouped folds: for each fold, Skip and Reuse are trained
   without its clips (models/train.py), calibrated on the validation parts of the others, and
   evaluated on the test halves of the fold's clips (each clip judged by filters that never saw
   it). Costs a training run per fold. --loco-reuse "" refer=agree compares Reuse variants
   (its options; "" is the default) on the same trained networks, each calibrated for itself.

Results: bench/results/filters.json (and the evaluation tables under bench/results/filters/).
Targets (issue 9): cascade >= 80 % of the ceiling per clip (test halves), >= 70 % mean under
LOCO, ahead of every baseline on every clip; filter cost <= 3 % of YOLO's; end to end >= 4x.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.assets import assets_dir  # noqa: E402
from pipeline.message import Message  # noqa: E402
from models.filterdir import SHIPPED  # noqa: E402

VIDEO = "traffic/intel_car_detection.mp4"
TARGETS = {"fraction_of_ceiling": 0.8, "loco_mean_fraction_of_ceiling": 0.7, "cost_share_of_yolo": 0.03,
           "end_to_end_speedup": 4.0}


def compact(table: dict[str, Any]) -> dict[str, Any]:
    """The evaluation table without the curves (those stay in the evaluation's own JSON)."""
    rows = []
    for row in table["clips"]:
        policies = {}
        for name, entry in row["policies"].items():
            policies[name] = {"best": entry["best"], **({"calibrated": entry["calibrated"]} if "calibrated" in entry else {})}
        rows.append({key: row[key] for key in ("clip", "frames", "ceiling", "repeat_share", "mean_count")} | {"policies": policies})
    return {"target": table["target"], "lag": table["lag"], "clips": rows, "summary": table["summary"]}


# --------------------------------------------------------------------------------------------
# Cost per frame: the cascade vs YOLO, on the same frames, interleaved

def decode_frames(path: Path, count: int, start: int = 0) -> list[np.ndarray]:
    import av
    with av.open(str(path)) as container:
        frames = []
        for index, frame in enumerate(container.decode(video=0)):
            if index >= start + count:
                break
            if index >= start:
                frames.append(frame.to_ndarray(format="bgr24"))
        return frames


def cascade_spec(filters: Path, target: float) -> str:
    """skip then reuse of the filter set at its jointly calibrated thresholds (cascade.json)."""
    from models.evaluate import calibrated_cascade
    thresholds = calibrated_cascade(filters, target)
    if thresholds is None:
        raise SystemExit(f"bench_filters: {filters}/cascade.json has no entry for target {target:g}; "
                         f"run infistream filter calibrate {filters}")
    return f"{filters / 'skip'}:threshold={thresholds[0]:g}+{filters / 'reuse'}:threshold={thresholds[1]:g}"


def bench_cost(filters: Path, target: float, video: Path, frames: int, runs: int) -> dict[str, Any]:
    from models.registry import parse_policy
    from stages.detect import load_detector
    images = decode_frames(video, frames)
    messages = [Message("video", "bench", seq, pts=seq / 25, arrays=(image,)) for seq, image in enumerate(images)]
    spec = cascade_spec(filters, target)
    filter_ms, yolo_ms, shares, answered = [], [], [], []
    with load_detector() as detector:
        counts = [len(detector.detect(image).boxes) for image in images]      # the answers fed back
        for run in range(runs):
            started = time.perf_counter()
            for image in images:
                detector.detect(image)
            yolo = (time.perf_counter() - started) * 1000 / len(images)
            cascade = parse_policy(spec)
            with cascade:
                stream = f"bench{run}"
                started = time.perf_counter()
                decisions, answers = [], {}
                for message, count in zip(messages, counts):
                    message = Message("video", stream, message.seq, pts=message.pts, arrays=message.arrays)
                    decision = cascade.decide(message)
                    decisions.append(decision.action)
                    # the answer comes back (here at once; live a few frames later): YOLO's count,
                    # 0 for a skip, the ref's answer for a reuse
                    answer = {"infer": count, "skip": 0}.get(decision.action, answers.get(decision.ref_seq, 0))
                    answers[message.seq] = answer
                    cascade.feedback(stream, message.seq, {"decision": decision.action, "count": answer})
                filtered = (time.perf_counter() - started) * 1000 / len(images)
                cascade.end_stream(stream)
                costs = cascade.cost_summary()
            yolo_ms.append(yolo)
            filter_ms.append(filtered)
            shares.append(filtered / yolo)
            answered.append(sum(action != "infer" for action in decisions) / len(decisions))
    return {"frames": len(images), "video": VIDEO, "runs": runs, "cascade": spec,
            "filter_ms_per_frame": round(statistics.median(filter_ms), 4), "filter_runs": [round(v, 4) for v in filter_ms],
            "yolo_ms_per_frame": round(statistics.median(yolo_ms), 3), "yolo_runs": [round(v, 3) for v in yolo_ms],
            "share_of_yolo": round(statistics.median(shares), 5), "target_share": TARGETS["cost_share_of_yolo"],
            "filtered_share_of_frames": round(statistics.median(answered), 4), "per_policy_last_run": costs,
            "note": "the cascade's decide (frame already decoded, as the filter stage receives it) plus feedback, "
                    "vs the YOLO detector's detect on the same frames; runs alternate; medians"}


# --------------------------------------------------------------------------------------------
# End to end: the app with the cascade vs without a filter, same run

def run_app(video: Path, policy: str, directory: Path, label: str, frames: int | None) -> dict[str, Any]:
    summary = directory / f"{label}.json"
    command = [sys.executable, str(ROOT / "apps" / "vehicle_count.py"), "--source", str(video), "--filter", policy,
               "--out", str(directory / f"{label}.jsonl"), "--summary", str(summary)]
    if frames:
        command += ["--max-frames", str(frames)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    total = json.loads(summary.read_text())["total"]
    counts = {}
    for line in (directory / f"{label}.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "seq" in record and "count" in record:
            counts[record["seq"]] = record["count"]
    return {"fps": total["end_to_end_fps"], "wall_s": round(time.perf_counter() - started, 1), "counts": counts,
            "inferred": total.get("inferred"), "filtering_rate": total.get("filtering_rate"),
            "filter_ms_spent": total.get("filter_ms_spent"), "balanced": total.get("balanced")}


def bench_end_to_end(video: Path, runs: int, filters: Path, target: float, frames: int | None = None) -> dict[str, Any]:
    """`--filter cascade` (the shipped set; another set is named by its directories and
    calibrated thresholds) against `--filter none`, alternately."""
    cascade = "cascade" if filters.resolve() == SHIPPED and target == 0.95 else cascade_spec(filters, target)
    results: dict[str, list[dict[str, Any]]] = {"cascade": [], "none": []}
    with tempfile.TemporaryDirectory(prefix="bench-filters-") as directory:
        for index in range(runs):
            for name, policy in (("cascade", cascade), ("none", "none")):
                results[name].append(run_app(video, policy, Path(directory), f"{name}-{index}", frames))
                print(f"  {name} run {index + 1}: {results[name][-1]['fps']} frames/s", file=sys.stderr)
    ratios = [a["fps"] / b["fps"] for a, b in zip(results["cascade"], results["none"]) if a["fps"] and b["fps"]]
    # What a user waits for, start-up included (the sources start once every stage is set up,
    # so the frames/s above count from the first answer in both runs).
    wall_ratios = [b["wall_s"] / a["wall_s"] for a, b in zip(results["cascade"], results["none"]) if a["wall_s"]]
    agreements = []        # the cascade's per-frame counts against the unfiltered run's, pair by pair
    for a, b in zip(results["cascade"], results["none"]):
        ca, cb = a.pop("counts"), b.pop("counts")
        common = sorted(set(ca) & set(cb))
        a["agreement_with_none"] = round(sum(ca[s] == cb[s] for s in common) / len(common), 4) if common else None
        b.pop("counts", None)
        agreements.append(a["agreement_with_none"])
    return {"video": VIDEO, "frames": frames or "all", "filter": cascade, "runs": results,
            "fps_median": {k: statistics.median(r["fps"] for r in v if r["fps"]) for k, v in results.items()},
            "speedup_median": round(statistics.median(ratios), 3) if ratios else None,
            "app_wall_speedup_median": round(statistics.median(wall_ratios), 3) if wall_ratios else None,
            "agreement_with_none": agreements,
            "target_speedup": TARGETS["end_to_end_speedup"]}


# --------------------------------------------------------------------------------------------
# Leave-one-camera-out

def folds_of(clips: list[Path], folds: int) -> list[list[Path]]:
    """Clips in name order dealt round-robin into `folds` groups (each clip in exactly one)."""
    ordered = sorted(clips, key=lambda clip: clip.stem)
    return [ordered[k::folds] for k in range(min(folds, len(ordered)))]


def bench_loco(clips: list[Path], folds: int, target: float, epochs: int | None, out: Path, work: Path,
               reuse_variants: Sequence[str] = ("",), on_fold: Callable[[dict[str, Any]], None] | None = None
               ) -> dict[str, Any]:
    """Leave-one-camera-out in grouped folds. Each fold's Skip and Reuse are trained once; every
    Reuse variant (options such as ``refer=agree``; "" is the default) is then calibrated and
    evaluated on the same trained networks, so the variants are compared on equal terms. The
    first variant's figures are the result's own; with several, "variants" holds each one's.
    `on_fold` gets the result so far after every fold (a long run keeps what it finished)."""
    import shutil
    from dataclasses import replace

    from models.calibrate import calibrate_directory
    from models.evaluate import evaluate_clips, summarize
    from models.train import TrainOptions, train_reuse, train_skip
    options = TrainOptions() if epochs is None else replace(TrainOptions(), epochs=epochs)
    variants = list(dict.fromkeys(reuse_variants)) or [""]
    rows: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    timings: list[dict[str, Any]] = []

    def result() -> dict[str, Any]:
        per_variant = {}
        for variant in variants:
            summary = summarize(rows[variant], target) if rows[variant] else {}
            cascade = summary.get("cascade", {})
            per_variant[variant] = {
                "clips": [{"clip": r["clip"], "ceiling": r["ceiling"], "cascade": r["policies"]["cascade"]["best"],
                           "calibrated": r["policies"]["cascade"].get("calibrated")} for r in rows[variant]],
                "summary": summary, "mean_fraction_of_ceiling": cascade.get("mean_fraction_of_ceiling"),
                "worst_fraction_of_ceiling": cascade.get("worst_fraction_of_ceiling"),
                "worst_clip": cascade.get("worst_clip")}
        document = {"folds": timings, **per_variant[variants[0]], "reuse_options": variants[0],
                    "target": TARGETS["loco_mean_fraction_of_ceiling"], "epochs": options.epochs,
                    "complete": len(timings) == len(held_outs)}
        if len(variants) > 1:
            document["variants"] = per_variant
        return document

    held_outs = folds_of(clips, folds)
    for k, held_out in enumerate(held_outs):
        names = [clip.stem for clip in held_out]
        fold_dir = work / f"fold{k}"
        print(f"LOCO fold {k + 1}/{folds}: training without {', '.join(names)}", file=sys.stderr)
        started = time.monotonic()
        train_skip(clips, exclude=names, options=options, out=fold_dir / "skip", progress=False, say=None)
        train_reuse(clips, exclude=names, options=options, out=fold_dir / "reuse", progress=False, say=None)
        trained = time.monotonic() - started
        for variant in variants:
            slug = variant_slug(variant)
            variant_dir = fold_dir if len(variants) == 1 else work / f"fold{k}-{slug}"
            if variant_dir != fold_dir:
                shutil.copytree(fold_dir, variant_dir)
            calibrate_directory(variant_dir, targets=[target], reuse_options=variant)   # on the other clips' val parts
            destination = out / "loco" / f"fold{k}" if len(variants) == 1 else out / "loco" / slug / f"fold{k}"
            table = evaluate_clips(held_out, variant_dir, destination, target, baselines=False, strides=(),
                                   progress=False, reuse_options=variant)
            rows[variant] += table["clips"]
            for row in table["clips"]:
                cascade = row["policies"]["cascade"]
                calibrated = cascade.get("calibrated")
                print(f"  {slug}: {row['clip']}: {cascade['best']['fraction_of_ceiling']:.3f} of the ceiling at best"
                      + (f"; calibrated: agreement {calibrated['agreement']:.3f}, {calibrated['filtered']:.3f} kept"
                         if calibrated else "; not calibrated"), file=sys.stderr)
        timings.append({"fold": k, "held_out": names, "train_s": round(trained, 1),
                        "total_s": round(time.monotonic() - started, 1)})
        if on_fold is not None:
            on_fold(result())
    return result()


def variant_slug(variant: str) -> str:
    """A directory name for a Reuse variant: "default" for no options, else the options made safe."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", variant).strip("-") or "default"


# --------------------------------------------------------------------------------------------

def verdict(results: dict[str, Any]) -> list[str]:
    lines = []
    evaluation = results.get("evaluation")
    if evaluation:
        summary, target = evaluation["summary"], evaluation["target"]
        cascade = summary.get("cascade")
        if cascade:
            below = [row["clip"] for row in evaluation["clips"]
                     if row["policies"]["cascade"]["best"]["fraction_of_ceiling"] < TARGETS["fraction_of_ceiling"]]
            lines.append(f"cascade at >= {target:g} agreement (test halves): fraction of ceiling mean "
                         f"{cascade['mean_fraction_of_ceiling']:.2f}, worst {cascade['worst_fraction_of_ceiling']:.2f} "
                         f"({cascade['worst_clip']}); below {TARGETS['fraction_of_ceiling']:.0%} on {len(below)} clip(s)"
                         + (f": {', '.join(below)}" if below else ""))
            if "calibrated" in cascade:
                c = cascade["calibrated"]
                lines.append(f"calibrated cascade: agreement mean {c['mean_agreement']:.3f}, worst {c['worst_agreement']:.3f} "
                             f"({c['worst_clip']}), filtered mean {c['mean_filtered']:.2f}; misses the target on "
                             f"{len(c['missed_target'])} clip(s)")
            for baseline, versus in summary.get("cascade_vs_baselines", {}).items():
                lines.append(f"cascade vs {baseline}: ahead on {versus['ahead']} clip(s), tied on {len(versus['tied'])}, "
                             f"behind on {len(versus['behind'])}" + (f": {', '.join(versus['behind'])}" if versus["behind"] else ""))
            versus = summary.get("cascade_vs_blind")
            if versus:
                lines.append(f"cascade vs blind reuse (a reference that looks at no frame): ahead on {versus['ahead']} "
                             f"clip(s), tied on {len(versus['tied'])}, behind on {len(versus['behind'])}"
                             + (f": {', '.join(versus['behind'])}" if versus["behind"] else ""))
        for name in ("skip", "reuse", "framediff", "motion", "stride", "blind"):
            if name in summary:
                item = summary[name]
                lines.append(f"{name:>9}: fraction of ceiling mean {item['mean_fraction_of_ceiling']:.2f}, "
                             f"worst {item['worst_fraction_of_ceiling']:.2f}")
    cost = results.get("cost")
    if cost:
        lines.append(f"cost: cascade {cost['filter_ms_per_frame']:.3f} ms/frame vs YOLO {cost['yolo_ms_per_frame']:.1f} "
                     f"ms/frame = {cost['share_of_yolo']:.2%} (target <= {TARGETS['cost_share_of_yolo']:.0%})")
    e2e = results.get("end_to_end")
    if e2e:
        lines.append(f"end to end: cascade {e2e['fps_median']['cascade']:.1f} vs none {e2e['fps_median']['none']:.1f} "
                     f"frames/s = x{e2e['speedup_median']} (target x{TARGETS['end_to_end_speedup']:g}); whole app runs, "
                     f"start-up included: x{e2e.get('app_wall_speedup_median')}; per-frame count "
                     f"agreement with the unfiltered run {e2e.get('agreement_with_none')}")
    loco = results.get("loco")
    if loco:
        lines.append(f"LOCO: cascade fraction of ceiling mean {loco['mean_fraction_of_ceiling']:.2f}, worst "
                     f"{loco['worst_fraction_of_ceiling']:.2f} ({loco['worst_clip']}) (target mean >= "
                     f"{TARGETS['loco_mean_fraction_of_ceiling']:.0%})")
        for variant, entry in loco.get("variants", {}).items():
            if entry.get("mean_fraction_of_ceiling") is not None:
                lines.append(f"  Reuse {variant or 'default'}: mean {entry['mean_fraction_of_ceiling']:.2f}, worst "
                             f"{entry['worst_fraction_of_ceiling']:.2f} ({entry['worst_clip']})")
    return lines


def main() -> int:
    task = argparse.ArgumentParser(add_help=False)
    task.add_argument("--task", choices=("vehicle", "speech"), default="vehicle")
    known, rest = task.parse_known_args()
    if known.task == "speech":                 # the audio filters: apps/bench_speech.py
        from apps.bench_speech import main as speech_main
        return speech_main(rest)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("vehicle", "speech"), default="vehicle",
                        help="vehicle: the video filters (this page); speech: the audio filters (apps/bench_speech.py)")
    parser.add_argument("--filters", type=Path, default=SHIPPED,
                        help="filter set (skip/, reuse/, cascade.json; default the shipped one)")
    parser.add_argument("--clips", type=Path, nargs="+", default=None, help="default: every clip under $INFI_ASSETS/traffic")
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of the timed measurements (default 3)")
    parser.add_argument("--frames", type=int, default=200, help="frames for the cost measurement (default 200)")
    parser.add_argument("--no-evaluation", dest="evaluation", action="store_false", help="skip the accuracy part")
    parser.add_argument("--no-cost", dest="cost", action="store_false", help="skip the cost part")
    parser.add_argument("--no-baseline-calibration", dest="calibrate_baselines", action="store_false",
                        help="do not calibrate framediff and motion on the validation parts (their curves stay)")
    parser.add_argument("--end-to-end", action="store_true", help="also time vehicle_count.py with and without the cascade (slow)")
    parser.add_argument("--e2e-frames", type=int, default=None, help="end to end: only the first N frames (default all)")
    parser.add_argument("--loco", action="store_true", help="also run leave-one-camera-out (trains per fold: slow)")
    parser.add_argument("--folds", type=int, default=5, help="LOCO folds (default 5)")
    parser.add_argument("--epochs", type=int, default=None, help="LOCO training epochs (default: the trainer's)")
    parser.add_argument("--loco-reuse", nargs="+", default=[""], metavar="OPTIONS",
                        help="LOCO: Reuse variants to compare on the same trained networks, as Reuse options "
                             "('' for the default, refer=agree, ...); the first is the headline (default: '')")
    parser.add_argument("--loco-keep", type=Path, default=None, metavar="DIR",
                        help="keep each LOCO fold's trained and calibrated filter sets under DIR "
                             "(default: a temporary directory, removed at the end)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "filters.json")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "filters", help="PNGs and tables")
    args = parser.parse_args()
    os.environ.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))
    from models.dataset import default_clips
    from models.evaluate import check_filters, evaluate_clips
    check_filters(args.filters)
    clips = args.clips or default_clips()
    video = assets_dir() / VIDEO
    results: dict[str, Any] = {"filters": str(args.filters), "target": args.target, "cpu_count": os.cpu_count(),
                               "targets": TARGETS, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.json.exists():                     # keep parts of an earlier run this one does not redo
        previous = json.loads(args.json.read_text())
        results.update({key: previous[key] for key in ("evaluation", "cost", "end_to_end", "loco") if key in previous})

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")

    if args.evaluation:
        baseline_thresholds = None
        if args.calibrate_baselines:
            from models.calibrate import calibrate_specs
            print("calibrating framediff and motion on the validation parts ...", file=sys.stderr)
            documents = calibrate_specs(["framediff", "motion"], clips, [args.target])
            label = f"{args.target:g}"
            baseline_thresholds = {spec: doc["targets"][label]["threshold"] for spec, doc in documents.items()
                                   if label in doc["targets"]}
            results["baseline_calibration"] = {spec: {"targets": doc["targets"], "unmet": doc["unmet"]}
                                               for spec, doc in documents.items()}
        print(f"evaluation on the test halves of {len(clips)} clips ...", file=sys.stderr)
        started = time.monotonic()
        table = evaluate_clips(clips, args.filters, args.out, args.target, say=lambda line: print(line, file=sys.stderr),
                               baseline_thresholds=baseline_thresholds)
        results["evaluation"] = compact(table) | {"seconds": round(time.monotonic() - started, 1)}
        save()
    if args.cost:
        print("cost per frame: cascade vs YOLO ...", file=sys.stderr)
        results["cost"] = bench_cost(args.filters, args.target, video, args.frames, args.runs)
        save()
    if args.end_to_end:
        print("end to end: vehicle_count.py --filter cascade vs none ...", file=sys.stderr)
        results["end_to_end"] = bench_end_to_end(video, args.runs, args.filters, args.target, args.e2e_frames)
        save()
    if args.loco:
        with contextlib.nullcontext(str(args.loco_keep)) if args.loco_keep else \
                tempfile.TemporaryDirectory(prefix="bench-loco-") as work:
            Path(work).mkdir(parents=True, exist_ok=True)
            from models.reuse import checked_reuse_options
            for variant in args.loco_reuse:            # refused before hours of training, not after
                checked_reuse_options(variant)

            def keep(partial: dict[str, Any]) -> None:
                results["loco"] = partial
                save()
            results["loco"] = bench_loco(clips, args.folds, args.target, args.epochs, args.out, Path(work),
                                         args.loco_reuse, on_fold=keep)
        save()
    for line in verdict(results):
        print(line)
    print(f"wrote {args.json}" + (f" and {args.out}/" if args.evaluation else ""))
    return 0


if __name__ == "__main__":
    from pipeline.errors import ConfigError
    try:
        sys.exit(main())
    except ConfigError as error:
        print(f"bench_filters: {error}", file=sys.stderr)
        sys.exit(2)
