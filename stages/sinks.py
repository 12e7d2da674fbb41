"""Terminal stages: a JSON Lines writer and a statistics printer that accounts for every input."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pipeline.errors import ConfigError
from pipeline.message import Message
from pipeline.metrics import LatencyWindow, format_table
from pipeline.stage import Stage

log = logging.getLogger(__name__)


class JsonlSink(Stage):
    """Writes one JSON line per message: its header (no pixels) and the time it arrived.

    End-of-stream markers are written too, so a reader of the file can do the accounting.
    """

    def __init__(self, path: Path, flush_every: int = 50):
        self.path = Path(path)
        self.flush_every = max(1, flush_every)
        self._file: IO[str] | None = None
        self._unflushed = 0

    def setup(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8")

    def _write(self, message: Message) -> None:
        record = message.header()
        record["t_received"] = time.time()
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._unflushed += 1
        if self._unflushed >= self.flush_every or message.is_eos:
            self._file.flush()
            self._unflushed = 0

    def process(self, message: Message) -> None:
        self._write(message)

    def end_of_stream(self, message: Message) -> None:
        self._write(message)

    def teardown(self) -> None:
        if self._file is not None:
            self._file.close()


@dataclass
class StreamTally:
    """What one stream delivered here, against what its source says it produced."""

    stream: str
    kind: str = ""
    received: int = 0
    first_arrival: float = 0.0
    last_arrival: float = 0.0
    last_pts: float = 0.0
    produced: int | None = None      # from the end-of-stream marker
    dropped_at_source: int = 0       # live sources: dropped before sending
    age: LatencyWindow = field(default_factory=lambda: LatencyWindow(256))
    unknown: bool = False            # its count was forgotten (evicted): received and lost unknown

    @property
    def lost(self) -> int | None:
        """Inputs produced but neither received nor dropped at the source (a stage died, say)."""
        if self.produced is None or self.unknown:
            return None
        return self.produced - self.dropped_at_source - self.received

    def row(self) -> dict:
        span = self.last_arrival - self.first_arrival
        return {
            "stream": self.stream, "kind": self.kind, "produced": self.produced,
            "received": None if self.unknown else self.received,
            "dropped_at_source": self.dropped_at_source, "lost": self.lost,
            "arrivals_per_s": round((self.received - 1) / span, 2) if span > 0 and self.received > 1 else None,
            "media_seconds": round(self.last_pts, 3), "age_ms_p50": self.age.summary_ms()["p50"],
        }


class StatsPrinter(Stage):
    """Counts what arrives per stream and prints a table at the end.

    Accounting: ``received + dropped_at_source + lost == produced`` for every ended stream.
    Memory is bounded: at most `keep_streams` ended streams are kept for the table (the
    totals cover all of them), and at most `max_open_streams` streams without an end: the
    least recently seen one is evicted (counted in ``evicted``), and only its count of inputs
    is remembered (for up to 10 x `max_open_streams` evicted streams), so that it resumes or
    ends with the right count. A stream that ends after even its count was forgotten has an
    unknown ``received`` and ``lost`` (counted in ``lost_unknown``), never made-up ones.
    """

    def __init__(self, summary_path: Path | None = None, keep_streams: int = 1000, max_open_streams: int = 1000):
        if keep_streams < 0 or max_open_streams < 1:
            raise ConfigError(f"StatsPrinter keeps >= 0 ended and >= 1 open streams, got keep_streams={keep_streams}, "
                              f"max_open_streams={max_open_streams}")
        self.summary_path = Path(summary_path) if summary_path else None
        self.keep_streams = keep_streams
        self.max_open_streams = max_open_streams
        self.open: OrderedDict[str, StreamTally] = OrderedDict()     # least recently seen first
        self.ended: OrderedDict[str, StreamTally] = OrderedDict()
        self.totals = {"streams": 0, "produced": 0, "received": 0, "dropped_at_source": 0, "lost": 0,
                       "evicted": 0, "lost_unknown": 0}
        self._evicted: OrderedDict[str, int] = OrderedDict()     # evicted stream -> inputs received
        self._forgotten = 0           # evicted streams whose count was dropped from `_evicted` too

    def process(self, message: Message) -> None:
        tally = self.open.get(message.stream)
        if tally is None:
            tally = self.open[message.stream] = StreamTally(message.stream, message.kind)
            tally.received = self._evicted.pop(message.stream, 0)     # resumes after an eviction
            while len(self.open) > self.max_open_streams:
                self._evict()
        else:
            self.open.move_to_end(message.stream)
        now = time.time()
        tally.first_arrival = tally.first_arrival or now
        tally.last_arrival = now
        tally.received += 1
        tally.last_pts = max(tally.last_pts, message.pts)
        tally.age.add(max(0.0, now - message.t_capture))

    def end_of_stream(self, message: Message) -> None:
        tally = self.open.pop(message.stream, None)
        if tally is None:
            tally = StreamTally(message.stream)
            tally.unknown = message.stream not in self._evicted and self._forgotten > 0
            tally.received = self._evicted.pop(message.stream, 0)
        tally.produced = message.seq
        tally.dropped_at_source = message.dropped
        row = tally.row()
        self.totals["lost_unknown"] += tally.unknown
        log.info("stream %s ended: %s", message.stream, row)
        for key in ("produced", "received", "dropped_at_source", "lost"):
            self.totals[key] += row[key] or 0
        self.totals["streams"] += 1
        self.ended[message.stream] = tally
        while len(self.ended) > self.keep_streams:
            self.ended.popitem(last=False)

    def _evict(self) -> None:
        _, evicted = self.open.popitem(last=False)
        self.totals["evicted"] += 1
        self._evicted[evicted.stream] = evicted.received
        log.debug("stream %s evicted after %d inputs (more than %d open streams)", evicted.stream,
                  evicted.received, self.max_open_streams)
        if len(self._evicted) > 10 * self.max_open_streams:
            _, received = self._evicted.popitem(last=False)
            self._forgotten += 1
            self.totals["received"] += received     # its inputs stay counted; its end will not find them

    def summary(self) -> dict:
        rows = [t.row() for t in self.ended.values()] + [t.row() for t in self.open.values()]
        return {"totals": dict(self.totals), "streams": rows, "unfinished_streams": sorted(self.open)}

    def teardown(self) -> None:
        summary = self.summary()
        print(format_table(summary["streams"]), file=sys.stdout, flush=True)
        totals = summary["totals"]
        print(f"{self.name or 'stats'}: {totals['streams']} stream(s) ended; produced {totals['produced']}, "
              f"received {totals['received']}, dropped at source {totals['dropped_at_source']}, "
              f"lost {totals['lost']}", flush=True)
        if self.summary_path:
            self.summary_path.parent.mkdir(parents=True, exist_ok=True)
            self.summary_path.write_text(json.dumps(summary, indent=2))
