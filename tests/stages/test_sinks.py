"""StatsPrinter: every input accounted for, with memory bounded however many streams it sees."""

from __future__ import annotations

import tracemalloc

from pipeline.message import Message, eos
from stages.sinks import StatsPrinter


def feed(sink: StatsPrinter, stream: str, count: int, start: int = 0) -> None:
    for seq in range(start, start + count):
        sink.process(Message("video", stream, seq, pts=seq / 10))


def test_state_stays_bounded_with_a_hundred_thousand_stream_names():
    """Names that never end (a fuzzer, a misbehaving producer) used to keep a tally each
    (~1.25 KiB: 100k names took 125 MiB); now the open tallies and the counts remembered for
    evicted streams are capped, the memory stops growing, and the totals still count every input."""
    sink = StatsPrinter(max_open_streams=100)
    for index in range(5_000):              # fill every bounded structure first
        feed(sink, f"warm-{index}", 1)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for index in range(100_000):
            feed(sink, f"name-{index}", 1)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(sink.open) == 100 and len(sink._evicted) == 1_000
    assert after - before < 512 * 1024, f"grew by {(after - before) / 2**20:.1f} MiB"
    assert sink.totals["evicted"] == 105_000 - 100
    summary = sink.summary()
    in_open_and_evicted = sum(t.received for t in sink.open.values()) + sum(sink._evicted.values())
    assert summary["totals"]["received"] + in_open_and_evicted == 105_000


def test_an_evicted_stream_resumes_and_ends_with_its_full_count():
    sink = StatsPrinter(max_open_streams=2)
    feed(sink, "a", 5)
    feed(sink, "b", 1)
    feed(sink, "c", 1)                       # evicts a (least recently seen)
    assert "a" not in sink.open and sink.totals["evicted"] == 1
    feed(sink, "a", 3, start=5)              # a comes back: evicts b, resumes from 5
    sink.end_of_stream(eos("a", 8))
    sink.end_of_stream(eos("b", 2))          # b ends while evicted: its 1 input is remembered
    rows = {row["stream"]: row for row in sink.summary()["streams"]}
    assert (rows["a"]["received"], rows["a"]["lost"]) == (8, 0)
    assert (rows["b"]["received"], rows["b"]["lost"]) == (1, 1)
    assert sink.totals["lost_unknown"] == 0


def test_a_stream_whose_count_was_forgotten_ends_with_an_unknown_loss_not_a_made_up_one():
    sink = StatsPrinter(max_open_streams=1)
    feed(sink, "x", 4)
    for index in range(20):                  # evicts x, then forgets its count (cap 10 x 1)
        feed(sink, f"n{index}", 1)
    sink.end_of_stream(eos("x", 4))
    row = next(row for row in sink.summary()["streams"] if row["stream"] == "x")
    assert row["received"] is None and row["lost"] is None
    assert sink.totals["lost_unknown"] == 1 and sink.totals["lost"] == 0
    assert sink.totals["received"] >= 4      # its inputs still count as received
