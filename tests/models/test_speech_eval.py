"""Speech filter evaluation: metrics on hand-made windows, threshold picks on increasing and
decreasing grids, cascades calibrated jointly, spec strings, and a real Silero on a shared file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.base import Decision, FramePolicy
from models.calibrate import choose as video_choose
from models.calibrate import search
from models.simulate import PreparedClip
from models.speech_eval import (Prepared, Windows, calibrate, cascade_outcome, choose, cross_fit, cross_fit_folds,
                                envelope, oracle, score,
                                score_at, score_by_subset, score_grid, stride_skips, with_threshold)
from pipeline.errors import ConfigError


def windows(needs, infer_ms, subsets=None, clips=None, seqs=None) -> Windows:
    n = len(needs)
    return Windows("val", np.zeros((n, 4), np.float32), np.asarray(needs, bool), np.asarray(infer_ms, float),
                   np.asarray(subsets or ["noise"] * n), np.asarray(clips or ["c"] * n),
                   np.asarray(seqs if seqs is not None else range(n)))


class Below(FramePolicy):
    """Skips when its feature is below the threshold (as the VAD gates do), by decide_prepared."""

    input_kind = "audio"

    def __init__(self, name="below", grid=None):
        self.name = name
        self._grid = np.linspace(0, 1, 11) if grid is None else grid

    def prepare(self, window):
        return np.asarray([window[0]], np.float32)

    def decide_prepared(self, stream, seq, features):
        return Decision("skip", policy=self.name) if features[0] < self.threshold else None

    def threshold_grid(self):
        return self._grid


class ConfidentEmpty(FramePolicy):
    """Answers exit(0) when its feature (P(not needed)) reaches the threshold: a larger threshold
    filters LESS, so its grid decreases, as the early-exit network's maxprob grid does."""

    input_kind = "audio"
    name = "exit"

    def prepare(self, window):
        return np.asarray([window[0]], np.float32)

    def decide_prepared(self, stream, seq, features):
        if features[0] >= self.threshold:
            return Decision("exit", exit=0, result={"needs_recognition": False}, policy=self.name)
        return None

    def threshold_grid(self):
        return np.linspace(1.0, 0.0, 11)


def prepared(policy, features, ms=1.0) -> Prepared:
    features = np.asarray(features, np.float32).reshape(-1, 1)
    return Prepared(policy.name, policy, features, np.full(len(features), ms))


# --------------------------------------------------------------------------------------------

def test_score_counts_only_skipped_windows_that_needed_recognition_as_errors():
    w = windows(needs=[1, 1, 0, 0, 0], infer_ms=[100, 200, 10, 10, 80])
    s = score(np.array([1, 0, 1, 1, 0], bool), w, filter_ms=2.0)
    assert (s.skipped, s.errors) == (3, 1)
    assert s.skip_rate == pytest.approx(0.6)
    assert s.infi_accuracy == pytest.approx(0.8)            # 1 skipped "needs" of 5
    assert s.agreement == pytest.approx(0.6)                # sent <=> needs holds for windows 1, 2, 3
    # saved: windows 0, 2, 3 = 120 ms; the filter ran on all 5 windows at 2 ms = 10 ms; of 400 ms
    assert s.time_saved == pytest.approx((120 - 10) / 400)
    assert s.to_json()["filter_ms_per_window"] == pytest.approx(2.0)


def test_agreement_is_sent_iff_needed():
    w = windows(needs=[1, 0, 1, 0], infer_ms=[1, 1, 1, 1])
    # sent, skipped, skipped, sent: right, right, wrong, wrong
    assert score(np.array([0, 1, 1, 0], bool), w).agreement == pytest.approx(0.5)


def test_scores_per_subset_and_filter_cost_per_window():
    w = windows(needs=[1, 0, 0, 1], infer_ms=[10, 10, 10, 10], subsets=["clean", "clean", "music", "music"])
    scores = score_by_subset(np.array([0, 1, 1, 1], bool), w, np.array([1.0, 1.0, 3.0, 3.0]))
    assert list(scores) == ["all", "clean", "music"]
    assert scores["clean"].infi_accuracy == 1.0 and scores["clean"].skip_rate == 0.5
    assert scores["music"].infi_accuracy == 0.5 and scores["music"].skip_rate == 1.0
    assert scores["music"].time_saved == pytest.approx((20 - 6) / 20)
    assert scores["all"].errors == 1


def test_score_refuses_a_decision_count_that_is_not_the_window_count():
    with pytest.raises(ValueError, match="3 decisions for 2 windows"):
        score(np.zeros(3, bool), windows([0, 1], [1, 1]))


def test_stride_skips_all_but_one_window_in_n_per_clip():
    w = windows(needs=[0] * 7, infer_ms=[1] * 7, clips=["a"] * 4 + ["b"] * 3, seqs=[0, 1, 2, 3, 2, 0, 1])
    assert stride_skips(w, 2).tolist() == [False, True, False, True, False, False, True]
    assert not stride_skips(w, 1).any()
    with pytest.raises(ConfigError):
        stride_skips(w, 0)


def test_cascade_skips_when_any_gate_skips_and_later_gates_cost_only_what_reaches_them():
    a = prepared(Below("a"), [0.1, 0.9, 0.9, 0.2], ms=1.0)
    b = prepared(Below("b"), [0.9, 0.1, 0.9, 0.1], ms=10.0)
    skipped, cost = cascade_outcome([a, b], [0.5, 0.5])
    assert skipped.tolist() == [True, True, False, True]
    assert cost.tolist() == [1.0, 11.0, 11.0, 1.0]


def test_calibration_picks_the_most_skipping_threshold_that_meets_the_target_on_an_increasing_grid():
    # feature = a VAD's speech score; windows 0-5 need no recognition, 6-9 do
    features = [0.05, 0.15, 0.25, 0.35, 0.45, 0.75, 0.55, 0.65, 0.85, 0.95]
    w = windows(needs=[0] * 6 + [1] * 4, infer_ms=[10] * 10)
    result = calibrate([prepared(Below(), features)], w, targets=(0.9, 1.0))
    # at 0.5: windows 0-4 skipped, none needed -> 1.0; at 0.6: + window 6 (needs) -> 0.9; at 0.7:
    # + window 7 (needs) -> 0.8. So target 1.0 -> 0.5 and 0.9 -> 0.6.
    assert result["targets"]["1"]["threshold"] == pytest.approx(0.5)
    assert result["targets"]["0.9"]["threshold"] == pytest.approx(0.6)
    assert result["targets"]["0.9"]["spec"] == "below:threshold=0.6"
    assert result["targets"]["0.9"]["validation"]["all"]["skip_rate"] == pytest.approx(0.6)
    assert result["targets"]["0.9"]["validation"]["all"]["infi_accuracy"] == pytest.approx(0.9)


def test_calibration_on_a_decreasing_grid_picks_the_smallest_threshold_that_meets_the_target():
    # feature = P(not needed); a LOWER threshold answers more windows
    features = [0.95, 0.85, 0.75, 0.65, 0.55, 0.35, 0.45, 0.25, 0.15, 0.05]
    w = windows(needs=[0] * 5 + [0] + [1] * 4, infer_ms=[10] * 10)
    result = calibrate([prepared(ConfidentEmpty(), features)], w, targets=(1.0, 0.9))
    # at 0.5: windows 0-4 -> 1.0; at 0.4: + window 6 (0.45, needs) -> 0.9; at 0.3: + window 5 (not
    # needed) -> still 0.9, skip 0.7; at 0.2: + window 7 (needs) -> 0.8
    assert result["targets"]["1"]["threshold"] == pytest.approx(0.5)
    assert result["targets"]["0.9"]["threshold"] == pytest.approx(0.3)
    assert result["targets"]["0.9"]["validation"]["all"]["skip_rate"] == pytest.approx(0.7)


def test_an_unmet_target_gets_no_threshold():
    w = windows(needs=[1, 1], infer_ms=[1, 1])
    result = calibrate([prepared(Below(grid=np.array([0.5, 1.0])), [0.2, 0.3])], w, targets=(0.99,))
    assert result["targets"] == {}
    assert result["unmet"]["0.99"]["best_infi_accuracy"] == 0.0


def test_calibration_also_requires_the_mean_over_subsets():
    # pooled 0.9 but the small subset at 0.5: not met at 0.9 with the threshold that skips window 9
    w = windows(needs=[0] * 8 + [0, 1], infer_ms=[1] * 10, subsets=["noise"] * 8 + ["music"] * 2)
    features = [0.1] * 8 + [0.2, 0.3]
    result = calibrate([prepared(Below(grid=np.array([0.0, 0.15, 0.25, 0.35])), features)], w, targets=(0.9,))
    assert result["targets"]["0.9"]["threshold"] == pytest.approx(0.25)     # not 0.35: music would be 0.5


def test_a_cascade_is_calibrated_jointly_and_never_worse_than_a_gate_alone():
    # gate a finds the quiet non-speech windows, gate b the loud ones; together they skip all 6
    a_features = [0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9]
    b_features = [0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.9, 0.9]
    w = windows(needs=[0] * 6 + [1, 1], infer_ms=[1] * 8)
    parts = [prepared(Below("a"), a_features), prepared(Below("b"), b_features)]
    result = calibrate(parts, w, targets=(1.0,))
    entry = result["targets"]["1"]
    assert entry["validation"]["all"]["skip_rate"] == pytest.approx(0.75)
    assert entry["validation"]["all"]["infi_accuracy"] == 1.0
    a, b = entry["thresholds"]
    assert 0.1 < a <= 0.9 and 0.1 < b <= 0.9
    assert entry["spec"] == f"a:threshold={a:g}+b:threshold={b:g}"
    assert score_at(parts, w, entry["thresholds"])["all"]["skip_rate"] == pytest.approx(0.75)


def test_oracle_picks_on_the_split_itself_per_subset_and_gives_an_envelope():
    w = windows(needs=[0, 0, 1, 0, 1, 1], infer_ms=[1] * 6, subsets=["clean"] * 3 + ["music"] * 3)
    part = prepared(Below(), [0.1, 0.2, 0.3, 0.1, 0.25, 0.9])
    found = oracle([part], w, target=1.0)
    assert found["clean"]["skip_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert found["music"]["skip_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert found["all"]["infi_accuracy"] == 1.0
    curve = found["curves"]["all"]
    assert set(found["curves"]) == {"all", "clean", "music"}
    assert curve == sorted(curve) and all(0 <= s <= 1 and 0 <= a <= 1 for s, a in curve)


def test_cross_fit_deals_each_subsets_clips_to_the_folds_keeping_a_clip_together():
    w = windows(needs=[0] * 7, infer_ms=[1] * 7, subsets=["clean"] * 2 + ["real"] * 5,
                clips=["c1", "c2", "r2", "r1", "r1", "r3", "r2"])
    assert cross_fit_folds(w, 2).tolist() == [0, 1, 1, 0, 0, 0, 1]


def test_cross_fit_scores_each_fold_at_thresholds_picked_without_it():
    val = windows(needs=[0, 0, 0, 0, 1, 1], infer_ms=[1] * 6)
    val_part = prepared(Below(), [0.1, 0.2, 0.4, 0.45, 0.75, 0.85])
    # r1's windows at 0.3 need recognition, r2's do not: a pick that saw r1 stays below 0.3,
    # one that saw only r2 goes up to 0.7 (val's first needed window)
    test = windows(needs=[1, 1, 0, 0, 0, 1], infer_ms=[1] * 6, subsets=["real"] * 6,
                   clips=["r1"] * 3 + ["r2"] * 3)
    test_part = prepared(Below(), [0.3, 0.3, 0.6, 0.3, 0.6, 0.9])
    result = cross_fit([val_part], val, [test_part], test, target=1.0)
    assert [f["thresholds"][0] for f in result["folds"]] == [pytest.approx(0.7), pytest.approx(0.3)]
    assert [f["scored_clips"] for f in result["folds"]] == [["r1"], ["r2"]]
    real = result["by_subset"]["real"]
    # r1 at 0.7: all 3 skipped, 2 of them needed; r2 at 0.3: none skipped
    assert (real["skipped"], real["errors"]) == (3, 2)
    assert real["infi_accuracy"] == pytest.approx(1 - 2 / 6, abs=1e-4)


def test_cross_fit_says_which_fold_has_no_threshold_meeting_the_target():
    val = windows(needs=[1, 1], infer_ms=[1, 1])
    w = windows(needs=[1, 1], infer_ms=[1, 1], subsets=["real"] * 2, clips=["a", "b"])
    # every window needs recognition and the grid's lowest threshold (0) skips none: always met
    assert "by_subset" in cross_fit([prepared(Below(), [0.5, 0.5])], val, [prepared(Below(), [0.5, 0.5])], w, 1.0)
    grid = np.asarray([0.6, 0.8])           # every threshold skips the needed windows
    assert cross_fit([prepared(Below(grid=grid), [0.5, 0.5])], val, [prepared(Below(grid=grid), [0.5, 0.5])], w,
                     1.0) == {"unmet": 0, "folds": []}


def test_envelope_keeps_only_points_no_other_beats():
    points = score_grid([prepared(Below(), [0.1, 0.2, 0.3, 0.4])], windows([0, 1, 0, 1], [1] * 4),
                        [np.linspace(0, 1, 11)])
    front = envelope(points)
    for skip, accuracy in front:
        assert not any(p.skip_rate > skip and p.infi_accuracy >= accuracy for p in points)


def test_choose_takes_the_most_skipping_point_that_meets_the_target():
    points = score_grid([prepared(Below(), [0.1, 0.5])], windows([0, 0], [1, 1]), [np.array([0.2, 0.3, 0.6])])
    assert choose(points, 0.9).thresholds == (0.6,)
    assert choose(points, 1.01) is None


@pytest.mark.parametrize("spec, threshold, expected", [
    ("energy", -62.0, "energy:threshold=-62"),
    ("energy:threshold=-50", -40.5, "energy:threshold=-40.5"),
    ("vad:silero", 0.31, "vad:silero:threshold=0.31"),
    ("vad:silero:threshold=0.5", 0.7, "vad:silero:threshold=0.7"),
    ("vad:webrtc:3", 0.2, "vad:webrtc:3,threshold=0.2"),
    ("vad:webrtc", 0.2, "vad:webrtc:threshold=0.2"),
    ("vad:webrtc:2,threshold=0.1", 0.3, "vad:webrtc:2,threshold=0.3"),
    ("early-exit", 0.8, "early-exit:threshold=0.8"),
    ("early-exit:rule=entropy", 0.3, "early-exit:rule=entropy,threshold=0.3"),
    ("audio-skip:target=0.95", 0.31, "audio-skip:threshold=0.31"),
    ("runs/speech/ee", 0.7, "runs/speech/ee:threshold=0.7"),
])
def test_spec_strings_take_the_threshold(spec, threshold, expected):
    assert with_threshold(spec, threshold) == expected


@pytest.mark.parametrize("spec", ["energy:threshold=-62", "vad:silero:threshold=0.31", "vad:webrtc:3,threshold=0.2",
                                  "vad:webrtc:threshold=0.2"])
def test_spec_strings_build_the_policy_at_that_threshold(spec):
    from models.registry import parse_policy
    name, _, _ = spec.partition(":")
    try:
        policy = parse_policy(spec)
    except ConfigError as error:            # vad:silero without faster-whisper
        pytest.skip(str(error))
    assert policy.threshold == pytest.approx(float(spec.rsplit("=", 1)[1]))


# --------------------------------------------------------------------------------------------
# models/calibrate.py's search on a decreasing grid (the early-exit maxprob grid)

class DecreasingSkipper(FramePolicy):
    """Skips when its feature (a made-up P(no vehicle)) reaches the threshold: larger filters less."""

    name = "dec"

    def prepare(self, frame):
        return frame

    def decide_prepared(self, stream, seq, features):
        return Decision("skip") if features[0] >= self.threshold else None

    def threshold_grid(self):
        return np.linspace(1.0, 0.0, 41)


def test_video_search_on_a_decreasing_grid_refines_to_the_full_grid_optimum():
    """41 thresholds, 12 coarse: the fine step between a pick's coarse neighbours (at most 9 values)
    covers every threshold there, so coarse to fine must find what trying all 41 finds."""
    from models.calibrate import score_grid as video_score_grid
    rng = np.random.default_rng(3)
    truth = (rng.random(400) < 0.4).astype(np.int32)
    p_empty = np.clip((truth == 0) * 0.5 + rng.normal(0.3, 0.15, 400), 0, 1)
    clips = [PreparedClip("toy", np.arange(400), truth, {"dec": [np.array([v]) for v in p_empty]})]
    policy = DecreasingSkipper()
    for target in (0.9, 0.95, 0.98):
        full = video_choose(video_score_grid([policy], clips, [(t,) for t in policy.threshold_grid()]), target)
        found = video_choose(search([policy], clips, [12], [target]), target)
        assert full is not None and found is not None
        assert found.filtered == pytest.approx(full.filtered), target


# --------------------------------------------------------------------------------------------
# The real Silero VAD on a shared recording

def test_silero_on_a_real_recording_finds_speech_and_calibrates(assets):
    from models.mixtures import load_audio
    from models.speech_eval import open_policy, prepare_policy
    from tests.conftest import asset_or_skip
    speech = load_audio(asset_or_skip(assets, "audio/speech_long/jfk.flac"))[:32000].copy()
    try:
        policy = open_policy("vad:silero")
    except ConfigError as error:            # faster-whisper (which ships the model) not installed
        pytest.skip(str(error))
    w = Windows("val", np.stack([speech, np.zeros(32000, np.float32)]), np.array([True, False]),
                np.array([500.0, 10.0]), np.array(["real", "clean"]), np.array(["jfk", "zero"]), np.array([0, 0]))
    with policy:
        part = prepare_policy(policy, w, "vad:silero")
    assert part.features[0, 0] > 0.5 > part.features[1, 0]
    assert part.cost_ms > 0
    entry = calibrate([part], w, targets=(1.0,))["targets"]["1"]
    assert entry["validation"]["all"]["skip_rate"] == pytest.approx(0.5)
    assert entry["validation"]["clean"]["skip_rate"] == 1.0 and entry["validation"]["real"]["skip_rate"] == 0.0


def test_open_policy_refuses_a_cascade_and_a_video_policy():
    from models.speech_eval import open_policy
    with pytest.raises(ConfigError, match="cascade"):
        open_policy("energy+vad:silero")
    with pytest.raises(ConfigError, match="not an audio filter"):
        open_policy("framediff")


def entry(spec, skip, saved, gates=1):
    return {"spec": spec, "thresholds": [0.5] * gates, "validation": {"all": {"skip_rate": skip, "time_saved": saved}}}


def test_shipping_prefers_fewer_gates_within_the_noise_then_more_time_saved():
    from models.speech_eval import choose_shipped
    results = {
        "a": {"targets": {"0.95": entry("a:threshold=0.5", 0.50, 0.20)}},
        "b": {"targets": {"0.95": entry("b:threshold=0.5", 0.49, 0.25)}},
        "a+b": {"targets": {"0.95": entry("a:threshold=0.5+b:threshold=0.5", 0.51, 0.30, gates=2),
                            "0.9": entry("a:threshold=0.5+b:threshold=0.5", 0.80, 0.50, gates=2)}},
        "c": {"targets": {"0.9": entry("c:threshold=0.5", 0.60, 0.40)}},
    }
    shipped = choose_shipped(results, (0.9, 0.95, 0.98), windows=290)
    # 0.95: a+b best (0.51), a and b within one standard error (2.9 points): fewer gates, then b saves more
    assert shipped["0.95"]["spec"] == "b:threshold=0.5" and shipped["0.95"]["from"] == "b"
    # 0.9: c is 20 points behind: the cascade ships
    assert shipped["0.9"]["spec"] == "a:threshold=0.5+b:threshold=0.5"
    assert "0.98" not in shipped


def test_a_gate_left_at_its_least_filtering_threshold_is_dropped_from_the_shipped_spec():
    # gate a (grid starts at 0: skips nothing there) adds nothing; b finds everything
    w = windows(needs=[0, 0, 1, 1], infer_ms=[1] * 4)
    parts = [prepared(Below("a"), [0.5, 0.5, 0.5, 0.5]), prepared(Below("b"), [0.1, 0.1, 0.9, 0.9])]
    entry_ = calibrate(parts, w, targets=(1.0,))["targets"]["1"]
    assert entry_["thresholds"][0] == 0.0
    assert entry_["pruned"] == f"b:threshold={entry_['thresholds'][1]:g}" and entry_["kept"] == [1]


# --------------------------------------------------------------------------------------------
# The command

def run_command(*args):
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "filter", "calibrate", *args],
                          capture_output=True, text=True, cwd=root, timeout=120)


@pytest.mark.parametrize("args, says", [
    (["--task", "speech", "energy", "--clips", "x.mp4"], "--clips is for video"),
    (["--task", "speech", "energy+"], "give a policy"),
    (["--task", "speech", "energy", "--mixtures", "/nonexistent-mixtures"], "not a mixture directory"),
    (["--task", "speech", "energy", "--words", "-1"], "--words must be at least 0"),
    (["--task", "speech", "energy", "--target", "1.5"], "--target takes"),
    (["dir-a", "dir-b"], "takes one filter directory"),
])
def test_the_command_refuses_bad_input_saying_what_it_expected(args, says):
    run = run_command(*args)
    assert run.returncode == 2, run.stderr
    assert says in run.stderr


def test_the_speech_command_writes_every_result_and_the_spec_to_ship(tmp_path, monkeypatch):
    import json
    import models.speech_eval as speech_eval
    rng = np.random.default_rng(0)
    levels = np.array([-80, -70, -60, -50, -40, -30, -20, -25])        # dBFS; the last three need recognition
    samples = np.stack([(10 ** (db / 20)) * np.sqrt(2) * np.sin(np.arange(32000) * 0.05) for db in levels])
    samples = (samples + rng.normal(0, 1e-6, samples.shape)).astype(np.float32)
    w = Windows("val", samples, np.array([0, 0, 0, 0, 0, 1, 1, 1], bool), np.full(8, 100.0),
                np.array(["noise"] * 8), np.array(["c"] * 8), np.arange(8))
    monkeypatch.setattr(speech_eval, "load_windows", lambda *args, **kwargs: w)
    out, ship = tmp_path / "all.json", tmp_path / "cascade.json"
    written = speech_eval.run_speech_calibrate(["energy"], tmp_path, (0.95, 1.0), 2, None, out, ship, say=lambda _: None)
    assert set(written) == {"all", "ship"}
    document = json.loads(out.read_text())
    entry = document["specs"]["energy"]["targets"]["1"]
    assert -40.5 < entry["threshold"] <= -30 and entry["validation"]["all"]["skip_rate"] == pytest.approx(5 / 8)
    shipped = json.loads(ship.read_text())
    assert shipped["task"] == "speech" and shipped["targets"]["1"] == entry["spec"]
    assert shipped["calibrated_on"]["data"]["split"] == "val"


def test_the_default_mixtures_follow_infi_cache(monkeypatch, tmp_path):
    """make train builds the mixtures under $INFI_CACHE; calibration and the bench must read them
    there, not from the checkout's .cache (a run with INFI_CACHE set failed at calibration)."""
    from models.speech_eval import default_mixtures, load_windows
    monkeypatch.setenv("INFI_CACHE", str(tmp_path))
    assert default_mixtures() == tmp_path / "speech-mixtures" / "seed-0"
    with pytest.raises(ConfigError, match=str(tmp_path / "speech-mixtures" / "seed-0")):
        load_windows()
