"""DMA memory: page-aligned buffers, and a mapper that places them in IOVA space once.

* :class:`DmaBuffer` — anonymous memory for DMA: 2 MiB aligned with ``MADV_HUGEPAGE`` by default
  (transparent huge pages: fewer IOMMU entries and pins), or hugetlbfs pages
  (``hugepages="hugetlbfs"``, MAP_HUGETLB), prefaulted. Readable/writable from Python through
  ``view`` (a memoryview), ``read``/``write``, or ``numpy()``. ``DmaBuffer.from_memfd`` gives
  shared memory of a memfd instead, which ``alias()`` maps again at a second address (what
  ``update_vaddr``'s same-memory contract needs). ``backing()`` says what really backs a buffer
  (hugetlbfs, THP or small pages: /proc/self/smaps), since THP is a request, not a promise.
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
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.buffer import buffer_span
from ..core.memory import HostMemory, memfd_create
from ..errors import ArgumentError, RangeError, StateError
from ..seam import Backend, get_backend
from ..uapi import ffi, lib
from ..uapi.args import as_int
from .iova import IovaAllocator, page_alignment

__all__ = ["DmaBuffer", "DmaMapper", "Backing", "PAGE_SIZE", "HUGE_2M"]

PAGE_SIZE = _mmap.PAGESIZE
HUGE_2M = 2 << 20
MAP_HUGETLB = 0x40000
MAP_HUGE_SHIFT = 26
MAP_POPULATE = getattr(_mmap, "MAP_POPULATE", 0x8000)
MADV_HUGEPAGE = getattr(_mmap, "MADV_HUGEPAGE", 14)


def _round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _check_hugepage_size(hugepage_size: int) -> int:
    if hugepage_size <= 0 or hugepage_size & (hugepage_size - 1):
        raise ArgumentError(f"hugepage_size must be a power of two, not {hugepage_size:#x}")
    return hugepage_size


def _hugetlb_hint(hugepage_size: int) -> str:
    kb = hugepage_size >> 10
    return (f"no free {kb} KiB huge pages: reserve some, e.g. "
            f"echo 64 > /sys/kernel/mm/hugepages/hugepages-{kb}kB/nr_hugepages")


@dataclass(frozen=True)
class Backing:
    """What backs a range of memory (``DmaBuffer.backing()``), read from ``/proc/self/smaps``.

    ``page_size``: the kernel page size of the range (KernelPageSize: 4096, or the hugetlbfs
    page size); ``huge_bytes``: bytes on huge pages (hugetlbfs pages, or THP: AnonHugePages,
    ShmemPmdMapped, FilePmdMapped); ``kind``: ``"hugetlbfs"``, ``"thp"`` (some or all of it on
    THP) or ``"small"``; ``exact``: the VMAs lie inside the range (False when the kernel merged
    the buffer's VMA with a neighbour's: the THP count may then include the neighbour's, and
    ``huge_bytes`` is capped at ``size``).
    """

    size: int
    page_size: int
    huge_bytes: int
    kind: str
    exact: bool = True

    @property
    def huge(self) -> bool:
        """Every byte is on huge pages (what a 2 MiB IOMMU leaf needs)."""
        return self.huge_bytes >= self.size > 0

    @property
    def largest_page(self) -> int:
        """The largest page backing the range: the hugetlbfs page size, 2 MiB for THP, else
        ``page_size``."""
        if self.kind == "thp":
            return max(self.page_size, HUGE_2M)
        return self.page_size

    @classmethod
    def of(cls, areas: list[Any], addr: int, size: int) -> "Backing":
        """Summarise the smaps areas (:class:`pyvfio.util.proc.VmArea`) overlapping
        ``[addr, addr+size)``."""
        if not areas:
            return cls(size, PAGE_SIZE, 0, "small", exact=False)
        exact = areas[0].start >= addr and areas[-1].end <= addr + size
        page = max(a.fields.get("KernelPageSize", PAGE_SIZE) for a in areas)
        hugetlb = sum(a.fields.get("Private_Hugetlb", 0) + a.fields.get("Shared_Hugetlb", 0)
                      for a in areas)
        thp = sum(a.fields.get("AnonHugePages", 0) + a.fields.get("ShmemPmdMapped", 0)
                  + a.fields.get("FilePmdMapped", 0) for a in areas)
        if page > PAGE_SIZE or hugetlb:
            return cls(size, page, min(hugetlb, size), "hugetlbfs", exact)
        if thp:
            return cls(size, page, min(thp, size), "thp", exact)
        return cls(size, page, 0, "small", exact)


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
        self._prepare(get_backend(backend), hugepages)
        prot = _mmap.PROT_READ | _mmap.PROT_WRITE
        flags = _mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS | MAP_POPULATE
        if hugepages == "hugetlbfs":
            _check_hugepage_size(hugepage_size)
            self.size = _round_up(size, hugepage_size)
            shift = hugepage_size.bit_length() - 1
            try:
                self.addr = self.backend.mmap(self.size, prot, flags | MAP_HUGETLB | (shift << MAP_HUGE_SHIFT))
            except OSError as e:
                if e.errno == errno.ENOMEM:
                    e.hint = _hugetlb_hint(hugepage_size)  # type: ignore[attr-defined]
                raise
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
        self._own(self.addr, self.size)

    def _prepare(self, backend: Backend, hugepages: str | None) -> None:
        self.backend = backend
        self.hugepages = hugepages
        self._lock = threading.Lock()
        self._mappings: list[Any] = []
        self._close_pending = False
        #: The backing file's offset of the first byte (a memfd-backed buffer; 0 otherwise).
        self.file_offset = 0

    def _own(self, addr: int, size: int, fd: int = -1) -> None:
        self.addr, self.size = addr, size
        self._span = (addr, size)
        # the owner from here on: unmapped once (close, last unpin, or the finalizer at exit),
        # and its memfd closed then
        HostMemory.__init__(self, addr, size, backend=self.backend, fd=fd)
        self._cbuf = ffi.buffer(ffi.cast("char *", addr), size)

    # -- shared memory: a memfd, mappable at a second address ---------------------------------
    @classmethod
    def from_memfd(cls, size: int, *, hugepages: str | None = None, hugepage_size: int = HUGE_2M,
                   name: str = "pyvfio-dma", backend: Backend | str | None = None) -> "DmaBuffer":
        """Shared memory of a fresh memfd (memfd_create + ftruncate + mmap MAP_SHARED, prefaulted).

        Unlike anonymous memory it can be mapped again at another address (:meth:`alias`), or
        by another process through :attr:`fd`: what VFIO_DMA_MAP_FLAG_VADDR (``update_vaddr``,
        live update) needs, since the new address must reach the same memory object.
        ``hugepages="hugetlbfs"`` backs it with hugetlbfs pages of ``hugepage_size``
        (MFD_HUGETLB; the size is rounded up to it; ENOMEM when too few are reserved); None:
        shmem pages. The buffer owns the memfd and closes it with the memory.

        Example (mock)::

            >>> with DmaBuffer.from_memfd(4096) as a, a.alias() as b:
            ...     a.write(0, b"same")
            ...     (b.read(0, 4), a.addr != b.addr, a.shared)
            (b'same', True, True)
        """
        if size <= 0:
            raise RangeError(f"size must be positive, not {size}")
        if hugepages not in ("hugetlbfs", None):
            raise ArgumentError(f"memfd hugepages must be 'hugetlbfs' or None, not {hugepages!r}")
        page = _check_hugepage_size(hugepage_size) if hugepages else PAGE_SIZE
        size = _round_up(as_int(size, "size"), page)
        fd = memfd_create(name, size, huge_page_size=page if hugepages else None)
        try:
            buf = cls._map_fd(fd, size, 0, hugepages, get_backend(backend))
        except BaseException:
            os.close(fd)
            raise
        return buf

    @classmethod
    def from_fd(cls, fd: int, size: int, *, offset: int = 0, hugepages: str | None = None,
                backend: Backend | str | None = None) -> "DmaBuffer":
        """Map ``size`` bytes at ``offset`` of the shared-memory file ``fd`` (a memfd, a hugetlbfs
        or tmpfs file) MAP_SHARED|MAP_POPULATE. The buffer owns a duplicate of ``fd`` (the
        caller keeps its own). ``hugepages="hugetlbfs"`` records that hugetlbfs backs it."""
        fd, size, offset = as_int(fd, "fd"), as_int(size, "size"), as_int(offset, "offset")
        if size <= 0 or offset < 0 or offset % PAGE_SIZE:
            raise RangeError(f"size must be positive and offset page aligned, not {size:#x} at {offset:#x}")
        own = os.dup(fd)
        try:
            return cls._map_fd(own, size, offset, hugepages, get_backend(backend))
        except BaseException:
            os.close(own)
            raise

    @classmethod
    def _map_fd(cls, fd: int, size: int, offset: int, hugepages: str | None,
                backend: Backend) -> "DmaBuffer":
        self = cls.__new__(cls)
        self._prepare(backend, hugepages)
        try:
            addr = backend.mmap(size, _mmap.PROT_READ | _mmap.PROT_WRITE,
                                _mmap.MAP_SHARED | MAP_POPULATE, fd, offset)
        except OSError as e:
            if hugepages and e.errno == errno.ENOMEM:
                e.hint = _hugetlb_hint(HUGE_2M)  # type: ignore[attr-defined]
            raise
        self.file_offset = offset
        self._own(addr, size, fd)
        return self

    def alias(self) -> "DmaBuffer":
        """The same memory mapped a second time, at another address: a new DmaBuffer over a
        duplicate of this buffer's memfd, same file offset and size. Writes through either are
        seen through both. ArgumentError for anonymous buffers (no file to map again)."""
        self._check()
        if self.fd < 0:
            raise ArgumentError(f"{self!r} is anonymous memory: only a memfd-backed buffer "
                                "(DmaBuffer.from_memfd) can be mapped at a second address")
        return type(self).from_fd(self.fd, self.size, offset=self.file_offset,
                                  hugepages=self.hugepages, backend=self.backend)

    @property
    def shared(self) -> bool:
        """Backed by a shared-memory file (:attr:`fd`, a memfd) rather than anonymous memory."""
        return self.fd >= 0

    # -- what backs the memory ----------------------------------------------------------------
    def backing(self) -> "Backing":
        """What really backs the buffer now: hugetlbfs pages, transparent huge pages, or small
        pages (``/proc/self/smaps`` for the buffer's range, through ``backend.host``; the mock
        kernel DMAs into this process's own pages, so the mock answers the same way).

        THP is a request (MADV_HUGEPAGE), not a promise: the kernel gives small pages when it
        has no free 2 MiB block or THP is off (/sys/kernel/mm/transparent_hugepage/enabled).
        Check this before counting on 2 MiB IOMMU pages.

        Example (mock)::

            >>> with DmaBuffer(4096, hugepages=None) as b:
            ...     (b.backing().kind, b.backing().page_size, b.backing().huge)
            ('small', 4096, False)
        """
        self._check()
        return Backing.of(self.backend.host.vm_areas(self.addr, self.size, smaps=True),
                          self.addr, self.size)

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
        kind = self.hugepages or "small pages"
        return f"<DmaBuffer {state} size={self.size:#x} {kind}{' memfd' if self.fd >= 0 else ''}>"


class DmaMapper:
    """Map buffers through ``iommu`` at allocated IOVAs, each (buffer span, access) once.

    ``allocator``: an IovaAllocator (default: one over ``iommu.info().iova_ranges`` with the
    IOMMU's smallest page size). ``limit``: the device's DMA reach (e.g. ``1 << 28`` for edu);
    every IOVA handed out ends at or below it. IOVAs are aligned to the largest IOMMU page size
    the buffer can use (``iova_pgsizes`` of the IOMMU info: a 2 MiB-aligned 2 MiB buffer gets a
    2 MiB-aligned IOVA), unless ``map(align=)`` says otherwise.

    Threads: one mapper may be shared. ``map``, ``lookup``, ``unmap_all`` and the unmap of its
    mappings (from any thread, through the mapping or the IOMMU) may run concurrently: the
    cache and the allocator change under one lock, so a span is mapped once and an IOVA block
    is handed out once. The IOMMU's own rules apply underneath (type1 and IOAS: concurrent
    map/unmap of distinct IOVAs; see their docstrings).
    """

    def __init__(self, iommu: Any, *, allocator: IovaAllocator | None = None,
                 limit: int | None = None) -> None:
        self.iommu = iommu
        info: Any = iommu.info() if allocator is None or hasattr(iommu, "info") else None
        if allocator is None:
            allocator = IovaAllocator(info.iova_ranges, pgsize=info.min_pgsize)
        self.allocator = allocator
        #: IOMMU page sizes (bitmap) IOVAs are aligned for. A bitmap of the smallest page alone
        #: says nothing about huge pages (iommufd's VFIO compat container reports its IOVA
        #: alignment there, not the domain's page sizes): 2 MiB and 1 GiB are then assumed too,
        #: as for an iommufd IOAS; aligning for a size the IOMMU lacks costs only IOVA space.
        pgsizes = int(getattr(info, "iova_pgsizes", 0) or allocator.pgsize)
        if pgsizes & (pgsizes - 1) == 0:
            pgsizes |= HUGE_2M | (1 << 30)
        self.pgsizes = pgsizes
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
            if align is None:
                align = page_alignment(self.pgsizes, addr, n)
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
