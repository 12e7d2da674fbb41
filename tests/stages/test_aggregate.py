"""The aggregator: order restored, decisions resolved, every input accounted for, ends held
until stragglers arrive; in-process calls for the logic, real sockets for the runtime path."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import zmq

from pipeline.errors import MessageError
from pipeline.message import Message, eos
from pipeline.stage import RunOptions, StageThread
from pipeline.transport import Endpoint, Receiver, Sender, SocketOptions
from stages.aggregate import Aggregator
from models.base import Decision
from stages.results import Detections, Transcript


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
    assert set(lines[0]) == {"run", "format"}        # the header: which run wrote the file
    lines = lines[1:]
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


# -- restarts: a crashed aggregator resumes its results file -------------------------------------

def test_a_restart_of_the_same_run_appends_and_resumes_a_fresh_run_starts_a_new_file(tmp_path):
    """A second aggregator process of the same run (the launcher restarting a crashed one) keeps
    every line, resumes each stream's counts and written seqs, and never writes an input twice;
    a process of another run starts the file anew."""
    first = make_aggregator(tmp_path, run_id="run-1", eos_timeout_s=0, line="0,14,100,14")
    run_messages(first, [frame(s, result=vehicles(s % 3)) for s in range(4)] + [frame(4, "reuse", ref_seq=3)])
    first._file.write('{"stream":"cam","seq":5,"pts"')   # killed mid-line: the cut line is not kept
    first._file.flush()                                   # (no teardown: SIGKILL runs none)
    second = make_aggregator(tmp_path, run_id="run-1", eos_timeout_s=0, line="0,14,100,14")
    # Seq 3 comes again (a re-sent or late input): already written, so rejected. Seq 5 was cut off.
    outputs = run_messages(second, [frame(3, result=vehicles(0)), frame(5, result=vehicles(2)),
                                    frame(6, "reuse", ref_seq=5), frame(7, "skip"), eos("cam", 8, final=True)])
    second.teardown()
    assert [m.seq for m in outputs if not m.is_eos] == [5, 6, 7]
    lines = records(tmp_path)
    assert lines[0] == {"run": "run-1", "format": 1} and sum("run" in r for r in lines) == 1
    assert [r["seq"] for r in lines if "seq" in r] == [0, 1, 2, 3, 4, 5, 6, 7]
    summary = json.loads((tmp_path / "summary.json").read_text())["total"]
    assert (summary["produced"], summary["inferred"], summary["reused"], summary["skipped"]) == (8, 5, 2, 1)
    assert summary["lost"] == 0 and summary["balanced"] and summary["rejected"] == {"duplicate": 1}
    assert lines[-1]["task_totals"]["frames"] == 8 and lines[-1]["task_totals"]["frames_with_vehicles"] == 4
    # Another run: a new file.
    third = make_aggregator(tmp_path, run_id="run-2")
    third.teardown()
    assert [r.get("run") for r in records(tmp_path)][:1] == ["run-2"] and len(records(tmp_path)) == 2


def test_a_restart_resumes_speech_answers_for_reuse_and_finished_streams(tmp_path):
    first = make_aggregator(tmp_path, task="auto", run_id="r", eos_timeout_s=0)
    said = Message("result", "mic", 0, decision={"action": "infer"}, result=Transcript("ask not what").to_wire())
    run_messages(first, [said, eos("mic", 1), Message("result", "b", 0, decision={"action": "infer"},
                                                      result=Transcript("hello there you").to_wire())])
    second = make_aggregator(tmp_path, task="auto", run_id="r", eos_timeout_s=0)
    outputs = run_messages(second, [Message("audio", "b", 1, decision={"action": "reuse", "ref_seq": 0}),
                                    Message("audio", "mic", 0, decision={"action": "skip"}),   # after its end
                                    eos("b", 2, final=True)])
    second.teardown()
    assert outputs[0].result["text"] == "hello there you" and outputs[0].result["words"] == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["total"]["streams"] == 2 and summary["total"]["balanced"]
    assert summary["total"]["after_end"] == 1
    assert summary["task_totals"]["words"] == 3 + 3 + 3


@pytest.mark.timeout(180)
def test_an_aggregator_killed_mid_run_is_restarted_and_every_input_is_written_once(tmp_path, monkeypatch):
    """SIGKILL the aggregator process of a running graph (source -> filter -> worker ->
    aggregate): the launcher restarts it, the new process appends to --out what comes next
    and the file holds every input at most once; what died in the killed process's queues is
    counted lost, and the summary balances over the whole run (both processes)."""
    import signal

    from pipeline.graph import GraphRun, parse_graph
    from tests.helpers.workers import expected_count
    monkeypatch.setenv("INFISTREAM_JOB_KEY", "ab" * 16)     # the filter's tags checked end to end too
    out, summary_path, count = tmp_path / "out.jsonl", tmp_path / "summary.json", 300
    document = {"name": "restart", "transport": "ipc", "stages": [
        {"name": "source", "stage": "tests.helpers.stages:CountingSource",
         "params": {"count": count, "interval_ms": 15}},
        {"name": "filter", "stage": "stages.filter:Filter", "inputs": ["source"], "params": {"policy": "stride:2"}},
        {"name": "worker", "stage": "tests.helpers.workers:SeqDetector", "inputs": ["filter"], "sources": 0},
        {"name": "aggregate", "stage": "stages.aggregate:Aggregator", "inputs": ["worker", "filter[1]"],
         # No run_id: the launcher gives every stage of the run $INFISTREAM_RUN_ID, restarts included.
         "params": {"task": "vehicles", "out": str(out), "summary": str(summary_path),
                    "eos_timeout_s": 3.0, "reorder_timeout_s": 1.0, "print_summary": False}}]}
    run = GraphRun(parse_graph(document, "restart"), run_dir=tmp_path / "run", log_level="WARNING")
    run.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 100):
            assert run.poll(), "the graph ended before the kill"
            time.sleep(0.05)
        killed = run.pid("aggregate")
        run.kill_stage("aggregate", signal.SIGKILL)
        code = run.wait()
    finally:
        run.close()
    assert code == 0
    assert run.running["aggregate"].restarts == 1 and run.pid("aggregate") != killed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0] == {"run": run.run_id, "format": 1} and sum("run" in r for r in lines) == 1
    inputs = [r for r in lines if "seq" in r]
    seqs = [r["seq"] for r in inputs]
    assert len(seqs) == len(set(seqs)), "an input was written twice"
    assert len(seqs) > 100                                   # the first process's lines are all kept
    for record in inputs:
        if record["decision"] == "infer":
            assert record["count"] == expected_count(record["seq"])
    summary = json.loads(summary_path.read_text())["total"]
    assert summary["produced"] == count and summary["balanced"], summary
    assert summary["inferred"] + summary["reused"] + summary["dropped"] == count
    assert summary["inferred"] + summary["reused"] == len(seqs)
    assert summary["lost"] == count - len(seqs) and summary["lost"] <= 30, summary
    assert "rejected" not in summary or "forged" not in summary["rejected"], summary


# -- hostile input: results a peer forged, repeated or filled with junk --------------------------

HOSTILE_RESULTS = {
    "class id beyond 64 bits": {"task": "vehicles", "boxes": [[1, 1, 2, 2]], "classes": [10**30], "scores": [0.5]},
    "box beyond float": {"task": "vehicles", "boxes": [[10**400, 1, 2, 2]], "classes": [2], "scores": [0.5]},
    "boxes nested deep": {"task": "vehicles", "boxes": json.loads("[" * 200 + "]" * 200), "classes": [], "scores": []},
    "boxes as text": {"task": "vehicles", "boxes": "x" * 5000, "classes": [2], "scores": [0.5]},
    "class names": {"task": "vehicles", "boxes": [[1, 1, 2, 2]], "classes": ["car"], "scores": [0.5]},
    "model time infinite in sum": {"task": "vehicles", "boxes": [], "classes": [], "scores": [], "infer_ms": 1e308},
    "model time as text": {"task": "vehicles", "infer_ms": "fast"},
    "unknown task": {"task": "bogus"},
    "task as list": {"task": [1, 2]},
    "speech text as list": {"task": "speech", "text": ["a"]},
}


@pytest.mark.parametrize("name", HOSTILE_RESULTS)
def test_a_hostile_result_is_counted_unanswered_and_loses_nothing_else(tmp_path, name):
    """A worker's result is read field by field: bad content makes that input unanswered
    (counted), and the good input released with it (held behind it) is still written."""
    stage = make_aggregator(tmp_path, task="auto", eos_timeout_s=0)
    outputs = run_messages(stage, [frame(1, result=vehicles(1)), frame(0, result=HOSTILE_RESULTS[name]),
                                   frame(2, "reuse", ref_seq=0), eos("cam", 3, final=True)])
    stage.teardown()
    assert [m.seq for m in outputs if not m.is_eos] == [0, 1, 2]
    summary = outputs[-1].meta["summary"]
    assert (summary["unanswered"], summary["inferred"], summary["reused"]) == (1, 1, 1)
    assert summary["balanced"] and summary["model_ms_spent"] < 1e7


@pytest.mark.parametrize("decision", [
    {"action": "reuse", "ref_seq": True}, {"action": "reuse", "ref_seq": 10**30}, {"action": ["infer"]},
    {"action": "exit", "exit": 10**30, "result": {"count": 0}}, {"action": "skip", "filter_ms": 1e308},
    {"action": "skip", "policy": {"nested": [1] * 1000}},
])
def test_a_hostile_decision_is_counted_unanswered(tmp_path, decision):
    stage = make_aggregator(tmp_path, eos_timeout_s=0)
    outputs = run_messages(stage, [Message("video", "cam", 0, decision=decision), eos("cam", 1, final=True)])
    stage.teardown()
    assert outputs[-1].meta["summary"]["unanswered"] == 1 and outputs[-1].meta["summary"]["balanced"]


def test_a_result_that_cannot_be_published_as_it_is_goes_out_as_its_verdict_only(tmp_path):
    """An input whose header is just under the limit, plus the result line, would exceed it:
    the stage must not fail sending it on (a PUB output), so the verdict goes out alone."""
    from pipeline.message import MAX_HEADER_BYTES, encode
    stage = make_aggregator(tmp_path)
    message = frame(0, result=vehicles(1))
    message.meta["padding"] = "x" * (MAX_HEADER_BYTES - len(encode(message)[0]) - 40)
    assert len(encode(message)[0]) <= MAX_HEADER_BYTES
    [output] = stage.process(message)
    with pytest.raises(MessageError, match="64 KiB|at most"):
        encode(output)                                   # the sender will fail on it...
    stand_in = stage.unsendable(output, MessageError("oversize-header", "too big"))
    encode(stand_in)                                     # ...and send this instead (pipeline/stage.py)
    assert stand_in.result == {"stream": "cam", "seq": 0, "decision": "infer"} and stand_in.kind == "result"


@pytest.mark.timeout(60)
def test_forged_duplicate_and_hostile_results_on_the_workers_port_are_rejected_and_counted(tmp_path):
    """The aggregator's results endpoint, bound on tcp as --remote-workers binds it, with the
    run's job key: an attacker's results for real sequence numbers (untagged, tagged with the
    wrong purpose or key), a forged end of stream, a worker's repeated result and a 5 KB hostile
    result carrying a valid tag. Only the filter's and the real worker's messages count, each once;
    the rest are counted rejections, and the stage runs to its normal end."""
    from stages import ledger
    from tests.conftest import free_tcp_port
    key, other_key = bytes.fromhex("11" * 16), bytes.fromhex("22" * 16)
    url = f"tcp://127.0.0.1:{free_tcp_port()}"
    options = SocketOptions(hwm=64, recv_timeout_ms=100, linger_ms=1000)
    stage = Aggregator(task="vehicles", out=str(tmp_path / "out.jsonl"), summary=str(tmp_path / "summary.json"),
                       print_summary=False, job_key=key.hex(), eos_timeout_s=2.0)
    thread = StageThread(stage, RunOptions(name="aggregate", inputs=[Endpoint(url, True)], socket=options,
                                           metrics_interval_s=0, end_wait_s=0))
    context = zmq.Context.instance()
    filter_, worker, attacker = (Sender([Endpoint(url, False)], pattern="push", options=options, context=context)
                                 for _ in range(3))

    def tagged(message: Message, purpose: str, with_key: bytes = key) -> Message:
        message.meta["tag"] = ledger.tag(with_key, purpose, message.stream, message.seq)
        return message

    thread.start()
    try:
        hostile = {"task": "vehicles", "boxes": [[1e300, 2, 3, 4]] * 100, "classes": [2**63 - 1] * 100,
                   "scores": json.loads("[" * 25 + "]" * 25), "infer_ms": "x" * 1000}
        assert len(json.dumps(hostile)) > 5000
        for message in [frame(2, result=vehicles(3)),                                   # untagged
                        tagged(frame(3, result=vehicles(3)), "direct"),                 # a result needs a job tag
                        tagged(frame(3, result=vehicles(3)), "job", other_key),         # another run's key
                        tagged(frame(4, "skip"), "direct", other_key),                  # not the filter's answer
                        tagged(eos("cam", 2, final=True), "eos", other_key)]:           # ends nothing
            assert attacker.send(message)
        time.sleep(0.3)
        for seq in range(4):
            assert worker.send(tagged(frame(seq, result=vehicles(seq)), "job"))
        assert worker.send(tagged(frame(1, result=vehicles(5)), "job"))                 # again: a duplicate
        assert worker.send(tagged(frame(4, result=hostile), "job"))                     # a broken worker
        assert filter_.send(tagged(frame(5, "skip"), "direct"))
        assert filter_.send(tagged(eos("cam", 6, final=True), "eos"))
        thread.join(20)
    finally:
        for socket in (filter_, worker, attacker):
            socket.close()
    assert thread.error is None and not thread.is_alive()
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    inputs = [line for line in lines if "seq" in line]
    assert [(r["seq"], r["decision"], r.get("count")) for r in inputs] == \
        [(0, "infer", 0), (1, "infer", 1), (2, "infer", 2), (3, "infer", 3), (4, "unanswered", None), (5, "skip", 0)]
    summary = json.loads((tmp_path / "summary.json").read_text())["total"]
    assert summary["rejected"] == {"forged": 5, "duplicate": 1}
    assert summary["produced"] == 6 and summary["balanced"] and summary["lost"] == 0


def test_the_summary_says_which_policy_decided_each_input_what_it_sent_to_the_model_and_the_filter_cost(tmp_path):
    """A policy's own ``infer`` decisions (a self-check's probe, the line guard) went to the model:
    the summary counts them apart from what the policy answered, never as answered."""
    aggregator = make_aggregator(tmp_path)
    messages = [
        frame(0, result=vehicles(1), policy="skip+reuse", filter_ms=1.0),   # no policy decided: the model ran
        frame(1, "skip", policy="skip", filter_ms=0.5),
        frame(2, "reuse", ref_seq=0, policy="reuse", filter_ms=0.75),
        frame(3, "reuse", ref_seq=0, policy="reuse", filter_ms=0.25),
        frame(4, result=vehicles(1)),                                          # a run with no filter names none
        frame(5, result=vehicles(0), policy="skip", filter_ms=0.5),            # Skip's probe: YOLO answered
        frame(6, result=vehicles(2), policy="line:0,5,10,5", filter_ms=0.5),  # the line guard sends every one
        eos("cam", 7, final=True),
    ]
    run_messages(aggregator, messages)
    aggregator.teardown()
    per_input = [r.get("policy") for r in records(tmp_path) if "seq" in r]
    assert per_input == ["skip+reuse", "skip", "reuse", "reuse", None, "skip", "line:0,5,10,5"]
    total = json.loads((tmp_path / "summary.json").read_text())["total"]
    assert total["by_policy"] == {"reuse": {"inputs": 2, "to_model": 0, "filter_ms": 1.0},
                                  "skip+reuse": {"inputs": 1, "to_model": 1, "filter_ms": 1.0},
                                  "skip": {"inputs": 2, "to_model": 1, "filter_ms": 1.0},
                                  "line:0,5,10,5": {"inputs": 1, "to_model": 1, "filter_ms": 0.5}}
    assert total["balanced"] and total["inferred"] == 4 and total["skipped"] == 1
    from stages.savings import format_summary
    decided = next(line for line in format_summary(total).splitlines() if "decided by" in line)
    assert "skip+reuse (none decided: the model ran) 1" in decided
    assert "skip 2 (1 answered, 1 to the model; 0.00 s)" in decided
    assert "reuse 2 (2 answered, 0 to the model" in decided and "line:0,5,10,5 1 (all to the model" in decided


def test_policy_names_from_the_wire_are_bounded(tmp_path):
    aggregator = make_aggregator(tmp_path)
    run_messages(aggregator, [frame(seq, "skip", policy=f"p{seq}" + "x" * 100) for seq in range(40)]
                 + [eos("cam", 40, final=True)])
    aggregator.teardown()
    by_policy = json.loads((tmp_path / "summary.json").read_text())["total"]["by_policy"]
    assert len(by_policy) == 17 and by_policy["(other)"]["inputs"] == 24
    assert max(len(name) for name in by_policy) == 64
