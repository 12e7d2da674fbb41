"""The line guard (models/line_guard.py): what counts as motion at the line, the hold after it,
its options and errors, its place in a cascade, and vehicle_count.py putting it in front of the
filter when counting crossings. Synthetic frames: a textured road with a bright "car"; the real
clips' line counts are in tests/models/test_shipped.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from models import line_guard as line_guard_module
from models.baselines.framediff import pixel_change
from models.line_guard import LineGuard, parse_line
from models.registry import parse_policy
from pipeline.errors import ConfigError
from pipeline.message import Message

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(3)
ROAD = RNG.integers(90, 110, (120, 200, 3)).astype(np.uint8)   # textured, still background
LINE = (100, 10, 100, 110)                                       # vertical, mid-frame


def scene(car_x: int | None, width: int = 20) -> np.ndarray:
    frame = ROAD.copy()
    if car_x is not None:
        frame[50:70, max(0, car_x):max(0, car_x + width)] = 230
    return frame


def decisions(guard: LineGuard, frames, stream: str = "cam") -> list[str]:
    got = []
    for seq, frame in enumerate(frames):
        decision = guard.decide(Message("video", stream, seq, arrays=(frame,)))
        got.append("pass" if decision is None else decision.action)
    return got


def test_a_still_scene_passes_and_a_car_moving_across_the_line_is_sent_to_the_model():
    guard = LineGuard(LINE, band=10, threshold=0.01, hold=0)
    # Still road, a car driving from the far left across the line and out to the far right, still road.
    xs = [None, None, 0, 10, 60, 70, 80, 90, 100, 110, 120, 170, 178, 178, None]
    got = decisions(guard, [scene(x) for x in xs])
    # The band is x 90-110. The car (20 px) reaches it at x=80 and its tail leaves it at x=110;
    # at x=120 the pixels that changed (110-119) are all outside the band.
    assert got[:6] == ["pass"] * 6
    assert got[6:10] == ["infer"] * 4
    assert got[10:] == ["pass"] * 5                         # the last: it vanished far from the line


def test_motion_far_from_the_line_and_a_car_standing_on_it_pass():
    guard = LineGuard(LINE, band=10, threshold=0.01, hold=0)
    assert decisions(guard, [scene(x) for x in (0, 20, 40, 60, 20)]) == ["pass"] * 5
    guard = LineGuard(LINE, band=10, threshold=0.01, hold=0)
    assert decisions(guard, [scene(95)] * 6) == ["pass"] * 6       # queued on the line: no motion


def test_the_hold_keeps_sending_frames_after_the_motion_ends():
    frames = [scene(x) for x in (None, 95, 100, 100, 100, 100, 100, 100)]
    assert decisions(LineGuard(LINE, band=10, hold=0), frames) == ["pass", "infer", "infer"] + ["pass"] * 5
    assert decisions(LineGuard(LINE, band=10, hold=3), frames) == ["pass"] + ["infer"] * 5 + ["pass"] * 2


def test_the_threshold_is_the_share_of_the_band_that_moved():
    guard = LineGuard(LINE, band=10, hold=0)
    band, moved = guard.prepare(scene(None)), guard.prepare(scene(100))
    share = pixel_change(moved, band)
    assert 0 < share < 1
    assert decisions(LineGuard(LINE, band=10, threshold=share * 0.99, hold=0), [scene(None), scene(100)])[1] == "infer"
    assert decisions(LineGuard(LINE, band=10, threshold=share, hold=0), [scene(None), scene(100)])[1] == "pass"


def test_streams_are_separate_and_bounded(monkeypatch):
    monkeypatch.setattr(line_guard_module, "MAX_STREAMS", 3)
    guard = LineGuard(LINE, band=10, hold=0)
    for stream in "abcd":
        assert decisions(guard, [scene(None)], stream) == ["pass"]
    assert len(guard._previous) == 3 and "a" not in guard._previous
    # b's previous band is the still road: a car at the line now is motion for b, not for a new c.
    assert guard.decide(Message("video", "b", 1, arrays=(scene(100),))).action == "infer"
    guard.end_stream("b")
    assert "b" not in guard._previous


def test_a_band_outside_the_frame_sends_nothing_and_a_large_frame_keeps_the_band_thick():
    guard = LineGuard((500, 500, 600, 600), band=10, hold=0)
    assert decisions(guard, [scene(None), scene(100)]) == ["pass", "pass"]
    wide = LineGuard((0, 540, 1919, 540), band=24)
    crop, small, mask = wide._band_geometry((1080, 1920))
    assert max(small) >= 128 and mask.any()
    assert mask[:, small[0] // 2].sum() >= line_guard_module.MIN_BAND_PIXELS     # the band, across


@pytest.mark.parametrize("spec, message", [
    ("line", "needs its geometry"),
    ("line:1,2,3", "x1,y1,x2,y2"),
    ("line:1,2,1,2", "two distinct points"),
    ("line:1,2,x,4", "x1,y1,x2,y2"),
    ("line:band=3", "needs its geometry"),
    ("line:1,2,3,4,band=0", "band must be"),
    ("line:1,2,3,4,threshold=2", "threshold must be"),
    ("line:1,2,3,4,speed=3", "unknown option 'speed'"),
])
def test_a_bad_line_or_option_is_refused_with_what_was_expected(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_policy(spec)


def test_the_name_builds_the_same_guard_and_a_cascade_in_a_cascade_is_flattened():
    guard = parse_policy("line:420,30,420,300,band=40,hold=2")
    assert guard.name == "line:420,30,420,300,band=40,hold=2"
    assert parse_policy(guard.name).name == guard.name
    assert parse_line("0,0,10.5,3") == (0.0, 0.0, 10.5, 3.0)
    chained = parse_policy("line:420,30,420,300+cascade")
    assert [type(p).__name__ for p in chained.policies] == ["LineGuard", "SkipPolicy", "ReusePolicy"]
    assert chained.name == "line:420,30,420,300+skip+reuse"


def test_vehicle_count_puts_the_guard_in_front_when_counting_a_line():
    sys.path.insert(0, str(ROOT / "apps"))
    from vehicle_count import guarded_filter
    assert guarded_filter("cascade", "10,20,30,40") == "line:10,20,30,40+cascade"
    assert guarded_filter("skip+reuse", "10,20,30,40") == "line:10,20,30,40+skip+reuse"
    assert guarded_filter("cascade", "") == "cascade"
    assert guarded_filter("none", "10,20,30,40") == "none"
    assert guarded_filter("line:1,2,3,4+reuse", "10,20,30,40") == "line:1,2,3,4+reuse"
