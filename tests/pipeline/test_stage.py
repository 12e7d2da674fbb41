"""The stage run loop in threads: delivery, end of stream, errors, live drops, stops, parameters."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import ConfigError, StageError
from pipeline.message import Message
from pipeline.stage import RunOptions, Stage, StageThread, build_stage, run_stage
from pipeline.transport import Endpoint, SocketOptions
from stages.relay import Relay
from stages.sinks import StatsPrinter
from tests.helpers.stages import CountingSource, SlowRelay

OPTIONS = SocketOptions(hwm=4, send_timeout_ms=100, recv_timeout_ms=100, linger_ms=1000)


def chain(make_url, transport: str, stages: list[tuple[str, Stage]], **extra) -> list[StageThread]:
    """Wire `stages` in a line (each binds its output, the next connects) and start them as threads."""
    urls = [make_url(transport) for _ in stages[:-1]]
    threads = []
    for index, (name, stage) in enumerate(stages):
        options = RunOptions(
            name=name, socket=OPTIONS, metrics_interval_s=0,
            inputs=[Endpoint(urls[index - 1], False)] if index else [],
            outputs=[Endpoint(urls[index], True)] if index < len(urls) else [], **extra)
        threads.append(StageThread(stage, options))
    for thread in reversed(threads):
        thread.start()
    return threads


def join_all(threads: list[StageThread], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
        assert not thread.is_alive(), f"{thread.name} did not finish"
        assert thread.error is None, thread.error


def test_source_relay_sink_delivers_everything_and_ends(transport, make_url):
    sink = StatsPrinter()
    threads = chain(make_url, transport, [("source", CountingSource(count=300, streams=2)),
                                          ("check", SlowRelay()), ("relay", Relay()), ("sink", sink)])
    join_all(threads)
    totals = sink.summary()["totals"]
    assert totals == {"streams": 2, "produced": 600, "received": 600, "dropped_at_source": 0, "lost": 0,
                      "evicted": 0, "lost_unknown": 0}
    assert threads[1].metrics["errors"] == 0 and threads[1].metrics["eos"] == 2


class FailsOnOdd(Stage):
    def process(self, message: Message) -> Message:
        if message.seq % 2:
            raise RuntimeError("odd frame")
        return message


def test_a_failing_process_call_loses_that_input_only(make_url):
    sink = StatsPrinter()
    threads = chain(make_url, "inproc", [("source", CountingSource(count=20)), ("fails", FailsOnOdd()), ("sink", sink)])
    join_all(threads)
    assert threads[1].metrics["errors"] == 10
    assert sink.summary()["totals"] == {"streams": 1, "produced": 20, "received": 10, "dropped_at_source": 0,
                                        "lost": 10, "evicted": 0, "lost_unknown": 0}


def test_live_source_drops_oldest_when_pipeline_is_slow_and_counts_it(make_url):
    sink = StatsPrinter()
    threads = chain(make_url, "inproc", [("camera", CountingSource(count=200, live=True, interval_ms=1)),
                                         ("slow", SlowRelay(delay_ms=10)), ("sink", sink)], live_queue=2)
    join_all(threads, timeout=60)
    totals = sink.summary()["totals"]
    dropped = threads[0].metrics["dropped"]["live-queue"]
    assert dropped > 50                                    # 1 ms capture vs 10 ms processing
    assert totals["dropped_at_source"] == dropped          # the count travels in the end-of-stream marker
    assert totals["received"] + dropped == 200 and totals["lost"] == 0


class GapChecker(StatsPrinter):
    """Records (seq, meta prev_seq) of every input, in arrival order."""

    def setup(self) -> None:
        super().setup()
        self.seen: list[tuple[int, int | None]] = []

    def process(self, message):
        self.seen.append((message.seq, message.meta.get("prev_seq")))
        return super().process(message)


def test_inputs_after_live_drops_say_which_input_came_before(make_url):
    """So that a stage restoring order (the aggregator) need not wait for dropped inputs."""
    sink = GapChecker()
    threads = chain(make_url, "inproc", [("camera", CountingSource(count=200, live=True, interval_ms=1)),
                                         ("slow", SlowRelay(delay_ms=10)), ("sink", sink)], live_queue=2)
    join_all(threads, timeout=60)
    previous = -1
    gaps = 0
    for seq, prev_seq in sink.seen:
        assert prev_seq == (previous if seq != previous + 1 else None), (seq, prev_seq, previous)
        gaps += prev_seq is not None
        previous = seq
    assert gaps > 10


def test_stopping_a_source_ends_its_streams_downstream(make_url):
    sink = StatsPrinter()
    threads = chain(make_url, "inproc", [("source", CountingSource(count=100000, streams=2, interval_ms=1)),
                                         ("sink", sink)])
    time.sleep(0.5)
    threads[0].stop()
    join_all(threads)
    summary = sink.summary()
    assert summary["unfinished_streams"] == [] and summary["totals"]["streams"] == 2
    assert 0 < summary["totals"]["produced"] < 200000 and summary["totals"]["lost"] == 0


class BrokenSetup(Stage):
    def setup(self) -> None:
        raise FileNotFoundError("model.tflite")


def test_setup_failure_is_a_stage_error_naming_the_stage():
    with pytest.raises(StageError, match="stage 'broken' failed in setup: FileNotFoundError: model.tflite"):
        run_stage(BrokenSetup(), RunOptions(name="broken", inputs=[Endpoint("inproc://nothing", False)]))


def test_worker_without_inputs_is_a_configuration_error():
    with pytest.raises(StageError, match="needs at least one input"):
        run_stage(Relay(), RunOptions(name="relay"), stop=threading.Event())


@pytest.mark.parametrize("params, expected", [
    ({"count": "5", "live": "true", "interval_ms": "2.5"}, {"count": 5, "live": True, "interval_s": 0.0025}),
    ({"count": 7}, {"count": 7, "live": False}),
])
def test_build_stage_converts_parameters_to_their_annotated_types(params, expected):
    stage = build_stage("tests.helpers.stages:CountingSource", params)
    for name, value in expected.items():
        assert getattr(stage, name) == value


@pytest.mark.parametrize("target, params, message", [
    ("tests.helpers.stages:CountingSource", {"colour": "red"}, r"no parameter\(s\) \['colour'\]"),
    ("tests.helpers.stages:CountingSource", {"count": "many"}, "parameter 'count' must be"),
    ("stages.sinks:JsonlSink", {}, r"needs parameter\(s\) \['path'\]"),
    ("stages.relay:Resize", {"width": "2"}, "width must be at least 8"),
    ("no.such.module:Stage", {}, "cannot import module 'no.such.module'"),
    ("stages.relay", {}, "module.path:ClassName"),
    ("stages.relay:cv2", {}, "must name a subclass of pipeline.stage.Stage"),
])
def test_build_stage_errors_say_what_was_expected(target, params, message):
    with pytest.raises(ConfigError, match=message):
        build_stage(target, params)


def test_jsonl_sink_writes_every_message_and_the_end(make_url, tmp_path: Path):
    import json

    from stages.sinks import JsonlSink

    out = tmp_path / "out.jsonl"
    join_all(chain(make_url, "inproc", [("source", CountingSource(count=30)), ("jsonl", JsonlSink(out))]))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in records[:-1]] == list(range(30))
    assert records[-1]["kind"] == "eos" and records[-1]["seq"] == 30 and records[-1]["final"] is True


class EvenOdd(Stage):
    """Routes even seqs to output 0 and odd ones to output 1; end-of-stream markers to both."""

    def process(self, message):
        return message

    def route(self, message):
        return None if message.is_eos else message.seq % 2


def test_a_stage_with_two_outputs_routes_each_message_to_the_one_it_names(transport, make_url):
    source_url, even_url, odd_url = (make_url(transport) for _ in range(3))
    even, odd = StatsPrinter(), StatsPrinter()
    options = dict(socket=OPTIONS, metrics_interval_s=0)
    threads = [
        StageThread(even, RunOptions(name="even", inputs=[Endpoint(even_url, False)], **options)),
        StageThread(odd, RunOptions(name="odd", inputs=[Endpoint(odd_url, False)], **options)),
        StageThread(EvenOdd(), RunOptions(name="router", inputs=[Endpoint(source_url, False)],
                                          outputs=[Endpoint(even_url, True), Endpoint(odd_url, True)], **options)),
        StageThread(CountingSource(count=50), RunOptions(name="source", outputs=[Endpoint(source_url, True)],
                                                         **options)),
    ]
    for thread in threads:
        thread.start()
    join_all(list(reversed(threads)))
    assert (even.totals["received"], odd.totals["received"]) == (25, 25)


class NaNOnOdd(Stage):
    """Odd inputs come out with a header that is not plain JSON (a NaN), which no sender encodes."""

    def process(self, message: Message) -> Message:
        if message.seq % 2:
            return Message(message.kind, message.stream, message.seq, meta={"score": float("nan")})
        return message


class NaNOnOddWithStandIn(NaNOnOdd):
    def unsendable(self, message, error):
        return Message(message.kind, message.stream, message.seq, meta={"stand_in": error.reason})


class Collect(StatsPrinter):
    def setup(self):
        super().setup()
        self.seen: list[Message] = []

    def process(self, message: Message):
        self.seen.append(message)
        return super().process(message)


@pytest.mark.parametrize("stage, received", [(NaNOnOdd(), 5), (NaNOnOddWithStandIn(), 10)])
def test_an_output_that_cannot_be_encoded_is_replaced_by_the_stages_stand_in_or_dropped_and_counted(
        make_url, stage, received):
    sink = Collect()
    threads = chain(make_url, "ipc", [("source", CountingSource(count=10)), ("nan", stage), ("sink", sink)])
    join_all(threads)
    stand_ins = [m.seq for m in sink.seen if m.meta.get("stand_in") == "unencodable-header"]
    assert len(sink.seen) == received
    if received == 10:
        assert stand_ins == [1, 3, 5, 7, 9] and threads[1].metrics["dropped"] == {}
    else:
        assert stand_ins == [] and threads[1].metrics["dropped"] == {"unencodable-header": 5}


def test_a_source_produces_nothing_until_the_stages_it_starts_after_are_ready(make_url, tmp_path: Path):
    """The launcher's start gate, in one process: the reader announces itself ready (its ready
    file) once set up with its socket open; the source, set up, holds its first input until
    every file it starts after exists (here one more, created by hand), then sends it all."""
    url = make_url("ipc")
    reader_ready, other_ready = tmp_path / "sink.ready", tmp_path / "other.ready"
    sink = StatsPrinter()
    reader = StageThread(sink, RunOptions(name="sink", inputs=[Endpoint(url, bind=False)], ready_file=reader_ready,
                                          metrics_interval_s=0))
    source = StageThread(CountingSource(count=20), RunOptions(name="source", outputs=[Endpoint(url, bind=True)],
                                                              start_after=[reader_ready, other_ready],
                                                              metrics_interval_s=0))
    reader.start()
    source.start()
    deadline = time.monotonic() + 20
    while not reader_ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reader_ready.exists(), "the reader never said it was ready"
    time.sleep(0.5)   # room for the source to (wrongly) start
    assert sink.summary()["totals"]["received"] == 0 and source.is_alive()
    other_ready.touch()
    join_all([source, reader])
    assert sink.summary()["totals"]["received"] == 20 and sink.summary()["totals"]["lost"] == 0


def test_a_stop_ends_a_sources_wait_for_the_other_stages(make_url, tmp_path: Path):
    """A graph stopped while a stage still loads: the source stops waiting and ends its stream."""
    url = make_url("ipc")
    sink = StatsPrinter()
    reader = StageThread(sink, RunOptions(name="sink", inputs=[Endpoint(url, bind=False)], metrics_interval_s=0))
    source = StageThread(CountingSource(count=10**6), RunOptions(name="source", outputs=[Endpoint(url, bind=True)],
                                                                 start_after=[tmp_path / "never.ready"],
                                                                 metrics_interval_s=0))
    reader.start()
    source.start()
    time.sleep(0.3)
    source.stop()
    join_all([source, reader])
    summary = sink.summary()
    assert summary["unfinished_streams"] == [] and summary["totals"]["produced"] <= 1
