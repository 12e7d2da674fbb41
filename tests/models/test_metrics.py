"""Filter metrics on hand-made counts: what each number means, edge cases included."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics import (CurvePoint, agreement, ceiling, count_accuracy, filtering_rate,
                            fraction_of_ceiling, rate_at_target, repeat_share)


@pytest.mark.parametrize("answers, truth, expected", [
    ([1, 2, 3, 4], [1, 2, 3, 4], 1.0),
    ([1, 2, 0, 4], [1, 2, 3, 5], 0.5),
    ([0, 0], [0, 0], 1.0),
    (np.array([3], np.int32), np.array([2], np.int64), 0.0),
])
def test_agreement_is_the_share_of_exact_counts(answers, truth, expected):
    assert agreement(answers, truth) == pytest.approx(expected)


@pytest.mark.parametrize("answers, truth, expected", [
    ([0, 0, 0], [0, 0, 0], 1.0),               # both zero: right
    ([0], [3], 0.0),                            # nothing against something: wrong
    ([4], [0], 0.0),
    ([3, 4], [4, 4], (0.75 + 1.0) / 2),         # 1 - 1/4
    ([10, 0], [8, 0], (0.8 + 1.0) / 2),         # 1 - 2/10
])
def test_count_accuracy_is_reductos(answers, truth, expected):
    assert count_accuracy(answers, truth) == pytest.approx(expected)


@pytest.mark.parametrize("counts, budget, expected_repeat, expected_ceiling", [
    ([2, 2, 2, 2], 0.05, 0.75, 0.80),          # the first frame never repeats
    ([0] * 100, 0.05, 0.99, 1.0),              # capped at 1
    ([1, 2, 3, 4, 5], 0.05, 0.0, 0.05),        # every frame changes: only the budget
    ([1, 1, 2, 2], 0.10, 0.5, 0.6),
    ([7], 0.05, 0.0, 0.05),
])
def test_ceiling_is_the_repeat_share_plus_the_budget(counts, budget, expected_repeat, expected_ceiling):
    assert repeat_share(counts) == pytest.approx(expected_repeat)
    assert ceiling(counts, budget) == pytest.approx(expected_ceiling)


def test_filtering_rate_counts_what_the_model_did_not_see():
    assert filtering_rate(["infer", "skip", "reuse", "exit"]) == pytest.approx(0.75)
    assert filtering_rate(["infer", "unanswered"]) == 0.0
    assert filtering_rate(np.array(["reuse", "reuse"])) == 1.0
    with pytest.raises(ValueError, match="must be among"):
        filtering_rate(["infer", "maybe"])


def test_rate_at_target_takes_the_best_point_that_meets_it():
    points = [CurvePoint(1.0, 0.0, 0.0), CurvePoint(0.97, 0.4, 0.1), CurvePoint(0.95, 0.5, 0.2),
              CurvePoint(0.90, 0.8, 0.3)]
    assert rate_at_target(points, 0.95) == pytest.approx(0.5)
    assert rate_at_target(points, 0.96) == pytest.approx(0.4)
    assert rate_at_target([(0.9, 0.3), (0.99, 0.2)], 0.95) == pytest.approx(0.2)   # plain pairs, any order
    assert rate_at_target([(0.9, 0.3)], 0.95) == 0.0                              # none meets it
    assert rate_at_target([], 0.95) == 0.0


def test_fraction_of_ceiling():
    assert fraction_of_ceiling(0.4, 0.8) == pytest.approx(0.5)
    assert fraction_of_ceiling(0.9, 0.8) > 1              # not clipped
    with pytest.raises(ValueError, match="ceiling must be > 0"):
        fraction_of_ceiling(0.1, 0.0)


@pytest.mark.parametrize("call, message", [
    (lambda: agreement([], []), "empty"),
    (lambda: count_accuracy([], []), "empty"),
    (lambda: ceiling([]), "empty"),
    (lambda: filtering_rate([]), "empty"),
    (lambda: agreement([1, 2], [1]), "same frames"),
    (lambda: count_accuracy([-1], [1]), ">= 0"),
    (lambda: agreement([[1]], [[1]]), "1-D"),
    (lambda: ceiling([1, 2], budget=2), "budget"),
])
def test_bad_inputs_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
