"""ZeroMQ transport: endpoints as URLs, and sockets that send and receive `Message`s.

Endpoints are ``inproc://name``, ``ipc:///path`` or ``tcp://host:port``. A leading ``@``
binds and a leading ``>`` connects (CZMQ's convention); without one, a stage binds its
outputs and connects its inputs, so a restarted stage re-binds its own output and its
neighbours' sockets reconnect by themselves. TCP binds to 127.0.0.1 unless the host is
given (``tcp://0.0.0.0:5555`` or ``tcp://*:5555`` to listen on every interface).

Every socket has a high-water mark, a LINGER and a send/receive timeout, so nothing waits
forever and nothing grows without bound. Receivers reject malformed or oversized messages
with a logged, counted reason and go on receiving.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import logging
import os
import random
import re
import socket
import struct
import sys
import termios
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal

import zmq
from zmq.utils.monitor import recv_monitor_message

from pipeline import inproc
from pipeline.errors import EndpointError, MessageError
from pipeline.message import DEFAULT_MAX_MESSAGE_BYTES, Message, decode, encode
from pipeline.security import CurveConfig, secure

log = logging.getLogger(__name__)

SendPattern = Literal["push", "pub"]
ReceivePattern = Literal["pull", "sub"]
_SOCKET_TYPES = {"push": zmq.PUSH, "pub": zmq.PUB, "pull": zmq.PULL, "sub": zmq.SUB}
_SCHEMES = ("inproc", "ipc", "tcp")
_TCP_ADDRESS = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[^:/\[\]]*):(?P<port>\d+|\*)$")


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on now, for a stage to bind a moment later.

    Chosen at random below the kernel's ephemeral range: a port the kernel hands out itself
    (bind to port 0) is also what outgoing connections use as their local port, and a neighbour
    that keeps reconnecting somewhere could take it between this check and the bind.
    """
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    candidates = random.sample(range(10000, max(10001, low)), k=min(200, max(1, low - 10000)))
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:   # all taken (unlikely): fall back to the kernel's choice
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Endpoint:
    """A ZeroMQ address and whether this side binds it or connects to it."""

    url: str
    bind: bool

    @classmethod
    def parse(cls, text: str, *, bind_default: bool) -> Endpoint:
        """Parse ``[@|>]scheme://address``; ``@`` binds, ``>`` connects, else `bind_default`.

        A TCP bind with no host, or with ``localhost``, binds 127.0.0.1 only.
        """
        if not isinstance(text, str) or not text:
            raise EndpointError(f"endpoint must be a non-empty URL string, got {text!r}")
        bind = bind_default
        if text[0] in "@>":
            bind, text = text[0] == "@", text[1:]
        scheme, sep, address = text.partition("://")
        if not sep or scheme not in _SCHEMES:
            raise EndpointError(f"endpoint must look like inproc://name, ipc:///path or tcp://host:port, got {text!r}")
        if not address:
            raise EndpointError(f"endpoint {text!r} has no address after {scheme}://")
        if scheme == "tcp":
            match = _TCP_ADDRESS.match(address)
            if not match:
                raise EndpointError(f"tcp endpoint must be tcp://host:port, got {text!r}")
            host, port = match["host"], match["port"]
            if port != "*" and not 0 < int(port) < 65536:
                raise EndpointError(f"tcp port must be 1..65535, got {port} in {text!r}")
            if port == "*" and not bind:
                raise EndpointError(f"cannot connect to a wildcard port: {text!r}")
            if host in ("", "localhost"):
                if not bind and host == "":
                    raise EndpointError(f"connecting needs a host: {text!r}")
                host = "127.0.0.1"
            elif host in ("*", "0.0.0.0"):
                if not bind:
                    raise EndpointError(f"cannot connect to every interface; name a host: {text!r}")
                host = "*"
            text = f"tcp://{host}:{port}"
        return cls(text, bind)

    def __str__(self) -> str:
        return ("@" if self.bind else ">") + self.url


def local_url(url: str) -> str:
    """How a stage on this host reaches `url` when it is bound on every interface
    (``tcp://*:P`` or ``tcp://0.0.0.0:P`` -> ``tcp://127.0.0.1:P``); other URLs unchanged."""
    for anywhere in ("tcp://*:", "tcp://0.0.0.0:"):
        url = url.replace(anywhere, "tcp://127.0.0.1:")
    return url


def endpoints(texts: Iterable[str] | str, *, bind_default: bool) -> list[Endpoint]:
    """Parse one URL or several into `Endpoint`s."""
    if isinstance(texts, str):
        texts = [texts]
    return [Endpoint.parse(text, bind_default=bind_default) for text in texts]


@dataclass(frozen=True)
class SocketOptions:
    """Settings every socket gets. Defaults suit 640x480 frames on one host.

    hwm: messages queued per peer in each direction before a sender blocks (PUSH) or drops
        (PUB). Small on purpose: a queue of large frames adds latency and memory, not speed.
    linger_ms: how long `close` waits to deliver what is still queued.
    send_timeout_ms / recv_timeout_ms: the longest one `send` / `recv` call waits; callers
        loop, so a stop request is seen within this time.
    max_message_bytes: larger messages are rejected by receivers (logged, counted as
        ``oversize``). Receivers also give it to libzmq (ZMQ_MAXMSGSIZE), which drops a larger
        part before receiving it and closes that connection.
    buffer_bytes: kernel socket buffer size for tcp (0 keeps the OS default).
    ipc_send_buffer_bytes: kernel send buffer of each ipc connection a `Sender` has (0 keeps
        the OS default). libzmq sets no buffer sizes on ipc sockets, and the usual default
        (208 KiB) is less than one 640x480 frame: each frame then took several rounds of
        write, wake the reader, wait. The kernel caps it at ``net.core.wmem_max``. What sits
        in it adds to `hwm`: up to four more 640x480 frames per connection at 4 MiB.
    curve: certificates to encrypt (and authenticate) every tcp link with CurveZMQ; see
        `pipeline.security`. Both ends of a link must be secured, or neither. Sockets with
        only ipc or inproc endpoints stay plain (they never leave the host).
    """

    hwm: int = 2
    linger_ms: int = 2000
    send_timeout_ms: int = 200
    recv_timeout_ms: int = 200
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    buffer_bytes: int = 0
    ipc_send_buffer_bytes: int = 4 << 20
    curve: CurveConfig | None = None

    def __post_init__(self) -> None:
        for name in ("hwm", "send_timeout_ms", "recv_timeout_ms", "max_message_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"SocketOptions.{name} must be >= 1, got {getattr(self, name)}")
        if self.linger_ms < 0 or self.buffer_bytes < 0 or self.ipc_send_buffer_bytes < 0:
            raise ValueError("SocketOptions.linger_ms, buffer_bytes and ipc_send_buffer_bytes must be >= 0")


@functools.cache
def keep_freed_buffers() -> bool:
    """Have glibc keep freed frame-sized buffers for reuse (process-wide; once is enough).

    Every `Sender` and `Receiver` on ipc or tcp calls it when it opens its socket, and the
    stage runner before anything else.

    libzmq's io thread allocates every received frame and Python frees it. By default glibc
    hands a freed 0.9 MB block back to the kernel (munmap, or trimming the heap top), so the
    next frame faults its 225 pages in again: up to 40 page faults and ~100 µs of CPU per
    640x480 frame, the more the higher the hwm (`apps/bench_transport.py --sweep`). Copying on
    send (ipc) allocates a block per frame on the sending side too. The price: up to 64 MiB of
    freed memory stays with the process. False where the C library has no `mallopt` (not
    glibc); nothing changes there.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # M_MMAP_THRESHOLD (-3): blocks under 32 MiB come from the heap (a 4K BGR frame is 25 MB);
    # M_TRIM_THRESHOLD (-1): up to 64 MiB free at the top of a heap stay mapped.
    return mallopt(-3, 32 << 20) == 1 and mallopt(-1, 64 << 20) == 1


def _open_socket(context: zmq.Context, pattern: str, targets: list[Endpoint], options: SocketOptions,
                 before_attach: Callable[[zmq.Socket], None] | None = None) -> zmq.Socket:
    """A socket of `pattern` with `options`, bound or connected to `targets`.

    `before_attach` runs after the options are set and before the first bind/connect (a
    receiver starts its socket monitor there, so it sees every connection).
    """
    keep_freed_buffers()
    socket = context.socket(_SOCKET_TYPES[pattern])
    try:
        # Options must be set before bind/connect to apply to the pipes those create.
        socket.setsockopt(zmq.SNDHWM, options.hwm)
        socket.setsockopt(zmq.RCVHWM, options.hwm)
        socket.setsockopt(zmq.LINGER, options.linger_ms)
        socket.setsockopt(zmq.RCVTIMEO, options.recv_timeout_ms)
        if pattern in ("pull", "sub"):
            # libzmq drops a part larger than this as soon as its length arrives, before
            # receiving it, and closes that connection (the peer reconnects): an oversized
            # message never costs a receiver its size in memory. It counts per part; the
            # total of all parts is checked again in `decode`.
            socket.setsockopt(zmq.MAXMSGSIZE, options.max_message_bytes)
        # Reconnect quickly after a neighbour restarts, backing off to 1 s if it stays away.
        socket.setsockopt(zmq.RECONNECT_IVL, 50)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if options.buffer_bytes:
            socket.setsockopt(zmq.SNDBUF, options.buffer_bytes)
            socket.setsockopt(zmq.RCVBUF, options.buffer_bytes)
        if options.curve is not None and any(t.url.startswith("tcp://") for t in targets):
            # CurveZMQ is for links that can leave the host: ipc and inproc stay plain.
            if len({t.bind for t in targets}) > 1:
                raise EndpointError("a CurveZMQ socket either binds or connects, not both")
            secure(socket, options.curve, bind=targets[0].bind)
        if before_attach is not None:
            before_attach(socket)
        for target in targets:
            if target.bind:
                if target.url.startswith("ipc://"):
                    Path(target.url[len("ipc://"):]).parent.mkdir(parents=True, exist_ok=True)
                socket.bind(target.url)
            else:
                socket.connect(target.url)
    except zmq.ZMQError as error:
        socket.close(linger=0)
        where = ", ".join(str(t) for t in targets)
        raise EndpointError(f"cannot open {pattern} socket on {where}: {error}") from None
    except BaseException:
        socket.close(linger=0)
        raise
    return socket


def _inproc_channel(targets: list[Endpoint]) -> inproc.Channel | None:
    """The in-process channel for an inproc endpoint, or None for ipc/tcp (ZeroMQ sockets)."""
    kinds = {t.url.startswith("inproc://") for t in targets}
    if kinds == {False}:
        return None
    if len(targets) > 1:
        raise EndpointError(f"an inproc endpoint must be a socket's only endpoint, got {[str(t) for t in targets]}; "
                            f"use one stage per inproc link, or ipc")
    return inproc.channel(targets[0].url)


_DETACHED = inproc.Channel("inproc://(closed)")  # a closed inproc receiver's channel


class Sender:
    """Sends messages on a PUSH (load-balanced, blocking when full) or PUB (fan-out) socket.

    PUSH blocks when every peer's queue is full, so a recorded source never loses a frame;
    PUB never blocks and ZeroMQ drops for subscribers that fall behind. An inproc endpoint is
    an in-process channel with the same behaviour (`pipeline.inproc`), without serializing.
    """

    def __init__(self, targets: Iterable[Endpoint], *, pattern: SendPattern = "push",
                 options: SocketOptions = SocketOptions(), context: zmq.Context | None = None):
        if pattern not in ("push", "pub"):
            raise ValueError(f"send pattern must be 'push' or 'pub', got {pattern!r}")
        self.targets = list(targets)
        if not self.targets:
            raise EndpointError("a Sender needs at least one endpoint")
        self.pattern = pattern
        self.options = options
        self.sent = 0
        self._channel = _inproc_channel(self.targets)
        if self._channel is not None:
            self.socket = None
            return
        context = context or zmq.Context.instance()
        self.socket = _open_socket(context, pattern, self.targets, options)
        # Over ipc, giving ZeroMQ a copy of each frame beat lending it the array (5,800 against
        # 4,200 frames/s of 640x480); over tcp lending is as fast.
        self._copy = all(t.url.startswith("ipc://") for t in self.targets)
        self._has_ipc = any(t.url.startswith("ipc://") for t in self.targets)
        # Peers come and go (a restarted neighbour); the monitor tells us which, so that at
        # the end we can wait for them to leave, which they do once they have read everything.
        self._monitor = self.socket.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED
                                                       | zmq.EVENT_DISCONNECTED)
        self._peers = 0
        self._peers_seen = 0
        self._connections: set[int] = set()  # file descriptors of the peers' connections
        self._buffer_capped_logged = False
        self.send_buffer_sizes: list[int] = []  # what the kernel granted each ipc connection, bytes

    @property
    def peers(self) -> int:
        """Readers connected now."""
        if self._channel is not None:
            return self._channel.readers
        self._update_peers(0)
        return self._peers

    def send(self, message: Message) -> bool:
        """Send `message`; False when no peer took it within the send timeout (nothing sent).

        Sends without blocking and waits for room only when the queue is full: setting
        ZMQ_SNDTIMEO instead cost about a quarter of the throughput of 640x480 frames here.
        A multipart message is queued whole or not at all, so a retry never sends half.
        """
        if self._channel is not None:
            if self.pattern == "pub":
                inproc.publish(self._channel, message, self.options.hwm)
            elif not inproc.put(self._channel, message, 2 * self.options.hwm, self.options.send_timeout_ms / 1000):
                return False
            self.sent += 1
            return True
        parts = encode(message)
        try:
            self.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=self._copy)
        except zmq.Again:
            self._update_peers(0)  # a reader that just connected gets its buffer size here
            if not self.socket.poll(self.options.send_timeout_ms, zmq.POLLOUT):
                return False
            try:
                self.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=self._copy)
            except zmq.Again:
                return False
        self.sent += 1
        return True

    def _update_peers(self, timeout_ms: int) -> None:
        joined_fds: list[int] = []
        while self._monitor.poll(timeout_ms):
            event = recv_monitor_message(self._monitor)
            joined = event["event"] in (zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED)
            self._peers += 1 if joined else -1
            self._peers_seen += joined
            if joined:
                joined_fds.append(event["value"])  # the connection's file descriptor
                self._connections.add(event["value"])
            else:
                self._connections.discard(event["value"])
                if event["value"] in joined_fds:
                    joined_fds.remove(event["value"])  # gone already: the number may be reused
            timeout_ms = 0
        if self._has_ipc and self.options.ipc_send_buffer_bytes:
            for fd in joined_fds:
                self._set_send_buffer(fd)

    def _set_send_buffer(self, fd: int) -> None:
        """Give the ipc connection `fd` (libzmq's, reported by the monitor) a larger send buffer."""
        wanted = self.options.ipc_send_buffer_bytes
        try:
            # A duplicate of the descriptor, so that closing ours leaves libzmq's open.
            duplicate = os.dup(fd)
            try:
                connection = socket.socket(fileno=duplicate)  # reads the family from the descriptor
            except OSError:
                os.close(duplicate)
                raise
            with connection:
                # tcp connections are left alone: the kernel sizes their buffers by itself,
                # and ZMQ_SNDBUF sets them where asked (`buffer_bytes`).
                if connection.family != socket.AF_UNIX:
                    return
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wanted)
                got = connection.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2  # Linux reports double
        except OSError as error:  # closed meanwhile, or not a socket any more
            log.debug("could not size the send buffer of ipc connection fd %d: %s", fd, error)
            return
        self.send_buffer_sizes.append(got)
        if got < wanted and not self._buffer_capped_logged:
            self._buffer_capped_logged = True
            log.info("ipc send buffer capped at %d bytes by net.core.wmem_max (wanted %d); raising that "
                     "limit (sysctl -w net.core.wmem_max=%d) makes ipc links faster", got, wanted, wanted)

    #: Nothing left unread on the peers' connections for this long: everything sent has reached them.
    DELIVERED_SETTLE_S = 0.3
    #: While readers hold back what was sent, say so this often (seconds).
    WAITING_LOG_S = 30.0

    def unread_bytes(self) -> int | None:
        """Bytes this socket has written to its connected peers that they have not read yet.

        Linux only (SIOCOUTQ on each connection: for ipc, what the reader has not taken; for
        tcp, what the peer has not acknowledged); None elsewhere, or for inproc. What libzmq
        still holds in its own queue is not counted: its io thread writes it out as soon as the
        connection has room, so a connection with nothing unread soon carries the rest too.
        """
        if self._channel is not None or not sys.platform.startswith("linux"):
            return None
        self._update_peers(0)
        total = 0
        for fd in list(self._connections):
            try:
                total += struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            except OSError:   # closed meanwhile: its peer left (the monitor says so next)
                continue
        return total

    def wait_for_peers_to_leave(self, timeout: float, stop: Callable[[], bool] = lambda: False) -> bool:
        """After the last message: wait until the readers have everything; False if given up.

        ZeroMQ drops messages still queued when a sender closes while its receiver is at its
        high-water mark, LINGER notwithstanding, so a lossless end waits until one of:

        * every peer has left (a reader leaves once it has read the final end-of-stream marker);
        * (Linux) the connected peers have read every byte written to them, and nothing more
          came for `DELIVERED_SETTLE_S`: what was sent is theirs, and a reader that stays (a
          worker pool serving other runs) is no reason to wait.

        While readers are connected and still have something to read, this waits as long as
        they take (a slow consumer, a reader waiting on its own downstream), logging every
        `WAITING_LOG_S`: giving up then would lose the last messages, end-of-stream included.
        `timeout` bounds only the wait where nothing tells whether the peers have read it all:
        not Linux, or a sender that sent before any reader ever connected (it connects to a
        reader still loading its model, say: closing now would drop everything once LINGER ran
        out). `stop` is checked every 0.2 s and ends the wait early (False) when it returns True.
        """
        if self._channel is not None:
            return inproc.wait_for_readers_to_leave(self._channel, timeout, stop)
        started = time.monotonic()
        deadline = started + timeout
        logged_at = started
        delivered_since: float | None = None
        self._update_peers(0)
        while self._peers > 0 or (self.sent and not self._peers_seen):
            if stop():
                return False
            now = time.monotonic()
            unread = self.unread_bytes() if self._peers > 0 else None
            if unread is None:
                delivered_since = None
                if now >= deadline:
                    return False
            elif unread > 0:
                delivered_since = None
                if now - logged_at >= self.WAITING_LOG_S:
                    logged_at = now
                    log.info("%s: %d reader(s) still have %d bytes to read, %.0f s after the last message; "
                             "waiting for them", self.targets[0], self._peers, unread, now - started)
            else:
                delivered_since = delivered_since or now
                if now - delivered_since >= self.DELIVERED_SETTLE_S:
                    return True
            self._update_peers(int(min(max(deadline - now, 0.05), 0.1) * 1000) + 1)
        return True

    def close(self, linger_ms: int | None = None) -> None:
        if self._channel is not None:
            return
        self.socket.disable_monitor()
        self._monitor.close(linger=0)
        self.socket.close(linger=self.options.linger_ms if linger_ms is None else linger_ms)

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Receiver:
    """Receives messages on a PULL (fan-in) or SUB socket, one socket for all its endpoints.

    Bad messages are dropped with a logged reason and counted in `rejected` (by reason, one
    of `pipeline.message.REJECTION_REASONS`); `recv` then goes on waiting, so a bad peer never
    stops a stage. A message with a part over `SocketOptions.max_message_bytes` is dropped by
    libzmq unread, which closes that connection; `_ConnectionWatch` counts that as
    ``oversize`` too, and connects again where this side connected.
    """

    # Log the first few rejections of each reason, then one in this many, so a flood of bad
    # messages cannot flood the log too.
    LOG_EVERY = 100

    def __init__(self, sources: Iterable[Endpoint], *, pattern: ReceivePattern = "pull",
                 options: SocketOptions = SocketOptions(), context: zmq.Context | None = None,
                 topic: bytes = b"", rejected: Counter[str] | None = None):
        if pattern not in ("pull", "sub"):
            raise ValueError(f"receive pattern must be 'pull' or 'sub', got {pattern!r}")
        self.sources = list(sources)
        if not self.sources:
            raise EndpointError("a Receiver needs at least one endpoint")
        self.pattern = pattern
        self.options = options
        self.received = 0
        # Pass a counter to share it (a stage's metrics): rejections show while it runs.
        self.rejected: Counter[str] = Counter() if rejected is None else rejected
        self._watch: _ConnectionWatch | None = None
        self._channel = _inproc_channel(self.sources)
        if self._channel is not None:
            self.socket = None
            self._subscription = deque() if pattern == "sub" else None
            inproc.attach(self._channel, self._subscription)
            return

        def watch(zmq_socket: zmq.Socket) -> None:
            self._watch = _ConnectionWatch(zmq_socket, self.sources, options.max_message_bytes)

        try:
            self.socket = _open_socket(context or zmq.Context.instance(), pattern, self.sources, options,
                                       before_attach=watch)
        except BaseException:
            if self._watch is not None:
                self._watch.monitor.close(linger=0)
            raise
        if pattern == "sub":
            self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        self._poller.register(self._watch.monitor, zmq.POLLIN)
        self._next_watch = 0.0

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next well-formed message, or None when none came within `timeout` seconds.

        `timeout` None waits up to the socket's receive timeout.
        """
        if self._channel is not None:
            return self._recv_inproc(self.options.recv_timeout_ms / 1000 if timeout is None else timeout)
        deadline = time.monotonic() + (self.options.recv_timeout_ms / 1000 if timeout is None else max(0.0, timeout))
        while True:
            now = time.monotonic()
            if now >= self._next_watch:   # connections: a few times a second, and when they change
                self._next_watch = now + _ConnectionWatch.CHECK_S
                for error in self._watch.check():
                    self._reject(error)
            try:
                parts = self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                ready = dict(self._poller.poll(min(remaining, _ConnectionWatch.CHECK_S) * 1000 + 1))
                if self._watch.monitor in ready:
                    self._next_watch = 0.0
                continue
            try:
                message = decode(parts, self.options.max_message_bytes)
            except MessageError as error:
                self._reject(error)
                if time.monotonic() >= deadline:
                    return None
                continue
            self.received += 1
            return message

    def _recv_inproc(self, timeout_s: float) -> Message | None:
        deadline = time.monotonic() + timeout_s
        queue = self._channel.queue if self._subscription is None else self._subscription
        while True:
            message = inproc.take(self._channel, queue, max(0.0, deadline - time.monotonic()))
            if message is None:
                return None
            if message.nbytes > self.options.max_message_bytes:
                self._reject(MessageError("oversize", f"message must be at most {self.options.max_message_bytes} "
                                                      f"bytes, got {message.nbytes}"))
                continue
            self.received += 1
            return inproc.read_only(message)

    def _reject(self, error: MessageError) -> None:
        self.rejected[error.reason] += 1
        count = self.rejected[error.reason]
        if count <= 3 or count % self.LOG_EVERY == 0:
            where = ",".join(str(s) for s in self.sources)
            log.warning("rejected message #%d on %s (%s): %s", count, where, error.reason, error.detail)

    def close(self, linger_ms: int | None = None) -> None:
        if self._channel is not None:
            if self._channel is not _DETACHED:
                inproc.detach(self._channel, self._subscription)
                self._channel = _DETACHED
            return
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self.socket.close(linger=self.options.linger_ms if linger_ms is None else linger_ms)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ConnectionWatch:
    """Finds the connections of a receiving socket that libzmq closed because the peer broke
    the protocol: for a receiver, a part over ZMQ_MAXMSGSIZE (`check` returns an ``oversize``
    `MessageError` for each).

    libzmq 4.3 reports such a drop only as EVENT_DISCONNECTED, the event a peer that leaves
    also causes (measured with pyzmq 27 / libzmq 4.3.5: no HANDSHAKE_FAILED event, no error
    code). So:

    * where this side connected, libzmq reconnects after a peer left (EVENT_CONNECT_RETRIED
      follows at once) but never after a protocol error: the link would stay dead. A
      disconnect of an established connection that no retry follows within `RETRY_GRACE_S` is
      counted, and the endpoint connected again;
    * where this side bound, the peer reconnects by itself. Each accepted connection's socket
      is duplicated (the descriptor the monitor reports) and looked at once libzmq has let it
      go: end of file means the peer closed it (it left); anything else (bytes of the message
      libzmq refused, or nothing yet from a peer still connected) means libzmq closed it on
      its own. A failed CURVE handshake is told apart by its own event. A connection accepted
      and closed between two looks (`Receiver.recv` looks whenever it waits for input, and at
      least every `CHECK_S` while it reads) is not seen, nor counted.

    Any other ZMTP protocol error of an established connection (a peer that is not ZeroMQ,
    say) ends the same way and is counted the same.
    """

    CHECK_S = 0.1          # how often `Receiver.recv` looks at least, while it is called
    RETRY_GRACE_S = 0.5    # libzmq announces a reconnect microseconds after the disconnect
    EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
              | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    _FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
               zmq.EVENT_HANDSHAKE_FAILED_AUTH)

    def __init__(self, zmq_socket: zmq.Socket, sources: list[Endpoint], limit: int):
        self.zmq_socket = zmq_socket
        self.limit = limit
        self.monitor = zmq_socket.get_monitor_socket(self.EVENTS)
        self._connected = {t.url for t in sources if not t.bind}
        self._established: set[str] = set()              # connected endpoints past their handshake
        self._silent: dict[str, float] = {}              # connected endpoint -> when it dropped
        # libzmq's descriptor of an accepted connection -> (our duplicate, its inode, endpoint)
        self._accepted: dict[int, tuple[socket.socket, int, str]] = {}
        self._gone: set[int] = set()     # accepted descriptors found closed, awaiting their events
        self._failed_handshakes: Counter[str] = Counter()  # bound endpoint -> failures not yet matched

    def check(self) -> list[MessageError]:
        """Read the monitor; the drops found (each an ``oversize`` error to count)."""
        events = []
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            events.append((event["event"], event["value"], event["endpoint"].decode(errors="replace")))
        drops = []
        now = time.monotonic()
        for index, (kind, value, endpoint) in enumerate(events):
            if endpoint in self._connected:
                if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self._established.add(endpoint)
                elif kind == zmq.EVENT_DISCONNECTED and endpoint in self._established:
                    self._established.discard(endpoint)
                    self._silent[endpoint] = now
                elif kind in (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_CONNECTED):
                    self._silent.pop(endpoint, None)
            elif kind == zmq.EVENT_ACCEPTED:
                # Gone already if it disconnects later in this batch: the number may be reused.
                if value in self._accepted:    # its disconnect event was lost
                    drops += self._let_go(value)
                if not any(k == zmq.EVENT_DISCONNECTED and v == value for k, v, _ in events[index + 1:]):
                    self._duplicate(value, endpoint)
            elif kind in self._FAILED:
                self._failed_handshakes[endpoint] += 1
            elif kind == zmq.EVENT_DISCONNECTED:
                if value in self._accepted:
                    drops += self._let_go(value)
                else:
                    self._failed_handshakes.pop(endpoint, None)
        # A disconnect whose event was lost (the monitor's queue overflowed while nobody read it):
        # libzmq's descriptor is closed or is another socket now. Our duplicate must not keep the
        # connection open, and what closed it still counts.
        # Decided at the next check, once its events (a failed handshake, say) have been read.
        for fd, (_, inode, _) in list(self._accepted.items()):
            if fd in self._gone:
                drops += self._let_go(fd)
                continue
            try:
                if os.fstat(fd).st_ino != inode:
                    self._gone.add(fd)
            except OSError:
                self._gone.add(fd)
        for endpoint, since in list(self._silent.items()):
            if now - since >= self.RETRY_GRACE_S:
                del self._silent[endpoint]
                drops.append(MessageError("oversize", f"a part over {self.limit} bytes (ZMQ_MAXMSGSIZE) came "
                                          f"from {endpoint}: dropped unread, connection closed; connecting again"))
                self._reconnect(endpoint)
        return drops

    def _duplicate(self, fd: int, endpoint: str) -> None:
        try:
            duplicate = socket.socket(fileno=os.dup(fd))
        except OSError as error:   # closed meanwhile
            log.debug("could not watch connection fd %d: %s", fd, error)
            return
        self._accepted[fd] = (duplicate, os.fstat(duplicate.fileno()).st_ino, endpoint)

    def _let_go(self, fd: int) -> list[MessageError]:
        """libzmq let the accepted connection `fd` go: an ``oversize`` drop if libzmq closed it."""
        duplicate, _, endpoint = self._accepted.pop(fd)
        self._gone.discard(fd)
        closed_by_libzmq = self._closed_by_us(duplicate)
        if self._failed_handshakes[endpoint] > 0:
            self._failed_handshakes[endpoint] -= 1   # refused by CURVE, not by size
            return []
        if not closed_by_libzmq:
            return []
        return [MessageError("oversize", f"a part over {self.limit} bytes (ZMQ_MAXMSGSIZE) came on {endpoint}: "
                             f"dropped unread, connection closed")]

    @staticmethod
    def _closed_by_us(connection: socket.socket) -> bool:
        """Whether libzmq, not the peer, closed `connection` (our duplicate is closed here)."""
        with connection:
            try:
                return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
            except BlockingIOError:
                return True       # the peer is still there and has sent nothing more
            except OSError:
                return False      # reset by the peer: it went away

    def _reconnect(self, endpoint: str) -> None:
        try:
            self.zmq_socket.disconnect(endpoint)
        except zmq.ZMQError:
            pass
        try:
            self.zmq_socket.connect(endpoint)
        except zmq.ZMQError as error:
            log.warning("could not connect to %s again after an oversize message: %s", endpoint, error)

    def close(self) -> None:
        self.zmq_socket.disable_monitor()
        self.monitor.close(linger=0)
        for connection, _, _ in self._accepted.values():
            connection.close()
        self._accepted.clear()
