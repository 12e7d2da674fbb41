"""A bounded queue that drops its oldest item when full, and counts what it dropped.

Live sources (camera, microphone, network stream) must not fall behind the world: when the
pipeline is slower than the device, the newest input matters and the oldest is dropped.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

Item = TypeVar("Item")


class DropOldestQueue(Generic[Item]):
    """Thread-safe FIFO of at most `maxsize` items; `put` never blocks."""

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._items: deque[tuple[bool, Item]] = deque()
        self._maxsize = maxsize
        self._ready = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, item: Item, droppable: bool = True) -> Item | None:
        """Append `item`; returns the item dropped to make room, or None.

        Items put with ``droppable=False`` (end-of-stream markers) are never evicted; the
        oldest droppable item goes instead, and if there is none the queue grows by one.
        """
        with self._ready:
            evicted = None
            if len(self._items) >= self._maxsize:
                for index, (can_drop, candidate) in enumerate(self._items):
                    if can_drop:
                        del self._items[index]
                        evicted = candidate
                        self.dropped += 1
                        break
            self._items.append((droppable, item))
            self._ready.notify()
            return evicted

    def get(self, timeout: float) -> Item | None:
        """The oldest item, or None if none came within `timeout` s or the queue is closed and empty."""
        with self._ready:
            if not self._items and not self._closed:
                self._ready.wait(timeout)
            return self._items.popleft()[1] if self._items else None

    def close(self) -> None:
        """No more items will come; waiting getters return at once."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    @property
    def closed_and_empty(self) -> bool:
        with self._ready:
            return self._closed and not self._items

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)
