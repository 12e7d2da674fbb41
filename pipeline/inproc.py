"""inproc:// endpoints as in-process channels: messages handed over as objects.

Between threads of one process there is nothing to serialize: a `Message` is passed by
reference, its arrays re-wrapped as read-only views, so a frame costs a few microseconds
instead of ZeroMQ's message and zero-copy bookkeeping (about 100 µs per 640x480 frame on each
side here). The semantics follow the ZeroMQ patterns they replace:

* push/pull: one bounded queue of ``2 * hwm`` messages (a PUSH and a PULL queue of `hwm` each);
  a sender waits while the queue is full or no reader is attached, up to its send timeout;
  several readers share the queue (load balancing), several senders feed it (fan-in);
* pub/sub: each subscriber has its own queue of ``hwm``; a full subscriber loses the message,
  as with ZeroMQ's PUB.

Channels are found by name in a per-process registry; binding or connecting first does not matter.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import replace

from pipeline.message import Message

_registry: dict[str, Channel] = {}
_registry_lock = threading.Lock()


class Channel:
    """The shared state behind one inproc:// name."""

    def __init__(self, name: str):
        self.name = name
        self.changed = threading.Condition()
        self.queue: deque[Message] = deque()
        self.subscribers: list[deque[Message]] = []
        self.readers = 0


def channel(url: str) -> Channel:
    """The channel for `url` (``inproc://name``), created on first use."""
    with _registry_lock:
        found = _registry.get(url)
        if found is None:
            found = _registry[url] = Channel(url)
        return found


def read_only(message: Message) -> Message:
    """`message` with its arrays as read-only views, as a receiver over ZeroMQ would see them."""
    if not message.arrays:
        return message
    views = []
    for array in message.arrays:
        view = array.view()
        view.flags.writeable = False
        views.append(view)
    return replace(message, arrays=tuple(views))


def put(target: Channel, message: Message, capacity: int, timeout_s: float) -> bool:
    """Queue `message` for pull readers; False if no room (or no reader) came within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    with target.changed:
        while target.readers == 0 or len(target.queue) >= capacity:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not target.changed.wait(remaining):
                if target.readers and len(target.queue) < capacity:
                    break
                return False
        target.queue.append(message)
        target.changed.notify_all()
        return True


def publish(target: Channel, message: Message, capacity: int) -> None:
    """Give `message` to every subscriber with room; a full subscriber misses it (as with PUB)."""
    with target.changed:
        for queue in target.subscribers:
            if len(queue) < capacity:
                queue.append(message)
        target.changed.notify_all()


def take(target: Channel, queue: deque[Message], timeout_s: float) -> Message | None:
    """The oldest message of `queue` (the channel's or a subscriber's), or None after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    with target.changed:
        while not queue:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            target.changed.wait(remaining)
        message = queue.popleft()
        target.changed.notify_all()
        return message


def attach(target: Channel, subscriber: deque[Message] | None) -> None:
    with target.changed:
        target.readers += 1
        if subscriber is not None:
            target.subscribers.append(subscriber)
        target.changed.notify_all()


def detach(target: Channel, subscriber: deque[Message] | None) -> None:
    with target.changed:
        target.readers -= 1
        if subscriber is not None:
            target.subscribers.remove(subscriber)
        target.changed.notify_all()


def wait_for_readers_to_leave(target: Channel, timeout_s: float, stop) -> bool:
    deadline = time.monotonic() + timeout_s
    with target.changed:
        while target.readers > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stop():
                return False
            target.changed.wait(min(remaining, 0.2))
        return True
