"""DMA mapping handles and the table an IOMMU keeps of them (type1, sPAPR, an iommufd IOAS).

Safety: while a mapping exists the device may read/write the mapped memory at any time; the
buffer must stay allocated and must not be reused for anything else until ``unmap()`` returns.
:class:`DmaMapping` enforces the first part by holding a reference to its buffer.
"""

from __future__ import annotations

import enum
from typing import Any

from .. import ioctls
from ..errors import ArgumentError, PyvfioError
from .buffer import unpin
from .fd import Closeable


class DmaFlags(enum.IntFlag):
    """Device-side access of a mapping (VFIO_DMA_MAP_FLAG_*)."""

    READ = ioctls.VFIO_DMA_MAP_FLAG_READ
    WRITE = ioctls.VFIO_DMA_MAP_FLAG_WRITE
    VADDR = ioctls.VFIO_DMA_MAP_FLAG_VADDR


class ShortUnmapError(PyvfioError):
    """An unmap (VFIO_IOMMU_UNMAP_DMA, IOMMU_IOAS_UNMAP) removed less than the mapping's size."""


class DmaMapping(Closeable):
    """One live DMA mapping: ``iova``, ``size``, ``vaddr``, ``flags`` and the ``buffer`` it
    keeps alive. ``unmap()`` (or leaving the ``with`` block) removes it; idempotent.

    ``iommu`` is the :class:`MappingTable` that made it. ``state`` is free for extensions
    (dirty tracking keeps per-mapping data there).

    Threads: ``unmap()`` once, from one thread; the attributes are read-only after creation
    (``update_vaddr`` rewrites ``buffer``/``vaddr`` and must not race with readers).

    After ``update_vaddr`` the earlier buffers stay pinned (:attr:`held`) until the mapping is
    gone: the kernel keeps the pages it pinned at map time, whatever address now names them.
    """

    __slots__ = ("iommu", "iova", "size", "vaddr", "flags", "buffer", "state", "_live",
                 "_on_unmap", "_held", "__weakref__")

    def __init__(self, iommu: "MappingTable", iova: int, size: int, vaddr: int, flags: DmaFlags,
                 buffer: Any) -> None:
        self.iommu = iommu
        self.iova = iova
        self.size = size
        self.vaddr = vaddr
        self.flags = flags
        self.buffer = buffer
        self.state: dict[str, Any] = {}
        self._live = True
        # () until the first callback: most mappings never get one (no list per map)
        self._on_unmap: list[Any] | tuple[()] = ()
        # buffers the mapping used before a vaddr update: the kernel still holds their pages
        # pinned, so they stay pinned here too until the mapping goes
        self._held: tuple[Any, ...] = ()

    def on_unmap(self, fn: Any) -> None:
        """Call ``fn(mapping)`` once the mapping is gone (the IOVA allocator frees its block)."""
        callbacks = self._on_unmap
        if isinstance(callbacks, list):
            callbacks.append(fn)
        else:
            self._on_unmap = [fn]

    @property
    def closed(self) -> bool:
        return not self._live

    @property
    def held(self) -> tuple[Any, ...]:
        """Buffers this mapping used before ``update_vaddr``, kept pinned until it is unmapped."""
        return self._held

    def unmap(self) -> None:
        if self._live:
            self.iommu.unmap(self)

    close = unmap


    def __repr__(self) -> str:
        state = "live" if self._live else "unmapped"
        return f"<DmaMapping iova={self.iova:#x} size={self.size:#x} {self.flags!r} {state}>"


def as_mapping(mapping: Any) -> "DmaMapping":
    """``mapping`` if it is a DmaMapping, else ArgumentError (what unmap() and friends take)."""
    if not isinstance(mapping, DmaMapping):
        raise ArgumentError(f"expected a DmaMapping (what map() returned), not {mapping!r}")
    return mapping


class MappingTable:
    """The pyvfio side of an IOMMU's DMA mappings (type1, sPAPR, an iommufd IOAS): the live
    :class:`DmaMapping` handles by IOVA, and how a handle is let go.

    Threads: the table is a plain dict; the owning IOMMU object documents which of its calls
    may run concurrently (dict updates of distinct IOVAs are atomic under the GIL).
    """

    mappings: dict[int, DmaMapping]

    def unmap(self, mapping: DmaMapping) -> None:  # pragma: no cover - every owner overrides it
        """Remove ``mapping`` from the kernel and from this table."""
        raise NotImplementedError

    def _forget(self, mapping: DmaMapping) -> None:
        """The kernel no longer maps ``mapping``: mark it dead, drop it from :attr:`mappings`,
        unpin its buffer, run its on_unmap callbacks (once)."""
        mapping._live = False
        mappings, iova = self.mappings, mapping.iova
        if mappings.get(iova) is mapping:
            del mappings[iova]
        unpin(mapping.buffer, mapping)
        held = mapping._held
        if held:
            mapping._held = ()
            for buffer in held:
                unpin(buffer, mapping)
        callbacks = mapping._on_unmap
        if callbacks:
            mapping._on_unmap = ()
            for fn in callbacks:
                fn(mapping)

    def find(self, iova: int) -> DmaMapping | None:
        """The pyvfio mapping containing ``iova``."""
        for m in self.mappings.values():
            if m.iova <= iova < m.iova + m.size:
                return m
        return None


__all__ = ["DmaFlags", "DmaMapping", "MappingTable", "ShortUnmapError", "as_mapping"]
