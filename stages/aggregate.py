"""The aggregator: every input's final answer, in order, with the accounting and the savings.

It receives every input of every stream, after the inference workers (or straight from the
filter when nothing needs the model), and:

1. restores each stream's sequence order (stages/reorder.py), since a pool of workers finishes
   out of order;
2. resolves each decision into a result: ``infer`` takes the worker's result, ``skip`` the empty
   result, ``reuse`` the resolved result of input ``ref_seq``, ``exit`` the early exit's result;
3. runs the task logic that needs every input in order (vehicle tracking and line crossings,
   words per audio window) and writes one JSON line per input;
4. sends one ``result`` message per input downstream (bind it as PUB: the filter's feedback
   channel and any live consumer) and, when a stream ends, its end-of-stream marker;
5. accounts for every input (stages/savings.py) and prints the savings summary at the end.

End-of-stream markers are held (``forwards_end_of_stream = False``): with several workers, the
marker can overtake results still in flight on another worker, so a stream ends here only when
all of its inputs are in or `eos_timeout_s` has passed since its marker (the rest count as lost).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipeline.errors import ConfigError
from pipeline.message import Message, eos
from pipeline.stage import Stage
from stages.reorder import ReorderBuffer
from stages.results import Decision, ResultError
from stages.savings import StreamAccount, format_summary, summarize
from stages.tasks import TASKS, Task, make_task
from stages.tracking import CountingLine, GeometryError, Region

log = logging.getLogger(__name__)

#: Resolved results kept per stream for `reuse` decisions that point back at them.
REUSE_CACHE_SIZE = 4096


@dataclass
class _Stream:
    account: StreamAccount
    task: Task
    order: ReorderBuffer
    answers: OrderedDict = field(default_factory=OrderedDict)   # seq -> answer, bounded
    marker: Message | None = None                               # its end-of-stream marker, held
    marker_at: float = 0.0


class Aggregator(Stage):
    """Parameters (all optional):

    task: ``vehicles`` | ``speech`` | ``auto`` (from each stream's kind: video or audio).
    out: JSON Lines file, one line per input and one summary line per stream.
    line: counting line ``x1,y1,x2,y2`` in frame pixels (vehicles).
    region: counting region, ``x1,y1,x2,y2`` rectangle or ``x1,y1,x2,y2,x3,y3,...`` polygon.
    words: the speech rule's N: a window needs recognition when it yields more than N words.
    summary: JSON file for the final savings summary (per stream and in total).
    show: ``window`` (an OpenCV window) or a video file to write annotated frames to; needs
        the frames, so the filter and workers upstream must run with ``keep_frames``.
    reorder_window / reorder_timeout_s: how far out of order inputs may arrive.
    eos_timeout_s: how long a stream waits after its end-of-stream marker for stragglers.
    print_summary: print the savings summary to stdout when the stage ends.
    """

    forwards_end_of_stream = False

    def __init__(self, task: str = "auto", out: str = "", line: str = "", region: str = "", words: int = 2,
                 summary: str = "", show: str = "", reorder_window: int = 256, reorder_timeout_s: float = 5.0,
                 eos_timeout_s: float = 30.0, print_summary: bool = True):
        if task not in ("auto", "vehicles", "speech"):
            raise ConfigError(f"aggregator task must be auto, vehicles or speech, got {task!r}")
        if eos_timeout_s < 0 or reorder_timeout_s < 0 or reorder_window < 1:
            raise ConfigError("aggregator timeouts must be >= 0 s and the reorder window >= 1 input")
        make_task("speech", words=words)   # refuses a bad threshold now, not at the first audio window
        try:   # parsed once: every stream's task and the display share them
            self.line = CountingLine.parse(line) if line else None
            self.region = Region.parse(region) if region else None
        except GeometryError as error:
            raise ConfigError(str(error)) from error
        self.task_name, self.words = task, words
        self.out = Path(out) if out else None
        self.summary_path = Path(summary) if summary else None
        self.show = show
        self.reorder_window, self.reorder_timeout_s = reorder_window, reorder_timeout_s
        self.eos_timeout_s = eos_timeout_s
        self.print_summary = print_summary
        self._streams: dict[str, _Stream] = {}
        self._finished: dict[str, StreamAccount] = {}
        self._finished_totals: dict[str, dict[str, Any]] = {}
        self._final_seen = False
        self._tasks_used: set[str] = set()
        self._after_end = 0
        self._file: IO[str] | None = None
        self._display = None

    # -- lifecycle ---------------------------------------------------------------------------
    def setup(self) -> None:
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.out.open("w", encoding="utf-8")
        if self.show:
            from stages.display import Display   # OpenCV window or video writer, only when asked
            self._display = Display(self.show, line=self.line, region=self.region)
            self._display.open()

    def process(self, message: Message) -> list[Message]:
        if message.stream in self._finished:
            self._after_end += 1
            log.warning("[%s] %s seq %d arrived after its stream ended; not counted", self.name,
                        message.stream, message.seq)
            return []
        stream = self._stream(message)
        try:
            prev_seq = message.meta.get("prev_seq")
            released = list(stream.order.push(message.seq, message,
                                              prev_seq if isinstance(prev_seq, int) else None))
        except ValueError as error:
            log.warning("[%s] %s: %s; the duplicate is ignored", self.name, message.stream, error)
            return []
        outputs = [self._resolve(stream, m, late) for _, m, late in released]
        if stream.marker is not None:     # a straggler after the marker: maybe the last one
            outputs += self._finish_ready()
        return outputs

    def end_of_stream(self, marker: Message) -> list[Message]:
        if marker.stream in self._finished:
            return []
        stream = self._stream(marker)
        stream.account.end(marker)   # the source's counters: produced, dropped by reason, what it could not count
        if stream.account.error:
            log.error("[%s] source of %s failed: %s", self.name, marker.stream, stream.account.error)
        stream.marker, stream.marker_at = marker, time.monotonic()
        self._final_seen |= marker.final
        return self._finish_ready()

    def tick(self) -> list[Message]:
        if self._file is not None:
            self._file.flush()   # readers may follow the file while the run goes on
        outputs = []
        for stream in self._streams.values():
            outputs += [self._resolve(stream, m, late) for _, m, late in stream.order.poll()]
        return outputs + self._finish_ready()

    def teardown(self) -> None:
        # A stop cut the run short: end what is still open so its inputs are accounted for.
        for name in list(self._streams):
            self._finish(name)
        if self._display is not None:
            self._display.close()
        totals = summarize(list(self._finished.values()))
        # Without the sources' final marker, a stream that sent nothing yet is not even known.
        totals["sources_ended"] = self._final_seen
        totals["balanced"] = totals["balanced"] and self._final_seen
        if self._after_end:
            totals["after_end"] = self._after_end
        if self._file is not None:
            self._write({"summary": totals, "task_totals": self._task_totals()})
            self._file.close()
        if self.summary_path:
            self.summary_path.parent.mkdir(parents=True, exist_ok=True)
            per_stream = {name: {**account.summary(), **self._finished_totals.get(name, {})}
                          for name, account in self._finished.items()}
            self.summary_path.write_text(json.dumps({"total": totals, "task_totals": self._task_totals(),
                                                     "streams": per_stream}, indent=2))
        if self.print_summary and self._finished:
            task_totals = self._task_totals()
            lines = [format_summary(totals)] + ["  " + TASKS[name].describe(task_totals) for name in sorted(self._tasks_used)]
            print("\n".join(lines), file=sys.stdout, flush=True)

    # -- per input -----------------------------------------------------------------------------
    def _stream(self, message: Message) -> _Stream:
        stream = self._streams.get(message.stream)
        if stream is None:
            task = self.task_name if self.task_name != "auto" else ("speech" if message.kind == "audio" else "vehicles")
            if message.kind == "result" and self.task_name == "auto":
                task = (message.result or {}).get("task", "vehicles")
            self._tasks_used.add(task)
            stream = _Stream(StreamAccount(message.stream),
                             make_task(task, line=self.line, region=self.region, words=self.words),
                             ReorderBuffer(self.reorder_window, self.reorder_timeout_s))
            self._streams[message.stream] = stream
        return stream

    def _resolve(self, stream: _Stream, message: Message, late: bool) -> Message:
        account, task, now = stream.account, stream.task, time.time()
        record: dict[str, Any] = {"stream": message.stream, "seq": message.seq, "pts": round(message.pts, 4)}
        try:
            decision = Decision.from_wire(message.decision)
        except ResultError as error:
            log.warning("[%s] %s seq %d: bad decision (%s); counted unanswered", self.name, message.stream,
                        message.seq, error)
            decision = None
        action = decision.action if decision is not None else None
        answer, model_ms = None, 0.0
        if action == "infer" and message.result is not None:
            try:
                answer = task.parse(message.result)
                model_ms = float(message.result.get("infer_ms", 0.0))
            except ResultError as error:
                log.warning("[%s] %s seq %d: %s; counted unanswered", self.name, message.stream, message.seq, error)
        elif action == "skip":
            answer = task.empty
        elif action == "reuse":
            answer = stream.answers.get(decision.ref_seq)
            if answer is None:
                account.unresolved_reuse += 1
                log.warning("[%s] %s seq %d reuses seq %d, whose result is unknown; taken as empty",
                            self.name, message.stream, message.seq, decision.ref_seq)
                answer = task.empty
            record["ref_seq"] = decision.ref_seq
        elif action == "exit":
            try:
                answer = task.parse_exit(decision.result)
                record["exit"] = decision.exit
            except ResultError as error:
                log.warning("[%s] %s seq %d: bad early-exit result (%s); counted unanswered", self.name,
                            message.stream, message.seq, error)

        if answer is None:
            account.unanswered += 1
            record["decision"] = "unanswered"
        else:
            account.add(action, message.t_capture, now, model_ms, decision.filter_ms)
            record["decision"] = action
            stream.answers[message.seq] = answer
            while len(stream.answers) > REUSE_CACHE_SIZE:
                stream.answers.popitem(last=False)
            fresh = action in ("infer", "exit") and not late
            record.update(task.update(message.pts, answer, fresh=fresh))
            if model_ms:
                record["infer_ms"] = round(model_ms, 2)
                record["worker"] = message.meta.get("worker")
        if late:
            account.late += 1
            record["late"] = True
        record["latency_ms"] = round((now - message.t_capture) * 1000, 1)
        self._write(record)
        if self._display is not None and message.arrays and answer is not None:
            self._display.show(message.arrays[0], answer, record, message.media)
        return Message("result", message.stream, message.seq, pts=message.pts, t_capture=message.t_capture,
                       media=message.media, decision=message.decision, result=record, meta=message.meta)

    # -- ends of streams ----------------------------------------------------------------------
    def _finish_ready(self) -> list[Message]:
        outputs: list[Message] = []
        now = time.monotonic()
        for name, stream in list(self._streams.items()):
            if stream.marker is None:
                continue
            if stream.account.complete or now - stream.marker_at >= self.eos_timeout_s:
                outputs += self._finish(name)
        if self._final_seen and not self._streams and outputs and outputs[-1].is_eos:
            outputs[-1].final = True
        return outputs

    def _finish(self, name: str) -> list[Message]:
        stream = self._streams.pop(name)
        outputs = [self._resolve(stream, m, late) for _, m, late in stream.order.flush()]
        account = stream.account
        if account.produced is None:   # stopped before its marker came: what arrived is all we know
            account.close_without_end()
            log.error("[%s] %s: stopped before its end of stream arrived; produced is unknown, "
                      "%d inputs arrived", self.name, name, account.received)
        if account.lost:
            log.warning("[%s] %s: %d of %d inputs never arrived (lost on the way)", self.name, name,
                        account.lost, account.produced)
        if account.known and not account.balanced():
            log.error("[%s] %s: accounting does not balance: %s", self.name, name, account.summary())
        self._finished[name] = account
        self._finished_totals[name] = stream.task.totals()
        summary = {**account.summary(), **stream.task.totals()}
        self._write({"stream": name, "end": True, "summary": summary})
        marker = stream.marker
        outputs.append(eos(name, account.produced, dropped=account.dropped_at_source,
                           pts=marker.pts if marker else 0.0))
        outputs[-1].meta = {"summary": summary}
        return outputs

    def _task_totals(self) -> dict[str, Any]:
        totals: dict[str, Any] = {}
        for stream_totals in self._finished_totals.values():
            for key, value in stream_totals.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    totals[key] = totals.get(key, 0) + value
        return totals

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
