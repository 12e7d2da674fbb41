"""Hostile and mutated wire messages, for fuzzing the decoder and running stages.

Everything is drawn from a `random.Random`, so a fixed seed gives the same messages every run
(the property test hands in hypothesis' own `Random`). `ISSUE_8` holds the messages that killed
stages before (issue 8), each with the reason it must now be rejected for.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np

from pipeline.message import KINDS, WIRE_DTYPES, Message, encode, eos

Parts = list[bytes]

# Values that must not be taken for what a field needs. "\x00BIG" and "\x00DEEP" stand for an
# integer of 5,000 digits and 1,000 levels of nesting (json.dumps cannot write the first and
# should not have to write the second), "\x00NAN" etc. for the non-standard JSON constants.
HOSTILE_VALUES: list[Any] = [
    True, False, None, 0, -1, 1.0, 1.5, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30,
    "", " ", "x" * 2000, "a\nb", "\x00", "\ud800", "\u00e9" * 50, "1", "NaN", [], [1], [[[]]], {}, {"a": 1},
    {"": None}, "\x00BIG", "\x00DEEP", "\x00NAN", "\x00INF", "\x00-INF", "\x00HUGE_FLOAT",
]
HOSTILE_DTYPES: list[Any] = [
    "i4,(99999999999,)f8", "<f16", "<c32", "|O", "O", "|V8", "S10", "<U3", "=f4", "f4", "<u1", "", "nonsense",
    "(2,)<f4", "M8[s]", "<m8", "b", None, 4, ["<f4"], {"dtype": "<f4"},
]
HOSTILE_SHAPES: list[Any] = [
    [0, 10**30], [0, 2**62, 2**62], [0, 2**63 - 1], [2**31, 2**31, 0], [-1], [1.5], "3", [True], [None], [[2]],
    [1] * 9, [], [0], {}, None, [2**63], [0, "\x00BIG"],
]
FIELDS = ("v", "kind", "stream", "seq", "pts", "t_capture", "media", "buffers", "decision", "result", "meta",
          "final", "dropped")

_SPECIAL = {
    '"\\u0000BIG"': "9" * 5000,
    '"\\u0000DEEP"': "[" * 1000 + "]" * 1000,
    '"\\u0000NAN"': "NaN",
    '"\\u0000INF"': "Infinity",
    '"\\u0000-INF"': "-Infinity",
    '"\\u0000HUGE_FLOAT"': "1e999",
}


def dumps(header: Any) -> bytes:
    """`header` as JSON, the placeholders above written as what they stand for."""
    text = json.dumps(header, separators=(",", ":"))
    for placeholder, raw in _SPECIAL.items():
        text = text.replace(placeholder, raw)
    return text.encode()


def valid_message(rng: random.Random) -> Message:
    """A small well-formed message (never a final end-of-stream marker)."""
    kind = rng.choice(KINDS)
    stream = rng.choice(["cam0", "s", "actioncliptrain00001/video", "caf\u00e9", "x" * rng.randint(1, 64)])
    seq = rng.randint(0, 10**6)
    if kind == "eos":
        return eos(stream, seq, dropped=rng.randint(0, 5))
    arrays = []
    for _ in range(rng.randint(0, 3)):
        dtype = rng.choice(list(WIRE_DTYPES))
        shape = [rng.randint(0, 6) for _ in range(rng.randint(0, 3))]
        arrays.append(np.zeros(shape, dtype))
    return Message(kind, stream, seq, pts=rng.uniform(0, 100), media={"fps": 25.0, "width": 64},
                   arrays=tuple(arrays), decision={"action": "infer"} if rng.random() < 0.3 else None,
                   result={"count": rng.randint(0, 9)} if kind == "result" else None,
                   meta={"clip": "c", "prev_seq": seq - 2} if rng.random() < 0.3 else {})


def as_bytes(message: Message) -> Parts:
    """The bytes a socket would send for `message`. Through memoryview, as zmq reads a buffer:
    `bytes()` of a 0-d array is its *value's* count of zero bytes (bytes(np.array(0)) == b'')."""
    return [bytes(memoryview(part)) for part in encode(message)]


def mutate(parts: Parts, rng: random.Random) -> Parts:
    """One to three random mutations of a message's parts."""
    for _ in range(rng.randint(1, 3)):
        parts = rng.choice(_MUTATIONS)(list(parts), rng)
    return parts


def _header(parts: Parts) -> dict | None:
    try:
        header = json.loads(parts[0])
    except (ValueError, IndexError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def _set_field(parts: Parts, rng: random.Random) -> Parts:
    header = _header(parts)
    if header is None:
        return parts
    header[rng.choice(FIELDS)] = rng.choice(HOSTILE_VALUES)
    return [dumps(header), *parts[1:]]


def _delete_field(parts: Parts, rng: random.Random) -> Parts:
    header = _header(parts)
    if header is None or not header:
        return parts
    del header[rng.choice(sorted(header))]
    return [dumps(header), *parts[1:]]


def _swap_fields(parts: Parts, rng: random.Random) -> Parts:
    header = _header(parts)
    if header is None or len(header) < 2:
        return parts
    a, b = rng.sample(sorted(header), 2)
    header[a], header[b] = header[b], header[a]
    return [dumps(header), *parts[1:]]


def _hostile_buffer(parts: Parts, rng: random.Random) -> Parts:
    header = _header(parts)
    if header is None:
        return parts
    spec = {"dtype": rng.choice([*HOSTILE_DTYPES, *WIRE_DTYPES]), "shape": rng.choice([*HOSTILE_SHAPES, [2, 3]])}
    if rng.random() < 0.2:
        spec = rng.choice(HOSTILE_VALUES)
    header["buffers"] = [spec]
    return [dumps(header), *(parts[1:2] or [rng.choice([b"", b"\x00" * 24])])]


def _flip_bytes(parts: Parts, rng: random.Random) -> Parts:
    index = rng.randrange(len(parts)) if parts else 0
    if not parts or not parts[index]:
        return parts
    data = bytearray(parts[index])
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    parts[index] = bytes(data)
    return parts


def _truncate(parts: Parts, rng: random.Random) -> Parts:
    index = rng.randrange(len(parts)) if parts else 0
    if parts:
        parts[index] = parts[index][:rng.randint(0, len(parts[index]))]
    return parts


def _parts_count(parts: Parts, rng: random.Random) -> Parts:
    choice = rng.randrange(4)
    if choice == 0 and parts:
        del parts[rng.randrange(len(parts))]
    elif choice == 1:
        parts.insert(rng.randint(0, len(parts)), rng.choice([b"", b"x", b"\x00" * 8, b"{}"]))
    elif choice == 2 and len(parts) > 1:
        parts[0], parts[-1] = parts[-1], parts[0]
    else:
        parts += [b""] * rng.choice([16, 17, 40])
    return parts


def _replace_header(parts: Parts, rng: random.Random) -> Parts:
    garbage = [b"", b"{", b"[]", b"null", b"1", b'"s"', b"\xff\xfe", b"{}" * 2, b'{"v":1}', b"NaN",
               b'{"v":1,"kind":"video","stream":"s","seq":0}' + b" " * rng.randint(0, 3) + b"x",
               bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))]
    return [rng.choice(garbage), *parts[1:]]


_MUTATIONS = [_set_field, _set_field, _set_field, _delete_field, _swap_fields, _hostile_buffer, _hostile_buffer,
              _flip_bytes, _truncate, _parts_count, _replace_header]


def _h(**fields: Any) -> bytes:
    header = {"v": 1, "kind": "video", "stream": "s", "seq": 0, "buffers": []}
    header.update(fields)
    return dumps(header)


# The messages issue 8 reports, with the reason each is rejected for now.
ISSUE_8: list[tuple[Parts, str]] = [
    ([_h(meta="\x00DEEP")], "bad-header"),
    ([_h(seq="\x00BIG")], "bad-number"),
    ([_h(meta={"n": "\x00BIG"})], "bad-number"),
    ([_h(buffers=[{"dtype": "i4,(99999999999,)f8", "shape": [0]}]), b""], "bad-dtype"),
    ([_h(buffers=[{"dtype": "|u1", "shape": [0, 10**30]}]), b""], "bad-number"),
    ([_h(buffers=[{"dtype": "|u1", "shape": [0, 2**62, 2**62]}]), b""], "bad-shape"),
    ([_h(v=True)], "bad-version"),
    ([_h(v=1.0)], "bad-version"),
    ([_h(t_capture="\x00NAN")], "bad-number"),
    ([_h(pts="\x00INF")], "bad-number"),
    ([_h(seq=2**63)], "bad-number"),
    ([_h(kind="eos", dropped=2**64)], "bad-number"),
    ([_h(stream="x" * 5000)], "bad-stream"),
    ([_h(stream="cam\n0")], "bad-stream"),
]
