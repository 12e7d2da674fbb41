"""The Stage contract and the loop that runs a stage between its sockets.

A stage is a small class. Its lifecycle, which the runtime guarantees:

1. ``__init__(**params)`` is cheap and offline: it stores typed parameters and checks them.
   It never opens devices, loads models or touches the network.
2. ``setup()`` runs once, in the thread or process that will run the stage, before any
   message. It may block (open a camera, load a model). If it raises, the stage ends with a
   `StageError` and ``teardown`` is not called. In a graph run by the launcher, the sources
   produce nothing until every other stage's ``setup`` has returned (`RunOptions.start_after`):
   a recorded file does not pile up in front of a model still loading, a camera's frames are
   not dropped meanwhile, and the run's timings start when the pipeline can run.
3. ``process(message)`` runs for every data message, in arrival order, one at a time. It may
   block; while it runs the stage receives nothing and upstream queues fill to their
   high-water mark, then the upstream blocks (or, for live sources, drops the oldest input).
   It returns nothing, one message, or an iterable of messages to send downstream. An
   exception is logged and counted; the input is lost (downstream sees the gap) and the stage
   goes on with the next message.
4. ``end_of_stream(message)`` runs for every end-of-stream marker before the runtime forwards
   the marker; a stage flushes per-stream state here and may return final messages.
   A stage that sets ``forwards_end_of_stream = False`` forwards markers itself, by returning
   them from any hook when it is ready (an aggregator waits for results still in flight on
   other workers of a pool); the runtime then counts the final markers the stage sends.
   A stage with several outputs sends each message to all of them, unless its ``route(message)``
   names one (by index): the filter sends inputs for the model to its workers and the rest
   straight to the aggregator.
5. ``tick()`` runs about every `TICK_S` seconds between messages, whether or not any arrive,
   for stages that act on time (a reorder timeout, a held end-of-stream marker).
   ``side_input(message)`` runs for each message of a *side input* (`RunOptions.side_inputs`:
   SUB sockets read between data messages without blocking, e.g. the aggregator's results,
   which the filter learns from). Side inputs are not inputs: they are not counted as such,
   their end-of-stream markers end nothing, and a stage never waits for them. Best effort: a
   publisher drops what a slow side reader has not taken (counted by nobody; the reader must
   not rely on seeing every message). A stage with side inputs may hold its main input until
   they catch up: while ``ready_for_input()`` is False the loop reads only the side inputs
   (waiting up to `HOLD_POLL_S` for each); the stage itself bounds how long it holds (the
   filter waits for the answers of the frames it decided, so its Reuse cache is as fresh live
   as in evaluation, and gives up waiting when they stop coming).
6. ``end_of_inputs()`` runs when the launcher says that every stage this one reads from has
   ended (`RunOptions.inputs_closed`) and nothing is left to read: whatever is still missing
   will not come. The stage returns its final messages (an aggregator ends the streams it was
   still waiting for, counting what never came as lost) and then ends, as after its final
   end-of-stream markers. A pool worker (``sources`` 0) ends this way too.
7. ``teardown()`` runs once after the loop ends for any reason, including errors and
   SIGINT/SIGTERM, provided ``setup`` returned. It is not run on SIGKILL.

A source stage implements ``produce()`` instead of ``process``: a generator of data messages
and per-stream end-of-stream markers. The runtime adds the ``final`` flag to the last marker,
ends streams a stop cut short, and for live sources decodes in a thread feeding a
drop-oldest queue, so a slow pipeline drops (and counts) the oldest inputs rather than lag.

Stopping (`StopRequest`): SIGINT (Ctrl-C) asks a stage to *finish*: a source stops producing
and ends every stream with its marker and counts, then waits (up to `end_wait_s`) for its
readers to take them; any other stage goes on until the final markers it waits for have
arrived (a pool worker, `sources` 0: until its inputs pause for `IDLE_S`), while inputs keep
coming, giving up after `stop_timeout_s` without any. SIGTERM, or a second SIGINT, stops at
once. A repeated SIGINT within `DUPLICATE_SIGINT_S` counts once: Ctrl-C in a terminal reaches
every process of the group, and the launcher forwards one more to the sources.

Source accounting: each stream's marker carries ``seq`` = inputs the source numbered (frames
read, undecodable ones included) and ``dropped`` = those never sent, with the count by reason
in ``meta["source"]["dropped"]`` (``undecodable``: the source's own gaps in ``seq``;
``live-queue``, ``stopped``, ``send-timeout``: the runtime's). ``meta["source"]["uncounted"]``
names input lost that cannot be counted as inputs (audio packets that failed to decode, frames
a truncated file never gave), and ``meta["source"]["error"]`` a source that failed.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import signal
import threading
import time
import types
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

import zmq

from pipeline.errors import ConfigError, MessageError, StageError
from pipeline.message import Message, eos
from pipeline.metrics import StageMetrics
from pipeline.queues import DropOldestQueue
from pipeline.transport import Endpoint, Receiver, Sender, SocketOptions

log = logging.getLogger(__name__)

Outputs = Union[Message, Iterable[Message], None]

#: How often a stage's `tick` runs (seconds); the receive timeout (200 ms) bounds it from below
#: when no message arrives.
TICK_S = 0.2
#: A pool worker (``sources`` 0) asked to finish leaves once no input came for this long.
IDLE_S = 1.0
#: A SIGINT this soon after the first is the same request (terminal and launcher both sent one).
DUPLICATE_SIGINT_S = 1.0


class StopRequest(threading.Event):
    """How a stage is asked to stop: ``set()`` to finish (see the module docstring), `hurry` to stop now.

    A plain `threading.Event` works too; setting it stops at once, as `hurry` does.
    """

    def __init__(self) -> None:
        super().__init__()
        self._now = threading.Event()

    def hurry(self) -> None:
        self._now.set()
        self.set()

    @property
    def now(self) -> bool:
        return self._now.is_set()


def _stop_now(stop: threading.Event) -> bool:
    """True when `stop` asks to stop at once rather than finish the streams first."""
    return stop.is_set() and getattr(stop, "now", True)


class Stage:
    """A processing step: receives messages, returns messages. See the module docstring."""

    #: Set by the runtime to the stage's name in the graph (used in logs and metrics).
    name: str = ""
    #: False: the stage returns end-of-stream markers itself when it is ready (see module docstring).
    forwards_end_of_stream: bool = True

    def setup(self) -> None:
        """Open what the stage needs (devices, models). May block."""

    def process(self, message: Message) -> Outputs:
        """Handle one data message; return what to send downstream."""
        raise NotImplementedError(f"{type(self).__name__} must implement process()")

    def end_of_stream(self, message: Message) -> Outputs:
        """A stream ended (`message.seq` inputs in all); flush its state. The marker is forwarded after."""
        return None

    def tick(self) -> Outputs:
        """Called about every `TICK_S` seconds between messages; return what is now due."""
        return None

    def end_of_inputs(self) -> Outputs:
        """Every upstream stage has ended and what it sent is handled; return final messages."""
        return None

    def side_input(self, message: Message) -> None:
        """A message from a side input (see the module docstring); it sends nothing on."""

    def ready_for_input(self) -> bool:
        """False: hold the main input and read only the side inputs for now. Asked only of a stage
        with side inputs, before each receive; it must turn True by itself within a bounded time."""
        return True

    def route(self, message: Message) -> int | None:
        """The output (index) `message` goes to when the stage has several; None: all of them."""
        return None

    def unsendable(self, message: Message, error: MessageError) -> Message | None:
        """What to send instead of an output that cannot be encoded (`error`: its header is not
        plain JSON or over 64 KiB); None: nothing, the output is dropped and counted. Asked only
        when sending fails, so the usual output is encoded once, by the sender."""
        return None

    def teardown(self) -> None:
        """Release what `setup` opened. Runs whenever `setup` returned."""


class SourceStage(Stage):
    """A stage with no input: it produces messages. See the module docstring."""

    #: True when the source is a device or live stream that cannot wait for the pipeline.
    live: bool = False

    def produce(self) -> Iterator[Message]:
        """Yield data messages and, after each stream's last one, `eos(stream, count)`."""
        raise NotImplementedError(f"{type(self).__name__} must implement produce()")

    def process(self, message: Message) -> Outputs:  # pragma: no cover - sources have no input
        raise TypeError(f"source stage {self.name!r} receives no messages")


@dataclass
class RunOptions:
    """How to run one stage: its sockets, when it ends, and how it reports.

    sources: how many upstream sources must send their final end-of-stream before this stage
        ends by itself; 0 runs until stopped (a worker serving a pool).
    live_queue: inputs a live source may hold while the pipeline is busy before it drops the oldest.
    drain_timeout_s: after a stop request, how long a pending send may still wait for a peer.
    end_wait_s: after the final end-of-stream, the runtime waits until its readers have read
        everything (as long as connected readers still have something to read; see
        `Sender.wait_for_peers_to_leave`); this bounds the wait only where that cannot be told
        (no reader ever connected, or not Linux).
    stop_timeout_s: asked to finish (SIGINT), a stage that is not a source goes on while inputs
        keep coming (what was in flight drains through it); it stops anyway once no input came
        for this long without the final end-of-stream markers.
    inputs_closed: a file that the launcher creates once every stage this one reads from has
        ended: the stage then handles what is queued, runs `Stage.end_of_inputs` and ends.
    side_inputs: SUB endpoints read without blocking between messages, for `Stage.side_input`.
    ready_file: a file the runtime creates once `Stage.setup` has returned and the stage's
        sockets are open: the stage is ready for input.
    start_after: for a source: once set up, wait until all these files exist before producing
        (the launcher names the ready files of the graph's other stages); a stop request ends
        the wait, and after `start_wait_s` the source starts anyway, saying which are missing.
    """

    name: str
    inputs: list[Endpoint] = field(default_factory=list)
    outputs: list[Endpoint] = field(default_factory=list)
    in_pattern: str = "pull"
    out_pattern: str = "push"
    socket: SocketOptions = field(default_factory=SocketOptions)
    sources: int = 1
    live_queue: int = 8
    drain_timeout_s: float = 5.0
    end_wait_s: float = 10.0
    stop_timeout_s: float = 10.0
    metrics_interval_s: float = 10.0
    metrics_path: Path | None = None
    inputs_closed: Path | None = None
    side_inputs: list[Endpoint] = field(default_factory=list)
    ready_file: Path | None = None
    start_after: list[Path] = field(default_factory=list)
    start_wait_s: float = 120.0


#: How often a source waiting for the other stages looks at their ready files (seconds).
START_POLL_S = 0.02


def _announce_ready(options: RunOptions) -> None:
    if options.ready_file is None:
        return
    try:
        options.ready_file.touch()
    except OSError as error:   # sources waiting for it start after their start_wait_s
        log.warning("[%s] could not create its ready file %s: %s", options.name, options.ready_file, error)


def _wait_for_start(options: RunOptions, stop: threading.Event) -> None:
    """A source holds its first input until the stages named by `options.start_after` are ready."""
    missing = [path for path in options.start_after if not path.exists()]
    if not missing:
        return
    log.info("[%s] set up; waiting for %d other stage(s) to be ready before producing", options.name, len(missing))
    started = time.monotonic()
    while missing and not stop.is_set():
        if time.monotonic() - started > options.start_wait_s:
            log.warning("[%s] %s still not there %.0f s after this source was set up; producing anyway",
                        options.name, ", ".join(str(path) for path in missing), options.start_wait_s)
            return
        time.sleep(START_POLL_S)
        missing = [path for path in missing if not path.exists()]
    log.info("[%s] %s after %.1f s", options.name, "stopped while waiting" if stop.is_set() else "starting",
             time.monotonic() - started)


class _Outputs:
    """Every output socket of a stage; each message goes to all of them."""

    def __init__(self, options: RunOptions, metrics: StageMetrics, stop: threading.Event, context: zmq.Context):
        self.senders = [Sender([target], pattern=options.out_pattern, options=options.socket, context=context)
                        for target in options.outputs]
        self.metrics = metrics
        self.stop = stop
        self.drain_timeout_s = options.drain_timeout_s
        #: `Stage.unsendable` of the stage sending: a stand-in for what cannot be encoded.
        self.fallback: Callable[[Message, MessageError], Message | None] | None = None

    def send(self, message: Message, route: int | None = None) -> str | None:
        """Send to every output, or only to output `route` when there are several.

        Returns None when every output took it, else why one did not (counted in
        ``metrics.dropped`` under that reason): ``send-timeout`` (given up on after a stop), or
        the `MessageError` reason of a message that cannot be encoded (a received header
        re-encoded past 64 KiB, a result that is not JSON): raising would end the stage, and a
        retry would fail the same way.
        """
        senders = self.senders if route is None or len(self.senders) < 2 else [self.senders[route]]
        failed: str | None = None
        for sender in senders:
            stop_seen_at = None
            while True:
                try:
                    if sender.send(message):
                        break
                except MessageError as error:
                    stand_in = self.fallback(message, error) if self.fallback is not None else None
                    if stand_in is not None:
                        log.warning("[%s] %s seq %d cannot be sent as it is (%s): sending the stage's "
                                    "stand-in instead", self.metrics.stage, message.stream, message.seq, error)
                        message = stand_in
                        continue       # the stand-in goes to this output and the ones after it
                    failed = error.reason
                    self.metrics.dropped[error.reason] += 1
                    log.warning("[%s] dropped %s seq %d: cannot be sent: %s", self.metrics.stage,
                                message.stream, message.seq, error)
                    break
                # Blocked: downstream is busy or absent. Keep trying (lossless) until a stop
                # request has been pending for drain_timeout_s, then count the loss.
                if self.stop.is_set():
                    stop_seen_at = stop_seen_at or time.monotonic()
                    if time.monotonic() - stop_seen_at > self.drain_timeout_s:
                        self.metrics.dropped["send-timeout"] += 1
                        log.warning("[%s] dropped %s seq %d on %s: no peer took it within %.1f s of stopping",
                                    self.metrics.stage, message.stream, message.seq, sender.targets[0],
                                    self.drain_timeout_s)
                        failed = "send-timeout"
                        break
        if self.senders:
            self.metrics.outputs += 1
        return failed

    def wait_for_readers(self, timeout: float) -> None:
        """After the final end-of-stream: wait until downstream has read it (see Sender), as long
        as connected readers keep something to read, unless a stop says to end now."""
        stopping_now = lambda: _stop_now(self.stop)  # noqa: E731 - a finishing stage still waits
        for sender in self.senders:
            if sender.pattern != "push" or sender.wait_for_peers_to_leave(timeout, stopping_now):
                continue
            if stopping_now():
                # Stopped while waiting: the launcher ends long-running readers (a worker pool)
                # once the sinks are done, so their staying connected is expected, not news.
                log.debug("[%s] stopped while %d reader(s) of %s were still connected", self.metrics.stage,
                          sender.peers, sender.targets[0])
            else:
                # Only where nothing tells whether the readers have it all (see Sender): no
                # reader ever connected, or not Linux and they stayed.
                log.warning("[%s] %s: %d reader(s) connected and no sign they have read everything %.0f s "
                            "after the end of stream; closing (what they have not read is lost)",
                            self.metrics.stage, sender.targets[0], sender.peers, timeout)

    def close(self) -> None:
        for sender in self.senders:
            sender.close()


def run_stage(stage: Stage, options: RunOptions, *, stop: threading.Event | None = None,
              context: zmq.Context | None = None) -> dict:
    """Run `stage` until its inputs end, `stop` is set, or it fails; return its metrics snapshot.

    Raises `StageError` when `setup` fails or the loop itself breaks.
    """
    stop = stop or threading.Event()
    context = context or zmq.Context.instance()
    stage.name = options.name
    metrics = StageMetrics(options.name, options.metrics_interval_s)
    try:
        stage.setup()
    except Exception as error:
        if isinstance(stage, SourceStage):
            _end_failed_source(stage, options, metrics, context, error)
        raise StageError(options.name, "setup", error) from error
    receiver = side = outputs = None
    try:
        outputs = _Outputs(options, metrics, stop, context)
        outputs.fallback = stage.unsendable
        if isinstance(stage, SourceStage):
            _announce_ready(options)
            _wait_for_start(options, stop)
            _run_source(stage, options, outputs, metrics, stop)
        else:
            if not options.inputs:
                raise ConfigError(f"stage {options.name!r} ({type(stage).__name__}) needs at least one input endpoint")
            receiver = Receiver(options.inputs, pattern=options.in_pattern, options=options.socket, context=context,
                                rejected=metrics.rejected)   # counted as they happen
            if options.side_inputs:
                side = Receiver(options.side_inputs, pattern="sub", options=options.socket, context=context,
                                rejected=metrics.rejected)
            _announce_ready(options)
            _run_worker(stage, options, receiver, outputs, metrics, stop, side)
    except StageError:
        raise
    except Exception as error:
        raise StageError(options.name, "run", error) from error
    finally:
        try:
            stage.teardown()
        except Exception:
            log.exception("[%s] teardown failed", options.name)
        if receiver is not None:
            receiver.close(linger_ms=0)
        if side is not None:
            side.close(linger_ms=0)
        if outputs is not None:
            outputs.close()
        snapshot = metrics.snapshot()
        log.info("[%s] finished: %s", options.name, snapshot)
        if options.metrics_path:
            metrics.write(options.metrics_path)
    return snapshot


#: Side-input messages handled at most between two data messages, so that a busy side input
#: never starves the main one.
SIDE_BATCH = 64
#: While a stage holds its main input, the longest wait for one side-input message (seconds).
HOLD_POLL_S = 0.05


def _run_worker(stage: Stage, options: RunOptions, receiver: Receiver, outputs: _Outputs,
                metrics: StageMetrics, stop: threading.Event, side: Receiver | None = None) -> None:
    finals = 0          # final end-of-stream markers sent on: the stage ends after `options.sources`
    next_tick = time.monotonic() + TICK_S

    def emit(produced: Outputs) -> None:
        nonlocal finals
        for message in _as_messages(produced):
            outputs.send(message, stage.route(message))
            if message.is_eos and message.final:
                finals += 1

    stop_seen: float | None = None
    last_input = time.monotonic()
    closed, empty_receives = False, 0   # options.inputs_closed seen; receives with nothing since
    while True:
        if stop.is_set():
            if _stop_now(stop):
                return
            if stop_seen is None:
                stop_seen = time.monotonic()
                log.info("[%s] finishing: waiting for %s", options.name,
                         f"the final end of stream of {options.sources - finals} source(s)" if options.sources
                         else f"inputs to pause for {IDLE_S:.0f} s")
            idle = time.monotonic() - max(last_input, stop_seen)
            if not options.sources and idle > IDLE_S:
                return
            if idle > options.stop_timeout_s:
                log.warning("[%s] stopping: no input for %.0f s since the stop request, and the final end of "
                            "stream of %d source(s) has not come", options.name, options.stop_timeout_s,
                            options.sources - finals)
                return
        metrics.maybe_log()
        if side is not None:
            for _ in range(SIDE_BATCH):
                update = side.recv(timeout=0)
                if update is None:
                    break
                metrics.side_inputs += 1
                _call(stage.side_input, update, metrics)
            if not stage.ready_for_input():
                update = side.recv(timeout=HOLD_POLL_S)
                if update is not None:
                    metrics.side_inputs += 1
                    _call(stage.side_input, update, metrics)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK_S
                    emit(_call(stage.tick, None, metrics))
                continue
        message = receiver.recv()
        if message is not None:
            last_input = time.monotonic()
        if message is not None and message.is_eos:
            metrics.eos += 1
            emit(_call(stage.end_of_stream, message, metrics))
            if stage.forwards_end_of_stream:
                emit(message)
        elif message is not None:
            metrics.input(message.t_capture)
            started = time.perf_counter()
            result = _call(stage.process, message, metrics)
            metrics.process.add(time.perf_counter() - started)
            emit(result)
        if time.monotonic() >= next_tick:
            next_tick = time.monotonic() + TICK_S
            emit(_call(stage.tick, None, metrics))
        if options.sources and finals >= options.sources:
            log.info("[%s] all %d source(s) ended", options.name, finals)
            outputs.wait_for_readers(options.end_wait_s)
            return
        if options.inputs_closed is not None:
            # Checked on a receive that found nothing: then twice more in a row with nothing
            # (what the ended upstream sent is all queued here already) before the end.
            if message is None and not closed:
                closed = options.inputs_closed.exists()
            empty_receives = empty_receives + 1 if closed and message is None else 0
            if empty_receives > 2:
                log.info("[%s] every stage it reads from has ended and everything they sent is handled",
                         options.name)
                emit(_call(stage.end_of_inputs, None, metrics))
                outputs.wait_for_readers(options.end_wait_s)
                return


def _as_messages(produced: Outputs) -> Iterable[Message]:
    if produced is None:
        return ()
    if isinstance(produced, Message):
        return (produced,)
    return produced


def _call(method, message: Message | None, metrics: StageMetrics) -> Outputs:
    """Run one process/end_of_stream/tick call; an exception loses this input, not the stage."""
    try:
        result = method() if message is None else method(message)
        # Materialise generators here, so their errors are caught here too.
        return list(result) if isinstance(result, types.GeneratorType) else result
    except Exception:
        metrics.errors += 1
        if message is None:
            log.exception("[%s] %s failed", metrics.stage, method.__name__)
        else:
            log.exception("[%s] %s failed on %s seq %d; input dropped", metrics.stage, method.__name__,
                          message.stream, message.seq)
        return None


def _end_failed_source(stage: SourceStage, options: RunOptions, metrics: StageMetrics, context: zmq.Context,
                       error: Exception) -> None:
    """A source that could not start still ends its stream, saying why, so the run's summary can.

    Bounded: a reader that never comes gets `drain_timeout_s` to take the marker.
    """
    if not options.outputs:
        return
    marker = eos(getattr(stage, "stream_id", None) or options.name, 0, final=True)
    marker.meta = {"source": {"error": f"{type(error).__name__}: {error}"}}
    outputs = _Outputs(options, metrics, threading.Event(), context)
    try:
        for sender in outputs.senders:
            deadline = time.monotonic() + options.drain_timeout_s
            while not sender.send(marker) and time.monotonic() < deadline:
                pass
        outputs.wait_for_readers(min(options.end_wait_s, options.drain_timeout_s))
    except Exception:
        log.warning("[%s] could not send the end of stream of the failed source", options.name, exc_info=True)
    finally:
        outputs.close()


class _Ledger:
    """A source's open streams, as the runtime sees them: what was numbered, sent, and dropped why.

    Thread-safe: the capture thread of a live source numbers and evicts, the sending loop sends.
    Bounded by the number of streams open at once (a stream's entry goes with its marker).
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._numbered: dict[str, int] = {}   # highest seq + 1 the source yielded
        self._expected: dict[str, int] = {}   # seq after the last one sent (for prev_seq)
        self._sent: dict[str, int] = {}       # data messages delivered
        self._drops: dict[str, Counter] = {}  # dropped by the runtime, by reason

    def number(self, message: Message) -> None:
        with self.lock:
            self._numbered[message.stream] = max(self._numbered.get(message.stream, 0), message.seq + 1)

    def drop(self, stream: str, reason: str, count: int = 1) -> None:
        with self.lock:
            self._drops.setdefault(stream, Counter())[reason] += count

    def sending(self, message: Message) -> None:
        """Before `message` is sent: set ``prev_seq`` when inputs before it were not sent."""
        with self.lock:
            expected = self._expected.get(message.stream, 0)
            if message.seq != expected:
                # Inputs expected..seq-1 were dropped (undecodable, or a live source fell behind):
                # say so, so that downstream stages restoring order need not wait for them.
                message.meta["prev_seq"] = expected - 1
            self._expected[message.stream] = message.seq + 1
            self._numbered[message.stream] = max(self._numbered.get(message.stream, 0), message.seq + 1)

    def sent(self, message: Message) -> None:
        with self.lock:
            self._sent[message.stream] = self._sent.get(message.stream, 0) + 1

    def end(self, marker: Message) -> Message:
        """The source ended `marker.stream`: its own marker, with the runtime's drops added."""
        with self.lock:
            drops = self._forget(marker.stream)[2]
        return _with_drops(marker, drops)

    def cut(self, error: str | None = None) -> list[Message]:
        """Markers for every stream still open (a stop or a failure cut them short).

        ``seq`` counts every input numbered; the inputs numbered but not sent that the runtime
        did not drop are the source's own gaps, which a source leaves only for undecodable input.
        """
        markers = []
        with self.lock:
            for stream in list(self._numbered):
                numbered, sent, drops = self._forget(stream)
                gaps = numbered - sent - sum(drops.values())
                marker = _with_drops(eos(stream, numbered), Counter({"undecodable": gaps}) + drops)
                if error:
                    marker.meta["source"]["error"] = error
                markers.append(marker)
        return markers

    def _forget(self, stream: str) -> tuple[int, int, Counter]:
        self._expected.pop(stream, None)
        return (self._numbered.pop(stream, 0), self._sent.pop(stream, 0),
                self._drops.pop(stream, None) or Counter())


def _with_drops(marker: Message, drops: Counter) -> Message:
    """`marker` with `drops` (by reason) added to its ``dropped`` and ``meta["source"]["dropped"]``."""
    source = marker.meta.setdefault("source", {})
    by_reason = source.setdefault("dropped", {})
    for reason, count in drops.items():
        if count > 0:
            by_reason[reason] = by_reason.get(reason, 0) + count
            marker.dropped += count
    return marker


def _run_source(stage: SourceStage, options: RunOptions, outputs: _Outputs,
                metrics: StageMetrics, stop: threading.Event) -> None:
    ledger = _Ledger()
    held_eos: Message | None = None        # sent when the next message shows it is not the last
    failure: Exception | None = None
    produced = _live_feed(stage, options, metrics, ledger, stop) if stage.live else stage.produce()
    try:
        for message in produced:
            metrics.maybe_log()
            if held_eos is not None:
                outputs.send(held_eos)
                held_eos = None
            if message.is_eos:
                held_eos = ledger.end(message)
                continue
            ledger.sending(message)
            metrics.inputs += 1
            failed = outputs.send(message)
            if failed is None:
                ledger.sent(message)
            else:
                ledger.drop(message.stream, failed)
            if stop.is_set() and not stage.live:   # a live feed ends itself, counting what it held
                break
    except Exception as error:   # end the streams, saying why, then fail
        failure = error
    finally:
        close = getattr(produced, "close", None)
        if close:
            close()
    # End every stream a stop or a failure cut short, so each downstream stage can finish its accounting.
    error = f"{type(failure).__name__}: {failure}" if failure is not None else None
    ending = ([held_eos] if held_eos is not None else []) + ledger.cut(error)
    if not ending:
        ending = [eos(options.name, 0)]  # a source that produced no stream still ends
        if error:
            ending[0].meta = {"source": {"error": error}}
    ending[-1].final = True
    for marker in ending:
        outputs.send(marker)
    outputs.wait_for_readers(options.end_wait_s)
    if failure is not None:
        raise failure


def _live_feed(stage: SourceStage, options: RunOptions, metrics: StageMetrics, ledger: _Ledger,
               stop: threading.Event) -> Iterator[Message]:
    """Run `stage.produce()` in a capture thread; yield from a drop-oldest queue.

    End-of-stream markers are never dropped: they wait in order, and only data is evicted. On a
    stop the capture ends; the data still queued is counted as dropped (``stopped``) and the
    markers queued behind it are still yielded.
    """
    queue: DropOldestQueue[Message] = DropOldestQueue(options.live_queue)
    failure: list[BaseException] = []

    def capture() -> None:
        produced = stage.produce()
        try:
            for message in produced:
                # Under the ledger's lock: a marker is never taken between an eviction and its
                # count, and nothing is queued once the consumer has counted what a stop left.
                with ledger.lock:
                    if stop.is_set():
                        break
                    if not message.is_eos:
                        ledger.number(message)
                    evicted = queue.put(message, droppable=not message.is_eos)
                    if evicted is not None:
                        ledger.drop(evicted.stream, "live-queue")
                        metrics.dropped["live-queue"] += 1
                if stop.is_set():
                    break
        except BaseException as error:  # handed to the consumer thread, which raises it
            failure.append(error)
        finally:
            produced.close()
            queue.close()

    thread = threading.Thread(target=capture, name=f"{options.name}-capture", daemon=True)
    thread.start()
    try:
        while not queue.closed_and_empty and not stop.is_set():
            message = queue.get(timeout=0.2)
            if message is not None:
                yield message
    finally:
        if not queue.closed_and_empty:
            stop.set()   # the consumer left early (a failure downstream): end the capture too
        thread.join(timeout=5.0)
    # Stopped: what is still queued was captured but will not be sent.
    with ledger.lock:
        left = []
        while (message := queue.get(timeout=0)) is not None:
            left.append(message)
        for message in left:
            if not message.is_eos:
                ledger.drop(message.stream, "stopped")
                metrics.dropped["stopped"] += 1
    yield from (message for message in left if message.is_eos)
    if failure:
        raise failure[0]


# ---------------------------------------------------------------------------------------
# Loading stages by name, with typed parameters
# ---------------------------------------------------------------------------------------

def load_stage_class(target: str) -> type[Stage]:
    """The Stage class named ``module.path:ClassName``."""
    module_name, sep, class_name = target.partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(f"stage must be named as module.path:ClassName, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"cannot import module {module_name!r} for stage {target!r}: {error}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ConfigError(f"{target!r} must name a subclass of pipeline.stage.Stage, got {cls!r}")
    return cls


def build_stage(target: str, params: dict[str, Any]) -> Stage:
    """Instantiate the stage named `target` with `params`, checked against its signature.

    String values (from ``--param k=v``) are converted to the annotated type of the parameter.
    """
    cls = load_stage_class(target)
    signature = inspect.signature(cls.__init__)
    accepted = {name: p for name, p in signature.parameters.items()
                if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"stage {target} has no parameter(s) {unknown}; it takes {sorted(accepted) or 'none'}")
    missing = sorted(name for name, p in accepted.items() if p.default is p.empty and name not in params)
    if missing:
        raise ConfigError(f"stage {target} needs parameter(s) {missing}")
    hints = typing.get_type_hints(cls.__init__)
    converted = {name: _convert(target, name, value, hints.get(name)) for name, value in params.items()}
    try:
        return cls(**converted)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"stage {target} rejected its parameters {converted}: {error}") from None


def _convert(target: str, name: str, value: Any, hint: Any) -> Any:
    if not isinstance(value, str) or hint is None:
        return value
    options = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    if value.lower() in ("none", "null") and type(None) in options:
        return None
    for kind in options:
        if kind is str:
            return value
    for kind in options:
        try:
            if kind is bool:
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                continue
            if kind in (int, float, Path):
                return kind(value)
        except ValueError:
            continue
    raise ConfigError(f"stage {target} parameter {name!r} must be {hint}, got {value!r}")


# ---------------------------------------------------------------------------------------
# Running a stage in a thread, or in this process until a signal
# ---------------------------------------------------------------------------------------

class StageThread(threading.Thread):
    """Runs one stage in a thread of this process; `stop()` ends it, `metrics` holds the result."""

    def __init__(self, stage: Stage, options: RunOptions, context: zmq.Context | None = None):
        super().__init__(name=f"stage-{options.name}", daemon=True)
        self.stage, self.options, self.context = stage, options, context
        self.stop_event = threading.Event()
        self.metrics: dict | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.metrics = run_stage(self.stage, self.options, stop=self.stop_event, context=self.context)
        except BaseException as error:
            self.error = error
            log.error("%s", error)

    def stop(self) -> None:
        self.stop_event.set()


def install_stop_signals(stop: threading.Event) -> None:
    """SIGINT asks the stage to finish its streams; SIGTERM, or a later second SIGINT, to stop now.

    See the module docstring. Nothing raises `KeyboardInterrupt`: a stage always ends through
    its loop, so its streams end and `teardown` runs (the launcher kills what does not end).
    """
    first_sigint: list[float] = []

    def request_stop(signum: int, _frame: Any) -> None:
        now = time.monotonic()
        if signum == signal.SIGINT and not first_sigint:
            first_sigint.append(now)
            log.info("received SIGINT: finishing (sources end their streams, the rest drain them); "
                     "send it again to stop at once")
            stop.set()
        elif signum == signal.SIGINT and now - first_sigint[0] < DUPLICATE_SIGINT_S:
            log.debug("received SIGINT again within %.1f s: the same request", DUPLICATE_SIGINT_S)
        else:
            log.info("received %s: stopping now", signal.Signals(signum).name)
            getattr(stop, "hurry", stop.set)()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
