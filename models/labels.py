"""Labels for free: the detector's answers on recorded clips, and the redundancy rules on them.

`label_clip` runs the real YOLO worker once over a clip (a graph of the project's own stages,
started by name: source -> YoloWorker -> JsonlSink) and keeps its per-frame detections as JSON
Lines, cached by the clip's content hash and the detector's settings: labelling the same clip
with the same detector again reads the file. Each line is one frame, ``{"seq", "pts", "boxes",
"classes", "scores"}``; the last is ``{"end": true, "frames": N, "detector": {...}, "source":
{...}}`` with the detector's settings and the source's counters (frames it could not decode are
gaps in ``seq``, never made up).

A label file keeps every detection down to a FLOOR score, the detector's ``conf`` when it ran
(`LABEL_FLOOR_CONF`, 0.1, by default; the end line's ``detector.conf``): what the detector answers
at any conf at or above the floor is the file's boxes whose score is above that conf (YOLO drops
candidates at or below conf before non-maximum suppression, and a lower-scored box never
suppresses a higher-scored one), so one YOLO pass labels every worker conf from the floor up. The
counts a filter's agreement is measured on are made at `COUNT_CONF` (0.25, the YOLO worker's
default) unless asked otherwise (`count_labels(conf=...)`); a conf below a file's floor is refused.

The redundancy rules (`count_labels`) turn detections into what a filter learns: a frame is
``empty`` when it holds no vehicle, and ``same-count`` when its count equals the reference
frame's (the previous decoded frame), optionally counting only boxes whose centre lies in a
region. Classes are COCO's 0-based ids: car 2, motorcycle 3, bus 5, truck 7.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.assets import cache_dir
from pipeline.errors import ConfigError
from pipeline.graph import GraphRun, parse_graph
from models.options import stated_number

log = logging.getLogger(__name__)

#: Bumped when the label file's format or the way it is made changes: old caches are not reused.
#: (Not bumped when the end line began to record the detector: a file without that record holds
#: the detections of the settings it is cached under, and readers take its floor from those.)
LABEL_FORMAT = 1
VEHICLE_CLASSES = (2, 3, 5, 7)
#: The detector's conf when labelling: every detection scoring above it is kept, so counts at
#: any worker conf from here up come from one YOLO pass (highway_topdown is counted at 0.1).
LABEL_FLOOR_CONF = 0.1
#: The conf counts are made at for the agreement a filter is calibrated and scored on: the YOLO
#: worker's default (stages/detect.py DetectorOptions.conf).
COUNT_CONF = 0.25


@dataclass(frozen=True)
class DetectorSettings:
    """What decides the detector's answers, hence the cache key (the YoloWorker's parameters)."""

    weights: str = ""            # "" = the shared offline YOLOv8n INT8 (see stages/detect.py)
    conf: float = LABEL_FLOOR_CONF   # the floor: detections scoring above it are kept
    iou: float = 0.7
    imgsz: int = 640
    classes: str = "2,3,5,7"

    def key(self) -> str:
        weights = Path(self.weights)
        identity = {**asdict(self), "format": LABEL_FORMAT,
                    "weights_sha256": file_sha256(weights) if self.weights and weights.is_file() else None}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def label_path(clip: Path, settings: DetectorSettings, out_dir: Path, max_frames: int | None = None) -> Path:
    """Where the labels of `clip` under `settings` are cached (content hash, not name or date)."""
    limit = f"-first{max_frames}" if max_frames else ""
    return out_dir / f"{clip.stem}-{file_sha256(clip)[:16]}-{settings.key()}{limit}.jsonl"


def default_label_dir() -> Path:
    return cache_dir() / "labels"


def cached_labels(clip: Path, settings: DetectorSettings = DetectorSettings(), conf: float = COUNT_CONF,
                  out_dir: Path | None = None) -> tuple[Path, float] | None:
    """A cached label file of `clip` that holds the detections at detector conf `conf`, and its
    floor: the file made at `settings` (the floor), else one made at `conf` itself (caches made
    before labels kept a floor below the counting conf); None when neither is there."""
    folder = Path(out_dir or default_label_dir())
    made_at = [settings] + ([replace(settings, conf=conf)] if conf > settings.conf + 1e-9 else [])
    for detector in made_at:
        path = label_path(Path(clip), detector, folder)
        if path.exists():
            return path, detector.conf
    return None


def label_clip(clip: Path | str, settings: DetectorSettings = DetectorSettings(), out_dir: Path | None = None,
               max_frames: int | None = None, progress: bool = False, refresh: bool = False) -> Path:
    """The per-frame detections of `clip` (a JSON Lines file, made now or read from the cache)."""
    clip = Path(clip)
    if not clip.is_file():
        raise ConfigError(f"cannot label {clip}: no such file")
    out_dir = Path(out_dir or default_label_dir())
    target = label_path(clip, settings, out_dir, max_frames)
    if target.exists() and not refresh:
        log.info("labels of %s: cached in %s", clip.name, target)
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    source = {"media": "video", "progress": progress, **({"max_frames": max_frames} if max_frames else {})}
    detector = {"weights": settings.weights, "conf": settings.conf, "iou": settings.iou, "imgsz": settings.imgsz,
                "classes": settings.classes}
    frames = run_labelling("label", clip, source, ("detect", "stages.detect:YoloWorker", detector), target,
                           lambda raw, out: _write_labels(raw, out, detector))
    log.info("labels of %s: %d frames in %s", clip.name, frames, target)
    return target


def run_labelling(name: str, media: Path, source: dict[str, Any], model: tuple[str, str, dict[str, Any]],
                  target: Path, write: Callable[[Path, Path], int]) -> int:
    """Run `media` through source -> the model's worker (`model`: stage name, ``module:Class``,
    parameters) -> a JsonlSink, as one graph of processes, and turn the sink's output into the
    label file `target` with `write(raw, out) -> rows`; the file appears whole or not at all.
    Returns the rows written."""
    model_name, model_stage, model_params = model
    with tempfile.TemporaryDirectory(prefix=f"infistream-{name}-") as temp:
        raw = Path(temp) / "raw.jsonl"
        graph = parse_graph({"name": name, "stages": [
            {"name": "source", "stage": "stages.source:Source", "params": {"uri": str(media), **source}},
            {"name": model_name, "stage": model_stage, "inputs": ["source"], "params": model_params},
            {"name": "sink", "stage": "stages.sinks:JsonlSink", "inputs": [model_name], "params": {"path": str(raw)}},
        ]}, name)
        run = GraphRun(graph, log_level=logging.getLevelName(logging.getLogger().level) or "WARNING")
        if run.run() != 0:
            raise RuntimeError(f"labelling {media} failed: stage(s) {run.failed} ended with errors (see the log)")
        partial = target.with_suffix(".partial")
        rows = write(raw, partial)
        os.replace(partial, target)   # never a half-written file under the final name
    return rows


def read_sink_output(raw: Path, made_by: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The result headers a labelling run's JsonlSink wrote, in seq order, and its end-of-stream
    header (`made_by` names the model in the error when the run never reached its end)."""
    results, end = [], None
    for line in Path(raw).read_text().splitlines():
        header = json.loads(line)
        if header.get("kind") == "eos":
            end = header
        else:
            results.append(header)
    if end is None:
        raise RuntimeError(f"the {made_by}'s output {raw} has no end of stream: labels would be incomplete")
    results.sort(key=lambda header: header["seq"])
    return results, end


def write_label_file(out: Path, rows: Sequence[dict[str, Any]], end: dict[str, Any]) -> None:
    """One JSON line per row, then the end record (``{"end": true, ...end}``) that says the file is whole."""
    with Path(out).open("w") as stream:
        for row in rows:
            stream.write(json.dumps(row, separators=(",", ":")) + "\n")
        stream.write(json.dumps({"end": True, **end}) + "\n")


def _write_labels(raw: Path, out: Path, detector: dict[str, Any]) -> int:
    results, end = read_sink_output(raw, "detector")
    frames = []
    for header in results:
        result = header.get("result") or {}
        frames.append({"seq": header["seq"], "pts": header.get("pts", 0.0), "boxes": result.get("boxes", []),
                       "classes": result.get("classes", []), "scores": result.get("scores", [])})
    if len(frames) + int(end.get("dropped", 0)) != end["seq"]:
        raise RuntimeError(f"{len(frames)} labelled frames + {end.get('dropped', 0)} dropped at the source "
                           f"!= {end['seq']} frames read: refusing incomplete labels")
    write_label_file(out, frames, {"frames": end["seq"], "labelled": len(frames), "detector": detector,
                                   "source": (end.get("meta") or {}).get("source", {})})
    return len(frames)


@dataclass(frozen=True)
class FrameLabels:
    """Per labelled frame of one clip: seq, pts, vehicle count, and the two redundancy labels."""

    seq: np.ndarray          # int64
    pts: np.ndarray          # float64 seconds
    count: np.ndarray        # int32 vehicles scoring above `conf` (in the region, when one is given)
    empty: np.ndarray        # bool: no vehicle
    same_count: np.ndarray   # bool: count equals the previous labelled frame's (False for the first)
    top_score: np.ndarray | None = None   # float32: the highest score of a vehicle (in the region), 0 if none
    conf: float | None = None    # the conf the counts are made at; None: every detection in the file
    floor: float | None = None   # the file's floor (its detector's conf); None: the file does not say


def read_label_lines(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A label file's frame records and its end record ({} when it has none)."""
    frames, end = [], {}
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        if record.get("end"):
            end = record
        else:
            frames.append(record)
    return frames, end


def end_floor(end: dict[str, Any]) -> float | None:
    """The floor an end record states (its detector's conf), or None."""
    return stated_number((end.get("detector") or {}).get("conf"))


def label_floor(path: Path) -> float | None:
    """The lowest score a label file keeps: the conf its detector ran at, as its end line says;
    None for a file that does not say (made before the end line recorded it, or by hand: it
    holds the detections of the settings it is cached under)."""
    return end_floor(read_label_lines(path)[1])


def count_labels(path: Path, region: Sequence[float] | None = None, classes: Sequence[int] = VEHICLE_CLASSES,
                 conf: float | None = COUNT_CONF, floor: float | None = None) -> FrameLabels:
    """The redundancy labels of a label file at detector confidence `conf`: a box counts when its
    score is above `conf` (as YOLO keeps a box; None: every box in the file, i.e. at its floor).
    `region` = x1, y1, x2, y2 counts only boxes whose centre lies inside it. A `conf` below the
    file's floor (its end line's, else `floor`, what the caller looked it up by) is refused: the
    file cannot know what the detector would have found there."""
    frames, end = read_label_lines(path)
    stated = end_floor(end)
    floor = stated if stated is not None else floor
    if conf is not None and floor is not None and conf < floor - 1e-9:
        raise ConfigError(f"{path} keeps detections scoring above {floor:g} only: counts at conf {conf:g} need "
                          f"labels made at a conf of {conf:g} or less (infistream filter label --conf)")
    seqs, pts, counts, tops = [], [], [], []
    wanted = set(classes)
    for frame in frames:
        boxes = np.asarray(frame["boxes"], np.float64).reshape(-1, 4)
        keep = np.array([int(c) in wanted for c in frame["classes"]], bool)
        scores = np.asarray(frame.get("scores", []), np.float64)
        if len(scores) != len(keep):
            raise ValueError(f"{path}: frame {frame['seq']} has {len(keep)} boxes but {len(scores)} scores")
        if region is not None and len(boxes):
            x1, y1, x2, y2 = region
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            keep &= (cx >= x1) & (cx <= x2) & (cy >= y1) & (cy <= y2)
        tops.append(float(scores[keep].max()) if keep.any() else 0.0)
        if conf is not None and len(keep):
            keep &= scores > conf
        seqs.append(frame["seq"])
        pts.append(frame["pts"])
        counts.append(int(keep.sum()) if len(keep) else 0)
    count = np.asarray(counts, np.int32)
    same = np.zeros(len(count), bool)
    same[1:] = count[1:] == count[:-1]
    return FrameLabels(np.asarray(seqs, np.int64), np.asarray(pts, np.float64), count, count == 0, same,
                       np.asarray(tops, np.float32), conf, floor)
