"""The wire protocol: one message = a JSON header frame + raw array frames.

A message is a ZeroMQ multipart. Part 0 is a UTF-8 JSON object (the header); parts 1..n are
C-contiguous array buffers, described in order by ``header["buffers"]`` (``dtype`` as a numpy
type string such as ``"|u1"`` or ``"<f4"``, and ``shape``). Buffers travel without copying:
`encode` hands the arrays themselves to ZeroMQ and `decode` wraps the received frames with
`numpy.frombuffer`. No pickle is ever used, so any language with a ZeroMQ binding can join;
`docs/protocol.md` is the language-neutral description of the same rules.

Header fields (version 1):

==============  ========================================================================
``v``           protocol version, the integer `PROTOCOL_VERSION`
``kind``        ``video`` | ``audio`` | ``result`` | ``eos``
``stream``      stream id (non-empty string), e.g. ``cam0`` or ``actioncliptrain00001/video``
``seq``         per-stream sequence number from 0; on ``eos``: how many inputs the stream had
``pts``         presentation time in seconds from the stream's start
``t_capture``   wall-clock capture time (seconds since the epoch)
``media``       media facts: ``fps``, ``width``, ``height``, ``pixel_format``,
                ``sample_rate``, ``channels``, ``sample_format``, ... (scalars)
``buffers``     one ``{"dtype", "shape"}`` per array part
``decision``    the filter's decision, where set (an object)
``result``      the model's result, where set (an object)
``meta``        anything else a stage wants to carry (an object of JSON values); the runtime
                sets ``prev_seq`` on an input that follows inputs a live source dropped
                (the seq of the stream's previous input sent, -1 for none)
``final``       on ``eos`` only: true when the sending source has no more streams
``dropped``     on ``eos`` only: inputs of the stream dropped before sending (live sources)
==============  ========================================================================
"""

from __future__ import annotations

import json
import math
import time
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

# Array element kinds that mean the same in every language: bool, signed and unsigned
# integers, floats and complex numbers. Object and string arrays would need pickle.
_WIRE_DTYPE_KINDS = frozenset("biufc")

_JSON_SCALARS = (str, int, float, bool, type(None))


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
        if self.kind not in KINDS:
            raise MessageError("bad-kind", f"kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.stream, str) or not self.stream:
            raise MessageError("bad-stream", f"stream must be a non-empty string, got {self.stream!r}")
        if not isinstance(self.seq, int) or isinstance(self.seq, bool) or self.seq < 0:
            raise MessageError("bad-seq", f"seq must be an integer >= 0, got {self.seq!r}")
        if not isinstance(self.pts, (int, float)) or isinstance(self.pts, bool) or not math.isfinite(self.pts):
            raise MessageError("bad-pts", f"pts must be a finite number of seconds, got {self.pts!r}")
        if not isinstance(self.t_capture, (int, float)) or isinstance(self.t_capture, bool):
            raise MessageError("bad-t_capture", f"t_capture must be a number, got {self.t_capture!r}")
        for name in ("media", "meta"):
            if not isinstance(getattr(self, name), dict):
                raise MessageError(f"bad-{name}", f"{name} must be an object, got {type(getattr(self, name)).__name__}")
        for key, value in self.media.items():
            if not isinstance(value, _JSON_SCALARS):
                raise MessageError("bad-media", f"media[{key!r}] must be a scalar, got {type(value).__name__}")
        for name in ("decision", "result"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise MessageError(f"bad-{name}", f"{name} must be an object or absent, got {type(value).__name__}")
        if not isinstance(self.arrays, tuple):
            self.arrays = tuple(self.arrays)
        if len(self.arrays) > MAX_BUFFERS:
            raise MessageError("too-many-buffers", f"at most {MAX_BUFFERS} arrays, got {len(self.arrays)}")
        for index, array in enumerate(self.arrays):
            if not isinstance(array, np.ndarray):
                raise MessageError("bad-array", f"arrays[{index}] must be a numpy array, got {type(array).__name__}")
            if array.dtype.kind not in _WIRE_DTYPE_KINDS:
                raise MessageError("bad-dtype", f"arrays[{index}] has dtype {array.dtype}, not a plain numeric type")
        if self.kind == "eos" and self.arrays:
            raise MessageError("bad-eos", "an eos message carries no arrays")
        if not isinstance(self.dropped, int) or self.dropped < 0:
            raise MessageError("bad-dropped", f"dropped must be an integer >= 0, got {self.dropped!r}")

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


def _require(header: dict, key: str, types: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in header:
        if default is ...:
            raise MessageError("missing-field", f"header must have {key!r}; it has {sorted(header)}")
        return default
    value = header[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise MessageError("bad-field", f"header[{key!r}] must be {_type_names(types)}, got {value!r}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(types))


def _wire_dtype(text: Any, index: int) -> np.dtype:
    if not isinstance(text, str):
        raise MessageError("bad-dtype", f"buffers[{index}].dtype must be a string, got {text!r}")
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise MessageError("bad-dtype", f"buffers[{index}].dtype {text!r} is not a numpy type string") from None
    if dtype.kind not in _WIRE_DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise MessageError("bad-dtype", f"buffers[{index}].dtype {text!r} is not a plain numeric type")
    return dtype


def _wire_shape(shape: Any, index: int) -> tuple[int, ...]:
    if (not isinstance(shape, list) or len(shape) > MAX_DIMENSIONS
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise MessageError("bad-shape", f"buffers[{index}].shape must be a list of at most "
                           f"{MAX_DIMENSIONS} integers >= 0, got {shape!r}")
    return tuple(shape)


def decode(parts: Sequence[Any], max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """The `Message` in multipart `parts` (bytes, memoryviews or `zmq.Frame`s).

    Arrays are read-only views of the received buffers, not copies. Raises `MessageError`
    naming what was expected and what came; it never raises anything else for bad input.
    """
    if not parts:
        raise MessageError("empty", "a message needs at least a header part, got 0 parts")
    views = [_part_bytes(part) for part in parts]
    total = sum(view.nbytes for view in views)
    if total > max_bytes:
        raise MessageError("oversize", f"message must be at most {max_bytes} bytes, got {total}")
    head = views[0]
    if head.nbytes > MAX_HEADER_BYTES:
        raise MessageError("oversize-header", f"header must be at most {MAX_HEADER_BYTES} bytes, got {head.nbytes}")
    try:
        header = json.loads(head.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MessageError("bad-header", f"part 0 must be a UTF-8 JSON object: {error}") from None
    if not isinstance(header, dict):
        raise MessageError("bad-header", f"part 0 must be a JSON object, got {type(header).__name__}")
    version = header.get("v")
    if version != PROTOCOL_VERSION:
        raise MessageError("bad-version", f"protocol version must be {PROTOCOL_VERSION}, got {version!r}")
    buffers = _require(header, "buffers", list, [])
    if len(buffers) != len(views) - 1:
        raise MessageError("buffer-count", f"header describes {len(buffers)} buffers, "
                           f"message has {len(views) - 1} array parts")
    arrays = []
    for index, (spec, view) in enumerate(zip(buffers, views[1:])):
        if not isinstance(spec, dict):
            raise MessageError("bad-buffer", f"buffers[{index}] must be an object, got {spec!r}")
        dtype = _wire_dtype(spec.get("dtype"), index)
        shape = _wire_shape(spec.get("shape"), index)
        expected = dtype.itemsize * math.prod(shape)
        if expected != view.nbytes:
            raise MessageError("size-mismatch", f"buffers[{index}] {dtype.str}{list(shape)} needs "
                               f"{expected} bytes, part {index + 1} has {view.nbytes}")
        array = np.frombuffer(view, dtype=dtype).reshape(shape)
        # Read-only: over inproc this is the sender's own array, so writing would reach
        # back into another stage. A stage that draws on a frame copies it first.
        array.flags.writeable = False
        arrays.append(array)
    return Message(
        kind=_require(header, "kind", str),
        stream=_require(header, "stream", str),
        seq=_require(header, "seq", int),
        pts=_require(header, "pts", (int, float), 0.0),
        t_capture=_require(header, "t_capture", (int, float), 0.0),
        media=_require(header, "media", dict, {}),
        arrays=tuple(arrays),
        decision=_require(header, "decision", (dict, type(None)), None),
        result=_require(header, "result", (dict, type(None)), None),
        meta=_require(header, "meta", dict, {}),
        final=_require(header, "final", bool, False),
        dropped=_require(header, "dropped", int, 0),
    )
