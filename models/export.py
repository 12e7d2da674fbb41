"""Trained Keras filters -> the filter directory the runtime loads without TensorFlow.

The directory (the contract in docs/filters.md; models/filterdir.py reads it):

    metadata.json  what the filter is: kind, input size, task and rule, training data and metrics
    model.tflite   float32, input [1, S, S, 3] raw BGR pixels 0..255; skip -> [1, 1] P(needed),
                   reuse -> [1, E] embedding
    head.npz       reuse only: the distance head as numpy arrays w1 [E, H], b1 [H], w2 [H, 1], b2 [1]
                   (w1 and b1 absent when H = 0), applied to |e1 - e2|

Conversion is checked, not trusted: `check_tflite` runs the converted model through the LiteRT
interpreter the runtime uses and asserts its outputs equal Keras's on real frames.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

METADATA_FORMAT = 1
FILES = ("metadata.json", "model.tflite", "head.npz")


def to_tflite(model: Any, size: int) -> bytes:
    """A float32 TFLite model with a fixed input [1, size, size, 3] (batch of one, as live)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="pixels")])
    def serve(pixels):
        return model(pixels, training=False)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    return converter.convert()


def interpreter(tflite: bytes, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=tflite, num_threads=threads)
    runner.allocate_tensors()
    return runner


def run_tflite(tflite: bytes, frames: np.ndarray) -> np.ndarray:
    """The TFLite model's output for each frame (one invoke per frame, as the runtime does)."""
    runner = interpreter(tflite)
    inp, out = runner.get_input_details()[0], runner.get_output_details()[0]
    results = []
    for frame in frames:
        runner.set_tensor(inp["index"], np.asarray(frame, np.float32)[None])
        runner.invoke()
        results.append(runner.get_tensor(out["index"])[0].copy())
    return np.stack(results)


def check_tflite(tflite: bytes, model: Any, frames: np.ndarray, atol: float = 1e-4) -> float:
    """Assert that TFLite and Keras agree on `frames` (uint8 or float [N, S, S, 3]); the largest gap."""
    expected = np.asarray(model(np.asarray(frames, np.float32), training=False))
    got = run_tflite(tflite, frames)
    if got.shape != expected.shape:
        raise AssertionError(f"TFLite output shape {got.shape} != Keras output shape {expected.shape}")
    gap = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not np.allclose(got, expected, atol=atol, rtol=1e-3):
        raise AssertionError(f"TFLite output differs from Keras's by up to {gap:.3g} (> {atol}): conversion broke the model")
    return gap


def invoke_ms(tflite: bytes, size: int, repeats: int = 300, threads: int = 1, seed: int = 0) -> dict[str, float]:
    """Time one invoke (set input + invoke + read output) of the model, single-threaded by default:
    median and 90th percentile in ms over `repeats` invokes after a warm-up."""
    runner = interpreter(tflite, threads)
    inp, out = runner.get_input_details()[0], runner.get_output_details()[0]
    frames = np.random.default_rng(seed).integers(0, 256, (16, 1, size, size, 3)).astype(np.float32)
    for frame in frames:
        runner.set_tensor(inp["index"], frame)
        runner.invoke()
    times = []
    for index in range(repeats):
        start = time.perf_counter()
        runner.set_tensor(inp["index"], frames[index % len(frames)])
        runner.invoke()
        runner.get_tensor(out["index"])
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "repeats": repeats,
            "threads": threads}


def head_arrays(dense_layers: list) -> dict[str, np.ndarray]:
    """The reuse distance head's weights as the runtime applies them: w1, b1 (when hidden), w2, b2."""
    arrays: dict[str, np.ndarray] = {}
    if len(dense_layers) == 2:
        w1, b1 = dense_layers[0].get_weights()
        arrays.update(w1=w1.astype(np.float32), b1=b1.astype(np.float32))
    w2, b2 = dense_layers[-1].get_weights()
    arrays.update(w2=w2.astype(np.float32), b2=b2.astype(np.float32))
    return arrays


def head_numpy(arrays: dict[str, np.ndarray], gap: np.ndarray) -> np.ndarray:
    """p_differ for |e1 - e2| rows `gap`, as the contract defines it (what the runtime computes)."""
    x = gap
    if "w1" in arrays:
        x = np.maximum(x @ arrays["w1"] + arrays["b1"], 0.0)
    logit = x @ arrays["w2"] + arrays["b2"]
    return 1.0 / (1.0 + np.exp(-logit))


#: The files whose changes change a trained filter (a commit with other files edited is still exact).
TRAINING_CODE = ("models/dataset.py", "models/features.py", "models/train.py", "models/export.py",
                 "models/frames.py", "models/labels.py")


def git_commit(repo: Path | None = None, code: tuple[str, ...] = TRAINING_CODE) -> str:
    """The checkout's commit ("-dirty" when the training `code` differs from it), or "unknown"."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *code], cwd=repo).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def write_filter_dir(out: Path, kind: str, tflite: bytes, metadata: dict[str, Any],
                     head: dict[str, np.ndarray] | None = None) -> Path:
    """Write the directory; files are replaced whole (a stale calibration.json is removed: it
    belonged to the previous model)."""
    if kind not in ("skip", "reuse"):
        raise ValueError(f"kind must be 'skip' or 'reuse', got {kind!r}")
    if (kind == "reuse") != (head is not None):
        raise ValueError("a reuse filter needs its head arrays; a skip filter has none")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": METADATA_FORMAT, "kind": kind, **metadata,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _replace(out / "model.tflite", tflite)
    if head is not None:
        partial = out / "head.partial.npz"
        np.savez(partial, **head)
        os.replace(partial, out / "head.npz")
    elif (out / "head.npz").exists():
        (out / "head.npz").unlink()
    stale = out / "calibration.json"
    if stale.exists():
        stale.unlink()
    _replace(out / "metadata.json", (json.dumps(meta, indent=1, sort_keys=False) + "\n").encode())
    return out


def _replace(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
