"""The Source stage inside real graphs: decoded media through processes, and inputs that fail."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from pipeline.graph import GraphRun, parse_graph
from stages.aggregate import Aggregator
from stages.filter import Filter
from stages.savings import format_summary
from stages.sinks import StatsPrinter
from stages.source import Source
from tests.conftest import asset_or_skip
from tests.helpers.stages import CountingSource, SlowRelay
from tests.pipeline.test_stage import chain, join_all

ROOT = Path(__file__).resolve().parents[2]


def stage_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "--log-level", "WARNING", "stage", "stages.source:Source", *args]


def container_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for packet in container.demux(video=0) if packet.size)


@pytest.mark.timeout(120)
def test_a_recorded_clip_goes_through_three_processes_without_loss(tmp_path, assets):
    clip = asset_or_skip(assets, "traffic/highway_topdown.avi")
    graph = parse_graph({"name": "clip", "stages": [
        {"name": "source", "stage": "stages.source:Source", "params": {"uri": str(clip)}},
        {"name": "resize", "stage": "stages.relay:Resize", "inputs": ["source"], "params": {"width": 160}},
        {"name": "stats", "stage": "stages.sinks:StatsPrinter", "inputs": ["resize"],
         "params": {"summary_path": str(tmp_path / "summary.json")}}]})
    assert GraphRun(graph, tmp_path / "run", log_level="WARNING").run() == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    expected = container_frames(clip)
    counts = {key: summary["totals"][key] for key in ("streams", "produced", "received", "dropped_at_source", "lost")}
    assert counts == {"streams": 1, "produced": expected, "received": expected, "dropped_at_source": 0, "lost": 0}


def test_hollywood2_clip_list_gives_picture_and_sound_streams(tmp_path, make_url, assets):
    clip = asset_or_skip(assets, "hollywood2/actioncliptrain00001.avi")
    (tmp_path / "AVIClips").mkdir()
    (tmp_path / "AVIClips" / clip.name).symlink_to(clip)
    (tmp_path / "list_test.txt").write_text("actioncliptrain00001\n")
    sink = StatsPrinter()
    join_all(chain(make_url, "inproc", [("source", Source(f"hollywood2:{tmp_path}:{tmp_path / 'list_test.txt'}")),
                                        ("sink", sink)]), timeout=60)
    rows = {row["stream"]: row for row in sink.summary()["streams"]}
    assert set(rows) == {"actioncliptrain00001/video", "actioncliptrain00001/audio"}
    assert rows["actioncliptrain00001/video"]["received"] == container_frames(clip)
    assert rows["actioncliptrain00001/audio"]["received"] > 0 and all(r["lost"] == 0 for r in rows.values())


@pytest.mark.parametrize("uri, words", [
    ("/no/such/clip.mp4", "/no/such/clip.mp4"),
    ("cam7", "cam7"),
])
def test_a_source_that_cannot_open_exits_3_naming_it(uri, words, tmp_path):
    done = subprocess.run(stage_command("--out", f"ipc://{tmp_path}/x.sock", "--param", f"uri={uri}"), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "failed in setup" in done.stderr and words in done.stderr


@pytest.mark.timeout(60)
def test_graph_stops_with_an_error_when_its_source_cannot_open(tmp_path):
    graph = tmp_path / "graph.yaml"
    graph.write_text(json.dumps({"name": "broken", "stages": [
        {"name": "source", "stage": "stages.source:Source", "params": {"uri": str(tmp_path / "missing.mp4")}},
        {"name": "stats", "stage": "stages.sinks:StatsPrinter", "inputs": ["source"]}]}))
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(graph)], cwd=ROOT, capture_output=True,
                          text=True, timeout=50)
    assert done.returncode == 1
    assert "missing.mp4" in done.stderr and "stage(s) ['source'] ended with errors" in done.stderr


@pytest.mark.timeout(60)
def test_live_network_stream_drops_oldest_frames_when_the_pipeline_is_slow(make_url):
    """A real H.264 stream over loopback TCP is live: a slow stage makes the source drop, and count."""
    from tests.helpers.stages import SlowRelay
    from tests.sources.conftest import TcpStreamServer

    sink = StatsPrinter()
    with TcpStreamServer([300]) as server:
        source = Source(server.url, reconnect_attempts=0)
        threads = chain(make_url, "inproc", [("camera", source), ("slow", SlowRelay(delay_ms=15, verify=False)),
                                             ("sink", sink)], live_queue=2)
        join_all(threads, timeout=50)
    assert source.live
    totals = sink.summary()["totals"]
    dropped = threads[0].metrics["dropped"]["live-queue"]
    assert dropped > 0 and totals["dropped_at_source"] == dropped
    assert totals["produced"] == 300 and totals["received"] + dropped == 300 and totals["lost"] == 0


def test_recorded_media_shows_progress_against_the_container_count(make_url, assets, capsys):
    clip = asset_or_skip(assets, "traffic/highway_topdown.avi")
    join_all(chain(make_url, "inproc", [("source", Source(str(clip), progress=True)), ("sink", StatsPrinter())]))
    expected = container_frames(clip)
    assert f"{expected}/{expected}" in capsys.readouterr().err


# -- What a source's end of stream says when a run is stopped or a source fails ----------------

class FailsAfter(CountingSource):
    """Yields `after` frames, then its input breaks (a camera unplugged, a disk error)."""

    def __init__(self, after: int = 5):
        super().__init__(count=1000)
        self.after = after

    def produce(self):
        for index, message in enumerate(super().produce()):
            if index == self.after:
                raise OSError("input/output error")
            yield message


class FailsToOpen(CountingSource):
    def setup(self) -> None:
        raise OSError("no such device")


def aggregate_summary(make_url, source, tmp_path, delay_ms: float = 0.0, **options) -> tuple[list, Path]:
    """source -> filter (every input: infer; no workers, so unanswered) -> aggregator, as threads."""
    summary_path = tmp_path / "summary.json"
    aggregator = Aggregator(summary=str(summary_path), print_summary=False, eos_timeout_s=2.0)
    threads = chain(make_url, "inproc", [("source", source), ("slow", SlowRelay(delay_ms=delay_ms)),
                                         ("filter", Filter(policy="none")), ("aggregate", aggregator)], **options)
    return threads, summary_path


def test_a_source_that_fails_mid_run_ends_its_stream_with_the_error(make_url, tmp_path):
    threads, summary_path = aggregate_summary(make_url, FailsAfter(after=5), tmp_path)
    join_all(threads[1:])
    threads[0].join(10)
    assert isinstance(threads[0].error, Exception) and "input/output error" in str(threads[0].error)
    total = json.loads(summary_path.read_text())["total"]
    assert total["produced"] == 5 and total["unanswered"] == 5 and total["failed_sources"] == 1, total
    assert total["failed"] == [{"stream": "synthetic0", "error": "OSError: input/output error"}]
    assert not total["balanced"]


def test_a_source_that_cannot_start_still_ends_a_stream_saying_why(make_url, tmp_path):
    threads, summary_path = aggregate_summary(make_url, FailsToOpen(), tmp_path)
    join_all(threads[1:])
    threads[0].join(10)
    assert "no such device" in str(threads[0].error)
    total = json.loads(summary_path.read_text())["total"]
    assert total["streams"] == 1 and total["produced"] == 0 and not total["balanced"], total
    assert total["failed"] == [{"stream": "source", "error": "OSError: no such device"}]
    assert "source failed: source: OSError: no such device" in format_summary(total)


def test_stopping_a_live_source_counts_what_it_still_held_and_balances(make_url, tmp_path):
    """A live source falling behind, then stopped: its live-queue drops and the frames still
    queued at the stop (``stopped``) reach the summary by reason, and every frame is accounted for."""
    threads, summary_path = aggregate_summary(
        make_url, CountingSource(count=100000, live=True, interval_ms=1), tmp_path, delay_ms=5, live_queue=4)
    time.sleep(1.5)   # the capture (1 ms a frame) outruns the chain: the live queue drops
    threads[0].stop()
    join_all(threads)
    total = json.loads(summary_path.read_text())["total"]
    reasons = total["dropped_at_source_by_reason"]
    assert reasons.get("live-queue", 0) > 0 and reasons.get("stopped", 0) > 0, total
    assert total["balanced"] and total["lost"] == 0 and total["produced_known"]
    assert total["produced"] == total["unanswered"] + total["dropped_at_source"]
