"""Filter policies: what decides, per input, whether the heavy model must run.

A policy sees every input of a stream in order and returns a `Decision` (infer, skip,
reuse(ref_seq) or exit(k, result)). This module holds the interface and the trivial baselines;
the learned filters (Skip, Reuse, early exit) implement the same interface.

`parse_policy("none" | "stride:N")` builds one from the command line's ``--filter``.
"""

from __future__ import annotations

from typing import Callable

from pipeline.errors import ConfigError
from pipeline.message import Message
from stages.results import INFER, Decision


class Policy:
    """Decides per input. Keeps at most a little state per stream, released by `end_stream`."""

    #: How the policy was named on the command line (carried in every decision it makes).
    spec: str = ""

    def decide(self, message: Message) -> Decision:
        raise NotImplementedError

    def end_stream(self, stream: str) -> None:
        """The stream ended: forget its state."""


class InferAll(Policy):
    """No filtering: every input goes to the heavy model (the reference every filter is measured against)."""

    spec = "none"

    def decide(self, message: Message) -> Decision:
        return INFER


class Stride(Policy):
    """Run the model on one input in every `n`; the inputs between reuse the last inferred one.

    Counted in inputs received, not in sequence numbers, so that a live source's dropped frames
    (gaps in seq) do not stretch the stride.
    """

    def __init__(self, n: int):
        if n < 1:
            raise ConfigError(f"stride must be at least 1 input, got {n}")
        self.n = n
        self.spec = f"stride:{n}"
        self._last: dict[str, tuple[int, int]] = {}   # stream -> (seq last inferred, inputs since)

    def decide(self, message: Message) -> Decision:
        last = self._last.get(message.stream)
        if last is None or last[1] + 1 >= self.n:
            self._last[message.stream] = (message.seq, 0)
            return Decision("infer", policy=self.spec)
        self._last[message.stream] = (last[0], last[1] + 1)
        return Decision("reuse", ref_seq=last[0], policy=self.spec)

    def end_stream(self, stream: str) -> None:
        self._last.pop(stream, None)


def _stride(argument: str) -> Policy:
    try:
        n = int(argument)
    except ValueError:
        raise ConfigError(f"--filter stride:N needs a whole number of inputs, got stride:{argument}") from None
    return Stride(n)


#: name -> factory taking the text after "name:" ("" when absent).
POLICIES: dict[str, Callable[[str], Policy]] = {
    "none": lambda argument: InferAll(),
    "stride": _stride,
}


def parse_policy(spec: str) -> Policy:
    """Build a policy from ``name[:argument]``, e.g. ``none`` or ``stride:3``."""
    name, _, argument = spec.strip().partition(":")
    factory = POLICIES.get(name)
    if factory is None:
        raise ConfigError(f"unknown filter {spec!r}; expected one of: none, stride:N")
    if name == "stride" and not argument:
        raise ConfigError("--filter stride:N needs N, e.g. stride:3")
    return factory(argument)
