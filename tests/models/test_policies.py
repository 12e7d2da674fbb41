"""Baseline filter policies and the filter stage: decisions per input, pixels only where needed."""

from __future__ import annotations

import numpy as np
import pytest

from models.baselines.stride import InferAll, Stride
from models.registry import parse_policy
from pipeline.errors import ConfigError
from pipeline.message import Message, eos
from stages.filter import Filter


def video(seq: int, stream: str = "cam") -> Message:
    return Message("video", stream, seq, arrays=(np.zeros((4, 4, 3), np.uint8),))


@pytest.mark.parametrize("spec, seqs, expected", [
    ("none", [0, 1, 2], ["infer", "infer", "infer"]),
    ("stride:1", [0, 1, 2], ["infer", "infer", "infer"]),
    ("stride:3", range(7), ["infer", "reuse:0", "reuse:0", "infer", "reuse:3", "reuse:3", "infer"]),
    # A live source dropped seqs 2-4: the stride counts inputs received, not sequence numbers.
    ("stride:2", [0, 1, 5, 6, 7], ["infer", "reuse:0", "infer", "reuse:5", "infer"]),
])
def test_policy_decisions(spec, seqs, expected):
    policy = parse_policy(spec)
    got = []
    for seq in seqs:
        decision = policy.decide(video(seq))
        got.append(decision.action if decision.ref_seq is None else f"{decision.action}:{decision.ref_seq}")
    assert got == expected


def test_stride_keeps_streams_apart_and_forgets_ended_ones():
    policy = Stride(2)
    assert [policy.decide(video(s, "a")).action for s in range(2)] == ["infer", "reuse"]
    assert policy.decide(video(0, "b")).action == "infer"
    policy.end_stream("a")
    assert policy.decide(video(2, "a")).action == "infer"


@pytest.mark.parametrize("spec, message", [
    ("stride", "needs N"), ("stride:x", "whole number"), ("stride:0", "at least 1"), ("magic", "unknown filter policy 'magic'; expected one of: none, stride:N"),
    ("none:3", "takes no options"), ("stride:2+", "empty part"), ("stride:2+stride:2", "twice"), ("", "needs a policy"),
])
def test_bad_policy_specs_are_refused_clearly(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_policy(spec)


def test_filter_stage_drops_pixels_of_inputs_that_skip_the_model():
    stage = Filter("stride:2")
    first, second = stage.process(video(0)), stage.process(video(1))
    assert first.decision["action"] == "infer" and first.arrays
    assert second.decision == {"action": "reuse", "ref_seq": 0, "policy": "stride:2",
                               "filter_ms": second.decision["filter_ms"]}
    assert second.arrays == ()
    assert Filter("stride:2", keep_frames=True).process(video(1)).arrays   # a display needs them all
    stage.end_of_stream(eos("cam", 2))
    assert stage.process(video(2)).decision["action"] == "infer"


def test_no_filter_infers_everything():
    assert isinstance(parse_policy("none"), InferAll)
    decision = Filter().process(video(5)).decision
    assert decision["action"] == "infer" and set(decision) <= {"action", "filter_ms"}
