"""Count vehicles in a camera, video file or stream with YOLO, and log what the filter saved.

    python apps/vehicle_count.py --source cam0|FILE|URL [--weights W] [--filter cascade|skip|reuse|framediff|motion|stride:N|none|DIR]
        [--line x1,y1,x2,y2 [--no-line-guard]] [--region x1,y1,x2,y2[,x3,y3,...]] [--show [window|FILE.mp4]]
        [--audit SHARE [--audit-seed N] [--hold-target T]] [--workers N] [--out results.jsonl]

Per frame: vehicles (cars, motorcycles, buses, trucks) in view, and inside --region. Over time:
unique vehicles crossing --line (tracked); with a line, the line guard (models/line_guard.py)
goes in front of the filter, so every frame in which something moves at the line reaches YOLO
and no crossing is hidden by a filter (--no-line-guard leaves the filter as given). Every frame gets a JSON line in --out (for a recorded
file also drawn, as --out with .png: vehicles over time, crossings, each frame's decision); at
the end the aggregator prints the savings summary (frames by decision, model time spent and
avoided). With --audit, a random share of the frames the filter answered also go to YOLO, and
the summary estimates how often all answers agree with YOLO's (docs/results.md, "Audit").
Without --weights the shared offline YOLOv8n INT8 file is used. Runs are offline by default
(YOLO_OFFLINE=1: nothing is downloaded); with internet, set YOLO_OFFLINE=0 to let Ultralytics
fetch names such as yolov8n.pt or yolo11n.pt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import add_run_options, check_source, consumer_graph, run_graph


def warn_below_conf_floor(spec: str, conf: float) -> None:
    """A warning (not a refusal: the user may accept the loss) when the filter holds a Skip that
    learned "YOLO needed" at a higher conf than the detector runs at (models/skip.py)."""
    from models.registry import parse_policy
    from models.skip import conf_floor_problem
    from pipeline.errors import ConfigError
    try:
        problem = conf_floor_problem(parse_policy(spec), conf)    # builds the policy, loads no weights
    except ConfigError:
        return              # a bad --filter is refused later, with its own message
    if problem:
        print(f"vehicle_count: warning: {problem}", file=sys.stderr)


def guarded_filter(spec: str, line: str) -> str:
    """`spec` with the line guard in front when crossings of `line` are counted: a filter judged
    on per-frame counts may answer every frame of a car whose count did not change, and the
    tracker never sees it cross (docs/filters.md, "Counting lines"). Unchanged without a line,
    for ``none`` (YOLO sees every frame anyway) and when the spec already names a guard."""
    parts = [part.strip() for part in spec.split("+")]
    if not line or parts == ["none"] or any(part.split(":")[0] == "line" for part in parts):
        return spec
    return f"line:{line}+{spec}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="cam0, /dev/videoN, a video file or a stream URL")
    parser.add_argument("--weights", default="", help="YOLO weights (default: the shared yolov8n_int8.tflite)")
    parser.add_argument("--conf", type=float, default=0.25, help="detection confidence threshold (default 0.25)")
    parser.add_argument("--imgsz", type=int, default=640, help="YOLO input size in pixels (default 640)")
    parser.add_argument("--line", default="", help="counting line x1,y1,x2,y2 in frame pixels")
    parser.add_argument("--no-line-guard", action="store_true",
                        help="with --line, do not put the line guard in front of the filter (it sends YOLO every "
                             "frame in which something moves at the line, so no crossing is hidden)")
    parser.add_argument("--region", default="", help="counting region: x1,y1,x2,y2 rectangle or a polygon")
    parser.add_argument("--show", nargs="?", const="window", default="", metavar="window|FILE.mp4",
                        help="draw boxes, the line and the count in a window, or write them to a video file")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    # The shipped Skip -> Reuse cascade, calibrated for 95 % per-frame count agreement with the
    # shared YOLOv8n INT8 (docs/filters.md); --filter none runs YOLO on every frame.
    add_run_options(parser, default_out="vehicle_count.jsonl", default_filter="cascade")
    args = parser.parse_args(argv)
    if not args.no_line_guard:
        args.filter = guarded_filter(args.filter, args.line)
    warn_below_conf_floor(args.filter, args.conf)
    check_source("vehicle_count", args.source, "video")
    if args.show == "window":
        from pipeline.errors import ConfigError
        from stages.display import check_display   # OpenCV: imported only when a window is asked for
        try:
            check_display()
        except ConfigError as error:
            parser.error(str(error))

    source = {"uri": args.source, "media": "video", **({"max_frames": args.max_frames} if args.max_frames else {})}
    worker = {"weights": args.weights, "conf": args.conf, "imgsz": args.imgsz}
    aggregator = {"task": "vehicles", "line": args.line, "region": args.region, "show": args.show}
    document = consumer_graph("vehicle-count", args, source, "stages.detect:YoloWorker", worker, aggregator,
                              keep_frames=bool(args.show))
    return run_graph(document, args, plot=Path(args.source).is_file())


if __name__ == "__main__":
    sys.exit(main())
