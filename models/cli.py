"""``infistream filter ...``: the filter tools, added to the ``infistream`` command as a plugin
(pyproject.toml, entry point group ``infistream.commands``).

    infistream filter label --source CLIP [CLIP ...] [--out DIR] [--max-frames N] [--weights W]

runs the real YOLO worker once per clip and keeps its per-frame detections (models/labels.py),
cached by clip content and detector settings; it prints, per clip, the frames labelled and the
share a filter could answer for: empty frames and frames repeating the previous frame's count.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.labels import DetectorSettings, count_labels, default_label_dir, label_clip


def register(commands: argparse._SubParsersAction) -> None:
    filters = commands.add_parser("filter", help="label, train and evaluate filters")
    tools = filters.add_subparsers(dest="tool", required=True)
    label = tools.add_parser("label", help="run YOLO once per clip and keep its per-frame detections")
    label.add_argument("--source", nargs="+", required=True, type=Path, metavar="CLIP", help="video files")
    label.add_argument("--out", type=Path, default=None, help=f"label directory (default {default_label_dir()})")
    label.add_argument("--max-frames", type=int, default=None, help="label only the first N frames of each clip")
    label.add_argument("--weights", default="", help="YOLO weights (default: the shared offline YOLOv8n INT8)")
    label.add_argument("--conf", type=float, default=DetectorSettings.conf)
    label.add_argument("--refresh", action="store_true", help="label again even when cached")
    label.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    label.set_defaults(handler=run_label)


def run_label(args: argparse.Namespace) -> int:
    settings = DetectorSettings(weights=args.weights, conf=args.conf)
    for clip in args.source:
        path = label_clip(clip, settings, args.out, max_frames=args.max_frames, progress=args.progress,
                          refresh=args.refresh)
        labels = count_labels(path)
        frames = len(labels.count)
        if frames:
            print(f"{clip.name}: {frames} frames, empty {labels.empty.mean():.1%}, same count as the previous "
                  f"frame {labels.same_count.mean():.1%}, mean count {labels.count.mean():.2f} -> {path}")
        else:
            print(f"{clip.name}: no frame decoded -> {path}")
    return 0
