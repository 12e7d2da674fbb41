"""The blind reference: spend the error budget without looking at a frame.

A filter at 95 % per-frame count agreement may answer 5 % of the frames wrong. A policy that never
looks at a frame can still spend that budget: reuse the last inferred frame's answer for a random
share q of the frames. Its error rate is about q x (share of frames whose count differs from the
frame before), so on a clip where the count changes on most frames it keeps about
0.05 / (1 - repeat share) of the frames from the model. A learned filter is worth its cost where
it keeps more than this; where it keeps less, it spends its budget worse than chance.

It is a reference for the evaluation (models/evaluate.py, bench/blind_reuse.py), not a filter
to run: the registry does not offer it.
"""

from __future__ import annotations

import numpy as np

from pipeline.message import Message
from models.base import Decision, Policy

#: Shares of frames reused: fine where the budget allows little, coarse beyond.
SHARES = tuple(float(q) for q in np.round(np.concatenate([np.arange(0.0, 0.3, 0.005), np.arange(0.3, 1.0, 0.02)]), 4))
#: Random draws per share; its curve is their mean (one draw alone can be lucky or unlucky).
SEEDS = 8


class BlindReuse(Policy):
    """Reuse the last inferred frame's answer for a random share of the frames, looking at none."""

    def __init__(self, share: float, seed: int):
        self.share, self.seed = share, seed
        self.name = f"blind:{share:g}"
        self._rng = np.random.default_rng(seed)
        self._last: dict[str, int] = {}       # stream -> seq last inferred

    def decide(self, message: Message) -> Decision:
        last = self._last.get(message.stream)
        if last is not None and self._rng.random() < self.share:
            return Decision("reuse", ref_seq=last, policy=self.name)
        self._last[message.stream] = message.seq
        return Decision("infer", policy=self.name)

    def end_stream(self, stream: str) -> None:
        self._last.pop(stream, None)
        self._rng = np.random.default_rng(self.seed)
