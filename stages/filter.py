"""The filter stage: one decision per input, from a policy (models/policies.py).

Inputs the policy sends to the heavy model keep their pixels; every other input travels on as
a header only (its decision says why), so the aggregator still sees every sequence number
without paying for the pixels. With two outputs, the first goes to the inference workers and
carries only the inputs for the model; the second, for the aggregator, carries the rest and the
end-of-stream markers, so that a filtered input never waits in a worker's queue behind an
inference (and never skews how PUSH spreads the work over several workers). With one output,
everything goes through it and the workers pass what they need not run on.
"""

from __future__ import annotations

import time
from dataclasses import replace

from pipeline.message import Message
from pipeline.stage import Stage
from models.policies import Policy, parse_policy


class Filter(Stage):
    """policy: ``none`` (infer everything) or ``stride:N``; see `models.policies.parse_policy`.

    keep_frames: keep the pixels of inputs that are not inferred too (a display downstream
    needs every frame).
    """

    def __init__(self, policy: str = "none", keep_frames: bool = False):
        self.policy: Policy = parse_policy(policy)
        self.keep_frames = keep_frames

    def process(self, message: Message) -> Message:
        started = time.perf_counter()
        decision = self.policy.decide(message)
        decision = replace(decision, filter_ms=(time.perf_counter() - started) * 1000)
        arrays = message.arrays if decision.needs_model or self.keep_frames else ()
        return replace(message, decision=decision.to_wire(), arrays=arrays)

    def route(self, message: Message) -> int:
        """Output 0 (the workers): inputs for the model. Output 1 (the aggregator): the rest."""
        needs_model = not message.is_eos and (message.decision or {}).get("action") == "infer"
        return 0 if needs_model else 1

    def end_of_stream(self, message: Message) -> None:
        self.policy.end_stream(message.stream)
