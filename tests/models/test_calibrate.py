"""Calibration: the picked threshold meets its target on validation frames and filters the most."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.base import Decision, FramePolicy
from models.calibrate import calibrate_cascade, calibrate_directory, calibrate_policy, choose, score_grid
from models.simulate import PreparedClip, replay
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


class ScoreSkipper(FramePolicy):
    """Skips when its feature (a made-up P(model needed)) is below the threshold."""

    name = "skip"

    def prepare(self, frame):
        return frame

    def decide_prepared(self, stream, seq, features):
        return Decision("skip") if features[0] < self.threshold else None


class ScoreReuser(FramePolicy):
    """Reuses the last inferred frame (heard through feedback) when its feature (a made-up
    p_differ) is below the threshold."""

    name = "reuse"

    def __init__(self):
        self.last: int | None = None

    def prepare(self, frame):
        return frame

    def decide_prepared(self, stream, seq, features):
        if self.last is not None and features[0] < self.threshold:
            return Decision("reuse", ref_seq=self.last)
        return None

    def feedback(self, stream, seq, result):
        if result["decision"] == "infer":
            self.last = seq

    def end_stream(self, stream):
        self.last = None


def toy_clips(seed: int = 0, clips: int = 3, frames: int = 200) -> list[PreparedClip]:
    """Clips whose counts change now and then; skip's score is high where the count is not 0,
    reuse's where the count just changed, both with noise."""
    rng = np.random.default_rng(seed)
    made = []
    for index in range(clips):
        truth = np.cumsum(rng.random(frames) < 0.08) % 3
        changed = np.r_[True, truth[1:] != truth[:-1]]
        p_needed = np.clip((truth > 0) * 0.7 + rng.normal(0.15, 0.12, frames), 0, 1)
        p_differ = np.clip(changed * 0.6 + rng.normal(0.2, 0.15, frames), 0, 1)
        made.append(PreparedClip(f"toy{index}", np.arange(frames), truth.astype(np.int32),
                                 {"skip": [np.array([v]) for v in p_needed],
                                  "reuse": [np.array([v]) for v in p_differ]}))
    return made


def pooled(policies, clips, thresholds):
    runs = [replay(policies, clip, thresholds) for clip in clips]
    frames = sum(len(c) for c in clips)
    agreed = sum(int(np.sum(r.answer == c.truth)) for r, c in zip(runs, clips))
    return agreed / frames, sum(int(np.sum(r.action != 0)) for r in runs) / frames


@pytest.mark.parametrize("target", [0.9, 0.95, 0.98])
def test_the_picked_threshold_meets_the_target_and_no_threshold_meeting_it_filters_more(target):
    policy, clips = ScoreSkipper(), toy_clips()
    document = calibrate_policy(policy, clips, targets=[target], thresholds=21)
    entry = document["targets"][f"{target:g}"]
    agreement, filtered = pooled([policy], clips, (entry["threshold"],))
    assert agreement >= target
    assert entry["validation"]["agreement"] == pytest.approx(agreement, abs=1e-4)
    assert entry["validation"]["filtered"] == pytest.approx(filtered, abs=1e-4)
    assert entry["validation"]["frames"] == 600
    assert filtered > 0
    assert len(document["curve"]) > 21                     # the coarse grid, then finer around the pick
    for point in document["curve"]:
        other_agreement, other_filtered = pooled([policy], clips, (point["threshold"],))
        assert (point["agreement"], point["filtered"]) == pytest.approx((other_agreement, other_filtered), abs=1e-4)
        if other_agreement >= target:
            assert other_filtered <= filtered + 1e-12
    worst = entry["validation"]["worst_clip"]
    assert worst["clip"] in {"toy0", "toy1", "toy2"} and worst["agreement"] <= agreement + 1e-9
    assert document["format"] == 1 and document["metric"] == "count-agreement" and document["commit"]


def test_a_target_no_threshold_meets_is_listed_as_unmet_without_a_threshold():
    class AlwaysSkips(ScoreSkipper):
        def threshold_grid(self):
            return np.array([2.0, 3.0])      # every threshold skips every frame
    document = calibrate_policy(AlwaysSkips(), toy_clips(), targets=[0.99])
    assert document["targets"] == {}
    assert set(document["unmet"]["0.99"]) == {"best_agreement", "clip_mean", "at"}


def test_choose_prefers_more_filtering_then_higher_agreement():
    points = score_grid([ScoreSkipper()], toy_clips(clips=1), [(0.0,), (0.3,), (0.6,), (2.0,)])
    best = choose(points, 0.0)
    assert best.thresholds == (2.0,) and best.filtered == 1.0
    assert choose(points, 1.01) is None


def test_a_threshold_meets_the_target_only_when_the_mean_over_clips_does_too():
    """A long clip the filter suits must not hide a short one it fails on (pooled frames would)."""
    long_clip, short_clip = toy_clips(seed=2, clips=1, frames=1000)[0], toy_clips(seed=3, clips=1, frames=60)[0]
    short_clip.features["skip"] = [np.array([0.0])] * len(short_clip)      # looks empty, is not
    short_clip.truth[:] = 1
    clips = [long_clip, short_clip]
    points = score_grid([ScoreSkipper()], clips, [(t,) for t in np.linspace(0, 1, 21)])
    pooled_only = max((p for p in points if p.agreement >= 0.9), key=lambda p: p.filtered)
    assert pooled_only.clip_mean < 0.9                        # pooled passes, the short camera fails
    picked = choose(points, 0.9)
    assert picked.meets(0.9) and picked.clip_mean >= 0.9 and picked.agreement >= 0.9
    assert picked.filtered < pooled_only.filtered
    assert picked.summary()["clip_mean"] == pytest.approx(picked.clip_mean, abs=1e-4)


def test_the_cascade_thresholds_are_picked_jointly_and_meet_the_target():
    skip, reuse, clips = ScoreSkipper(), ScoreReuser(), toy_clips(seed=1)
    alone = {name: calibrate_policy(p, clips, targets=[0.95])["targets"]["0.95"] for name, p in
             (("skip", ScoreSkipper()), ("reuse", ScoreReuser()))}
    document = calibrate_cascade(skip, reuse, clips, targets=[0.95], grid_sizes=(6, 8),
                                 alone={name: [entry["threshold"]] for name, entry in alone.items()})
    entry = document["targets"]["0.95"]
    agreement, filtered = pooled([skip, reuse], clips, (entry["skip"], entry["reuse"]))
    assert agreement >= 0.95 and entry["validation"]["filtered"] == pytest.approx(filtered, abs=1e-4)
    for a, b, other_agreement, other_filtered, _ in document["tried"]:
        assert (other_agreement, other_filtered) == pytest.approx(pooled([skip, reuse], clips, (a, b)), abs=1e-4)
        if other_agreement >= 0.95:
            assert other_filtered <= filtered + 1e-4          # figures rounded to 4 places
    # the cascade keeps at least as much from the model as either filter alone at the same target
    assert filtered >= max(entry_["validation"]["filtered"] for entry_ in alone.values())


class BudgetReuser(ScoreReuser):
    """A reuser whose decisions depend on the target, as Reuse's with its self-check on: it
    reuses more freely the larger the error budget (1 - target)."""

    target_dependent = True

    def __init__(self):
        super().__init__()
        self.target = None
        self.seen: set = set()

    def decide_prepared(self, stream, seq, features):
        self.seen.add(self.target)
        budget = 1 - self.target if self.target is not None else 0.05
        if self.last is not None and features[0] < self.threshold * budget / 0.05:
            return Decision("reuse", ref_seq=self.last)
        return None


def test_a_policy_whose_decisions_depend_on_the_target_is_calibrated_for_each_target_with_it_set():
    """Calibrated for 0.9 with the 0.95 budget, a self-checking Reuse would run live with another
    budget than the one its threshold was picked with."""
    clips = toy_clips(seed=4)
    policy = BudgetReuser()
    document = calibrate_policy(policy, clips, targets=[0.9, 0.98], thresholds=21)
    assert policy.seen == {0.9, 0.98} and policy.target is None          # each target searched, then restored
    assert document["searched_per_target"] is True
    for target in (0.9, 0.98):
        entry = document["targets"][f"{target:g}"]
        policy.target = target                                            # as it runs at that target
        agreement, filtered = pooled([policy], clips, (entry["threshold"],))
        assert agreement >= target
        assert (entry["validation"]["agreement"], entry["validation"]["filtered"]) == pytest.approx(
            (agreement, filtered), abs=1e-4)
    # the same policy calibrated for one target alone gets the same pick
    alone = BudgetReuser()
    alone.target = 0.9
    assert calibrate_policy(alone, clips, targets=[0.9], thresholds=21)["targets"]["0.9"]["threshold"] == \
        document["targets"]["0.9"]["threshold"]
    skip, reuse = ScoreSkipper(), BudgetReuser()
    cascade = calibrate_cascade(skip, reuse, clips, targets=[0.9, 0.95], grid_sizes=(4, 6))
    assert reuse.seen == {0.9, 0.95} and cascade["listed_target"] == 0.95
    for target in (0.9, 0.95):
        entry = cascade["targets"][f"{target:g}"]
        reuse.target = target
        assert pooled([skip, reuse], clips, (entry["skip"], entry["reuse"]))[1] == pytest.approx(
            entry["validation"]["filtered"], abs=1e-4)


def test_a_policy_that_does_not_depend_on_the_target_is_searched_once_for_all_targets():
    document = calibrate_policy(ScoreReuser(), toy_clips(seed=4), targets=[0.9, 0.98], thresholds=21)
    assert "searched_per_target" not in document and set(document["targets"]) == {"0.9", "0.98"}


def test_calibrating_what_is_not_a_filter_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such filter directory"):
        calibrate_directory(tmp_path / "absent")
    with pytest.raises(ConfigError, match="neither a trained filter"):
        calibrate_directory(tmp_path)


def test_the_command_refuses_missing_inputs_before_any_work(tmp_path):
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "filter", "calibrate", str(tmp_path / "absent")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2 and "no such filter directory" in run.stderr
    (tmp_path / "metadata.json").write_text(json.dumps({"format": 1, "kind": "skip", "input_size": 32}))
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "filter", "calibrate", str(tmp_path),
                          "--clips", str(tmp_path / "absent.mp4")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2 and "no such clip" in run.stderr


def test_calibration_judges_the_networks_without_their_self_checks(tmp_path):
    """Calibrated with its self-check on, Skip could pass at a threshold that skips nearly
    everything, the check switching it off on busy clips during the unscored warm-up."""
    from models.calibrate import open_filter
    from models.reuse import ReusePolicy
    from tests.models.fixtures import make_filter_dir
    skip_dir = make_filter_dir(tmp_path, "skip", threshold=None)
    assert open_filter(skip_dir).max_run == 0
    assert open_filter(skip_dir, self_check=True).max_run == 50            # as it runs
    reuse_dir = make_filter_dir(tmp_path, "reuse", threshold=None)
    assert open_filter(reuse_dir).threshold == 0
    assert open_filter(reuse_dir, options="refer=agree").settings["refer"] == "agree"    # a variant
    # Reuse's self-check too is off while calibrating, unless asked for (calibrated with it)
    assert open_filter(reuse_dir).check == 0
    assert open_filter(reuse_dir, self_check=True).check == ReusePolicy.defaults["check"] == 20
    assert open_filter(reuse_dir, options="check=10").check == 10
    assert ReusePolicy.from_directory(reuse_dir, "threshold=0.5").check == 20          # on when it runs


def test_of_thresholds_doing_the_same_on_validation_the_most_cautious_is_picked_whichever_way_the_grid_runs():
    """Skip filters more as its threshold grows; the early exit's maxprob, as it shrinks (its grid
    decreases). Where several thresholds do the same on validation, the one filtering least
    elsewhere is picked: the smallest for Skip, the LARGEST maxprob for the early exit."""
    from models.calibrate import grid_directions

    class ExitLike(FramePolicy):
        """Answers "no vehicle" when its made-up confidence reaches the threshold (maxprob)."""

        name = "exit"

        def prepare(self, frame):
            return frame

        def decide_prepared(self, stream, seq, features):
            return Decision("exit", exit=0, result={"count": 0}) if features[0] >= self.threshold else None

        def threshold_grid(self):
            return np.linspace(1.0, 0.5, 51)

    clips = toy_clips(clips=1)
    clips[0].truth[:] = 0                                    # nothing to see: every exit is right
    clips[0].features["exit"] = [np.array([0.9])] * len(clips[0])
    policy = ExitLike()
    assert grid_directions([policy, ScoreSkipper()]) == (-1, 1)
    points = score_grid([policy], clips, [(t,) for t in policy.threshold_grid()])
    assert choose(points, 0.95, grid_directions([policy])).thresholds == pytest.approx((0.9,))
    assert choose(points, 0.95).thresholds == (0.5,)        # read as Skip's grid: the boldest
    document = calibrate_policy(policy, clips, targets=[0.95])
    assert document["targets"]["0.95"]["threshold"] == pytest.approx(0.9)
    assert document["targets"]["0.95"]["validation"]["filtered"] == 1.0
