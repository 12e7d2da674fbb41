"""The wire protocol: one message = a JSON header frame + raw array frames.

A message is a ZeroMQ multipart. Part 0 is a UTF-8 JSON object (the header); parts 1..n are
C-contiguous array buffers, described in order by ``header["buffers"]`` (``dtype`` as a numpy
type string such as ``"|u1"`` or ``"<f4"``, and ``shape``). Buffers travel without copying:
`encode` hands the arrays themselves to ZeroMQ and `decode` wraps the received frames with
`numpy.frombuffer`. No pickle is ever used, so any language with a ZeroMQ binding can join;
`docs/protocol.md` is the language-neutral description of the same rules.

Header fields (version 1); ``v``, ``kind``, ``stream`` and ``seq`` are required, the rest optional:

==============  ========================================================================
``v``           protocol version, the integer `PROTOCOL_VERSION`
``kind``        ``video`` | ``audio`` | ``result`` | ``eos``
``stream``      stream id (1 to 1,024 characters, no control characters), e.g. ``cam0`` or
                ``actioncliptrain00001/video``
``seq``         per-stream sequence number from 0; on ``eos``: how many inputs the stream had
``pts``         presentation time in seconds from the stream's start (default 0)
``t_capture``   wall-clock capture time (seconds since the epoch; default 0)
``media``       media facts: ``fps``, ``width``, ``height``, ``pixel_format``,
                ``sample_rate``, ``channels``, ``sample_format``, ... (scalars)
``buffers``     one ``{"dtype", "shape"}`` per array part (dtype one of `WIRE_DTYPES`)
``decision``    the filter's decision, where set (an object)
``result``      the model's result, where set (an object)
``meta``        anything else a stage wants to carry (an object of JSON values); the runtime
                sets ``prev_seq`` on an input that follows inputs a live source dropped
                (the seq of the stream's previous input sent, -1 for none)
``final``       on ``eos`` only: true when the sending source has no more streams
``dropped``     on ``eos`` only: inputs of the stream dropped before sending
==============  ========================================================================

Numbers are finite, integers fit in 64 bits, nesting is at most `MAX_DEPTH` levels; other
top-level keys are dropped on receipt. `decode` turns every way a message can be malformed
into a `MessageError` whose reason is one of `REJECTION_REASONS`.
"""

from __future__ import annotations

import json
import math
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from pipeline.errors import MessageError

PROTOCOL_VERSION = 1
KINDS = ("video", "audio", "result", "eos")

# Limits a receiver enforces before it trusts a message. A 4K BGR frame is 24.9 MB, so the
# default leaves room for it and for a few audio buffers; stages may lower or raise it.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_BUFFERS = 16
MAX_DIMENSIONS = 8
MAX_DEPTH = 32              # JSON nesting of the header: objects and arrays inside each other
MAX_STREAM_CHARS = 1024     # a stream id is text (no control characters, no line breaks) of at most this
INT64_MAX = 2**63 - 1       # every integer in a header fits a signed 64-bit integer
INT64_MIN = -(2**63)

# The array types a buffer may have, as numpy writes them (``dtype.str``): they mean the same in
# every language. Byte order ``<`` little or ``>`` big endian; ``|`` for one-byte types only.
# Object and string arrays would need pickle; ``float128`` differs between platforms.
WIRE_DTYPES: dict[str, np.dtype] = {
    text: np.dtype(text)
    for text in ("|b1", "|i1", "|u1",
                 *(order + kind for order in "<>"
                   for kind in ("i2", "i4", "i8", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16")))
}

# Every reason a receiver can reject a message for (`MessageError.reason`), and when. The same
# table is in docs/protocol.md (a test keeps the two equal).
REJECTION_REASONS: dict[str, str] = {
    "empty": "the message has no parts",
    "oversize": "all parts together exceed the receiver's limit, or one part does (then ZeroMQ drops it "
                "unread and closes that connection; the sender reconnects)",
    "oversize-header": "part 0 exceeds 64 KiB",
    "bad-header": "part 0 is not a UTF-8 JSON object, or is nested more than 32 levels deep",
    "bad-number": "a number in the header is NaN, infinite, or an integer outside the signed 64-bit range",
    "bad-version": "`v` is missing or not the integer 1",
    "missing-field": "`kind`, `stream` or `seq` is missing",
    "bad-kind": "`kind` is not one of video, audio, result, eos",
    "bad-stream": f"`stream` is not a string of 1 to {MAX_STREAM_CHARS} characters without control characters, "
                  "line breaks or lone surrogates",
    "bad-seq": "`seq` is not an integer >= 0",
    "bad-pts": "`pts` is not a number",
    "bad-t_capture": "`t_capture` is not a number",
    "bad-media": "`media` is not an object whose values are strings, numbers, booleans or null",
    "bad-decision": "`decision` is not an object or null",
    "bad-result": "`result` is not an object or null",
    "bad-meta": "`meta` is not an object",
    "bad-final": "`final` is not a boolean",
    "bad-dropped": "`dropped` is not an integer >= 0",
    "bad-buffer": "`buffers` is not an array of objects",
    "too-many-buffers": f"more than {MAX_BUFFERS} array parts",
    "buffer-count": "the number of array parts differs from the length of `buffers`",
    "bad-dtype": "a buffer's `dtype` is not one of the listed type strings",
    "bad-shape": f"a buffer's `shape` is not an array of at most {MAX_DIMENSIONS} integers >= 0, or "
                 "describes more elements than the receiver's limit allows",
    "size-mismatch": "a part's length differs from itemsize x product(shape)",
    "bad-eos": "an `eos` message has array parts",
}

_JSON_SCALARS = (str, int, float, bool, type(None))


# Characters a stream id must not hold: control characters (newlines, tabs, NUL, escapes), line
# and paragraph separators, and lone surrogates (not text; they cannot be written as UTF-8).
_NOT_TEXT = frozenset(("Cc", "Cs", "Zl", "Zp"))


def _is_text(value: str) -> bool:
    """No character of `value` is in `_NOT_TEXT` (the slow check, for what `str.isprintable`
    refuses though it is fine in a name: a no-break or ideographic space, a zero-width joiner)."""
    return not any(unicodedata.category(char) in _NOT_TEXT for char in value)


def _is_count(value: Any) -> bool:
    """An int (not a bool) in 0..INT64_MAX."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX


def _is_finite_number(value: Any) -> bool:
    """An int (not a bool) or a finite float, in the range a header may carry."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX


def _short(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters: errors quote what came without flooding the log."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int too long to print, a structure too deep
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


@dataclass
class Message:
    """One input (a video frame, an audio window), one result, or an end-of-stream marker.

    Checked when built: a malformed message is never constructed, so it is never sent.
    Arrays received from the wire are read-only views of the ZeroMQ frames (no copy).
    """

    kind: str
    stream: str
    seq: int
    pts: float = 0.0
    t_capture: float = field(default_factory=time.time)
    media: dict[str, Any] = field(default_factory=dict)
    arrays: tuple[np.ndarray, ...] = ()
    decision: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    final: bool = False
    dropped: int = 0

    def __post_init__(self) -> None:
        # Each check names its own reason (REJECTION_REASONS); `decode` relies on them too.
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise MessageError("bad-kind", f"kind must be one of {KINDS}, got {_short(self.kind)}")
        if (not isinstance(self.stream, str) or not self.stream or len(self.stream) > MAX_STREAM_CHARS
                or not (self.stream.isprintable() or _is_text(self.stream))):
            raise MessageError("bad-stream", f"stream must be a non-empty string of at most {MAX_STREAM_CHARS} "
                               f"characters without control characters or line breaks, got {_short(self.stream)}")
        if not _is_count(self.seq):
            raise MessageError("bad-seq", f"seq must be an integer 0..{INT64_MAX}, got {_short(self.seq)}")
        if not _is_finite_number(self.pts):
            raise MessageError("bad-pts", f"pts must be a finite number of seconds, got {_short(self.pts)}")
        if not _is_finite_number(self.t_capture):
            raise MessageError("bad-t_capture", f"t_capture must be a finite number, got {_short(self.t_capture)}")
        if not isinstance(self.media, dict):
            raise MessageError("bad-media", f"media must be an object, got {type(self.media).__name__}")
        if not isinstance(self.meta, dict):
            raise MessageError("bad-meta", f"meta must be an object, got {type(self.meta).__name__}")
        for key, value in self.media.items():
            if not isinstance(value, _JSON_SCALARS) or (isinstance(value, float) and not math.isfinite(value)):
                raise MessageError("bad-media", f"media[{key!r}] must be a string, a finite number, a boolean "
                                   f"or null, got {_short(value)}")
        if self.decision is not None and not isinstance(self.decision, dict):
            raise MessageError("bad-decision", f"decision must be an object or absent, "
                               f"got {type(self.decision).__name__}")
        if self.result is not None and not isinstance(self.result, dict):
            raise MessageError("bad-result", f"result must be an object or absent, got {type(self.result).__name__}")
        if not isinstance(self.final, bool):
            raise MessageError("bad-final", f"final must be true or false, got {_short(self.final)}")
        if not _is_count(self.dropped):
            raise MessageError("bad-dropped", f"dropped must be an integer 0..{INT64_MAX}, got {_short(self.dropped)}")
        if not isinstance(self.arrays, tuple):
            self.arrays = tuple(self.arrays)
        if len(self.arrays) > MAX_BUFFERS:
            raise MessageError("too-many-buffers", f"at most {MAX_BUFFERS} arrays, got {len(self.arrays)}")
        for index, array in enumerate(self.arrays):
            if not isinstance(array, np.ndarray):
                raise MessageError("bad-array", f"arrays[{index}] must be a numpy array, got {type(array).__name__}")
            if array.dtype.str not in WIRE_DTYPES:
                raise MessageError("bad-dtype", f"arrays[{index}] has dtype {array.dtype.str!r}, not one of "
                                   f"{', '.join(WIRE_DTYPES)}")
        if self.kind == "eos" and self.arrays:
            raise MessageError("bad-eos", "an eos message carries no arrays")

    @property
    def is_eos(self) -> bool:
        return self.kind == "eos"

    @property
    def nbytes(self) -> int:
        """Bytes of array payload (the header excluded)."""
        return sum(array.nbytes for array in self.arrays)

    def header(self) -> dict[str, Any]:
        """The JSON header of this message, as sent in part 0."""
        header: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "kind": self.kind,
            "stream": self.stream,
            "seq": self.seq,
            "pts": self.pts,
            "t_capture": self.t_capture,
            "buffers": [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in self.arrays],
        }
        if self.media:
            header["media"] = self.media
        if self.decision is not None:
            header["decision"] = self.decision
        if self.result is not None:
            header["result"] = self.result
        if self.meta:
            header["meta"] = self.meta
        if self.kind == "eos":
            header["final"] = self.final
            header["dropped"] = self.dropped
        return header


def eos(stream: str, count: int, *, final: bool = False, dropped: int = 0, pts: float = 0.0) -> Message:
    """An end-of-stream marker: `count` inputs were produced on `stream` (seqs 0..count-1)."""
    return Message("eos", stream, count, pts=pts, final=final, dropped=dropped)


def encode(message: Message) -> list[Any]:
    """The multipart frames of `message`: header bytes, then the arrays themselves (no copy).

    An array that is not C-contiguous is made contiguous here; that is the only copy, and
    only for such arrays (a slice of a frame, say).
    """
    arrays = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in message.arrays]
    try:
        head = json.dumps(message.header(), separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as error:
        raise MessageError("unencodable-header", f"header of {message.kind} seq {message.seq} "
                           f"on {message.stream!r} is not plain JSON: {error}") from None
    if len(head) > MAX_HEADER_BYTES:
        raise MessageError("oversize-header", f"header must be at most {MAX_HEADER_BYTES} bytes, got {len(head)}")
    return [head, *arrays]


def _part_bytes(part: Any) -> memoryview:
    # zmq.Frame exposes .buffer; bytes and memoryview pass through.
    buffer = getattr(part, "buffer", part)
    return buffer if isinstance(buffer, memoryview) else memoryview(buffer)


def _reject_number(text: str) -> Any:
    raise MessageError("bad-number", f"header numbers must be finite, got {text}")


def _checked_int(text: str) -> int:
    # `int` refuses more than 4,300 digits with a ValueError of its own: check the length first.
    value = int(text) if len(text) <= 20 else None
    if value is None or not INT64_MIN <= value <= INT64_MAX:
        raise MessageError("bad-number", f"header integers must fit in 64 bits, got {_short(text, 40)}")
    return value


def _checked_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # a literal like 1e999 overflows to infinity
        raise MessageError("bad-number", f"header numbers must be finite, got {_short(text, 40)}")
    return value


# Every number is checked as it is read (NaN and Infinity are refused when seen): a few
# microseconds per header, less than scanning part 0 for suspicious digits beforehand.
_JSON = json.JSONDecoder(parse_constant=_reject_number, parse_int=_checked_int, parse_float=_checked_float)


def _parse_header(head: memoryview) -> dict:
    raw = head.tobytes()
    try:
        header = _JSON.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MessageError("bad-header", f"part 0 must be a UTF-8 JSON object: {error}") from None
    except MessageError:  # a number refused by a check above
        raise
    except RecursionError:
        raise MessageError("bad-header", f"part 0 must be nested at most {MAX_DEPTH} levels deep") from None
    except ValueError as error:  # anything else the parser refused
        raise MessageError("bad-header", f"part 0 must be a JSON object: {_short(str(error))}") from None
    if not isinstance(header, dict):
        raise MessageError("bad-header", f"part 0 must be a JSON object, got {type(header).__name__}")
    # Nesting deeper than MAX_DEPTH needs that many brackets; most headers have far fewer,
    # and only the others are walked.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth(header) > MAX_DEPTH:
        raise MessageError("bad-header", f"part 0 must be nested at most {MAX_DEPTH} levels deep")
    return header


def _depth(value: Any) -> int:
    """How deeply JSON objects and arrays nest in `value` (a scalar is 0), without recursion."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        value, level = pending.pop()
        children = value.values() if isinstance(value, dict) else value
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:   # deeper than that is refused anyway
            pending.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _wire_dtype(text: Any, index: int) -> np.dtype:
    dtype = WIRE_DTYPES.get(text) if isinstance(text, str) else None
    if dtype is None:
        raise MessageError("bad-dtype", f"buffers[{index}].dtype must be one of {', '.join(WIRE_DTYPES)}, "
                           f"got {_short(text)}")
    return dtype


def _wire_shape(shape: Any, index: int, itemsize: int, max_bytes: int) -> tuple[int, int]:
    """(elements, bytes) of a valid `shape`."""
    if not isinstance(shape, list) or len(shape) > MAX_DIMENSIONS or not all(
            type(n) is int and n >= 0 for n in shape):
        raise MessageError("bad-shape", f"buffers[{index}].shape must be a list of at most "
                           f"{MAX_DIMENSIONS} integers >= 0, got {_short(shape)}")
    elements = math.prod(shape)
    # An empty array may still describe absurd sizes ([0, 2**62, 2**62]) that numpy cannot
    # make: the dimensions other than 0 must fit in the limit too.
    if elements == 0 and math.prod(n for n in shape if n) * itemsize > max_bytes:
        raise MessageError("bad-shape", f"buffers[{index}].shape {_short(shape)} describes more than "
                           f"{max_bytes} bytes")
    return elements, elements * itemsize


def decode(parts: Sequence[Any], max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """The `Message` in multipart `parts` (bytes, memoryviews or `zmq.Frame`s).

    Arrays are read-only views of the received buffers, not copies. Raises `MessageError`
    naming what was expected and what came (its `reason` is one of `REJECTION_REASONS`);
    it never raises anything else for bad input.
    """
    if not parts:
        raise MessageError("empty", "a message needs at least a header part, got 0 parts")
    if len(parts) > MAX_BUFFERS + 1:
        raise MessageError("too-many-buffers", f"at most {MAX_BUFFERS} array parts, got {len(parts) - 1}")
    views = [_part_bytes(part) for part in parts]
    total = sum(view.nbytes for view in views)
    if total > max_bytes:
        raise MessageError("oversize", f"message must be at most {max_bytes} bytes, got {total}")
    head = views[0]
    if head.nbytes > MAX_HEADER_BYTES:
        raise MessageError("oversize-header", f"header must be at most {MAX_HEADER_BYTES} bytes, got {head.nbytes}")
    header = _parse_header(head)
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise MessageError("bad-version", f"protocol version must be the integer {PROTOCOL_VERSION}, "
                           f"got {_short(version)}")
    for key in ("kind", "stream", "seq"):
        if key not in header:
            raise MessageError("missing-field", f"header must have {key!r}; it has {_short(sorted(header))}")
    buffers = header.get("buffers", [])
    if not isinstance(buffers, list):
        raise MessageError("bad-buffer", f"buffers must be an array, got {_short(buffers)}")
    if len(buffers) != len(views) - 1:
        raise MessageError("buffer-count", f"header describes {len(buffers)} buffers, "
                           f"message has {len(views) - 1} array parts")
    arrays = []
    for index, (spec, view) in enumerate(zip(buffers, views[1:])):
        if not isinstance(spec, dict):
            raise MessageError("bad-buffer", f"buffers[{index}] must be an object, got {_short(spec)}")
        dtype = _wire_dtype(spec.get("dtype"), index)
        shape = spec.get("shape")
        elements, expected = _wire_shape(shape, index, dtype.itemsize, max_bytes)
        if expected != view.nbytes:
            raise MessageError("size-mismatch", f"buffers[{index}] {dtype.str}{shape} needs "
                               f"{expected} bytes, part {index + 1} has {view.nbytes}")
        array = np.frombuffer(view, dtype=dtype, count=elements).reshape(shape)
        # Read-only: over inproc this is the sender's own array, so writing would reach
        # back into another stage. A stage that draws on a frame copies it first.
        array.flags.writeable = False
        arrays.append(array)
    # Unknown top-level fields are dropped here; extra data travels in `meta`.
    return Message(
        kind=header["kind"],
        stream=header["stream"],
        seq=header["seq"],
        pts=header.get("pts", 0.0),
        t_capture=header.get("t_capture", 0.0),
        media=header.get("media", {}),
        arrays=tuple(arrays),
        decision=header.get("decision"),
        result=header.get("result"),
        meta=header.get("meta", {}),
        final=header.get("final", False),
        dropped=header.get("dropped", 0),
    )
