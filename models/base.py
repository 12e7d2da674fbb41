"""What every filter policy is and returns: the `Decision` per input and the `Policy` contract.

A policy sees the inputs of its streams in order and, for each, either decides (a `Decision`:
infer, skip, reuse an earlier input's answer, or answer from an early exit) or has no opinion
(None), so that the next policy of a cascade decides (models/cascade.py). Policies depend on
`pipeline` only, never on `stages`: the filter stage runs them, and tests and benchmarks can
run them on messages without any stage.

Lifecycle, like every resource here: build it cheaply (check options, load nothing), `open()`
it where it will run (weights load there: the filter stage's `setup`), `close()` it after; or
``with policy:``. Between, `decide` is called per input, `feedback` with the final answer of an
input once the aggregator has it (Reuse learns from it), and `end_stream` when a stream ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import ConfigError
from pipeline.message import Message

ACTIONS = ("infer", "skip", "reuse", "exit")


class ResultError(ValueError):
    """A decision or result object that does not follow the wire schema (stages/results.py shows it)."""


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ResultError(f"{what} must be a finite number, got {value!r:.100}")
    return float(value)


#: The longest time a filter or model may say it took for one input (an hour, in ms): a sum of
#: peers' claims must stay finite.
MAX_MS = 3.6e6


def _milliseconds(value: Any, what: str) -> float:
    ms = _number(value, what)
    if not 0 <= ms <= MAX_MS:
        raise ResultError(f"{what} must be between 0 and {MAX_MS:.0f} ms, got {value!r:.100}")
    return ms


def _index(value: Any) -> bool:
    """An integer >= 0 (not a bool) that fits in 64 bits."""
    return type(value) is int and 0 <= value < 2**63


@dataclass(frozen=True)
class Decision:
    """The filter's verdict on one input.

    infer: run the heavy model. skip: the model's answer would be the empty result.
    reuse: the answer of input `ref_seq` of the same stream holds. exit: an early-exit network
    answered at exit `exit` with `result`.

    audit: on an ``infer`` only, what the filter had decided before the live accuracy audit
    sent the input to the model as well (a skip, reuse or exit): the aggregator compares the
    model's answer with what that decision would have resolved to (docs/results.md, "Audit").
    """

    action: str
    ref_seq: int | None = None
    exit: int | None = None
    result: dict[str, Any] | None = None
    policy: str = ""
    filter_ms: float = 0.0
    audit: Decision | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.action, str) or self.action not in ACTIONS:
            raise ResultError(f"decision action must be one of {ACTIONS}, got {self.action!r:.100}")
        if self.action == "reuse" and not _index(self.ref_seq):
            raise ResultError(f"a reuse decision needs ref_seq (an integer >= 0), got {self.ref_seq!r:.100}")
        if self.action == "exit" and (not _index(self.exit) or not isinstance(self.result, dict)):
            raise ResultError(f"an exit decision needs exit (an integer >= 0) and result (an object), "
                              f"got exit={self.exit!r:.100} result={self.result!r:.100}")
        if not isinstance(self.policy, str):
            raise ResultError(f"decision policy must be a string, got {self.policy!r:.100}")
        _milliseconds(self.filter_ms, "decision filter_ms")
        if self.audit is not None and (self.action != "infer" or not isinstance(self.audit, Decision)
                                       or self.audit.action == "infer" or self.audit.audit is not None):
            raise ResultError(f"an audit goes with an infer decision and holds the filter's own skip, reuse or "
                              f"exit decision, got action={self.action!r:.100} audit={self.audit!r:.200}")

    @property
    def needs_model(self) -> bool:
        return self.action == "infer"

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"action": self.action}
        if self.ref_seq is not None:
            wire["ref_seq"] = self.ref_seq
        if self.exit is not None:
            wire["exit"] = self.exit
        if self.result is not None:
            wire["result"] = self.result
        if self.policy:
            wire["policy"] = self.policy
        if self.filter_ms:
            wire["filter_ms"] = round(self.filter_ms, 4)
        if self.audit is not None:
            wire["audit"] = self.audit.to_wire()
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any] | None) -> "Decision":
        """The decision in a header; an input no filter has seen means `infer`."""
        if wire is None:
            return INFER
        if not isinstance(wire, dict):
            raise ResultError(f"decision must be an object, got {type(wire).__name__}")
        audit = wire.get("audit")
        if audit is not None:
            if not isinstance(audit, dict) or "audit" in audit:
                raise ResultError(f"a decision's audit must be a decision object without its own audit, "
                                  f"got {audit!r:.200}")
            audit = cls.from_wire(audit)
        return cls(action=wire.get("action"), ref_seq=wire.get("ref_seq"), exit=wire.get("exit"),
                   result=wire.get("result"), policy=wire.get("policy", ""), filter_ms=wire.get("filter_ms", 0.0),
                   audit=audit)


INFER = Decision("infer")


class Policy:
    """Decides per input, or has no opinion. Keeps bounded state per stream, released by `end_stream`.

    `name` is how the policy was named on the command line (``stride:3``, ``skip``); every
    decision it makes carries it, so the accounting can say which policy answered each input.
    """

    name: str = ""
    #: True when decisions depend on `feedback` (Reuse's cache): the filter stage then keeps its
    #: decisions at most a few inputs ahead of the answers it has heard back (stages/filter.py).
    uses_feedback: bool = False

    @classmethod
    def from_spec(cls, argument: str) -> Policy:
        """Build from the text after ``name:`` on the command line ("" when there is none)."""
        if argument:
            raise ConfigError(f"--filter {cls.name or cls.__name__} takes no options, got {argument!r}")
        return cls()

    def open(self) -> None:
        """Load what the policy needs (weights); called once, where it will run."""

    def close(self) -> None:
        """Release what `open` loaded. Safe to call more than once."""

    def decide(self, message: Message) -> Decision | None:
        """This input's decision, or None: no opinion (the next policy of a cascade decides)."""
        raise NotImplementedError(f"{type(self).__name__} must implement decide()")

    def feedback(self, stream: str, seq: int, result: dict[str, Any]) -> None:
        """The final answer of input `seq` of `stream` (the aggregator's result record)."""

    def end_stream(self, stream: str) -> None:
        """The stream ended: forget its state."""

    def __enter__(self) -> Policy:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


#: Inputs of a stream a feedback-driven policy (Reuse) may decide past the last answer it has
#: heard back: the filter stage holds its input beyond that (stages/filter.py), and calibration
#: and evaluation replay feedback this many frames late (models/simulate.py), so the thresholds
#: are picked for the staleness the live filter allows. A trade-off, measured on 2026-12-01
#: (bench_filters, test halves of the 22 clips, thresholds recalibrated for each lag): at 2 the
#: cascade reaches 0.39 of the ceiling (mean) and is ahead of framediff on 12 clips; at 8 Reuse
#: decides on a staler cache: 0.35 of the ceiling, ahead of framediff on 7 clips, and the joint
#: calibration turns Skip off. 2 keeps the accuracy, and costs little time: traced end to end on
#: intel_car_detection, the feedback round trip (worker -> aggregator -> filter) takes ~1.8 ms per
#: inference against YOLO's ~200, and the cascade runs x5.07 the unfiltered frame rate (an
#: earlier x3.1 at 2 against x3.7 at 8 counted the YOLO worker's model load in the cascade's
#: frames/s; sources now start once every stage is set up). Letting Reuse point at frames whose
#: answer is still on its way (models/reuse.py ``pending``) did not remove the staleness: at 8,
#: recalibrated, 0.365 of the ceiling with Skip kept; at 2 it was 0.378 (noise around 0.389).
FEEDBACK_LAG = 2

#: How far back (in sequence numbers of one stream) a reuse decision may point. The aggregator
#: keeps at least this many answers per stream (stages/aggregate.py), so a reuse within the
#: horizon always resolves; policies evict cache entries older than this.
REUSE_HORIZON = 2048


class Answers:
    """One stream's resolved answers by seq, for the reuses that point back at them: the
    aggregator's (stages/aggregate.py) and the offline replay's (models/simulate.py).

    Every answer within `horizon` seqs behind the newest seq stored is kept: a policy never
    points a reuse further back than `models.base.REUSE_HORIZON`, so an input resolved in order
    always finds its reference. Older ones are dropped (a late input that old is not stored), so
    at most 2 x (horizon + 1) answers are held, whatever the stream's length or gaps.
    """

    def __init__(self, horizon: int = REUSE_HORIZON):
        self.horizon = horizon
        self.newest = -1
        self._answers: dict[int, Any] = {}

    def put(self, seq: int, answer: Any) -> None:
        if seq < self.newest - self.horizon:
            return
        self._answers[seq] = answer
        self.newest = max(self.newest, seq)
        if len(self._answers) > 2 * (self.horizon + 1):   # amortised: a rebuild per horizon's worth of inputs
            floor = self.newest - self.horizon
            self._answers = {key: value for key, value in self._answers.items() if key >= floor}

    def get(self, seq: int | None) -> Any:
        return self._answers.get(seq)

    def __len__(self) -> int:
        return len(self._answers)


class FramePolicy(Policy):
    """A policy on video frames whose per-frame work splits in two, so that evaluation can prepare
    every frame of a clip once and replay the decisions at many thresholds (models/simulate.py):

    - `prepare(frame)`: the costly part that no threshold changes (downscale, network features,
      a background model's foreground share), returning a numpy array;
    - `decide_prepared(stream, seq, features)`: the cheap decision on it at `self.threshold`.

    `threshold` is one knob per policy, oriented the same way for all: a larger threshold keeps
    more frames away from the model (filters more, risks more errors). `feedback` receives the
    aggregator's result record (at least ``decision`` and, for vehicle counting, ``count``).
    """

    threshold: float = 0.0
    #: The target accuracy the threshold was picked for (None: given as a threshold). Only a
    #: policy whose decisions depend on it (`target_dependent`) reads it.
    target: float | None = None
    #: The kind of message it decides on (``video`` frames; ``audio`` windows for the audio gates);
    #: any other gets no opinion.
    input_kind: str = "video"

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement prepare()")

    def decide_prepared(self, stream: str, seq: int, features: np.ndarray) -> Decision | None:
        raise NotImplementedError(f"{type(self).__name__} must implement decide_prepared()")

    def threshold_grid(self) -> np.ndarray:
        """Thresholds worth trying when calibrating, increasing (more filtering along the grid)."""
        return np.linspace(0.0, 1.0, 101)

    @property
    def target_dependent(self) -> bool:
        """Whether its decisions at a threshold depend on `target` too (Reuse's self-check spends
        an error budget of 1 - target): then calibration replays it once per target, with
        `target` set, and evaluation at the target it evaluates."""
        return False

    def decide(self, message: Message) -> Decision | None:
        if message.kind != self.input_kind or not message.arrays:
            return None                     # not an input of its kind: no opinion
        return self.decide_prepared(message.stream, message.seq, self.prepare(message.arrays[0]))
