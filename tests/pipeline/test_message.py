"""The wire protocol: what encodes, what decodes, and what is rejected with which reason."""

from __future__ import annotations

import json
from contextlib import nullcontext as does_not_raise

import numpy as np
import pytest

from pipeline.message import (DEFAULT_MAX_MESSAGE_BYTES, MAX_HEADER_BYTES, PROTOCOL_VERSION, Message, MessageError,
                              decode, encode, eos)


def header(**fields) -> bytes:
    base = {"v": PROTOCOL_VERSION, "kind": "video", "stream": "s", "seq": 0, "buffers": []}
    base.update(fields)
    return json.dumps(base).encode()


def test_round_trip_keeps_every_field_and_does_not_copy_pixels():
    frame = np.arange(480 * 640 * 3, dtype=np.uint8).reshape(480, 640, 3)
    audio = np.linspace(-1, 1, 16000, dtype=np.float32)
    message = Message("video", "cam0", 7, pts=0.28, media={"fps": 25.0, "pixel_format": "bgr24"},
                      arrays=(frame, audio), decision={"action": "infer"}, result={"count": 2},
                      meta={"clip": "x", "tags": [1, 2]})
    parts = encode(message)
    assert parts[1] is frame and parts[2] is audio          # sent as the arrays themselves
    received = decode([bytes(parts[0]), memoryview(frame), memoryview(audio)])
    assert received.header() == message.header()
    assert np.shares_memory(received.arrays[0], frame)      # a view of the received buffer
    np.testing.assert_array_equal(received.arrays[1], audio)


def test_non_contiguous_array_is_made_contiguous_on_encode():
    frame = np.zeros((10, 20, 3), np.uint8)[:, ::2]
    parts = encode(Message("video", "s", 0, arrays=(frame,)))
    assert parts[1].flags.c_contiguous and parts[1].shape == (10, 10, 3)


def test_eos_carries_count_final_and_dropped():
    marker = decode(encode(eos("s", 120, final=True, dropped=3)))
    assert (marker.kind, marker.seq, marker.final, marker.dropped) == ("eos", 120, True, 3)


@pytest.mark.parametrize("build, reason", [
    (lambda: Message("picture", "s", 0), "bad-kind"),
    (lambda: Message("video", "", 0), "bad-stream"),
    (lambda: Message("video", "s", -1), "bad-seq"),
    (lambda: Message("video", "s", True), "bad-seq"),
    (lambda: Message("video", "s", 0, pts=float("nan")), "bad-pts"),
    (lambda: Message("video", "s", 0, arrays=([1, 2],)), "bad-array"),
    (lambda: Message("video", "s", 0, arrays=(np.array(["a"]),)), "bad-dtype"),
    (lambda: Message("video", "s", 0, media={"fps": [25]}), "bad-media"),
    (lambda: Message("eos", "s", 0, arrays=(np.zeros(1),)), "bad-eos"),
    (lambda: Message("video", "s", 0, decision="infer"), "bad-decision"),
    (lambda: encode(Message("video", "s", 0, meta={"x": object()})), "unencodable-header"),
    (lambda: encode(Message("video", "s", 0, meta={"x": "y" * MAX_HEADER_BYTES})), "oversize-header"),
])
def test_bad_messages_cannot_be_built_or_encoded(build, reason):
    with pytest.raises(MessageError) as caught:
        build()
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("parts, reason", [
    ([], "empty"),
    ([b"\xff\xfe"], "bad-header"),
    ([b"not json"], "bad-header"),
    ([b"[1, 2]"], "bad-header"),
    ([header(v=2)], "bad-version"),
    ([json.dumps({"kind": "video"}).encode()], "bad-version"),
    ([header(), b"extra"], "buffer-count"),
    ([header(buffers=[{"dtype": "|u1", "shape": [2]}])], "buffer-count"),
    ([header(buffers=[{"dtype": "|u1", "shape": [4]}]), b"abc"], "size-mismatch"),
    ([header(buffers=[{"dtype": "<f4", "shape": [2, 2]}]), b"x" * 15], "size-mismatch"),
    ([header(buffers=[{"dtype": "|O", "shape": [1]}]), b"x" * 8], "bad-dtype"),
    ([header(buffers=[{"dtype": "nonsense", "shape": [1]}]), b"x"], "bad-dtype"),
    ([header(buffers=[{"dtype": "|u1", "shape": [-1]}]), b"x"], "bad-shape"),
    ([header(buffers=[{"dtype": "|u1", "shape": "3"}]), b"xxx"], "bad-shape"),
    ([header(buffers=["u1"]), b"x"], "bad-buffer"),
    ([header(kind="frame")], "bad-kind"),
    ([header(seq="1")], "bad-field"),
    ([header(stream=5)], "bad-field"),
    ([header(meta=[1])], "bad-field"),
    ([header(), ], None),
    ([b"x" * (MAX_HEADER_BYTES + 1)], "oversize-header"),
])
def test_decode_rejects_malformed_messages_with_a_reason(parts, reason):
    expectation = does_not_raise() if reason is None else pytest.raises(MessageError)
    with expectation as caught:
        decode(parts)
    if reason is not None:
        assert caught.value.reason == reason


def test_decode_rejects_oversize_before_parsing():
    frame = np.zeros(1000, np.uint8)
    parts = encode(Message("video", "s", 0, arrays=(frame,)))
    with pytest.raises(MessageError, match="at most 500 bytes, got"):
        decode(parts, max_bytes=500)
    assert decode(parts, max_bytes=DEFAULT_MAX_MESSAGE_BYTES).arrays[0].size == 1000
