"""DMA memory: page-aligned buffers, and a mapper that places them in IOVA space once.

* :class:`DmaBuffer` — anonymous memory for DMA: 2 MiB aligned with ``MADV_HUGEPAGE`` by default
  (transparent huge pages: fewer IOMMU entries and pins), or hugetlbfs pages
  (``hugepages="hugetlbfs"``, MAP_HUGETLB), prefaulted. Readable/writable from Python through
  ``view`` (a memoryview), ``read``/``write``, or ``numpy()``.
* :class:`DmaMapper` — maps buffers through an IOMMU (type1) at IOVAs chosen by an
  :class:`~pyvfio.services.iova.IovaAllocator` built from the IOMMU's reported ranges, and keeps a
  mapping cache: mapping the same buffer (same span and access) again returns the live mapping.

Safety: a buffer must outlive every DMA mapping of it. A mapping holds a reference to its
buffer, and ``DmaBuffer.close()`` while mapped only closes Python access: the memory is returned
when the last mapping goes, so memory the device can reach is never freed behind its back. Views obtained from ``view``/``numpy()`` must not be
used after ``close()``.

Example (mock)::

    >>> from pyvfio.seam.mock import MockBackend
    >>> from pyvfio.vfio import Container, Group
    >>> with Container(backend=MockBackend()) as c:
    ...     _ = c.attach(Group(3, backend=c.backend))
    ...     mapper = DmaMapper(c.set_iommu())
    ...     buf = DmaBuffer(8192)
    ...     m = mapper.map(buf)
    ...     (hex(m.iova), mapper.map(buf) is m)
    ('0x100000', True)
"""

from __future__ import annotations

import errno
import mmap as _mmap
import operator
import threading
from typing import Any

import numpy as np

from ..core.buffer import buffer_span
from ..core.memory import HostMemory
from ..errors import ArgumentError, RangeError, StateError
from ..seam import Backend, get_backend
from ..uapi import ffi, lib
from ..uapi.args import as_int
from .iova import IovaAllocator

__all__ = ["DmaBuffer", "DmaMapper", "PAGE_SIZE", "HUGE_2M"]

PAGE_SIZE = _mmap.PAGESIZE
HUGE_2M = 2 << 20
MAP_HUGETLB = 0x40000
MAP_HUGE_SHIFT = 26
MAP_POPULATE = getattr(_mmap, "MAP_POPULATE", 0x8000)
MADV_HUGEPAGE = getattr(_mmap, "MADV_HUGEPAGE", 14)


def _round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


class DmaBuffer(HostMemory):
    """Anonymous, page-aligned memory for DMA.

    ``size`` is rounded up to the page size (the huge page size for hugetlbfs).
    ``hugepages``: ``"thp"`` (default: 2 MiB aligned + MADV_HUGEPAGE), ``"hugetlbfs"``
    (MAP_HUGETLB pages of ``hugepage_size``; ENOMEM when none are reserved) or ``None``
    (plain pages, page aligned). ``align`` overrides the alignment (a power of two).
    The memory is prefaulted (MAP_POPULATE) so pinning does not page-fault.

    The memory's owner is :class:`~pyvfio.core.memory.HostMemory`: it is unmapped once, by
    ``close()`` (or by the last unmap after it) or, as the last resort, by a finalizer.

    Threads: ``close()`` and the mapping bookkeeping (``_pin``/``_unpin``, called by the IOMMU
    objects from any thread) are serialised by a lock; ``view``/``read``/``write``/``fill`` are
    not synchronised and must not race with ``close()``.
    """

    def __init__(self, size: int, *, hugepages: str | None = "thp", hugepage_size: int = HUGE_2M,
                 align: int | None = None, backend: Backend | str | None = None) -> None:
        size = as_int(size, "size")
        if not 0 < size < 1 << 63:
            raise RangeError(f"size must be positive and below 2**63, not {size}")
        hugepage_size = as_int(hugepage_size, "hugepage_size")
        if align is not None:
            align = as_int(align, "align")
        if hugepages not in ("thp", "hugetlbfs", None):
            raise ArgumentError(f"hugepages must be 'thp', 'hugetlbfs' or None, not {hugepages!r}")
        self.backend = get_backend(backend)
        self.hugepages = hugepages
        self._lock = threading.Lock()
        self._mappings: list[Any] = []
        self._close_pending = False
        prot = _mmap.PROT_READ | _mmap.PROT_WRITE
        flags = _mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS | MAP_POPULATE
        if hugepages == "hugetlbfs":
            if hugepage_size <= 0 or hugepage_size & (hugepage_size - 1):
                raise ArgumentError(f"hugepage_size must be a power of two, not {hugepage_size:#x}")
            self.size = _round_up(size, hugepage_size)
            shift = hugepage_size.bit_length() - 1
            try:
                self.addr = self.backend.mmap(self.size, prot, flags | MAP_HUGETLB | (shift << MAP_HUGE_SHIFT))
            except OSError as e:
                if e.errno == errno.ENOMEM:
                    e.hint = (f"no free {hugepage_size >> 10} KiB huge pages: reserve some, e.g. "  # type: ignore[attr-defined]
                              f"echo 64 > /sys/kernel/mm/hugepages/hugepages-{hugepage_size >> 10}kB/nr_hugepages")
                raise
            self._span = (self.addr, self.size)
        else:
            self.size = _round_up(size, PAGE_SIZE)
            alignment = align if align is not None else (HUGE_2M if hugepages == "thp" else PAGE_SIZE)
            if alignment & (alignment - 1) or not PAGE_SIZE <= alignment < 1 << 62:
                raise ArgumentError(f"align must be a power of two >= {PAGE_SIZE}, not {alignment:#x}")
            if alignment == PAGE_SIZE:
                self.addr = self.backend.mmap(self.size, prot, flags)
            else:
                # reserve without populating, keep the aligned window, give back the rest
                raw_len = self.size + alignment
                raw = self.backend.mmap(raw_len, prot, _mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS)
                start = _round_up(raw, alignment)
                try:
                    if start > raw:
                        self.backend.munmap(raw, start - raw)
                    tail = raw + raw_len - (start + self.size)
                    if tail:
                        self.backend.munmap(start + self.size, tail)
                except BaseException:
                    # give the whole reservation back (munmap of already unmapped parts is fine)
                    try:
                        self.backend.munmap(raw, raw_len)
                    except OSError:
                        pass
                    raise
                self.addr = start
                if hugepages == "thp":
                    lib.madvise(ffi.cast("void *", self.addr), self.size, MADV_HUGEPAGE)
                # prefault (MAP_POPULATE was not possible on the reservation)
                lib.memset(ffi.cast("void *", self.addr), 0, self.size)
            self._span = (self.addr, self.size)
        # the owner from here on: unmapped once (close, last unpin, or the finalizer at exit)
        super().__init__(self.addr, self.size, backend=self.backend)
        self._cbuf = ffi.buffer(ffi.cast("char *", self.addr), self.size)

    # -- access ----------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.closed:
            raise StateError("DmaBuffer is closed")

    @property
    def closed(self) -> bool:
        return self._close_pending or self._gone[0]

    @property
    def view(self) -> memoryview:
        """A writable memoryview of the whole buffer (do not use after close())."""
        self._check()
        return memoryview(self._cbuf)

    def numpy(self, dtype: Any = "uint8") -> Any:
        """The buffer as a numpy array (shares the memory; do not use after close())."""
        self._check()
        return np.frombuffer(self._cbuf, dtype=dtype)

    def read(self, offset: int = 0, size: int | None = None) -> bytes:
        self._check()
        n = self.size - offset if size is None else size
        if offset < 0 or n < 0 or offset + n > self.size:
            raise RangeError(f"read {offset:#x}+{n:#x} outside the buffer (size {self.size:#x})")
        return bytes(self._cbuf[offset:offset + n])

    def write(self, offset: int, data: bytes) -> None:
        self._check()
        if offset < 0 or offset + len(data) > self.size:
            raise RangeError(f"write {offset:#x}+{len(data):#x} outside the buffer (size {self.size:#x})")
        self._cbuf[offset:offset + len(data)] = data

    def fill(self, byte: int = 0) -> None:
        """Set every byte of the buffer to ``byte`` (0..255; ints and numpy ints).

        Raises ArgumentError for a non-integer and RangeError outside 0..255, before writing
        (memset would keep only the low 8 bits: 300 would write 0x2c, -1 0xff).
        """
        self._check()
        if isinstance(byte, bool):
            raise ArgumentError(f"fill byte must be an integer 0..255, not {byte!r}")
        try:
            byte = operator.index(byte)
        except TypeError:
            raise ArgumentError(f"fill byte must be an integer 0..255, not {byte!r}") from None
        if not 0 <= byte <= 0xff:
            raise RangeError(f"fill byte {byte} is outside 0..255")
        lib.memset(ffi.cast("void *", self.addr), byte, self.size)

    # -- mapping bookkeeping (called by the IOMMU objects) ---------------------------------------
    def _pin(self, mapping: Any) -> None:
        with self._lock:
            if self._close_pending or self._gone[0]:
                raise StateError("DmaBuffer is closed")
            self._mappings.append(mapping)

    def _unpin(self, mapping: Any) -> None:
        with self._lock:
            try:
                self._mappings.remove(mapping)
            except ValueError:  # not pinned (already let go)
                pass
            if self._close_pending and not self._mappings and not self._gone[0]:
                self._release()

    @property
    def mappings(self) -> tuple[Any, ...]:
        """Live DMA mappings of this buffer."""
        return tuple(self._mappings)

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Return the memory (idempotent). While DMA mappings of it exist the memory stays
        until the last one is unmapped (the buffer is closed for Python access at once)."""
        with self._lock:
            self._close_pending = True
            if not self._mappings and not self._gone[0]:
                self._release()

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"addr={self.addr:#x}"
        return f"<DmaBuffer {state} size={self.size:#x} {self.hugepages or 'small pages'}>"


class DmaMapper:
    """Map buffers through ``iommu`` at allocated IOVAs, each (buffer span, access) once.

    ``allocator``: an IovaAllocator (default: one over ``iommu.info().iova_ranges`` with the
    IOMMU's smallest page size). ``limit``: the device's DMA reach (e.g. ``1 << 28`` for edu);
    every IOVA handed out ends at or below it.

    Threads: one mapper may be shared. ``map``, ``lookup``, ``unmap_all`` and the unmap of its
    mappings (from any thread, through the mapping or the IOMMU) may run concurrently: the
    cache and the allocator change under one lock, so a span is mapped once and an IOVA block
    is handed out once. The IOMMU's own rules apply underneath (type1 and IOAS: concurrent
    map/unmap of distinct IOVAs; see their docstrings).
    """

    def __init__(self, iommu: Any, *, allocator: IovaAllocator | None = None,
                 limit: int | None = None) -> None:
        self.iommu = iommu
        if allocator is None:
            info = iommu.info()
            allocator = IovaAllocator(info.iova_ranges, pgsize=info.min_pgsize)
        self.allocator = allocator
        self.limit = limit
        self._cache: dict[tuple[int, int, bool, bool], Any] = {}
        self._lock = threading.RLock()  # re-entrant: an unmap inside map() calls _released

    def map(self, buffer: Any, *, size: int | None = None, offset: int = 0, read: bool = True,
            write: bool = True, align: int | None = None) -> Any:
        """The live mapping of ``buffer`` (whole, or ``size`` bytes at ``offset``) with this
        access, mapping it at a fresh IOVA the first time. Returns a DmaMapping.

        ``align`` (a power of two): the IOVA's alignment; ArgumentError when the span is
        already mapped at an IOVA that does not have it (before any syscall).
        """
        addr, n = buffer_span(buffer, size, offset)
        if align is not None:
            align = as_int(align, "align")
        key = (addr, n, read, write)
        with self._lock:
            m = self._cache.get(key)
            if m is not None and not m.closed:
                if align is not None and (align <= 0 or m.iova % align):
                    raise ArgumentError(f"this span is already mapped at {m.iova:#x}, which is not "
                                        f"aligned to {align:#x}: unmap it first to map it aligned")
                return m
            iova = self.allocator.alloc(n, align=align, limit=self.limit)
            try:
                m = self.iommu.map(buffer, iova, size=n, offset=as_int(offset, "offset"), read=read,
                                   write=write)
            except BaseException:
                self.allocator.free(iova)
                raise
            self._cache[key] = m
            m.on_unmap(lambda mm, k=key, a=iova: self._released(k, a, mm))
            return m

    def _released(self, key: tuple[int, int, bool, bool], iova: int, mapping: Any) -> None:
        with self._lock:  # check-and-delete must not interleave with a map() of the same span
            if self._cache.get(key) is mapping:
                del self._cache[key]
            self.allocator.free(iova)

    def lookup(self, buffer: Any, *, read: bool = True, write: bool = True) -> Any | None:
        """The cached live mapping of the whole ``buffer`` with this access, if any."""
        with self._lock:
            m = self._cache.get((int(buffer.addr), int(buffer.size), read, write))
        return m if m is not None and not m.closed else None

    def unmap_all(self) -> None:
        """Unmap every mapping this mapper made."""
        errors: list[BaseException] = []
        with self._lock:
            live = list(self._cache.values())
        for m in live:
            try:
                m.unmap()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]

    def __len__(self) -> int:
        return len(self._cache)

    def __repr__(self) -> str:
        return f"<DmaMapper mappings={len(self._cache)} {self.allocator!r}>"
