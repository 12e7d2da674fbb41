"""The shipped filters (models/shipped/vehicle) on real clips: the agreement they were calibrated
for, on a test half they never saw, and line-crossing counts that survive the frames they answer.

YOLO's per-frame counts come from tests/data/yolo_counts.json (made by `infistream filter label`
with the shared YOLOv8n INT8; derived data, so scoring needs no YOLO run). The line counts use the
YOLO boxes that tests/stages/test_tracking.py detects once and caches.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.labels import file_sha256
from models.registry import parse_policy
from models.simulate import INFER, decode_frames, prepare_clip, replay
from stages.results import Detections
from stages.tracking import CountingLine, VehicleCounter
from tests.conftest import asset_or_skip
from tests.stages.test_tracking import CASES, clip_detections  # noqa: F401  (a fixture)

COUNTS = Path(__file__).resolve().parents[1] / "data" / "yolo_counts.json"
WARMUP = 150   # frames replayed before the scored part, as in calibration and evaluation


@pytest.fixture(scope="module")
def cascade():
    policy = parse_policy("cascade")
    with policy:
        yield policy


def yolo_counts(clip: Path) -> np.ndarray:
    entry = json.loads(COUNTS.read_text())["clips"][clip.name]
    if entry["sha256"] != file_sha256(clip):
        pytest.skip(f"{clip} differs from the clip the counts were made on")
    return np.asarray(entry["counts"], np.int32)


def run_cascade(cascade, clip: Path, counts: np.ndarray, start: int, scored_from: int):
    """Replay the cascade over frames start.. of `clip`, scoring from `scored_from`."""
    frames = decode_frames(clip, range(start, len(counts)))
    prepared = prepare_clip(clip.stem, frames, dict(enumerate(counts.tolist())), cascade.policies)
    prepared.warmup = scored_from - start
    return prepared, replay(cascade.policies, prepared, lag=2)


@pytest.mark.parametrize("name", ["street_two_lane.mp4", "highway_cctv.avi"])
def test_the_shipped_cascade_meets_its_target_on_a_test_half(assets, cascade, name):
    """Test halves where the calibrated cascade holds 95 % (docs/filters.md lists the clips where
    it does not: this test guards against a regression, it does not claim every camera)."""
    clip = asset_or_skip(assets, f"traffic/{name}")
    counts = yolo_counts(clip)
    half = len(counts) // 2
    prepared, result = run_cascade(cascade, clip, counts, max(0, half - WARMUP), half)
    assert len(result.seq) == len(counts) - half and result.unresolved == 0
    assert result.agreement(prepared.scored_truth) >= 0.95, (result.agreement(prepared.scored_truth), result.filtered)
    assert result.filtered > 0


# highway_topdown: the shipped cascade answers 79 % of the clip (its agreement over the whole clip
# is 0.88) and the tracker, seeing 21 % of the frames, counts 4 of the 5 crossings. A known failure
# of the shipped filters (issue 9 stays open on it); strict, so a fix shows up here.
LINE_CASES = [pytest.param(name, conf, marks=pytest.mark.xfail(
    strict=True, reason="with the shipped cascade the tracker counts 4 of the 5 crossings of highway_topdown"))
    if name == "highway_topdown" else (name, conf) for name, conf in CASES]


@pytest.mark.slow
@pytest.mark.parametrize("name, conf", LINE_CASES)
def test_line_crossings_with_the_cascade_equal_the_unfiltered_run(assets, cascade, clip_detections, name, conf):  # noqa: F811
    """Frames the cascade answers are gaps for the tracker; the crossings it counts from the
    inferred frames alone equal those counted from every frame."""
    truth, pts, rows = clip_detections(name)
    clip = asset_or_skip(assets, truth["media"])
    counts = np.asarray([int((r[:, 5] >= conf).sum()) for r in rows], np.int32)
    _, result = run_cascade(cascade, clip, counts, 0, 0)
    inferred = result.action == INFER
    assert 0 < inferred.sum() < len(rows)

    def crossings(observed: np.ndarray) -> int:
        counter = VehicleCounter(line=CountingLine(*truth["line"], anchor=truth["anchor"]))
        for i, (t, r) in enumerate(zip(pts, rows)):
            r = r[r[:, 5] >= conf]
            counter.update(float(t), Detections(r[:, :4], r[:, 4].astype(int), r[:, 5]) if observed[i] else None)
        return counter.crossings

    everything = crossings(np.ones(len(rows), bool))
    assert crossings(inferred) == everything, f"{name}: {inferred.mean():.0%} of frames inferred"
