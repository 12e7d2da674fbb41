"""Evaluation: curves, best point at the target, calibrated point, PNGs and the JSON table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.evaluate import Contender, evaluate_prepared, frontier, plot_clip, stride_contender, write_report
from models.simulate import PreparedClip
from tests.models.test_calibrate import ScoreReuser, ScoreSkipper, toy_clips

ROOT = Path(__file__).resolve().parents[2]


def contenders() -> list[Contender]:
    skip, reuse = ScoreSkipper(), ScoreReuser()
    grid = np.linspace(0, 1, 6)
    return [Contender.sweep("skip", [skip], [(t,) for t in grid], calibrated=(0.4,)),
            Contender.sweep("reuse", [reuse], [(t,) for t in grid], calibrated=(0.99,)),
            Contender.sweep("cascade", [skip, reuse], [(a, b) for a in grid for b in grid], calibrated=(0.4, 0.4)),
            stride_contender(range(1, 6))]


def test_a_clip_row_has_the_ceiling_the_best_point_at_the_target_and_the_calibrated_point():
    clip = toy_clips(clips=1)[0]
    row = evaluate_prepared(clip, contenders(), target=0.9)
    assert set(row) == {"clip", "frames", "ceiling", "repeat_share", "mean_count", "policies"}
    assert row["frames"] == 200 and 0 < row["ceiling"] <= 1
    assert set(row["policies"]) == {"skip", "reuse", "cascade", "stride"}
    for name, entry in row["policies"].items():
        best = entry["best"]
        assert best["agreement"] >= 0.9 and 0 <= best["filtered"] <= 1
        assert best["fraction_of_ceiling"] == pytest.approx(best["filtered"] / row["ceiling"], abs=1e-3)
        assert 0 <= best["count_accuracy"] <= 1
        # the best point is the curve's rightmost point at the target
        assert best["filtered"] == max(p["filtered"] for p in entry["curve"] if p["agreement"] >= 0.9)
    assert row["policies"]["stride"]["curve"][0]["at"] == 1          # stride:1 infers every frame
    calibrated = row["policies"]["reuse"]["calibrated"]               # reuses almost everything: misses
    assert calibrated["at"] == 0.99 and calibrated["meets_target"] is False
    assert "calibrated" not in row["policies"]["stride"]


def test_the_frontier_keeps_only_points_nothing_beats():
    points = [{"filtered": 0.1, "agreement": 0.99}, {"filtered": 0.2, "agreement": 0.98},
              {"filtered": 0.2, "agreement": 0.90}, {"filtered": 0.15, "agreement": 0.95}]
    assert [(p["filtered"], p["agreement"]) for p in frontier(points)] == [(0.1, 0.99), (0.2, 0.98)]


def test_the_report_writes_a_png_per_clip_a_summary_png_and_the_table(tmp_path):
    rows = []
    for clip in toy_clips(clips=2):
        row = evaluate_prepared(clip, contenders(), target=0.9)
        plot_clip(row, 0.9, tmp_path / f"{clip.name}.png")
        rows.append(row)
    table = write_report(rows, tmp_path, target=0.9, lag=2)
    for name in ("toy0.png", "toy1.png", "summary.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads((tmp_path / "evaluation.json").read_text())
    assert written == json.loads(json.dumps(table))
    assert set(written) == {"target", "lag", "part", "filters", "clips", "summary"}
    summary = written["summary"]
    cascade = summary["cascade"]
    assert {"mean_fraction_of_ceiling", "worst_fraction_of_ceiling", "worst_clip", "calibrated"} <= set(cascade)
    assert cascade["worst_clip"] in {"toy0", "toy1"}
    assert set(cascade["calibrated"]) >= {"mean_agreement", "worst_agreement", "worst_clip", "missed_target"}
    assert set(summary["cascade_not_ahead_of"]) == {"stride"}


def test_an_empty_clip_has_no_ceiling_to_compare_with():
    with pytest.raises(ValueError):
        evaluate_prepared(PreparedClip("empty", np.zeros(0, np.int64), np.zeros(0, np.int32)), contenders())


@pytest.mark.parametrize("argv, message", [
    (["--filters", "{tmp}/absent"], "expected a filter set"),
    (["--filters", "{fixture}", "--clips", "{tmp}/absent.mp4"], "no such clip"),
    (["--filters", "{fixture}", "--target", "1.5"], "--target"),
])
def test_the_command_refuses_missing_inputs(tmp_path, argv, message):
    fixture = tmp_path / "set"
    for kind in ("skip", "reuse"):
        (fixture / kind).mkdir(parents=True)
        (fixture / kind / "metadata.json").write_text("{}")
    args = [a.format(tmp=tmp_path, fixture=fixture) for a in argv]
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "filter", "evaluate", *args, "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2 and message in run.stderr, run.stderr
