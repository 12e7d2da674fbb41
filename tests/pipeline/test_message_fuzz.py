"""Fuzzing the wire protocol: the decoder alone (property-based), then a running stage over a real socket.

Issue 8: a malformed message killed any stage (RecursionError, ValueError from 4,300-digit
integers, numpy errors on absurd dtypes and shapes). Now a receiver either gets a valid message
or counts a `MessageError` with a documented reason, and nothing else.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.message import KINDS, REJECTION_REASONS, Message, MessageError, decode, encode, eos
from pipeline.transport import Endpoint, Receiver, SocketOptions, free_tcp_port
from tests.pipeline.hostile_messages import (FIELDS, HOSTILE_VALUES, ISSUE_8, as_bytes, dumps, mutate,
                                             valid_message)

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 1 << 20      # the receivers' max_message_bytes in these tests

# Reproducible in CI: the same examples every run, nothing stored between runs.
def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def check_decode(parts: list[bytes]) -> Message | None:
    """The property: decode returns a usable Message or raises MessageError with a documented reason."""
    try:
        message = decode(parts, LIMIT)
    except MessageError as error:
        assert error.reason in REJECTION_REASONS, error
        return None
    assert isinstance(message, Message)
    # What was accepted can be sent on: encode fails only when the header grew past 64 KiB
    # (JSON escapes, numbers written out), which the stage runtime counts as a drop.
    try:
        again = decode(as_bytes(message), LIMIT)
    except MessageError as error:
        assert error.reason == "oversize-header", error
    else:
        assert again.header() == message.header()
    return message


@fuzz(5000)
@given(seed=st.integers(0, 2**64), mutations=st.integers(0, 3))
def test_decoding_mutated_messages_returns_a_message_or_a_counted_reason(seed, mutations):
    """Byte flips, truncation, field swaps, hostile values and dtypes/shapes, wrong part counts
    (drawn by a `random.Random` of hypothesis' seed: a failure names the seed that reproduces it)."""
    rng = random.Random(seed)
    parts = as_bytes(valid_message(rng))
    for _ in range(mutations):
        parts = mutate(parts, rng)
    check_decode(parts)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8),
                     st.sampled_from(HOSTILE_VALUES))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5),
                       inner, max_size=3), max_leaves=12)
_base = st.fixed_dictionaries({"v": st.just(1), "kind": st.sampled_from(KINDS), "stream": st.just("s"),
                               "seq": st.just(0)})
_headers = st.one_of(
    _values,                                                                       # anything JSON
    st.tuples(_base, st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), _values, max_size=6))
    .map(lambda pair: {**pair[0], **pair[1]}),                                     # near-valid headers
)


@fuzz(500)
@given(header=_headers, extra=st.lists(st.binary(max_size=40), max_size=3))
def test_decoding_generated_hostile_headers_returns_a_message_or_a_counted_reason(header, extra):
    check_decode([dumps(header), *extra])


@pytest.mark.parametrize("parts, reason", ISSUE_8, ids=[reason for _, reason in ISSUE_8])
def test_the_messages_that_killed_stages_are_rejected_with_their_reason(parts, reason):
    with pytest.raises(MessageError) as caught:
        decode(parts, LIMIT)
    assert caught.value.reason == reason


# A running stage, fed over a real socket --------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class Downstream(threading.Thread):
    """Reads everything the stage under test sends on, until its final end-of-stream marker."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.receiver = Receiver([Endpoint(url, False)], options=SocketOptions(recv_timeout_ms=100, linger_ms=0))
        self.received: list[Message] = []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                message = self.receiver.recv()
                if message is not None:
                    self.received.append(message)
                    if message.is_eos and message.final:
                        return
        finally:
            self.receiver.close(linger_ms=0)

    def has(self, seq: int, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(m.stream == "probe" and m.seq == seq for m in list(self.received)):
                return True
            time.sleep(0.02)
        return False


def send(socket: zmq.Socket, parts: list[bytes], stage: subprocess.Popen, timeout: float = 15.0) -> None:
    """Send `parts`, waiting while the stage is busy; fail at once if the stage died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.send_multipart(parts, flags=zmq.NOBLOCK)
            return
        except zmq.Again:
            assert stage.poll() is None, f"the stage died (exit {stage.returncode})"
            assert time.monotonic() < deadline, "the stage stopped reading"
            socket.poll(50, zmq.POLLOUT)


def probe(seq: int) -> list[bytes]:
    return as_bytes(Message("video", "probe", seq, arrays=(np.full((48, 64, 3), 7, np.uint8),)))


def test_a_running_stage_survives_thousands_of_hostile_messages_and_an_oversize_one(process_transport, tmp_path):
    """A relay stage (`infistream stage`, a subprocess) reads hostile messages from a raw ZeroMQ peer:
    it never dies, counts each rejection by the reason the decoder gives here, forwards the valid
    ones, keeps its memory flat, and survives a part over its limit (dropped unread by libzmq,
    counted as oversize, connection reopened) to relay the next message."""
    if process_transport == "ipc":
        upstream, downstream = f"ipc://{tmp_path}/up.sock", f"ipc://{tmp_path}/down.sock"
    else:
        upstream, downstream = (f"tcp://127.0.0.1:{free_tcp_port()}" for _ in range(2))
    metrics_path = tmp_path / "relay.json"
    command = [sys.executable, "-m", "pipeline.cli", "--log-level", "ERROR", "stage", "tests.helpers.stages:SlowRelay",
               "--name", "relay", "--params-json", '{"verify": false}', "--in", upstream, "--out", downstream,
               "--max-message-bytes", str(LIMIT), "--metrics-json", str(metrics_path), "--end-wait", "5"]
    raw = zmq.Context.instance().socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.SNDHWM, 4)
    raw.bind(upstream)
    stage = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reader = Downstream(downstream)
    reader.start()
    try:
        send(raw, probe(0), stage)
        assert reader.has(0), "the stage never relayed a first valid message"

        rng = random.Random(8)
        expected_rejections: Counter[str] = Counter()
        expected_drops: Counter[str] = Counter()
        hostile = [parts for parts, _ in ISSUE_8]
        while len(hostile) < 3000:
            parts = mutate(as_bytes(valid_message(rng)), rng)
            if not parts:
                continue   # ZeroMQ cannot send a message of no parts
            message = check_decode(parts)
            if message is not None and message.is_eos and message.final:
                continue   # a final marker would end the stage; it gets a real one at the end
            hostile.append(parts)
        baseline = None
        for index, parts in enumerate(hostile):
            if index == 500:
                baseline = rss_bytes(stage.pid)   # after warming up: buffers and caches in place
            send(raw, parts, stage)
            try:
                message = decode(parts, LIMIT)
            except MessageError as error:
                expected_rejections[error.reason] += 1
            else:
                try:
                    encode(message)
                except MessageError as error:
                    expected_drops[error.reason] += 1
        send(raw, probe(1), stage)
        assert reader.has(1), "the stage stopped relaying valid messages"
        grown = rss_bytes(stage.pid) - baseline
        assert grown < 16 << 20, f"the stage grew by {grown} bytes over 2,500 hostile messages"

        # A part four times the limit: libzmq drops it unread, so memory does not grow by its size.
        before = rss_bytes(stage.pid)
        send(raw, [dumps({"v": 1, "kind": "video", "stream": "big", "seq": 0,
                          "buffers": [{"dtype": "|u1", "shape": [4 * LIMIT]}]}), bytes(4 * LIMIT)], stage)
        for seq in range(2, 200):   # the stage connected to us: it reconnects after the drop
            send(raw, probe(seq), stage)
            if reader.has(seq, timeout=0.2):
                break
        else:
            pytest.fail("no valid message got through after the oversize one")
        assert rss_bytes(stage.pid) - before < 2 * LIMIT
        expected_rejections["oversize"] += 1

        send(raw, as_bytes(eos("probe", seq + 1, final=True)), stage)
        assert stage.wait(timeout=30) == 0, stage.stderr.read().decode(errors="replace")[-2000:]
    finally:
        if stage.poll() is None:
            stage.kill()
            stage.wait()
        reader.stop.set()
        reader.join(timeout=5)
        raw.close(linger=0)
    metrics = json.loads(metrics_path.read_text())
    assert metrics["rejected"] == dict(expected_rejections)
    assert metrics["errors"] == 0
    assert {k: v for k, v in metrics["dropped"].items() if v} == dict(expected_drops)
    relayed = [m for m in reader.received if m.stream != "probe"]
    assert len(relayed) == len(hostile) - sum(expected_rejections.values()) + 1 - sum(expected_drops.values())
