"""util.intervals.SortedIndex against a plain sorted list, across chunk splits and merges."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from pyvfio.util.intervals import SortedIndex


class _Item:
    def __init__(self, start: int, length: int) -> None:
        self.start, self.end = start, start + length


def _end(it: _Item) -> int:
    return it.end


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 400)), max_size=300),
       st.integers(0, 420), st.integers(0, 60))
def test_matches_a_sorted_list(ops: list[tuple[bool, int]], probe: int, span: int) -> None:
    saved, SortedIndex.LOAD = SortedIndex.LOAD, 4  # tiny chunks: splits and empty chunks happen
    try:
        ix: SortedIndex[_Item] = SortedIndex()
        model: dict[int, _Item] = {}  # disjoint unit-spaced items: start -> item
        for add, at in ops:
            start = at * 8
            if add and start not in model:
                model[start] = _Item(start, 5)
                ix.insert(start, model[start])
            elif not add and start in model:
                ix.remove(start, model.pop(start))
        ordered = [model[k] for k in sorted(model)]
        assert list(ix) == ordered and len(ix) == len(ordered)
        lo, hi = probe * 8 - 3, probe * 8 - 3 + span
        assert list(ix.below(lo)) == [it for it in reversed(ordered) if it.start < lo]
        assert list(ix.ascending(lo, hi)) == [it for it in ordered if lo <= it.start < hi]
        assert ix.overlapping(lo, hi, _end) == [it for it in ordered if it.start < hi and it.end > lo]
        inside = [it for it in ordered if it.start <= lo < it.end]
        assert ix.containing(lo, _end) is (inside[0] if inside else None)
    finally:
        SortedIndex.LOAD = saved
