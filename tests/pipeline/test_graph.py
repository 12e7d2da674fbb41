"""Graphs across processes: YAML wiring, end of stream through every stage, crashes and restarts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.graph import GraphRun, parse_graph
from pipeline.stage import RunOptions, StageThread
from pipeline.transport import Endpoint, SocketOptions
from stages.sinks import StatsPrinter
from tests.helpers.stages import CountingSource
from tests.conftest import free_tcp_port

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "tests.helpers.stages:CountingSource"


def four_stage_graph(tmp_path: Path, transport: str, count: int, interval_ms: float = 0.0) -> dict:
    return {"name": "four", "transport": transport, "stages": [
        {"name": "source", "stage": SOURCE, "params": {"count": count, "streams": 2, "interval_ms": interval_ms}},
        {"name": "check", "stage": "tests.helpers.stages:SlowRelay", "inputs": ["source"]},
        {"name": "relay", "stage": "stages.relay:Relay", "inputs": ["check"]},
        {"name": "sink", "stage": "stages.sinks:JsonlSink", "inputs": ["relay"],
         "params": {"path": str(tmp_path / "out.jsonl"), "flush_every": 1}},
    ]}


def read_jsonl(path: Path) -> tuple[dict[str, list[int]], dict[str, dict]]:
    """Seqs received per stream, and each stream's end-of-stream record."""
    seqs: dict[str, list[int]] = {}
    ends: dict[str, dict] = {}
    # Only complete lines: the sink may be writing the last one while a test reads.
    for line in path.read_text().split("\n")[:-1]:
        record = json.loads(line)
        if record["kind"] == "eos":
            ends[record["stream"]] = record
        else:
            seqs.setdefault(record["stream"], []).append(record["seq"])
    return seqs, ends


@pytest.mark.timeout(120)
def test_cli_runs_a_four_stage_graph_end_to_end(tmp_path, process_transport):
    graph = tmp_path / "graph.yaml"
    graph.write_text(yaml.safe_dump(four_stage_graph(tmp_path, process_transport, count=250)))
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(graph), "--run-dir", str(tmp_path / "run")],
                          cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    seqs, ends = read_jsonl(tmp_path / "out.jsonl")
    assert {s: sorted(v) for s, v in seqs.items()} == {"synthetic0": list(range(250)), "synthetic1": list(range(250))}
    assert {s: e["seq"] for s, e in ends.items()} == {"synthetic0": 250, "synthetic1": 250}
    assert [e["final"] for e in ends.values()].count(True) == 1
    # Every stage saw both ends of stream and ended by itself (exit code 0), and the table says so.
    for stage in ("source", "check", "relay", "sink"):
        metrics = json.loads((tmp_path / "run" / f"{stage}.metrics.json").read_text())
        assert metrics["errors"] == 0
        if stage != "source":
            assert metrics["eos"] == 2 and metrics["inputs"] == 500
    assert "per-stage statistics" in done.stdout and done.stdout.count("exit code 0") == 4


@pytest.mark.timeout(120)
def test_middle_stage_killed_is_restarted_while_the_graph_keeps_running(tmp_path):
    count = 1500
    graph = parse_graph(four_stage_graph(tmp_path, "ipc", count=count, interval_ms=2))
    run = GraphRun(graph, tmp_path / "run", log_level="WARNING")
    try:
        run.start()
        neighbours = {name: run.pid(name) for name in ("source", "relay", "sink")}
        before = wait_for_frames(tmp_path / "out.jsonl", at_least=100)
        old_pid = run.pid("check")
        run.kill_stage("check", signal.SIGKILL)
        assert run.wait() == 0
    finally:
        run.close()
    assert run.running["check"].restarts == 1 and run.pid("check") != old_pid
    assert {name: run.pid(name) for name in neighbours} == neighbours          # neighbours never restarted
    assert all(run.running[name].restarts == 0 for name in neighbours)
    seqs, ends = read_jsonl(tmp_path / "out.jsonl")
    for stream in ("synthetic0", "synthetic1"):
        received = seqs[stream]
        assert len(received) == len(set(received))                             # nothing twice
        assert ends[stream]["seq"] == count                                    # the end arrived
        assert max(received) == count - 1 and max(received) > before           # frames kept coming
        lost = count - len(received)
        # Only what sat in the killed stage's queues and socket buffers is lost, and the
        # end-of-stream count tells the sink exactly how much that was.
        assert 0 <= lost < 200, lost


def wait_for_frames(path: Path, at_least: int, timeout: float = 30.0) -> int:
    """Wait until the sink has written `at_least` frames of synthetic0 (stages start slowly under load)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            received = len(read_jsonl(path)[0].get("synthetic0", []))
            if received >= at_least:
                return received
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} frames reached {path} within {timeout} s")


def stage_command(target: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "--log-level", "WARNING", "stage", target, *args]


@pytest.mark.timeout(120)
def test_hand_started_stages_join_over_the_network_and_survive_a_restart(tmp_path, process_transport):
    """`infistream stage` as a user runs it on separate hosts: source | relay | sink, relay restarted by hand."""
    if process_transport == "tcp":
        first, second = (f"tcp://127.0.0.1:{free_tcp_port()}" for _ in range(2))
    else:
        first, second = (f"ipc://{tmp_path}/{name}.sock" for name in ("a", "b"))
    out = tmp_path / "out.jsonl"
    sink = subprocess.Popen(stage_command("stages.sinks:JsonlSink", "--in", "@" + second, "--param", f"path={out}",
                                          "--param", "flush_every=1"), cwd=ROOT)
    relay_args = stage_command("stages.relay:Relay", "--in", first, "--out", ">" + second)
    relay = subprocess.Popen(relay_args, cwd=ROOT)
    source = subprocess.Popen(stage_command(SOURCE, "--out", first, "--param", "count=1000",
                                            "--param", "interval_ms=3"), cwd=ROOT)
    try:
        wait_for_frames(out, at_least=100)
        relay.send_signal(signal.SIGKILL)
        relay.wait()
        time.sleep(0.3)
        relay = subprocess.Popen(relay_args, cwd=ROOT)
        assert source.wait(timeout=60) == 0 and relay.wait(timeout=30) == 0 and sink.wait(timeout=30) == 0
    finally:
        for process in (source, relay, sink):
            if process.poll() is None:
                process.kill()
    seqs, ends = read_jsonl(out)
    received = seqs["synthetic0"]
    assert ends["synthetic0"]["seq"] == 1000 and ends["synthetic0"]["final"] is True
    assert len(received) == len(set(received)) and received == sorted(received) and max(received) == 999
    assert 1000 - len(received) < 200


def test_stage_exit_codes_tell_config_from_setup_failures(tmp_path):
    bad_param = subprocess.run(stage_command(SOURCE, "--param", "colour=red"), cwd=ROOT, capture_output=True, text=True)
    assert bad_param.returncode == 2 and "no parameter(s) ['colour']" in bad_param.stderr
    bad_url = subprocess.run(stage_command("stages.relay:Relay", "--in", "udp://x:1"), cwd=ROOT, capture_output=True,
                             text=True)
    assert bad_url.returncode == 2 and "udp://x:1" in bad_url.stderr
    no_file = subprocess.run(stage_command("stages.sinks:JsonlSink", "--in", "ipc:///tmp/none.sock",
                                           "--param", "path=/proc/no/such/dir/x.jsonl"),
                             cwd=ROOT, capture_output=True, text=True)
    assert no_file.returncode == 3 and "failed in setup" in no_file.stderr


@pytest.mark.parametrize("document, message", [
    ({}, "non-empty 'stages' list"),
    ({"stages": [{"name": "a"}]}, "'name' and 'stage'"),
    ({"stages": [{"name": "a", "stage": SOURCE, "colour": 1}]}, r"unknown key\(s\) \['colour'\]"),
    ({"stages": [{"name": "a", "stage": SOURCE}, {"name": "a", "stage": SOURCE}]}, "two stages are named 'a'"),
    ({"stages": [{"name": "r", "stage": "stages.relay:Relay"}]}, "needs 'inputs'"),
    ({"stages": [{"name": "r", "stage": "stages.relay:Relay", "inputs": ["ghost"]}]}, "'ghost'"),
    ({"stages": [{"name": "s", "stage": SOURCE, "inputs": ["s"]}]}, "cannot have inputs"),
    ({"transport": "udp", "stages": [{"name": "s", "stage": SOURCE}]}, "transport must be"),
    ({"stages": [{"name": "a", "stage": "stages.relay:Relay", "inputs": ["b"]},
                 {"name": "b", "stage": "stages.relay:Relay", "inputs": ["a"]}]}, "cycle"),
])
def test_graph_files_are_checked_before_anything_starts(document, message):
    with pytest.raises(ConfigError, match=message):
        parse_graph(document)


@pytest.mark.timeout(60)
def test_a_stage_ending_on_its_own_after_the_sink_is_given_time_to_exit(tmp_path):
    """A pool worker told that its inputs are closed ends by itself, but its process may take a
    few seconds to exit (here 4 s of teardown, as a model runtime closing) after the sink, which
    already had everything, ended: it is not stopped for that (ENDING_GRACE_S, not the 2 s for
    stages nobody will ever tell)."""
    document = {"name": "pool", "transport": "ipc", "stages": [
        {"name": "source", "stage": SOURCE, "params": {"count": 10}},
        {"name": "worker", "stage": "tests.helpers.stages:SlowRelay", "inputs": ["source"], "sources": 0,
         "params": {"teardown_ms": 4000}},
        {"name": "sink", "stage": "stages.sinks:JsonlSink", "inputs": ["worker"],
         "params": {"path": str(tmp_path / "out.jsonl")}}]}
    run = GraphRun(parse_graph(document), tmp_path / "run", log_level="WARNING")
    assert GraphRun.ENDING_GRACE_S > 4 > GraphRun.SINKS_DONE_GRACE_S
    assert run.run() == 0
    assert run.terminated == [] and run.stopped_when_done == [] and "worker" in run.inputs_closed
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["seq"] for line in lines if not line.get("final")] == list(range(10))     # then the marker


@pytest.mark.timeout(60)
def test_a_stage_ended_because_the_sinks_had_everything_reads_as_stopped_when_done(tmp_path):
    """A pool worker waiting on an outside address is never told its inputs closed: once the
    graph's sink has everything, the launcher stops it, and the stage table says so rather than
    showing a bare signal, which reads like a crash."""
    document = {"name": "pool", "transport": "ipc", "stages": [
        {"name": "source", "stage": SOURCE, "params": {"count": 10}},
        {"name": "sink", "stage": "stages.sinks:JsonlSink", "inputs": ["source"],
         "params": {"path": str(tmp_path / "out.jsonl")}},
        {"name": "idle", "stage": "stages.relay:Relay", "inputs": [f"ipc://{tmp_path}/nobody.sock"], "sources": 0}]}
    run = GraphRun(parse_graph(document), tmp_path / "run", log_level="WARNING")
    assert run.run() == 0
    rows = {row["stage"]: row for row in run.stage_metrics()}
    assert run.terminated == ["idle"] and run.stopped_when_done == ["idle"]
    # The relay handles SIGTERM and exits 0; a stage the signal itself ends (a YOLO worker in
    # make demo, inside its model's native code) exits -15, and that is what is relabelled.
    assert rows["idle"]["exit"] == "exit code 0" and rows["sink"]["exit"] == "exit code 0"
    run.running["idle"].exit_code = -signal.SIGTERM
    assert {row["stage"]: row["exit"] for row in run.stage_metrics()}["idle"] == "stopped when done (signal SIGTERM)"
    run.running["sink"].exit_code = -signal.SIGTERM                     # not stopped by the launcher: as it is
    assert {row["stage"]: row["exit"] for row in run.stage_metrics()}["sink"] == "signal SIGTERM"


def test_fan_in_stage_waits_for_every_upstream_source():
    graph = parse_graph({"stages": [
        {"name": "a", "stage": SOURCE}, {"name": "b", "stage": SOURCE},
        {"name": "merge", "stage": "stages.relay:Relay", "inputs": ["a", "b"]},
        {"name": "sink", "stage": "stages.sinks:StatsPrinter", "inputs": ["merge", "tcp://127.0.0.1:7000"]}]})
    assert graph.stage("merge").sources == 2 and graph.stage("sink").sources == 3


@pytest.mark.timeout(60)
def test_graph_with_a_service_stage_ends_when_its_sink_has_everything(tmp_path):
    """A stage that runs until stopped (sources: 0, e.g. a worker in a pool) must not hold the graph open."""
    document = four_stage_graph(tmp_path, "ipc", count=100)
    document["stages"][2]["sources"] = 0
    run = GraphRun(parse_graph(document), tmp_path / "run", log_level="WARNING")
    assert run.run() == 0
    # The service stage was told its input had closed once the stage before it ended, and ended
    # by itself, as did the sink after it: the launcher had to end nothing. (Whether `check` is
    # told too depends on who is faster: it may end on its final marker before the launcher sees
    # the source gone.)
    assert "relay" in run.inputs_closed and run.terminated == []
    seqs, ends = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(seqs["synthetic0"]) == list(range(100)) and ends["synthetic1"]["seq"] == 100


@pytest.mark.parametrize("reference, expected", [("filter", ("filter", 0)), ("filter[1]", ("filter", 1)),
                                                 ("worker-2[0]", ("worker-2", 0))])
def test_references_name_a_stage_and_an_output(reference, expected):
    from pipeline.graph import split_reference
    assert split_reference(reference) == expected


def test_a_second_output_read_by_name_gets_its_own_endpoint(tmp_path):
    from pipeline.graph import parse_graph, wire
    graph = parse_graph({"stages": [
        {"name": "source", "stage": "tests.helpers.stages:CountingSource"},
        {"name": "a", "stage": "stages.relay:Relay", "inputs": ["source"]},
        {"name": "b", "stage": "stages.sinks:StatsPrinter", "inputs": ["a", "source[1]"]},
    ]})
    wiring = wire(graph, tmp_path)
    assert wiring["source"]["outputs"] == [f"@ipc://{tmp_path}/source.sock", f"@ipc://{tmp_path}/source.1.sock"]
    assert wiring["b"]["inputs"] == [f">ipc://{tmp_path}/a.sock", f">ipc://{tmp_path}/source.1.sock"]
    assert graph.stage("b").sources == 2


class SlowSink(StatsPrinter):
    """A sink that takes `delay_ms` per message, so the source's last messages wait in its queue."""

    def __init__(self, delay_ms: float):
        super().__init__()
        self.delay_s = delay_ms / 1000

    def process(self, message):
        time.sleep(self.delay_s)
        return super().process(message)


@pytest.mark.timeout(60)
def test_a_source_does_not_close_while_a_slow_reader_still_has_messages_to_read(process_transport, make_url):
    """Issue 8: under load, a source closed 10 s after its end of stream while its reader was
    still busy, and the messages still queued, end of stream included, were lost (and the run
    never ended). Here the reader takes 80 ms per 640x480 frame, so the last frames (more than
    the socket buffers hold) wait at the source far longer than its end wait (0.2 s) and its
    LINGER (50 ms): every one must still arrive, and both stages end by themselves."""
    url = make_url(process_transport)
    options = SocketOptions(hwm=2, linger_ms=50, recv_timeout_ms=100)
    sink = SlowSink(delay_ms=80)
    source = StageThread(CountingSource(count=40, width=640, height=480),
                         RunOptions(name="source", outputs=[Endpoint(url, bind=True)], socket=options,
                                    metrics_interval_s=0, end_wait_s=0.2))
    reader = StageThread(sink, RunOptions(name="sink", inputs=[Endpoint(url, bind=False)], socket=options,
                                          metrics_interval_s=0))
    reader.start()
    source.start()
    for thread in (source, reader):
        thread.join(45)
        assert not thread.is_alive() and thread.error is None
    assert (sink.totals["produced"], sink.totals["received"], sink.totals["lost"]) == (40, 40, 0)


class Launcher:
    """`infistream run GRAPH` in its own process, as a user starts it, with its output in `log`
    (a file, not a pipe that could fill and block the stages) and its run directory under a
    fresh, short TMPDIR (ipc paths are limited to 107 bytes). Leaving the block kills it if it
    still runs and keeps in `left` whatever it left behind in that TMPDIR."""

    def __init__(self, graph: Path, log: Path, *options: str):
        self.graph, self.log, self.options = graph, log, options
        self.left: list[Path] = []

    def __enter__(self) -> "Launcher":
        self.temp = Path(tempfile.mkdtemp(prefix="infi-"))
        with self.log.open("w") as output_file:
            self.process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *self.options, "run", str(self.graph)],
                                            cwd=ROOT, env={**os.environ, "TMPDIR": str(self.temp)},
                                            stdout=output_file, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()
        self.left = list(self.temp.iterdir())
        shutil.rmtree(self.temp)

    def output(self) -> str:
        return self.log.read_text()


@pytest.mark.timeout(60)
def test_a_run_directory_is_removed_when_the_run_ends(tmp_path):
    """Issue 8: every run left its directory (sockets, metrics) behind in /tmp."""
    document = four_stage_graph(tmp_path, "ipc", count=20)
    run = GraphRun(parse_graph(document), log_level="WARNING")
    run_dir = run.run_dir
    assert run_dir.is_dir()
    assert run.run() == 0
    assert not run_dir.exists()
    # The metrics were read before: the statistics table still has them.
    rows = {row["stage"]: row for row in run.stage_metrics()}
    assert rows["sink"]["inputs"] == 40 and rows["sink"]["exit"] == "exit code 0"


@pytest.mark.timeout(60)
def test_a_run_directory_is_removed_after_a_failure_and_after_ctrl_c(tmp_path):
    """A stage that fails, and a launcher interrupted (Ctrl-C, or SIGTERM), remove it too."""
    failing = {"name": "bad", "stages": [
        {"name": "source", "stage": SOURCE, "params": {"count": 5}},
        {"name": "sink", "stage": "stages.sinks:JsonlSink", "inputs": ["source"],
         "params": {"path": str(tmp_path / "no" / "such" / "dir" / "\0bad")}}]}
    run = GraphRun(parse_graph(failing), log_level="WARNING")
    run.run()
    assert not run.run_dir.exists()

    # A whole launcher process, as a user runs it, stopped with SIGINT and then SIGTERM.
    for sig in (signal.SIGINT, signal.SIGTERM):
        graph = tmp_path / f"endless-{sig.name}.yaml"
        graph.write_text(yaml.safe_dump(four_stage_graph(tmp_path, "ipc", count=10**6, interval_ms=5)))
        with Launcher(graph, tmp_path / f"launcher-{sig.name}.log") as launcher:
            wait_for_frames(tmp_path / "out.jsonl", at_least=20)
            launcher.process.send_signal(sig)
            launcher.process.wait(timeout=40)
        output, left = launcher.output(), launcher.left
        assert "per-stage statistics" in output and "exit code 0" in output, output[-3000:]
        assert left == [], output[-3000:]
        (tmp_path / "out.jsonl").unlink()


@pytest.mark.timeout(90)
def test_a_second_ctrl_c_stops_a_draining_launcher_at_once_without_a_traceback(tmp_path):
    """The first SIGINT lets the streams drain (here slowly: 2 s per frame queued); a second one,
    more than a second later, stops every stage now. Before, it raised KeyboardInterrupt out of
    the launcher's wait: a traceback, and stages left to the process group."""
    document = four_stage_graph(tmp_path, "ipc", count=10**6)
    document["stages"][1]["params"] = {"delay_ms": 2000}
    graph = tmp_path / "slow.yaml"
    graph.write_text(yaml.safe_dump(document))
    with Launcher(graph, tmp_path / "launcher.log", "--log-level", "INFO") as launcher:
        wait_for_frames(tmp_path / "out.jsonl", at_least=1)
        launcher.process.send_signal(signal.SIGINT)
        # The second press must come more than a second after the launcher took the first
        # (a busy machine can delay that): wait until it says so.
        deadline = time.monotonic() + 30
        while "stopping sources" not in launcher.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)
        assert launcher.process.poll() is None, "the first Ctrl-C should still be draining the slow stage"
        launcher.process.send_signal(signal.SIGINT)
        launcher.process.wait(timeout=40)
    output, left = launcher.output(), launcher.left
    assert "Traceback" not in output, output[-3000:]
    assert "interrupted again" in output and "per-stage statistics" in output, output[-3000:]
    assert left == [], output[-3000:]


@pytest.mark.timeout(120)
def test_a_side_input_feeds_results_back_without_counting_as_input_or_holding_the_graph(tmp_path):
    """The filter's feedback loop, in general: a stage reads what a later stage publishes (a
    cycle in the data), as a side input. It sees those messages, they are not its inputs, and
    the graph still ends by itself when the stream does."""
    report = tmp_path / "report.json"
    document = {"name": "loop", "stages": [
        {"name": "source", "stage": SOURCE, "params": {"count": 200, "interval_ms": 2}},
        {"name": "reader", "stage": "tests.helpers.stages:SideReader", "inputs": ["source"],
         "side_inputs": ["echo"], "params": {"report": str(report)}},
        {"name": "echo", "stage": "stages.relay:Relay", "inputs": ["reader"], "out_pattern": "pub"},
    ]}
    graph = parse_graph(document)
    assert graph.stage("reader").sources == 1    # the side input is not a source
    run = GraphRun(graph, log_level="WARNING")
    assert run.run() == 0 and run.terminated == []
    seen = json.loads(report.read_text())
    assert seen["inputs"] == 200
    # Best effort (a PUB drops what a slow subscriber has not taken, and it joins late), but
    # at this pace nearly all come back, in order per stream.
    assert seen["side"] > 50 and seen["side_seqs_in_order"], seen
    rows = {row["stage"]: row for row in run.stage_metrics()}
    assert rows["reader"]["inputs"] == 200 and rows["reader"]["side_inputs"] == seen["side"]


@pytest.mark.timeout(120)
def test_a_stage_holds_its_input_until_its_side_input_catches_up(tmp_path):
    """ready_for_input() False: the runtime reads only the side input until it turns True. The
    source runs flat out, the echo comes back through a slow relay, and the reader still never
    gets more than 2 inputs ahead of what came back (how the filter keeps Reuse's cache fresh)."""
    report = tmp_path / "report.json"
    document = {"name": "hold", "stages": [
        {"name": "source", "stage": SOURCE, "params": {"count": 100, "interval_ms": 0}},
        {"name": "reader", "stage": "tests.helpers.stages:SideReader", "inputs": ["source"],
         "side_inputs": ["echo"], "params": {"report": str(report), "max_ahead": 2}},
        {"name": "slow", "stage": "tests.helpers.stages:SlowRelay", "inputs": ["reader"], "params": {"delay_ms": 5}},
        {"name": "echo", "stage": "stages.relay:Relay", "inputs": ["slow"], "out_pattern": "pub"},
    ]}
    run = GraphRun(parse_graph(document), log_level="WARNING")
    assert run.run() == 0 and run.terminated == []
    seen = json.loads(report.read_text())
    assert seen["inputs"] == 100 and seen["side"] > 50, seen
    assert seen["most_ahead"] is not None and seen["most_ahead"] <= 2, seen


@pytest.mark.parametrize("side, message", [
    ("nowhere", "neither a stage of this graph"),
    ("source", "does not publish"),
])
def test_a_side_input_must_name_a_publishing_stage(side, message):
    document = {"name": "bad", "stages": [
        {"name": "source", "stage": SOURCE, "params": {"count": 1}},
        {"name": "sink", "stage": "stages.sinks:StatsPrinter", "inputs": ["source"], "side_inputs": [side]},
    ]}
    with pytest.raises(ConfigError, match=message):
        parse_graph(document)


class SlowSetupSink(StatsPrinter):
    """A sink whose setup takes `setup_s` (a model loading), then leaves `marker` behind."""

    def __init__(self, marker: str, setup_s: float = 2.0):
        super().__init__()
        self.marker, self.setup_s = Path(marker), setup_s

    def setup(self) -> None:
        time.sleep(self.setup_s)
        self.marker.touch()


class ReadyCheckingSource(CountingSource):
    """A CountingSource that writes to `report` whether `marker` existed when it produced its first input."""

    def __init__(self, marker: str, report: str, count: int = 50):
        super().__init__(count=count)
        self.marker, self.report = Path(marker), Path(report)

    def produce(self):
        self.report.write_text(json.dumps({"marker_at_first_input": self.marker.exists()}))
        yield from super().produce()


@pytest.mark.timeout(120)
def test_the_sources_start_once_every_other_stage_is_set_up(tmp_path):
    """A worker loading its model must not let a recorded file flow past it meanwhile: the launcher
    holds the sources until every other stage's setup has returned. The run directory is reused
    with a stale ready file of the sink left in it, which must not count for this run."""
    marker, report = tmp_path / "sink-set-up", tmp_path / "report.json"
    document = {"name": "gate", "stages": [
        {"name": "source", "stage": "tests.pipeline.test_graph:ReadyCheckingSource",
         "params": {"marker": str(marker), "report": str(report)}},
        {"name": "sink", "stage": "tests.pipeline.test_graph:SlowSetupSink", "inputs": ["source"],
         "params": {"marker": str(marker)}},
    ]}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "sink.ready").touch()
    run = GraphRun(parse_graph(document), run_dir, log_level="WARNING")
    assert run.run() == 0 and run.terminated == []
    assert json.loads(report.read_text()) == {"marker_at_first_input": True}
    rows = {row["stage"]: row for row in run.stage_metrics()}
    assert rows["sink"]["inputs"] == 50
    assert not list(run_dir.glob("*.ready"))   # a kept run directory keeps the metrics only
