"""The filter stage: one decision per input, from a policy or a cascade of them (models/registry.py).

Inputs the policy sends to the heavy model keep their pixels; every other input travels on as
a header only (its decision says why), so the aggregator still sees every sequence number
without paying for the pixels. With two outputs, the first goes to the inference workers and
carries only the inputs for the model; the second, for the aggregator, carries the rest and the
end-of-stream markers, so that a filtered input never waits in a worker's queue behind an
inference (and never skews how PUSH spreads the work over several workers). With one output,
everything goes through it and the workers pass what they need not run on.

With a job key (parameter ``job_key`` or $INFISTREAM_JOB_KEY, which the apps set), every
message leaves tagged (``meta["tag"]``, stages/ledger.py): inputs for the model as jobs, the
rest and the end-of-stream markers as the filter's own; the aggregator accepts nothing else.

Live accuracy audit (``audit``, a share): a random share of the inputs the policy answered
(skip, reuse, exit) go to the model as well, as an ``infer`` decision that carries the policy's
own (``Decision.audit``). The aggregator compares the two answers and keeps a running estimate
of the live agreement (docs/results.md, "Audit"). With ``hold_target``, the filter reads the
audits back from its side input (the aggregator's results) and, when the estimate's upper
bound falls below the target, lowers the thresholds of its frame policies (`ThresholdHold`).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import numpy as np

from pipeline.errors import ConfigError
from pipeline.message import Message
from pipeline.stage import Stage
from models.base import FEEDBACK_LAG, Decision, FramePolicy, Policy   # FEEDBACK_LAG: how far ahead Reuse may decide
from models.registry import parse_policy
from stages import ledger
from stages.savings import audit_estimate

log = logging.getLogger(__name__)


#: How long the filter holds its input for an answer before deciding without it (the results
#: channel is best effort, and a graph may have no side input at all).
FEEDBACK_WAIT_S = 2.0
#: Streams whose decided and answered sequence numbers are kept (the least recently decided go).
MAX_LAG_STREAMS = 1024


class FeedbackLag:
    """How far the filter's decisions run ahead of the answers it has heard back, per stream.

    Ready when, for every open stream, the last decided seq is at most `max_lag` past the last
    answered one. Holding longer than `wait_s` gives up: from then on the filter decides without
    waiting until an answer comes again (a missing side input costs one wait, not one per input).
    """

    def __init__(self, max_lag: int, wait_s: float):
        self.max_lag, self.wait_s = max_lag, wait_s
        self._decided: OrderedDict[str, int] = OrderedDict()
        self._answered: dict[str, int] = {}
        self._held_since: float | None = None
        self._waiting = True
        self.holds = 0       # times the input was held
        self.gave_up = 0     # times a hold ran out of patience

    def decided(self, stream: str, seq: int) -> None:
        if stream not in self._answered:
            self._answered[stream] = seq - 1   # nothing before the first input is awaited
        self._decided[stream] = max(seq, self._decided.get(stream, seq))
        self._decided.move_to_end(stream)
        while len(self._decided) > MAX_LAG_STREAMS:
            old, _ = self._decided.popitem(last=False)
            self._answered.pop(old, None)

    def answered(self, stream: str, seq: int) -> None:
        self._waiting = True
        if stream in self._decided:
            self._answered[stream] = max(seq, self._answered.get(stream, seq))

    def end_stream(self, stream: str) -> None:
        self._decided.pop(stream, None)
        self._answered.pop(stream, None)

    def ready(self, name: str) -> bool:
        behind = any(seq - self._answered.get(stream, seq) > self.max_lag for stream, seq in self._decided.items())
        if not behind or not self._waiting:
            self._held_since = None
            return True
        now = time.monotonic()
        if self._held_since is None:
            self._held_since = now
            self.holds += 1
        elif now - self._held_since > self.wait_s:
            self._held_since, self._waiting = None, False
            self.gave_up += 1
            log.warning("[%s] no answer from the aggregator for %.1f s: deciding without waiting until one "
                        "comes (a policy that learns from answers, e.g. reuse, learns nothing meanwhile)",
                        name, self.wait_s)
            return True
        return False


def frame_policies(policy: Policy) -> list[FramePolicy]:
    """The policies with a threshold knob: `policy` itself, or those of a cascade."""
    return [p for p in getattr(policy, "policies", [policy]) if isinstance(p, FramePolicy)]


def _share(value: Any, what: str, low_open: bool = False) -> float:
    """A number in [0, 1] ((0, 1] with `low_open`), or a ConfigError saying what came."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not (0 < value <= 1 if low_open else 0 <= value <= 1):
        raise ConfigError(f"{what} must be a number in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}")
    return float(value)


class ThresholdHold:
    """Lowers the thresholds of `policies` when the audit says the live agreement is below `target`.

    It judges the current thresholds only: the audits (each audited input's ``agrees``, from the
    aggregator's results) and the filter's own decisions since the last change, estimated as the
    aggregator does (`stages.savings.audit_estimate`). Once `every` audits are in and the
    estimate's upper bound is below `target`, each policy's threshold is multiplied by `step`
    and moved down to the nearest point of its `threshold_grid()` (so that calibrated and held
    thresholds are points of the same grid; the grid's bottom when no point is that low; one
    point down from a threshold <= 0); then it waits for `every` new audits of inputs decided
    after the change. A threshold already at the bottom of its grid stays. A policy whose grid
    decreases (a smaller threshold filters more) is moved the other way (`lowered`).
    """

    def __init__(self, policies: list[FramePolicy], target: float, every: int = 30, step: float = 0.8):
        if not policies:
            raise ConfigError("a hold target (--hold-target) lowers thresholds, but the filter policy has none "
                              "(a frame policy such as skip, reuse, framediff or a cascade of them has; "
                              "stride and none do not)")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"the hold's spacing (hold_every) must be a whole number of audited inputs >= 1, "
                              f"got {every!r}")
        self.policies = policies
        self.target = _share(target, "the hold target (--hold-target)", low_open=True)
        self.every = every
        self.step = _share(step, "the hold step (hold_step)", low_open=True)
        self.started = {p.name: float(p.threshold) for p in policies}
        self.changes = 0
        self._last_seq: dict[str, int] = {}       # open stream -> last seq decided
        self._after: dict[str, int] = {}          # stream -> audits of seqs up to this predate the change
        self._reset()

    def _reset(self) -> None:
        self.decided = self.filtered = self.audited = self.agreed = 0

    def decided_on(self, stream: str, seq: int, answered: bool) -> None:
        """The filter decided input `seq`; `answered`: with the policy's answer (not the model's)."""
        self._last_seq[stream] = seq
        self.decided += 1
        self.filtered += answered

    def audited_on(self, stream: str, seq: int, agrees: bool) -> dict[str, Any] | None:
        """An audit outcome came back; the estimate it was judged on when thresholds changed, else None."""
        if seq <= self._after.get(stream, -1):
            return None
        self.audited += 1
        self.agreed += bool(agrees)
        if self.audited < self.every:
            return None
        estimate = audit_estimate(self.audited, self.agreed, self.filtered, max(self.decided, self.filtered))
        if estimate["high"] >= self.target:
            return None
        changed = {p.name: (p.threshold, self.lowered(p)) for p in self.policies}
        for policy in self.policies:
            policy.threshold = changed[policy.name][1]
        if all(old == new for old, new in changed.values()):
            log.warning("audit: estimated agreement %.3f (95 %% interval %.3f-%.3f) is below the target %.3f, "
                        "but every threshold is at the bottom of its grid already", estimate["agreement"],
                        estimate["low"], estimate["high"], self.target)
        else:
            self.changes += 1
            log.warning("audit: estimated agreement %.3f (95 %% interval %.3f-%.3f over %d audits) is below the "
                        "target %.3f: thresholds lowered %s", estimate["agreement"], estimate["low"],
                        estimate["high"], self.audited, self.target,
                        ", ".join(f"{name} {old:.4g} -> {new:.4g}" for name, (old, new) in changed.items()))
        self._after.update(self._last_seq)
        self._reset()
        return estimate

    def lowered(self, policy: FramePolicy) -> float:
        """The threshold one hold step toward filtering less. Most grids increase (a larger
        threshold filters more): the threshold moves down. A decreasing grid (the early exit's
        maxprob: a smaller threshold exits more) is mirrored: the threshold moves up, its
        distance from the grid's top multiplied by `step`."""
        threshold = float(policy.threshold)
        raw = np.asarray(policy.threshold_grid(), dtype=float).reshape(-1)
        grid = np.sort(raw)
        if len(raw) > 1 and raw[0] > raw[-1]:
            above = grid[grid > threshold]
            if not len(above):
                return threshold
            aim = grid[-1] - (grid[-1] - threshold) * self.step
            high_enough = above[above >= aim]
            return float(high_enough[0]) if len(high_enough) else float(above[-1])
        below = grid[grid < threshold]
        if not len(below):
            return threshold
        if threshold <= 0:
            return float(below[-1])
        low_enough = below[below <= threshold * self.step]
        return float(low_enough[-1]) if len(low_enough) else float(below[0])

    def end_stream(self, stream: str) -> None:
        self._last_seq.pop(stream, None)
        self._after.pop(stream, None)

    def thresholds(self) -> dict[str, float]:
        return {p.name: float(p.threshold) for p in self.policies}


class Filter(Stage):
    """policy: a `models.registry` spec: ``none`` (infer everything), ``stride:N``, or several
    joined with ``+`` (a cascade); or a built `Policy`. Its weights load in `setup`, not here.

    keep_frames: keep the pixels of inputs that are not inferred too (a display downstream
    needs every frame).
    audit: the share (0 to 1) of the inputs the policy answers that go to the model as well,
        drawn at random (`audit_seed`: repeatable draws; default a fresh seed, logged).
    hold_target: with an audit, lower the frame policies' thresholds when the estimated live
        agreement's upper bound falls below this (e.g. 0.95; 0: never), at most once per
        `hold_every` audited inputs, each time `hold_step` of the way down (`ThresholdHold`).
    """

    def __init__(self, policy: str | Policy = "none", keep_frames: bool = False, job_key: str = "",
                 audit: float = 0.0, audit_seed: int | None = None, hold_target: float = 0.0,
                 hold_every: int = 30, hold_step: float = 0.8, max_lag: int = FEEDBACK_LAG,
                 feedback_wait_s: float = FEEDBACK_WAIT_S):
        self.policy: Policy = policy if isinstance(policy, Policy) else parse_policy(policy)
        if isinstance(max_lag, bool) or not isinstance(max_lag, int) or max_lag < 0:
            raise ConfigError(f"max_lag must be a whole number of inputs >= 0, got {max_lag!r}")
        self.lag = FeedbackLag(max_lag, float(feedback_wait_s)) if self.policy.uses_feedback else None
        self.keep_frames = keep_frames
        self._key = ledger.job_key(job_key)
        self.audit = _share(audit, "the audit share (--audit)")
        if audit_seed is not None and (isinstance(audit_seed, bool) or not isinstance(audit_seed, int)):
            raise ConfigError(f"the audit seed (--audit-seed) must be a whole number, got {audit_seed!r}")
        self.audit_seed = audit_seed if audit_seed is not None else random.SystemRandom().randrange(2**32)
        self._draw = random.Random(self.audit_seed)
        self.audited = 0
        self.hold: ThresholdHold | None = None
        if _share(hold_target, "the hold target (--hold-target)"):
            if not self.audit:
                raise ConfigError("a hold target (--hold-target) needs an audit share above 0 (--audit): "
                                  "the estimate it holds comes from the audit")
            self.hold = ThresholdHold(frame_policies(self.policy), hold_target, hold_every, hold_step)
        # Tagged markers, and markers carrying the thresholds, are sent by end_of_stream (the
        # runtime would forward them as they came).
        self.forwards_end_of_stream = self._key is None and self.hold is None

    def setup(self) -> None:
        self.policy.open()
        if self.audit:
            log.info("[%s] auditing %.4g of the inputs the filter answers (seed %d)", self.name, self.audit,
                     self.audit_seed)

    def teardown(self) -> None:
        self.policy.close()
        if self.lag is not None and (self.lag.holds or self.lag.gave_up):
            log.info("[%s] held its input %d time(s) for the aggregator's answers; gave up waiting %d time(s)",
                     self.name, self.lag.holds, self.lag.gave_up)
        costs = getattr(self.policy, "cost_summary", None)
        if costs is not None:
            log.info("[%s] cost per policy: %s", self.name, costs())
        for policy in getattr(self.policy, "policies", [self.policy]):
            stats = getattr(policy, "stats", None)          # Skip's self-check, Reuse's cache
            if stats is not None and hasattr(stats, "as_dict"):
                log.info("[%s] %s: %s", self.name, policy.name, stats.as_dict())
            checks = getattr(policy, "check_stats", None)   # Reuse's self-check, when on
            if checks is not None and getattr(policy, "check", 0):
                log.info("[%s] %s self-check: %s", self.name, policy.name, checks.as_dict())
        if self.audit:
            log.info("[%s] audit: %d inputs the filter answered were sent to the model as well", self.name,
                     self.audited)
        if self.hold is not None:
            log.warning("[%s] thresholds at the end: %s (at the start: %s; lowered %d time(s) to hold %.3f)",
                        self.name, self.hold.thresholds(), self.hold.started, self.hold.changes, self.hold.target)

    def process(self, message: Message) -> Message:
        started = time.perf_counter()
        decision = self.policy.decide(message) or Decision("infer", policy=self.policy.name)
        answered = not decision.needs_model
        if answered and self.audit and self._draw.random() < self.audit:
            # The model runs too; the policy's own decision rides along for the aggregator to check.
            decision = Decision("infer", policy=self.policy.name, audit=replace(decision, filter_ms=0.0))
            self.audited += 1
            answered = False
        if self.hold is not None:
            self.hold.decided_on(message.stream, message.seq, answered)
        if self.lag is not None:
            self.lag.decided(message.stream, message.seq)
        decision = replace(decision, filter_ms=(time.perf_counter() - started) * 1000)
        arrays = message.arrays if decision.needs_model or self.keep_frames else ()
        meta = message.meta
        if self._key is not None:
            purpose = "job" if decision.needs_model else "direct"
            meta = {**meta, "tag": ledger.tag(self._key, purpose, message.stream, message.seq)}
        return replace(message, decision=decision.to_wire(), arrays=arrays, meta=meta)

    def side_input(self, message: Message) -> None:
        """The aggregator's result for an input (its side input in the apps): the policy learns
        the final answers of the inputs it let through (Reuse fills its cache from them)."""
        if message.kind == "result" and isinstance(message.result, dict):
            self.policy.feedback(message.stream, message.seq, message.result)
            if self.lag is not None:
                self.lag.answered(message.stream, message.seq)
            audit = message.result.get("audit")
            if self.hold is not None and isinstance(audit, dict) and isinstance(audit.get("agrees"), bool):
                self.hold.audited_on(message.stream, message.seq, audit["agrees"])

    def ready_for_input(self) -> bool:
        """Hold the next input while a feedback-driven policy is more than `max_lag` inputs ahead
        of the answers it has heard (a recorded file decodes far faster than YOLO answers; Reuse
        deciding hundreds of frames on a cache of the first few would answer them all wrong)."""
        return self.lag is None or self.lag.ready(self.name)

    def route(self, message: Message) -> int:
        """Output 0 (the workers): inputs for the model. Output 1 (the aggregator): the rest."""
        needs_model = not message.is_eos and (message.decision or {}).get("action") == "infer"
        return 0 if needs_model else 1

    def end_of_stream(self, message: Message) -> Message | None:
        if self.lag is not None:
            self.lag.end_stream(message.stream)
        try:
            self.policy.end_stream(message.stream)
        except Exception:   # the marker must go on whatever the policy does
            log.exception("[%s] policy failed to end stream %s", self.name, message.stream)
        if self.forwards_end_of_stream:
            return None
        meta = dict(message.meta)
        if self.hold is not None:   # the aggregator's summary reports them
            self.hold.end_stream(message.stream)
            meta["filter"] = {"thresholds": self.hold.thresholds(), "threshold_changes": self.hold.changes}
        if self._key is not None:
            meta["tag"] = ledger.tag(self._key, "eos", message.stream, message.seq)
        return replace(message, meta=meta)
