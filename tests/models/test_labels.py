"""Labels for free: YOLO once per clip (real worker, real media), cached; redundancy rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import labels as labels_module
from models.labels import (COUNT_CONF, LABEL_FLOOR_CONF, DetectorSettings, _write_labels, cached_labels, count_labels,
                           label_clip, label_floor, label_path)
from models.simulate import labelled_clip
from pipeline.errors import ConfigError
from tests.conftest import asset_or_skip

ROOT = Path(__file__).resolve().parents[2]
CLIP = "traffic/intel_car_detection.mp4"


def write_labels(path: Path, frames: list[list[tuple[list[float], int]]]) -> Path:
    """A label file: per frame, its (box, class) detections."""
    with path.open("w") as out:
        for seq, detections in enumerate(frames):
            out.write(json.dumps({"seq": seq, "pts": seq / 10, "boxes": [box for box, _ in detections],
                                  "classes": [cls for _, cls in detections],
                                  "scores": [0.9] * len(detections)}) + "\n")
        out.write(json.dumps({"end": True, "frames": len(frames), "labelled": len(frames), "source": {}}) + "\n")
    return path


CAR, BUS, PERSON = 2, 5, 0
LEFT, RIGHT = [0, 0, 10, 10], [100, 0, 110, 10]


@pytest.mark.parametrize("frames, region, counts, empty, same", [
    # no vehicle, one car, the same, a bus added, a person only (not a vehicle)
    ([[], [(LEFT, CAR)], [(RIGHT, CAR)], [(LEFT, CAR), (RIGHT, BUS)], [(LEFT, PERSON)]], None,
     [0, 1, 1, 2, 0], [True, False, False, False, True], [False, False, True, False, False]),
    # only boxes whose centre is in the left region count
    ([[(LEFT, CAR)], [(RIGHT, CAR)], [(LEFT, CAR), (RIGHT, BUS)]], (0, 0, 50, 50),
     [1, 0, 1], [False, True, False], [False, False, False]),
])
def test_redundancy_rules(tmp_path, frames, region, counts, empty, same):
    got = count_labels(write_labels(tmp_path / "labels.jsonl", frames), region=region)
    assert got.count.tolist() == counts and got.empty.tolist() == empty and got.same_count.tolist() == same
    assert got.seq.tolist() == list(range(len(frames)))


def write_scored(path: Path, frames: list[list[float]], floor: float | None) -> Path:
    """A label file whose frame i holds one car per score in frames[i]; the end line states the
    detector's conf (the floor) unless `floor` is None, as older files do."""
    with path.open("w") as out:
        for seq, scores in enumerate(frames):
            out.write(json.dumps({"seq": seq, "pts": seq / 10, "boxes": [LEFT] * len(scores),
                                  "classes": [CAR] * len(scores), "scores": scores}) + "\n")
        detector = {} if floor is None else {"detector": {"weights": "", "conf": floor, "iou": 0.7, "imgsz": 640,
                                                          "classes": "2,3,5,7"}}
        out.write(json.dumps({"end": True, "frames": len(frames), "labelled": len(frames), **detector}) + "\n")
    return path


# Frame scores as YOLO at the floor (0.1) gave them: a car at 0.17 only (what highway_topdown's
# fourth car looks like), nothing, a car at 0.3 and one at 0.6, a car at 0.26.
SCORED = [[0.17], [], [0.3, 0.6], [0.26]]


def test_labels_at_the_floor_give_the_counts_of_every_conf_above_it(tmp_path):
    labels = write_scored(tmp_path / "floor.jsonl", SCORED, floor=LABEL_FLOOR_CONF)
    assert label_floor(labels) == LABEL_FLOOR_CONF
    assert count_labels(labels, conf=None).count.tolist() == [1, 0, 2, 1]          # every box kept: the floor
    assert count_labels(labels, conf=0.1).count.tolist() == [1, 0, 2, 1]
    default = count_labels(labels)                                                 # the counting conf, 0.25
    assert (default.conf, default.floor) == (COUNT_CONF, LABEL_FLOOR_CONF)
    assert default.count.tolist() == [0, 0, 2, 1] and default.empty.tolist() == [True, True, False, False]
    assert count_labels(labels, conf=0.5).count.tolist() == [0, 0, 1, 0]
    assert default.top_score.tolist() == pytest.approx([0.17, 0.0, 0.6, 0.26])      # Skip's label at any conf
    with pytest.raises(ConfigError, match="above 0.1 only: counts at conf 0.05"):
        count_labels(labels, conf=0.05)                                            # below the floor: unknown
    older = write_scored(tmp_path / "older.jsonl", SCORED, floor=None)            # the end line does not say
    assert label_floor(older) is None and count_labels(older).count.tolist() == [0, 0, 2, 1]
    with pytest.raises(ConfigError, match="above 0.25 only"):
        count_labels(older, conf=0.1, floor=0.25)                                  # the caller knows its floor


def test_a_label_file_states_the_detector_settings_it_was_made_with(tmp_path):
    raw = tmp_path / "raw.jsonl"                     # what the labelling graph's JsonlSink writes
    raw.write_text("\n".join(json.dumps(header) for header in [
        {"seq": 1, "pts": 0.1, "result": {"boxes": [LEFT], "classes": [CAR], "scores": [0.17]}},
        {"seq": 0, "pts": 0.0, "result": {"boxes": [], "classes": [], "scores": []}},
        {"kind": "eos", "seq": 2, "meta": {"source": {"dropped": {}}}}]) + "\n")
    detector = {"weights": "", "conf": 0.1, "iou": 0.7, "imgsz": 640, "classes": "2,3,5,7"}
    assert _write_labels(raw, tmp_path / "labels.jsonl", detector) == 2
    end = json.loads((tmp_path / "labels.jsonl").read_text().splitlines()[-1])
    assert end["detector"] == detector and label_floor(tmp_path / "labels.jsonl") == 0.1
    assert count_labels(tmp_path / "labels.jsonl", conf=None).count.tolist() == [0, 1]
    assert count_labels(tmp_path / "labels.jsonl").count.tolist() == [0, 0]


def test_scoring_reads_labels_made_at_the_floor_or_at_the_counting_conf(tmp_path):
    clip = tmp_path / "cam.mp4"
    clip.write_bytes(b"frames")
    with pytest.raises(ConfigError, match="label it first"):
        labelled_clip(clip, label_dir=tmp_path)
    at_count_conf = write_scored(label_path(clip, DetectorSettings(conf=COUNT_CONF), tmp_path),
                                 [[s for s in scores if s > COUNT_CONF] for scores in SCORED], floor=None)
    assert labelled_clip(clip, label_dir=tmp_path).count.tolist() == [0, 0, 2, 1]      # older cache: serves
    assert cached_labels(clip, conf=COUNT_CONF, out_dir=tmp_path) == (at_count_conf, COUNT_CONF)
    assert cached_labels(clip, conf=0.1, out_dir=tmp_path) is None                     # 0.1 needs the floor's
    at_floor = write_scored(label_path(clip, DetectorSettings(), tmp_path), SCORED, floor=LABEL_FLOOR_CONF)
    assert cached_labels(clip, conf=COUNT_CONF, out_dir=tmp_path) == (at_floor, LABEL_FLOOR_CONF)  # first choice
    at_count_conf.unlink()
    assert labelled_clip(clip, label_dir=tmp_path).count.tolist() == [0, 0, 2, 1]      # the floor's, filtered
    assert labelled_clip(clip, label_dir=tmp_path, conf=0.5).count.tolist() == [0, 0, 1, 0]


def test_the_cache_key_follows_the_content_and_the_detector_settings(tmp_path):
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"one")
    renamed = tmp_path / "copy"
    renamed.mkdir()
    (renamed / "a.mp4").write_bytes(b"one")
    base = label_path(clip, DetectorSettings(), tmp_path)
    assert label_path(renamed / "a.mp4", DetectorSettings(), tmp_path) == base       # same bytes
    assert label_path(clip, DetectorSettings(conf=0.5), tmp_path) != base           # other detector
    clip.write_bytes(b"two")
    assert label_path(clip, DetectorSettings(), tmp_path) != base                   # other content


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_infistream_filter_label_runs_yolo_once_per_clip_and_caches_it(assets, tmp_path, monkeypatch):
    clip = asset_or_skip(assets, CLIP)
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "HF_HUB_OFFLINE": "1",
           "YOLO_CONFIG_DIR": str(ROOT / ".cache" / "ultralytics")}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "--log-level", "WARNING", "filter", "label",
                           "--source", str(clip), "--out", str(tmp_path), "--max-frames", "12", "--no-progress"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "intel_car_detection.mp4: 12 frames" in done.stdout, done.stdout
    files = list(tmp_path.glob("*.jsonl"))
    assert len(files) == 1
    lines = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert [line["seq"] for line in lines[:-1]] == list(range(12))
    assert lines[-1]["end"] and lines[-1]["frames"] == 12 and lines[-1]["labelled"] == 12
    assert lines[-1]["detector"]["conf"] == LABEL_FLOOR_CONF == label_floor(files[0])     # the floor, stated
    assert all(len(line["boxes"]) == len(line["classes"]) == len(line["scores"]) for line in lines[:-1])

    # Asked again with the same detector: read from the cache, no detector run at all.
    class NoRun:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the detector ran again for a cached clip")
    monkeypatch.setattr(labels_module, "GraphRun", NoRun)
    assert label_clip(clip, out_dir=tmp_path, max_frames=12) == files[0]
