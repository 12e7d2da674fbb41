"""The filter: decisions, routing, and the tags that let the aggregator trust what it receives."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.message import Message, eos
from stages import ledger
from stages.filter import Filter

KEY = "cd" * 16


def video(seq: int) -> Message:
    return Message("video", "cam", seq, arrays=(np.zeros((4, 4, 3), np.uint8),))


def test_with_a_job_key_every_message_leaves_tagged_for_its_route():
    stage = Filter("stride:2", job_key=KEY)
    key = bytes.fromhex(KEY)
    inferred, reused = stage.process(video(0)), stage.process(video(1))
    assert stage.route(inferred) == 0 and stage.route(reused) == 1
    assert ledger.tag_matches(key, "job", "cam", 0, inferred.meta["tag"])
    assert ledger.tag_matches(key, "direct", "cam", 1, reused.meta["tag"])
    assert not ledger.tag_matches(key, "job", "cam", 1, reused.meta["tag"])   # a direct tag is no job tag
    # The marker is sent by the filter itself, tagged (the runtime would forward it untagged).
    assert stage.forwards_end_of_stream is False
    marker = stage.end_of_stream(eos("cam", 2, final=True, dropped=0))
    assert marker.is_eos and marker.final and ledger.tag_matches(key, "eos", "cam", 2, marker.meta["tag"])
    assert stage.route(marker) == 1


def test_without_a_key_nothing_is_tagged_and_the_runtime_forwards_markers(monkeypatch):
    monkeypatch.delenv(ledger.JOB_KEY_ENV, raising=False)
    stage = Filter("none")
    assert "tag" not in stage.process(video(0)).meta
    assert stage.forwards_end_of_stream is True and stage.end_of_stream(eos("cam", 1)) is None


def test_a_short_or_malformed_key_is_a_configuration_error():
    import pytest

    from pipeline.errors import ConfigError
    for bad in ("abc", "zz" * 16, "ab" * 8):
        with pytest.raises(ConfigError, match="job key"):
            Filter(job_key=bad)


def test_seq_set_keeps_ranges_not_members():
    seqs = ledger.SeqSet()
    for seq in list(range(0, 1000)) + list(range(1001, 5000)) + [7000]:
        assert seqs.add(seq)
    assert not seqs.add(500) and 1000 not in seqs and 4999 in seqs and 5000 not in seqs
    assert seqs.ranges == 3 and len(seqs) == 4999 + 1 and seqs.end == 7001
    assert seqs.add(1000) and seqs.ranges == 2


def test_seq_set_stays_bounded_with_a_gap_after_every_input():
    """A live stream that drops every other frame leaves a gap after each written input: the
    set closes its oldest gaps beyond `max_ranges`, so memory stays bounded for any run length."""
    seqs = ledger.SeqSet(max_ranges=100)
    for seq in range(0, 100_000, 2):
        assert seqs.add(seq)
    assert seqs.ranges == 100 and len(seqs) == 50_000
    assert seqs.floor == 100_000 - 2 * 99 - 1          # everything below: written or too old to tell
    assert 1 in seqs and 99_999 not in seqs and 99_997 not in seqs and 99_998 in seqs


def test_feedback_lag_holds_until_the_answers_catch_up():
    from stages.filter import FeedbackLag
    lag = FeedbackLag(max_lag=2, wait_s=60)
    for seq in (10, 11):           # a stream starting at 10: nothing before it is awaited
        lag.decided("cam", seq)
        assert lag.ready("f")
    lag.decided("cam", 12)
    assert not lag.ready("f") and lag.holds == 1
    lag.answered("cam", 10)
    assert lag.ready("f")
    lag.decided("other", 0)        # every open stream counts
    lag.decided("other", 1)
    lag.decided("other", 2)
    assert not lag.ready("f")
    lag.end_stream("other")
    assert lag.ready("f")


def test_feedback_lag_gives_up_waiting_until_an_answer_comes_again():
    from stages.filter import FeedbackLag
    lag = FeedbackLag(max_lag=0, wait_s=-1.0)   # any wait is past it, on any clock: no timing here
    lag.decided("cam", 0)
    assert not lag.ready("f")      # the hold starts
    assert lag.ready("f") and lag.gave_up == 1   # past wait_s: decide without waiting
    lag.decided("cam", 1)
    assert lag.ready("f")          # no more holds until an answer comes
    lag.answered("cam", 0)
    assert not lag.ready("f")      # answers flow again: holding again


def test_the_filter_waits_for_answers_only_with_a_policy_that_learns_from_them():
    from models.base import Decision, Policy

    class Learner(Policy):
        name, uses_feedback = "learner", True

        def decide(self, message):
            return Decision("infer")

    assert Filter(policy="stride:2").lag is None
    stage = Filter(policy=Learner(), max_lag=1)
    assert stage.lag is not None and stage.lag.max_lag == 1
    with pytest.raises(ConfigError):
        Filter(policy=Learner(), max_lag=-1)
