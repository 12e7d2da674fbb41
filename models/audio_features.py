"""Log-mel spectrograms in numpy: what the audio filters read, the same at training and at run time.

A window of 16 kHz mono float32 samples (what every audio source sends) becomes a [frames, mels]
float32 array: Hann-windowed frames of `frame` samples every `hop` samples (no centre padding),
the power of an `n_fft`-point real FFT, a bank of triangular filters evenly spaced on the mel scale
(HTK formula) between `fmin` and `fmax`, then log(x + `floor`). The seed notebook used 25 ms
frames every 10 ms and 64 bands over 60-7,800 Hz (../shared/research/seeds.md §3); here frames are
32 ms every 20 ms with 40 bands (99 x 40 per 2 s window): half the frames, so half the FFTs and
half the network's work per window, which matters against the filter's 5 ms budget (numpy's FFT of
198 frames took ~4 ms on this busy 2-core machine, of 99 frames about half that).

numpy only, so the filter stage computes features without TensorFlow. A window of another length is cut to, or padded with silence to, the length the
settings name (`LogMel.samples`), since the network's input shape is fixed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class LogMelSettings:
    """How a window becomes a log-mel spectrogram; stored in metadata.json (``features``)."""

    sample_rate: int = SAMPLE_RATE
    window_s: float = 2.0          # the speech app's window
    frame: int = 512               # samples per STFT frame (32 ms)
    hop: int = 320                 # samples between frames (20 ms)
    n_fft: int = 512
    mels: int = 40
    fmin: float = 60.0
    fmax: float = 7800.0
    floor: float = 1e-6

    def __post_init__(self) -> None:
        if not (0 < self.frame <= self.n_fft and 0 < self.hop and 0 < self.mels
                and 0 <= self.fmin < self.fmax <= self.sample_rate / 2 and self.samples >= self.frame):
            raise ValueError(f"log-mel settings out of range: {self}")

    @property
    def samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    @property
    def frames(self) -> int:
        return 1 + (self.samples - self.frame) // self.hop

    @property
    def shape(self) -> tuple[int, int]:
        """What `LogMel` gives per window: (frames, mels)."""
        return (self.frames, self.mels)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> LogMelSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(document) - known
        if unknown:
            raise ValueError(f"unknown log-mel settings {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**document)


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(settings: LogMelSettings) -> np.ndarray:
    """[n_fft // 2 + 1, mels] float32: triangular filters, peak 1, on FFT bin frequencies."""
    bins = np.fft.rfftfreq(settings.n_fft, 1.0 / settings.sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(settings.fmin), hz_to_mel(settings.fmax), settings.mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).T.astype(np.float32)


class LogMel:
    """`log_mel(samples)` -> [frames, mels] float32 for one window (see the module's docstring)."""

    def __init__(self, settings: LogMelSettings = LogMelSettings()):
        self.settings = settings
        self.samples = settings.samples
        self._window = np.hanning(settings.frame + 2)[1:-1].astype(np.float32)   # periodic-like, no zero ends
        self._bank = mel_filterbank(settings)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, np.float32)
        if samples.ndim != 1:
            raise ValueError(f"an audio window is 1-D samples, got shape {samples.shape}")
        if len(samples) != self.samples:
            fitted = np.zeros(self.samples, np.float32)
            fitted[:min(len(samples), self.samples)] = samples[:self.samples]
            samples = fitted
        s = self.settings
        frames = np.lib.stride_tricks.sliding_window_view(samples, s.frame)[::s.hop][:s.frames] * self._window
        spectrum = np.fft.rfft(frames, n=s.n_fft, axis=1)
        power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
        return np.log(power @ self._bank + s.floor).astype(np.float32)

    def batch(self, windows: np.ndarray) -> np.ndarray:
        """[N, samples] -> [N, frames, mels]."""
        return np.stack([self(window) for window in windows]) if len(windows) else \
            np.zeros((0, *self.settings.shape), np.float32)
