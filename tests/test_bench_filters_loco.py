"""apps/bench_filters.py --loco: folds, and Reuse variants compared on the same trained networks.

Training, calibration and evaluation are replaced by recorders here (each is tested on its own in
tests/models/); what is tested is the orchestration: one training per fold, every variant
calibrated and evaluated on its own copy with its own options, results kept per variant and
handed over after every fold.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.scripts import load_script


def load_bench():
    return load_script("apps/bench_filters.py")


def test_loco_trains_once_per_fold_and_keeps_each_reuse_variant_apart(tmp_path, monkeypatch):
    import models.calibrate
    import models.evaluate
    import models.train
    bench = load_bench()
    trained, calibrated, evaluated, partial = [], [], [], []

    def train(kind):
        def fake(clips, exclude, options, out, progress, say):
            trained.append((kind, tuple(exclude)))
            out.mkdir(parents=True)
            (out / "metadata.json").write_text(json.dumps({"kind": kind}))
        return fake

    def calibrate(directory, targets, reuse_options=""):
        calibrated.append((directory.name, reuse_options))
        (directory / "reuse" / "calibration.json").write_text(json.dumps({"options": reuse_options}))

    def evaluate(clips, filters, out, target, baselines, strides, progress, reuse_options=""):
        # the copy evaluated is the one calibrated with the same options
        assert json.loads((filters / "reuse" / "calibration.json").read_text())["options"] == reuse_options
        evaluated.append((filters.name, out.relative_to(tmp_path).as_posix(), reuse_options))
        share = 0.5 if reuse_options else 0.25
        return {"clips": [{"clip": clip.stem, "ceiling": 0.8,
                           "policies": {"cascade": {"best": {"fraction_of_ceiling": share, "filtered": share * 0.8},
                                                    "calibrated": {"agreement": 0.96, "filtered": share * 0.7,
                                                                   "fraction_of_ceiling": share * 0.9,
                                                                   "meets_target": True}}}} for clip in clips]}

    monkeypatch.setattr(models.train, "train_skip", train("skip"))
    monkeypatch.setattr(models.train, "train_reuse", train("reuse"))
    monkeypatch.setattr(models.calibrate, "calibrate_directory", calibrate)
    monkeypatch.setattr(models.evaluate, "evaluate_clips", evaluate)
    clips = [Path(f"{name}.mp4") for name in ("a", "b", "c")]
    result = bench.bench_loco(clips, 2, 0.95, None, tmp_path / "out", tmp_path / "work",
                              ["", "refer=agree"], on_fold=partial.append)

    assert trained == [("skip", ("a", "c")), ("reuse", ("a", "c")), ("skip", ("b",)), ("reuse", ("b",))]
    assert calibrated == [("fold0-default", ""), ("fold0-refer-agree", "refer=agree"),
                          ("fold1-default", ""), ("fold1-refer-agree", "refer=agree")]
    assert [out for _, out, _ in evaluated] == ["out/loco/default/fold0", "out/loco/refer-agree/fold0",
                                                "out/loco/default/fold1", "out/loco/refer-agree/fold1"]
    # The first variant is the headline; each variant keeps its own rows and summary.
    assert result["reuse_options"] == "" and result["mean_fraction_of_ceiling"] == pytest.approx(0.25)
    assert result["variants"]["refer=agree"]["mean_fraction_of_ceiling"] == pytest.approx(0.5)
    assert [row["clip"] for row in result["variants"]["refer=agree"]["clips"]] == ["a", "c", "b"]
    assert result["complete"] and [fold["held_out"] for fold in result["folds"]] == [["a", "c"], ["b"]]
    # After the first fold, what it finished was handed over, marked incomplete.
    assert len(partial) == 2 and not partial[0]["complete"] and len(partial[0]["clips"]) == 2
    assert "  Reuse refer=agree: mean 0.50, worst 0.50 (a)" in bench.verdict({"loco": result})


def test_one_variant_keeps_the_folders_and_keys_of_a_plain_loco_run(tmp_path, monkeypatch):
    import models.calibrate
    import models.evaluate
    import models.train
    bench = load_bench()
    outs = []

    def train(clips, exclude, options, out, progress, say):
        out.mkdir(parents=True)

    def evaluate(clips, filters, out, target, baselines, strides, progress, reuse_options=""):
        outs.append((filters.name, out.relative_to(tmp_path).as_posix()))
        return {"clips": [{"clip": clip.stem, "ceiling": 1.0,
                           "policies": {"cascade": {"best": {"fraction_of_ceiling": 0.7, "filtered": 0.7}}}}
                          for clip in clips]}

    monkeypatch.setattr(models.train, "train_skip", train)
    monkeypatch.setattr(models.train, "train_reuse", train)
    monkeypatch.setattr(models.calibrate, "calibrate_directory", lambda directory, targets, reuse_options="": None)
    monkeypatch.setattr(models.evaluate, "evaluate_clips", evaluate)
    result = bench.bench_loco([Path("a.mp4")], 5, 0.95, None, tmp_path / "out", tmp_path / "work")
    assert outs == [("fold0", "out/loco/fold0")] and "variants" not in result
    assert result["mean_fraction_of_ceiling"] == pytest.approx(0.7) and result["complete"]


def test_variant_names_make_safe_folder_names():
    bench = load_bench()
    assert [bench.variant_slug(v) for v in ("", "refer=agree", "refer=latest,k=3")] == \
        ["default", "refer-agree", "refer-latest-k-3"]
