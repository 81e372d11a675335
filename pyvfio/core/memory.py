"""Host memory owned by one object: an mmap'd range (optionally of a memfd), unmapped once.

:class:`HostMemory` is the owner under the memory the kernel objects hand to devices and guests:
:class:`pyvfio.services.dma.DmaBuffer` (memory for DMA) and :class:`pyvfio.kvm.GuestMemory`
(memory a memslot maps into a guest). It keeps the range's address, size, backend and memfd,
returns the memory exactly once (``munmap`` through the seam, then the memfd is closed), and
registers a ``weakref.finalize`` as soon as the range is owned: the last resort when the owner is
dropped without ``close()``, not the plan. A borrowed range (``owned=False``) is never unmapped.

Safety: after the memory is released every address into it is dangling; the subclasses refuse
access once closed and keep the memory while a device mapping or a memslot still uses it.

Example (mock)::

    >>> import mmap
    >>> from pyvfio.seam.mock import MockBackend
    >>> be = MockBackend()
    >>> addr = be.mmap(4096, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    >>> with HostMemory(addr, 4096, backend=be) as m:
    ...     m.closed
    False
    >>> (m.closed, m.released)
    (True, True)
"""

from __future__ import annotations

import mmap
import os
import warnings
import weakref
from typing import Any

from ..errors import from_oserror
from ..seam import Backend
from .fd import Closeable

__all__ = ["HostMemory", "PAGE_SIZE", "memory_object_mismatch"]

PAGE_SIZE = mmap.PAGESIZE
MFD_HUGETLB = 0x0004  # linux/memfd.h
MFD_HUGE_SHIFT = 26  # the huge page size's log2 goes in flags bits 26..31


def memfd_create(name: str, size: int, *, huge_page_size: int | None = None) -> int:
    """memfd_create(MFD_CLOEXEC[|MFD_HUGETLB with the page size]) + ftruncate(size): the fd of a
    new shared-memory object of ``size`` bytes (the caller owns it). Errors come typed with the
    syscall's name (EINVAL for a huge page size the kernel lacks)."""
    flags = os.MFD_CLOEXEC
    if huge_page_size:
        flags |= MFD_HUGETLB | ((huge_page_size.bit_length() - 1) << MFD_HUGE_SHIFT)
    try:
        fd = os.memfd_create(name, flags)
    except OSError as e:
        raise from_oserror(e, op="memfd_create") from None
    try:
        os.ftruncate(fd, size)
    except OSError as e:
        os.close(fd)
        raise from_oserror(e, op="ftruncate") from None
    return fd


def _release(gone: list[bool], backend: Backend, addr: int, size: int, fd: int) -> None:
    """Return owned memory, quietly (close() of a DmaBuffer, the last unpin, or the finalizer):
    flag it gone (a plain flag hot paths read, cheaper than ``finalize.alive``), unmap it and
    close its memfd."""
    gone[0] = True
    try:
        backend.munmap(addr, size)
    except OSError as e:
        # nothing to raise into (a finalizer, the last unpin): say so instead of staying silent
        warnings.warn(f"munmap of {size:#x} bytes at {addr:#x} failed: {e}; the memory stays "
                      "mapped (leaked)", ResourceWarning, stacklevel=2)
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


class HostMemory(Closeable):
    """``size`` bytes of host memory at ``addr``, mapped through ``backend`` (and of memfd ``fd``).

    ``owned``: this object unmaps the range (and closes ``fd``) once, on :meth:`close` or, as the
    last resort, when it is garbage collected; a borrowed range is only forgotten.
    ``released`` says the memory went back; ``closed`` is the same here (subclasses may close
    Python access earlier than they release the memory).
    """

    addr: int
    size: int
    fd: int
    backend: Backend

    def __init__(self, addr: int, size: int, *, backend: Backend, fd: int = -1,
                 owned: bool = True) -> None:
        self.addr = addr
        self.size = size
        self.fd = fd
        self.backend = backend
        self._owned = owned
        self._gone = [False]  # set by whoever releases: close(), a last unpin, the finalizer
        self._finalizer = (weakref.finalize(self, _release, self._gone, backend, addr, size, fd)
                           if owned else None)

    @property
    def owned(self) -> bool:
        """This object unmaps the range (False: borrowed from another owner)."""
        return self._owned

    @property
    def released(self) -> bool:
        """The memory went back to the system (or, borrowed, was let go)."""
        return self._gone[0]

    @property
    def closed(self) -> bool:
        return self._gone[0]

    def _release(self, *, strict: bool = False) -> None:
        """Unmap and close the memfd, once (idempotent); drops the finalizer.

        ``strict``: let an munmap error propagate (the memfd is closed all the same); otherwise
        the release is quiet, as the finalizer's is.
        """
        f = self._finalizer
        if f is None:
            self._gone[0] = True
            return
        if not strict:
            f()
            return
        if f.detach() is None:
            return
        self._gone[0] = True
        try:
            self.backend.munmap(self.addr, self.size)
        finally:
            if self.fd >= 0:
                os.close(self.fd)

    def close(self) -> None:
        """Return the memory (idempotent)."""
        self._release(strict=True)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.size:#x} bytes @ {self.addr:#x}>"


def _pieces(areas: list[Any], addr: int, size: int) -> list[tuple[int, int, Any]] | None:
    """``(rel_start, rel_end, area)`` covering ``[addr, addr+size)`` relative to ``addr``, or None
    when part of the range is not mapped."""
    out, cur, end = [], addr, addr + size
    for a in areas:
        if a.end <= cur:
            continue
        if a.start > cur:
            return None
        hi = min(a.end, end)
        out.append((cur - addr, hi - addr, a))
        cur = hi
        if cur >= end:
            return out
    return None


def _what(a: Any) -> str:
    return f"{a.path or 'anonymous memory'} (dev {a.dev}, inode {a.inode}, {a.perms})"


def memory_object_mismatch(backend: Backend, old: int, new: int, size: int) -> str | None:
    """Why ``[new, new+size)`` does not address the same memory object as ``[old, old+size)``,
    or None when it does: every byte is mapped MAP_SHARED from the same file (memfd, hugetlbfs,
    shmem; same device, inode and file offset) in both ranges (``/proc/self/maps`` through
    ``backend.host``). Private and anonymous memory has no second address: it never matches.

    This is the contract of VFIO_DMA_MAP_FLAG_VADDR (linux/vfio.h): the kernel keeps the pages
    it pinned and trusts the new address to reach them, so a different object would leave the
    device and the process looking at different memory."""
    host = backend.host
    olds = _pieces(host.vm_areas(old, size), old, size)
    news = _pieces(host.vm_areas(new, size), new, size)
    if olds is None:
        return f"the mapped memory {old:#x}+{size:#x} is no longer (fully) mapped in this process"
    if news is None:
        return f"the new range {new:#x}+{size:#x} is not (fully) mapped in this process"
    cuts = sorted({p for lo, hi, _ in olds + news for p in (lo, hi)})
    for lo, hi in zip(cuts, cuts[1:]):
        a = next(x for s, e, x in olds if s <= lo < e)
        b = next(x for s, e, x in news if s <= lo < e)
        if not (a.shared and a.file_backed):
            return (f"the mapped memory at {old + lo:#x} is {_what(a)}: private or anonymous "
                    "memory cannot be reached through another address; use shared memory of a "
                    "memfd (DmaBuffer.from_memfd, then .alias() for the second address)")
        if not (b.shared and b.file_backed):
            return (f"the new range at {new + lo:#x} is {_what(b)}, not a shared mapping of the "
                    f"mapped memory {_what(a)}")
        if (a.dev, a.inode) != (b.dev, b.inode):
            return (f"the new range at {new + lo:#x} maps {_what(b)}; the mapped memory at "
                    f"{old + lo:#x} is {_what(a)}")
        if a.file_offset(old + lo) != b.file_offset(new + lo):
            return (f"the new range at {new + lo:#x} maps offset {b.file_offset(new + lo):#x} of "
                    f"{_what(b)}; the mapped memory is at offset {a.file_offset(old + lo):#x}")
    return None
