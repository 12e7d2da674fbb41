"""The decision and result objects: round trips through the wire form, and refusals that say why."""

from __future__ import annotations

import numpy as np
import pytest

from models.base import INFER, Decision, ResultError
from stages.results import Detections, Transcript, count_words


@pytest.mark.parametrize("decision", [
    Decision("infer"), Decision("skip", policy="stride:2"), Decision("reuse", ref_seq=12, filter_ms=0.25),
    Decision("exit", exit=1, result={"count": 0}),
])
def test_decisions_round_trip(decision):
    assert Decision.from_wire(decision.to_wire()) == decision


def test_an_input_no_filter_saw_means_infer():
    assert Decision.from_wire(None) is INFER


@pytest.mark.parametrize("wire, message", [
    ({"action": "maybe"}, "must be one of"),
    ({"action": "reuse"}, "needs ref_seq"),
    ({"action": "reuse", "ref_seq": -1}, "needs ref_seq"),
    ({"action": "exit", "exit": 1}, "needs exit"),
    ({"action": "infer", "filter_ms": "fast"}, "finite number"),
    ("infer", "must be an object"),
])
def test_bad_decisions_are_refused(wire, message):
    with pytest.raises(ResultError, match=message):
        Decision.from_wire(wire)


def test_detections_round_trip_and_centres():
    detections = Detections([[10, 20, 30, 60], [0, 0, 4, 4]], [2, 7], [0.91, 0.4], infer_ms=31.5)
    back = Detections.from_wire(detections.to_wire())
    assert np.allclose(back.boxes, detections.boxes) and list(back.classes) == [2, 7]
    assert np.allclose(back.scores, [0.91, 0.4]) and back.infer_ms == 31.5
    assert np.allclose(back.centers, [[20, 40], [2, 2]])
    assert len(Detections.from_wire({"task": "vehicles"})) == 0


@pytest.mark.parametrize("wire, message", [
    ({"task": "speech"}, "expected a vehicles result"),
    ({"task": "vehicles", "boxes": [[0, 0, 1, 1]], "classes": [], "scores": []}, "as many classes"),
    ({"task": "vehicles", "boxes": [[5, 5, 1, 1]], "classes": [2], "scores": [0.5]}, "x2 >= x1"),
    ({"task": "vehicles", "boxes": [[0, 0, "a", 1]], "classes": [2], "scores": [0.5]}, "malformed"),
    ({"task": "vehicles", "infer_ms": float("nan")}, "finite"),
])
def test_bad_detections_are_refused(wire, message):
    with pytest.raises(ResultError, match=message):
        Detections.from_wire(wire)


@pytest.mark.parametrize("text, words", [
    ("", 0), ("Ask not.", 2), ("And so, my fellow Americans: ask not!", 7), ("It's 4 o'clock", 3), (" - ... ", 0),
])
def test_words_are_counted_as_the_speech_rule_counts_them(text, words):
    assert count_words(text) == words
    assert Transcript.from_wire(Transcript(text).to_wire()).words == words


def test_bad_transcripts_are_refused():
    with pytest.raises(ResultError, match="speech result"):
        Transcript.from_wire({"task": "speech", "text": 3})
