"""The live accuracy audit: the filter sends a random share of what it answered to the model as
well, the aggregator compares the two answers and estimates the live agreement with an interval,
and a hold lowers the filter's thresholds when that estimate falls below a target. Real stages,
called in process; hand-made sequences whose estimates are worked out here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.message import Message, eos
from pipeline.metrics import wilson_interval
from models.base import REUSE_HORIZON, Answers, Decision, FramePolicy, ResultError
from stages.filter import Filter
from stages.results import Detections, Transcript
from stages.savings import audit_estimate
from stages.tasks import SpeechTask, VehicleTask
from tests.stages.test_aggregate import make_aggregator, run_messages as run


def vehicles(n: int) -> dict:
    return Detections([[10.0 * i, 10.0, 10.0 * i + 8, 18.0] for i in range(n)], [2] * n, [0.9] * n,
                      infer_ms=30.0).to_wire()


def frame(seq: int, decision: Decision, count: int | None = None) -> Message:
    """An input as the aggregator receives it: from a worker (with `count` vehicles) or the filter."""
    return Message("result" if count is not None else "video", "cam", seq, pts=seq / 10,
                   decision=decision.to_wire(), result=vehicles(count) if count is not None else None)


def audited(seq: int, filtered: Decision, count: int) -> Message:
    return frame(seq, Decision("infer", policy="p", audit=filtered), count)


# -- the estimate ---------------------------------------------------------------------------------
def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(18, 20)
    assert (round(low, 4), round(high, 4)) == (0.699, 0.9721)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and round(low, 4) == 0.7225


@pytest.mark.parametrize("audited, agreed, filtered, answered, expected", [
    # 60 of 100 answered by the filter; 18 of 20 audits agreed: 1 - 0.6 x 0.1, interval from Wilson.
    (20, 18, 60, 100, (0.94, 1 - 0.6 * (1 - 0.699), 1 - 0.6 * (1 - 0.9721))),
    # nothing filtered: every answer is the model's
    (0, 0, 0, 50, (1.0, 1.0, 1.0)),
    # filtered but not audited yet: unknown, the interval is all the filter's share allows
    (0, 0, 25, 100, (None, 0.75, 1.0)),
])
def test_estimate_propagates_the_audit_rate_over_the_share_the_filter_answered(audited, agreed, filtered,
                                                                               answered, expected):
    estimate = audit_estimate(audited, agreed, filtered, answered)
    agreement, low, high = expected
    assert (estimate["audited"], estimate["agreed"]) == (audited, agreed)
    assert estimate["agreement"] == (None if agreement is None else pytest.approx(agreement, abs=1e-6))
    assert estimate["low"] == pytest.approx(low, abs=1e-4) and estimate["high"] == pytest.approx(high, abs=1e-4)


# -- the decision on the wire ---------------------------------------------------------------------
def test_an_audit_rides_on_an_infer_decision_and_round_trips():
    decision = Decision("infer", policy="stride:2", audit=Decision("reuse", ref_seq=4, policy="stride:2"))
    wire = decision.to_wire()
    assert wire["audit"] == {"action": "reuse", "ref_seq": 4, "policy": "stride:2"}
    assert Decision.from_wire(json.loads(json.dumps(wire))) == decision
    assert "audit" not in Decision("infer").to_wire()


@pytest.mark.parametrize("build", [
    lambda: Decision("skip", audit=Decision("skip")),                       # only an infer is audited
    lambda: Decision("infer", audit=Decision("infer")),                     # of an answer, not an infer
    lambda: Decision("infer", audit=Decision("infer", audit=Decision("skip"))),
    lambda: Decision("infer", audit={"action": "skip"}),                    # a Decision, not its wire form
    lambda: Decision.from_wire({"action": "infer", "audit": "skip"}),
    lambda: Decision.from_wire({"action": "infer", "audit": {"action": "reuse"}}),   # reuse without ref_seq
    lambda: Decision.from_wire({"action": "infer", "audit": {"action": "skip", "audit": {"action": "skip"}}}),
])
def test_malformed_audits_are_refused(build):
    with pytest.raises(ResultError):
        build()


def test_agreement_per_task():
    cars = lambda n: Detections.from_wire(vehicles(n))   # noqa: E731
    assert VehicleTask().agrees(cars(2), cars(2)) and not VehicleTask().agrees(cars(0), cars(1))
    speech = SpeechTask(words=2)
    assert speech.agrees(Transcript("one two three"), Transcript("four five six seven"))   # both above N
    assert speech.agrees(Transcript(""), Transcript("one two"))                            # both at most N
    assert not speech.agrees(Transcript("one"), Transcript("one two three"))


# -- the aggregator ---------------------------------------------------------------------------------
def test_audited_inputs_take_the_models_answer_are_compared_and_carry_the_running_estimate(tmp_path):
    aggregator = make_aggregator(tmp_path)
    messages = [
        frame(0, Decision("infer"), count=2),
        audited(1, Decision("reuse", ref_seq=0, policy="p"), count=2),   # reuse would say 2: agrees
        audited(2, Decision("skip", policy="p"), count=1),               # skip would say 0: disagrees
        frame(3, Decision("reuse", ref_seq=2, policy="p")),              # the audited answer is reused
        frame(4, Decision("skip", policy="p")),
        audited(5, Decision("exit", exit=0, result={"count": 0}, policy="p"), count=0),   # agrees
        frame(6, Decision("infer"), count=3),
        eos("cam", 7, final=True),
    ]
    outputs = run(aggregator, messages)
    aggregator.teardown()
    results = {m.seq: m.result for m in outputs if not m.is_eos}
    assert [results[s]["decision"] for s in range(7)] == ["infer"] * 3 + ["reuse", "skip", "infer", "infer"]
    assert [results[s]["count"] for s in range(7)] == [2, 2, 1, 1, 0, 0, 3]   # the model's answers
    assert [s for s in range(7) if "audit" in results[s]] == [1, 2, 5]
    # Running estimates, by hand: after seq 1, 1 of 1 agreed and nothing was filtered yet; after
    # seq 2, 1 of 2 and still nothing filtered; after seq 5, 2 of 3 with 2 of 6 answers filtered.
    expected = {1: (True, 1, 1, 0, 2), 2: (False, 2, 1, 0, 3), 5: (True, 3, 2, 2, 6)}
    for seq, (agrees, n, m, filtered, answered) in expected.items():
        audit = results[seq]["audit"]
        assert audit["agrees"] is agrees and audit["filter"] == messages[seq].decision["audit"]["action"]
        assert {k: v for k, v in audit.items() if k not in ("agrees", "filter", "ref_seq")} == \
            audit_estimate(n, m, filtered, answered)
    assert results[1]["audit"]["ref_seq"] == 0
    assert results[5]["audit"]["agreement"] == pytest.approx(1 - 2 / 6 * (1 - 2 / 3), abs=1e-5)
    summary = json.loads((tmp_path / "summary.json").read_text())
    total = summary["total"]
    # Audited inputs count as inferred: the filter answered 2 of 7.
    assert (total["inferred"], total["reused"], total["skipped"], total["filtering_rate"]) == (5, 1, 1, 2 / 7)
    assert total["audit"] == audit_estimate(3, 2, 2, 7)
    assert total["audit"]["agreement"] == pytest.approx(1 - 2 / 7 * (1 - 2 / 3), abs=1e-5)
    assert summary["streams"]["cam"]["audit"] == total["audit"]
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines[-1]["summary"]["audit"] == total["audit"]
    assert [line for line in lines if line.get("end")][0]["summary"]["audit"] == total["audit"]


def test_speech_audits_compare_the_verdict_of_the_rule(tmp_path):
    aggregator = make_aggregator(tmp_path, task="speech", words=2)

    def window(seq: int, filtered: Decision, text: str) -> Message:
        return Message("result", "mic", seq, pts=float(seq), result=Transcript(text, infer_ms=5.0).to_wire(),
                       decision=Decision("infer", audit=filtered).to_wire())
    outputs = run(aggregator, [
        Message("result", "mic", 0, result=Transcript("ask not what").to_wire(), decision=Decision("infer").to_wire()),
        window(1, Decision("skip"), "one"),                          # at most 2 words, like the empty one
        window(2, Decision("skip"), "your country can do"),          # more than 2: the skip was wrong
        window(3, Decision("reuse", ref_seq=0), "for you ask"),      # both more than 2
        eos("mic", 4, final=True)])
    audits = [m.result["audit"]["agrees"] for m in outputs if not m.is_eos and "audit" in m.result]
    assert audits == [True, False, True]
    assert [m.result["words"] for m in outputs if not m.is_eos] == [3, 1, 4, 3]   # the recognizer's answers


def test_the_printed_summary_states_the_estimate_and_its_interval(tmp_path, capsys):
    aggregator = make_aggregator(tmp_path, print_summary=True)
    run(aggregator, [frame(0, Decision("infer"), count=1), audited(1, Decision("skip"), count=0),
                     frame(2, Decision("skip")), eos("cam", 3, final=True)])
    aggregator.teardown()
    estimate = audit_estimate(1, 1, 1, 3)
    assert (f"audit: 1 of the filter's answers also sent to the model, 1 agreed (100.0 %); estimated agreement "
            f"of all answers 100.0 % (95 % interval {100 * estimate['low']:.1f}-100.0 %)") in capsys.readouterr().out


def test_without_audits_nothing_changes_in_the_summary(tmp_path):
    aggregator = make_aggregator(tmp_path)
    run(aggregator, [frame(0, Decision("infer"), count=1), frame(1, Decision("skip")), eos("cam", 2, final=True)])
    aggregator.teardown()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "audit" not in summary["total"] and "filter_thresholds" not in summary["total"]


def test_a_restarted_aggregator_keeps_counting_the_audit(tmp_path):
    first = make_aggregator(tmp_path, run_id="r1")
    run(first, [frame(0, Decision("infer"), count=1), audited(1, Decision("skip"), count=0)])   # agrees
    first._file.close()     # killed: no teardown
    second = make_aggregator(tmp_path, run_id="r1")
    # Boxes are not restored (docs/results.md, "Restarts"): the reuse resolves as empty, and disagrees.
    run(second, [audited(2, Decision("reuse", ref_seq=0), count=1), eos("cam", 3, final=True)])
    second.teardown()
    total = json.loads((tmp_path / "summary.json").read_text())["total"]
    assert (total["audit"]["audited"], total["audit"]["agreed"]) == (2, 1)


# -- answers kept for reuses --------------------------------------------------------------------
def test_a_reuse_pointing_back_the_whole_horizon_resolves(tmp_path):
    aggregator = make_aggregator(tmp_path, out="")
    messages = [frame(0, Decision("infer"), count=3)]
    messages += [frame(seq, Decision("skip")) for seq in range(1, REUSE_HORIZON)]
    messages += [frame(REUSE_HORIZON, Decision("reuse", ref_seq=0))]
    outputs = run(aggregator, messages)
    last = outputs[-1].result
    assert last["seq"] == REUSE_HORIZON and last["count"] == 3 and "unresolved" not in last


def test_answers_stay_bounded_whatever_the_stream_length():
    answers = Answers()
    for seq in range(10 * REUSE_HORIZON):
        answers.put(seq, seq)
        assert len(answers) <= 2 * (REUSE_HORIZON + 1)
        assert answers.get(seq - REUSE_HORIZON) == (seq - REUSE_HORIZON if seq >= REUSE_HORIZON else None)
    late = Answers()
    late.put(5 * REUSE_HORIZON, "new")
    late.put(4 * REUSE_HORIZON - 1, "late")     # older than any reuse of a later input may point: not kept
    late.put(4 * REUSE_HORIZON, "late")         # within the horizon: kept
    assert late.get(4 * REUSE_HORIZON - 1) is None and late.get(4 * REUSE_HORIZON) == "late" and len(late) == 2


# -- the filter -----------------------------------------------------------------------------------
def video(seq: int, stream: str = "cam") -> Message:
    return Message("video", stream, seq, arrays=(np.zeros((4, 4, 3), np.uint8),))


def test_audited_inputs_go_to_the_model_with_the_policys_decision(monkeypatch):
    monkeypatch.delenv("INFISTREAM_JOB_KEY", raising=False)
    stage = Filter("stride:2", audit=1.0)
    first, second = stage.process(video(0)), stage.process(video(1))
    assert first.decision == {"action": "infer", "policy": "stride:2", **({"filter_ms": first.decision["filter_ms"]}
                                                                          if "filter_ms" in first.decision else {})}
    decision = Decision.from_wire(second.decision)
    assert decision.action == "infer" and decision.audit == Decision("reuse", ref_seq=0, policy="stride:2")
    assert stage.route(second) == 0 and second.arrays     # to the workers, with its pixels
    assert stage.audited == 1


def test_the_audit_draws_its_share_at_random_repeatably():
    def picks(seed: int) -> list[int]:
        stage = Filter("stride:4", audit=0.2, audit_seed=seed)
        return [seq for seq in range(2000) if "audit" in stage.process(video(seq)).decision]
    first = picks(7)
    assert first == picks(7) and first != picks(8)
    answered = 1500                             # stride:4 answers 3 inputs in 4
    assert abs(len(first) - 0.2 * answered) < 4 * math.sqrt(answered * 0.2 * 0.8)


def test_audit_zero_changes_nothing():
    plain, zero = Filter("stride:3"), Filter("stride:3", audit=0.0, audit_seed=1)
    for seq in range(30):
        a, b = plain.process(video(seq)), zero.process(video(seq))
        assert {k: v for k, v in a.decision.items() if k != "filter_ms"} == \
            {k: v for k, v in b.decision.items() if k != "filter_ms"}
    assert zero.hold is None and zero.forwards_end_of_stream == plain.forwards_end_of_stream


@pytest.mark.parametrize("params, message", [
    ({"audit": -0.1}, "audit share"), ({"audit": 1.5}, "audit share"), ({"audit": float("nan")}, "audit share"),
    ({"audit": "0.1"}, "audit share"), ({"audit": 0.1, "audit_seed": 1.5}, "audit seed"),
    ({"hold_target": 0.9}, "needs an audit share"),
    ({"audit": 0.1, "hold_target": 1.5}, "hold target"),
    ({"audit": 0.1, "hold_target": 0.9}, "has none"),               # stride has no threshold to lower
])
def test_bad_audit_settings_are_refused_when_built(params, message):
    with pytest.raises(ConfigError, match=message):
        Filter("stride:2", **params)


class AlwaysSkip(FramePolicy):
    """A frame policy stub: skips while its threshold is above 0.1 (larger filters more)."""

    name = "stub"

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        return np.zeros(1, np.float32)

    def decide_prepared(self, stream: str, seq: int, features: np.ndarray) -> Decision | None:
        return Decision("skip") if self.threshold > 0.1 else None


def result(seq: int, agrees: bool, stream: str = "cam") -> Message:
    """The aggregator's result for an audited input, as the filter's side input receives it."""
    return Message("result", stream, seq, result={"stream": stream, "seq": seq, "decision": "infer", "count": 1,
                                                  "audit": {"filter": "skip", "agrees": agrees}})


def audits(stage: Filter, seqs: range, agrees=lambda seq: False) -> list[int]:
    """Run `seqs` through the filter and feed back an outcome for each input it audited."""
    picked = [seq for seq in seqs if "audit" in stage.process(video(seq)).decision]
    for seq in picked:
        stage.side_input(result(seq, agrees(seq)))
    return picked


def test_hold_lowers_the_thresholds_when_the_estimate_falls_below_the_target(monkeypatch):
    monkeypatch.delenv("INFISTREAM_JOB_KEY", raising=False)
    policy = AlwaysSkip(0.5)
    stage = Filter(policy, audit=0.5, audit_seed=1, hold_target=0.95, hold_every=10)
    assert stage.forwards_end_of_stream is False          # its markers carry the thresholds
    picked = [seq for seq in range(40) if "audit" in stage.process(video(seq)).decision]
    assert len(picked) > 10
    for seq in picked[:9]:
        stage.side_input(result(seq, agrees=False))
    assert policy.threshold == 0.5                        # fewer audits than hold_every: no judgement yet
    stage.side_input(result(picked[9], agrees=False))
    # One step: 0.5 x 0.8, down to a point of the default grid 0, 0.01, ..., 1.
    assert policy.threshold == pytest.approx(0.4) and stage.hold.changes == 1
    # Audits of inputs decided before the change judged the old threshold: not counted again.
    for seq in picked[10:]:
        stage.side_input(result(seq, agrees=False))
    assert stage.hold.audited == 0 and policy.threshold == pytest.approx(0.4)
    # Under the new threshold every audit agrees: the estimate holds the target, nothing moves.
    assert len(audits(stage, range(40, 200), agrees=lambda seq: True)) > 10
    assert policy.threshold == pytest.approx(0.4) and stage.hold.changes == 1
    marker = stage.end_of_stream(eos("cam", 200, final=True))
    assert marker.meta["filter"] == {"thresholds": {"stub": pytest.approx(0.4)}, "threshold_changes": 1}


def test_hold_steps_each_policy_of_a_cascade_and_the_summary_reports_the_thresholds(tmp_path, monkeypatch):
    monkeypatch.delenv("INFISTREAM_JOB_KEY", raising=False)
    from models.cascade import Cascade

    class Second(AlwaysSkip):
        name = "second"

        def threshold_grid(self) -> np.ndarray:
            return np.array([0.2, 0.4, 0.6, 0.8])

    first, second = AlwaysSkip(0.5), Second(0.8)
    stage = Filter(Cascade([first, second]), audit=0.1, audit_seed=2, hold_target=0.99, hold_every=5)
    assert len(audits(stage, range(60), agrees=lambda seq: seq % 2 == 0)) >= 5     # about half agree
    assert first.threshold == pytest.approx(0.4) and second.threshold == 0.6   # 0.8 x 0.8 = 0.64, down to 0.6
    aggregator = make_aggregator(tmp_path)
    run(aggregator, [frame(0, Decision("infer"), count=1), stage.end_of_stream(eos("cam", 1, final=True))])
    aggregator.teardown()
    summary = json.loads((tmp_path / "summary.json").read_text())
    expected = {"stub": pytest.approx(0.4), "second": 0.6}
    assert summary["total"]["filter_thresholds"] == expected and summary["total"]["threshold_changes"] == 1
    assert summary["streams"]["cam"]["filter_thresholds"] == expected


@pytest.mark.parametrize("threshold, grid, lowered", [
    (0.05, np.geomspace(1e-4, 1, 50), 0.0339),   # a log grid: x 0.8 = 0.04, down to the grid point below
    (0.22, np.array([0.2, 0.5]), 0.2),           # no point as low as x 0.8: the bottom
    (0.2, np.array([0.2, 0.5]), 0.2),            # at the bottom already: stays
    (0.0, np.array([-1.0, -0.5, 0.0]), -0.5),    # at or below 0: one point down
    # A decreasing grid (the early exit's maxprob: smaller exits more) is stepped up instead:
    (0.5, np.linspace(1.0, 0.5, 51), 0.6),       # 0.5 below the top, x 0.8 = 0.4 below: 0.6
    (0.95, np.linspace(1.0, 0.5, 51), 0.96),     # 0.05 below, x 0.8 = 0.04 below: 0.96
    (0.99, np.array([1.0, 0.9, 0.5]), 1.0),      # no point between: the next one up
    (1.0, np.linspace(1.0, 0.5, 51), 1.0),       # at the top (never exit early) already: stays
])
def test_hold_steps_down_to_a_point_of_the_policys_grid(threshold, grid, lowered):
    from stages.filter import ThresholdHold

    class Gridded(AlwaysSkip):
        def threshold_grid(self) -> np.ndarray:
            return grid
    policy = Gridded(threshold)
    assert ThresholdHold([policy], target=0.9).lowered(policy) == pytest.approx(lowered, abs=1e-4)


def test_a_high_estimate_leaves_the_thresholds_alone():
    policy = AlwaysSkip(0.5)
    stage = Filter(policy, audit=0.1, audit_seed=3, hold_target=0.95, hold_every=10)
    picked = audits(stage, range(2000), agrees=lambda seq: seq % 50 != 0)   # about 98 % agree
    assert len(picked) > 100 and policy.threshold == 0.5 and stage.hold.changes == 0
