"""Tiny trained-filter directories for tests, in the layout of the real ones (docs/filters.md):
metadata.json, model.tflite (float32, input [1,S,S,3] raw BGR pixels 0..255), head.npz (reuse)
and calibration.json.

The networks are untrained (fixed random weights, a seed), a few hundred parameters: tests of
the runtime need the file formats and deterministic outputs, not accuracy. TensorFlow is needed
only to convert a model the first time; the .tflite bytes are then kept under the project's cache
directory, keyed by this file's content and the TensorFlow version, so later test runs load no
TensorFlow at all.

    make_filter_dir(tmp_path, "skip")                       # calibrated: target 0.95 -> 0.5
    make_filter_dir(tmp_path, "reuse", size=64, embedding=16, threshold=0.3)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from pipeline.assets import cache_dir

#: What the fixture head adds per unit of |e1 - e2| summed, and its bias: identical embeddings
#: are p_differ = sigmoid(-3) ~ 0.047 apart, and the distance grows with the difference.
HEAD_SCALE, HEAD_BIAS = 4.0, -3.0


def make_filter_dir(tmp_path: Path, kind: str, size: int = 32, embedding: int = 8, *,
                    threshold: float | None = 0.5, target: float = 0.95, hidden: int = 0,
                    name: str | None = None, seed: int = 0) -> Path:
    """A filter directory under `tmp_path` (named `name`, default the kind). `threshold=None`
    writes no calibration.json. `hidden` is the reuse head's hidden width (0: no w1/b1)."""
    if kind not in ("skip", "reuse"):
        raise ValueError(f"kind must be skip or reuse, got {kind!r}")
    directory = Path(tmp_path) / (name or kind)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.tflite").write_bytes(tflite_bytes(kind, size, embedding, seed))
    metadata = {"format": 1, "kind": kind, "input_size": size, "task": "vehicles",
                "rule": "empty" if kind == "skip" else "same-count", "classes": [2, 3, 5, 7],
                "params": 0, "trained_on": ["fixture"], "split": "none (untrained fixture)", "epochs": 0,
                "commit": "fixture", "created": "2026-01-01T00:00:00Z", "training": {}}
    if kind == "reuse":
        metadata["embedding"] = embedding
        np.savez(directory / "head.npz", **fixture_head(embedding, hidden))
    (directory / "metadata.json").write_text(json.dumps(metadata, indent=1))
    if threshold is not None:
        write_calibration(directory, {target: threshold})
    return directory


def write_calibration(directory: Path, thresholds: dict[float, float]) -> None:
    """calibration.json with one entry per target (validation figures are placeholders)."""
    targets = {f"{target:g}": {"threshold": threshold,
                               "validation": {"agreement": target, "filtered": 0.5, "frames": 100}}
               for target, threshold in thresholds.items()}
    (Path(directory) / "calibration.json").write_text(json.dumps(
        {"format": 1, "metric": "count-agreement", "targets": targets, "data": ["fixture"], "commit": "fixture"}))


def fixture_head(embedding: int, hidden: int = 0) -> dict[str, np.ndarray]:
    """head.npz arrays: p_differ grows with sum |e1 - e2| (through a ReLU layer when hidden > 0)."""
    if hidden == 0:
        return {"w2": np.full((embedding, 1), HEAD_SCALE, np.float32), "b2": np.array([HEAD_BIAS], np.float32)}
    # Each hidden unit sums the differences (ReLU of a non-negative sum: the identity), the output
    # sums the units: the same distance as without the layer.
    return {"w1": np.full((embedding, hidden), 1.0, np.float32), "b1": np.zeros(hidden, np.float32),
            "w2": np.full((hidden, 1), HEAD_SCALE / hidden, np.float32), "b2": np.array([HEAD_BIAS], np.float32)}


_converted: dict[str, bytes] = {}


def tflite_bytes(kind: str, size: int, embedding: int = 8, seed: int = 0) -> bytes:
    """The converted model, from the cache when this file and TensorFlow's version made it before."""
    source = Path(__file__).read_bytes()
    version = _tensorflow_version()
    key = hashlib.sha256(source + f"{kind}/{size}/{embedding}/{seed}/{version}".encode()).hexdigest()[:16]
    if key in _converted:                      # a test that points INFI_CACHE elsewhere converts nothing
        return _converted[key]
    cached = cache_dir() / "filter-fixtures" / f"{kind}-{size}-{embedding}-{key}.tflite"
    if cached.is_file():
        _converted[key] = cached.read_bytes()
        return _converted[key]
    content = _converted[key] = _convert(kind, size, embedding, seed)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(content)
    partial.replace(cached)           # atomic: parallel test runs never read half a file
    return content


def _tensorflow_version() -> str:
    """The installed TensorFlow's version, read from its metadata (importing it costs seconds)."""
    from importlib import metadata
    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "none"


def _convert(kind: str, size: int, embedding: int, seed: int) -> bytes:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(2)
    except RuntimeError:
        pass    # TensorFlow already ran in this process (another test trained a tiny network): keep it
    tf.keras.utils.set_random_seed(seed)
    layers = tf.keras.layers
    inputs = tf.keras.Input((size, size, 3), batch_size=1, dtype=tf.float32)
    x = layers.Rescaling(1 / 255)(inputs)                          # normalisation inside the model
    # A 4x4 grid of mean colours carries the frame's differences into the output (linearly, so
    # different frames give clearly different outputs); a small convolutional branch costs about
    # what a real feature network's first layers cost.
    grid = layers.Flatten()(layers.AveragePooling2D(size // 4)(x))
    conv = layers.SeparableConv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    conv = layers.SeparableConv2D(16, 3, strides=2, padding="same", activation="relu")(conv)
    x = layers.Concatenate()([grid, layers.GlobalAveragePooling2D()(conv)])
    spread = tf.keras.initializers.RandomNormal(stddev=1.0, seed=seed)
    if kind == "skip":
        outputs = layers.Dense(1, activation="sigmoid", kernel_initializer=spread)(x)
    else:
        outputs = layers.Dense(embedding, kernel_initializer=spread)(x)
    model = tf.keras.Model(inputs, outputs)
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def read_frames(path: Path, count: int, start: int = 0) -> list[np.ndarray]:
    """`count` decoded BGR frames of the clip at `path`, from frame `start` on."""
    import cv2
    capture = cv2.VideoCapture(str(path))
    try:
        frames = []
        for index in range(start + count):
            ok, frame = capture.read()
            if not ok:
                raise ValueError(f"{path}: only {index} frames, {start + count} wanted")
            if index >= start:
                frames.append(frame)
        return frames
    finally:
        capture.release()
