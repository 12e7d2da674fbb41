"""Per-stage metrics: counts, rates, latencies and drops, in bounded memory.

Latencies keep the last `window` samples (for percentiles) plus running totals, so a stage
that runs for a month uses the same memory as one that runs for a minute. `wilson_interval`
bounds a proportion seen in a sample (the aggregator's audit, Reuse's self-check).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


#: z of a two-sided 95 % normal interval.
Z95 = 1.959964


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion seen as `successes` of `n` trials ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


@dataclass
class LatencyWindow:
    """The last `size` latency samples in seconds, and the count and sum of all of them."""

    size: int = 1024
    count: int = 0
    total: float = 0.0
    maximum: float = 0.0
    recent: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.size)

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.maximum = max(self.maximum, seconds)
        self.recent.append(seconds)

    def summary_ms(self) -> dict[str, float]:
        ordered = sorted(self.recent)
        return {
            "mean": round(1000 * self.total / self.count, 3) if self.count else 0.0,
            "p50": round(1000 * percentile(ordered, 0.50), 3),
            "p95": round(1000 * percentile(ordered, 0.95), 3),
            "max": round(1000 * self.maximum, 3),
        }


class StageMetrics:
    """What one stage did: inputs, outputs, drops, rejections, errors, latencies.

    `process` latency is the time a stage spent on one input; `age` is how long ago the
    input was captured when it arrived here (end-to-end latency up to this stage).
    """

    def __init__(self, stage: str, log_interval_s: float = 10.0):
        self.stage = stage
        self.log_interval_s = log_interval_s
        self.started = time.monotonic()
        self.inputs = 0
        self.outputs = 0
        self.eos = 0
        self.errors = 0
        self.side_inputs = 0                     # messages taken from side inputs (not inputs)
        self.dropped: Counter[str] = Counter()   # by cause, e.g. "live-queue", "send-timeout"
        self.rejected: Counter[str] = Counter()  # malformed messages, by reason
        self.process = LatencyWindow()
        self.age = LatencyWindow()
        self._last_log = self.started
        self._inputs_at_last_log = 0

    def input(self, t_capture: float | None = None) -> None:
        self.inputs += 1
        if t_capture:
            self.age.add(max(0.0, time.time() - t_capture))

    def snapshot(self) -> dict:
        elapsed = max(1e-9, time.monotonic() - self.started)
        return {
            "stage": self.stage,
            "elapsed_s": round(elapsed, 3),
            "inputs": self.inputs,
            "outputs": self.outputs,
            "eos": self.eos,
            "inputs_per_s": round(self.inputs / elapsed, 2),
            "outputs_per_s": round(self.outputs / elapsed, 2),
            "process_ms": self.process.summary_ms(),
            "age_ms": self.age.summary_ms(),
            "dropped": dict(self.dropped),
            "rejected": dict(self.rejected),
            "errors": self.errors,
            **({"side_inputs": self.side_inputs} if self.side_inputs else {}),
        }

    def maybe_log(self, now: float | None = None) -> None:
        """Log a one-line progress report when `log_interval_s` has passed since the last."""
        now = time.monotonic() if now is None else now
        if self.log_interval_s <= 0 or now - self._last_log < self.log_interval_s:
            return
        rate = (self.inputs - self._inputs_at_last_log) / (now - self._last_log)
        self._last_log, self._inputs_at_last_log = now, self.inputs
        latency = self.process.summary_ms()
        log.info("[%s] %d in (%.1f/s), %d out, process p50 %.2f ms p95 %.2f ms, dropped %d, rejected %d, errors %d",
                 self.stage, self.inputs, rate, self.outputs, latency["p50"], latency["p95"],
                 sum(self.dropped.values()), sum(self.rejected.values()), self.errors)

    def write(self, path: Path) -> None:
        """Write the snapshot as JSON (atomically, so a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_text(json.dumps(self.snapshot(), indent=2))
        partial.replace(path)


def format_table(rows: list[dict]) -> str:
    """Rows of equal keys as an aligned plain-text table."""
    if not rows:
        return "(no streams)"
    columns = list(rows[0])
    cells = [[("" if row[c] is None else str(row[c])) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
