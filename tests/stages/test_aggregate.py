"""The aggregator: order restored, decisions resolved, every input accounted for, ends held
until stragglers arrive; in-process calls for the logic, real sockets for the runtime path."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest
import zmq

from pipeline.message import Message, eos
from pipeline.stage import RunOptions, StageThread
from pipeline.transport import Endpoint, Receiver, Sender, SocketOptions
from stages.aggregate import Aggregator
from stages.results import Decision, Detections, Transcript


def vehicles(n: int, infer_ms: float = 30.0) -> dict:
    boxes = [[10.0 * i, 10.0, 10.0 * i + 8, 18.0] for i in range(n)]
    return Detections(boxes, [2] * n, [0.9] * n, infer_ms=infer_ms).to_wire()


def frame(seq: int, action: str = "infer", result: dict | None = None, stream: str = "cam",
          exit_answer: dict | None = None, **decision) -> Message:
    """An input as the aggregator receives it; `result` is a worker's, `exit_answer` an early exit's."""
    wire = Decision(action, result=exit_answer, **decision).to_wire()
    return Message("result" if result else "video", stream, seq, pts=seq / 10, decision=wire, result=result)


def run_messages(stage: Aggregator, messages: list[Message]) -> list[Message]:
    outputs: list[Message] = []
    for message in messages:
        outputs += (stage.end_of_stream(message) if message.is_eos else stage.process(message)) or []
    return outputs


def make_aggregator(tmp_path: Path, **params) -> Aggregator:
    stage = Aggregator(**{"task": "vehicles", "out": str(tmp_path / "out.jsonl"),
                          "summary": str(tmp_path / "summary.json"), "print_summary": False, **params})
    stage.name = "aggregate"
    stage.setup()
    return stage


@pytest.fixture
def aggregator(tmp_path: Path) -> Aggregator:
    return make_aggregator(tmp_path)


def records(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]


def test_every_decision_is_resolved_and_every_input_accounted_for(tmp_path):
    aggregator = make_aggregator(tmp_path, eos_timeout_s=0)   # seq 7 never comes: do not wait for it
    messages = [
        frame(0, result=vehicles(2)),
        frame(1, "reuse", ref_seq=0),
        frame(2, "skip"),
        frame(3, "exit", exit=1, exit_answer={"count": 0}),
        frame(4, result=vehicles(1, infer_ms=50.0)),
        frame(5, "reuse", ref_seq=1),              # a reuse of a reuse resolves to seq 0's answer
        # seq 6: dropped by the live source (the marker says so); seq 7: lost on the way
        frame(8, result=vehicles(3)),
        eos("cam", 9, dropped=1, final=True),
    ]
    outputs = run_messages(aggregator, messages)
    aggregator.teardown()
    assert [m.seq for m in outputs if not m.is_eos] == [0, 1, 2, 3, 4, 5, 8]
    assert [m.result["count"] for m in outputs if not m.is_eos] == [2, 2, 0, 0, 1, 2, 3]
    assert outputs[-1].is_eos and outputs[-1].final and outputs[-1].seq == 9
    summary = json.loads((tmp_path / "summary.json").read_text())["total"]
    assert (summary["inferred"], summary["reused"], summary["skipped"], summary["exited"]) == (3, 2, 1, 1)
    assert (summary["dropped_at_source"], summary["lost"], summary["dropped"]) == (1, 1, 2)
    assert summary["inferred"] + summary["skipped"] + summary["reused"] + summary["exited"] + summary["dropped"] \
        == summary["produced"] == 9
    assert summary["balanced"]
    assert summary["model_ms_spent"] == pytest.approx(110.0)
    assert summary["model_ms_avoided"] == pytest.approx(4 * 110.0 / 3, abs=0.1)
    assert summary["filtering_rate"] == pytest.approx(4 / 7)
    lines = records(tmp_path)
    assert [r["seq"] for r in lines if "seq" in r] == [0, 1, 2, 3, 4, 5, 8]
    assert lines[1]["ref_seq"] == 0 and lines[1]["decision"] == "reuse"
    assert lines[-2]["end"] and lines[-2]["summary"]["lost"] == 1
    assert "summary" in lines[-1]


def test_out_of_order_results_come_out_in_order_and_the_end_waits_for_stragglers(aggregator):
    order = [3, 0, 2]
    outputs = run_messages(aggregator, [frame(s, result=vehicles(s)) for s in order])
    assert [m.seq for m in outputs] == [0]
    # The marker overtook seq 1 (it went through another worker): the stream must not end yet.
    outputs = run_messages(aggregator, [eos("cam", 5, final=True)])
    assert outputs == []
    outputs = run_messages(aggregator, [frame(1, result=vehicles(1)), frame(4, result=vehicles(4))])
    assert [m.seq for m in outputs if not m.is_eos] == [1, 2, 3, 4]
    assert outputs[-1].is_eos and outputs[-1].final
    assert outputs[-1].meta["summary"]["balanced"] and outputs[-1].meta["summary"]["lost"] == 0


def test_a_stream_whose_stragglers_never_come_ends_after_the_timeout(tmp_path):
    stage = make_aggregator(tmp_path, eos_timeout_s=0.3, reorder_timeout_s=0.1)
    outputs = run_messages(stage, [frame(0, result=vehicles(1)), frame(2, result=vehicles(1)),
                                   eos("cam", 4, final=True)])
    assert [m.seq for m in outputs] == [0]
    time.sleep(0.35)
    outputs = stage.tick()
    assert [m.seq for m in outputs if not m.is_eos] == [2]
    assert outputs[-1].is_eos and outputs[-1].final
    summary = outputs[-1].meta["summary"]
    assert summary["lost"] == 2 and summary["balanced"]


def test_the_final_marker_waits_for_every_open_stream(aggregator):
    outputs = run_messages(aggregator, [frame(0, result=vehicles(1), stream="a"), frame(1, result=vehicles(1), stream="b"),
                                        eos("a", 1), eos("b", 2, final=True)])
    assert [m.stream for m in outputs if m.is_eos] == ["a"]          # b is still missing seq 0
    outputs = run_messages(aggregator, [frame(0, result=vehicles(0), stream="b")])
    markers = [m for m in outputs if m.is_eos]
    assert [(m.stream, m.final) for m in markers] == [("b", True)]


def test_bad_results_are_counted_not_fatal(aggregator, tmp_path, caplog):
    bad_boxes = {"task": "vehicles", "boxes": [[5, 5, 1, 1]], "classes": [2], "scores": [0.5]}
    messages = [frame(0, result=bad_boxes), frame(1, "infer"),          # no result: no worker answered
                frame(2, "reuse", ref_seq=1), frame(3, result=vehicles(1)), eos("cam", 4, final=True)]
    outputs = run_messages(aggregator, messages)
    aggregator.teardown()
    assert outputs[-1].meta["summary"]["unanswered"] == 2
    assert outputs[-1].meta["summary"]["unresolved_reuse"] == 1
    assert outputs[-1].meta["summary"]["balanced"]
    assert "counted unanswered" in caplog.text


def test_speech_windows_get_words_and_the_rule(tmp_path):
    stage = make_aggregator(tmp_path, task="auto", words=2)
    texts = ["", "Ask not.", "ask what you can do for your country"]
    messages = [Message("result", "mic", i, decision={"action": "infer"},
                        result=Transcript(text, infer_ms=100).to_wire()) for i, text in enumerate(texts)]
    messages[0] = Message("audio", "mic", 0, decision={"action": "skip"})
    outputs = run_messages(stage, messages + [eos("mic", 3, final=True)])
    assert [(m.result["words"], m.result["needs_recognition"]) for m in outputs if not m.is_eos] == \
        [(0, False), (2, False), (8, True)]
    assert outputs[-1].meta["summary"]["windows_needing_recognition"] == 1


def test_through_real_sockets_two_workers_out_of_order_reach_subscribers_in_order(tmp_path, process_transport, make_url):
    """Two 'workers' (PUSH sockets) feed the aggregator out of order; the end marker comes first
    through one of them; a subscriber of its PUB output sees every result, in order, then the end."""
    inbound = [make_url(process_transport) for _ in range(2)]
    published = make_url(process_transport)
    options = SocketOptions(hwm=64, recv_timeout_ms=100, linger_ms=1000)
    stage = Aggregator(task="vehicles", out=str(tmp_path / "out.jsonl"), print_summary=False)
    thread = StageThread(stage, RunOptions(name="aggregate", inputs=[Endpoint(u, False) for u in inbound],
                                           outputs=[Endpoint(published, True)], out_pattern="pub",
                                           socket=options, metrics_interval_s=0, end_wait_s=0))
    context = zmq.Context.instance()
    subscriber = Receiver([Endpoint(published, False)], pattern="sub", options=options, context=context)
    workers = [Sender([Endpoint(u, True)], pattern="push", options=options, context=context) for u in inbound]
    thread.start()
    time.sleep(0.5)   # let both connections and the subscription settle before anything is sent
    count = 60
    seqs = list(range(count))
    random.Random(7).shuffle(seqs)
    workers[0].send(eos("cam", count, final=True))
    for index, seq in enumerate(seqs):
        assert workers[index % 2].send(frame(seq, result=vehicles(seq % 4)))
    received = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (received and received[-1].is_eos):
        message = subscriber.recv()
        if message is not None:
            received.append(message)
    thread.join(10)
    for socket in workers + [subscriber]:
        socket.close()
    assert thread.error is None and not thread.is_alive()
    assert [m.seq for m in received[:-1]] == list(range(count))
    assert [m.result["count"] for m in received[:-1]] == [seq % 4 for seq in range(count)]
    assert received[-1].is_eos and received[-1].meta["summary"]["balanced"]


def test_region_counts_every_frame_and_reused_frames_keep_their_region_count(tmp_path):
    stage = make_aggregator(tmp_path, region="0,0,25,100", eos_timeout_s=0)
    # vehicles(3): boxes centred at x = 4, 14, 24 -> all three inside x <= 25; vehicles(4) adds x = 34.
    outputs = run_messages(stage, [frame(0, result=vehicles(3)), frame(1, "reuse", ref_seq=0),
                                   frame(2, result=vehicles(4)), frame(3, "skip"), eos("cam", 4, final=True)])
    assert [(m.result["count"], m.result["in_region"]) for m in outputs if not m.is_eos] == \
        [(3, 3), (3, 3), (4, 3), (0, 0)]


def test_a_bad_line_or_region_is_refused_when_the_stage_is_built():
    from pipeline.errors import ConfigError
    with pytest.raises(ConfigError, match="line"):
        Aggregator(line="1,2,3")
    with pytest.raises(ConfigError):
        Aggregator(region="0,0,10")
