"""Several policies in order: the first that decides answers; when none does, the model runs.

``skip+reuse`` on the command line: Skip answers the frames it is sure hold nothing, Reuse the
ones whose answer an earlier frame already has, and the rest go to the model. Each decision
names the policy that made it, and the cascade keeps, per policy, how many inputs it was asked
about, how many it answered and the time it took, so the cost of a cascade is known per stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from pipeline.message import Message
from models.base import Decision, Policy


@dataclass
class PolicyCost:
    """What one policy of a cascade did: inputs asked about, inputs answered, milliseconds spent."""

    asked: int = 0
    answered: int = 0
    ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"asked": self.asked, "answered": self.answered, "ms": round(self.ms, 3),
                "ms_per_input": round(self.ms / self.asked, 4) if self.asked else None}


class Cascade(Policy):
    """Runs `policies` in order; the first non-None decision wins, else ``infer``."""

    def __init__(self, policies: list[Policy]):
        if not policies:
            raise ValueError("a cascade needs at least one policy")
        self.policies = list(policies)
        self.name = "+".join(policy.name for policy in self.policies)
        self.costs: dict[str, PolicyCost] = {policy.name: PolicyCost() for policy in self.policies}
        self._fallback = Decision("infer", policy=self.name)
        self.uses_feedback = any(policy.uses_feedback for policy in self.policies)

    def open(self) -> None:
        opened: list[Policy] = []
        try:
            for policy in self.policies:
                policy.open()
                opened.append(policy)
        except BaseException:
            for policy in reversed(opened):
                policy.close()
            raise

    def close(self) -> None:
        for policy in reversed(self.policies):
            policy.close()

    def decide(self, message: Message) -> Decision:
        for policy in self.policies:
            cost = self.costs[policy.name]
            started = time.perf_counter()
            decision = policy.decide(message)
            cost.ms += (time.perf_counter() - started) * 1000
            cost.asked += 1
            if decision is not None:
                cost.answered += 1
                return decision if decision.policy else replace(decision, policy=policy.name)
        return self._fallback

    def feedback(self, stream: str, seq: int, result: dict[str, Any]) -> None:
        for policy in self.policies:
            policy.feedback(stream, seq, result)

    def end_stream(self, stream: str) -> None:
        for policy in self.policies:
            policy.end_stream(stream)

    def cost_summary(self) -> dict[str, dict[str, Any]]:
        """Per policy, in cascade order: asked, answered, ms, ms per input asked."""
        return {name: cost.as_dict() for name, cost in self.costs.items()}
