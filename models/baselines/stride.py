"""The two simplest policies: infer everything (the reference) and a fixed stride."""

from __future__ import annotations

from pipeline.errors import ConfigError
from pipeline.message import Message
from models.base import INFER, Decision, Policy


class InferAll(Policy):
    """No filtering: every input goes to the heavy model (what every filter is measured against)."""

    name = "none"

    def decide(self, message: Message) -> Decision:
        return INFER   # the plain decision: an unfiltered run's headers stay as small as they were


class Stride(Policy):
    """Run the model on one input in every `n`; the inputs between reuse the last inferred one.

    Counted in inputs received, not in sequence numbers, so that a live source's dropped frames
    (gaps in seq) do not stretch the stride.
    """

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"stride must be a whole number of inputs, at least 1, got {n!r}")
        self.n = n
        self.name = f"stride:{n}"
        self._last: dict[str, tuple[int, int]] = {}   # open stream -> (seq last inferred, inputs since)

    @classmethod
    def from_spec(cls, argument: str) -> Stride:
        if not argument:
            raise ConfigError("--filter stride:N needs N, e.g. stride:3")
        try:
            n = int(argument)
        except ValueError:
            raise ConfigError(f"--filter stride:N needs a whole number of inputs, got stride:{argument}") from None
        return cls(n)

    def decide(self, message: Message) -> Decision:
        last = self._last.get(message.stream)
        if last is None or last[1] + 1 >= self.n:
            self._last[message.stream] = (message.seq, 0)
            return Decision("infer", policy=self.name)
        self._last[message.stream] = (last[0], last[1] + 1)
        return Decision("reuse", ref_seq=last[0], policy=self.name)

    def end_stream(self, stream: str) -> None:
        self._last.pop(stream, None)
