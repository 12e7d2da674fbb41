"""InFi-Reuse on video frames: answer a frame with the answer of an earlier, equivalent one.

A small network embeds each frame (models/lite.py: LiteRT, no TensorFlow); a learned head turns
two embeddings into p_differ, the probability that the two frames' answers (vehicle counts)
differ (models/filterdir.py, `DistanceHead`). Per stream, a bounded cache holds the embeddings of
frames the model answered, with their answers, learned from the aggregator's feedback. For a new
frame, `ReuseCache.lookup` runs the H-kNN of InFi (from FoggyCache):

1. the k entries nearest to the frame under the learned distance (all entries at once, numpy);
2. of those, the ones closer than the threshold (p_differ < threshold) must number at least
   `k_min` and agree on the answer: the most common answer among them holds a share >= the
   `homogeneity` (1.0: all of them). Otherwise the cache cannot vouch for an answer: no reuse;
3. the reuse points at the nearest entry holding that answer (`Decision("reuse", ref_seq=...)`).

A frame the cache cannot answer waits (its embedding, in a bounded pending table) for its
answer: when the aggregator's result says the model answered it (decision ``infer``, an integer
``count``), the pair enters the cache. Only fresh model answers enter: a reused or skipped
answer would only repeat what the cache or Skip already said.

With ``pending=N`` a reuse may also point at one of the N latest frames still waiting for their
answer: when one of them is nearer than every cached entry and within the threshold, and the
close cached entries (if any) agree, the frame reuses it. The aggregator resolves inputs in
order, so the answer is there when the reuse is resolved; if that frame ends up unanswered, the
reuse is counted unresolved there, never guessed. It is meant for a filter stage run with a
longer feedback lag (its ``max_lag``), where the newest frames are otherwise missing from the
cache. Off by default: measured on the 22 test halves (2026-12-01, recalibrated each time), at
the shipped lag of 2 it changed the cascade's mean best fraction of the ceiling from 0.389 to
0.378 (noise either way: some clips up, some down); at lag 8 it lifted it from 0.35 to 0.365 and
kept Skip in the joint calibration, still below lag 2 (models/base.py `FEEDBACK_LAG`).

With ``refer=latest`` the H-kNN still decides whether a frame may reuse, but the reuse points at
the latest frame sent to the model (answered or on its way) instead of the nearest agreeing entry:
on a scene whose count jitters from frame to frame, the latest answer is likelier to be the
frame's own than that of an older frame that looks alike. With ``refer=agree`` the reuse points
at the latest answered frame, and only when its answer is the one the H-kNN voted for; otherwise
the frame goes to the model. Both off by default; what they did on the 22 test halves and under
leave-one-camera-out is in docs/filters.md.

Bounds, so a stream that runs for days stays the same size: `capacity` entries per stream
(when full, the entry to replace is chosen by LFU: fewest reuses, oldest first; or LRU, or
FIFO); every entry whose seq is `REUSE_HORIZON` or more behind the current frame is dropped and
never pointed at (the aggregator may no longer hold its answer); an optional reset empties a
stream's cache every `reset` inputs (InFi re-initialises its cache every 5,000 frames); at most
`max_pending` embeddings wait per stream (oldest dropped, counted) and at most `max_streams`
streams are tracked (the least recently seen is dropped, counted). Counters in `CacheStats`.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import ConfigError
from pipeline.metrics import wilson_interval
from models.base import REUSE_HORIZON, Decision
from models.filterdir import DistanceHead, FilterDir
from models.options import Option, choice, number, parse_options, whole
from models.skip import LearnedFramePolicy

REPLACEMENTS = ("lfu", "lru", "fifo")
#: Which frame a reuse points at once the cache vouches for one: the nearest agreeing entry (InFi's
#: H-kNN), the latest frame sent to the model (answered or on its way), or the latest answered
#: frame, and only when its answer is the one the H-kNN voted for (else no reuse).
REFERENCES = ("nearest", "latest", "agree")

REUSE_OPTIONS: dict[str, Option] = {
    "target": number(0, 1), "threshold": number(0, 1), "k": whole(1, 64), "k_min": whole(1, 64),
    "homogeneity": number(0, 1), "capacity": whole(1, 65536), "replacement": choice(*REPLACEMENTS),
    "reset": whole(0), "max_run": whole(0), "pending": whole(0, 64), "refer": choice(*REFERENCES),
    "check": whole(0, 1000),
}


def checked_reuse_options(text: str) -> str:
    """`text` as Reuse options (``refer=agree,k=3``), refused with a ConfigError naming what is
    wrong: for commands that pass them on to hours of work (calibration, LOCO) to check first."""
    parse_options("reuse", text, REUSE_OPTIONS)
    return text


@dataclass
class CacheStats:
    """What the cache did, over all streams (counters only grow)."""

    lookups: int = 0
    reused: int = 0
    miss_empty: int = 0          # fewer entries than k_min
    miss_far: int = 0            # fewer than k_min of the k nearest within the threshold
    miss_mixed: int = 0          # the close ones disagree (homogeneity below the bar)
    miss_latest: int = 0         # refer=agree: the latest answer is not the one the close ones voted for
    reused_pending: int = 0      # of `reused`, pointing at a frame whose answer was on its way
    inserted: int = 0
    evicted_full: int = 0        # replaced to make room (LFU / LRU / FIFO)
    evicted_horizon: int = 0     # REUSE_HORIZON or more seqs behind the current frame
    resets: int = 0
    pending_dropped: int = 0     # waited too long for an answer (the pending table was full)
    feedback_ignored: int = 0    # not a fresh model answer, or no embedding waiting for it
    streams_dropped: int = 0     # the least recently seen stream, when too many were open

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class CheckStats:
    """What Reuse's self-check (``check=N``) did, over all streams (counters only grow)."""

    probes: int = 0              # would-reuse frames sent to the model to check the reuse
    checked: int = 0             # ... whose answer came back
    misses: int = 0              # ... in which the model's count was not the one the reuse would have given
    tightened: int = 0           # a stream's threshold halved: its misses spent more than the error budget
    relaxed: int = 0             # a stream's threshold raised back a step (never above the calibrated one)
    shadow_checked: int = 0      # frames the level above would have reused, answered by the model anyway
    shadow_misses: int = 0       # ... in which that reuse would have been wrong
    streams_dropped: int = 0     # the least recently seen stream's state (its run too), when too many were open

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _ReuseWatch:
    """One stream's state in the policy: its run of reuses, and its self-check when on (how far
    its threshold is lowered, its recent checks and reuses)."""

    run: int = 0                                     # inputs reused in a row (`max_run`)
    rng: np.random.Generator | None = None           # the probes' draws (only with the self-check)
    level: int = 0                                   # the threshold is the calibrated one * FACTOR ** level
    checks: deque = field(default_factory=deque)     # the last CHECK_WINDOW checks at this level: True for a miss
    probes: dict = field(default_factory=dict)       # probed seq -> the count its reuse would have given
    # The last SHARE_WINDOW inputs Reuse decided on, as (seq, vouched): vouched where the cache
    # vouched for a reuse (probed or not, and also where reuse is off), so the share is what the
    # stream's reuses would answer at this level.
    recent: deque = field(default_factory=deque)
    reused: int = 0                                  # vouched inputs in `recent`
    # Below the calibrated level: frames the level above would have reused (shadowed), sent to
    # the model anyway, so their answers check the level above for free.
    shadows: dict = field(default_factory=dict)      # shadowed seq -> the count the reuse above would have given
    shadow_checks: deque = field(default_factory=deque)   # the last CHECK_WINDOW such checks: True for a miss
    shadowed: int = 0                                # shadowed inputs in `recent`
    last_shadow_check: int = -(1 << 62)
    last_probe: int = -(1 << 62)                     # seq of the stream's last probe

    def share(self) -> float:
        """The share of the stream's frames the cache vouched for, over the seqs `recent` spans:
        in a cascade Reuse never sees the frames Skip answered, and its misses are spread over
        all of the stream's frames, not only over those it saw (a quiet camera whose frames Skip
        mostly skips would otherwise look as if Reuse spent its budget many times over)."""
        return self.reused / self._span()

    def shadow_share(self) -> float:
        """The share of the stream's frames the level above would have reused and this one did not."""
        return self.shadowed / self._span()

    def _span(self) -> int:
        """The seqs `recent` spans (1 when empty, where both shares are 0)."""
        if not self.recent:
            return 1
        return max(len(self.recent), self.recent[-1][0] - self.recent[0][0] + 1)


def _logit(p: float) -> float:
    """The logit below which p_differ < p (-inf for 0, +inf for 1)."""
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p / (1.0 - p))


class _StreamCache:
    """One stream's entries, in the first `size` rows of fixed arrays (no growth, no lists)."""

    def __init__(self, capacity: int, embedding: int):
        self.embeddings = np.zeros((capacity, embedding), np.float32)
        self.seqs = np.zeros(capacity, np.int64)
        self.answers = np.zeros(capacity, np.int64)
        self.hits = np.zeros(capacity, np.int64)
        self.inserted = np.zeros(capacity, np.int64)    # clock at insertion (FIFO, LFU ties)
        self.used = np.zeros(capacity, np.int64)        # clock at insertion or last reuse (LRU)
        self.size = 0
        self.clock = 0
        self.inputs = 0                                 # lookups since the last reset
        self.latest = -1                                # the highest seq looked up
        self.pending: OrderedDict[int, np.ndarray] = OrderedDict()

    def keep(self, mask: np.ndarray) -> int:
        """Keep only the entries where `mask` holds (compacting the rows); how many went."""
        kept = np.flatnonzero(mask)
        dropped = self.size - len(kept)
        if dropped:
            for array in (self.embeddings, self.seqs, self.answers, self.hits, self.inserted, self.used):
                array[:len(kept)] = array[kept]
            self.size = len(kept)
        return dropped

    def remove(self, row: int) -> None:
        last = self.size - 1
        if row != last:
            for array in (self.embeddings, self.seqs, self.answers, self.hits, self.inserted, self.used):
                array[row] = array[last]
        self.size = last


class ReuseCache:
    """The per-stream caches of (embedding, answer) and the H-kNN decision over them."""

    def __init__(self, head: DistanceHead, capacity: int = 256, k: int = 5, k_min: int = 1,
                 homogeneity: float = 1.0, replacement: str = "lfu", reset: int = 0,
                 max_streams: int = 64, max_pending: int = 512, horizon: int = REUSE_HORIZON,
                 pending: int = 0, refer: str = "nearest"):
        if replacement not in REPLACEMENTS:
            raise ConfigError(f"replacement must be one of {', '.join(REPLACEMENTS)}, got {replacement!r}")
        if refer not in REFERENCES:
            raise ConfigError(f"refer must be one of {', '.join(REFERENCES)}, got {refer!r}")
        if not 1 <= k_min <= k:
            raise ConfigError(f"reuse needs 1 <= k_min <= k, got k={k}, k_min={k_min}")
        if capacity < 1 or max_streams < 1 or max_pending < 1 or horizon < 1 or reset < 0 or pending < 0:
            raise ConfigError("reuse cache bounds must be positive (capacity, streams, pending, horizon; "
                              "reset and pending >= 0)")
        self.head = head
        self.embedding = head.embedding
        self.capacity, self.k, self.k_min, self.homogeneity = capacity, k, k_min, homogeneity
        self.replacement, self.reset = replacement, reset
        self.max_streams, self.max_pending, self.horizon = max_streams, max_pending, horizon
        self.pending_candidates = pending
        self.refer = refer
        self.stats = CacheStats()
        #: After a lookup that found nothing within `threshold` but would have at `shadow_threshold`:
        #: the seq that reuse would have pointed at (None otherwise). Read by Reuse's self-check.
        self.last_shadow: int | None = None
        self._streams: OrderedDict[str, _StreamCache] = OrderedDict()

    # ---------------------------------------------------------------- streams

    def _stream(self, stream: str, create: bool = True) -> _StreamCache | None:
        state = self._streams.get(stream)
        if state is not None:
            self._streams.move_to_end(stream)
        elif create:
            state = self._streams[stream] = _StreamCache(self.capacity, self.embedding)
            if len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
                self.stats.streams_dropped += 1
        return state

    def end_stream(self, stream: str) -> None:
        self._streams.pop(stream, None)

    def entries(self, stream: str) -> dict[str, np.ndarray]:
        """A copy of the stream's entries (seqs, answers, hits), for tests and inspection."""
        state = self._streams.get(stream)
        if state is None:
            return {"seqs": np.zeros(0, np.int64), "answers": np.zeros(0, np.int64), "hits": np.zeros(0, np.int64)}
        n = state.size
        return {"seqs": state.seqs[:n].copy(), "answers": state.answers[:n].copy(), "hits": state.hits[:n].copy()}

    def answer_of(self, stream: str, seq: int) -> int | None:
        """The cached answer of frame `seq`, or None when it is not in the cache (on its way, gone)."""
        state = self._streams.get(stream)
        if state is None:
            return None
        rows = np.flatnonzero(state.seqs[:state.size] == seq)
        return int(state.answers[rows[0]]) if len(rows) else None

    def pending(self, stream: str) -> list[int]:
        state = self._streams.get(stream)
        return list(state.pending) if state is not None else []

    @property
    def streams(self) -> list[str]:
        return list(self._streams)

    # ---------------------------------------------------------------- decisions

    def lookup(self, stream: str, seq: int, embedding: np.ndarray, threshold: float,
               vote_threshold: float | None = None, shadow_threshold: float | None = None) -> int | None:
        """The seq whose answer frame `seq` may reuse, or None (then `hold` it for its answer).

        `vote_threshold` (above `threshold`): the neighbours within it vote (the homogeneity
        test), and the reuse needs an agreeing one within `threshold`. Reuse's self-check lowers
        the threshold this way, so that a lowered level reuses a subset of what the calibrated
        one would: lowering the threshold alone shrinks the vote too, and on a scene whose
        counts jitter among look-alike frames a vote of one or two near neighbours is unanimous
        more often than the calibrated vote, so it reused MORE (the tunnel portal: 4 % -> 16 %
        of frames, wrong on half of the extra ones).

        `shadow_threshold` (between the two, with `refer=nearest` only): when nothing agreeing is
        within `threshold` but something is within it, `last_shadow` says which entry a reuse at
        that threshold would have pointed at, without counting it as a reuse anywhere."""
        self.last_shadow = None
        state = self._stream(stream)
        stats = self.stats
        stats.lookups += 1
        state.clock += 1
        state.latest = max(state.latest, seq)
        state.inputs += 1
        if self.reset and state.inputs > self.reset:
            state.size, state.inputs = 0, 1
            stats.resets += 1
        n = state.size
        if n:
            seqs = state.seqs[:n]
            # Only entries before this frame and less than the horizon behind it.
            stale = (seqs <= seq - self.horizon) | (seqs >= seq)
            if stale.any():
                stats.evicted_horizon += state.keep(~stale)
                n = state.size
        limit = _logit(threshold)
        vote_limit = _logit(vote_threshold) if vote_threshold is not None and vote_threshold > threshold else limit
        waiting, waiting_distance = self._nearest_pending(state, seq, embedding)
        if waiting is not None and waiting_distance >= limit:
            waiting = None
        if n + (waiting is not None) < self.k_min:
            stats.miss_empty += 1
            return None
        if n:
            # The head's logits order the entries as p_differ does; the threshold is compared as a logit.
            differences = state.embeddings[:n] - embedding
            np.abs(differences, out=differences)
            distance = self.head.logits(differences)
            nearest = np.argpartition(distance, self.k - 1)[:self.k] if n > self.k else np.arange(n)
            close = nearest[distance[nearest] < vote_limit]
        else:
            distance = close = np.zeros(0, np.int64)
        if len(close) + (waiting is not None) < self.k_min:
            stats.miss_far += 1
            return None
        answers = state.answers[close]
        if len(close) == 0 or (answers == answers[0]).all():   # the usual case, without np.unique's cost
            agreeing = close
        else:
            values, votes = np.unique(answers, return_counts=True)
            best = votes.max()
            if best < self.homogeneity * len(close):
                stats.miss_mixed += 1
                return None
            winners = values[votes == best]
            agreeing = close[(answers[:, None] == winners[None, :]).any(axis=1)]
        if vote_limit != limit:
            within = agreeing[distance[agreeing] < limit]
            if len(within) + (waiting is not None) < self.k_min:
                if shadow_threshold is not None and waiting is None and self.refer == "nearest":
                    reach = agreeing[distance[agreeing] < _logit(shadow_threshold)]
                    if len(reach) >= self.k_min:                   # k_min >= 1
                        near = distance[reach]
                        candidates = reach[near == near.min()]
                        self.last_shadow = int(state.seqs[candidates[np.argmax(state.seqs[candidates])]])
                stats.miss_far += 1
                return None
            agreeing = within
        if self.refer == "latest":
            return self._latest_reference(state, seq)
        if self.refer == "agree":
            return self._agreeing_latest(state, agreeing)
        # A frame whose answer is on its way, nearer than every close entry, is the best reference
        # (the close entries, if any, agree among themselves: nothing says it differs from them).
        if waiting is not None and (len(agreeing) == 0 or waiting_distance < distance[agreeing].min()):
            stats.reused += 1
            stats.reused_pending += 1
            return waiting
        # The nearest entry holding a most-voted answer (on a tie of votes, the answer of the
        # nearer one); among equally near ones the latest, the furthest from the horizon.
        near = distance[agreeing]
        nearest = agreeing[near == near.min()]
        row = nearest[np.argmax(state.seqs[nearest])]
        state.hits[row] += 1
        state.used[row] = state.clock
        stats.reused += 1
        return int(state.seqs[row])

    def _latest_reference(self, state: _StreamCache, seq: int) -> int:
        """`refer=latest`: the latest frame before `seq` sent to the model, whether its answer is in
        the cache or still on its way (the aggregator resolves inputs in order, so it is there when
        this reuse is resolved). The cache has vouched that the frame is redundant; which earlier
        answer is then likeliest to be its own is a question of time, not of looks: where the
        model's count jitters from frame to frame, the nearest-looking entry may be many frames old."""
        stats = self.stats
        n = state.size
        answered = int(state.seqs[:n].max()) if n else -1
        waiting = next((w for w in reversed(state.pending) if w < seq), -1)
        stats.reused += 1
        if waiting > answered and waiting > seq - self.horizon:
            stats.reused_pending += 1
            return waiting
        if n:
            rows = np.flatnonzero(state.seqs[:n] == answered)
            state.hits[rows] += 1
            state.used[rows] = state.clock
        return answered

    def _agreeing_latest(self, state: _StreamCache, agreeing: np.ndarray) -> int | None:
        """`refer=agree`: the latest answered frame, when its answer is the one the close entries
        voted for; else no reuse. Stricter than both other modes: it needs the cache's vote and
        the latest answer to say the same, so a count that jitters between two values is sent to
        the model rather than answered with the older of two looks-alike. Frames whose answer is
        on its way are not candidates (their answer is not known yet to compare)."""
        stats = self.stats
        n = state.size
        if len(agreeing) == 0 or n == 0:
            stats.miss_latest += 1
            return None
        row = int(np.argmax(state.seqs[:n]))
        if not (state.answers[agreeing] == state.answers[row]).any():
            stats.miss_latest += 1
            return None
        state.hits[row] += 1
        state.used[row] = state.clock
        stats.reused += 1
        return int(state.seqs[row])

    def _nearest_pending(self, state: _StreamCache, seq: int, embedding: np.ndarray) -> tuple[int | None, float]:
        """The nearest of the `pending_candidates` latest frames still waiting for an answer (before
        `seq`, within the horizon), and its distance as a logit; (None, inf) when there is none."""
        if not self.pending_candidates or not state.pending:
            return None, math.inf
        candidates: list[int] = []
        for waiting in reversed(state.pending):          # the latest first; the table is seq-ordered
            if waiting < seq and waiting > seq - self.horizon:
                candidates.append(waiting)
                if len(candidates) == self.pending_candidates:
                    break
        if not candidates:
            return None, math.inf
        differences = np.stack([state.pending[waiting] for waiting in candidates]) - embedding
        np.abs(differences, out=differences)
        distance = self.head.logits(differences)
        best = int(np.argmin(distance))
        return candidates[best], float(distance[best])

    def hold(self, stream: str, seq: int, embedding: np.ndarray) -> None:
        """Keep the embedding of frame `seq` (sent to the model) until its answer comes back."""
        state = self._stream(stream)
        state.pending[seq] = embedding
        if len(state.pending) > self.max_pending:
            state.pending.popitem(last=False)
            self.stats.pending_dropped += 1

    def feedback(self, stream: str, seq: int, result: dict[str, Any]) -> None:
        """The aggregator's answer of frame `seq`: a fresh model count enters the cache."""
        state = self._stream(stream, create=False)
        embedding = state.pending.pop(seq, None) if state is not None else None
        fresh = isinstance(result, dict) and result.get("decision") == "infer"
        count = result.get("count") if fresh else None
        if embedding is None or type(count) is not int:
            self.stats.feedback_ignored += 1
            return
        if seq <= state.latest - self.horizon:       # too old to point at any more
            self.stats.evicted_horizon += 1
            return
        if state.size >= self.capacity:
            state.remove(self._victim(state))
            self.stats.evicted_full += 1
        row = state.size
        state.clock += 1
        state.embeddings[row] = embedding
        state.seqs[row], state.answers[row], state.hits[row] = seq, count, 0
        state.inserted[row] = state.used[row] = state.clock
        state.size += 1
        self.stats.inserted += 1

    def _victim(self, state: _StreamCache) -> int:
        n = state.size
        if self.replacement == "fifo":
            return int(np.argmin(state.inserted[:n]))
        if self.replacement == "lru":
            return int(np.argmin(state.used[:n]))
        hits = state.hits[:n]
        fewest = np.flatnonzero(hits == hits.min())
        return int(fewest[np.argmin(state.inserted[fewest])])


class ReusePolicy(LearnedFramePolicy):
    """Reuses an earlier frame's answer when the cache's H-kNN vouches for it; no opinion otherwise.

    `threshold` is the largest p_differ at which a cached frame counts as close (larger: more
    reuse). Options: ``target`` or ``threshold``, ``k`` (neighbours, 5), ``k_min`` (close ones
    needed, 1), ``homogeneity`` (share of the close ones that must agree, 1.0), ``capacity``
    (entries per stream, 256), ``replacement`` (lfu, lru, fifo), ``reset`` (empty the cache every
    N inputs of a stream; 0, the default: never, the horizon already bounds an entry's age),
    ``max_run`` (at most this many inputs of a stream in a row answered by reuse, 25; 0: no cap),
    ``pending`` (how many of the latest frames still waiting for their answer a reuse may point
    at; 0, the default: only answered ones), ``refer`` (``nearest``, the default: the reuse points
    at the nearest agreeing entry, as InFi; ``latest``: at the latest frame sent to the model,
    answered or on its way, once the cache has vouched for a reuse; ``agree``: at the latest
    answered frame, and only when its answer is the H-kNN's vote).

    Why `max_run`: the cache learns only from frames the model answered, so once every frame
    finds a close entry nothing reaches the model again and the answers go stale for good (the
    evaluation found streams answered ~100 % from one old frame, at agreements down to 0.04).
    Forcing a fresh answer after a run keeps the cache learning and bounds how stale a reused
    answer can be, for at most 1 frame in 26 inferred. 25 is a design bound (about a second of
    video), not tuned on the test halves.

    ``check=N`` sets Reuse's self-check (20, the default; 0: off). A threshold calibrated on some
    cameras can be far too lax on a new one (leave-one-camera-out: 0.58-0.68 agreement on busy
    cameras calibrated without any), and a reused frame never reaches the model, so nothing would
    say so. With the check, per stream:

    - 1 in N of the frames the cache would answer, drawn at random (1 in N/2 until the stream has
      `CHECK_WINDOW` checks), and never within `PROBE_SPACING` seqs of the last probe, goes to
      the model instead (a *probe*, an ``infer`` decision of this policy), remembering the
      count the reuse would have given; its answer is a *check*, a *miss* when the counts differ. Random, not at the end of a run (`max_run`): a frame after
      25 reuses in a row is staler than the average reused frame and would overstate the misses;
    - the stream's reuses spend (share of its recent frames the cache vouched for, counted over
      the seqs they span, so frames an earlier policy answered count too) x (miss rate) of the
      error budget (1 - target, 0.05 by default), both counted since the stream's last change of
      level. When, after at least `CHECK_MIN` checks, the Wilson interval (z = `CHECK_Z`) of the
      miss rate over its last `CHECK_WINDOW` checks says, even at its lower end, that this is
      more than the budget, the stream's threshold is halved and its checks start over; after
      `CHECK_LEVELS` - 1 halvings the next step turns reuse off for the stream, and then every
      frame the cache would answer goes to the model and is a check, at no extra cost; when a
      full window's misses spend less than half the budget, the threshold goes back up a step,
      never above the calibrated one (tightening on the interval's lower end and relaxing on
      the observed rate leaves a band between them where the level stays);
    - a lowered level reuses a subset of what the calibrated one would (the calibrated
      neighbours vote; `ReuseCache.lookup`'s `vote_threshold`), and the frames the level above
      would have reused, which now go to the model, check it for free (*shadow* checks, at most
      one per `SHADOW_SPACING` frames): a full window of them that, with the level's own misses,
      spends under half the budget raises the threshold a step.

    The probes cost at most 1 in N of the reused frames. Like Skip's, the check is calibrated
    without (`models.calibrate.open_filter` turns it off: calibrated with it, thresholds came out
    laxer, leaning on a check whose probes come too late for a short burst of traffic) and runs
    with it; ``check=0`` turns it off. What it buys and costs, on the test halves and under
    leave-one-camera-out: docs/filters.md, "The self-checks on a new camera".
    """

    options = REUSE_OPTIONS
    kind = "reuse"
    uses_feedback = True   # the cache holds only answers heard back from the aggregator
    defaults = {"k": 5, "k_min": 1, "homogeneity": 1.0, "capacity": 256, "replacement": "lfu", "reset": 0,
                "max_run": 25, "pending": 0, "refer": "nearest", "check": 20}
    #: The self-check (``check``): checks per verdict, the interval's z, how far a threshold falls.
    CHECK_WINDOW = 20
    CHECK_MIN = 5               # checks at a level before it may be lowered (one early miss says little)
    CHECK_Z = 1.5
    CHECK_FACTOR = 0.5
    CHECK_LEVELS = 6
    #: Probes come at least this many seqs apart. Neighbouring frames are one picture: probes
    #: drawn close together (1 in 10 at random makes runs of them) repeat one verdict, and two
    #: misses on one passing car were enough to halve a quiet camera's threshold (the shipped
    #: filters on highway_topdown's test half: 2 misses in 7 checks, 75 % of frames kept from
    #: YOLO instead of 96 %; 94 % with the spacing).
    PROBE_SPACING = 10
    #: Shadow checks (free checks of the level above) count at most once per this many frames.
    SHADOW_SPACING = 2
    #: Inputs over which a stream's share of reused frames is measured.
    SHARE_WINDOW = 250
    #: The error budget when the policy was given a threshold rather than a target.
    DEFAULT_BUDGET = 0.05
    #: Streams whose state (run of reuses, self-check) is kept (the least recently seen are forgotten).
    MAX_STREAMS = 1024
    #: Options the policy applies itself; the others configure its ReuseCache.
    POLICY_SETTINGS = ("max_run", "check")
    #: Probes per stream waiting for their answers (the oldest is forgotten).
    MAX_PROBES = 64

    def __init__(self, directory: FilterDir, threshold: float, name: str = "reuse", **settings: Any):
        super().__init__(directory, threshold, name, directory.embedding, settings)
        if not 1 <= self.settings["k_min"] <= self.settings["k"]:
            raise ConfigError(f"--filter {name}: k_min must be between 1 and k ({self.settings['k']}), "
                              f"got {self.settings['k_min']}")
        self.cache: ReuseCache | None = None
        self.stats = CacheStats()
        self.max_run = self.settings["max_run"]
        self.forced = 0                                      # inputs sent to the model by max_run
        self.check = int(self.settings["check"])
        self.check_stats = CheckStats()
        self._watches: OrderedDict[str, _ReuseWatch] = OrderedDict()
        self._probe = Decision("infer", policy=name)

    def open(self) -> None:
        self.model.open()
        if self.cache is None:
            self.cache = ReuseCache(self.directory.load_head(), **self.cache_settings())
            self.stats = self.cache.stats          # still readable after close()

    def cache_settings(self) -> dict[str, Any]:
        """The options that are the cache's (all but the policy's own `POLICY_SETTINGS`)."""
        return {key: value for key, value in self.settings.items() if key not in self.POLICY_SETTINGS}

    def close(self) -> None:
        self.model.close()
        self.cache = None

    def decide_prepared(self, stream: str, seq: int, features: np.ndarray) -> Decision | None:
        """`features`: the frame's embedding ([E] float32, `prepare`)."""
        if self.cache is None:
            raise RuntimeError(f"{self.name}: open() the policy before deciding")
        watch = self._watch(stream)
        threshold = self._lowered(watch.level) if self.check else self.threshold
        probe = vouched = shadowed = False
        if self.max_run and watch.run >= self.max_run:
            ref = None
            self.forced += 1
        else:
            lowered = self.check and 0 < watch.level < self.CHECK_LEVELS
            ref = self.cache.lookup(stream, seq, features, threshold,
                                    vote_threshold=self.threshold if threshold < self.threshold else None,
                                    shadow_threshold=self._lowered(watch.level - 1) if lowered else None)
            vouched = ref is not None
            if not vouched and self.cache.last_shadow is not None:
                # the level above would have reused it: its answer checks that level for free
                shadowed = self._await_check(watch.shadows, seq, self.cache.answer_of(stream, self.cache.last_shadow))
            if vouched and self.check:
                probe = self._maybe_probe(watch, stream, seq, ref)
                if probe:
                    ref = None
        watch.run = 0 if ref is None else watch.run + 1
        if self.check:
            watch.recent.append((seq, vouched, shadowed))
            watch.reused += vouched
            watch.shadowed += shadowed
            if len(watch.recent) > self.SHARE_WINDOW:
                _, was_vouched, was_shadowed = watch.recent.popleft()
                watch.reused -= was_vouched
                watch.shadowed -= was_shadowed
        if ref is None:
            self.cache.hold(stream, seq, features)
            return self._probe if probe else None
        return Decision("reuse", ref_seq=ref, policy=self.name)

    def _watch(self, stream: str) -> _ReuseWatch:
        watch = self._watches.pop(stream, None)
        if watch is None:
            # Seeded by the stream's name: the same stream probes the same frames in every run.
            watch = _ReuseWatch(rng=np.random.default_rng(zlib.crc32(stream.encode())) if self.check else None)
            if len(self._watches) >= self.MAX_STREAMS:
                self._watches.popitem(last=False)
                self.check_stats.streams_dropped += 1
        self._watches[stream] = watch                  # most recently seen last
        return watch

    def _maybe_probe(self, watch: _ReuseWatch, stream: str, seq: int, ref: int) -> bool:
        """Whether the would-reuse frame `seq` goes to the model as a probe of the reuse of `ref`."""
        if watch.level >= self.CHECK_LEVELS:
            every = 1                       # reuse is off here: every would-reuse frame is a check, for free
        elif seq - watch.last_probe < self.PROBE_SPACING:
            return False                    # a frame next to the last probe is the same picture, the same verdict
        else:
            every = self.check if len(watch.checks) >= self.CHECK_WINDOW else max(1, self.check // 2)
        if every > 1 and watch.rng.random() >= 1.0 / every:
            return False
        if not self._await_check(watch.probes, seq, self.cache.answer_of(stream, ref)):
            return False                    # pointing at an answer on its way: nothing to compare yet
        watch.last_probe = seq
        self.check_stats.probes += 1
        return True

    def _await_check(self, waiting: dict, seq: int, would: int | None) -> bool:
        """Remember in `waiting` (a stream's probes or shadows) the count `would` the reuse would
        have given frame `seq`, to compare with the model's answer; False when it is not known."""
        if would is None:
            return False
        if len(waiting) >= self.MAX_PROBES:
            waiting.pop(next(iter(waiting)))        # its answer never came back
        waiting[seq] = would
        return True

    def _shadow_checked(self, watch: _ReuseWatch, seq: int, result: dict[str, Any]) -> None:
        """The model's answer to a shadowed frame: a free check of the level above. A full window
        of them (at most one per `SHADOW_SPACING` frames: neighbours are one picture) whose misses,
        with this level's own, would spend under half the budget raises the threshold a step."""
        would = watch.shadows.pop(seq)
        count = result.get("count")
        if result.get("decision") != "infer" or type(count) is not int or seq - watch.last_shadow_check < self.SHADOW_SPACING:
            return
        watch.last_shadow_check = seq
        miss = count != would
        self.check_stats.shadow_checked += 1
        self.check_stats.shadow_misses += miss
        watch.shadow_checks.append(miss)
        if len(watch.shadow_checks) > self.CHECK_WINDOW:
            watch.shadow_checks.popleft()
        if len(watch.shadow_checks) < self.CHECK_WINDOW:
            return
        spend = sum(watch.shadow_checks) / len(watch.shadow_checks) * watch.shadow_share()
        if len(watch.checks) >= self.CHECK_MIN:
            spend += sum(watch.checks) / len(watch.checks) * watch.share()
        if spend < self.budget / 2:
            watch.level -= 1
            self.check_stats.relaxed += 1
            self._new_level(watch)

    def _new_level(self, watch: _ReuseWatch) -> None:
        """A new level: its checks and its shares of vouched and shadowed inputs are counted afresh."""
        watch.checks.clear()
        watch.recent.clear()
        watch.reused = 0
        watch.shadow_checks.clear()
        watch.shadows.clear()
        watch.shadowed = 0

    def _checked(self, watch: _ReuseWatch, seq: int, result: dict[str, Any]) -> None:
        """The model's answer to a probe: a check of the stream's reuses, and perhaps a new level."""
        would = watch.probes.pop(seq)
        count = result.get("count")
        if result.get("decision") != "infer" or type(count) is not int:
            return
        miss = count != would
        stats = self.check_stats
        stats.checked += 1
        stats.misses += miss
        watch.checks.append(miss)
        if len(watch.checks) > self.CHECK_WINDOW:
            watch.checks.popleft()
        misses, checks = sum(watch.checks), len(watch.checks)
        low, _ = wilson_interval(misses, checks, self.CHECK_Z)
        share = watch.share()
        if checks >= self.CHECK_MIN and low * share > self.budget and watch.level < self.CHECK_LEVELS:
            watch.level += 1
            stats.tightened += 1
        elif checks >= self.CHECK_WINDOW and misses / checks * share < self.budget / 2 and watch.level > 0:
            watch.level -= 1
            stats.relaxed += 1
        else:
            return
        self._new_level(watch)

    @property
    def target_dependent(self) -> bool:
        return self.check > 0             # the self-check's budget is 1 - target

    @property
    def budget(self) -> float:
        """The share of frames the reuses may get wrong: 1 - the target the threshold was picked for."""
        return 1.0 - self.target if self.target is not None else self.DEFAULT_BUDGET

    def _lowered(self, level: int) -> float:
        """The threshold at a self-check level; at the last level the stream's frames are still
        looked up at the level before, but every would-reuse goes to the model (reuse is off)."""
        return self.threshold * self.CHECK_FACTOR ** min(level, self.CHECK_LEVELS - 1)

    def threshold_of(self, stream: str) -> float:
        """The threshold the stream reuses at now: the calibrated one, lower after the self-check
        found its reuses too often wrong, 0 where it turned reuse off."""
        watch = self._watches.get(stream) if self.check else None
        if watch is None:
            return self.threshold
        return 0.0 if watch.level >= self.CHECK_LEVELS else self._lowered(watch.level)

    def feedback(self, stream: str, seq: int, result: dict[str, Any]) -> None:
        if self.cache is not None:
            self.cache.feedback(stream, seq, result)
        watch = self._watches.get(stream) if self.check else None
        if watch is not None and seq in watch.probes:
            self._checked(watch, seq, result)
        elif watch is not None and seq in watch.shadows:
            self._shadow_checked(watch, seq, result)

    def end_stream(self, stream: str) -> None:
        self._watches.pop(stream, None)
        if self.cache is not None:
            self.cache.end_stream(stream)
