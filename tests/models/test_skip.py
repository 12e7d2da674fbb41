"""InFi-Skip at run time: a tiny filter directory, real decoded frames, LiteRT only."""

from __future__ import annotations

import numpy as np
import pytest

from models.frames import reduce_frame
from models.lite import LiteModel
from models.skip import SkipPolicy, conf_floor_problem
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


# --------------------------------------------------------------------------------------------
# The conf floor: "the model is needed" = a vehicle above the labels' floor, not the counting conf

def test_skip_learns_needed_at_its_conf_and_its_metadata_records_the_floor(tmp_path):
    """needed_conf=0.1: frames with a vehicle scoring 0.1-0.25 (none at the counting conf 0.25)
    are 'needed' for Skip, and the filter directory says from which detector conf its skips hold."""
    pytest.importorskip("tensorflow")
    import dataclasses
    import json
    from models.train import TrainOptions, conf_floor, train_skip
    from tests.models.test_train import TINY, synthetic_clip

    clips = []
    for seed, name in enumerate("ab"):
        clip = synthetic_clip(name, seed=seed)
        faint = (clip.count == 0) & (np.arange(len(clip.count)) % 2 == 0)   # a car YOLO scores 0.17
        top = np.where(clip.count > 0, 0.8, np.where(faint, 0.17, 0.0)).astype(np.float32)
        clips.append(dataclasses.replace(clip, top_score=top, floor_conf=0.1))
    assert clips[0].needed(0.25).tolist() == (clips[0].count > 0).tolist()
    assert clips[0].needed(0.1).sum() > clips[0].needed(0.25).sum()
    with pytest.raises(ConfigError, match="above 0.1 only"):
        clips[0].needed(0.05)                                                   # below the labels' floor
    assert conf_floor(clips, 0.1) == 0.1 and conf_floor(clips, 0.25) == 0.25
    assert conf_floor([synthetic_clip("c")], 0.25) is None                      # floor unknown: not claimed
    train_skip([], options=TrainOptions(**TINY, needed_conf=0.1), out=tmp_path / "skip", progress=False, say=None,
               data=clips)
    meta = json.loads((tmp_path / "skip" / "metadata.json").read_text())
    assert meta["detector_conf_floor"] == 0.1 and meta["training"]["options"]["needed_conf"] == 0.1
    val = np.concatenate([clip.needed(0.1)[clip.part("val")] for clip in clips])
    assert meta["training"]["validation"]["nonempty"] == pytest.approx(val.mean())    # scored on those labels
    assert val.mean() > np.concatenate([clip.count[clip.part("val")] > 0 for clip in clips]).mean()
    assert SkipPolicy.from_directory(tmp_path / "skip", "threshold=0.5").conf_floor == 0.1


def test_a_detector_conf_below_the_skip_floor_is_named_before_a_run(tmp_path):
    import json
    from models.registry import parse_policy
    directory = make_filter_dir(tmp_path, "skip", threshold=0.5)
    assert SkipPolicy.from_directory(directory).conf_floor is None                  # not stated: not judged
    assert conf_floor_problem(SkipPolicy.from_directory(directory), 0.01) is None
    metadata = json.loads((directory / "metadata.json").read_text())
    (directory / "metadata.json").write_text(json.dumps({**metadata, "detector_conf_floor": 0.1}))
    skip = SkipPolicy.from_directory(directory)
    assert conf_floor_problem(skip, 0.1) is None and conf_floor_problem(skip, 0.25) is None
    problem = conf_floor_problem(skip, 0.05)
    assert "conf 0.05" in problem and "scoring above 0.1" in problem
    reuse = make_filter_dir(tmp_path, "reuse", threshold=0.5)
    cascade = parse_policy(f"{reuse}+{directory}")                                   # found inside a cascade
    assert conf_floor_problem(cascade, 0.05) == problem
    assert conf_floor_problem(parse_policy("stride:2"), 0.01) is None
    assert conf_floor_problem(SkipPolicy.from_directory(directory, "threshold=0"), 0.05) is None   # never skips


# --------------------------------------------------------------------------------------------
# Skip checks itself: probes after a run of skips, distrust after misses, trust restored by checks

EMPTY, BUSY = np.array([0.0], np.float32), np.array([0.99], np.float32)   # P(model needed)


def infer(count):
    return {"decision": "infer", "count": count}


@pytest.fixture
def skip_dir(tmp_path):
    return make_filter_dir(tmp_path, "skip", threshold=0.5)


def actions(policy, seqs, features=EMPTY, stream="cam"):
    out = []
    for seq in seqs:
        decision = policy.decide_prepared(stream, seq, features)
        out.append(decision.action if decision is not None else None)
    return out


def test_skip_sends_a_would_skip_frame_to_the_model_after_max_run_skips(skip_dir):
    policy = SkipPolicy.from_directory(skip_dir, "max_run=3")
    assert actions(policy, range(9)) == ["skip"] * 3 + ["infer"] + ["skip"] * 3 + ["infer", "skip"]
    assert policy.decide_prepared("cam", 9, EMPTY).policy == str(skip_dir)           # the probe is Skip's
    # A frame Skip lets through does not restart the count: skips in short runs between busy
    # frames (a busy camera Skip is wrong on) are probed as often as skips in a row.
    assert actions(policy, [12], BUSY) == [None]
    assert actions(policy, range(13, 17)) == ["skip", "infer", "skip", "skip"]
    assert (policy.stats.probes, actions(policy, range(17, 20), EMPTY, "other")) == (3, ["skip"] * 3)
    never = SkipPolicy.from_directory(skip_dir, "max_run=0")
    assert set(actions(never, range(500))) == {"skip"} and never.stats.probes == 0


def test_probes_come_every_check_spacing_skips_until_a_stream_has_a_window_of_checks(skip_dir):
    policy = SkipPolicy.from_directory(skip_dir, "max_run=100,window=2")
    spacing = SkipPolicy.CHECK_SPACING
    seen = actions(policy, range(spacing + 1))
    assert seen[-1] == "infer" and seen.count("infer") == 1                          # young stream: often
    for seq in (spacing, 3 * spacing):                                               # two checks, spaced
        policy._streams["cam"].unchecked.append(seq)
        policy.feedback("cam", seq, infer(0))
    seen = actions(policy, range(4 * spacing, 4 * spacing + 101))
    assert seen.count("infer") == 1 and seen[-1] == "infer"                          # then every max_run


def test_a_vehicle_found_in_a_frame_skip_would_skip_makes_it_stop_skipping_that_stream(skip_dir):
    policy = SkipPolicy.from_directory(skip_dir, "max_run=3,window=2,max_misses=0")
    assert actions(policy, range(4)) == ["skip"] * 3 + ["infer"]
    policy.feedback("cam", 3, infer(2))                                  # the probe had two cars
    assert actions(policy, range(4, 60)) == [None] * 56                  # distrusted: let through
    assert actions(policy, [40], EMPTY, "other") == ["skip"]             # only on that stream
    assert policy.stats.misses == 1 and policy.stats.held_back == 56
    spacing = SkipPolicy.CHECK_SPACING
    policy.feedback("cam", 5, infer(0))                                  # too close to the miss: one picture
    assert actions(policy, [60]) == [None]
    policy.feedback("cam", 3 + spacing, infer(0))                        # a clean check, spaced
    assert actions(policy, [61]) == [None]                               # the miss is still in the window
    policy.feedback("cam", 3 + 2 * spacing, infer(0))                    # the window (2) is clean again
    assert actions(policy, [62]) == ["skip"]
    assert policy.stats.checked == 4 and policy.stats.misses == 1


def test_skip_learns_only_from_model_answers_to_frames_it_would_have_skipped(skip_dir):
    policy = SkipPolicy.from_directory(skip_dir, "max_run=5,window=4,max_misses=0")
    actions(policy, range(3))                                             # seqs 0-2: would-skip
    actions(policy, [3], BUSY)                                            # seq 3: Skip had no doubt
    policy.feedback("cam", 3, infer(5))                                   # not a check of Skip
    policy.feedback("cam", 1, {"decision": "skip", "count": 0})           # its own answer: not a check
    policy.feedback("cam", 1, {"decision": "reuse", "count": 4, "ref_seq": 0})
    policy.feedback("cam", 1, infer(True))                                # not a count
    policy.feedback("cam", 1, {"decision": "infer"})
    policy.feedback("nobody", 1, infer(3))                                # a stream it never saw
    assert policy.stats.checked == 0 and actions(policy, [4]) == ["skip"]
    policy.feedback("cam", 2, {"decision": "infer", "count": 1, "audit": {"filter": "skip"}})  # an audited skip
    assert policy.stats.misses == 1 and actions(policy, [5]) == [None]
    policy.end_stream("cam")                                              # forgotten with the stream
    assert actions(policy, [0]) == ["skip"]


def test_skip_state_is_bounded_per_stream_and_in_streams(skip_dir, monkeypatch):
    monkeypatch.setattr(SkipPolicy, "MAX_STREAMS", 3)
    policy = SkipPolicy.from_directory(skip_dir, "max_run=0")
    for stream in "abcde":
        actions(policy, range(200), EMPTY, stream)
    assert list(policy._streams) == ["c", "d", "e"] and policy.stats.streams_dropped == 2
    assert all(len(watch.unchecked) == SkipPolicy.MAX_UNCHECKED for watch in policy._streams.values())
    policy.feedback("e", 10, infer(3))                                    # fell out of the table: ignored
    assert policy.stats.checked == 0


def test_skip_self_check_options_are_validated(skip_dir):
    policy = SkipPolicy.from_directory(skip_dir, "max_run=10,window=5,max_misses=2")
    assert (policy.max_run, policy.window, policy.max_misses) == (10, 5, 2)
    assert SkipPolicy.from_directory(skip_dir).settings == {"max_run": 50, "window": 20, "max_misses": 1}
    with pytest.raises(ConfigError, match="window"):
        SkipPolicy.from_directory(skip_dir, "window=0")
    with pytest.raises(ConfigError, match="max_run"):
        SkipPolicy.from_directory(skip_dir, "max_run=-1")
    with pytest.raises(ConfigError, match="backoff"):
        SkipPolicy.from_directory(skip_dir, "backoff=3")


def test_in_fog_the_shipped_skip_finds_out_it_is_wrong_and_stops_skipping(assets):
    """On italy_a14_cctv_fog the shipped Skip calls every frame empty (docs/filters.md); YOLO
    finds vehicles in most. Without its self-check it skips nearly the whole test half."""
    from models.filterdir import cascade_thresholds, open_filter_dir, shipped_dir
    from models.simulate import decode_frames, prepare_clip, replay
    from tests.models.test_shipped import WARMUP, yolo_counts
    clip = asset_or_skip(assets, "traffic/italy_a14_cctv_fog.mp4")
    counts = yolo_counts(clip)
    half = len(counts) // 2
    policy = SkipPolicy(open_filter_dir(shipped_dir("skip"), "skip"), cascade_thresholds(0.95)[0])
    with policy:
        start = max(0, half - WARMUP)
        prepared = prepare_clip(clip.stem, decode_frames(clip, range(start, len(counts))),
                                dict(enumerate(counts.tolist())), [policy])
        prepared.warmup = half - start
        policy.max_run = 0                               # never probes: nothing ever checks it
        blind = replay([policy], prepared).agreement(prepared.scored_truth)
        assert policy.stats.checked == 0
        policy.max_run = 50
        checked = replay([policy], prepared).agreement(prepared.scored_truth)
    assert policy.stats.misses > 0 and policy.stats.held_back > 0
    assert blind < 0.6 and checked > blind + 0.15, (blind, checked)


def test_the_filter_stage_logs_what_skip_checked_when_it_ends(tmp_path, frames, caplog):
    directory = make_filter_dir(tmp_path, "skip", size=32, threshold=1.0)    # would skip everything
    stage = Filter(f"{directory}:threshold=1,max_run=2")
    stage.setup()
    try:
        decisions = [stage.process(video(seq, frames[1])).decision["action"] for seq in range(3)]
    finally:
        with caplog.at_level("INFO", logger="stages.filter"):
            stage.teardown()
    assert decisions == ["skip", "skip", "infer"]
    assert "'skipped': 2, 'probes': 1" in caplog.text


def test_skips_in_short_runs_between_busy_frames_are_probed_and_found_out(skip_dir):
    """A busy camera Skip calls empty now and then (every other frame here): its skips never
    come 3 in a row, yet they are probed, and the vehicles the probes find stop the skipping."""
    policy = SkipPolicy.from_directory(skip_dir, "max_run=3,window=4,max_misses=0")
    seen = []
    for seq in range(200):
        decision = policy.decide_prepared("cam", seq, EMPTY if seq % 2 else BUSY)
        seen.append(None if decision is None else decision.action)
        if decision is None or decision.action == "infer":
            policy.feedback("cam", seq, infer(4))                       # YOLO sees four vehicles every time
    assert policy.stats.probes >= 1 and policy.stats.misses >= 1
    assert seen[100:].count("skip") == 0                                 # distrusted for good


def test_after_a_miss_skip_probes_again_soon_and_a_second_miss_stops_it_at_once(skip_dir, monkeypatch):
    """Fog: Skip calls frames with vehicles empty. One miss alone is within the budget (1 of 20
    checks), so Skip goes on; but it probes again after CONFIRM_AFTER skips instead of after a
    whole spacing, and that check counts although it is close to the last: a vehicle still there
    and still called empty stops the skipping after a handful of wrong skips, not another 25."""
    confirm = SkipPolicy.CONFIRM_AFTER
    assert 0 < confirm < SkipPolicy.CHECK_SPACING

    def wrong_skips_before_distrust(policy):
        wrong = 0
        for seq in range(300):
            decision = policy.decide_prepared("cam", seq, EMPTY)
            if decision is None:
                return wrong
            if decision.action == "skip":
                wrong += 1
            else:
                policy.feedback("cam", seq, infer(2))                      # every frame holds two cars
        raise AssertionError("never distrusted")

    soon = wrong_skips_before_distrust(SkipPolicy.from_directory(skip_dir, "max_run=50"))
    monkeypatch.setattr(SkipPolicy, "CONFIRM_AFTER", 0)
    late = wrong_skips_before_distrust(SkipPolicy.from_directory(skip_dir, "max_run=50"))
    assert soon == SkipPolicy.CHECK_SPACING + confirm
    assert late == 2 * SkipPolicy.CHECK_SPACING


def test_a_clean_check_right_after_a_miss_does_not_count_but_a_second_miss_does(skip_dir):
    policy = SkipPolicy.from_directory(skip_dir, "max_run=50,window=20,max_misses=1")
    actions(policy, range(10))
    policy.feedback("cam", 2, infer(1))                                   # a miss
    policy.feedback("cam", 4, infer(0))                                   # the car left: too close to count
    assert list(policy._streams["cam"].checks) == [True]
    policy.feedback("cam", 6, infer(0))
    policy.feedback("cam", 8, infer(3))                                   # still there: confirms the miss
    assert list(policy._streams["cam"].checks) == [True, True]
    assert actions(policy, [10]) == [None]                                # 2 misses > max_misses: distrusted
