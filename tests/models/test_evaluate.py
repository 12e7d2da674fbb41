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


def test_the_blind_reference_spends_the_budget_at_random_and_is_judged_like_the_others():
    from models.evaluate import blind_entry
    rng = np.random.default_rng(0)
    # A count that changes on about half the frames: blind reuse can afford about 0.05 / 0.5 of them.
    counts = (np.cumsum(rng.random(3000) < 0.5) % 4).astype(np.int32)
    clip = PreparedClip("made-up:test", np.arange(len(counts), dtype=np.int64), counts)
    entry = blind_entry(clip, target=0.95, seeds=4)
    best = entry["best"]
    assert 0.06 <= best["at"] <= 0.14 and 0.06 <= best["filtered"] <= 0.14 and best["agreement"] >= 0.95
    assert best["worst_draw_agreement"] <= best["agreement"]
    assert best["fraction_of_ceiling"] == pytest.approx(best["filtered"] / (0.5 + 0.05), abs=0.03)
    # A steady count: reusing costs nothing, so the blind policy reuses nearly everything.
    steady = PreparedClip("steady:test", np.arange(1000, dtype=np.int64), np.full(1000, 2, np.int32))
    assert blind_entry(steady, target=0.95, seeds=2)["best"]["filtered"] > 0.9


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
    versus = summary["cascade_vs_baselines"]
    assert set(versus) == {"stride"} and set(versus["stride"]) == {"behind", "tied", "ahead"}
    assert len(versus["stride"]["behind"]) + len(versus["stride"]["tied"]) + versus["stride"]["ahead"] == 2


def test_an_empty_clip_has_no_ceiling_to_compare_with():
    with pytest.raises(ValueError):
        evaluate_prepared(PreparedClip("empty", np.zeros(0, np.int64), np.zeros(0, np.int32)), contenders())


@pytest.mark.parametrize("argv, message", [
    (["--filters", "{tmp}/absent"], "expected a filter set"),
    (["--filters", "{fixture}", "--clips", "{tmp}/absent.mp4"], "no such clip"),
    (["--filters", "{fixture}", "--target", "1.5"], "--target"),
    (["--filters", "{fixture}", "--reuse-options", "refer=oldest"], "nearest|latest|agree"),
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


def tiny_clip(tmp_path: Path, frames: int = 40, size: int = 64) -> tuple[Path, Path]:
    """A short video (a bright square comes and goes) and its label file, as `filter label` writes it."""
    import av

    from models.labels import DetectorSettings, label_path
    clip = tmp_path / "tiny.mp4"
    counts = [(seq // 6) % 2 for seq in range(frames)]
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for seq, count in enumerate(counts):
            image = np.full((size, size, 3), 40, np.uint8)
            if count:
                image[10:30, 10 + seq % 6:30 + seq % 6] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    labels = label_path(clip, DetectorSettings(), tmp_path / "labels")
    labels.parent.mkdir()
    with labels.open("w") as out:
        for seq, count in enumerate(counts):
            out.write(json.dumps({"seq": seq, "pts": seq / 10, "boxes": [[10, 10, 30, 30]] * count,
                                  "classes": [2] * count, "scores": [0.9] * count}) + "\n")
        out.write(json.dumps({"end": True, "frames": frames, "labelled": frames, "source": {}}) + "\n")
    return clip, labels.parent


def test_a_reuse_variant_is_calibrated_and_evaluated_with_its_own_options(tmp_path, monkeypatch):
    """`refer=agree` calibrated on a copy of the set: its options are recorded with its
    thresholds, and evaluating the set with other options than it was calibrated with is refused."""
    from models.calibrate import calibrate_directory
    from models.evaluate import check_filters, evaluate_clips
    from pipeline.errors import ConfigError
    from tests.models.fixtures import make_filter_dir
    filters = tmp_path / "set"
    make_filter_dir(filters, "skip", threshold=None)
    make_filter_dir(filters, "reuse", threshold=None)
    clip, label_dir = tiny_clip(tmp_path)
    monkeypatch.setenv("INFI_CACHE", str(tmp_path / "cache"))
    calibrate_directory(filters, targets=[0.5], clips=[clip], label_dir=label_dir, reuse_options="refer=agree")
    assert json.loads((filters / "reuse" / "calibration.json").read_text())["options"] == "refer=agree"
    assert json.loads((filters / "cascade.json").read_text())["reuse_options"] == "refer=agree"
    assert "options" not in json.loads((filters / "skip" / "calibration.json").read_text())
    with pytest.raises(ConfigError, match="calibrated with Reuse options 'refer=agree', not '\\(none\\)'"):
        evaluate_clips([clip], filters, tmp_path / "out", target=0.5, label_dir=label_dir, progress=False)
    table = evaluate_clips([clip], filters, tmp_path / "out", target=0.5, baselines=False, strides=(),
                           label_dir=label_dir, progress=False, reuse_options="refer=agree")
    assert table["clips"][0]["frames"] == 20 and set(table["clips"][0]["policies"]) == {"skip", "reuse", "cascade"}
    # Reuse's self-check runs on thresholds calibrated without it, at any N (or off); a set
    # calibrated with it runs with the same N (the default one when none is named), never without
    for options in ("check=10,refer=agree", "refer=agree,check=0"):
        table = evaluate_clips([clip], filters, tmp_path / "out", target=0.5, baselines=False, strides=(),
                               label_dir=label_dir, progress=False, reuse_options=options)
        assert table["clips"][0]["frames"] == 20
    calibrate_directory(filters, targets=[0.5], clips=[clip], label_dir=label_dir, reuse_options="check=20")
    check_filters(filters, "")                     # 20 is the default check
    for options in ("check=0", "check=10"):
        with pytest.raises(ConfigError, match=f"calibrated with Reuse options 'check=20', not '{options}'"):
            evaluate_clips([clip], filters, tmp_path / "out", target=0.5, label_dir=label_dir, progress=False,
                           reuse_options=options)


def test_calibrate_then_evaluate_a_filter_set_end_to_end(tmp_path, monkeypatch):
    """The real Skip and Reuse policies (untrained fixture networks) on a generated clip:
    calibration writes both files in the documented format, evaluation its table and PNGs."""
    from models.calibrate import calibrate_directory, calibrate_specs
    from models.evaluate import evaluate_clips
    from tests.models.fixtures import make_filter_dir
    filters = tmp_path / "set"
    make_filter_dir(filters, "skip", threshold=None)
    make_filter_dir(filters, "reuse", threshold=None)
    clip, label_dir = tiny_clip(tmp_path)
    monkeypatch.setenv("INFI_CACHE", str(tmp_path / "cache"))        # the shrunk-frame cache
    written = calibrate_directory(filters, targets=[0.5, 0.95], clips=[clip], label_dir=label_dir)
    assert set(written) == {str(filters / "skip"), str(filters / "reuse"), "cascade"}
    cascade = json.loads((filters / "cascade.json").read_text())
    assert cascade["format"] == 1 and cascade["order"] == ["skip", "reuse"]
    for target, entry in cascade["targets"].items():
        assert {"skip", "reuse", "validation"} <= set(entry)
        assert entry["validation"]["agreement"] >= float(target)
    skip = json.loads((filters / "skip" / "calibration.json").read_text())
    assert skip["metric"] == "count-agreement" and set(skip["targets"]) | set(skip["unmet"]) == {"0.5", "0.95"}
    assert skip["data"] == [{"clip": "tiny:val", "frames": 4, "warmup": 16}]    # the training part warms up

    baselines = calibrate_specs(["framediff"], [clip], targets=[0.5], label_dir=label_dir)
    framediff = baselines["framediff"]["targets"]["0.5"]
    assert framediff["validation"]["agreement"] >= 0.5

    table = evaluate_clips([clip], filters, tmp_path / "out", target=0.5, strides=range(1, 4),
                           label_dir=label_dir, progress=False, baseline_thresholds={"framediff": framediff["threshold"]})
    assert (tmp_path / "out" / "tiny.png").is_file() and (tmp_path / "out" / "summary.png").is_file()
    row = table["clips"][0]
    assert row["clip"] == "tiny" and row["frames"] == 20
    assert set(row["policies"]) == {"skip", "reuse", "cascade", "framediff", "motion", "stride", "blind"}
    blind = row["policies"]["blind"]
    assert blind["best"]["agreement"] >= 0.5 and "calibrated" not in blind and "looks at no frame" in blind["note"]
    assert set(table["summary"]["cascade_vs_blind"]) == {"behind", "tied", "ahead"}
    assert "blind" not in table["summary"]["cascade_vs_baselines"]     # a reference, not a baseline
    assert "calibrated" in row["policies"]["cascade"] or "0.5" not in cascade["targets"]
    assert row["policies"]["framediff"]["calibrated"]["at"] == pytest.approx(framediff["threshold"])
    assert "calibrated" not in row["policies"]["motion"]
