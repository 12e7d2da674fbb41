"""The worked example in docs/stages.md runs as written."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pipeline.stage import build_stage
from stages.sinks import StatsPrinter
from tests.helpers.stages import CountingSource
from tests.pipeline.test_stage import chain, join_all

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


@pytest.fixture
def my_stages(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    spec = importlib.util.spec_from_file_location("my_stages", EXAMPLES / "my_stages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_brightness_gate_holds_back_dark_frames(make_url, my_stages, capsys):
    # CountingSource fills frame n with n % 251 (its first 8 bytes hold n), so frames 0..59
    # average below 59.5 and frames 60..99 above it.
    gate = build_stage("my_stages:BrightnessGate", {"threshold": "59.5"})
    sink = StatsPrinter()
    join_all(chain(make_url, "inproc", [("source", CountingSource(count=100)), ("gate", gate), ("sink", sink)]))
    assert gate.dark == 60 and sink.summary()["totals"]["received"] == 40
    assert "gate: 60 dark frames held back" in capsys.readouterr().out


def test_brightness_gate_refuses_a_threshold_out_of_range(my_stages):
    with pytest.raises(ValueError, match="threshold must be in 0..255"):
        my_stages.BrightnessGate(threshold=300)
