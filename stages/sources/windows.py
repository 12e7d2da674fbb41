"""Fixed-length, overlapping audio windows over a sample stream: shared by file and microphone.

Window k covers samples ``[k * hop, k * hop + window)``. Windows are emitted as soon as their
last sample arrives; at the end of the input, `Windower.flush` emits one more window, zero-padded
to full length, when samples remain that no emitted window covered. So every sample is in at
least one window, every window has the same length (what a model wants), and the number of
windows for N > 0 samples is::

    1                                   if N <= window
    ceil((N - window) / hop) + 1        otherwise

(`window_count`). Memory is bounded: the windower holds at most one window of samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

#: Defaults: 2 s windows every 1 s. Long enough for the "more than N words" speech rule to be
#: meaningful, short enough for low latency; the 50 % overlap means a word cut at one window's
#: edge is whole in the next.
DEFAULT_WINDOW_S = 2.0
DEFAULT_HOP_S = 1.0


@dataclass(frozen=True)
class WindowSpec:
    """Window length and hop, in seconds, at a sample rate. Checked when built.

    Raises:
        ValueError: a length is not positive, the hop exceeds the window (samples between
            windows would never be seen), or a length is shorter than one sample.
    """

    window_s: float = DEFAULT_WINDOW_S
    hop_s: float = DEFAULT_HOP_S
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            raise ValueError(f"window_s must be a positive number of seconds, got {self.window_s!r}")
        if not (self.hop_s > 0 and math.isfinite(self.hop_s)):
            raise ValueError(f"hop_s must be a positive number of seconds, got {self.hop_s!r}")
        if self.hop_s > self.window_s:
            raise ValueError(f"hop_s must be <= window_s so every sample is in a window, "
                             f"got hop_s={self.hop_s} > window_s={self.window_s}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate!r}")
        if self.hop_samples < 1:
            raise ValueError(f"hop_s={self.hop_s} is shorter than one sample at {self.sample_rate} Hz")

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_s * self.sample_rate))


def window_count(total_samples: int, window: int, hop: int) -> int:
    """How many windows `Windower` emits for `total_samples` samples (see the module doc)."""
    if total_samples <= 0:
        return 0
    if total_samples <= window:
        return 1
    return math.ceil((total_samples - window) / hop) + 1


@dataclass(frozen=True)
class AudioWindow:
    """One emitted window.

    Attributes:
        start: index of the window's first sample in the whole input.
        samples: ``window`` float32 samples, a fresh array (never reused by the windower).
        valid: how many of them are input; the rest (the tail of the last window) are zeros.
    """

    start: int
    samples: np.ndarray
    valid: int


class Windower:
    """Cuts pushed blocks of mono float32 samples into fixed windows with a hop.

    Example:
        >>> w = Windower(window=4, hop=2)
        >>> [(x.start, x.samples.tolist()) for x in w.push(np.arange(5, dtype=np.float32))]
        [(0, [0.0, 1.0, 2.0, 3.0])]
        >>> [(x.start, x.samples.tolist(), x.valid) for x in w.flush()]
        [(2, [2.0, 3.0, 4.0, 0.0], 3)]
    """

    def __init__(self, window: int, hop: int) -> None:
        if window < 1 or hop < 1 or hop > window:
            raise ValueError(f"need 1 <= hop <= window samples, got window={window}, hop={hop}")
        self.window = window
        self.hop = hop
        # Samples from `_start` on that no full window has consumed yet; never more than
        # `window` of them between calls, so memory stays bounded on endless input.
        self._buffer = np.zeros(window, dtype=np.float32)
        self._filled = 0
        self._start = 0            # input index of _buffer[0]
        self._covered_until = 0    # end (exclusive) of the last emitted window
        self._total = 0
        self._flushed = False

    @property
    def total_samples(self) -> int:
        """Samples pushed so far."""
        return self._total

    def push(self, samples: np.ndarray) -> Iterator[AudioWindow]:
        """Add samples (1-D, any float dtype; converted to float32) and yield completed windows."""
        if self._flushed:
            raise RuntimeError("push after flush: a Windower serves one input")
        block = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._total += block.size
        offset = 0
        while offset < block.size:
            take = min(self.window - self._filled, block.size - offset)
            self._buffer[self._filled:self._filled + take] = block[offset:offset + take]
            self._filled += take
            offset += take
            if self._filled == self.window:
                yield AudioWindow(self._start, self._buffer.copy(), self.window)
                self._covered_until = self._start + self.window
                # Keep the overlap (window - hop samples) at the front for the next window.
                keep = self.window - self.hop
                self._buffer[:keep] = self._buffer[self.hop:]
                self._filled = keep
                self._start += self.hop

    def flush(self) -> Iterator[AudioWindow]:
        """Yield the final zero-padded window if some samples are not in any window yet."""
        if self._flushed:
            return
        self._flushed = True
        end = self._start + self._filled
        if self._filled and end > self._covered_until:
            samples = np.zeros(self.window, dtype=np.float32)
            samples[:self._filled] = self._buffer[:self._filled]
            yield AudioWindow(self._start, samples, self._filled)
            self._covered_until = self._start + self.window
        self._filled = 0
