"""The wire protocol: what encodes, what decodes, and what is rejected with which reason."""

from __future__ import annotations

import json
import re
from contextlib import nullcontext as does_not_raise
from pathlib import Path

import numpy as np
import pytest

import pipeline.message
import pipeline.transport
from pipeline.message import (DEFAULT_MAX_MESSAGE_BYTES, MAX_HEADER_BYTES, PROTOCOL_VERSION, REJECTION_REASONS,
                              WIRE_DTYPES, Message, MessageError, decode, encode, eos)


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
    (lambda: Message("video", "s", 0, pts=True), "bad-pts"),
    (lambda: Message("video", "s", 0, t_capture=float("inf")), "bad-t_capture"),
    (lambda: Message("video", "s", 0, t_capture=False), "bad-t_capture"),
    (lambda: Message("video", "s", 2**63), "bad-seq"),
    (lambda: Message("video", "s\x00", 0), "bad-stream"),
    (lambda: Message("video", "s" * 1025, 0), "bad-stream"),
    (lambda: Message("eos", "s", 0, dropped=True), "bad-dropped"),
    (lambda: Message("eos", "s", 0, dropped=-1), "bad-dropped"),
    (lambda: Message("eos", "s", 0, final=1), "bad-final"),
    (lambda: Message("video", "s", 0, media={"fps": float("nan")}), "bad-media"),
    (lambda: Message("video", "s", 0, meta=[]), "bad-meta"),
    (lambda: Message("video", "s", 0, result=[]), "bad-result"),
    (lambda: Message("video", "s", 0, arrays=(np.zeros(1, np.longdouble),)), "bad-dtype"),
    (lambda: Message("video", "s", 0, arrays=(np.zeros(1, "i4,f8"),)), "bad-dtype"),
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
    ([header(seq="1")], "bad-seq"),
    ([header(stream=5)], "bad-stream"),
    ([header(meta=[1])], "bad-meta"),
    ([header(), ], None),
    ([b"x" * (MAX_HEADER_BYTES + 1)], "oversize-header"),
    # Found by fuzzing a running stage (issue 8): each of these used to escape as another exception
    # (RecursionError, ValueError, numpy errors) and kill the stage, or was accepted though invalid.
    ([b'{"v":1,"kind":"video","stream":"s","seq":0,"meta":' + b"[" * 1000 + b"]" * 1000 + b"}"], "bad-header"),
    ([header(meta={"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]})], "bad-header"),
    ([b'{"v":1,"kind":"video","stream":"s","seq":' + b"9" * 5000 + b"}"], "bad-number"),
    ([b'{"v":1,"kind":"video","stream":"s","seq":0,"meta":{"n":' + b"9" * 5000 + b"}}"], "bad-number"),
    ([header(seq=2**63)], "bad-number"),
    ([header(kind="eos", dropped=2**64)], "bad-number"),
    ([header(buffers=[{"dtype": "i4,(99999999999,)f8", "shape": [0]}]), b""], "bad-dtype"),
    ([header(buffers=[{"dtype": "<f16", "shape": [1]}]), b"x" * 16], "bad-dtype"),
    ([header(buffers=[{"dtype": "=f4", "shape": [1]}]), b"x" * 4], "bad-dtype"),
    ([header(buffers=[{"dtype": "|u1", "shape": [0, 10**30]}]), b""], "bad-number"),
    ([header(buffers=[{"dtype": "|u1", "shape": [0, 2**62, 2**62]}]), b""], "bad-shape"),
    ([header(buffers=[{"dtype": "|u1", "shape": [0, 1.5]}]), b""], "bad-shape"),
    ([header(buffers=[{"dtype": "<f4", "shape": [0, 4]}]), b""], None),   # no detections: legal
    ([header(buffers={"dtype": "|u1"})], "bad-buffer"),
    ([header(v=True)], "bad-version"),
    ([header(v=1.0)], "bad-version"),
    ([header().replace(b'"seq": 0', b'"seq": 0, "t_capture": NaN')], "bad-number"),
    ([header().replace(b'"seq": 0', b'"seq": 0, "pts": Infinity')], "bad-number"),
    ([header().replace(b'"seq": 0', b'"seq": 0, "pts": 1e999')], "bad-number"),
    ([header().replace(b'"seq": 0', b'"seq": 0, "result": {"s": [-Infinity]}')], "bad-number"),
    ([header(pts=True)], "bad-pts"),
    ([header(t_capture="now")], "bad-t_capture"),
    ([header(kind="eos", dropped=True)], "bad-dropped"),
    ([header(kind="eos", dropped=-1)], "bad-dropped"),
    ([header(kind="eos", final=1)], "bad-final"),
    ([header(stream="a\nb")], "bad-stream"),
    ([header(stream="x" * 1025)], "bad-stream"),
    ([header(stream="")], "bad-stream"),
    ([b'{"v":1,"kind":"video","stream":"\\ud800","seq":0}'], "bad-stream"),   # a lone surrogate
    ([header(stream="caf\u00e9/\U0001f600")], None),
    ([header(stream="clip\u00a0one \u3000\u5f71\u50cf\U0001f468\u200d\U0001f469")], None),  # no-break, ideographic space, ZWJ
    ([header(stream="a\tb")], "bad-stream"),
    ([header(stream="a\u2028b")], "bad-stream"),
    ([header(stream="a\x85b")], "bad-stream"),
    ([header(kind=["video"])], "bad-kind"),
    ([b'{"v":1,"stream":"s","seq":0}'], "missing-field"),
    ([header(media={"fps": [25]})], "bad-media"),
    ([header(decision="infer")], "bad-decision"),
    ([header(result=[1])], "bad-result"),
    ([header(), *[b""] * 17], "too-many-buffers"),
    ([header(kind="eos", buffers=[{"dtype": "|u1", "shape": [1]}]), b"x"], "bad-eos"),
    ([header(unknown_field=[1, 2])], None),
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


@pytest.mark.parametrize("dtype", sorted(WIRE_DTYPES))
def test_every_wire_dtype_round_trips(dtype):
    array = np.arange(6).astype(dtype).reshape(2, 3)
    received = decode([bytes(p) for p in encode(Message("video", "s", 0, arrays=(array,)))])
    assert received.arrays[0].dtype.str == dtype
    np.testing.assert_array_equal(received.arrays[0], array)


def test_numpy_scalars_of_the_builtin_types_are_accepted():
    message = Message("video", "s", 0, pts=np.float64(0.04), t_capture=np.float64(1.0))
    assert decode(encode(message)).pts == 0.04


PROTOCOL_DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
# Reasons only a sender meets (building or encoding a message), never a receiver.
SENDER_ONLY_REASONS = {"bad-array", "unencodable-header"}


def test_the_documented_rejection_reasons_are_exactly_those_the_code_gives():
    section = PROTOCOL_DOC.read_text().split("### What a receiver rejects", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z_-]+)` \|", section, flags=re.M)
    assert documented == list(REJECTION_REASONS)
    # Every reason raised in the code a receiver runs is in the table, and nothing else is.
    sources = [Path(pipeline.message.__file__), Path(pipeline.transport.__file__)]
    raised = {reason for path in sources
              for reason in re.findall(r'MessageError\(\s*"([a-z_-]+)"', path.read_text())}
    assert raised - SENDER_ONLY_REASONS == set(REJECTION_REASONS)


def test_the_documented_dtypes_are_exactly_those_accepted():
    text = PROTOCOL_DOC.read_text()
    listing = text.split("Exactly\nthese 25 strings are accepted", 1)[1]
    one_byte, little, big = re.findall(r"^\* (.*)$", listing, flags=re.M)[:3]
    documented = re.findall(r"`(\|[a-z]\d+)`", one_byte) + re.findall(r"`(<[a-z]\d+)`", little)
    documented += [">" + dtype[1:] for dtype in re.findall(r"`(<[a-z]\d+)`", little)] if "same eleven with `>`" in big else []
    assert sorted(documented) == sorted(WIRE_DTYPES) and len(WIRE_DTYPES) == 25
