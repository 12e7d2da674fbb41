"""Remote workers over CurveZMQ: an app run whose jobs and results endpoints are CURVE servers
serves a worker started with the matching keys, and a worker without them gets nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.security import create_keys
from tests.conftest import asset_or_skip, free_tcp_port

ROOT = Path(__file__).resolve().parents[2]
VIDEO = "traffic/intel_car_detection.mp4"
ENV = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "HF_HUB_OFFLINE": "1",
       "YOLO_CONFIG_DIR": str(ROOT / ".cache" / "ultralytics")}


def start_worker(name: str, jobs: str, results: str, metrics: Path, log: Path, *curve: str) -> subprocess.Popen:
    """A stand-in worker (no model to load) started by hand, as on another host."""
    with log.open("w") as log_file:
        return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--log-level", "INFO", "stage",
                                 "tests.helpers.workers:SeqDetector", "--name", name, "--in", ">" + jobs,
                                 "--out", ">" + results, "--sources", "0", "--metrics-json", str(metrics), *curve],
                                env=ENV, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)


@pytest.mark.timeout(240)
def test_remote_workers_over_curve_only_the_keyed_worker_joins(assets, tmp_path):
    video = asset_or_skip(assets, VIDEO)
    (app_public, app_secret), (worker_public, worker_secret) = (create_keys(tmp_path / "keys", n) for n in ("app", "w"))
    create_keys(tmp_path / "keys", "stranger")
    clients = tmp_path / "clients"
    clients.mkdir()
    (clients / "w.key").write_bytes(worker_public.read_bytes())
    jobs, results = f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"
    workers = {
        "keyed": ("--curve-secret", str(worker_secret), "--curve-server", str(app_public)),
        "plain": (),                                                      # no keys at all
        "unlisted": ("--curve-secret", str(tmp_path / "keys" / "stranger.key_secret"),   # not in clients
                     "--curve-server", str(app_public)),
    }
    processes = {name: start_worker(name, jobs, results, tmp_path / f"{name}.metrics.json",
                                    tmp_path / f"{name}.log", *curve) for name, curve in workers.items()}
    out = tmp_path / "out.jsonl"
    try:
        done = subprocess.run([sys.executable, str(ROOT / "apps" / "vehicle_count.py"), "--filter", "none",
                               "--source", str(video),
                               "--max-frames", "40", "--workers", "0", "--remote-workers", f"{jobs},{results}",
                               "--curve-secret", str(app_secret), "--curve-clients", str(clients),
                               "--out", str(out)], capture_output=True, text=True, timeout=180, env=ENV, cwd=ROOT)
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(20)
    assert done.returncode == 0, done.stderr[-3000:]
    # The app says how to start a worker elsewhere, keys included.
    assert "tests.helpers.workers" not in done.stderr and "stages.detect:YoloWorker" in done.stderr
    assert f"--curve-server {app_public.resolve()}" in done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    frames = [line for line in lines if "seq" in line]
    assert [f["seq"] for f in frames] == list(range(40))
    assert {f["worker"] for f in frames} == {"keyed"} and {f["decision"] for f in frames} == {"infer"}
    assert lines[-1]["summary"]["balanced"] and "rejected" not in lines[-1]["summary"]
    inputs = {name: json.loads((tmp_path / f"{name}.metrics.json").read_text())["inputs"] for name in workers}
    assert inputs["keyed"] == 40 and inputs["plain"] == 0 and inputs["unlisted"] == 0, inputs


def test_curve_options_are_refused_where_they_cannot_work(tmp_path):
    sys.path.insert(0, str(ROOT / "apps"))
    import argparse

    from common import add_run_options, consumer_graph
    parser = argparse.ArgumentParser()
    add_run_options(parser, "out.jsonl")
    public, secret = create_keys(tmp_path, "app")
    source = {"uri": "x.mp4", "media": "video"}
    for argv, message in [(["--curve-secret", str(secret)], "--remote-workers"),
                          (["--curve-clients", str(tmp_path)], "needs --curve-secret"),
                          (["--curve-secret", str(public), "--remote-workers", "tcp://0.0.0.0:1,tcp://0.0.0.0:2"],
                           "key_secret"),
                          (["--curve-secret", str(secret), "--transport", "tcp",
                            "--remote-workers", "tcp://0.0.0.0:1,tcp://0.0.0.0:2"], "ipc")]:
        with pytest.raises(SystemExit, match=message):
            consumer_graph("t", parser.parse_args(argv), source, "stages.detect:YoloWorker", {}, {})
    document = consumer_graph("t", parser.parse_args(["--curve-secret", str(secret), "--workers", "0",
                                                      "--remote-workers", "tcp://0.0.0.0:1,tcp://0.0.0.0:2"]),
                              source, "stages.detect:YoloWorker", {}, {})
    gates = {stage["name"]: stage for stage in document["stages"] if "curve" in stage}
    assert set(gates) == {"jobs-gate", "results-gate"}
    assert gates["jobs-gate"]["outputs"] == ["@tcp://0.0.0.0:1"] and gates["results-gate"]["inputs"] == ["@tcp://0.0.0.0:2"]
