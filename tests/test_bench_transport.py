"""Smoke test of `apps/bench_transport.py --quick`: it runs, and reports a rate for every hop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_quick_run_writes_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    run = subprocess.run([sys.executable, str(ROOT / "apps" / "bench_transport.py"), "--quick", "--json", str(out)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"ours inproc", "ours ipc", "ours tcp", "imagezmq ipc", "imagezmq tcp"} <= set(report["hop"])
    for name, row in report["hop"].items():
        assert row["median"] > 0 and row["min"] > 0, name
        assert len(report["hop_raw"][name]) == report["repeats"], name
    assert report["ratios"]["tcp ours/imagezmq"]["median"] > 0
    assert report["machine"]["cpus"] >= 1 and report["machine"]["libzmq"]
    assert out.with_suffix(".png").stat().st_size > 1000
    if "decode" in report:  # the shared clips are here: every decoder counted the same frames
        for clip, row in report["decode"].items():
            assert row["frames_match"], (clip, row["frames"])
    else:
        assert "decode_skipped" in report


@pytest.mark.timeout(120)
def test_transports_option_keeps_only_those_hops(tmp_path: Path) -> None:
    out = tmp_path / "ipc.json"
    script = str(ROOT / "apps" / "bench_transport.py")
    run = subprocess.run([sys.executable, script, "--quick", "--transports", "ipc", "--json", str(out)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["hop"]) == {"ours ipc", "ours ipc sndbuf=OS", "imagezmq ipc"}
    assert set(report["ratios"]) == {"ipc ours/imagezmq", "ipc ours sndbuf 4M/OS"}
    bad = subprocess.run([sys.executable, script, "--transports", "udp"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--transports takes inproc, ipc and tcp" in bad.stderr
