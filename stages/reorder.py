"""Restoring sequence order after a pool of workers, with bounded memory and bounded waiting.

Workers finish inputs out of order; the aggregator must see each stream's inputs in sequence
order (tracking needs it). A missing sequence number may be late (a slow worker), dropped by a
live source (its count arrives only with the end-of-stream marker), or lost (a worker died).
A gap the source declared (a live source's drops: the input after them carries ``prev_seq``)
is not waited for. Any other gap waits at most `timeout_s` seconds, or until the buffer holds
`window` later inputs, then the buffer moves on; an input that arrives after its turn is
handed out as late.
"""

from __future__ import annotations

import time
from typing import Callable, Generic, Iterator, TypeVar

Item = TypeVar("Item")


class ReorderBuffer(Generic[Item]):
    """Releases items in sequence order from 0; gaps wait at most `timeout_s` or `window` items."""

    def __init__(self, window: int = 256, timeout_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        if window < 1:
            raise ValueError(f"reorder window must hold at least 1 item, got {window}")
        if timeout_s < 0:
            raise ValueError(f"reorder timeout must be >= 0 s, got {timeout_s}")
        self.window = window
        self.timeout_s = timeout_s
        self.clock = clock
        self.next_seq = 0
        self.skipped = 0         # sequence numbers given up on (dropped, lost, or late)
        self.gave_up = 0         # gaps nobody declared that were waited for until the timeout or window
        self._held: dict[int, tuple[float, Item]] = {}
        self._waiting_since: float | None = None   # when the current gap started to hold items back
        self._declared: dict[int, int] = {}        # first seq of a declared gap -> the seq after it

    def __len__(self) -> int:
        return len(self._held)

    def push(self, seq: int, item: Item, prev_seq: int | None = None) -> Iterator[tuple[int, Item, bool]]:
        """Add one item; yield ``(seq, item, late)`` for everything now in order.

        `prev_seq`: the sender says nothing was sent between `prev_seq` and `seq` (dropped), so
        that gap is not waited for. A late item (its turn has passed) is yielded at once with
        ``late=True``; a duplicate of a held seq raises ValueError.
        """
        if prev_seq is not None and self.next_seq <= prev_seq + 1 < seq:
            self._declared[prev_seq + 1] = seq
        if seq < self.next_seq:
            yield seq, item, True
            return
        if seq in self._held:
            raise ValueError(f"sequence number {seq} arrived twice")
        self._held[seq] = (self.clock(), item)
        yield from self._release(force=False)

    def poll(self) -> Iterator[tuple[int, Item, bool]]:
        """Release what a timed-out gap was holding back (call periodically)."""
        yield from self._release(force=False)

    def flush(self) -> Iterator[tuple[int, Item, bool]]:
        """Release everything held, in order, skipping every gap (the stream has ended)."""
        yield from self._release(force=True)

    def _release(self, force: bool) -> Iterator[tuple[int, Item, bool]]:
        while self._held:
            if self.next_seq in self._held:
                _, item = self._held.pop(self.next_seq)
                yield self.next_seq, item, False
                self.next_seq += 1
                self._waiting_since = None
                continue
            if self.next_seq in self._declared:
                gap_end = self._declared.pop(self.next_seq)
                self.skipped += gap_end - self.next_seq
                self.next_seq = gap_end
                continue
            now = self.clock()
            if self._waiting_since is None:
                self._waiting_since = min(arrived for arrived, _ in self._held.values())
            if not (force or len(self._held) > self.window or now - self._waiting_since >= self.timeout_s):
                return
            # Give up on the gap: jump to the earliest held item.
            self.gave_up += not force
            first = min(self._held)
            self.skipped += first - self.next_seq
            self.next_seq = first
            self._waiting_since = None
            self._declared = {start: end for start, end in self._declared.items() if start > first}
