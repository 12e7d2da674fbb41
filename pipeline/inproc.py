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

from pipeline.message import Message

_registry: dict[str, Channel] = {}
_registry_lock = threading.Lock()


class Channel:
    """The shared state behind one inproc:// name.

    One condition per event on one lock, so that a send wakes only readers and a take only
    senders: with one condition notified for everything, every message also woke the other
    side for nothing.
    """

    def __init__(self, name: str):
        self.name = name
        self.lock = threading.Lock()
        self.sent = threading.Condition(self.lock)  # a message was queued
        self.taken = threading.Condition(self.lock)  # room was made, or a reader came
        self.left = threading.Condition(self.lock)  # a reader went
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
    # A shallow copy that skips `Message.__post_init__`: the message was checked when it was
    # built, and checking it again (dataclasses.replace) took a fifth of the time per frame.
    copy = object.__new__(Message)
    copy.__dict__.update(message.__dict__)
    copy.arrays = tuple(views)
    return copy


def put(target: Channel, message: Message, capacity: int, timeout_s: float) -> bool:
    """Queue `message` for pull readers; False if no room (or no reader) came within `timeout_s`."""
    deadline = None
    with target.lock:
        while target.readers == 0 or len(target.queue) >= capacity:
            if deadline is None:
                deadline = time.monotonic() + timeout_s
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            target.taken.wait(remaining)
        target.queue.append(message)
        target.sent.notify()
        return True


def publish(target: Channel, message: Message, capacity: int) -> None:
    """Give `message` to every subscriber with room; a full subscriber misses it (as with PUB)."""
    with target.lock:
        for queue in target.subscribers:
            if len(queue) < capacity:
                queue.append(message)
        target.sent.notify_all()


def take(target: Channel, queue: deque[Message], timeout_s: float) -> Message | None:
    """The oldest message of `queue` (the channel's or a subscriber's), or None after `timeout_s`."""
    deadline = None
    with target.lock:
        while not queue:
            if deadline is None:
                deadline = time.monotonic() + timeout_s
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # Subscribers share `sent`, so they are all woken and each looks at its own queue.
            target.sent.wait(remaining)
        message = queue.popleft()
        target.taken.notify()
        return message


def attach(target: Channel, subscriber: deque[Message] | None) -> None:
    with target.lock:
        target.readers += 1
        if subscriber is not None:
            target.subscribers.append(subscriber)
        target.taken.notify_all()


def detach(target: Channel, subscriber: deque[Message] | None) -> None:
    with target.lock:
        target.readers -= 1
        if subscriber is not None:
            target.subscribers.remove(subscriber)
        target.left.notify_all()


def wait_for_readers_to_leave(target: Channel, timeout_s: float, stop) -> bool:
    """After the last message: True once the readers have taken everything queued.

    While a reader is attached and messages wait, this waits as long as the readers take (a
    slow reader loses nothing); `timeout_s` bounds only the wait with no reader attached (what
    is queued then stays in the channel for the next one). `stop()`, checked every 0.2 s,
    ends the wait early (False).
    """
    deadline = time.monotonic() + timeout_s
    with target.lock:
        while target.queue:
            if stop() or (target.readers == 0 and time.monotonic() >= deadline):
                return False
            target.left.wait(0.2)
        return True
