"""The reorder buffer: order restored, gaps waited for within bounds, late items handed out."""

from __future__ import annotations

import pytest

from stages.reorder import ReorderBuffer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def push_all(buffer: ReorderBuffer, seqs: list[int]) -> list[tuple[int, bool]]:
    out = []
    for seq in seqs:
        out += [(s, late) for s, _, late in buffer.push(seq, f"item{seq}")]
    return out


@pytest.mark.parametrize("arrivals", [
    [0, 1, 2, 3, 4],
    [1, 0, 3, 2, 4],
    [4, 3, 2, 1, 0],
    [2, 0, 4, 1, 3],
])
def test_any_arrival_order_comes_out_in_sequence(arrivals):
    buffer = ReorderBuffer(window=8, timeout_s=60)
    assert push_all(buffer, arrivals) == [(s, False) for s in range(5)]
    assert len(buffer) == 0 and buffer.skipped == 0


def test_a_gap_holds_items_until_its_timeout_then_moves_on():
    clock = FakeClock()
    buffer = ReorderBuffer(window=100, timeout_s=2.0, clock=clock)
    assert push_all(buffer, [0, 2, 3]) == [(0, False)]
    clock.now = 1.9
    assert list(buffer.poll()) == []
    clock.now = 2.0
    assert [(s, late) for s, _, late in buffer.poll()] == [(2, False), (3, False)]
    assert buffer.skipped == 1 and buffer.gave_up == 1
    # The missing item turns up after all: handed out at once, marked late.
    assert push_all(buffer, [1]) == [(1, True)]


def test_a_full_window_moves_on_without_waiting():
    buffer = ReorderBuffer(window=3, timeout_s=1e9)
    assert push_all(buffer, [1, 2, 3]) == []
    assert push_all(buffer, [4]) == [(1, False), (2, False), (3, False), (4, False)]
    assert buffer.skipped == 1 and buffer.gave_up == 1


def test_flush_releases_everything_across_gaps():
    buffer = ReorderBuffer(window=100, timeout_s=1e9)
    push_all(buffer, [0, 3, 5])
    assert [s for s, _, _ in buffer.flush()] == [3, 5]
    assert buffer.skipped == 3 and buffer.gave_up == 0   # the stream ended: nothing was waited for


def test_a_duplicate_is_refused():
    buffer = ReorderBuffer()
    push_all(buffer, [2])
    with pytest.raises(ValueError, match="twice"):
        push_all(buffer, [2])


@pytest.mark.parametrize("window, timeout", [(0, 1.0), (4, -1.0)])
def test_bad_bounds_are_refused(window, timeout):
    with pytest.raises(ValueError):
        ReorderBuffer(window=window, timeout_s=timeout)


def test_a_gap_the_source_declared_is_not_waited_for():
    clock = FakeClock()
    buffer = ReorderBuffer(window=100, timeout_s=5.0, clock=clock)
    # seq 3 says: nothing was sent after seq 0 (1 and 2 were dropped by a live source).
    assert [(s, late) for s, _, late in buffer.push(3, "c", prev_seq=0)] == []
    assert [(s, late) for s, _, late in buffer.push(0, "a")] == [(0, False), (3, False)]
    assert buffer.skipped == 2 and buffer.gave_up == 0
    # A declared gap out of order behind an undeclared one: the first waits, the second not.
    assert push_all(buffer, [5]) == []
    assert [s for s, _, _ in buffer.push(8, "x", prev_seq=5)] == []
    clock.now = 5.0
    assert [s for s, _, _ in buffer.poll()] == [5, 8]
    assert buffer.gave_up == 1
