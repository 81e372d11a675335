"""IOVA allocation inside the ranges an IOMMU reports usable.

:class:`IovaAllocator` hands out page-aligned IOVA blocks first-fit from the lowest address,
only inside the given ranges (so reserved windows such as the x86 MSI range 0xfee00000-0xfeefffff
are never handed out), optionally below a device's DMA mask (edu: 28 bits).

Example::

    >>> from pyvfio.vfio.type1 import IovaRange
    >>> a = IovaAllocator([IovaRange(0, 0xfedfffff), IovaRange(0xfef00000, 0x7fffffffff)])
    >>> hex(a.alloc(0x2000))
    '0x100000'
    >>> a.alloc(0x1000, limit=1 << 28) < 1 << 28
    True
"""

from __future__ import annotations

import bisect
import threading
from typing import Any, Iterable

from ..errors import AlignmentError, OverlapError, RangeError
from ..uapi.args import as_int

__all__ = ["IovaAllocator", "IovaExhaustedError", "page_alignment"]


def page_alignment(pgsizes: int, vaddr: int, size: int) -> int:
    """The largest IOMMU page size (a bit of the ``pgsizes`` bitmap) a mapping of ``size``
    bytes at ``vaddr`` can use: at most ``size`` and dividing ``vaddr``. An IOVA aligned to it
    lets the IOMMU map the buffer with its largest pages. The smallest page when none fits.

    >>> hex(page_alignment(0x40201000, 0x7f0000200000, 2 << 20)), hex(page_alignment(0x40201000, 0x7f0000201000, 2 << 20))
    ('0x200000', '0x1000')
    """
    best = pgsizes & -pgsizes if pgsizes else 4096
    p = pgsizes
    while p:
        low = p & -p
        if low <= size and vaddr % low == 0:
            best = max(best, low)
        p &= p - 1
    return best


class IovaExhaustedError(RangeError):
    """No free IOVA block of the requested size (and alignment, below the limit)."""


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) & ~(a - 1)


class IovaAllocator:
    """First-fit allocator over usable IOVA ranges.

    ``ranges``: objects with ``start``/``end`` (inclusive) or (start, end) tuples.
    ``pgsize``: allocation granule (power of two). ``start``: lowest IOVA handed out (default
    1 MiB, keeping IOVA 0 and the low megabyte free so a stray null DMA address faults).
    Thread-safe.
    """

    def __init__(self, ranges: Iterable[Any], *, pgsize: int = 4096, start: int = 0x100000) -> None:
        if pgsize <= 0 or pgsize & (pgsize - 1):
            raise AlignmentError(f"pgsize must be a power of two, not {pgsize:#x}")
        self.pgsize = pgsize
        free: list[tuple[int, int]] = []  # [lo, hi) half-open, sorted, disjoint
        for r in ranges:
            lo, hi = (r.start, r.end) if hasattr(r, "start") else (r[0], r[1])
            lo = _align_up(max(lo, start), pgsize)
            hi = (hi + 1) & ~(pgsize - 1)
            if hi > lo:
                free.append((lo, hi))
        free.sort()
        self.ranges = tuple(free)
        self._free = free
        self._used: dict[int, int] = {}
        self._lock = threading.Lock()

    # -- queries ------------------------------------------------------------------------------
    def usable(self, iova: int, size: int) -> bool:
        """[iova, iova+size) lies inside one usable range."""
        return any(lo <= iova and iova + size <= hi for lo, hi in self.ranges)

    @property
    def allocated(self) -> dict[int, int]:
        return dict(self._used)

    def free_bytes(self) -> int:
        return sum(hi - lo for lo, hi in self._free)

    # -- allocation ------------------------------------------------------------------------------
    def alloc(self, size: int, *, align: int | None = None, limit: int | None = None) -> int:
        """A free block of ``size`` bytes (rounded up to pgsize) aligned to ``align`` (default
        pgsize; a power of two), ending at or below ``limit`` (a DMA mask + 1) when given."""
        size = as_int(size, "size")
        if size <= 0:
            raise RangeError(f"size must be positive, not {size}")
        size = _align_up(size, self.pgsize)
        if align is None:
            align = self.pgsize
        else:
            align = as_int(align, "align")
            if align <= 0 or align & (align - 1):
                raise AlignmentError(f"align must be a positive power of two, not {align:#x}")
            align = max(align, self.pgsize)
        if limit is not None:
            limit = as_int(limit, "limit")
        with self._lock:
            for i, (lo, hi) in enumerate(self._free):
                at = _align_up(lo, align)
                if at + size <= hi and (limit is None or at + size <= limit):
                    self._take(i, at, size)
                    return at
                if limit is not None and lo >= limit:
                    break
        raise IovaExhaustedError(f"no free IOVA block of {size:#x} bytes"
                                 + (f" below {limit:#x}" if limit is not None else "")
                                 + f" (free: {self.free_bytes():#x} bytes in {len(self._free)} pieces)")

    def reserve(self, iova: int, size: int) -> int:
        """Take the fixed block [iova, iova+size) (RangeError if not usable, OverlapError if
        already allocated)."""
        iova, size = as_int(iova, "iova"), as_int(size, "size")
        if iova & (self.pgsize - 1) or size <= 0:
            raise AlignmentError(f"IOVA {iova:#x} / size {size:#x} not aligned to {self.pgsize:#x}")
        size = _align_up(size, self.pgsize)
        if not self.usable(iova, size):
            raise RangeError(f"IOVA {iova:#x}+{size:#x} is outside the usable ranges")
        with self._lock:
            for i, (lo, hi) in enumerate(self._free):
                if lo <= iova and iova + size <= hi:
                    self._take(i, iova, size)
                    return iova
        raise OverlapError(f"IOVA {iova:#x}+{size:#x} overlaps an allocated block")

    def _take(self, i: int, at: int, size: int) -> None:
        lo, hi = self._free[i]
        pieces = [(a, b) for a, b in ((lo, at), (at + size, hi)) if b > a]
        self._free[i:i + 1] = pieces
        self._used[at] = size

    def free(self, iova: int) -> None:
        """Return the block allocated at ``iova`` (KeyError-free: RangeError if unknown)."""
        with self._lock:
            size = self._used.pop(iova, None)
            if size is None:
                raise RangeError(f"IOVA {iova:#x} was not allocated here")
            lo, hi = iova, iova + size
            i = bisect.bisect_left(self._free, (lo, hi))
            if i > 0 and self._free[i - 1][1] == lo:
                i -= 1
                lo = self._free[i][0]
                del self._free[i]
            if i < len(self._free) and self._free[i][0] == hi:
                hi = self._free[i][1]
                del self._free[i]
            self._free.insert(i, (lo, hi))

    def __repr__(self) -> str:
        return f"<IovaAllocator ranges={len(self.ranges)} used={len(self._used)} free={self.free_bytes():#x}>"
