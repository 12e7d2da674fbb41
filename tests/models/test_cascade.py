"""The cascade and the policy registry: first decision wins, costs per policy, lazy classes."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from models.base import Decision, Policy
from models.cascade import Cascade
from models.registry import POLICIES, PolicyEntry, parse_policy, policy_help
from pipeline.errors import ConfigError
from pipeline.message import Message, eos
from stages.filter import Filter


def video(seq: int, stream: str = "cam") -> Message:
    return Message("video", stream, seq, arrays=(np.zeros((4, 4, 3), np.uint8),))


class EvenSkipper(Policy):
    """Skips even seqs, no opinion on odd ones; records its lifecycle calls."""

    name = "even"

    def __init__(self):
        self.calls: list[str] = []

    def open(self):
        self.calls.append("open")

    def close(self):
        self.calls.append("close")

    def decide(self, message):
        return Decision("skip") if message.seq % 2 == 0 else None

    def feedback(self, stream, seq, result):
        self.calls.append(f"feedback:{stream}:{seq}")

    def end_stream(self, stream):
        self.calls.append(f"end:{stream}")


class Silent(Policy):
    name = "silent"

    def decide(self, message):
        return None


def test_the_first_policy_that_decides_answers_and_each_decision_names_it():
    cascade = Cascade([EvenSkipper(), parse_policy("stride:2")])
    decisions = [cascade.decide(video(seq)) for seq in range(6)]
    assert [(d.action, d.policy) for d in decisions] == [
        ("skip", "even"), ("infer", "stride:2"), ("skip", "even"), ("reuse", "stride:2"),
        ("skip", "even"), ("infer", "stride:2")]
    costs = cascade.cost_summary()
    assert list(costs) == ["even", "stride:2"]
    assert (costs["even"]["asked"], costs["even"]["answered"]) == (6, 3)
    assert (costs["stride:2"]["asked"], costs["stride:2"]["answered"]) == (3, 3)
    assert cascade.name == "even+stride:2"


def test_when_no_policy_decides_the_model_runs():
    cascade = Cascade([Silent()])
    decision = cascade.decide(video(0))
    assert decision.action == "infer" and decision.policy == "silent"
    # The filter stage does the same for a single policy without an opinion.
    stage = Filter("none")
    stage.policy = Silent()
    assert stage.process(video(1)).decision["action"] == "infer"


def test_lifecycle_feedback_and_ends_reach_every_policy_in_order():
    first, second = EvenSkipper(), EvenSkipper()
    second.name = "even-2"
    with Cascade([first, second]) as cascade:
        cascade.feedback("cam", 4, {"count": 2})
        cascade.end_stream("cam")
    assert first.calls == second.calls == ["open", "feedback:cam:4", "end:cam", "close"]


def test_a_policy_that_fails_to_open_closes_the_ones_opened_before():
    class Broken(Silent):
        name = "broken"

        def open(self):
            raise OSError("weights missing")

    first = EvenSkipper()
    with pytest.raises(OSError, match="weights missing"):
        Cascade([first, Broken()]).open()
    assert first.calls == ["open", "close"]


def test_the_filter_stage_opens_its_policy_in_setup_and_closes_it_in_teardown():
    stage = Filter("none")
    tracked = EvenSkipper()
    stage.policy = tracked
    stage.setup()
    assert stage.process(video(0)).decision["action"] == "skip"
    stage.teardown()
    assert tracked.calls == ["open", "close"]


def test_a_registered_class_is_imported_only_when_named(monkeypatch):
    module = "tests.models.lazy_policy_probe"
    monkeypatch.setitem(POLICIES, "probe", PolicyEntry(f"{module}:Probe", "probe", "a test policy"))
    sys.modules.pop(module, None)
    parse_policy("stride:2")
    assert module not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        parse_policy("probe")      # named: now it is imported (and here it does not exist)


def test_help_and_errors_list_every_registered_policy():
    text = policy_help()
    for entry in POLICIES.values():
        assert entry.usage in text
    with pytest.raises(ConfigError) as refused:
        parse_policy("magic")   # not a policy (skip is one now)
    assert all(entry.usage in str(refused.value) for entry in POLICIES.values())


def test_the_filter_hands_the_aggregators_results_to_its_policy_as_feedback():
    stage = Filter("none")
    tracked = EvenSkipper()
    stage.policy = tracked
    stage.side_input(Message("result", "cam", 7, result={"decision": "infer", "count": 3}))
    stage.side_input(eos("cam", 8))        # not a result: nothing to learn
    assert tracked.calls == ["feedback:cam:7"]
