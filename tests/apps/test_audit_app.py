"""The live accuracy audit as a user runs it: the apps' --audit, --audit-seed and --hold-target
flags, refused before anything starts when they cannot work, and one whole run of
vehicle_count.py whose audited frames are inferred, compared and summed up."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from tests.apps.test_apps import ROOT, VIDEO, read_jsonl, run_app
from tests.conftest import asset_or_skip

sys.path.insert(0, str(ROOT / "apps"))
from common import add_run_options, consumer_graph   # noqa: E402


def filter_params(*argv: str) -> dict:
    parser = argparse.ArgumentParser()
    add_run_options(parser, default_out="out.jsonl")
    document = consumer_graph("app", parser.parse_args(list(argv)), {"uri": "x"}, "stages.detect:YoloWorker", {}, {})
    return next(stage for stage in document["stages"] if stage["name"] == "filter")["params"]


def test_audit_zero_leaves_the_graph_as_it_was():
    assert filter_params("--filter", "stride:2") == filter_params("--filter", "stride:2", "--audit", "0") \
        == {"policy": "stride:2", "keep_frames": False}
    assert filter_params("--filter", "stride:2", "--audit", "0.02", "--audit-seed", "0") == \
        {"policy": "stride:2", "keep_frames": False, "audit": 0.02, "audit_seed": 0}


@pytest.mark.parametrize("flags, message", [
    (["--audit", "1.5"], "audit share (--audit) must be a number in [0, 1], got 1.5"),
    (["--audit", "nan"], "audit share (--audit) must be a number in [0, 1]"),
    (["--audit-seed", "3"], "--audit-seed seeds the audit; give --audit SHARE too"),
    (["--hold-target", "0.95"], "needs an audit share above 0 (--audit)"),
    (["--audit", "0.1", "--hold-target", "-1"], "hold target (--hold-target) must be a number in"),
    (["--audit", "0.1", "--hold-target", "0.95"], "lowers thresholds, but the filter policy has none"),
])
def test_bad_audit_flags_are_refused_before_anything_starts(assets, tmp_path, flags, message):
    video = asset_or_skip(assets, VIDEO)
    done = run_app("vehicle_count.py", "--source", str(video), "--filter", "stride:2", *flags,
                   "--out", str(tmp_path / "out.jsonl"), timeout=60)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert "per-stage statistics" not in done.stderr and not (tmp_path / "out.jsonl").exists()


def test_an_audited_run_infers_compares_and_reports_the_estimate(assets, tmp_path):
    """stride:2 reuses every other frame; half of those are audited (seeded): they are inferred,
    carry the filter's reuse and the running estimate, and the summary adds them up."""
    video = asset_or_skip(assets, VIDEO)
    out, summary_path = tmp_path / "out.jsonl", tmp_path / "summary.json"
    done = run_app("vehicle_count.py", "--source", str(video), "--max-frames", "40", "--filter", "stride:2",
                   "--audit", "0.5", "--audit-seed", "4", "--out", str(out), "--summary", str(summary_path))
    assert done.returncode == 0, done.stderr[-3000:]
    frames, total = read_jsonl(out)
    audited = [f for f in frames if "audit" in f]
    assert 5 <= len(audited) <= 15                                   # 20 reuses, each audited with p = 0.5
    assert all(f["decision"] == "infer" and f["audit"]["filter"] == "reuse" and "infer_ms" in f for f in audited)
    assert all(f["audit"]["ref_seq"] == f["seq"] - 1 for f in audited)   # stride:2 reuses the frame before
    last = max(audited, key=lambda f: f["seq"])["audit"]
    assert last["audited"] == len(audited) and last["agreed"] == sum(f["audit"]["agrees"] for f in audited)
    assert total["balanced"] and total["inferred"] == 20 + len(audited) and total["reused"] == 20 - len(audited)
    assert total["audit"]["audited"] == len(audited) and total["audit"]["low"] <= total["audit"]["high"] <= 1
    assert json.loads(summary_path.read_text())["total"]["audit"] == total["audit"]
    assert f"audit: {len(audited)} of the filter's answers also sent to the model" in done.stdout
