"""Speech gates ahead of the recognizer: the classic baselines the learned audio filters must beat.

Each one reads an audio window (16 kHz mono float32, as every audio source sends it), computes
one number, and SKIPS the window when that number is below its threshold (a skipped window's
answer is the empty transcript); otherwise it has no opinion (in a cascade the next policy
decides; alone, the recognizer runs). As for every frame policy, a larger threshold skips more.

- ``vad:silero``: Silero VAD v6, the ONNX model faster-whisper ships (run with onnxruntime, as
  faster-whisper's own VAD runs it): the highest speech probability over the window's 32 ms
  chunks. Skips below 0.5 by default (Silero's own speech threshold).
- ``vad:webrtc:MODE``: WebRTC's GMM voice activity detector (webrtcvad, aggressiveness MODE 0-3,
  default 3): the share of the window's 30 ms frames it calls voiced. Skips below 0.1 by default.
- ``energy``: the window's RMS level in dBFS. Skips below -50 dBFS by default.

The defaults are the detectors' usual operating points, not calibrated for a target: give
``threshold=`` to move them. (Audio calibration on the project's speech labels, as the video
filters have it, comes with the learned audio filters; ../shared/research/asr.md has what
each gate did on speech mixtures.) The window's feature is `prepare`, the threshold test
`decide_prepared`, so evaluation can compute features once and replay thresholds.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from models.base import Decision, FramePolicy, Policy
from models.options import Option, number, parse_options
from pipeline.errors import ConfigError

SAMPLE_RATE = 16_000


class AudioGate(FramePolicy):
    """Skips an audio window whose feature (`prepare`) is below `threshold`; no opinion otherwise."""

    kind = ""
    input_kind = "audio"
    default_threshold = 0.0

    def __init__(self, threshold: float | None = None, name: str = ""):
        self.threshold = float(self.default_threshold if threshold is None else threshold)
        self.name = name or self.kind
        self._skip = Decision("skip", policy=self.name)

    def decide_prepared(self, stream: str, seq: int, features: np.ndarray) -> Decision | None:
        return self._skip if features[0] < self.threshold else None


def _samples(window: np.ndarray) -> np.ndarray:
    samples = np.asarray(window)
    if samples.ndim != 1 or samples.dtype != np.float32:
        raise ValueError(f"an audio window is 1-D float32 samples, got {samples.dtype} of shape {samples.shape}")
    return samples


# --------------------------------------------------------------------------------------------
# Silero

def silero_model_path() -> Path:
    """faster-whisper's bundled Silero VAD (found without importing faster-whisper and CTranslate2)."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("vad:silero needs faster-whisper installed (it ships the Silero VAD model)")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "silero_vad_v6.onnx"
    if not path.is_file():
        raise ConfigError(f"vad:silero: faster-whisper's Silero model is missing: {path}")
    return path


class SileroVad(AudioGate):
    """The highest Silero speech probability over the window's 512-sample chunks."""

    kind = "vad:silero"
    default_threshold = 0.5
    CHUNK = 512          # samples per probability (32 ms), the model's input size at 16 kHz
    CONTEXT = 64         # samples of the previous chunk prepended to each (as faster-whisper feeds it)

    def __init__(self, threshold: float | None = None, name: str = ""):
        super().__init__(threshold, name)
        self.path = silero_model_path()
        self._session: Any = None

    def open(self) -> None:
        if self._session is None:
            import onnxruntime
            options = onnxruntime.SessionOptions()
            options.inter_op_num_threads = options.intra_op_num_threads = 1   # one window at a time
            options.log_severity_level = 4
            self._session = onnxruntime.InferenceSession(str(self.path), sess_options=options,
                                                         providers=["CPUExecutionProvider"])
            self._state = np.zeros((1, 1, 128), np.float32)

    def close(self) -> None:
        self._session = None

    def prepare(self, window: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise RuntimeError(f"{self.name}: open() the policy before deciding")
        samples = _samples(window)
        if len(samples) == 0:
            return np.zeros(1, np.float32)
        chunks = math.ceil(len(samples) / self.CHUNK)
        padded = np.zeros(chunks * self.CHUNK, np.float32)
        padded[:len(samples)] = samples
        batch = padded.reshape(chunks, self.CHUNK)
        context = np.zeros((chunks, self.CONTEXT), np.float32)
        context[1:] = batch[:-1, -self.CONTEXT:]
        probabilities, _, _ = self._session.run(None, {"input": np.concatenate([context, batch], 1),
                                                       "h": self._state, "c": self._state})
        return np.asarray([np.max(probabilities)], np.float32)


# --------------------------------------------------------------------------------------------
# WebRTC

class WebRtcVad(AudioGate):
    """The share of the window's 30 ms frames WebRTC's VAD calls voiced, at aggressiveness `mode`."""

    default_threshold = 0.1
    FRAME = 480          # 30 ms at 16 kHz, one of the three frame lengths webrtcvad accepts

    def __init__(self, mode: int = 3, threshold: float | None = None, name: str = ""):
        if isinstance(mode, bool) or mode not in (0, 1, 2, 3):
            raise ConfigError(f"vad:webrtc:MODE takes an aggressiveness 0, 1, 2 or 3, got {mode!r}")
        self.mode = mode
        self.kind = f"vad:webrtc:{mode}"
        super().__init__(threshold, name)
        self._vad: Any = None

    def open(self) -> None:
        if self._vad is None:
            import webrtcvad
            self._vad = webrtcvad.Vad(self.mode)

    def close(self) -> None:
        self._vad = None

    def prepare(self, window: np.ndarray) -> np.ndarray:
        if self._vad is None:
            raise RuntimeError(f"{self.name}: open() the policy before deciding")
        samples = _samples(window)
        frames = len(samples) // self.FRAME
        if frames == 0:
            return np.zeros(1, np.float32)
        pcm = (np.clip(samples[:frames * self.FRAME], -1.0, 1.0) * 32767).astype("<i2").tobytes()
        step = self.FRAME * 2
        voiced = sum(self._vad.is_speech(pcm[i:i + step], SAMPLE_RATE) for i in range(0, len(pcm), step))
        return np.asarray([voiced / frames], np.float32)


# --------------------------------------------------------------------------------------------
# Energy

class EnergyGate(AudioGate):
    """The window's RMS level in dBFS (-120 for digital silence)."""

    kind = "energy"
    default_threshold = -50.0
    FLOOR_DB = -120.0

    def prepare(self, window: np.ndarray) -> np.ndarray:
        samples = _samples(window)
        if len(samples) == 0:
            return np.asarray([self.FLOOR_DB], np.float32)
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
        level = 20.0 * math.log10(rms) if rms > 0 else self.FLOOR_DB
        return np.asarray([max(level, self.FLOOR_DB)], np.float32)

    def threshold_grid(self) -> np.ndarray:
        return np.linspace(-90.0, -10.0, 161)

    @classmethod
    def from_spec(cls, argument: str) -> EnergyGate:
        options = parse_options("energy", argument, {"threshold": number(-120, 0)})
        name = f"energy:{argument}" if argument else "energy"
        return cls(options.get("threshold"), name)


# --------------------------------------------------------------------------------------------
# ``vad:silero[:threshold=P]`` and ``vad:webrtc[:MODE][,threshold=S]``

VAD_OPTIONS: dict[str, Option] = {"threshold": number(0, 1)}
VAD_KINDS = ("silero", "webrtc")


class Vad(Policy):
    """``--filter vad:...``: the registry's entry for both voice activity detectors; `from_spec`
    builds a `SileroVad` or a `WebRtcVad` (this class itself is never built)."""

    @classmethod
    def from_spec(cls, argument: str) -> AudioGate:
        kind, _, rest = argument.partition(":")
        name = f"vad:{argument}"
        if kind == "silero":
            options = parse_options(name, rest, VAD_OPTIONS)
            return SileroVad(options.get("threshold"), name)
        if kind == "webrtc":
            mode_text, _, option_text = rest.partition(",")
            if "=" in mode_text:                    # vad:webrtc:threshold=0.2 (mode left at 3)
                mode_text, option_text = "", rest
            try:
                mode = int(mode_text) if mode_text else 3
            except ValueError:
                raise ConfigError(f"--filter {name}: MODE is an aggressiveness 0-3, got {mode_text!r}") from None
            options = parse_options(name, option_text, VAD_OPTIONS)
            return WebRtcVad(mode, options.get("threshold"), name)
        raise ConfigError(f"--filter vad:KIND takes silero or webrtc (vad:silero, vad:webrtc:3), got {argument!r}")
