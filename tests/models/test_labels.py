"""Labels for free: YOLO once per clip (real worker, real media), cached; redundancy rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import labels as labels_module
from models.labels import DetectorSettings, count_labels, label_clip, label_path
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
    assert all(len(line["boxes"]) == len(line["classes"]) == len(line["scores"]) for line in lines[:-1])

    # Asked again with the same detector: read from the cache, no detector run at all.
    class NoRun:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the detector ran again for a cached clip")
    monkeypatch.setattr(labels_module, "GraphRun", NoRun)
    assert label_clip(clip, out_dir=tmp_path, max_frames=12) == files[0]
