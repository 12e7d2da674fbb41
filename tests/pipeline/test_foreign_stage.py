"""A stage written in C (docs/examples/brightness_stage.c) joins a Python graph over the wire protocol."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.stages import numbered_frame

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "brightness_stage.c"


@pytest.fixture(scope="module")
def brightness_stage(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None or not Path("/usr/include/zmq.h").exists():
        pytest.skip("needs gcc and libzmq's header (Debian: libzmq3-dev; `make setup` installs it as root)")
    binary = tmp_path_factory.mktemp("c") / "brightness_stage"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(binary), str(EXAMPLE), "-lzmq"], check=True)
    return binary


@pytest.mark.timeout(60)
def test_c_stage_adds_results_between_python_stages(tmp_path, brightness_stage):
    first, second = f"ipc://{tmp_path}/in.sock", f"ipc://{tmp_path}/out.sock"
    out = tmp_path / "out.jsonl"
    python = [sys.executable, "-m", "pipeline.cli", "--log-level", "WARNING", "stage"]
    sink = subprocess.Popen(python + ["stages.sinks:JsonlSink", "--in", second, "--param", f"path={out}"], cwd=ROOT)
    c_stage = subprocess.Popen([str(brightness_stage), first, second])
    try:
        source = subprocess.run(python + ["tests.helpers.stages:CountingSource", "--out", first,
                                          "--param", "count=40", "--param", "width=32", "--param", "height=24",
                                          "--end-wait", "2"],
                                cwd=ROOT, timeout=30)
        assert source.returncode == 0 and sink.wait(timeout=30) == 0
    finally:
        c_stage.send_signal(signal.SIGTERM)
        c_stage.wait(timeout=10)
        sink.kill() if sink.poll() is None else None
    records = [json.loads(line) for line in out.read_text().splitlines()]
    frames = [r for r in records if r["kind"] == "video"]
    assert [r["seq"] for r in frames] == list(range(40))
    for record in frames:
        expected = numbered_frame(record["seq"], 24, 32).mean()
        assert record["result"]["mean_brightness"] == pytest.approx(expected, abs=1e-3)
    assert records[-1]["kind"] == "eos" and records[-1]["seq"] == 40 and records[-1]["final"] is True
