"""Task logic the aggregator runs on every input, in order: what an answer means per task.

A task turns the wire form of a result into an answer object, knows its empty answer (what
``skip`` means), and keeps whatever state needs every input in order (vehicle tracks and line
crossings; word counts). `update` returns the fields of the input's JSON line.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError
from stages.results import (EMPTY_DETECTIONS, EMPTY_TRANSCRIPT, VEHICLE_CLASSES, Detections, ResultError,
                            Transcript)
from stages.tracking import CountingLine, Region, VehicleCounter


class Task:
    empty: Any

    def parse(self, wire: dict[str, Any]) -> Any:
        raise NotImplementedError

    def parse_exit(self, wire: dict[str, Any] | None) -> Any:
        """An early exit's answer; the same schema as the worker's unless a task says otherwise."""
        return self.parse(wire or {})

    def update(self, pts: float, answer: Any, fresh: bool) -> dict[str, Any]:
        raise NotImplementedError

    def agrees(self, filtered: Any, model: Any) -> bool:
        """Whether the filter's answer for an input counts as the model's (the live audit)."""
        raise NotImplementedError

    def totals(self) -> dict[str, Any]:
        return {}

    def restore(self, record: dict[str, Any]) -> Any:
        """Count an answered input from its line in a results file, as `update` did when it was
        written (a restarted aggregator resumes so); return its answer when the line holds it
        whole (for later reuses), else None."""
        raise NotImplementedError

    @staticmethod
    def describe(totals: dict[str, Any]) -> str:
        """One line for people about `totals` (summed over streams)."""
        return ""


class VehicleTask(Task):
    """Per frame: vehicles (optionally inside a region); over time: unique vehicles crossing a line.

    Only fresh observations (inferred frames, or early exits that give boxes) move the tracker.
    A reused frame repeats an older frame's boxes and a skipped frame claims the empty result:
    feeding either to the tracker would freeze or end tracks, so the tracker sees them as gaps in
    time, which its motion model bridges. This is what keeps a crossing from being lost or
    counted twice when frames between two inferences were filtered.
    """

    empty = EMPTY_DETECTIONS

    def __init__(self, line: CountingLine | None = None, region: Region | None = None):
        self.counter = VehicleCounter(line=line, region=region) if line or region else None
        self.frames = 0
        self.vehicle_frames = 0

    def parse(self, wire: dict[str, Any]) -> Detections:
        return Detections.from_wire(wire)

    def parse_exit(self, wire: dict[str, Any] | None) -> Detections:
        # An early-exit network may answer with a count only ({"count": 0} is the common case).
        if isinstance(wire, dict) and "boxes" not in wire and wire.get("count") == 0:
            return EMPTY_DETECTIONS
        return Detections.from_wire(wire or {})

    def update(self, pts: float, answer: Detections, fresh: bool) -> dict[str, Any]:
        self.frames += 1
        self.vehicle_frames += bool(len(answer))
        by_class: dict[str, int] = {}
        for cls in answer.classes:
            name = VEHICLE_CLASSES.get(int(cls), str(int(cls)))
            by_class[name] = by_class.get(name, 0) + 1
        record: dict[str, Any] = {"count": len(answer), "by_class": by_class}
        if self.counter is not None:
            # A reused or skipped answer still counts in the region, but never moves the tracker.
            record.update(self.counter.update(pts, answer, fresh=fresh))
            if self.counter.line is not None:
                record["crossings"] = self.counter.crossings
        return record

    def agrees(self, filtered: Detections, model: Detections) -> bool:
        """Per-frame count agreement, the metric the filters are calibrated for: the same number
        of vehicles (where they are is not compared)."""
        return len(filtered) == len(model)

    def restore(self, record: dict[str, Any]) -> None:
        # Counts and crossings come back; the tracks alive then do not (a line holds no boxes),
        # so a vehicle tracked across the restart starts a new track.
        self.frames += 1
        self.vehicle_frames += bool(record.get("count"))
        if self.counter is not None:
            for crossing in record.get("new_crossings") or []:
                if isinstance(crossing, dict):
                    self.counter.crossings += 1
                    for counts, key in ((self.counter.by_direction, "direction"), (self.counter.by_class, "class")):
                        if isinstance(crossing.get(key), str):
                            counts[crossing[key]] = counts.get(crossing[key], 0) + 1
        return None

    def totals(self) -> dict[str, Any]:
        totals: dict[str, Any] = {"frames": self.frames, "frames_with_vehicles": self.vehicle_frames}
        if self.counter is not None:
            totals.update(self.counter.totals())
        return totals

    @staticmethod
    def describe(totals: dict[str, Any]) -> str:
        text = f"vehicles: {totals.get('frames_with_vehicles', 0):,} of {totals.get('frames', 0):,} frames had vehicles"
        if "crossings" in totals:
            text += f"; {totals['crossings']} crossed the line"
        return text


class SpeechTask(Task):
    """Per audio window: transcript and word count, and the InFi rule "more than N words"."""

    empty = EMPTY_TRANSCRIPT

    def __init__(self, words: int = 2):
        if words < 0:
            raise ConfigError(f"the speech rule's word threshold must be >= 0, got {words}")
        self.words = words
        self.windows = 0
        self.needing = 0
        self.total_words = 0

    def parse(self, wire: dict[str, Any]) -> Transcript:
        return Transcript.from_wire(wire)

    def parse_exit(self, wire: dict[str, Any] | None) -> Transcript:
        # A binary early exit answers the rule only: "needs recognition" cannot come without words.
        if isinstance(wire, dict) and wire.get("task") != "speech" and wire.get("needs_recognition") is False:
            return EMPTY_TRANSCRIPT
        if not isinstance(wire, dict) or wire.get("task") != "speech":
            raise ResultError(f"an early exit for speech must say needs_recognition false or give a transcript, "
                              f"got {wire!r:.200}")
        return Transcript.from_wire(wire)

    def update(self, pts: float, answer: Transcript, fresh: bool) -> dict[str, Any]:
        words = answer.words
        self.windows += 1
        self.total_words += words
        self.needing += words > self.words
        return {"text": answer.text, "words": words, "needs_recognition": words > self.words}

    def agrees(self, filtered: Transcript, model: Transcript) -> bool:
        """The same verdict of the rule: both more than N words, or both not."""
        return (filtered.words > self.words) == (model.words > self.words)

    def restore(self, record: dict[str, Any]) -> Transcript:
        answer = Transcript(record.get("text") if isinstance(record.get("text"), str) else "")
        self.update(0.0, answer, fresh=True)
        return answer

    def totals(self) -> dict[str, Any]:
        return {"windows": self.windows, "windows_needing_recognition": self.needing, "words": self.total_words}

    @staticmethod
    def describe(totals: dict[str, Any]) -> str:
        return (f"speech: {totals.get('windows_needing_recognition', 0):,} of {totals.get('windows', 0):,} windows "
                f"had more than the rule's N words; {totals.get('words', 0):,} words over all windows")


TASKS = {"vehicles": VehicleTask, "speech": SpeechTask}


def make_task(name: str, line: CountingLine | None = None, region: Region | None = None, words: int = 2) -> Task:
    if name == "vehicles":
        return VehicleTask(line=line, region=region)
    if name == "speech":
        return SpeechTask(words=words)
    raise ConfigError(f"unknown task {name!r}; expected vehicles or speech")
