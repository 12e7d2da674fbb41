"""InFi-Reuse at run time: the bounded cache, its H-kNN decision, and the policy on real frames."""

from __future__ import annotations

import numpy as np
import pytest

from models.base import REUSE_HORIZON
from models.filterdir import DistanceHead
from models.reuse import ReuseCache, ReusePolicy
from pipeline.errors import ConfigError
from pipeline.message import Message
from tests.conftest import asset_or_skip
from tests.models.fixtures import make_filter_dir, read_frames

CLIP = "traffic/intel_car_detection.mp4"
INFER = "infer"

# p_differ = sigmoid(10 * sum |e1 - e2| - 5): 0.007 for equal embeddings, 0.5 at a summed
# difference of 0.5, 0.993 at 1.
HEAD = DistanceHead(None, None, np.full((2, 1), 10.0, np.float32), np.array([-5.0], np.float32))


def e(x: float, y: float = 0.0) -> np.ndarray:
    return np.array([x, y], np.float32)


def answered(cache: ReuseCache, stream: str, seq: int, embedding: np.ndarray, count: int, decision: str = INFER):
    """A frame the cache could not answer goes to the model; its answer comes back."""
    cache.hold(stream, seq, embedding)
    cache.feedback(stream, seq, {"decision": decision, "count": count})


def test_no_reuse_without_feedback_then_the_nearest_agreeing_entry():
    cache = ReuseCache(HEAD, k=3)                             # by default only answered frames are pointed at
    assert cache.lookup("cam", 0, e(0), 0.5) is None
    cache.hold("cam", 0, e(0))
    assert cache.lookup("cam", 1, e(0), 0.5) is None          # the answer has not come back yet
    assert cache.stats.miss_empty == 2
    cache.feedback("cam", 0, {"decision": INFER, "count": 2})
    answered(cache, "cam", 1, e(0.1), 2)
    assert cache.lookup("cam", 2, e(0.09), 0.5) == 1          # the nearer of two agreeing entries
    assert cache.lookup("cam", 3, e(0.01), 0.5) == 0
    assert cache.lookup("cam", 4, e(0.9), 0.5) is None        # too far from both
    stats = cache.stats
    assert (stats.lookups, stats.reused, stats.miss_far, stats.inserted) == (5, 2, 1, 2)
    assert cache.entries("cam")["hits"].tolist() == [1, 1]


def test_a_reuse_may_point_at_a_frame_whose_answer_is_on_its_way():
    cache = ReuseCache(HEAD, k=3, pending=2)
    cache.hold("cam", 0, e(0))
    assert cache.lookup("cam", 1, e(0.01), 0.5) == 0           # no answer yet: frame 0 is pending
    assert cache.lookup("cam", 2, e(0.9), 0.5) is None         # too far from it
    cache.hold("cam", 2, e(0.9))
    assert cache.lookup("cam", 3, e(0.89), 0.5) == 2           # the nearest of the waiting ones
    cache.feedback("cam", 0, {"decision": INFER, "count": 1})  # 0 answered: an entry now
    assert cache.lookup("cam", 4, e(0.0), 0.5) == 0 and cache.pending("cam") == [2]
    stats = cache.stats
    assert (stats.reused, stats.reused_pending) == (3, 2)


def test_refer_latest_points_at_the_latest_frame_sent_to_the_model_once_the_cache_vouches():
    cache = ReuseCache(HEAD, k=3, refer="latest")
    answered(cache, "cam", 0, e(0.00), 1)
    answered(cache, "cam", 1, e(0.80), 3)                      # looks unlike frame 0, and is the latest
    # The H-kNN still decides whether to reuse: frame 2 is close to frame 0 only ...
    assert cache.lookup("cam", 2, e(0.01), 0.5) == 1           # ... but the answer comes from frame 1
    assert cache.lookup("cam", 3, e(0.4, 1.0), 0.5) is None    # close to no entry: no reuse at all
    cache.hold("cam", 3, e(0.4, 1.0))                          # sent to the model, answer on its way
    assert cache.lookup("cam", 4, e(0.0), 0.5) == 3            # the latest sent, though unanswered
    assert cache.lookup("cam", 3, e(0.0), 0.5) == 1            # never a frame at or after the one asking
    stats = cache.stats
    assert (stats.reused, stats.reused_pending, stats.miss_far) == (3, 1, 1)
    assert cache.entries("cam")["hits"].tolist() == [0, 2]
    # The default keeps InFi's rule: the nearest agreeing entry.
    nearest = ReuseCache(HEAD, k=3)
    answered(nearest, "cam", 0, e(0.00), 1)
    answered(nearest, "cam", 1, e(0.80), 3)
    assert nearest.lookup("cam", 2, e(0.01), 0.5) == 0


def test_refer_agree_reuses_the_latest_answer_only_when_it_is_the_vote():
    cache = ReuseCache(HEAD, k=3, refer="agree")
    answered(cache, "cam", 0, e(0.00), 1)
    answered(cache, "cam", 1, e(0.80), 3)                      # the latest answer: 3
    # Frame 2 is close to frame 0 only: the vote is 1, the latest answer 3; they differ: no reuse.
    assert cache.lookup("cam", 2, e(0.01), 0.5) is None
    # Frame 3 is close to frame 1: vote and latest answer are both 3: reuse, pointing at frame 1.
    assert cache.lookup("cam", 3, e(0.79), 0.5) == 1
    answered(cache, "cam", 4, e(0.02), 1)                      # now the latest answer is 1 again
    # Close to frames 0 and 4 (both 1): the reuse points at the latest of them, not the nearest.
    assert cache.lookup("cam", 5, e(0.00), 0.5) == 4
    cache.hold("cam", 5, e(0.00))                              # an answer on its way is no candidate
    assert cache.lookup("cam", 6, e(0.00), 0.5) == 4
    assert cache.lookup("cam", 7, e(0.4, 1.0), 0.5) is None    # close to no entry: no vote
    stats = cache.stats
    assert (stats.reused, stats.miss_latest, stats.miss_far) == (3, 1, 1)
    assert cache.entries("cam")["hits"].tolist() == [0, 1, 2]


def test_a_waiting_frame_is_pointed_at_only_when_nearer_than_agreeing_close_entries():
    cache = ReuseCache(HEAD, k=3, pending=8)
    answered(cache, "cam", 0, e(0.00), 1)
    answered(cache, "cam", 1, e(0.02), 2)
    cache.hold("cam", 2, e(0.01))
    # The close answered entries disagree: nothing vouches for the waiting frame either.
    assert cache.lookup("cam", 3, e(0.012), 0.5) is None and cache.stats.miss_mixed == 1
    agreeing = ReuseCache(HEAD, k=3, pending=8)
    answered(agreeing, "cam", 0, e(0.00), 1)
    agreeing.hold("cam", 1, e(0.10))
    assert agreeing.lookup("cam", 2, e(0.01), 0.5) == 0        # the answered entry is nearer
    assert agreeing.lookup("cam", 3, e(0.09), 0.5) == 1        # the waiting one is nearer
    # Only the `pending` latest waiting frames are looked at; later frames are never pointed at.
    few = ReuseCache(HEAD, k=3, pending=1)
    few.hold("cam", 0, e(0.0))
    few.hold("cam", 1, e(0.9))
    assert few.lookup("cam", 2, e(0.0), 0.5) is None
    assert few.lookup("cam", 0, e(0.0), 0.5) is None


@pytest.mark.parametrize("result", [
    {"decision": "skip", "count": 0}, {"decision": "reuse", "count": 2}, {"decision": INFER},
    {"decision": INFER, "count": True}, {"decision": INFER, "count": 2.0}, {"decision": "unanswered"}, "junk",
])
def test_only_fresh_model_answers_enter_the_cache(result):
    cache = ReuseCache(HEAD)
    cache.hold("cam", 0, e(0))
    cache.feedback("cam", 0, result)
    assert cache.entries("cam")["seqs"].size == 0 and cache.pending("cam") == []
    assert cache.stats.feedback_ignored == 1
    cache.feedback("cam", 5, {"decision": INFER, "count": 1})  # no embedding waited for seq 5
    cache.feedback("other", 5, {"decision": INFER, "count": 1})
    assert cache.stats.feedback_ignored == 3 and cache.streams == ["cam"]


def test_homogeneity_refuses_when_close_neighbours_disagree():
    strict = ReuseCache(HEAD, k=3, homogeneity=1.0)
    lenient = ReuseCache(HEAD, k=3, homogeneity=0.5)
    for cache in (strict, lenient):
        answered(cache, "cam", 0, e(0.00), 1)
        answered(cache, "cam", 1, e(0.02), 2)
        answered(cache, "cam", 2, e(0.90), 1)                 # far: not among the close ones
    assert strict.lookup("cam", 3, e(0.015), 0.5) is None and strict.stats.miss_mixed == 1
    # Half and half passes a 0.5 bar; the tie goes to the answer of the nearer entry (seq 1).
    assert lenient.lookup("cam", 3, e(0.015), 0.5) == 1


def test_k_min_close_neighbours_are_needed():
    cache = ReuseCache(HEAD, k=3, k_min=2)
    answered(cache, "cam", 0, e(0), 4)
    assert cache.lookup("cam", 1, e(0), 0.5) is None and cache.stats.miss_empty == 1
    answered(cache, "cam", 1, e(0.8), 4)                      # a second entry, but far
    assert cache.lookup("cam", 2, e(0), 0.5) is None and cache.stats.miss_far == 1
    answered(cache, "cam", 2, e(0.05), 4)
    assert cache.lookup("cam", 3, e(0.01), 0.5) == 0


def test_only_the_k_nearest_vote():
    cache = ReuseCache(HEAD, k=1)
    answered(cache, "cam", 0, e(0.00), 1)
    answered(cache, "cam", 1, e(0.03), 2)                     # close too, but not the nearest
    assert cache.lookup("cam", 2, e(0.0), 0.5) == 0           # with k=3 and homogeneity 1 it would refuse


def fill(cache: ReuseCache, seqs, stream="cam"):
    for seq in seqs:
        answered(cache, stream, seq, e(seq), seq)            # far apart: each only matches itself


@pytest.mark.parametrize("replacement, hits, evicted", [
    # seqs 0, 1, 2 inserted in that order; `hits` reuses (seq -> times); one more entry evicts:
    ("lfu", {0: 2, 1: 1, 2: 1}, 1),     # fewest hits, oldest first among equals
    ("lfu", {}, 0),                     # no hits at all: the oldest
    ("lru", {0: 1, 1: 1}, 2),           # 2 was inserted before 0 and 1 were used
    ("lru", {2: 1, 0: 1}, 1),
    ("fifo", {1: 3, 2: 1}, 0),          # hits do not matter
])
def test_replacement_when_full(replacement, hits, evicted):
    cache = ReuseCache(HEAD, capacity=3, k=1, replacement=replacement)
    fill(cache, [0, 1, 2])
    seq = 10
    for target, times in hits.items():
        for _ in range(times):
            assert cache.lookup("cam", seq, e(target), 0.5) == target
            seq += 1
    answered(cache, "cam", seq, e(50), 50)
    assert sorted(cache.entries("cam")["seqs"].tolist()) == sorted({0, 1, 2, seq} - {evicted})
    assert cache.stats.evicted_full == 1


def test_capacity_streams_and_pending_stay_bounded():
    cache = ReuseCache(HEAD, capacity=4, max_streams=2, max_pending=3)
    fill(cache, range(10))
    assert cache.entries("cam")["seqs"].size == 4 and cache.stats.evicted_full == 6
    for seq in range(10, 15):
        cache.hold("cam", seq, e(0))
    assert cache.pending("cam") == [12, 13, 14] and cache.stats.pending_dropped == 2
    cache.hold("b", 0, e(0))
    cache.lookup("cam", 15, e(0), 0.5)                        # cam seen after b
    cache.hold("c", 0, e(0))                                  # a third stream: b goes
    assert cache.streams == ["cam", "c"] and cache.stats.streams_dropped == 1
    cache.end_stream("cam")
    assert cache.streams == ["c"] and cache.entries("cam")["seqs"].size == 0


def test_entries_beyond_the_horizon_are_never_pointed_at():
    cache = ReuseCache(HEAD, k=1)
    answered(cache, "cam", 0, e(0), 3)
    assert cache.lookup("cam", REUSE_HORIZON - 1, e(0), 0.5) == 0
    assert cache.lookup("cam", REUSE_HORIZON, e(0), 0.5) is None
    assert cache.stats.evicted_horizon == 1 and cache.entries("cam")["seqs"].size == 0
    # An answer that comes back after the horizon has passed it never enters.
    cache.hold("cam", 1, e(0))
    cache.lookup("cam", REUSE_HORIZON + 1, e(5), 0.5)
    cache.feedback("cam", 1, {"decision": INFER, "count": 3})
    assert cache.entries("cam")["seqs"].size == 0 and cache.stats.evicted_horizon == 2


def test_periodic_reset_empties_a_streams_cache_every_n_inputs():
    cache = ReuseCache(HEAD, k=1, reset=3)
    answered(cache, "cam", 0, e(0), 1)
    assert [cache.lookup("cam", seq, e(0), 0.5) for seq in (1, 2, 3)] == [0, 0, 0]
    assert cache.lookup("cam", 4, e(0), 0.5) is None and cache.stats.resets == 1
    assert cache.entries("cam")["seqs"].size == 0


@pytest.fixture(scope="module")
def frames(assets):
    # Frames 0 and 59 of this clip look nothing alike (the fixture network puts them far apart).
    return read_frames(asset_or_skip(assets, CLIP), 60)


def video(seq, frame):
    return Message("video", "cam", seq, arrays=(frame,))


def test_the_policy_fills_its_cache_from_feedback_and_reuses_a_repeated_frame(tmp_path, frames):
    directory = make_filter_dir(tmp_path, "reuse", size=32, embedding=8, threshold=0.5)
    waiting = ReusePolicy.from_directory(directory, "k=3,pending=8")
    with waiting:
        assert waiting.decide(video(0, frames[0])) is None
        # No answer has come back yet, but the same picture may point at the frame on its way.
        assert waiting.decide(video(1, frames[0])).ref_seq == 0 and waiting.stats.reused_pending == 1
    policy = ReusePolicy.from_directory(directory, "k=3")
    with policy:
        a, b = frames[0], frames[59]
        assert policy.decide(video(0, a)) is None
        assert policy.decide(video(1, a)) is None               # no answer has come back yet
        policy.feedback("cam", 0, {"decision": INFER, "count": 3})
        policy.feedback("cam", 1, {"decision": INFER, "count": 3})
        assert policy.decide(video(2, b)) is None               # unlike anything cached
        policy.feedback("cam", 2, {"decision": INFER, "count": 5})
        again = policy.decide(video(3, a))
        assert (again.action, again.ref_seq, again.policy) == ("reuse", 1, str(directory))
        assert policy.decide(video(4, b)).ref_seq == 2
        assert policy.decide(video(5, frames[1])).ref_seq in (0, 1)   # the next frame: nearly the same
        policy.end_stream("cam")
        assert policy.decide(video(6, a)) is None
    assert policy.stats.reused == 3 and policy.stats.inserted == 3


def test_reuse_options_are_checked(tmp_path):
    directory = make_filter_dir(tmp_path, "reuse")
    policy = ReusePolicy.from_directory(directory, "k=7,k_min=2,homogeneity=0.8,capacity=32,replacement=lru,reset=100,"
                                                   "max_run=3,pending=4,refer=latest")
    assert policy.settings == {"k": 7, "k_min": 2, "homogeneity": 0.8, "capacity": 32, "replacement": "lru", "reset": 100,
                               "max_run": 3, "pending": 4, "refer": "latest", "check": 20}
    with policy:
        assert (policy.cache.k, policy.cache.capacity, policy.cache.replacement, policy.cache.pending_candidates,
                policy.cache.refer) == (7, 32, "lru", 4, "latest")
    for argument, message in [("k=2,k_min=3", "k_min must be between 1 and k"), ("replacement=random", "lfu|lru|fifo"),
                              ("refer=oldest", "nearest|latest|agree"),
                              ("capacity=0", "capacity must be"), ("size=3", "unknown option 'size'; it takes target=")]:
        with pytest.raises(ConfigError, match=message):
            ReusePolicy.from_directory(directory, argument)


def test_a_cascade_shrinks_each_frame_once_per_size(tmp_path, frames, monkeypatch):
    import models.skip
    from models.cascade import Cascade
    from models.skip import SkipPolicy
    shrunk = []
    original = models.skip.reduce_frame
    monkeypatch.setattr(models.skip, "reduce_frame", lambda frame, size: shrunk.append(size) or original(frame, size))
    skip = SkipPolicy.from_directory(make_filter_dir(tmp_path, "skip", size=32), "threshold=0")   # never skips
    reuse = ReusePolicy.from_directory(make_filter_dir(tmp_path, "reuse", size=32), "threshold=0.5")
    with Cascade([skip, reuse]) as cascade:
        first = cascade.decide(video(0, frames[0]))
        cascade.feedback("cam", 0, {"decision": INFER, "count": 1})
        again = cascade.decide(video(1, frames[0]))           # the same pixels, a new input: shrunk again
        # The features equal what prepare() (evaluation's path) gives.
        assert np.array_equal(reuse.prepare(frames[0]), reuse.model.run(original(frames[0], 32)))
    assert (first.action, again.action, again.ref_seq) == ("infer", "reuse", 0)
    assert shrunk == [32, 32, 32]                              # seq 0, seq 1, then prepare()


def test_a_run_of_reuses_ends_with_a_fresh_answer_after_max_run(tmp_path):
    """The same frame again and again: reused max_run times in a row, then sent to the model
    (the cache would otherwise never learn again); max_run=0 lifts the cap."""
    directory = make_filter_dir(tmp_path, "reuse")
    frame = np.full((48, 64, 3), 90, np.uint8)
    for max_run, expected in ((3, ["infer", "reuse", "reuse", "reuse", "infer", "reuse", "reuse", "reuse", "infer"]),
                              (0, ["infer"] + ["reuse"] * 8)):
        policy = ReusePolicy.from_directory(directory, f"threshold=0.99,max_run={max_run}")
        actions = []
        with policy:
            for seq in range(9):
                decision = policy.decide(video(seq, frame))
                actions.append("infer" if decision is None else decision.action)
                if decision is None:
                    policy.feedback("cam", seq, {"decision": INFER, "count": 1})
        assert actions == expected, (max_run, actions)
        assert policy.forced == actions.count("infer") - 1


def _checked_policy(tmp_path, options: str) -> ReusePolicy:
    """A Reuse policy over the test head (2-d embeddings, p_differ as above), opened."""
    policy = ReusePolicy.from_directory(make_filter_dir(tmp_path, "reuse"), options)
    policy.open()
    policy.cache = ReuseCache(HEAD, **policy.cache_settings())
    policy.stats = policy.cache.stats
    return policy


def _run_stream(policy: ReusePolicy, stream: str, counts: list[int], rng: np.random.Generator,
                spread: float = 0.3) -> list[tuple[str, int]]:
    """Frames that all look alike (embeddings within `spread`), answered at once when they go to
    the model; per frame, the action and the answer it got."""
    out = []
    answers: dict[int, int] = {}
    for seq, count in enumerate(counts):
        decision = policy.decide_prepared(stream, seq, e(rng.uniform(0, spread)))
        if decision is None or decision.action == INFER:
            answers[seq] = count
            policy.feedback(stream, seq, {"decision": INFER, "count": count})
            out.append((INFER if decision is None else "probe", count))
        else:
            answers[seq] = answers[decision.ref_seq]
            out.append(("reuse", answers[seq]))
    return out


def test_the_self_check_lowers_the_threshold_of_a_stream_whose_reuses_are_wrong(tmp_path):
    """A scene whose count changes every frame although the frames look alike (what a busy camera
    is to a cache calibrated on quiet ones): without the check nearly every frame reuses a wrong
    count; with it, probes find the misses and the stream's threshold falls until the reuses it
    still makes fit the error budget. A calm stream through the same policy keeps its threshold.
    (Spaced probes, at least PROBE_SPACING frames apart, need a few hundred frames to find all of
    that out: the agreement is judged on the second half.)"""
    busy = np.random.default_rng(7).integers(0, 3, 1200).tolist()
    calm = [2] * 600
    results = {}
    # k=1: the nearest entry alone vouches, so the H-kNN's homogeneity test cannot refuse
    for options in ("threshold=0.5,max_run=0,k=1,check=0", "threshold=0.5,max_run=0,k=1,check=10"):
        policy = _checked_policy(tmp_path, options)
        rng = np.random.default_rng(0)
        got = _run_stream(policy, "busy", busy, rng), _run_stream(policy, "calm", calm, rng)
        halves = [(run[len(run) // 2:], counts[len(run) // 2:]) for run, counts in zip(got, (busy, calm))]
        agreement = [np.mean([answer == truth for (_, answer), truth in zip(*half)]) for half in halves]
        kept = [np.mean([action == "reuse" for action, _ in run]) for run, _ in halves]
        results[options] = agreement, kept, policy
    (plain_agreement, plain_kept, plain), (agreement, kept, checked) = results.values()
    assert plain.check_stats.probes == 0 and plain_agreement[0] < 0.4       # off: reuses wrong counts
    assert checked.check_stats.tightened >= 2 and checked.check_stats.misses > 0
    assert checked.threshold_of("busy") < checked.threshold / 2
    assert agreement[0] > 0.85 and kept[0] < 0.2
    # The calm stream: every check agrees, so its threshold stays; the probes cost about 1 in 20
    # (1 in 10 drawn, and never within PROBE_SPACING of the last).
    assert checked.threshold_of("calm") == checked.threshold
    assert agreement[1] == 1.0 and 0.8 < kept[1] < plain_kept[1] == 1.0
    probes = sum(action == "probe" for action, _ in _run_stream(checked, "calm2", calm, np.random.default_rng(1)))
    assert 15 < probes < 60


def test_the_self_check_raises_a_lowered_threshold_back_when_the_scene_calms(tmp_path):
    policy = _checked_policy(tmp_path, "threshold=0.5,max_run=0,k=1,check=10")
    rng = np.random.default_rng(0)
    seen = []
    counts = np.random.default_rng(7).integers(0, 3, 400).tolist() + [1] * 3000
    for seq, count in enumerate(counts):
        decision = policy.decide_prepared("cam", seq, e(rng.uniform(0, 0.3)))
        seen.append(policy.threshold_of("cam"))
        if decision is None or decision.action == INFER:
            policy.feedback("cam", seq, {"decision": INFER, "count": count})
    assert min(seen[:400]) < 0.5 * policy.threshold                  # lowered while the count jumped
    assert max(seen) == policy.threshold                               # never above the calibrated one
    assert seen[-1] == policy.threshold and policy.check_stats.relaxed >= 1


def test_probes_come_spaced_so_that_one_passing_car_is_not_many_misses(tmp_path):
    """At 1 in 1 (check=2 asks for 1 in 1 until the first window is full), a probe still comes
    only every PROBE_SPACING seqs: neighbouring frames are one picture and would repeat one
    verdict. Where reuse is off for the stream (its last level) every would-reuse frame is a
    free check, not spaced."""
    policy = _checked_policy(tmp_path, "threshold=0.5,max_run=0,check=2")
    probed = [seq for seq, (action, _) in enumerate(_run_stream(policy, "calm", [1] * 300, np.random.default_rng(0)))
              if action == "probe"]
    gaps = np.diff(probed)
    assert len(probed) >= 300 // (2 * ReusePolicy.PROBE_SPACING) and gaps.min() >= ReusePolicy.PROBE_SPACING
    assert gaps[:5].tolist() == [ReusePolicy.PROBE_SPACING] * 5         # 1 in 1: as soon as spacing allows
    off = _checked_policy(tmp_path, "threshold=0.5,max_run=0,check=2")
    off._watch("calm").level = ReusePolicy.CHECK_LEVELS
    # (alike enough to vouch at that level's threshold; 20 clean checks would raise the level)
    run = _run_stream(off, "calm", [1] * 20, np.random.default_rng(0), spread=0.0)
    assert [action for action, _ in run[1:]] == ["probe"] * 19


def test_the_self_check_stays_bounded(tmp_path):
    """Probes whose answers never come back, and many streams: both tables stay at their bounds."""
    policy = _checked_policy(tmp_path, "threshold=0.5,max_run=0,check=2")
    policy.MAX_STREAMS = 4
    for seq in range(3):
        policy.decide_prepared("cam", seq, e(0))
    policy.feedback("cam", 0, {"decision": INFER, "count": 1})            # one answer; then none again
    for seq in range(3, 2000):
        policy.decide_prepared("cam", seq, e(0))
    assert 0 < len(policy._watches["cam"].probes) <= ReusePolicy.MAX_PROBES
    for n in range(10):
        policy.decide_prepared(f"cam{n}", 0, e(0))
    assert len(policy._watches) == 4 and policy.check_stats.streams_dropped >= 7
    policy.end_stream("cam9")
    assert "cam9" not in policy._watches


def test_the_self_check_budget_follows_the_target_so_calibration_searches_each_target(tmp_path):
    plain = _checked_policy(tmp_path, "threshold=0.5,check=0")
    checked = _checked_policy(tmp_path, "threshold=0.5")                # on by default, at 20
    assert not plain.target_dependent and checked.target_dependent
    assert checked.budget == pytest.approx(0.05)                    # given a threshold: the default budget
    checked.target = 0.9
    assert checked.budget == pytest.approx(0.1)


def test_a_lowered_threshold_reuses_a_subset_of_what_the_calibrated_vote_allows():
    """The self-check lowers the threshold with the calibrated neighbours still voting: a lower
    threshold alone narrows the vote to the one nearest entry, which then agrees with itself
    where the calibrated vote was mixed, and reuses more, not less."""
    cache = ReuseCache(HEAD, k=3)
    answered(cache, "cam", 0, e(0.00), 1)
    answered(cache, "cam", 1, e(0.45), 2)           # close at 0.5 (sum |diff| < 0.5), not at 0.25 (< 0.39)
    assert cache.lookup("cam", 2, e(0.02), 0.5) is None                          # calibrated: mixed vote
    assert cache.lookup("cam", 3, e(0.02), 0.25) == 0                            # narrowed vote: reuses
    assert cache.lookup("cam", 4, e(0.02), 0.25, vote_threshold=0.5) is None     # lowered: still refuses
    calm = ReuseCache(HEAD, k=3)
    answered(calm, "cam", 0, e(0.00), 1)
    answered(calm, "cam", 1, e(0.45), 1)
    assert calm.lookup("cam", 2, e(0.02), 0.25, vote_threshold=0.5) == 0         # agreed, and near enough
    assert calm.lookup("cam", 3, e(0.42), 0.25, vote_threshold=0.5) == 1
    assert calm.lookup("cam", 4, e(0.0, 0.45), 0.25, vote_threshold=0.5) is None  # voted for, but not near enough
    assert calm.lookup("cam", 5, e(0.0, 0.45), 0.5) == 0
    # A vote threshold at or below the threshold changes nothing.
    assert calm.lookup("cam", 6, e(0.02), 0.25, vote_threshold=0.1) == 0


def test_the_self_check_counts_its_share_over_all_of_the_streams_frames(tmp_path):
    """In a cascade Reuse sees only the frames Skip left; its misses spend the budget of all of
    the stream's frames. The same reuses, wrong about 1 time in 6, spend more than 5 % when
    Reuse answers every frame, and about a quarter of that when it sees every 4th frame."""
    counts = np.where(np.random.default_rng(3).random(2400) < 0.9, 2, 3).tolist()
    tightened = {}
    for step in (1, 4):
        policy = _checked_policy(tmp_path, "threshold=0.5,max_run=0,k=1,check=10")
        rng = np.random.default_rng(0)
        for seq in range(0, 2400, step):
            decision = policy.decide_prepared("cam", seq, e(rng.uniform(0, 0.3)))
            if decision is None or decision.action == INFER:
                policy.feedback("cam", seq, {"decision": INFER, "count": counts[seq]})
        tightened[step] = policy.check_stats.tightened
        watch = policy._watches["cam"]
        assert watch.share() <= 1.0 / step + 0.01
    assert tightened[1] >= 1 and tightened[4] == 0, tightened


def test_frames_the_level_above_would_have_reused_check_it_for_free_and_raise_the_threshold_back(tmp_path):
    """A lowered stream sends to the model frames its calibrated level would have reused; their
    answers say whether that reuse would have been right. Right ones bring the threshold back up
    within a few dozen frames (not a full window of 1-in-N probes); wrong ones keep it down."""
    outcomes = {}
    for name, count_of in (("right", lambda i: 2), ("wrong", lambda i: i % 2)):
        policy = _checked_policy(tmp_path, "threshold=0.5,max_run=0,k=1,check=10")
        policy._watch("cam").level = 1                    # as after a tightening
        actions = []
        for seq in range(120):
            # each frame 0.45 from the one before: close at 0.5 (the level above), not at 0.25
            decision = policy.decide_prepared("cam", seq, e(0.45 * seq))
            actions.append("infer" if decision is None or decision.action == INFER else "reuse")
            if decision is None or decision.action == INFER:
                policy.feedback("cam", seq, {"decision": INFER, "count": count_of(seq)})
        outcomes[name] = policy, actions
    right, right_actions = outcomes["right"]
    assert right.check_stats.shadow_checked >= ReusePolicy.CHECK_WINDOW and right.check_stats.shadow_misses == 0
    assert right.check_stats.relaxed == 1 and right.threshold_of("cam") == right.threshold
    assert "reuse" in right_actions[60:]                 # back at the calibrated level, it reuses again
    wrong, wrong_actions = outcomes["wrong"]
    assert wrong.check_stats.shadow_misses > 0 and wrong.check_stats.relaxed == 0
    assert wrong.threshold_of("cam") < wrong.threshold and "reuse" not in wrong_actions
