"""Benchmark the consumers on this CPU: YOLO ms per frame, speech real-time factor, end-to-end
frames/s with 1 and 2 workers, and the aggregator's overhead per frame.

    python apps/bench_consumers.py [--frames 120] [--runs 3] [--json bench/results/consumers.json]

Each figure is the median of --runs repetitions, interleaved where two setups are compared
(1 vs 2 workers run alternately), because timings on a shared machine drift. The PNG next to
the JSON shows the comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import consumer_graph  # noqa: E402

from pipeline.assets import assets_dir  # noqa: E402
from pipeline.graph import GraphRun, parse_graph  # noqa: E402
from pipeline.message import Message, eos  # noqa: E402

VIDEO = "traffic/intel_car_detection.mp4"
SPEECH = ["audio/librispeech/another_door.wav", "audio/librispeech/another_engineer.wav",
          "audio/librispeech/i_tell_you.wav", "audio/librispeech/testing_routine.wav", "audio/speech_long/jfk.flac"]


def decode_frames(path: Path, count: int) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for _, f in zip(range(count), container.decode(video=0))]


def decode_audio(path: Path) -> np.ndarray:
    from stages.sources.audio import AudioFileSource
    with AudioFileSource(path, window_s=3600, hop_s=3600) as source:
        # One window holds the whole clip, zero-padded to the window length: keep the real samples.
        windows = [m.arrays[0][:m.meta.get("valid_samples", len(m.arrays[0]))] for m in source if not m.is_eos]
    return np.concatenate(windows) if windows else np.zeros(0, np.float32)


def timed(runs: int, work: Callable[[], object]) -> list[float]:
    """Seconds each of `runs` calls of `work` took."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return seconds


def bench_yolo(frames: list[np.ndarray], runs: int) -> dict:
    from stages.detect import load_detector
    with load_detector() as detector:
        per_run = [s * 1000 / len(frames) for s in timed(runs, lambda: [detector.detect(f) for f in frames])]
    return {"ms_per_frame": round(statistics.median(per_run), 2), "runs": [round(v, 2) for v in per_run],
            "frames": len(frames)}


def bench_speech(assets: Path, runs: int) -> dict:
    from stages.speech import load_recognizer
    clips = [decode_audio(assets / name) for name in SPEECH if (assets / name).exists()]
    audio_s = sum(len(c) for c in clips) / 16000
    with load_recognizer() as recognizer:
        per_run = [s / audio_s for s in timed(runs, lambda: [recognizer.transcribe(clip) for clip in clips])]
    return {"real_time_factor": round(statistics.median(per_run), 4), "runs": [round(v, 4) for v in per_run],
            "audio_s": round(audio_s, 2), "clips": len(clips)}


def run_pipeline(video: Path, workers: int, frames: int, directory: Path) -> dict:
    args = argparse.Namespace(workers=workers, filter="none", out=str(directory / f"w{workers}.jsonl"),
                              summary=str(directory / f"w{workers}.json"), publish=None, transport="ipc",
                              realtime=False)
    document = consumer_graph("bench", args, {"uri": str(video), "media": "video", "max_frames": frames,
                                              "progress": False},
                              "stages.detect:YoloWorker", {}, {"task": "vehicles", "print_summary": False})
    run = GraphRun(parse_graph(document, "bench"), log_level="WARNING")
    if run.run() != 0:
        raise RuntimeError(f"the {workers}-worker pipeline failed; see the log above")
    summary = json.loads(Path(args.summary).read_text())["total"]
    aggregate = next(m for m in run.stage_metrics() if m.get("stage") == "aggregate")
    return {"fps": summary["end_to_end_fps"], "balanced": summary["balanced"],
            "aggregate_process_ms_p50": aggregate.get("process_ms", {}).get("p50")}


def bench_aggregator(frames: int, runs: int) -> dict:
    """The aggregator alone, in process: out-of-order results with boxes, line counting on."""
    from stages.aggregate import Aggregator
    from stages.results import Detections
    rng = np.random.default_rng(0)
    messages = []
    for seq in range(frames):
        n = int(rng.integers(0, 6))
        x = rng.uniform(0, 600, n)
        boxes = np.stack([x, np.full(n, 100.0), x + 40, np.full(n, 140.0)], axis=1) if n else np.zeros((0, 4))
        messages.append(Message("result", "bench", seq, pts=seq / 25, decision={"action": "infer"},
                                result=Detections(boxes, [2] * n, [0.8] * n, infer_ms=30).to_wire()))
    for i in range(0, frames - 1, 2):          # as two workers deliver: pairs swapped
        messages[i], messages[i + 1] = messages[i + 1], messages[i]
    per_run = []
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(runs):
            stage = Aggregator(task="vehicles", line="0,120,640,120", out=f"{directory}/a.jsonl", print_summary=False)
            stage.name = "bench"
            stage.setup()
            started = time.perf_counter()
            for message in messages:
                stage.process(message)
            stage.end_of_stream(eos("bench", frames, final=True))
            per_run.append((time.perf_counter() - started) * 1000 / frames)
            stage.teardown()
    return {"ms_per_frame": round(statistics.median(per_run), 4), "runs": [round(v, 4) for v in per_run],
            "frames": frames, "target_ms": 1.0}


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    e2e = results["end_to_end"]
    panels = [
        (axes[0], ["1 worker", "2 workers"], [e2e["1"]["fps_median"], e2e["2"]["fps_median"]], ["#888", "#3a7"],
         "end to end, frames/s", "{:.1f}"),
        (axes[1], ["YOLO", "aggregator"], [results["yolo"]["ms_per_frame"], results["aggregator"]["ms_per_frame"]],
         ["#c63", "#36c"], "ms per frame", "{:.2f}"),
        (axes[2], ["speech"], [results["speech"]["real_time_factor"]], ["#93c"],
         "real-time factor (< 1: faster than real time)", "{:.3f}"),
    ]
    for axis, labels, values, colors, title, fmt in panels:
        bars = axis.bar(labels, values, color=colors)
        axis.bar_label(bars, [fmt.format(v) for v in values])
        axis.set_title(title, fontsize=10)
        axis.margins(y=0.15)
    axes[2].axhline(1.0, color="k", lw=0.8, ls="--")
    figure.suptitle(f"consumers on this CPU ({os.cpu_count()} cores), medians of {results['runs']} runs")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=120, help="video frames per measurement (default 120)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per measurement (default 3)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/consumers.json"))
    args = parser.parse_args()
    assets = assets_dir()
    video = assets / VIDEO
    if not video.exists():
        print(f"bench_consumers: {video} not found; set INFI_ASSETS to the shared assets", file=sys.stderr)
        return 2
    results: dict = {"runs": args.runs, "cpu_count": os.cpu_count()}
    print("YOLO per frame ...", file=sys.stderr)
    results["yolo"] = bench_yolo(decode_frames(video, args.frames), args.runs)
    print("speech real-time factor ...", file=sys.stderr)
    results["speech"] = bench_speech(assets, args.runs)
    print("aggregator overhead ...", file=sys.stderr)
    results["aggregator"] = bench_aggregator(2000, args.runs)
    print("end to end, 1 and 2 workers (interleaved) ...", file=sys.stderr)
    runs: dict[str, list[dict]] = {"1": [], "2": []}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(args.runs):
            for workers in (1, 2):
                runs[str(workers)].append(run_pipeline(video, workers, args.frames, Path(directory)))
    results["end_to_end"] = {k: {"fps_median": statistics.median(r["fps"] for r in v), "runs": v}
                             for k, v in runs.items()}
    ratios = [b["fps"] / a["fps"] for a, b in zip(runs["1"], runs["2"])]
    results["end_to_end"]["speedup_2_over_1"] = round(statistics.median(ratios), 3)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    plot(results, args.json.with_suffix(".png"))
    e2e = results["end_to_end"]
    print(f"\nYOLO {results['yolo']['ms_per_frame']} ms/frame ({results['yolo']['frames']} frames of {VIDEO})\n"
          f"speech real-time factor {results['speech']['real_time_factor']} over {results['speech']['audio_s']} s of audio\n"
          f"end to end {e2e['1']['fps_median']} frames/s with 1 worker, {e2e['2']['fps_median']} with 2 "
          f"(x{e2e['speedup_2_over_1']} median of paired runs)\n"
          f"aggregator {results['aggregator']['ms_per_frame']} ms/frame (target < 1 ms)\n"
          f"wrote {args.json} and {args.json.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
