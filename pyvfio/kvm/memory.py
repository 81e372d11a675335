"""Guest memory backings for memslots: anonymous, memfd, hugetlbfs, or a borrowed mapping.

A :class:`GuestMemory` is a host virtual address range that a memslot maps into the guest.
It owns its mapping (and memfd) unless it was built with :meth:`GuestMemory.from_address`, which
borrows an existing mapping -- such as an mmap'd VFIO region (device MMIO, the way QEMU maps a
BAR into the guest) -- and keeps its owner alive.

Safety: the guest reads and writes this memory behind Python's back for as long as a memslot
maps it; a MemSlot keeps its GuestMemory alive, and GuestMemory.close() refuses while slots use it.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

from ..core.buffer import buffer_span, pin, unpin
from ..core.memory import PAGE_SIZE, HostMemory, memfd_create
from ..errors import AlignmentError, ArgumentError, PyvfioError, RangeError, StateError
from ..seam import Backend, get_backend
from ..uapi import ffi
from ..uapi.args import as_int

#: The largest mapping user space can have (x86-64 user address space with 5-level paging).
_MAX_MAP = 1 << 56

#: mmap(2) MAP_NORESERVE (0x4000 on x86, arm64, powerpc; absent from the mmap module before 3.13).
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


class GuestMemory(HostMemory):
    """A page-aligned host mapping that memslots can map. Context manager; ``close()`` unmaps.

    The mapping's owner is :class:`~pyvfio.core.memory.HostMemory` (unmapped once; a finalizer
    is the last resort). ``users`` counts the memslots mapping it; ``close()`` refuses while
    there are any.

    Threads: not synchronised; ``read``/``write``/``buffer`` may run concurrently with each other
    (and with a guest), not with ``close()``. ``users`` is kept by the owning :class:`Vm`.
    """

    def __init__(self, addr: int, size: int, *, backend: Backend, kind: str, fd: int = -1,
                 owned: bool = True, owner: Any = None, page_size: int = PAGE_SIZE) -> None:
        super().__init__(addr, size, backend=backend, fd=fd, owned=owned)
        self.kind = kind
        self.page_size = page_size
        self._owner = owner  # keeps a borrowed mapping's owner alive
        self.users = 0       # memslots mapping this memory

    # -- factories -----------------------------------------------------------------------------
    @classmethod
    def anonymous(cls, size: int, *, noreserve: bool = False,
                  backend: Backend | str | None = None) -> "GuestMemory":
        """Private anonymous memory (mmap MAP_PRIVATE|MAP_ANONYMOUS[|MAP_NORESERVE])."""
        be = get_backend(backend)
        size = _check_size(size, PAGE_SIZE)
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (MAP_NORESERVE if noreserve else 0)
        addr = be.mmap(size, mmap.PROT_READ | mmap.PROT_WRITE, flags)
        return cls(addr, size, backend=be, kind="anonymous")

    @classmethod
    def memfd(cls, size: int, *, name: str = "pyvfio-guest", hugetlb: bool = False,
              huge_page_size: int = 2 << 20, backend: Backend | str | None = None) -> "GuestMemory":
        """Shared memory of a memfd (memfd_create + ftruncate + MAP_SHARED).

        ``hugetlb=True`` backs it with hugetlbfs pages of ``huge_page_size`` (MFD_HUGETLB); the
        size must be a multiple of that, and mmap fails with ENOMEM when too few huge pages are
        reserved (/proc/sys/vm/nr_hugepages).
        """
        be = get_backend(backend)
        page = huge_page_size if hugetlb else PAGE_SIZE
        size = _check_size(size, page)
        fd = memfd_create(name, size, huge_page_size=page if hugetlb else None)
        try:
            addr = be.mmap(size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        except PyvfioError as e:
            os.close(fd)
            if hugetlb and e.hint is None:
                e.hint = (f"not enough free {page >> 20} MiB huge pages: "
                          "reserve them with echo N > /proc/sys/vm/nr_hugepages")
            raise
        return cls(addr, size, backend=be, kind="hugetlbfs" if hugetlb else "memfd", fd=fd,
                   page_size=page)

    @classmethod
    def hugetlb(cls, size: int, *, huge_page_size: int = 2 << 20,
                backend: Backend | str | None = None) -> "GuestMemory":
        """hugetlbfs memory (a MFD_HUGETLB memfd): see :meth:`memfd`."""
        return cls.memfd(size, name="pyvfio-guest-huge", hugetlb=True, huge_page_size=huge_page_size,
                         backend=backend)

    @classmethod
    def from_address(cls, addr: int, size: int, *, owner: Any = None, kind: str = "borrowed",
                     backend: Backend | str | None = None) -> "GuestMemory":
        """Borrow an existing mapping (e.g. ``Device.mmap_region``); ``owner`` is kept alive."""
        if addr % PAGE_SIZE:
            raise AlignmentError(f"address {addr:#x} is not page aligned ({PAGE_SIZE})")
        size = _check_size(size, PAGE_SIZE)
        return cls(addr, size, backend=get_backend(backend), kind=kind, owned=False, owner=owner)

    @classmethod
    def borrow(cls, buffer: Any, *, backend: Backend | str | None = None) -> "GuestMemory":
        """Borrow a buffer object (``.addr``/``.size``: a DmaBuffer, a RegionMapping), kept alive
        and pinned (its ``_pin`` hook: a DmaBuffer defers its close) while memslots map it."""
        if isinstance(buffer, GuestMemory):
            return buffer
        addr, size = buffer_span(buffer, None, 0)
        return cls.from_address(addr, size, owner=buffer, kind=f"borrowed {type(buffer).__name__}",
                                backend=backend)

    def _use(self) -> None:
        """A memslot starts mapping this memory (the owning Vm calls it)."""
        if self.users == 0 and self._owner is not None:
            pin(self._owner, self)
        self.users += 1

    def _unuse(self) -> None:
        """A memslot stopped mapping this memory."""
        self.users -= 1
        if self.users == 0 and self._owner is not None:
            unpin(self._owner, self)

    # -- access ------------------------------------------------------------------------------
    def buffer(self) -> Any:
        """A writable cffi buffer over the whole mapping (no copy)."""
        self._check_open()
        return ffi.buffer(ffi.cast("char *", self.addr), self.size)

    def read(self, offset: int, size: int) -> bytes:
        """Copy ``size`` bytes at ``offset`` out of the mapping."""
        self._check_range(offset, size)
        return bytes(ffi.buffer(ffi.cast("char *", self.addr + offset), size))

    def write(self, offset: int, data: bytes) -> None:
        """Copy ``data`` into the mapping at ``offset``."""
        self._check_range(offset, len(data))
        ffi.memmove(ffi.cast("char *", self.addr + offset), data, len(data))

    def _check_open(self) -> None:
        if self.closed:
            raise StateError("guest memory is unmapped")

    def _check_range(self, offset: int, size: int) -> None:
        self._check_open()
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ArgumentError(f"range {offset:#x}+{size:#x} outside the {self.size:#x}-byte mapping")

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Unmap (and close the memfd). StateError while memslots still map it. Idempotent."""
        if self.closed:
            return
        if self.users:
            raise StateError(f"{self.users} memslot(s) still map this memory: delete them first")
        self._release(strict=True)
        self._owner = None

    def __repr__(self) -> str:
        return f"<GuestMemory {self.kind} {self.size:#x} bytes @ {self.addr:#x}>"


def _check_size(size: int, page: int) -> int:
    size = as_int(size, "size")
    if size > _MAX_MAP:
        raise RangeError(f"size {size:#x} is beyond what a mapping can hold ({_MAX_MAP:#x} bytes)")
    if size <= 0:
        raise ArgumentError(f"size must be positive, got {size}")
    if size % page:
        raise AlignmentError(f"size {size:#x} is not a multiple of the page size {page:#x}")
    return size
