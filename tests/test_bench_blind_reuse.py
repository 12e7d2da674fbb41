"""bench/blind_reuse.py: the blind reference replayed like every other policy, on made-up counts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.baselines.blind import BlindReuse
from models.simulate import PreparedClip, replay
from tests.helpers.scripts import load_script


def load_bench():
    return load_script("bench/blind_reuse.py")


def clip_of(counts) -> PreparedClip:
    counts = np.asarray(counts, np.int32)
    return PreparedClip("made-up:test", np.arange(len(counts), dtype=np.int64), counts)


def test_blind_reuse_reuses_about_its_share_and_answers_with_the_last_inferred_count():
    steady = clip_of([3] * 2000)
    run = replay([BlindReuse(0.3, seed=1)], steady)
    assert run.filtered == pytest.approx(0.3, abs=0.04) and run.agreement(steady.truth) == 1.0
    assert set(run.ref_seq[run.ref_seq >= 0] - run.seq[run.ref_seq >= 0]) <= set(range(-40, 0))
    assert replay([BlindReuse(0.0, seed=1)], steady).filtered == 0.0
    # A count that grows on every frame: each reused frame is wrong, so agreement = 1 - filtered.
    flipping = clip_of(np.arange(2000))
    run = replay([BlindReuse(0.2, seed=2)], flipping)
    assert run.agreement(flipping.truth) == pytest.approx(1 - run.filtered, abs=1e-9) and run.filtered > 0.15
    # The same seed, the same draws: a rerun of the bench gives the same table.
    again = replay([BlindReuse(0.2, seed=2)], flipping)
    assert np.array_equal(run.action, again.action)


def test_blind_on_clip_finds_the_largest_share_meeting_the_target():
    bench = load_bench()
    rng = np.random.default_rng(0)
    # A count that changes on about half the frames: blind reuse can afford about 0.05 / 0.5.
    counts = np.cumsum(rng.random(3000) < 0.5) % 4
    row = bench.blind_on_clip(clip_of(counts), target=0.95, seeds=4)
    assert 0.06 <= row["blind"]["share"] <= 0.14 and row["blind"]["agreement"] >= 0.95
    assert row["ceiling"] == pytest.approx(row["repeat_share"] + 0.05, abs=1e-3)
    assert 0 < row["blind"]["fraction_of_ceiling"] < 0.3
    # No budget to spend: nothing reused, and no ceiling to be a fraction of.
    row = bench.blind_on_clip(clip_of(np.arange(500)), target=1.0, seeds=2)
    assert row["blind"]["filtered"] == 0.0 and row["ceiling"] == 0.0 and row["blind"]["fraction_of_ceiling"] is None


def test_compare_reads_the_cascade_from_a_bench_filters_table(tmp_path):
    bench = load_bench()
    table = {"evaluation": {"clips": [{"clip": "a", "policies": {
        "cascade": {"best": {"filtered": 0.2, "fraction_of_ceiling": 0.4}},
        "framediff": {"best": {"filtered": 0.1, "fraction_of_ceiling": 0.2}}}}]}}
    path = tmp_path / "filters.json"
    path.write_text(json.dumps(table))
    rows = [{"clip": "a", "blind": {"fraction_of_ceiling": 0.3}}, {"clip": "b", "blind": {"fraction_of_ceiling": 0.1}}]
    bench.compare(rows, path)
    assert rows[0]["cascade"]["fraction_of_ceiling"] == 0.4 and rows[0]["framediff"]["filtered"] == 0.1
    assert "cascade" not in rows[1]
