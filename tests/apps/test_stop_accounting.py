"""A stopped or failed run says what happened to every input: real app processes, signals and sockets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from pipeline.transport import free_tcp_port
from tests.sources.conftest import TcpStreamServer

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "HF_HUB_OFFLINE": "1",
       "YOLO_CONFIG_DIR": str(ROOT / ".cache" / "ultralytics")}


@contextlib.contextmanager
def running_app(*args: str) -> Iterator[subprocess.Popen]:
    """The vehicle-counting app in its own process group, as a terminal gives a foreground job
    (Ctrl-C reaches the whole group); the whole group is killed on leaving if it still runs."""
    app = subprocess.Popen([sys.executable, str(ROOT / "apps" / "vehicle_count.py"), "--filter", "none",
                            *args], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT, start_new_session=True)
    try:
        yield app
    finally:
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGKILL)
            app.wait()


def results(out: Path) -> int:
    return sum(1 for line in out.read_text().splitlines() if '"seq"' in line) if out.exists() else 0


def wait_for_results(app: subprocess.Popen, out: Path, at_least: int, timeout: float = 150) -> None:
    """Until the app's results file has `at_least` lines (stages start slowly under load)."""
    deadline = time.monotonic() + timeout
    while results(out) < at_least:
        assert app.poll() is None and time.monotonic() < deadline, app.communicate(timeout=5)
        time.sleep(0.2)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ctrl_c", ["app", "process-group"])
def test_stopping_a_live_run_brings_every_count_to_the_summary(ctrl_c, tmp_path):
    """SIGINT to the app (it asks its sources to stop) or to the whole process group (every stage
    gets one, as with Ctrl-C in a terminal) while a network stream outruns YOLO: the source's end
    of stream and its drop counts reach the summary, which balances, and no stage prints a
    traceback. Before, the marker and the drops never arrived and the summary still said balanced."""
    out, summary_path = tmp_path / "live.jsonl", tmp_path / "summary.json"
    # About a minute of stream (it outlives the test), in frames large enough that few are in flight.
    with TcpStreamServer([6000], pace=100, size=(640, 360)) as server, \
            running_app("--source", server.url, "--out", str(out), "--summary", str(summary_path),
                        "--log-level", "INFO") as app:
        wait_for_results(app, out, at_least=10)
        if ctrl_c == "app":
            app.send_signal(signal.SIGINT)
        else:
            os.killpg(app.pid, signal.SIGINT)
        _, stderr = app.communicate(timeout=90)
    assert app.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    total = json.loads(summary_path.read_text())["total"]
    assert total["produced_known"] and total["sources_ended"] and total["streams_without_end"] == 0, total
    assert total["balanced"], total
    assert total["produced"] == total["inferred"] + total["dropped"]
    assert total["dropped"] == total["dropped_at_source"] + total["lost"] + total["unanswered"]
    by_reason = total["dropped_at_source_by_reason"]
    assert by_reason.get("live-queue", 0) > 0 and sum(by_reason.values()) == total["dropped_at_source"], total
    assert total["inferred"] >= 10


def test_an_aggregator_stopped_before_the_end_of_stream_does_not_claim_a_balance(tmp_path):
    """SIGTERM to the aggregator alone mid-run: its summary says the end never arrived."""
    out, summary_path = tmp_path / "live.jsonl", tmp_path / "summary.json"
    with TcpStreamServer([6000], pace=100, size=(640, 360)) as server, \
            running_app("--source", server.url, "--out", str(out), "--summary", str(summary_path)) as app:
        wait_for_results(app, out, at_least=5)
        aggregator = subprocess.run(["pgrep", "-g", str(app.pid), "-f", "stages.aggregate:Aggregator"],
                                    capture_output=True, text=True).stdout.split()
        assert len(aggregator) == 1, aggregator
        os.kill(int(aggregator[0]), signal.SIGTERM)
        stdout, stderr = app.communicate(timeout=90)
    total = json.loads(summary_path.read_text())["total"]
    assert not total["balanced"] and not total["produced_known"] and total["streams_without_end"] == 1, total
    assert "accounting NOT balanced" in stdout
    assert "accounting incomplete: end of stream never arrived for 1 stream(s)" in stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheme", ["tcp", "rtsp"])
def test_an_unreachable_stream_is_reported_as_a_failed_source_not_a_balanced_run(scheme, tmp_path):
    url = f"{scheme}://127.0.0.1:{free_tcp_port()}/live"   # nothing listens there
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "apps" / "vehicle_count.py"), "--filter", "none", "--source", url,
                           "--out", str(out)], capture_output=True, text=True, timeout=100, env=ENV, cwd=ROOT)
    assert done.returncode != 0
    summary = json.loads(out.read_text().splitlines()[-1])["summary"]
    assert not summary["balanced"] and summary["failed_sources"] == 1, summary
    assert summary["failed"][0]["error"].startswith("SourceError: cannot open stream"), summary
    assert "accounting NOT balanced" in done.stdout and "source failed: 127.0.0.1:" in done.stdout, done.stdout
