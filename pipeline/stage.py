"""The Stage contract and the loop that runs a stage between its sockets.

A stage is a small class. Its lifecycle, which the runtime guarantees:

1. ``__init__(**params)`` is cheap and offline: it stores typed parameters and checks them.
   It never opens devices, loads models or touches the network.
2. ``setup()`` runs once, in the thread or process that will run the stage, before any
   message. It may block (open a camera, load a model). If it raises, the stage ends with a
   `StageError` and ``teardown`` is not called.
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
6. ``teardown()`` runs once after the loop ends for any reason, including errors and
   SIGINT/SIGTERM, provided ``setup`` returned. It is not run on SIGKILL.

A source stage implements ``produce()`` instead of ``process``: a generator of data messages
and per-stream end-of-stream markers. The runtime adds the ``final`` flag to the last marker,
ends streams a stop cut short, and for live sources decodes in a thread feeding a
drop-oldest queue, so a slow pipeline drops (and counts) the oldest inputs rather than lag.
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
from typing import Any, Iterable, Iterator, Union

import zmq

from pipeline.errors import ConfigError, StageError
from pipeline.message import Message, eos
from pipeline.metrics import StageMetrics
from pipeline.queues import DropOldestQueue
from pipeline.transport import Endpoint, Receiver, Sender, SocketOptions

log = logging.getLogger(__name__)

Outputs = Union[Message, Iterable[Message], None]

#: How often a stage's `tick` runs (seconds); the receive timeout (200 ms) bounds it from below
#: when no message arrives.
TICK_S = 0.2


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

    def route(self, message: Message) -> int | None:
        """The output (index) `message` goes to when the stage has several; None: all of them."""
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
    end_wait_s: after the final end-of-stream, how long to wait for readers to take it and leave
        (a reader that is a long-running service never leaves; this bounds the wait for it).
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
    metrics_interval_s: float = 10.0
    metrics_path: Path | None = None


class _Outputs:
    """Every output socket of a stage; each message goes to all of them."""

    def __init__(self, options: RunOptions, metrics: StageMetrics, stop: threading.Event, context: zmq.Context):
        self.senders = [Sender([target], pattern=options.out_pattern, options=options.socket, context=context)
                        for target in options.outputs]
        self.metrics = metrics
        self.stop = stop
        self.drain_timeout_s = options.drain_timeout_s

    def send(self, message: Message, route: int | None = None) -> None:
        """Send to every output, or only to output `route` when there are several."""
        senders = self.senders if route is None or len(self.senders) < 2 else [self.senders[route]]
        for sender in senders:
            stop_seen_at = None
            while not sender.send(message):
                # Blocked: downstream is busy or absent. Keep trying (lossless) until a stop
                # request has been pending for drain_timeout_s, then count the loss.
                if self.stop.is_set():
                    stop_seen_at = stop_seen_at or time.monotonic()
                    if time.monotonic() - stop_seen_at > self.drain_timeout_s:
                        self.metrics.dropped["send-timeout"] += 1
                        log.warning("[%s] dropped %s seq %d on %s: no peer took it within %.1f s of stopping",
                                    self.metrics.stage, message.stream, message.seq, sender.targets[0],
                                    self.drain_timeout_s)
                        break
        if self.senders:
            self.metrics.outputs += 1

    def wait_for_readers(self, timeout: float) -> None:
        """After the final end-of-stream: wait until downstream has read it (see Sender)."""
        for sender in self.senders:
            if sender.pattern != "push" or sender.wait_for_peers_to_leave(timeout, self.stop.is_set):
                continue
            if self.stop.is_set():
                # Stopped while waiting: the launcher ends long-running readers (a worker pool)
                # once the sinks are done, so their staying connected is expected, not news.
                log.debug("[%s] stopped while %d reader(s) of %s were still connected", self.metrics.stage,
                          sender.peers, sender.targets[0])
            else:
                log.warning("[%s] %d reader(s) of %s still connected %.0f s after the end of stream; "
                            "closing anyway", self.metrics.stage, sender.peers, sender.targets[0], timeout)

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
        raise StageError(options.name, "setup", error) from error
    receiver = outputs = None
    try:
        outputs = _Outputs(options, metrics, stop, context)
        if isinstance(stage, SourceStage):
            _run_source(stage, options, outputs, metrics, stop)
        else:
            if not options.inputs:
                raise ConfigError(f"stage {options.name!r} ({type(stage).__name__}) needs at least one input endpoint")
            receiver = Receiver(options.inputs, pattern=options.in_pattern, options=options.socket, context=context)
            _run_worker(stage, options, receiver, outputs, metrics, stop)
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
            metrics.rejected.update(receiver.rejected)
            receiver.close(linger_ms=0)
        if outputs is not None:
            outputs.close()
        snapshot = metrics.snapshot()
        log.info("[%s] finished: %s", options.name, snapshot)
        if options.metrics_path:
            metrics.write(options.metrics_path)
    return snapshot


def _run_worker(stage: Stage, options: RunOptions, receiver: Receiver, outputs: _Outputs,
                metrics: StageMetrics, stop: threading.Event) -> None:
    finals = 0          # final end-of-stream markers sent on: the stage ends after `options.sources`
    next_tick = time.monotonic() + TICK_S

    def emit(produced: Outputs) -> None:
        nonlocal finals
        for message in _as_messages(produced):
            outputs.send(message, stage.route(message))
            if message.is_eos and message.final:
                finals += 1

    while not stop.is_set():
        metrics.maybe_log()
        message = receiver.recv()
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


def _run_source(stage: SourceStage, options: RunOptions, outputs: _Outputs,
                metrics: StageMetrics, stop: threading.Event) -> None:
    sent_per_stream: dict[str, int] = {}   # open streams only: bounded by concurrent streams
    dropped: Counter[str] = Counter()
    held_eos: Message | None = None        # sent when the next message shows it is not the last
    produced = _live_feed(stage, options, metrics, dropped, stop) if stage.live else stage.produce()
    try:
        for message in produced:
            metrics.maybe_log()
            if held_eos is not None:
                outputs.send(held_eos)
                held_eos = None
            if message.is_eos:
                sent_per_stream.pop(message.stream, None)
                held_eos = eos(message.stream, message.seq, dropped=dropped.pop(message.stream, 0), pts=message.pts)
                continue
            expected = sent_per_stream.get(message.stream, 0)
            if message.seq != expected:
                # Inputs expected..seq-1 were dropped here (a live source fell behind): say so, so
                # that downstream stages restoring order need not wait for them.
                message.meta["prev_seq"] = expected - 1
            sent_per_stream[message.stream] = message.seq + 1
            metrics.inputs += 1
            outputs.send(message)
            if stop.is_set():
                break
    finally:
        close = getattr(produced, "close", None)
        if close:
            close()
    # End every stream a stop cut short, so each downstream stage can finish its accounting.
    ending = [held_eos] if held_eos is not None else []
    ending += [eos(stream, count, dropped=dropped.pop(stream, 0)) for stream, count in sent_per_stream.items()]
    if not ending:
        ending = [eos(options.name, 0)]  # a source that produced no stream still ends
    ending[-1].final = True
    for marker in ending:
        outputs.send(marker)
    outputs.wait_for_readers(options.end_wait_s)


def _live_feed(stage: SourceStage, options: RunOptions, metrics: StageMetrics, dropped: Counter,
               stop: threading.Event) -> Iterator[Message]:
    """Run `stage.produce()` in a capture thread; yield from a drop-oldest queue.

    End-of-stream markers are never dropped: they wait in order, and only data is evicted.
    """
    queue: DropOldestQueue[Message] = DropOldestQueue(options.live_queue)
    failure: list[BaseException] = []

    def capture() -> None:
        produced = stage.produce()
        try:
            for message in produced:
                evicted = queue.put(message, droppable=not message.is_eos)
                if evicted is not None:
                    dropped[evicted.stream] += 1
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
        while not queue.closed_and_empty:
            message = queue.get(timeout=0.2)
            if message is not None:
                yield message
            elif stop.is_set():
                break
    finally:
        stop_capture = stop.is_set() or not queue.closed_and_empty
        if stop_capture:
            stop.set()
        thread.join(timeout=5.0)
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
    """SIGINT and SIGTERM ask the stage to stop gracefully; a second SIGINT interrupts at once."""

    def request_stop(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
