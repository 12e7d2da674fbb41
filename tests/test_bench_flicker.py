"""bench/flicker.py: one-frame flickers of the count and the look-ahead bracket reference, on made-up counts."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.scripts import load_script


def load_bench():
    return load_script("bench/flicker.py")


def test_a_flicker_is_a_one_frame_change_that_comes_straight_back():
    bench = load_bench()
    counts = np.array([2, 2, 3, 2, 2, 4, 4, 2, 5])
    assert bench.flickers(counts).tolist() == [False, False, True, False, False, False, False, False, False]
    assert bench.smoothed(counts).tolist() == [2, 2, 2, 2, 2, 4, 4, 2, 5]
    assert not bench.flickers(np.array([1, 2])).any()


def test_the_bracket_answers_between_equal_ends_and_splits_where_they_differ():
    bench = load_bench()
    steady = np.full(100, 3)
    answers, inferred = bench.bracket(steady, 10)
    assert np.array_equal(answers, steady) and inferred.sum() == 11          # every 10th frame and the first
    step = np.r_[np.zeros(37, int), np.ones(63, int)]                        # one change, found by bisection
    answers, inferred = bench.bracket(step, 16)
    assert np.array_equal(answers, step) and inferred[36] and inferred[37]
    assert inferred.sum() < 20
    # a one-frame flicker between two equal ends is invisible to it: answered wrong
    flicker = np.full(50, 1)
    flicker[5] = 2
    answers, inferred = bench.bracket(flicker, 10)
    assert answers[5] == 1 and not inferred[5]
    with pytest.raises(ValueError):
        bench.bracket(steady, 0)


def test_clip_row_reports_the_ceilings_and_the_bracket_best_at_the_target():
    bench = load_bench()
    rng = np.random.default_rng(0)
    counts = np.full(1000, 2)
    counts[rng.choice(np.arange(1, 999), 100, replace=False)] = 3             # ~10 % one-frame flickers
    row = bench.clip_row("made-up", counts, 0.95)
    assert 0.08 <= row["flicker_share"] <= 0.1
    assert row["ceiling_smoothed"] == 1.0 and row["ceiling"] < 0.9
    assert row["bracket"]["filtered"] == 0.0 and row["bracket"]["best_stride"] is None   # no stride meets 0.95
    calm = bench.clip_row("calm", np.r_[np.zeros(500, int), np.ones(500, int)], 0.95)
    assert calm["flicker_share"] == 0 and calm["bracket"]["filtered"] > 0.9 and calm["bracket"]["best_stride"] == 64
