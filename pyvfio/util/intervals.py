"""A sorted index of intervals by start, for memslots, DMA mappings and IOAS areas."""

from __future__ import annotations

import bisect
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class SortedIndex(Generic[T]):
    """Items sorted by an integer start, kept in chunks, so insert and remove cost O(sqrt n)
    instead of a memmove of one long list (32,764 memslots, thousands of DMA mappings).

    Answers "the items starting below X, nearest first" (:meth:`below`) and "the items starting
    in [X, Y), in order" (:meth:`ascending`); for disjoint intervals (memslots, DMA mappings, IOAS
    areas) :meth:`containing` and :meth:`overlapping` follow, given each item's end. Starts may
    repeat; items are told apart by identity. Not thread-safe: the owner holds its lock.

    >>> ix = SortedIndex()
    >>> for start in (0x3000, 0x1000, 0x2000):
    ...     ix.insert(start, hex(start))
    >>> list(ix.below(0x2800)), list(ix.ascending(0x1800)), len(ix)
    (['0x2000', '0x1000'], ['0x2000', '0x3000'], 3)
    >>> ends = {"0x1000": 0x1800, "0x2000": 0x3000, "0x3000": 0x3001}
    >>> ix.containing(0x17ff, ends.get), ix.containing(0x1800, ends.get)
    ('0x1000', None)
    >>> ix.overlapping(0x1400, 0x3000, ends.get)
    ['0x1000', '0x2000']
    """

    LOAD = 512

    def __init__(self) -> None:
        self._starts: list[list[int]] = []
        self._slots: list[list[T]] = []
        self._mins: list[int] = []

    def __len__(self) -> int:
        return sum(len(c) for c in self._starts)

    def _chunk(self, start: int) -> int:
        return max(0, bisect.bisect_right(self._mins, start) - 1)

    def insert(self, start: int, s: T) -> None:
        """Add ``s`` at ``start`` (after any item with the same start)."""
        if not self._starts:
            self._starts.append([start])
            self._slots.append([s])
            self._mins.append(start)
            return
        c = self._chunk(start)
        starts = self._starts[c]
        i = bisect.bisect_left(starts, start)
        starts.insert(i, start)
        self._slots[c].insert(i, s)
        self._mins[c] = starts[0]
        if len(starts) > 2 * self.LOAD:
            self._starts[c + 1:c + 1] = [starts[self.LOAD:]]
            self._slots[c + 1:c + 1] = [self._slots[c][self.LOAD:]]
            del starts[self.LOAD:]
            del self._slots[c][self.LOAD:]
            self._mins.insert(c + 1, self._starts[c + 1][0])

    def remove(self, start: int, s: T) -> None:
        """Remove the item ``s`` inserted at ``start`` (ValueError if absent)."""
        c = self._chunk(start)
        starts, slots = self._starts[c], self._slots[c]
        i = bisect.bisect_left(starts, start)
        while i < len(slots) and slots[i] is not s:
            i += 1
        if i == len(slots):
            raise ValueError(f"no such item at {start:#x}")
        del starts[i]
        del slots[i]
        if starts:
            self._mins[c] = starts[0]
        else:
            del self._starts[c], self._slots[c], self._mins[c]

    def below(self, end: int) -> Iterator[T]:
        """Items whose start is < ``end``, highest start first."""
        c = bisect.bisect_left(self._mins, end) - 1
        if c < 0:
            return
        i = bisect.bisect_left(self._starts[c], end) - 1
        while c >= 0:
            slots = self._slots[c]
            while i >= 0:
                yield slots[i]
                i -= 1
            c -= 1
            if c >= 0:
                i = len(self._slots[c]) - 1

    def ascending(self, lo: int, hi: int | None = None) -> Iterator[T]:
        """Items whose start is >= ``lo`` (and < ``hi``), lowest start first."""
        if not self._starts:
            return
        c = max(0, bisect.bisect_left(self._mins, lo) - 1)
        i = bisect.bisect_left(self._starts[c], lo)
        while c < len(self._starts):
            starts, slots = self._starts[c], self._slots[c]
            while i < len(starts):
                if hi is not None and starts[i] >= hi:
                    return
                yield slots[i]
                i += 1
            c += 1
            i = 0

    def containing(self, point: int, end_of: Callable[[T], int]) -> T | None:
        """Of disjoint intervals, the one holding ``point`` (``end_of`` gives an item's end)."""
        nearest = next(self.below(point + 1), None)
        if nearest is not None and end_of(nearest) > point:
            return nearest
        return None

    def overlapping(self, start: int, end: int, end_of: Callable[[T], int]) -> list[T]:
        """Of disjoint intervals, those meeting [start, end), in order."""
        out = []
        before = next(self.below(start), None)
        if before is not None and end_of(before) > start:
            out.append(before)
        out.extend(self.ascending(start, end))
        return out

    def __iter__(self) -> Iterator[T]:
        for chunk in self._slots:
            yield from chunk


__all__ = ["SortedIndex"]
