"""A trained filter on disk: one directory, checked before anything runs.

    <dir>/metadata.json     {"format": 1, "kind": "skip"|"reuse", "input_size": S, "embedding": E
                             (reuse), "task", "rule", "classes", "trained_on", "commit", ...}
    <dir>/model.tflite      input [1, S, S, 3] float32 raw BGR pixels; output [1, 1] P(model
                            needed) for skip, [1, E] the embedding for reuse (models/lite.py)
    <dir>/head.npz          reuse: the learned distance on |e1 - e2| (`DistanceHead`)
    <dir>/calibration.json  {"format": 1, "targets": {"0.95": {"threshold": t, ...}, ...}}
                            (written by `infistream filter calibrate`)

Two other kinds have their own files and checks, and `open_filter_dir` hands them over:
``early-exit`` (models/early_exit.py) and ``audio-skip``, InFi-Skip on log-mel spectrograms of
speech windows (models/audio_skip.py, shipped in models/shipped/speech/skip).

`open_filter_dir` reads and checks all of it except the network's weights (a few milliseconds:
the command line runs it before any process starts, so a missing, corrupt or mismatched file is
refused with its name); the policies load the network in `open()`. The shipped filters live in
models/shipped/vehicle/ (`shipped_dir`), with the joint thresholds of the Skip -> Reuse cascade
in cascade.json (`cascade_thresholds`).
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ConfigError
from models.lite import check_model_file

FORMAT = 1
KINDS = ("skip", "reuse")
DEFAULT_TARGET = 0.95
SHIPPED = Path(__file__).resolve().parent / "shipped" / "vehicle"
#: Input sizes a filter network may be trained for (pixels per side).
MIN_SIZE, MAX_SIZE = 8, 1024


@dataclass(frozen=True)
class DistanceHead:
    """Reuse's learned distance between two embeddings, applied to d = |e1 - e2|:
    p_differ = sigmoid(relu(d @ w1 + b1) @ w2 + b2), or sigmoid(d @ w2 + b2) without the hidden
    layer (w1 and b1 None). p_differ is the probability that the two frames' answers differ."""

    w1: np.ndarray | None
    b1: np.ndarray | None
    w2: np.ndarray
    b2: np.ndarray

    @property
    def embedding(self) -> int:
        return (self.w1 if self.w1 is not None else self.w2).shape[0]

    def logits(self, differences: np.ndarray) -> np.ndarray:
        """The head's logit per row of `differences` ([n, E], the |e1 - e2|): [n]. p_differ is its
        sigmoid, so comparing logits orders and thresholds the same, without the sigmoid."""
        hidden = differences
        if self.w1 is not None:
            hidden = differences @ self.w1
            hidden += self.b1
            np.maximum(hidden, 0.0, out=hidden)
        logits = hidden @ self.w2[:, 0]
        logits += self.b2[0]
        return logits

    def p_differ(self, differences: np.ndarray) -> np.ndarray:
        """p_differ per row of `differences` ([n, E], the |e1 - e2|): [n]."""
        return 0.5 + 0.5 * np.tanh(0.5 * self.logits(differences))    # the sigmoid, without exp overflow

    @classmethod
    def load(cls, path: Path, embedding: int) -> DistanceHead:
        """The head in `path` (head.npz), checked against the embedding width."""
        if not path.is_file():
            raise ConfigError(f"reuse filter head {path} not found")
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: np.asarray(archive[name], np.float32) for name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise ConfigError(f"{path}: not a readable .npz file ({error})") from None
        expected = "w1 [E,H], b1 [H], w2 [H,1], b2 [1] (or w2 [E,1], b2 [1] without a hidden layer)"
        if "w2" not in arrays or "b2" not in arrays or ("w1" in arrays) != ("b1" in arrays):
            raise ConfigError(f"{path}: expected arrays {expected}, found {sorted(arrays)}")
        w1, b1, w2, b2 = arrays.get("w1"), arrays.get("b1"), arrays["w2"], arrays["b2"]
        inner = w1.shape[1] if w1 is not None and w1.ndim == 2 else embedding
        shapes_ok = (w2.shape == (inner, 1) and b2.shape == (1,)
                     and (w1 is None or (w1.shape == (embedding, inner) and b1.shape == (inner,))))
        if not shapes_ok:
            found = {name: list(array.shape) for name, array in arrays.items()}
            raise ConfigError(f"{path}: expected {expected} with E = {embedding} (metadata.json), found {found}")
        if not all(np.isfinite(array).all() for array in arrays.values()):
            raise ConfigError(f"{path}: the head's weights are not all finite numbers")
        return cls(w1, b1, w2, b2)


def read_json_file(path: Path, what: str) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(document).__name__}")
    if document.get("format") != FORMAT:
        raise ConfigError(f"{path}: expected \"format\": {FORMAT}, got {document.get('format')!r:.40}")
    return document


def _whole(value: Any) -> bool:
    return type(value) is int


def threshold_table(document: dict[str, Any], path: Path, keys: tuple[str, ...]) -> dict[float, dict[str, float]]:
    """{target: {key: threshold}} from a calibration document's "targets"."""
    targets = document.get("targets")
    if not isinstance(targets, dict):
        raise ConfigError(f"{path}: expected \"targets\": {{\"0.95\": {{...}}, ...}}, got {targets!r:.60}")
    table: dict[float, dict[str, float]] = {}
    for text, entry in targets.items():
        try:
            target = float(text)
        except ValueError:
            raise ConfigError(f"{path}: target {text!r} is not a number") from None
        values = {key: entry.get(key) if isinstance(entry, dict) else None for key in keys}
        bad = [key for key, value in values.items() if isinstance(value, bool)
               or not isinstance(value, (int, float)) or not math.isfinite(value)]
        if bad:
            raise ConfigError(f"{path}: target {text} needs a number for {', '.join(bad)}, got {entry!r:.80}")
        table[target] = {key: float(value) for key, value in values.items()}
    return table


def lookup_target(table: dict[float, Any], target: float, path: Path, hint: str) -> Any:
    """The entry of `table` (target -> thresholds or spec, read from `path`) for `target`; a
    `ConfigError` naming the targets it has, then `hint` (what to do), when it has none."""
    for known, value in table.items():
        if math.isclose(known, target, abs_tol=1e-9):
            return value
    known = ", ".join(f"{t:g}" for t in sorted(table)) or "none"
    raise ConfigError(f"{path} has no threshold for target {target:g} (it has: {known}); {hint}")


@dataclass(frozen=True)
class FilterDir:
    """A checked filter directory: what it is, for which input size, and its calibrated thresholds."""

    path: Path
    kind: str
    input_size: int
    embedding: int | None
    metadata: dict[str, Any] = field(repr=False)
    thresholds: dict[float, float] | None = field(repr=False)     # target -> threshold; None: uncalibrated

    @property
    def model_path(self) -> Path:
        return self.path / "model.tflite"

    @property
    def head_path(self) -> Path:
        return self.path / "head.npz"

    @property
    def calibration_path(self) -> Path:
        return self.path / "calibration.json"

    @property
    def outputs(self) -> int:
        """Values the network gives per frame."""
        return 1 if self.kind == "skip" else int(self.embedding)

    def threshold_for(self, target: float = DEFAULT_TARGET) -> float:
        """The calibrated threshold for a per-frame agreement `target`."""
        hint = "calibrate it for that target (`infistream filter calibrate`) or give threshold="
        if self.thresholds is None:
            raise ConfigError(f"filter {self.path} is not calibrated (no calibration.json); {hint}")
        return lookup_target(self.thresholds, target, self.calibration_path, hint)

    def load_head(self) -> DistanceHead:
        return DistanceHead.load(self.head_path, int(self.embedding))


def open_filter_dir(path: Path | str, kind: str | None = None) -> FilterDir:
    """Read and check the filter directory at `path` (of `kind`, when given), weights aside."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"filter directory {path} not found" if not path.exists()
                          else f"{path} is not a filter directory (expected a directory holding metadata.json)")
    metadata_path = path / "metadata.json"
    metadata = read_json_file(metadata_path, "filter metadata")
    found = metadata.get("kind")
    if found == "early-exit":           # its own files and checks (models/early_exit.py)
        from models.early_exit import open_early_exit_dir
        if kind not in (None, found):
            raise ConfigError(f"{path} holds an early-exit filter, not a {kind} filter")
        return open_early_exit_dir(path, metadata)
    if found == "audio-skip":           # log-mel input, its own files and checks (models/audio_skip.py)
        from models.audio_skip import AudioSkipDir
        if kind not in (None, found):
            raise ConfigError(f"{path} holds an audio-skip filter, not a {kind} filter")
        return AudioSkipDir.open(path, metadata)
    if found not in KINDS:
        raise ConfigError(f"{metadata_path}: \"kind\" must be one of {', '.join(KINDS + ('early-exit', 'audio-skip'))}, "
                          f"got {found!r:.40}")
    if kind is not None and found != kind:
        raise ConfigError(f"{path} holds a {found} filter, not a {kind} filter")
    size = metadata.get("input_size")
    if not _whole(size) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"{metadata_path}: \"input_size\" must be a whole number of pixels between "
                          f"{MIN_SIZE} and {MAX_SIZE}, got {size!r:.40}")
    embedding = None
    if found == "reuse":
        embedding = metadata.get("embedding")
        if not _whole(embedding) or embedding < 1:
            raise ConfigError(f"{metadata_path}: a reuse filter needs \"embedding\" (a whole number >= 1), "
                              f"got {embedding!r:.40}")
    thresholds = None
    calibration = path / "calibration.json"
    if calibration.exists():
        table = threshold_table(read_json_file(calibration, "calibration"), calibration, ("threshold",))
        thresholds = {target: entry["threshold"] for target, entry in table.items()}
    directory = FilterDir(path, found, size, embedding, metadata, thresholds)
    check_model_file(directory.model_path, size, directory.outputs)
    if found == "reuse":
        directory.load_head()          # a few kilobytes: checked now, so a bad head fails before the run
    return directory


def shipped_dir(kind: str) -> Path:
    """Where the shipped `kind` filter lives; a `ConfigError` saying how to make it when absent."""
    path = SHIPPED / kind
    if not (path / "metadata.json").exists():
        raise ConfigError(f"no shipped {kind} filter at {path}: run `make train` to train the shipped filters")
    return path


def cascade_thresholds(target: float = DEFAULT_TARGET, path: Path | None = None) -> tuple[float, float]:
    """The shipped cascade's joint (skip, reuse) thresholds for `target` (cascade.json)."""
    path = path or SHIPPED / "cascade.json"
    if not path.exists():
        raise ConfigError(f"no shipped cascade thresholds at {path}: run `make train` to train and "
                          f"calibrate the shipped filters")
    table = threshold_table(read_json_file(path, "cascade thresholds"), path, ("skip", "reuse"))
    entry = lookup_target(table, target, path, "calibrate the cascade for that target, or name skip+reuse "
                                         "with thresholds (skip:threshold=P+reuse:threshold=P)")
    return entry["skip"], entry["reuse"]


def resolve_threshold(directory: FilterDir, options: dict[str, Any], name: str) -> float:
    """`threshold=` when given, else the calibrated threshold for `target=` (default 0.95)."""
    if "threshold" in options and "target" in options:
        raise ConfigError(f"--filter {name}: give target= (a calibrated threshold) or threshold=, not both")
    if "threshold" in options:
        return float(options["threshold"])
    return directory.threshold_for(options.get("target", DEFAULT_TARGET))
