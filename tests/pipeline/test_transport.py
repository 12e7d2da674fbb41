"""ZeroMQ transport over inproc, ipc and tcp: delivery, zero copy, limits and bad peers."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import zmq

from pipeline.errors import EndpointError
from pipeline.message import Message, encode
from pipeline.security import CurveConfig, create_keys, stop_authenticators
from pipeline.transport import Endpoint, Receiver, Sender, SocketOptions, endpoints, free_tcp_port

FAST = SocketOptions(hwm=4, send_timeout_ms=100, recv_timeout_ms=100, linger_ms=0)


def frame_message(seq: int, stream: str = "s") -> Message:
    return Message("video", stream, seq, arrays=(np.full((48, 64, 3), seq % 256, np.uint8),))


@pytest.mark.parametrize("text, bind_default, url, bind", [
    ("tcp://127.0.0.1:5555", False, "tcp://127.0.0.1:5555", False),
    ("tcp://:5555", True, "tcp://127.0.0.1:5555", True),             # no host: loopback only
    ("tcp://localhost:5555", True, "tcp://127.0.0.1:5555", True),
    ("tcp://0.0.0.0:5555", True, "tcp://*:5555", True),              # all interfaces when asked
    ("@tcp://*:5555", False, "tcp://*:5555", True),
    (">tcp://10.0.0.2:5555", True, "tcp://10.0.0.2:5555", False),
    ("ipc:///tmp/x.sock", True, "ipc:///tmp/x.sock", True),
    ("inproc://frames", False, "inproc://frames", False),
])
def test_endpoint_parsing(text, bind_default, url, bind):
    assert Endpoint.parse(text, bind_default=bind_default) == Endpoint(url, bind)


@pytest.mark.parametrize("text", ["", "frames", "udp://1.2.3.4:5", "tcp://host", "tcp://h:0", "tcp://h:70000",
                                  ">tcp://*:5555", ">tcp://:5555", "ipc://", "tcp://[::1:5"])
def test_bad_endpoints_are_rejected_with_the_text(text):
    with pytest.raises(EndpointError):
        Endpoint.parse(text, bind_default=False)


def test_tcp_binds_loopback_unless_told_otherwise():
    with Sender(endpoints("tcp://:*", bind_default=True), options=FAST) as sender:
        bound = sender.socket.getsockopt_string(zmq.LAST_ENDPOINT)
    assert bound.startswith("tcp://127.0.0.1:")


def test_round_trip_in_order_without_copying(transport, make_url):
    url = make_url(transport)
    with Sender([Endpoint(url, True)], options=FAST) as sender, \
            Receiver([Endpoint(url, False)], options=FAST) as receiver:
        received = []

        def consume():
            while len(received) < 50:
                message = receiver.recv(timeout=5)
                assert message is not None
                received.append(message)

        consumer = threading.Thread(target=consume)
        consumer.start()
        for seq in range(50):
            assert sender.send(frame_message(seq)) or sender.send(frame_message(seq))
        consumer.join(10)
    assert [m.seq for m in received] == list(range(50))
    assert all(int(m.arrays[0][0, 0, 0]) == m.seq for m in received)
    # The pixels are a read-only view of ZeroMQ's buffer, not a copy.
    assert not received[-1].arrays[0].flags.writeable and received[-1].arrays[0].base is not None


def test_sender_times_out_instead_of_blocking_forever(transport, make_url):
    url = make_url(transport)
    with Sender([Endpoint(url, True)], options=FAST) as sender:
        assert sender.send(frame_message(0)) is False      # nobody connected: it returned, not sent


def test_high_water_mark_bounds_the_queue(make_url):
    """With nobody reading, a PUSH sender accepts only about hwm messages per peer, then blocks."""
    url = make_url("ipc")
    options = SocketOptions(hwm=2, send_timeout_ms=50, recv_timeout_ms=50, linger_ms=0)
    with Sender([Endpoint(url, True)], options=options) as sender, \
            Receiver([Endpoint(url, False)], options=options) as receiver:
        time.sleep(0.2)  # let the receiver connect
        # Large frames so the kernel socket buffers cannot hide the bound.
        big = [Message("video", "s", i, arrays=(np.zeros(4 << 20, np.uint8),)) for i in range(20)]
        accepted = sum(sender.send(m) for m in big)
        assert 2 <= accepted <= 8, accepted
        assert receiver.recv(timeout=2).seq == 0


def _raw_push(url: str) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.PUSH)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(url)
    return socket


@pytest.mark.parametrize("bad_parts, reason", [
    ([b"garbage"], "bad-header"),
    ([json.dumps({"v": 1, "kind": "video", "stream": "s", "seq": 0,
                  "buffers": [{"dtype": "|u1", "shape": [10]}]}).encode()], "buffer-count"),
    ([json.dumps({"v": 1, "kind": "video", "stream": "s", "seq": 0,
                  "buffers": [{"dtype": "|u1", "shape": [10]}]}).encode(), b"short"], "size-mismatch"),
    ([json.dumps({"v": 99}).encode()], "bad-version"),
    # One part over the limit: libzmq drops it unread and closes the bad peer's connection.
    (encode(Message("video", "s", 0, arrays=(np.zeros(2048, np.uint8),))), "oversize"),
    # Every part under the limit, all of them together over it: refused by decode.
    (encode(Message("video", "s", 0, arrays=(np.zeros(600, np.uint8),) * 2)), "oversize"),
    ([b'{"v":1,"kind":"video","stream":"s","seq":0,"meta":' + b"[" * 40 + b"]" * 40 + b"}"], "bad-header"),
    ([json.dumps({"v": 1, "kind": "video", "stream": "s", "seq": 0}).replace("0}", "NaN}").encode()], "bad-number"),
])
def test_receiver_rejects_bad_messages_and_keeps_receiving(process_transport, make_url, bad_parts, reason):
    """Raw bytes from a foreign peer (inproc is an in-process channel of typed messages: no such peer)."""
    url = make_url(process_transport)
    options = SocketOptions(hwm=4, send_timeout_ms=100, recv_timeout_ms=100, linger_ms=0, max_message_bytes=1024)
    with Receiver([Endpoint(url, True)], options=options) as receiver:
        bad_peer = _raw_push(url)
        with Sender([Endpoint(url, False)], options=options) as good_peer:
            # Let the receiver see both connections first: one accepted and dropped between two
            # looks at the monitor is not counted (see _ConnectionWatch).
            assert receiver.recv(timeout=0.3) is None
            bad_peer.send_multipart(bad_parts)
            time.sleep(0.05)
            assert good_peer.send(Message("video", "s", 1, arrays=(np.zeros(10, np.uint8),)))
            message = receiver.recv(timeout=5)
        bad_peer.close()
    assert message is not None and message.seq == 1
    assert receiver.rejected == {reason: 1}


def test_pub_sub_fans_out_to_every_subscriber(make_url):
    url = make_url("ipc")
    with Sender([Endpoint(url, True)], pattern="pub", options=FAST) as publisher, \
            Receiver([Endpoint(url, False)], pattern="sub", options=FAST) as first, \
            Receiver([Endpoint(url, False)], pattern="sub", options=FAST) as second:
        time.sleep(0.3)  # PUB drops for subscribers that have not joined yet (slow joiner)
        publisher.send(Message("result", "s", 0, result={"count": 3}))
        assert first.recv(timeout=2).result == {"count": 3}
        assert second.recv(timeout=2).result == {"count": 3}


def test_one_receiver_fans_in_from_several_endpoints(make_url):
    urls = [make_url("ipc"), make_url("tcp")]
    with Receiver([Endpoint(u, True) for u in urls], options=FAST) as receiver, \
            Sender([Endpoint(urls[0], False)], options=FAST) as a, Sender([Endpoint(urls[1], False)], options=FAST) as b:
        assert a.send(frame_message(0, "a")) and b.send(frame_message(0, "b"))
        streams = {receiver.recv(timeout=2).stream, receiver.recv(timeout=2).stream}
    assert streams == {"a", "b"}


def test_inproc_rejects_oversize_and_hands_over_read_only_views(make_url):
    url = make_url("inproc")
    options = SocketOptions(hwm=2, send_timeout_ms=100, recv_timeout_ms=100, max_message_bytes=1024)
    frame = np.zeros(100, np.uint8)
    with Receiver([Endpoint(url, False)], options=options) as receiver, \
            Sender([Endpoint(url, True)], options=options) as sender:
        assert sender.send(Message("video", "s", 0, arrays=(np.zeros(2048, np.uint8),)))
        assert sender.send(Message("video", "s", 1, arrays=(frame,)))
        received = receiver.recv(timeout=2)
    assert received.seq == 1 and receiver.rejected == {"oversize": 1}
    assert np.shares_memory(received.arrays[0], frame) and not received.arrays[0].flags.writeable
    assert frame.flags.writeable  # the sender's own array is untouched


def test_inproc_cannot_share_a_socket_with_other_transports(make_url):
    with pytest.raises(EndpointError, match="must be a socket's only endpoint"):
        Receiver([Endpoint(make_url("inproc"), False), Endpoint(make_url("ipc"), True)], options=FAST)


def test_ipc_sender_enlarges_the_send_buffer_of_every_connection(make_url):
    """libzmq leaves ipc sockets at the kernel's default buffer (less than one 640x480 frame)."""
    url = make_url("ipc")
    wanted = SocketOptions().ipc_send_buffer_bytes
    with open("/proc/sys/net/core/wmem_max") as limit:
        expected = min(wanted, int(limit.read()))
    with Sender([Endpoint(url, True)], options=FAST) as sender, \
            Receiver([Endpoint(url, False)], options=FAST), Receiver([Endpoint(url, False)], options=FAST):
        deadline = time.monotonic() + 5
        while sender.peers < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sender.peers == 2
        assert sender.send_buffer_sizes == [expected, expected]
    untuned_url = make_url("ipc")
    with Sender([Endpoint(untuned_url, True)], options=replace(FAST, ipc_send_buffer_bytes=0)) as sender, \
            Receiver([Endpoint(untuned_url, False)], options=FAST):
        deadline = time.monotonic() + 5
        while sender.peers < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sender.peers == 1 and sender.send_buffer_sizes == []
    # A sender bound to ipc and tcp at once sizes its ipc connections only.
    mixed = [make_url("ipc"), make_url("tcp")]
    with Sender([Endpoint(u, True) for u in mixed], options=FAST) as sender, \
            Receiver([Endpoint(mixed[0], False)], options=FAST), Receiver([Endpoint(mixed[1], False)], options=FAST):
        deadline = time.monotonic() + 5
        while sender.peers < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sender.peers == 2 and sender.send_buffer_sizes == [expected]


def test_inproc_fan_in_while_a_sender_waits_for_readers_to_leave(make_url):
    """Wake-ups go to whoever waits for them: a take wakes a blocked sender, not the one
    waiting for the readers to leave, and the reader leaving wakes that one."""
    url = make_url("inproc")
    options = SocketOptions(hwm=1, send_timeout_ms=2000, recv_timeout_ms=2000)
    receiver = Receiver([Endpoint(url, False)], options=options)
    first, second = Sender([Endpoint(url, True)], options=options), Sender([Endpoint(url, False)], options=options)
    results = {}

    def send_all(name, sender, count):
        results[name] = [sender.send(frame_message(seq, name)) for seq in range(count)]

    waiter = threading.Thread(target=lambda: results.update(left=first.wait_for_peers_to_leave(10)))
    feeder = threading.Thread(target=send_all, args=("b", second, 200))
    assert first.send(frame_message(0, "a"))
    waiter.start()
    feeder.start()
    # A missed wake-up leaves a sender waiting out its 2 s timeout (a send that fails) or the
    # receiver its own (a None): outcomes, not elapsed time, which a busy machine stretches.
    received = [receiver.recv(timeout=2) for _ in range(201)]
    feeder.join(5)
    receiver.close()
    waiter.join(5)
    assert None not in received and all(results["b"]) and results["left"] is True
    assert sorted((m.stream, m.seq) for m in received) == [("a", 0)] + [("b", seq) for seq in range(200)]


def _small(seq: int) -> Message:
    return Message("video", "s", seq, arrays=(np.zeros(10, np.uint8),))


def _receive_seq(receiver: Receiver, sender: Sender, seq: int, within_s: float = 10.0) -> Message | None:
    """Send `seq` until `receiver` has it (a sender cut off by the receiver reconnects meanwhile)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        sender.send(_small(seq))
        message = receiver.recv(timeout=0.2)
        if message is not None and message.seq == seq:
            return message
    return None


@pytest.mark.parametrize("receiver_binds", [False, True], ids=["receiver-connects", "receiver-binds"])
def test_a_part_over_the_limit_is_dropped_unread_counted_and_the_link_lives_on(process_transport, make_url,
                                                                              receiver_binds):
    """libzmq (ZMQ_MAXMSGSIZE) drops a 4 MiB part at a 1 MiB limit and closes the connection. Where the
    receiver connected, libzmq would never reconnect after that (the link stayed dead); where it bound,
    the sender reconnects. Either way the drop is counted as "oversize" and the next message arrives."""
    url = make_url(process_transport)
    options = replace(FAST, max_message_bytes=1 << 20)
    with Receiver([Endpoint(url, receiver_binds)], options=options) as receiver, \
            Sender([Endpoint(url, not receiver_binds)], options=options) as sender:
        assert _receive_seq(receiver, sender, 0) is not None
        assert sender.send(Message("video", "s", 1, arrays=(np.zeros(4 << 20, np.uint8),)))
        assert _receive_seq(receiver, sender, 2) is not None
        assert _receive_seq(receiver, sender, 3) is not None
        assert receiver.rejected == {"oversize": 1}


@pytest.mark.parametrize("receiver_binds", [False, True], ids=["receiver-connects", "receiver-binds"])
def test_a_peer_that_leaves_and_comes_back_is_not_counted_as_a_rejection(process_transport, make_url,
                                                                        receiver_binds):
    url = make_url(process_transport)
    with Receiver([Endpoint(url, receiver_binds)], options=FAST) as receiver:
        for seq in range(2):
            with Sender([Endpoint(url, not receiver_binds)], options=FAST) as sender:
                assert _receive_seq(receiver, sender, seq) is not None
            receiver.recv(timeout=0.7)  # sees the peer leave, and the retries (grace period: 0.5 s)
        assert receiver.rejected == {}


@pytest.mark.parametrize("receiver_binds", [False, True], ids=["receiver-connects", "receiver-binds"])
@pytest.mark.parametrize("case", ["plaintext peer", "wrong server key"])
def test_a_refused_curve_handshake_is_not_counted_as_an_oversize_message(tmp_path, receiver_binds, case):
    """libzmq closes a connection whose CURVE handshake fails, as it does after an oversize part:
    the connection watch must tell the two apart."""
    server_public, server_secret = create_keys(tmp_path, "server")
    client_public, client_secret = create_keys(tmp_path, "client")
    stranger_public, _ = create_keys(tmp_path, "stranger")
    server = CurveConfig(server_secret)
    client = None if case == "plaintext peer" else CurveConfig(client_secret, server_public=stranger_public)
    url = f"tcp://127.0.0.1:{free_tcp_port()}"
    try:
        with Receiver([Endpoint(url, receiver_binds)], options=replace(FAST, curve=server if receiver_binds else client)) \
                as receiver, \
                Sender([Endpoint(url, not receiver_binds)], options=replace(FAST, curve=client if receiver_binds else server)) \
                as sender:
            sender.send(_small(0))
            assert receiver.recv(timeout=1.0) is None   # refused: nothing gets through
            assert receiver.rejected == {}
    finally:
        stop_authenticators()
