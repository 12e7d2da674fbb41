"""The shared Windower: counts, coverage, overlap, padding, fresh arrays, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from stages.sources import Windower, window_count


def run(total: int, window: int, hop: int, block: int) -> list:
    signal = np.arange(1, total + 1, dtype=np.float32)  # no zeros, so padding is visible
    windower = Windower(window, hop)
    windows = []
    for start in range(0, total, block):
        windows.extend(windower.push(signal[start:start + block]))
    windows.extend(windower.flush())
    return windows


# (total samples, window, hop, expected count)
COUNTS = [
    (0, 4, 2, 0),
    (1, 4, 2, 1),
    (4, 4, 2, 1),   # exactly one window: nothing left for a second
    (5, 4, 2, 2),
    (6, 4, 2, 2),
    (7, 4, 2, 3),
    (8, 4, 4, 2),   # hop == window: no overlap
    (9, 4, 4, 3),
    (10, 5, 1, 6),
    (32000, 32000, 16000, 1),
    (62480, 32000, 16000, 3),
]


@pytest.mark.parametrize("total, window, hop, expected", COUNTS)
@pytest.mark.parametrize("block", [1, 3, 1000])
def test_count_coverage_and_content(total: int, window: int, hop: int, expected: int, block: int) -> None:
    windows = run(total, window, hop, block)
    assert len(windows) == expected == window_count(total, window, hop)
    covered = np.zeros(total, dtype=bool)
    for k, w in enumerate(windows):
        assert w.start == k * hop and w.samples.shape == (window,) and w.samples.dtype == np.float32
        real = np.arange(w.start + 1, w.start + w.valid + 1, dtype=np.float32)
        np.testing.assert_array_equal(w.samples[:w.valid], real)
        assert not np.any(w.samples[w.valid:])  # zero padding only at the end
        assert w.valid == window or k == len(windows) - 1
        covered[w.start:w.start + w.valid] = True
    assert covered.all()  # every sample is in at least one window


def test_windows_are_fresh_arrays() -> None:
    windows = run(100, 10, 5, 7)
    snapshot = [w.samples.copy() for w in windows]
    assert all(np.array_equal(a, w.samples) for a, w in zip(snapshot, windows))
    assert len({id(w.samples) for w in windows}) == len(windows)
    assert all(w.samples.base is None for w in windows)  # owned, not views of the buffer


def test_memory_is_bounded_on_endless_input() -> None:
    windower = Windower(1600, 800)
    block = np.ones(10_000, dtype=np.float32)
    for _ in range(200):  # 2 M samples
        for _ in windower.push(block):
            pass
        assert windower._buffer.nbytes == 1600 * 4 and windower._filled <= 1600
    assert windower.total_samples == 2_000_000


def test_bad_sizes_and_push_after_flush() -> None:
    for window, hop in [(0, 1), (4, 0), (4, 5)]:
        with pytest.raises(ValueError):
            Windower(window, hop)
    windower = Windower(4, 2)
    list(windower.flush())
    with pytest.raises(RuntimeError):
        list(windower.push(np.zeros(3, dtype=np.float32)))
