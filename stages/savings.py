"""Accounting per stream: where every input went, and what filtering saved.

The identity the aggregator checks at each end of stream (DESIGN.md, "Dataflow"):

    inferred + skipped + reused + exited + dropped == produced

where ``produced`` is the count in the source's end-of-stream marker (inputs it numbered:
frames read, undecodable ones included) and ``dropped`` is every input that never got a
result: dropped by the source (carried in the marker, by reason: ``undecodable``,
``live-queue``, ``stopped``, ``send-timeout``), lost on the way (a worker died, a message was
rejected), or answered by nobody (an ``infer`` input that reached the aggregator without a
result, e.g. no worker in the graph).

A stream is ``balanced`` only when that identity holds *and* nothing is unknown: its marker
arrived (else ``produced`` is unknown: ``end_missing``), the source reported no loss it could
not count as inputs (``uncounted``), and it did not fail (``error``). docs/results.md says what
this guarantees.

With a live accuracy audit (``--audit SHARE``), a random share of the inputs the filter
answered also went to the model: they count as inferred (the model ran), and the comparison
of the two answers gives a running estimate of the agreement of ALL answers with what the
model would have said (`audit_estimate`; docs/results.md, "Audit").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline.metrics import LatencyWindow, percentile, wilson_interval

DECISIONS = ("infer", "skip", "reuse", "exit")
#: Failed sources listed by name and error in a summary (the rest are counted).
FAILED_LISTED = 10
#: Reasons kept per stream from a marker's counters (a marker is input from the network).
_MAX_REASONS = 16
_MAX_ERROR_CHARS = 500
#: Policies named per stream in its accounting (decisions are input from the network).
_MAX_POLICIES = 16
_MAX_POLICY_CHARS = 64


def audit_estimate(audited: int, agreed: int, filtered: int, answered: int) -> dict[str, Any]:
    """The live agreement of all `answered` inputs with the model, estimated from an audit.

    `filtered` of them were answered by the filter (skip, reuse, exit) and got no model run;
    the rest were inferred (audited ones included) and agree by definition. `agreed` of the
    `audited` inputs (a uniform sample of what the filter answered, sent to the model as well)
    had the filter's answer agree with the model's. So

        agreement = 1 - filtered / answered * (1 - agreed / audited)

    with a 95 % interval: Wilson on agreed / audited, the filtered share taken as known (it is
    counted, not sampled). ``agreement`` is None while nothing filtered was audited yet (its
    interval is then what any audit outcome would allow).
    """
    share = filtered / answered if answered else 0.0
    rate = agreed / audited if audited else None
    low, high = wilson_interval(agreed, audited)
    if not filtered:   # everything answered was inferred: nothing to doubt
        rate_low = rate_high = 1.0
        agreement: float | None = 1.0
    else:
        rate_low, rate_high = low, high
        agreement = None if rate is None else 1 - share * (1 - rate)
    return {"audited": audited, "agreed": agreed,
            "audit_agreement": None if rate is None else round(rate, 6),
            "filtered_share": round(share, 6),
            "agreement": None if agreement is None else round(agreement, 6),
            "low": round(1 - share * (1 - rate_low), 6), "high": round(1 - share * (1 - rate_high), 6)}


def _counts(value: Any) -> Counter:
    """``{name: count}`` from a marker's meta, keeping only names with a count >= 0 (bounded)."""
    if not isinstance(value, dict):
        return Counter()
    return Counter({str(k)[:64]: v for k, v in list(value.items())[:_MAX_REASONS]
                    if type(v) is int and v >= 0})


@dataclass
class StreamAccount:
    """Counts for one stream; small and bounded (the latency window keeps a fixed sample)."""

    stream: str
    decisions: Counter = field(default_factory=Counter)
    produced: int | None = None       # known once the end-of-stream marker arrives
    dropped_at_source: int = 0
    dropped_by_reason: Counter = field(default_factory=Counter)   # the source's, from its marker
    uncounted: Counter = field(default_factory=Counter)   # input the source lost but could not count
    error: str | None = None          # the source failed (from its marker)
    end_missing: bool = False         # the stream was closed before its marker came: produced unknown
    unanswered: int = 0               # infer inputs that arrived without a result
    late: int = 0                     # inputs that arrived after the reorder buffer gave up on them
    unresolved_reuse: int = 0         # reuse of an input whose result is not (or no longer) known
    audited: int = 0                  # inferred inputs the filter had answered (the audit), compared
    agreed: int = 0                   # ... whose filter answer agreed with the model's
    model_ms: float = 0.0             # heavy-model time spent, summed over workers
    filter_ms: float = 0.0
    # Per policy that decided (its name from the decision; "" when none was named): inputs, the
    # filter time of those inputs (the whole cascade's, up to that policy's decision), and how
    # many of them it sent to the model itself (its ``infer`` decisions: a self-check's probe, the
    # line guard's frames) instead of answering them.
    by_policy: Counter = field(default_factory=Counter)
    policy_ms: Counter = field(default_factory=Counter)
    policy_to_model: Counter = field(default_factory=Counter)
    first_capture: float | None = None
    first_done: float | None = None
    last_done: float | None = None
    # A small sample per stream: a dataset run keeps thousands of finished streams' accounts.
    latency: LatencyWindow = field(default_factory=lambda: LatencyWindow(size=128))

    @property
    def received(self) -> int:
        return sum(self.decisions.values()) + self.unanswered

    @property
    def lost(self) -> int:
        if self.produced is None:
            return 0
        return max(0, self.produced - self.dropped_at_source - self.received)

    @property
    def dropped(self) -> int:
        return self.dropped_at_source + self.lost + self.unanswered

    @property
    def complete(self) -> bool:
        """Every input the source produced has arrived or is known dropped."""
        return self.produced is not None and self.received + self.dropped_at_source >= self.produced

    @property
    def known(self) -> bool:
        """Everything the source took in is counted: marker arrived, no uncounted loss, no failure."""
        return self.produced is not None and not self.end_missing and not self.uncounted and self.error is None

    def balanced(self) -> bool:
        return self.known and sum(self.decisions[d] for d in DECISIONS) + self.dropped == self.produced

    def end(self, marker: Any) -> None:
        """Take the source's counters from the stream's end-of-stream marker."""
        self.produced = marker.seq
        self.dropped_at_source = marker.dropped
        source = marker.meta.get("source") if isinstance(marker.meta, dict) else None
        source = source if isinstance(source, dict) else {}
        self.dropped_by_reason = _counts(source.get("dropped"))
        unexplained = marker.dropped - sum(self.dropped_by_reason.values())
        if unexplained > 0:   # a source that gives the total only
            self.dropped_by_reason["unspecified"] += unexplained
        self.uncounted = +_counts(source.get("uncounted"))
        if source.get("error") is not None:
            self.error = str(source["error"])[:_MAX_ERROR_CHARS]

    def close_without_end(self) -> None:
        """The stream is closed before its marker came: count what arrived, and say produced is unknown."""
        if self.produced is None:
            self.end_missing = True
            self.produced = self.received + self.dropped_at_source

    def add(self, action: str, t_capture: float, now: float, model_ms: float = 0.0, filter_ms: float = 0.0,
            policy: str = "") -> None:
        self.decisions[action] += 1
        self.model_ms += model_ms
        self.filter_ms += filter_ms
        self.count_policy(policy, filter_ms, to_model=action == "infer")
        self.first_capture = t_capture if self.first_capture is None else min(self.first_capture, t_capture)
        self.first_done = now if self.first_done is None else self.first_done
        self.last_done = now
        self.latency.add(now - t_capture)

    def count_policy(self, policy: str, filter_ms: float = 0.0, to_model: bool = False) -> None:
        """One input decided by `policy` (a name from the wire: bounded in length and in number);
        `to_model`: the decision sent it to the model rather than answering it."""
        if not policy:
            return
        policy = policy[:_MAX_POLICY_CHARS]
        if policy not in self.by_policy and len(self.by_policy) >= _MAX_POLICIES:
            policy = "(other)"
        self.by_policy[policy] += 1
        self.policy_ms[policy] += filter_ms
        self.policy_to_model[policy] += to_model

    def audit(self, agrees: bool) -> dict[str, Any]:
        """One audited input compared; the stream's running estimate after it (`audit_estimate`)."""
        self.audited += 1
        self.agreed += bool(agrees)
        return self.audit_estimate()

    def audit_estimate(self) -> dict[str, Any]:
        filtered = sum(self.decisions[d] for d in ("skip", "reuse", "exit"))
        return audit_estimate(self.audited, self.agreed, filtered, sum(self.decisions[d] for d in DECISIONS))

    def summary(self) -> dict[str, Any]:
        return summarize([self])


def summarize(accounts: list[StreamAccount]) -> dict[str, Any]:
    """The savings summary over one or more streams (a JSON-ready dict)."""
    counts = Counter()
    for account in accounts:
        counts.update(account.decisions)
    produced = sum(a.produced or 0 for a in accounts)
    answered = sum(counts[d] for d in DECISIONS)
    inferred = counts["infer"]
    model_ms = sum(a.model_ms for a in accounts)
    filter_ms = sum(a.filter_ms for a in accounts)
    mean_model_ms = model_ms / inferred if inferred else None
    not_inferred = answered - inferred
    starts = [a.first_capture for a in accounts if a.first_capture is not None]
    firsts = [a.first_done for a in accounts if a.first_done is not None]
    ends = [a.last_done for a in accounts if a.last_done is not None]
    wall_s = (max(ends) - min(starts)) if starts and ends else 0.0
    # Throughput from the first answer to the last: start-up (a worker loading its model while
    # the source already decodes) is in wall_s, not in the steady rate.
    steady_s = (max(ends) - min(firsts)) if firsts and ends else 0.0
    latencies = sorted(sample for account in accounts for sample in account.latency.recent)
    by_reason, uncounted, by_policy, policy_ms, policy_to_model = Counter(), Counter(), Counter(), Counter(), Counter()
    for account in accounts:
        by_reason.update(account.dropped_by_reason)
        uncounted.update(account.uncounted)
        by_policy.update(account.by_policy)
        policy_ms.update(account.policy_ms)
        policy_to_model.update(account.policy_to_model)
    failed = [a for a in accounts if a.error is not None]
    audited = sum(a.audited for a in accounts)
    agreed = sum(a.agreed for a in accounts)
    audit = {"audit": audit_estimate(audited, agreed, not_inferred, answered)} if audited else {}
    return {
        "streams": len(accounts),
        "produced": produced,
        "inferred": inferred,
        "skipped": counts["skip"],
        "reused": counts["reuse"],
        "exited": counts["exit"],
        "dropped": sum(a.dropped for a in accounts),
        "dropped_at_source": sum(a.dropped_at_source for a in accounts),
        "dropped_at_source_by_reason": dict(by_reason),
        "lost": sum(a.lost for a in accounts),
        "unanswered": sum(a.unanswered for a in accounts),
        "late": sum(a.late for a in accounts),
        "unresolved_reuse": sum(a.unresolved_reuse for a in accounts),
        "balanced": all(a.balanced() for a in accounts),
        "produced_known": all(not a.end_missing for a in accounts),
        "streams_without_end": sum(a.end_missing for a in accounts),
        "uncounted": dict(uncounted),
        "streams_with_uncounted": sum(bool(a.uncounted) for a in accounts),
        "failed_sources": len(failed),
        "failed": [{"stream": a.stream, "error": a.error} for a in failed[:FAILED_LISTED]],
        "filtering_rate": not_inferred / answered if answered else 0.0,
        "model_ms_spent": round(model_ms, 1),
        "model_ms_per_inference": round(mean_model_ms, 2) if mean_model_ms is not None else None,
        # Estimated: the inputs the filter answered would each have cost a mean inference.
        "model_ms_avoided": round(not_inferred * mean_model_ms, 1) if mean_model_ms is not None else None,
        "filter_ms_spent": round(filter_ms, 1),
        # Which policy decided how many inputs, how many of those it sent to the model itself,
        # and the filter time of those inputs.
        "by_policy": {name: {"inputs": n, "to_model": policy_to_model[name], "filter_ms": round(policy_ms[name], 1)}
                      for name, n in sorted(by_policy.items(), key=lambda item: -item[1])},
        "wall_s": round(wall_s, 3),
        "end_to_end_fps": round((answered - 1) / steady_s, 2) if steady_s > 0 and answered > 1 else None,
        "latency_ms_p50": _ms(percentile(latencies, 0.50)) if latencies else None,
        "latency_ms_p95": _ms(percentile(latencies, 0.95)) if latencies else None,
        **audit,
    }


def _unknowns(summary: dict[str, Any]) -> list[str]:
    """Lines saying what the accounting could not know (empty when it knows everything)."""
    lines = []
    if summary.get("sources_ended") is False:
        lines.append("  accounting incomplete: the sources' final end of stream never arrived "
                     "(a stream that sent nothing is not counted at all)")
    if summary.get("streams_without_end"):
        lines.append(f"  accounting incomplete: end of stream never arrived for {summary['streams_without_end']} "
                     f"stream(s); their produced count is unknown (what arrived is counted)")
    if summary.get("uncounted"):
        what = ", ".join(f"{name} {n:,}" for name, n in sorted(summary["uncounted"].items()))
        lines.append(f"  accounting incomplete: the source lost input it could not count as inputs in "
                     f"{summary['streams_with_uncounted']} stream(s) ({what})")
    for failure in summary.get("failed") or []:
        lines.append(f"  source failed: {failure['stream']}: {failure['error']}")
    if summary.get("failed_sources", 0) > len(summary.get("failed") or []):
        lines.append(f"  ... {summary['failed_sources'] - len(summary['failed'])} more failed source(s)")
    return lines


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _policy_line(name: str, entry: dict[str, Any]) -> str:
    """``skip 235 (226 answered, 9 to the model; 0.12 s)``. A cascade's own name (``skip+reuse``:
    no "+" is in a policy's name) counts the inputs none of its policies decided, which went to
    the model: say so, it reads like a policy otherwise. A policy's own ``infer`` decisions (a
    self-check's probes, the line guard) went to the model too: never counted as answered."""
    inputs, seconds = entry["inputs"], entry["filter_ms"] / 1000
    if "+" in name:
        return f"{name} (none decided: the model ran) {inputs:,} ({seconds:,.2f} s)"
    to_model = entry["to_model"]
    if to_model == inputs:
        return f"{name} {inputs:,} (all to the model; {seconds:,.2f} s)"
    return f"{name} {inputs:,} ({inputs - to_model:,} answered, {to_model:,} to the model; {seconds:,.2f} s)"


def format_summary(summary: dict[str, Any], title: str = "savings") -> str:
    """A few human lines: inputs by decision, model time spent and avoided, throughput."""
    produced = summary["produced"] or 0

    def share(n: int) -> str:
        return f"{n:>7,} ({100 * n / produced:5.1f} %)" if produced else f"{n:>7,}"

    reasons = summary.get("dropped_at_source_by_reason") or {}
    why = f": {', '.join(f'{reason} {n:,}' for reason, n in sorted(reasons.items()))}" if reasons else ""
    lines = [f"{title}: {produced:,} inputs in {summary['streams']} stream(s), "
             f"accounting {'balanced' if summary['balanced'] else 'NOT balanced'}",
             f"  inferred {share(summary['inferred'])}   skipped {share(summary['skipped'])}",
             f"  reused   {share(summary['reused'])}   exited  {share(summary['exited'])}",
             f"  dropped  {share(summary['dropped'])}   (at source {summary['dropped_at_source']}{why}; "
             f"lost {summary['lost']}, unanswered {summary['unanswered']})",
             f"  filtering rate {100 * summary['filtering_rate']:.1f} %"]
    lines += _unknowns(summary)
    if summary["model_ms_per_inference"] is not None:
        lines.append(f"  heavy model: {summary['model_ms_spent'] / 1000:,.1f} s spent "
                     f"({summary['model_ms_per_inference']:.1f} ms per input), "
                     f"~{summary['model_ms_avoided'] / 1000:,.1f} s avoided; filter {summary['filter_ms_spent'] / 1000:,.2f} s")
    if summary.get("by_policy"):
        lines.append("  decided by: " + ", ".join(_policy_line(name, entry) for name, entry in summary["by_policy"].items()))
    audit = summary.get("audit")
    if audit:
        rate = audit["audit_agreement"]
        estimate = audit["agreement"]
        lines.append(f"  audit: {audit['audited']:,} of the filter's answers also sent to the model, "
                     f"{audit['agreed']:,} agreed ({100 * rate:.1f} %); estimated agreement of all answers "
                     f"{'unknown' if estimate is None else f'{100 * estimate:.1f} %'} "
                     f"(95 % interval {100 * audit['low']:.1f}-{100 * audit['high']:.1f} %)")
    if summary.get("filter_thresholds"):
        lines.append("  filter thresholds at the end: "
                     + ", ".join(f"{name} {value:.4g}" for name, value in summary["filter_thresholds"].items())
                     + f" (lowered {summary.get('threshold_changes', 0)} time(s) to hold the target)")
    if summary["end_to_end_fps"] is not None:
        lines.append(f"  end to end: {summary['end_to_end_fps']:,.1f} inputs/s; {summary['wall_s']:.1f} s from the first "
                     f"capture to the last result, "
                     f"latency p50 {summary['latency_ms_p50']} ms, p95 {summary['latency_ms_p95']} ms")
    return "\n".join(lines)
