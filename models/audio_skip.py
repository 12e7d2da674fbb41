"""InFi-Skip on audio: a small network on a window's log-mel spectrogram says how likely the
recognizer is to find words in it.

Per window (16 kHz mono float32 samples, as every audio source sends them): the log-mel
spectrogram in numpy (models/audio_features.py, the settings stored in the filter's metadata),
one LiteRT invoke (no TensorFlow) for p = P(needs recognition), i.e. P(the recognizer would give
more than N = 2 words). Below the threshold the window is skipped (its answer is the empty
transcript, as for the VADs of models/baselines/vad.py); otherwise the policy has no opinion,
so in a cascade the next policy decides, and alone the recognizer runs. A larger threshold skips
more.

The filter directory (written by models/audio_skip_train.py; `infistream filter train skip
--task speech`):

    <dir>/metadata.json     {"format": 1, "kind": "audio-skip", "task": "speech", "rule", "words",
                             "input": {"kind": "audio", "features": LogMelSettings, "shape"},
                             "threshold": {"target": 0.95, "value": t, ...}, "training": ...}
    <dir>/model.tflite      input [1, frames, mels, 1] float32 log-mel; output [1, 1] P(needs recognition)
    <dir>/calibration.json  {"format": 1, "targets": {"0.95": {"threshold": t}, ...}} (optional)

Thresholds: ``threshold=P`` as given; else ``target=T`` (default 0.95) from calibration.json when
the directory has one; without it, the threshold stored in metadata.json for its target (the one
that kept InFi accuracy at 0.95 on the val split when trained).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.audio_features import LogMel, LogMelSettings
from models.base import Decision, FramePolicy
from models.lite import LiteModel, check_model_file
from models.options import Option, number, parse_options
from pipeline.errors import ConfigError

KIND = "audio-skip"
SHIPPED = Path(__file__).resolve().parent / "shipped" / "speech" / "skip"
AUDIO_SKIP_OPTIONS: dict[str, Option] = {"target": number(0, 1), "threshold": number(0, 1)}


def threshold_grid() -> np.ndarray:
    """0..1, finer near 0 where the probabilities of silent and noisy windows gather (to 1e-4)."""
    return np.unique(np.concatenate([[0.0], np.geomspace(1e-4, 1.0, 81), np.linspace(0.0, 1.0, 101)]))


# ------------------------------------------------------------------------------- the directory

@dataclass(frozen=True)
class AudioSkipDir:
    """A checked audio Skip filter directory: its log-mel settings and its thresholds."""

    path: Path
    metadata: dict[str, Any] = field(repr=False)
    settings: LogMelSettings
    default_target: float
    default_threshold: float
    thresholds: dict[float, float] | None = field(repr=False)     # calibration.json; None: absent
    kind: str = KIND

    @property
    def model_path(self) -> Path:
        return self.path / "model.tflite"

    @property
    def calibration_path(self) -> Path:
        return self.path / "calibration.json"

    @property
    def task(self) -> str:
        return self.metadata["task"]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.settings.shape, 1)

    def threshold_for(self, target: float) -> float:
        """The threshold for InFi accuracy `target`: calibration.json's, else metadata.json's when
        it was picked for that target."""
        if self.thresholds is not None:
            from models.filterdir import lookup_target
            return lookup_target(self.thresholds, target, self.calibration_path,
                           "calibrate it for that target (`infistream filter calibrate`) or give threshold=")
        if math.isclose(target, self.default_target, abs_tol=1e-9):
            return self.default_threshold
        raise ConfigError(f"filter {self.path} has a threshold for target {self.default_target:g} only (metadata.json; "
                          f"no calibration.json): calibrate it for {target:g} or give threshold=")

    @classmethod
    def open(cls, path: Path | str, metadata: dict[str, Any] | None = None) -> AudioSkipDir:
        """Read and check the directory (metadata, calibration, the model's shapes), weights aside."""
        from models.filterdir import read_json_file, threshold_table
        path = Path(path)
        where = path / "metadata.json"
        if metadata is None:
            if not path.is_dir():
                raise ConfigError(f"filter directory {path} not found")
            metadata = read_json_file(where, "filter metadata")
        if metadata.get("kind") != KIND:
            raise ConfigError(f"{path} holds a {metadata.get('kind')!r:.40} filter, not an {KIND} filter")
        if metadata.get("task") != "speech":
            raise ConfigError(f"{where}: an {KIND} filter is for \"task\": \"speech\", got {metadata.get('task')!r:.40}")
        inputs = metadata.get("input")
        if not isinstance(inputs, dict) or inputs.get("kind") != "audio" or not isinstance(inputs.get("features"), dict):
            raise ConfigError(f"{where}: \"input\" must be {{\"kind\": \"audio\", \"features\": {{log-mel settings}}}}, "
                              f"got {inputs!r:.80}")
        try:
            settings = LogMelSettings.from_json(inputs["features"])
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}: bad log-mel settings ({error})") from None
        threshold = metadata.get("threshold")
        values = [threshold.get(key) for key in ("target", "value")] if isinstance(threshold, dict) else [None]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
            raise ConfigError(f"{where}: \"threshold\" must be {{\"target\": T, \"value\": P}}, got {threshold!r:.80}")
        thresholds = None
        if (path / "calibration.json").exists():
            calibration = path / "calibration.json"
            table = threshold_table(read_json_file(calibration, "calibration"), calibration, ("threshold",))
            thresholds = {target: entry["threshold"] for target, entry in table.items()}
        directory = cls(path, metadata, settings, float(values[0]), float(values[1]), thresholds)
        check_model_file(directory.model_path, directory.input_shape, outputs=1)
        return directory


# --------------------------------------------------------------------------------- the policy

class AudioSkipPolicy(FramePolicy):
    """Skips an audio window whose P(needs recognition) is below `threshold`; no opinion otherwise.

    Options: ``target=T`` (InFi accuracy, default 0.95: calibration.json's threshold, else the one
    metadata.json stored for its target) or ``threshold=P``.
    """

    kind = KIND
    input_kind = "audio"

    def __init__(self, directory: AudioSkipDir, threshold: float | None = None, name: str = KIND):
        self.directory = directory
        self.threshold = float(directory.threshold_for(directory.default_target) if threshold is None else threshold)
        self.name = name
        self.log_mel = LogMel(directory.settings)
        self.model = LiteModel(directory.model_path, directory.input_shape, outputs=1)
        self._skip = Decision("skip", policy=name)          # immutable: one for every skipped window

    @classmethod
    def from_spec(cls, argument: str) -> AudioSkipPolicy:
        """The shipped filter (models/shipped/speech/skip)."""
        if not (SHIPPED / "metadata.json").exists():
            raise ConfigError(f"no shipped audio skip filter at {SHIPPED}: train it with "
                              f"`infistream filter train skip --task speech`")
        return cls.from_directory(SHIPPED, argument, name=f"{KIND}:{argument}" if argument else KIND)

    @classmethod
    def from_directory(cls, path: Path | str | AudioSkipDir, argument: str = "",
                       name: str | None = None) -> AudioSkipPolicy:
        directory = path if isinstance(path, AudioSkipDir) else AudioSkipDir.open(path)
        name = name or str(directory.path)
        options = parse_options(name, argument, AUDIO_SKIP_OPTIONS)
        from models.filterdir import resolve_threshold
        return cls(directory, resolve_threshold(directory, options, name), name)

    def open(self) -> None:
        self.model.open()

    def close(self) -> None:
        self.model.close()

    def prepare(self, window: np.ndarray) -> np.ndarray:
        """[P(needs recognition)] for one window: 1-D float32 samples at the filter's rate (a
        window of another length is cut or padded with silence to the settings' length)."""
        samples = np.asarray(window)
        if samples.ndim != 1 or samples.dtype != np.float32:
            raise ValueError(f"{self.name}: an audio window is 1-D float32 samples, got {samples.dtype} "
                             f"of shape {samples.shape}")
        return self.model.run(self.log_mel(samples)[..., None])

    def decide_prepared(self, stream: str, seq: int, features: np.ndarray) -> Decision | None:
        """`features`: [P(needs recognition)] (`prepare`)."""
        return self._skip if features[0] < self.threshold else None

    def threshold_grid(self) -> np.ndarray:
        return threshold_grid()
