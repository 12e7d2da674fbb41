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

    @property
    def lost(self) -> int | None:
        """Inputs produced but neither received nor dropped at the source (a stage died, say)."""
        if self.produced is None:
            return None
        return self.produced - self.dropped_at_source - self.received

    def row(self) -> dict:
        span = self.last_arrival - self.first_arrival
        return {
            "stream": self.stream, "kind": self.kind, "produced": self.produced, "received": self.received,
            "dropped_at_source": self.dropped_at_source, "lost": self.lost,
            "arrivals_per_s": round((self.received - 1) / span, 2) if span > 0 and self.received > 1 else None,
            "media_seconds": round(self.last_pts, 3), "age_ms_p50": self.age.summary_ms()["p50"],
        }


class StatsPrinter(Stage):
    """Counts what arrives per stream and prints a table at the end.

    Accounting: ``received + dropped_at_source + lost == produced`` for every ended stream.
    Memory is bounded: at most `keep_streams` ended streams are kept for the table (the
    totals cover all of them).
    """

    def __init__(self, summary_path: Path | None = None, keep_streams: int = 1000):
        self.summary_path = Path(summary_path) if summary_path else None
        self.keep_streams = keep_streams
        self.open: dict[str, StreamTally] = {}
        self.ended: OrderedDict[str, StreamTally] = OrderedDict()
        self.totals = {"streams": 0, "produced": 0, "received": 0, "dropped_at_source": 0, "lost": 0}

    def process(self, message: Message) -> None:
        tally = self.open.get(message.stream)
        if tally is None:
            tally = self.open[message.stream] = StreamTally(message.stream, message.kind)
        now = time.time()
        tally.first_arrival = tally.first_arrival or now
        tally.last_arrival = now
        tally.received += 1
        tally.last_pts = max(tally.last_pts, message.pts)
        tally.age.add(max(0.0, now - message.t_capture))

    def end_of_stream(self, message: Message) -> None:
        tally = self.open.pop(message.stream, None) or StreamTally(message.stream)
        tally.produced = message.seq
        tally.dropped_at_source = message.dropped
        row = tally.row()
        log.info("stream %s ended: %s", message.stream, row)
        for key in ("produced", "received", "dropped_at_source", "lost"):
            self.totals[key] += row[key]
        self.totals["streams"] += 1
        self.ended[message.stream] = tally
        while len(self.ended) > self.keep_streams:
            self.ended.popitem(last=False)

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
