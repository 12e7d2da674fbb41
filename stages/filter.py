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
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from pipeline.message import Message
from pipeline.stage import Stage
from models.base import Decision, Policy
from models.registry import parse_policy
from stages import ledger

log = logging.getLogger(__name__)


class Filter(Stage):
    """policy: a `models.registry` spec: ``none`` (infer everything), ``stride:N``, or several
    joined with ``+`` (a cascade). Its weights load in `setup`, not here.

    keep_frames: keep the pixels of inputs that are not inferred too (a display downstream
    needs every frame).
    """

    def __init__(self, policy: str = "none", keep_frames: bool = False, job_key: str = ""):
        self.policy: Policy = parse_policy(policy)
        self.keep_frames = keep_frames
        self._key = ledger.job_key(job_key)
        # Tagged markers are sent by end_of_stream (the runtime would forward them untagged).
        self.forwards_end_of_stream = self._key is None

    def setup(self) -> None:
        self.policy.open()

    def teardown(self) -> None:
        self.policy.close()
        costs = getattr(self.policy, "cost_summary", None)
        if costs is not None:
            log.info("[%s] cost per policy: %s", self.name, costs())

    def process(self, message: Message) -> Message:
        started = time.perf_counter()
        decision = self.policy.decide(message) or Decision("infer", policy=self.policy.name)
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

    def route(self, message: Message) -> int:
        """Output 0 (the workers): inputs for the model. Output 1 (the aggregator): the rest."""
        needs_model = not message.is_eos and (message.decision or {}).get("action") == "infer"
        return 0 if needs_model else 1

    def end_of_stream(self, message: Message) -> Message | None:
        try:
            self.policy.end_stream(message.stream)
        except Exception:   # the marker must go on whatever the policy does
            log.exception("[%s] policy failed to end stream %s", self.name, message.stream)
        if self._key is None:
            return None
        return replace(message, meta={**message.meta, "tag": ledger.tag(self._key, "eos", message.stream, message.seq)})
