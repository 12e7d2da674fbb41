"""What the aggregator must remember to write every input once, and to trust only real results.

* `SeqSet`: the sequence numbers already written for one stream, as sorted ranges (a stream's
  written seqs are nearly contiguous, so this stays a handful of ranges however long it runs;
  past `max_ranges` gaps the oldest gap is closed: its seqs count as done, `floor` says up to where).
* Job tags: the filter stamps every message it sends with ``meta["tag"]``, an HMAC of the run's
  job key over (purpose, stream, seq): purpose ``job`` for an input it sends to the workers
  (who copy ``meta`` into their result), ``direct`` for an input it answered itself and ``eos``
  for an end-of-stream marker. The aggregator, holding the same key, accepts only messages whose
  tag matches, and each input once; anything else is a counted rejection. Nobody without the key
  can make a tag, so a peer on the workers' network ports cannot add a result, answer an input
  the filter answered itself, or end a stream early. (Without CurveZMQ the links are plaintext:
  someone who can read a job on the wire can copy its tag; encrypt them, `--curve-*`.)
* `ResultsFile`: what an earlier process of the same run wrote to ``--out``, read back when the
  launcher restarts a crashed aggregator (docs/results.md, "Restarts").
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Environment variable holding the job key (hex) shared by the filter and the aggregator of one
#: run: the apps set it for the processes they start (not on a command line, which `ps` shows).
JOB_KEY_ENV = "INFISTREAM_JOB_KEY"
#: Environment variable holding the run id the launcher gives every stage of one graph run.
RUN_ID_ENV = "INFISTREAM_RUN_ID"

PURPOSES = ("job", "direct", "eos")


class SeqSet:
    """A set of non-negative integers stored as sorted, disjoint, non-adjacent [start, end) ranges.

    Bounded: with more than `max_ranges` ranges (a stream with that many gaps: drops, losses),
    the oldest gap is closed, its numbers taken as members; `floor` is then the end of the first
    range, below which membership means "written, or too old to tell".
    """

    def __init__(self, max_ranges: int = 4096) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.count = 0
        self.max_ranges = max_ranges
        self.floor = 0

    def __contains__(self, seq: int) -> bool:
        index = bisect.bisect_right(self._starts, seq) - 1
        return index >= 0 and seq < self._ends[index]

    def __len__(self) -> int:
        return self.count

    @property
    def ranges(self) -> int:
        return len(self._starts)

    @property
    def end(self) -> int:
        """One past the highest member (0 when empty)."""
        return self._ends[-1] if self._ends else 0

    def add(self, seq: int) -> bool:
        """Add `seq`; False (and nothing changes) when it is already a member."""
        index = bisect.bisect_right(self._starts, seq) - 1
        if index >= 0 and seq < self._ends[index]:
            return False
        joins_left = index >= 0 and self._ends[index] == seq
        joins_right = index + 1 < len(self._starts) and self._starts[index + 1] == seq + 1
        if joins_left and joins_right:
            self._ends[index] = self._ends.pop(index + 1)
            del self._starts[index + 1]
        elif joins_left:
            self._ends[index] = seq + 1
        elif joins_right:
            self._starts[index + 1] = seq
        else:
            self._starts.insert(index + 1, seq)
            self._ends.insert(index + 1, seq + 1)
        self.count += 1
        if len(self._starts) > self.max_ranges:      # close the oldest gap
            self._ends[0] = self._ends.pop(1)
            del self._starts[1]
            self.floor = self._ends[0]
        return True


def job_key(value: str = "") -> bytes | None:
    """The job key from a parameter, else from the environment; None when neither is set."""
    text = value or os.environ.get(JOB_KEY_ENV, "")
    if not text:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        from pipeline.errors import ConfigError
        raise ConfigError(f"the job key must be at least 16 bytes as hex (32 hex digits), got {len(text)} characters")
    return key


def tag(key: bytes, purpose: str, stream: str, seq: int) -> str:
    """The tag of one message: 128 bits of HMAC-SHA256, as hex."""
    text = f"{purpose}\x00{stream}\x00{seq}".encode("utf-8", "surrogatepass")
    return hmac.new(key, text, hashlib.sha256).hexdigest()[:32]


def tag_matches(key: bytes, purpose: str, stream: str, seq: int, given: Any) -> bool:
    return isinstance(given, str) and hmac.compare_digest(tag(key, purpose, stream, seq), given)


@dataclass
class StreamRecords:
    """One stream's lines in a results file, as far as they let the aggregator resume it."""

    records: list[dict[str, Any]] = field(default_factory=list)    # per-input lines, file order
    end: dict[str, Any] | None = None                              # its end line's summary, if it ended


@dataclass
class ResultsFile:
    """A results file's header and per-stream lines; `valid_bytes` ends at its last whole line."""

    run_id: str
    streams: dict[str, StreamRecords]
    valid_bytes: int


def header(run_id: str) -> dict[str, Any]:
    """The first line of a results file: which run wrote it (a restart of that run appends)."""
    return {"run": run_id, "format": 1}


def read_results(path: Path) -> ResultsFile | None:
    """The results file at `path`, or None when it is absent, empty or has no run header.

    A line cut short (a process killed mid-write) and anything after it are not part of it.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return None
    first_end = data.find(b"\n")
    if first_end < 0:
        return None
    try:
        first = json.loads(data[:first_end])
    except (ValueError, RecursionError):
        return None
    if not isinstance(first, dict) or not isinstance(first.get("run"), str) or "stream" in first:
        return None
    streams: dict[str, StreamRecords] = {}
    position = first_end + 1
    while True:
        line_end = data.find(b"\n", position)
        if line_end < 0:
            break
        try:
            record = json.loads(data[position:line_end])
        except (ValueError, RecursionError):
            log.warning("%s: unreadable line at byte %d; the file is kept up to it", path, position)
            break
        position = line_end + 1
        if not isinstance(record, dict) or not isinstance(record.get("stream"), str):
            continue      # the run's totals line, or anything else that is no stream's
        stream = streams.setdefault(record["stream"], StreamRecords())
        if record.get("end") is True and isinstance(record.get("summary"), dict):
            stream.end = record["summary"]
        elif isinstance(record.get("seq"), int) and not isinstance(record["seq"], bool) and record["seq"] >= 0:
            stream.records.append(record)
    return ResultsFile(first["run"], streams, position)
