"""IOVA ranges as the kernel reports them (type1 GET_INFO, iommufd IOVA_RANGES, sPAPR windows)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IovaRange:
    """A usable IOVA range, ``end`` inclusive (as the kernel reports it).

    >>> r = IovaRange(0x1000, 0x1fff)
    >>> (r.size, r.contains(0x1800, 0x800), r.contains(0x1800, 0x801))
    (4096, True, False)
    """

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def contains(self, iova: int, size: int = 1) -> bool:
        return self.start <= iova and iova + size - 1 <= self.end

    def __repr__(self) -> str:
        return f"IovaRange({self.start:#x}, {self.end:#x})"


__all__ = ["IovaRange"]
