"""Baselines framediff (Reducto's features) and motion (MOG2 gate): features, the reference and
horizon rules, options, per-stream bounds. Synthetic frames: a grey road with a bright "car"."""

from __future__ import annotations

import numpy as np
import pytest

from models import base
from models.baselines import framediff as framediff_module
from models.baselines import motion as motion_module
from models.baselines.framediff import FEATURES, FrameDiff
from models.baselines.motion import RULES, MotionGate
from pipeline.errors import ConfigError
from pipeline.message import Message

RNG = np.random.default_rng(9)
ROAD = (RNG.integers(90, 110, (120, 160, 3))).astype(np.uint8)   # textured, still background


def scene(car_x: int | None, width: int = 24) -> np.ndarray:
    """The road with a bright car whose left edge is at `car_x` (None: no car)."""
    frame = ROAD.copy()
    if car_x is not None:
        frame[50:74, car_x:car_x + width] = 230
        frame[58:66, car_x + 4:car_x + width - 4] = 20      # a windscreen: edges inside the car
    return frame


def video(seq: int, frame: np.ndarray, stream: str = "cam") -> Message:
    return Message("video", stream, seq, arrays=(frame,))


def actions(policy, frames, stream: str = "cam", start: int = 0) -> list[str]:
    got = []
    for seq, frame in enumerate(frames, start):
        decision = policy.decide(video(seq, frame, stream))
        got.append("pass" if decision is None else f"{decision.action}:{decision.ref_seq}")
    return got


@pytest.mark.parametrize("feature", FEATURES)
def test_features_are_zero_on_identical_frames_and_grow_with_change(feature):
    policy = FrameDiff(feature=feature)
    reference = policy.prepare(scene(20))
    values = [policy.change(policy.prepare(scene(x)), reference) for x in (20, 21, 30, 80)]
    assert values[0] == 0.0
    assert 0 < values[1] < values[2] <= 1
    assert values[1] < values[3] <= 1      # (area: the largest region; far apart, two car-sized ones)


@pytest.mark.parametrize("feature", FEATURES)
def test_threshold_zero_never_reuses_and_a_huge_one_reuses_all_after_the_first(feature):
    frames = [scene(x) for x in (20, 20, 30, 60, None)]
    assert actions(FrameDiff(feature=feature, threshold=0.0), frames) == ["pass"] * 5
    assert actions(FrameDiff(feature=feature, threshold=2.0), frames) == ["pass"] + ["reuse:0"] * 4


def test_the_reference_is_the_last_frame_let_through():
    policy = FrameDiff(feature="pixel", threshold=0.01)
    frames = [scene(20), scene(20), scene(80), scene(80), scene(80), scene(20)]
    assert actions(policy, frames) == ["pass", "reuse:0", "pass", "reuse:2", "reuse:2", "pass"]


def test_small_changes_do_not_add_up_against_a_fixed_reference():
    # Each step moves the car by 1 px: below threshold against its neighbour, but the reference
    # stays the frame let through, so the drift is caught once it adds up.
    policy = FrameDiff(feature="pixel", threshold=0.01)
    got = actions(policy, [scene(20 + step) for step in range(12)])
    assert got[1] == "reuse:0" and "pass" in got[2:]


def test_a_reference_further_back_than_the_horizon_is_never_reused(monkeypatch):
    monkeypatch.setattr(framediff_module, "REUSE_HORIZON", 5)
    policy = FrameDiff(threshold=1.0)
    frame = policy.prepare(scene(20))
    got = [policy.decide_prepared("cam", seq, frame) for seq in (0, 5, 6, 7)]
    assert got[0] is None and got[1].ref_seq == 0          # 5 back: allowed
    assert got[2] is None                                  # 6 back: let through, new reference
    assert got[3].ref_seq == 6
    assert base.REUSE_HORIZON == 2048                       # the patch stayed local


def test_an_unanswered_reference_is_dropped_and_others_are_kept():
    policy = FrameDiff(threshold=1.0)
    frame = policy.prepare(scene(20))
    assert policy.decide_prepared("cam", 0, frame) is None
    policy.feedback("cam", 0, {"decision": "infer", "count": 1})
    assert policy.decide_prepared("cam", 1, frame).ref_seq == 0
    policy.feedback("cam", 0, {"decision": "unanswered"})
    assert policy.decide_prepared("cam", 2, frame) is None   # the model runs again
    assert policy.decide_prepared("cam", 3, frame).ref_seq == 2


def test_framediff_state_is_one_reference_per_open_stream(monkeypatch):
    monkeypatch.setattr(framediff_module, "MAX_STREAMS", 3)
    policy = FrameDiff(threshold=1.0)
    frame = policy.prepare(scene(20))
    for name in ("a", "b", "c", "d"):
        for seq in range(3):
            policy.decide_prepared(name, seq, frame)
    assert list(policy._references) == ["b", "c", "d"] and policy.forgotten_streams == 1
    assert policy.decide_prepared("a", 3, frame) is None       # forgotten: back to the model
    policy.end_stream("c")
    assert "c" not in policy._references
    assert policy.decide_prepared("c", 3, frame) is None


def test_streams_are_kept_apart():
    policy = FrameDiff(threshold=0.01)
    assert actions(policy, [scene(20), scene(20)], "a") == ["pass", "reuse:0"]
    assert actions(policy, [scene(80), scene(80)], "b", start=5) == ["pass", "reuse:5"]
    assert actions(policy, [scene(20)], "a", start=2) == ["reuse:0"]


def test_prepare_is_small_grey_and_non_video_gets_no_opinion():
    policy = FrameDiff(feature="edge", size=32)
    prepared = policy.prepare(scene(20))
    assert prepared.shape == (32, 32) and prepared.dtype == np.uint8
    assert policy.decide(Message("audio", "mic", 0, arrays=(np.zeros(16, np.float32),))) is None


@pytest.mark.parametrize("cls", [FrameDiff, MotionGate])
def test_threshold_grid_increases_from_zero(cls):
    grid = cls().threshold_grid()
    assert grid[0] == 0.0 and (np.diff(grid) > 0).all()


@pytest.mark.parametrize("spec, expected", [
    ("", {"feature": framediff_module.DEFAULT_FEATURE, "size": framediff_module.DEFAULT_SIZE}),
    ("feature=edge,threshold=0.03,size=64", {"feature": "edge", "threshold": 0.03, "size": 64}),
    (" feature = area ", {"feature": "area"}),
])
def test_framediff_options(spec, expected):
    policy = FrameDiff.from_spec(spec)
    assert {key: getattr(policy, key) for key in expected} == expected
    again = FrameDiff.from_spec(policy.name.partition(":")[2])     # the name is a spec that builds it again
    assert (again.feature, again.threshold, again.size) == (policy.feature, policy.threshold, policy.size)


def test_names_say_only_what_differs_from_the_defaults():
    assert FrameDiff().name == "framediff" and MotionGate().name == "motion"
    assert FrameDiff(feature="pixel", threshold=0.02).name == "framediff:feature=pixel,threshold=0.02"


def test_motion_name_is_a_spec_that_builds_it_again():
    policy = MotionGate.from_spec("rule=mask,threshold=0.02,size=48,history=100")
    again = MotionGate.from_spec(policy.name.partition(":")[2])
    assert (again.rule, again.threshold, again.size, again.history) == ("mask", 0.02, 48, 100)


@pytest.mark.parametrize("cls, spec, message", [
    (FrameDiff, "feature=corner", "feature=corner: expected one of pixel, edge, area"),
    (FrameDiff, "threshold=-1", "expected a number >= 0"),
    (FrameDiff, "threshold=nan", "expected a number >= 0"),
    (FrameDiff, "threshold=x", "bad threshold=x"),
    (FrameDiff, "size=8", "from 16 to 512"),
    (FrameDiff, "size=9.5", "bad size"),
    (FrameDiff, "colour=red", "no option 'colour'; expected some of: feature, threshold, size"),
    (FrameDiff, "threshold", "needs a value"),
    (FrameDiff, "threshold=0.1,threshold=0.2", "given twice"),
    (FrameDiff, "threshold=0.1,,size=64", "empty option"),
    (MotionGate, "rule=fast", "expected one of sum, mask, delta, now"),
    (MotionGate, "history=0", "from 1 to 100000"),
    (MotionGate, "feature=pixel", "no option 'feature'"),
])
def test_bad_options_are_refused_clearly(cls, spec, message):
    with pytest.raises(ConfigError, match=message):
        cls.from_spec(spec)


def still_then_moving(still: int = 30, moving: int = 10) -> list[np.ndarray]:
    return [scene(None)] * still + [scene(10 + 8 * step) for step in range(moving)]


@pytest.mark.parametrize("rule", RULES)
def test_motion_gate_reuses_while_still_and_lets_motion_through(rule):
    policy = MotionGate(rule=rule, threshold=0.01)
    got = actions(policy, still_then_moving())
    assert got[0] == "pass" and set(got[1:30]) == {"reuse:0"}     # nothing moves: the first answer holds
    assert "pass" in got[30:]                                      # a car drives in: the model runs


@pytest.mark.parametrize("rule", RULES)
def test_motion_threshold_zero_never_reuses_and_a_huge_one_always(rule):
    frames = still_then_moving(5, 5)
    assert actions(MotionGate(rule=rule, threshold=0.0), frames) == ["pass"] * 10
    assert actions(MotionGate(rule=rule, threshold=1e9), frames) == ["pass"] + ["reuse:0"] * 9


def test_motion_respects_the_horizon_and_bounds_its_streams(monkeypatch):
    monkeypatch.setattr(motion_module, "REUSE_HORIZON", 3)
    monkeypatch.setattr(motion_module, "MAX_STREAMS", 2)
    policy = MotionGate(threshold=1e9)
    assert actions(policy, [scene(None)] * 6) == ["pass", "reuse:0", "reuse:0", "reuse:0", "pass", "reuse:4"]
    actions(policy, [scene(None)], "b")
    actions(policy, [scene(None)], "c")
    assert list(policy._streams) == ["b", "c"] and policy.forgotten_streams == 1
    policy.end_stream("b")
    assert list(policy._streams) == ["c"]
    policy.feedback("c", 0, {"decision": "unanswered"})
    assert actions(policy, [scene(None)], "c", start=1) == ["pass"]
