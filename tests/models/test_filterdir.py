"""A trained filter directory is checked before anything runs: every bad file is named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models import filterdir
from models.filterdir import DistanceHead, cascade_thresholds, open_filter_dir, shipped_dir
from models.lite import LiteModel, check_model_file
from pipeline.errors import ConfigError
from tests.models.fixtures import fixture_head, make_filter_dir, write_calibration


def edit_metadata(directory, **changes):
    path = directory / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata.update(changes)
    path.write_text(json.dumps(metadata))


def test_a_good_directory_opens_with_its_calibrated_thresholds(tmp_path):
    directory = make_filter_dir(tmp_path, "reuse", size=32, embedding=8, threshold=0.3)
    write_calibration(directory, {0.95: 0.3, 0.9: 0.45})
    found = open_filter_dir(directory)
    assert (found.kind, found.input_size, found.embedding, found.outputs) == ("reuse", 32, 8, 8)
    assert found.threshold_for() == 0.3 and found.threshold_for(0.9) == 0.45
    with pytest.raises(ConfigError, match=r"no threshold for target 0.8 \(it has: 0.9, 0.95\)"):
        found.threshold_for(0.8)
    assert found.load_head().embedding == 8


def test_an_uncalibrated_directory_says_how_to_get_a_threshold(tmp_path):
    found = open_filter_dir(make_filter_dir(tmp_path, "skip", threshold=None))
    with pytest.raises(ConfigError, match="not calibrated.*threshold="):
        found.threshold_for(0.95)


BROKEN = {
    # what is done to a good skip (or reuse) directory -> the error it gets
    "no metadata": (lambda d: (d / "metadata.json").unlink(), "filter metadata .*metadata.json not found"),
    "corrupt metadata": (lambda d: (d / "metadata.json").write_text("{nope"), "metadata.json: not a readable JSON"),
    "metadata a list": (lambda d: (d / "metadata.json").write_text("[]"), "expected a JSON object"),
    "other format": (lambda d: edit_metadata(d, format=2), '"format": 1, got 2'),
    "unknown kind": (lambda d: edit_metadata(d, kind="teleport"), '"kind" must be one of skip, reuse'),
    "size not a number": (lambda d: edit_metadata(d, input_size="32"), '"input_size" must be a whole number'),
    "other input size": (lambda d: edit_metadata(d, input_size=48),
                         r"filter trained for 48x48 input \(metadata.json\), the model file .*model.tflite "
                         r"says \[1, 32, 32, 3\] float32"),
    "no model": (lambda d: (d / "model.tflite").unlink(), "filter model .*model.tflite not found"),
    "corrupt model": (lambda d: (d / "model.tflite").write_bytes(b"not a flatbuffer" * 8),
                      "model.tflite: not a model the LiteRT interpreter can load"),
    "corrupt calibration": (lambda d: (d / "calibration.json").write_text("{"), "calibration.json: not a readable JSON"),
    "threshold not a number": (lambda d: (d / "calibration.json").write_text(json.dumps(
        {"format": 1, "targets": {"0.95": {"threshold": "low"}}})), "target 0.95 needs a number for threshold"),
    "target not a number": (lambda d: (d / "calibration.json").write_text(json.dumps(
        {"format": 1, "targets": {"high": {"threshold": 0.1}}})), "target 'high' is not a number"),
}

BROKEN_REUSE = {
    "no embedding": (lambda d: edit_metadata(d, embedding=None), 'a reuse filter needs "embedding"'),
    "other embedding": (lambda d: edit_metadata(d, embedding=12), "expected 12 outputs per frame .* gives 8"),
    "no head": (lambda d: (d / "head.npz").unlink(), "reuse filter head .*head.npz not found"),
    "corrupt head": (lambda d: (d / "head.npz").write_bytes(b"garbage"), "head.npz: not a readable .npz"),
    "head missing w2": (lambda d: np.savez(d / "head.npz", b2=np.zeros(1)), r"expected arrays .* found \['b2'\]"),
    "head of another width": (lambda d: np.savez(d / "head.npz", **fixture_head(5)), "with E = 8"),
    "head w1 without b1": (lambda d: np.savez(d / "head.npz", w1=np.ones((8, 2)), w2=np.ones((2, 1)), b2=np.zeros(1)),
                           "expected arrays"),
    "head not finite": (lambda d: np.savez(d / "head.npz", w2=np.full((8, 1), np.nan), b2=np.zeros(1)),
                        "not all finite"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_skip_directory_is_refused_naming_the_file(tmp_path, case):
    breaks, message = BROKEN[case]
    directory = make_filter_dir(tmp_path, "skip", size=32)
    breaks(directory)
    with pytest.raises(ConfigError, match=message):
        open_filter_dir(directory)


@pytest.mark.parametrize("case", sorted(BROKEN_REUSE))
def test_a_broken_reuse_directory_is_refused_naming_the_file(tmp_path, case):
    breaks, message = BROKEN_REUSE[case]
    directory = make_filter_dir(tmp_path, "reuse", size=32, embedding=8)
    breaks(directory)
    with pytest.raises(ConfigError, match=message):
        open_filter_dir(directory)


def test_missing_or_wrong_directories(tmp_path):
    with pytest.raises(ConfigError, match="filter directory .*nowhere not found"):
        open_filter_dir(tmp_path / "nowhere")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is not a filter directory"):
        open_filter_dir(tmp_path / "file")
    with pytest.raises(ConfigError, match="holds a skip filter, not a reuse filter"):
        open_filter_dir(make_filter_dir(tmp_path, "skip"), "reuse")


def test_the_model_file_is_checked_against_the_size_it_is_asked_for(tmp_path):
    model = make_filter_dir(tmp_path, "skip", size=32) / "model.tflite"
    assert check_model_file(model, 32, 1).input_shape == (1, 32, 32, 3)
    with pytest.raises(ConfigError, match=r"filter trained for 64x64 input .* says \[1, 32, 32, 3\]"):
        check_model_file(model, 64)
    lite = LiteModel(model, 32, 1)
    with pytest.raises(RuntimeError, match="open"):
        lite.run(np.zeros((32, 32, 3), np.uint8))
    with lite:
        with pytest.raises(ValueError, match="takes 32x32x3 images"):
            lite.run(np.zeros((64, 64, 3), np.uint8))
        batch = lite.run_batch(np.zeros((3, 32, 32, 3), np.uint8))
        assert batch.shape == (3, 1) and np.allclose(batch, batch[0])


@pytest.mark.parametrize("hidden", [0, 3])
def test_the_distance_head_is_the_contract_formula(tmp_path, hidden):
    np.savez(tmp_path / "head.npz", **fixture_head(4, hidden))
    head = DistanceHead.load(tmp_path / "head.npz", 4)
    differences = np.array([[0, 0, 0, 0], [0.25, 0, 0, 0], [1, 1, 1, 1]], np.float32)
    # Both fixture heads compute sigmoid(4 * sum |d| - 3).
    expected = 1 / (1 + np.exp(-(4 * differences.sum(axis=1) - 3)))
    assert np.allclose(head.p_differ(differences), expected, atol=1e-6)


def test_shipped_filters_and_cascade_thresholds(tmp_path, monkeypatch):
    monkeypatch.setattr(filterdir, "SHIPPED", tmp_path)
    with pytest.raises(ConfigError, match="no shipped skip filter .*run `make train`"):
        shipped_dir("skip")
    with pytest.raises(ConfigError, match="no shipped cascade thresholds .*run `make train`"):
        cascade_thresholds()
    made = make_filter_dir(tmp_path, "skip")
    assert shipped_dir("skip") == made
    (tmp_path / "cascade.json").write_text(json.dumps(
        {"format": 1, "targets": {"0.95": {"skip": 0.2, "reuse": 0.3, "validation": {}}}}))
    assert cascade_thresholds(0.95) == (0.2, 0.3)
    with pytest.raises(ConfigError, match="no threshold for target 0.9 "):
        cascade_thresholds(0.9)
    (tmp_path / "cascade.json").write_text(json.dumps({"format": 1, "targets": {"0.95": {"skip": 0.2}}}))
    with pytest.raises(ConfigError, match="needs a number for reuse"):
        cascade_thresholds(0.95)
