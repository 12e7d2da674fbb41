"""The aggregator: every input's final answer, in order, with the accounting and the savings.

It receives every input of every stream, after the inference workers (or straight from the
filter when nothing needs the model), and:

1. restores each stream's sequence order (stages/reorder.py), since a pool of workers finishes
   out of order;
2. resolves each decision into a result: ``infer`` takes the worker's result, ``skip`` the empty
   result, ``reuse`` the resolved result of input ``ref_seq``, ``exit`` the early exit's result;
   an audited input (an ``infer`` carrying what the filter had answered) takes the worker's and
   is compared with what the filter's answer would have resolved to, which keeps the running
   estimate of the live agreement (stages/savings.py, `audit_estimate`);
3. runs the task logic that needs every input in order (vehicle tracking and line crossings,
   words per audio window) and writes one JSON line per input;
4. sends one ``result`` message per input downstream (bind it as PUB: the filter's feedback
   channel and any live consumer) and, when a stream ends, its end-of-stream marker;
5. accounts for every input (stages/savings.py) and prints the savings summary at the end.

End-of-stream markers are held (``forwards_end_of_stream = False``): with several workers, the
marker can overtake results still in flight on another worker, so a stream ends here only when
all of its inputs are in or `eos_timeout_s` has passed since its marker or the last input after
it (the rest count as lost),
or, in a graph run by the launcher, as soon as the filter and every worker have ended and what
they sent is handled (`end_of_inputs`): what is missing then died with a worker.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipeline.errors import ConfigError, MessageError
from pipeline.message import Message, eos
from pipeline.stage import Stage
from stages import ledger
from stages.reorder import ReorderBuffer
from models.base import Answers, Decision, ResultError
from stages.savings import StreamAccount, format_summary, summarize
from stages.tasks import TASKS, Task, make_task
from stages.tracking import CountingLine, GeometryError, Region

log = logging.getLogger(__name__)

#: What a peer's malformed decision or result can raise while it is read (never let out).
_BAD_FIELD = (ResultError, TypeError, ValueError, ArithmeticError, RecursionError, AttributeError, KeyError)
#: Rejections logged per reason before the log goes quiet (they are all counted).
_REJECTIONS_LOGGED = 20


def _plausible_time(t: float, now: float) -> bool:
    """A capture time is a finite Unix time within a day of now (0.0 means "not given")."""
    return math.isfinite(t) and abs(now - t) < 86400


def _filter_report(meta: Any) -> dict[str, Any]:
    """The thresholds an end-of-stream marker says the filter ended with (`--hold-target`), checked:
    ``{"thresholds": {policy: number}, "threshold_changes": n}``, or {} when absent or malformed."""
    report = meta.get("filter") if isinstance(meta, dict) else None
    if not isinstance(report, dict):
        return {}
    thresholds, changes = report.get("thresholds"), report.get("threshold_changes")
    if not isinstance(thresholds, dict) or len(thresholds) > 16 or type(changes) is not int or changes < 0 \
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       for v in thresholds.values()):
        return {}
    return {"filter_thresholds": {str(k)[:64]: v for k, v in thresholds.items()}, "threshold_changes": changes}


@dataclass
class _Stream:
    account: StreamAccount
    task: Task
    order: ReorderBuffer
    answers: Answers = field(default_factory=Answers)           # seq -> answer, bounded
    marker: Message | None = None                               # its end-of-stream marker, held
    marker_at: float = 0.0
    written: ledger.SeqSet = field(default_factory=ledger.SeqSet)  # seqs with a line in --out
    filter_report: dict = field(default_factory=dict)           # thresholds the filter ended with


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
    eos_timeout_s: how long a stream waits for stragglers after its end-of-stream marker, or
        after the last straggler that came (a backlog on a slow worker is not a loss).
    print_summary: print the savings summary to stdout when the stage ends.
    run_id: which run this is (default: $INFISTREAM_RUN_ID, which the launcher sets, else a new
        one). `out` starts with a line naming it; a process of the same run (the launcher
        restarting a crashed aggregator) appends to that file and resumes from it, any other
        run starts a new file. See docs/results.md, "Restarts".
    job_key: hex key shared with the filter (default: $INFISTREAM_JOB_KEY; the apps set it):
        when set, only messages the filter tagged are accepted, each input once (stages/ledger.py).

    Every input is written to `out` once: a second message for an input already written or
    held (a duplicate, a replay, a forgery) is rejected and counted (``rejected`` in the totals).
    """

    forwards_end_of_stream = False

    def __init__(self, task: str = "auto", out: str = "", line: str = "", region: str = "", words: int = 2,
                 summary: str = "", show: str = "", reorder_window: int = 256, reorder_timeout_s: float = 5.0,
                 eos_timeout_s: float = 30.0, print_summary: bool = True, run_id: str = "", job_key: str = ""):
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
        self.run_id = run_id
        self._key = ledger.job_key(job_key)
        self.rejected: Counter = Counter()     # reason -> messages refused (forged, duplicate, ...)
        self._streams: dict[str, _Stream] = {}
        self._finished: dict[str, StreamAccount] = {}
        self._finished_totals: dict[str, dict[str, Any]] = {}
        self._finished_reports: dict[str, dict[str, Any]] = {}   # thresholds the filter ended each with
        self._final_seen = False
        self._tasks_used: set[str] = set()
        self._after_end = 0
        self._filter_report: dict[str, Any] = {}   # the latest a filter's marker gave (its thresholds are global)
        self._file: IO[str] | None = None
        self._display = None

    # -- lifecycle ---------------------------------------------------------------------------
    def setup(self) -> None:
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.run_id = self.run_id or os.environ.get(ledger.RUN_ID_ENV) or uuid.uuid4().hex
            previous = ledger.read_results(self.out)
            if previous is not None and previous.run_id == self.run_id:
                # A restart within the same run: keep every whole line, resume from them.
                with self.out.open("r+b") as file:
                    file.truncate(previous.valid_bytes)
                self._file = self.out.open("a", encoding="utf-8", buffering=1)
                self._restore(previous)
            else:
                # Line-buffered: what a line says was resolved is in the file even if this
                # process is killed right after (a restart reads it back).
                self._file = self.out.open("w", encoding="utf-8", buffering=1)
                self._write(ledger.header(self.run_id))
        if self.show:
            from stages.display import Display   # OpenCV window or video writer, only when asked
            self._display = Display(self.show, line=self.line, region=self.region)
            self._display.open()

    def process(self, message: Message) -> list[Message]:
        if not self._authentic(message):   # first: a forgery counts as nothing else
            return []
        if message.stream in self._finished:
            self._after_end += 1
            log.warning("[%s] %s seq %d arrived after its stream ended; not counted", self.name,
                        message.stream, message.seq)
            return []
        stream = self._stream(message)
        if message.seq in stream.written:
            if message.seq < stream.written.floor:
                self._reject(message, "too-old", "behind more gaps than are remembered")
            else:
                self._reject(message, "duplicate", "already written")
            return []
        try:
            prev_seq = message.meta.get("prev_seq")
            released = list(stream.order.push(message.seq, message,
                                              prev_seq if type(prev_seq) is int and 0 <= prev_seq < message.seq else None))
        except ValueError:
            self._reject(message, "duplicate", "already held")
            return []
        outputs = [self._resolve(stream, m, late) for _, m, late in released]
        if stream.marker is not None:     # a straggler after the marker: maybe the last one
            # Inputs still coming: a worker is working through a backlog (a busy machine), not
            # lost. The timeout counts from the last of them.
            stream.marker_at = time.monotonic()
            outputs += self._finish_ready()
        return outputs

    def end_of_stream(self, marker: Message) -> list[Message]:
        if self._key is not None and not ledger.tag_matches(self._key, "eos", marker.stream, marker.seq,
                                                             marker.meta.get("tag")):
            self._reject(marker, "forged", "end-of-stream marker without the filter's tag")
            return []
        if marker.stream in self._finished:
            return []
        stream = self._stream(marker)
        stream.account.end(marker)   # the source's counters: produced, dropped by reason, what it could not count
        stream.filter_report = _filter_report(marker.meta)
        if stream.filter_report:
            self._filter_report = stream.filter_report
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

    def end_of_inputs(self) -> list[Message]:
        """Every stage this one reads from has ended and all they sent is handled (the launcher
        says so): inputs still missing died with a worker and will not come. End every stream
        now, counting them as lost, rather than wait out `eos_timeout_s`."""
        outputs: list[Message] = []
        for name in list(self._streams):
            outputs += self._finish(name)
        if self._final_seen and outputs and outputs[-1].is_eos:
            outputs[-1].final = True
        return outputs

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
        if self.rejected:
            totals["rejected"] = dict(self.rejected)
        totals.update(self._filter_report)
        if self._file is not None:
            self._write({"summary": totals, "task_totals": self._task_totals()})
            self._file.close()
        if self.summary_path:
            self.summary_path.parent.mkdir(parents=True, exist_ok=True)
            per_stream = {name: {**account.summary(), **self._finished_totals.get(name, {}),
                                 **self._finished_reports.get(name, {})}
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
                task = (message.result or {}).get("task")
                task = task if task in TASKS else "vehicles"
            self._tasks_used.add(task)
            stream = _Stream(StreamAccount(message.stream),
                             make_task(task, line=self.line, region=self.region, words=self.words),
                             ReorderBuffer(self.reorder_window, self.reorder_timeout_s))
            self._streams[message.stream] = stream
        return stream

    def _authentic(self, message: Message) -> bool:
        """With a job key: a worker's result must carry the tag of a job the filter sent to the
        workers; any other input the tag of one the filter answered itself (or sent as a job)."""
        if self._key is None:
            return True
        given = message.meta.get("tag")
        if ledger.tag_matches(self._key, "job", message.stream, message.seq, given):
            return True
        if message.kind != "result" and ledger.tag_matches(self._key, "direct", message.stream, message.seq, given):
            return True
        self._reject(message, "forged", "no valid tag from the filter" if given is not None else "untagged")
        return False

    def _reject(self, message: Message, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        if self.rejected[reason] <= _REJECTIONS_LOGGED:
            log.warning("[%s] rejected %s seq %d on %.100r (%s: %s)%s", self.name, message.kind, message.seq,
                        message.stream, reason, detail,
                        "; further ones are only counted" if self.rejected[reason] == _REJECTIONS_LOGGED else "")

    def _restore(self, previous: ledger.ResultsFile) -> None:
        """Resume from what an earlier process of this run wrote (see docs/results.md, "Restarts")."""
        for name, lines in previous.streams.items():
            task_name = self.task_name
            if task_name == "auto":
                task_name = "speech" if any("words" in r for r in lines.records[:1]) else "vehicles"
            self._tasks_used.add(task_name)
            stream = _Stream(StreamAccount(name), make_task(task_name, line=self.line, region=self.region, words=self.words),
                             ReorderBuffer(self.reorder_window, self.reorder_timeout_s))
            account = stream.account
            for record in lines.records:
                if not stream.written.add(record["seq"]):
                    continue
                decision = record.get("decision")
                if decision in ("infer", "skip", "reuse", "exit"):
                    account.decisions[decision] += 1
                    policy = record.get("policy")
                    account.count_policy(policy if isinstance(policy, str) else "", to_model=decision == "infer")
                    infer_ms = record.get("infer_ms", 0.0)
                    account.model_ms += infer_ms if isinstance(infer_ms, (int, float)) else 0.0
                    latency = record.get("latency_ms")
                    if isinstance(latency, (int, float)):
                        account.latency.add(latency / 1000)
                    try:
                        answer = stream.task.restore(record)
                    except _BAD_FIELD:
                        answer = None
                    if answer is not None:
                        stream.answers.put(record["seq"], answer)
                    audit = record.get("audit")
                    if decision == "infer" and isinstance(audit, dict):
                        account.audited += 1
                        account.agreed += audit.get("agrees") is True
                else:
                    account.unanswered += 1
                account.late += record.get("late") is True
                account.unresolved_reuse += record.get("unresolved") is True
            # Inputs below this that were never written were given up on (or are lost): if one
            # still comes, it is written then, as late.
            stream.order.next_seq = stream.written.end
            if lines.end is not None:      # it ended: its end line has the source's counters
                end = lines.end
                account.produced = end.get("produced")
                account.dropped_at_source = end.get("dropped_at_source", 0)
                account.dropped_by_reason = Counter(end.get("dropped_at_source_by_reason") or {})
                account.uncounted = Counter(end.get("uncounted") or {})
                account.end_missing = bool(end.get("streams_without_end"))
                failed = end.get("failed") or [{}]
                account.error = failed[0].get("error") if isinstance(failed[0], dict) else None
                self._finished[name] = account
                self._finished_totals[name] = {key: lines.end[key] for key in stream.task.totals() if key in lines.end}
                self._finished_reports[name] = _filter_report({"filter": {
                    "thresholds": end.get("filter_thresholds"), "threshold_changes": end.get("threshold_changes")}})
            else:
                self._streams[name] = stream
        log.warning("[%s] restarted: resumed %d stream(s) from %s (%d inputs already written)", self.name,
                    len(previous.streams), self.out, sum(len(r.records) for r in previous.streams.values()))

    def _resolve(self, stream: _Stream, message: Message, late: bool) -> Message:
        account, task, now = stream.account, stream.task, time.time()
        # Everything below reads header fields a peer wrote: each is checked, and a bad one makes
        # this input unanswered (counted), never an exception that would lose the inputs
        # released with it.
        t_capture = message.t_capture if _plausible_time(message.t_capture, now) else now
        record: dict[str, Any] = {"stream": message.stream, "seq": message.seq, "pts": round(message.pts, 4)}
        try:
            decision = Decision.from_wire(message.decision)
        except _BAD_FIELD as error:
            log.warning("[%s] %s seq %d: bad decision (%s); counted unanswered", self.name, message.stream,
                        message.seq, error)
            decision = None
        action = decision.action if decision is not None else None
        answer, model_ms = None, 0.0
        if action == "infer" and message.result is not None:
            try:
                answer = task.parse(message.result)
                model_ms = float(message.result.get("infer_ms", 0.0))
            except _BAD_FIELD as error:
                log.warning("[%s] %s seq %d: %s; counted unanswered", self.name, message.stream, message.seq, error)
        elif action in ("skip", "reuse", "exit"):
            try:
                answer, found = self._filter_answer(stream, decision)
            except _BAD_FIELD as error:
                log.warning("[%s] %s seq %d: bad early-exit result (%s); counted unanswered", self.name,
                            message.stream, message.seq, error)
            else:
                if action == "reuse":
                    record["ref_seq"] = decision.ref_seq
                    if not found:
                        account.unresolved_reuse += 1
                        record["unresolved"] = True
                        log.warning("[%s] %s seq %d reuses seq %d, whose result is unknown; taken as empty",
                                    self.name, message.stream, message.seq, decision.ref_seq)
                elif action == "exit":
                    record["exit"] = decision.exit

        if answer is None:
            account.unanswered += 1
            record["decision"] = "unanswered"
        else:
            account.add(action, t_capture, now, model_ms, decision.filter_ms, decision.policy)
            record["decision"] = action
            if decision.policy:
                record["policy"] = decision.policy[:64]
            if action == "infer" and decision.audit is not None:
                agrees = self._audit(stream, decision.audit, answer)
                record["audit"] = {"filter": decision.audit.action, "agrees": agrees,
                                   **({"ref_seq": decision.audit.ref_seq} if decision.audit.ref_seq is not None else {}),
                                   **account.audit(agrees)}
            stream.answers.put(message.seq, answer)
            fresh = action in ("infer", "exit") and not late
            record.update(task.update(message.pts, answer, fresh=fresh))
            if model_ms:
                record["infer_ms"] = round(model_ms, 2)
                worker = message.meta.get("worker")
                record["worker"] = worker if isinstance(worker, str) and len(worker) <= 200 else None
        if late:
            account.late += 1
            record["late"] = True
        record["latency_ms"] = round((now - t_capture) * 1000, 1)
        self._write(record)
        stream.written.add(message.seq)
        if self._display is not None and message.arrays and answer is not None:
            self._display.show(message.arrays[0], answer, record, message.media)
        return Message("result", message.stream, message.seq, pts=message.pts, t_capture=t_capture,
                       media=message.media, decision=message.decision, result=record, meta=message.meta)

    def unsendable(self, message: Message, error: MessageError) -> Message | None:
        """A result too large or not plain JSON (a peer's oversize or non-finite content, under
        the 64 KiB header limit on the way in, over it with the result added) goes out as its
        verdict alone, so the stage never fails on its output and readers still hear of it."""
        if message.kind != "result" or not isinstance(message.result, dict):
            return None
        record = message.result
        return Message("result", message.stream, message.seq, pts=message.pts, t_capture=message.t_capture,
                       result={key: record[key] for key in ("stream", "seq", "decision") if key in record})

    @staticmethod
    def _filter_answer(stream: _Stream, decision: Decision) -> tuple[Any, bool]:
        """What a filter's decision (skip, reuse or exit) resolves to, and whether a reuse found
        the answer it points at (an unknown one is taken as the empty answer). An unreadable
        early-exit result raises (one of `_BAD_FIELD`)."""
        task = stream.task
        if decision.action == "skip":
            return task.empty, True
        if decision.action == "reuse":
            answer = stream.answers.get(decision.ref_seq)
            return (task.empty, False) if answer is None else (answer, True)
        return task.parse_exit(decision.result), True

    def _audit(self, stream: _Stream, filtered: Decision, model_answer: Any) -> bool:
        """Whether the filter's decision on an audited input would have resolved (`_filter_answer`,
        as `_resolve` resolves it) to an answer that agrees with the model's; an unreadable early
        exit never agrees."""
        try:
            answer, _ = self._filter_answer(stream, filtered)
            return bool(stream.task.agrees(answer, model_answer))
        except _BAD_FIELD:
            return False

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
        self._finished_reports[name] = stream.filter_report
        summary = {**account.summary(), **stream.task.totals(), **stream.filter_report}
        if stream.order.gave_up:   # gaps waited for until the reorder timeout (or window) ran out
            summary["reorder_gave_up"] = stream.order.gave_up
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
            try:
                line = json.dumps(record, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError, RecursionError) as error:   # a peer's non-finite or odd value
                log.warning("[%s] a line could not be written as plain JSON (%s); its verdict only", self.name, error)
                line = json.dumps({key: record[key] for key in ("stream", "seq", "decision", "end") if key in record},
                                  separators=(",", ":"))
            self._file.write(line + "\n")
