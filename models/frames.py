"""Frames as the learned filters see them: downscaled once, the same way in training and live.

A filter never needs a full frame: InFi's feature network reads a small square image, Reducto's
features and the motion gate read a small grey one. Shrinking is done here, by one function, so
that training data (models/dataset.py) and the running filter stage feed the networks exactly the
same pixels.
"""

from __future__ import annotations

import cv2
import numpy as np


def reduce_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """`frame` (HxWx3 uint8 BGR) as a `size` x `size` x 3 uint8 BGR image (aspect not kept:
    a fixed camera's frames all squash the same way).

    INTER_AREA averages every source pixel (no aliasing of small distant cars), but costs ~2 ms on
    a 1080p frame; a nearest-neighbour pass to 4x the target first keeps it near 0.1 ms while the
    final area step still averages 16 samples per output pixel.
    """
    height, width = frame.shape[:2]
    if height > 4 * size and width > 4 * size:
        frame = cv2.resize(frame, (4 * size, 4 * size), interpolation=cv2.INTER_NEAREST)
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)


def reduce_grey(frame: np.ndarray, size: int) -> np.ndarray:
    """`frame` as a `size` x `size` uint8 grey image (the baselines' input)."""
    return cv2.cvtColor(reduce_frame(frame, size), cv2.COLOR_BGR2GRAY)
