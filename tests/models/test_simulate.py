"""Offline replay: the answers the aggregator would give, feedback lag, cascade order, one prepare per frame."""

from __future__ import annotations

import numpy as np
import pytest

from models.base import Decision, FramePolicy
from models.baselines.stride import Stride
from models.simulate import (INFER, NOBODY, REUSE, SKIP, PreparedClip, labelled_clip, prepare_clip, replay,
                             sweep, thin_grid)
from pipeline.errors import ConfigError


class DarkSkipper(FramePolicy):
    """Skips a frame whose mean brightness is below the threshold; counts its prepares."""

    name = "dark"

    def __init__(self, threshold: float = 0.0):
        self.threshold = threshold
        self.prepared = 0
        self.asked: list[int] = []
        self.ended: list[str] = []

    def prepare(self, frame):
        self.prepared += 1
        return np.array([frame.mean()])

    def decide_prepared(self, stream, seq, features):
        self.asked.append(seq)
        return Decision("skip") if features[0] < self.threshold else None

    def end_stream(self, stream):
        self.ended.append(stream)


class ReuseLastInferred(FramePolicy):
    """Reuses the last frame it heard (through feedback) was inferred, once it has heard of one;
    records which seqs' feedback it had when asked about each frame."""

    name = "last"

    def __init__(self, ref: int | None = None):
        self.threshold = 1.0
        self.last: int | None = None
        self.heard: list[int] = []
        self.heard_when_asked: dict[int, list[int]] = {}
        self.results: dict[int, dict] = {}
        self.ref = ref          # a fixed ref_seq to point at, when given

    def prepare(self, frame):
        return np.zeros(1)

    def decide_prepared(self, stream, seq, features):
        self.heard_when_asked[seq] = list(self.heard)
        if self.ref is not None:
            return Decision("reuse", ref_seq=self.ref)
        if self.last is None or self.threshold <= 0:
            return None
        return Decision("reuse", ref_seq=self.last)

    def feedback(self, stream, seq, result):
        self.heard.append(seq)
        self.results[seq] = result
        if result["decision"] == "infer":
            self.last = seq

    def end_stream(self, stream):
        self.last = None
        self.heard = []


def clip_of(brightness: list[int], truth: list[int], policies) -> PreparedClip:
    frames = [(seq, np.full((4, 4, 3), value, np.uint8)) for seq, value in enumerate(brightness)]
    return prepare_clip("toy", frames, dict(enumerate(truth)), policies)


def test_skip_answers_zero_infer_the_truth_reuse_the_resolved_answer_of_its_ref():
    skipper, reuser = DarkSkipper(threshold=10), ReuseLastInferred()
    clip = clip_of([0, 50, 50, 50, 50, 5], [0, 3, 4, 4, 5, 0], [skipper, reuser])
    run = replay([skipper, reuser], clip, lag=0)
    # frame 0 skipped (dark), 1 inferred (nobody decided), 2-4 reuse frame 1, 5 skipped
    assert run.action.tolist() == [SKIP, INFER, REUSE, REUSE, REUSE, SKIP]
    assert run.answer.tolist() == [0, 3, 3, 3, 3, 0]
    assert run.answered_by.tolist() == [0, NOBODY, 1, 1, 1, 0]
    assert run.ref_seq.tolist() == [-1, -1, 1, 1, 1, -1]
    assert run.agreement(clip.truth) == pytest.approx(3 / 6)
    assert run.filtered == pytest.approx(5 / 6)
    assert run.unresolved == 0
    # every policy heard every frame's answer, as the aggregator publishes it
    assert reuser.results[2] == {"stream": "replay:toy", "seq": 2, "decision": "reuse", "count": 3,
                                 "policy": "last", "ref_seq": 1}
    assert reuser.results[0]["count"] == 0 and reuser.results[1]["decision"] == "infer"


def test_a_reuse_of_a_reused_frame_gets_that_frames_answer_and_an_unknown_ref_answers_zero():
    reuser = ReuseLastInferred(ref=0)
    clip = clip_of([1, 1, 1], [2, 2, 2], [reuser])
    run = replay([reuser], clip, lag=0)
    # frame 0 points at itself, which the aggregator does not hold yet: unresolved, taken as 0
    assert run.answer.tolist() == [0, 0, 0] and run.unresolved == 1


@pytest.mark.parametrize("lag", [0, 1, 2, 5])
def test_feedback_arrives_lag_frames_late_and_all_of_it_before_the_stream_ends(lag):
    reuser = ReuseLastInferred()
    reuser.threshold = 0          # never decides: every frame is inferred
    clip = clip_of([1] * 8, [1] * 8, [reuser])
    replay([reuser], clip, lag=lag)
    for seq, heard in reuser.heard_when_asked.items():
        assert heard == list(range(max(0, seq - lag)))    # frames <= seq - lag - 1
    assert sorted(reuser.results) == list(range(8))


def test_later_lag_means_later_reuse():
    truth = [1, 1, 1, 1, 1]
    for lag, first_reuse in [(0, 1), (2, 3)]:
        reuser = ReuseLastInferred()
        run = replay([reuser], clip_of([1] * 5, truth, [reuser]), lag=lag)
        assert int(np.argmax(run.action == REUSE)) == first_reuse


def test_the_cascade_asks_the_second_policy_only_about_frames_the_first_left():
    skipper, reuser = DarkSkipper(threshold=10), ReuseLastInferred()
    clip = clip_of([0, 50, 0, 50], [0, 1, 0, 1], [skipper, reuser])
    replay([skipper, reuser], clip, lag=0)
    assert skipper.asked == [0, 1, 2, 3]
    assert sorted(reuser.heard_when_asked) == [1, 3]


def test_sweep_prepares_once_sets_thresholds_per_replay_restores_them_and_ends_each_stream():
    skipper = DarkSkipper(threshold=0.5)
    clip = clip_of([0, 10, 20, 30], [0, 1, 1, 1], [skipper])
    runs = sweep([skipper], clip, [(t,) for t in (0, 15, 25, 100)])
    assert skipper.prepared == 4
    assert [r.filtered for r in runs] == [0, 0.5, 0.75, 1.0]
    assert [r.agreement(clip.truth) for r in runs] == [1.0, 0.75, 0.5, 0.25]
    assert skipper.threshold == 0.5
    assert skipper.ended == ["replay:toy"] * 4


def test_a_policy_that_is_not_a_frame_policy_replays_through_decide():
    stride = Stride(3)
    clip = PreparedClip("toy", np.arange(7), np.array([1, 2, 3, 4, 5, 6, 7], np.int32))
    run = replay([stride], clip)
    assert run.answer.tolist() == [1, 1, 1, 4, 4, 4, 7]
    assert run.filtered == pytest.approx(4 / 7)


def test_thin_grid_keeps_both_ends_and_covers_a_grid_crowded_at_one_end():
    grid = thin_grid(np.linspace(0, 1, 101), 11)
    assert len(grid) <= 11 and grid[0] == 0 and grid[-1] == 1
    crowded = np.unique(np.concatenate([np.geomspace(1e-4, 1, 81), np.linspace(0, 1, 21)]))
    thin = thin_grid(crowded, 16)
    assert len(thin) <= 16 and thin[0] == 0 and thin[-1] == 1 and set(thin) <= set(crowded)
    assert np.max(np.diff(thin)) <= 0.15         # no wide hole where the grid is sparse
    assert thin_grid([0.1, 0.2], 30).tolist() == [0.1, 0.2]


def test_a_clip_without_labels_is_refused_with_the_command_that_labels_it(tmp_path):
    clip = tmp_path / "cam.mp4"
    clip.write_bytes(b"not a video")
    with pytest.raises(ConfigError, match="infistream filter label --source"):
        labelled_clip(clip, label_dir=tmp_path)
    with pytest.raises(ConfigError, match="no such clip"):
        labelled_clip(tmp_path / "absent.mp4", label_dir=tmp_path)


def test_warm_up_frames_are_replayed_but_not_scored():
    reuser = ReuseLastInferred()
    clip = clip_of([1] * 6, [5, 5, 5, 7, 7, 7], [reuser])
    clip.warmup = 3
    run = replay([reuser], clip, lag=0)
    assert len(clip) == 3 and clip.scored_truth.tolist() == [7, 7, 7]
    assert run.seq.tolist() == [3, 4, 5]
    assert run.action.tolist() == [REUSE] * 3          # warm: frame 0 was inferred during the warm-up
    assert run.answer.tolist() == [5, 5, 5] and run.agreement(clip.scored_truth) == 0.0
