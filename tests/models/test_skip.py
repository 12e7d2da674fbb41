"""InFi-Skip at run time: a tiny filter directory, real decoded frames, LiteRT only."""

from __future__ import annotations

import numpy as np
import pytest

from models.frames import reduce_frame
from models.lite import LiteModel
from models.skip import SkipPolicy
from pipeline.errors import ConfigError
from pipeline.message import Message
from stages.filter import Filter
from tests.conftest import asset_or_skip
from tests.models.fixtures import make_filter_dir, read_frames, write_calibration

CLIP = "traffic/intel_car_detection.mp4"


@pytest.fixture(scope="module")
def frames(assets):
    return read_frames(asset_or_skip(assets, CLIP), 3)


def video(seq, frame, stream="cam"):
    return Message("video", stream, seq, arrays=(frame,))


def test_skip_runs_the_network_on_the_reduced_frame_and_skips_below_its_threshold(tmp_path, frames):
    directory = make_filter_dir(tmp_path, "skip", size=32, threshold=0.5)
    policy = SkipPolicy.from_directory(directory)
    assert policy.threshold == 0.5 and policy.model._interpreter is None     # built: nothing loaded
    with policy, LiteModel(directory / "model.tflite", 32, 1) as model:
        p = policy.prepare(frames[0])
        assert p.shape == (1,) and 0 < p[0] < 1
        assert p[0] == model.run(reduce_frame(frames[0], 32))[0]             # the same pixels, the same answer
        assert policy.prepare(frames[0])[0] == p[0]                          # deterministic
        policy.threshold = float(p[0]) + 1e-6
        decision = policy.decide(video(0, frames[0]))
        assert (decision.action, decision.policy) == ("skip", str(directory))
        policy.threshold = float(p[0])                                       # p < threshold is strict
        assert policy.decide(video(1, frames[0])) is None
        assert policy.decide(Message("audio", "cam", 2, arrays=(np.zeros(10, np.float32),))) is None
    assert policy.model._interpreter is None


def test_the_threshold_comes_from_the_calibration_or_is_given(tmp_path):
    directory = make_filter_dir(tmp_path, "skip", threshold=0.2)
    write_calibration(directory, {0.95: 0.2, 0.9: 0.35})
    assert SkipPolicy.from_directory(directory).threshold == 0.2
    assert SkipPolicy.from_directory(directory, "target=0.9").threshold == 0.35
    assert SkipPolicy.from_directory(directory, "threshold=0.05").threshold == 0.05
    with pytest.raises(ConfigError, match="no threshold for target 0.8"):
        SkipPolicy.from_directory(directory, "target=0.8")
    with pytest.raises(ConfigError, match="not both"):
        SkipPolicy.from_directory(directory, "target=0.9,threshold=0.1")
    uncalibrated = make_filter_dir(tmp_path, "skip", threshold=None, name="raw")
    with pytest.raises(ConfigError, match="not calibrated"):
        SkipPolicy.from_directory(uncalibrated)
    assert SkipPolicy.from_directory(uncalibrated, "threshold=0.3").threshold == 0.3
    grid = SkipPolicy.from_directory(directory).threshold_grid()
    assert grid[0] == 0 and grid[-1] == 1 and np.all(np.diff(grid) > 0) and (grid < 0.01).sum() >= 20


def test_the_filter_stage_runs_a_skip_directory_and_drops_skipped_pixels(tmp_path, frames):
    directory = make_filter_dir(tmp_path, "skip", size=32, threshold=1.0)    # skips everything
    stage = Filter(f"{directory}:threshold=1")
    stage.setup()
    try:
        out = stage.process(video(0, frames[1]))
        assert out.decision["action"] == "skip" and out.arrays == ()
    finally:
        stage.teardown()
