"""Memslots of a KVM VM (struct kvm_userspace_memory_region): :class:`MemSlot`, its flags, limits and checks.

A :class:`MemSlot` is made by :meth:`pyvfio.kvm.Vm.add_memslot`; it maps ``[gpa, gpa + size)`` of
one address space to host memory (usually a :class:`~pyvfio.kvm.GuestMemory`, kept alive while
mapped). The module holds what the managed API checks before the syscall (:func:`check_range`,
:func:`check_gpa_limit`, the kernel's limits) and the hints for the kernel's memslot errnos.
Dirty logs come back as :class:`pyvfio.core.bitmap.DirtyBitmap`.
"""

from __future__ import annotations

import enum
import errno
import mmap
from typing import TYPE_CHECKING, Any

from .. import ioctls as I
from ..core.bitmap import DirtyBitmap, bytes_for
from ..errors import AlignmentError, ArgumentError, OverlapError, RangeError, StateError, register_hint
from ..uapi.args import u64
from .memory import GuestMemory

if TYPE_CHECKING:
    from .vm import Vm

PAGE_SIZE = mmap.PAGESIZE
PAGE_SHIFT = PAGE_SIZE.bit_length() - 1
#: KVM_MEM_MAX_NR_PAGES: the most pages one memslot may have ((1 << 31) - 1).
KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1
#: Highest guest physical address bits any x86 KVM accepts (the kernel may accept fewer on TDP
#: hosts: boot_cpu_data.x86_phys_bits; it answers EINVAL then).
MAX_GPA_BITS = 52
#: x86-64 user address space end (TASK_SIZE_MAX with 4-level paging): access_ok() bound.
TASK_SIZE = 0x7FFF_FFFF_F000

register_hint("KVM_SET_USER_MEMORY_REGION", errno.EEXIST,
              "the guest-physical range overlaps another memslot of the same address space")
register_hint("KVM_SET_USER_MEMORY_REGION", errno.EINVAL,
              "bad flags, unaligned gpa/size/hva, slot id out of range, or a change of an "
              "existing slot's size, hva or READONLY flag (only gpa and LOG_DIRTY may change)")
register_hint("KVM_GET_DIRTY_LOG", errno.ENOENT, "the slot does not exist or has no KVM_MEM_LOG_DIRTY_PAGES")
register_hint("KVM_CLEAR_DIRTY_LOG", errno.EINVAL,
              "first_page must be a multiple of 64, and num_pages too unless the range reaches the slot end")
register_hint("KVM_GET_DIRTY_LOG", errno.ENXIO, "the dirty ring is enabled on this VM: harvest the rings instead")
register_hint("KVM_CLEAR_DIRTY_LOG", errno.ENXIO, "the dirty ring is enabled on this VM: harvest the rings instead")


class MemFlag(enum.IntFlag):
    """struct kvm_userspace_memory_region.flags."""

    LOG_DIRTY_PAGES = I.KVM_MEM_LOG_DIRTY_PAGES
    READONLY = I.KVM_MEM_READONLY
    GUEST_MEMFD = I.KVM_MEM_GUEST_MEMFD


_SET_REGION = I.KVM_SET_USER_MEMORY_REGION
_MAX_GPA = 1 << MAX_GPA_BITS
_LOG = int(MemFlag.LOG_DIRTY_PAGES)
_RO = int(MemFlag.READONLY)
_GMEM = int(MemFlag.GUEST_MEMFD)


def check_range(gpa: int, size: int, hva: int) -> None:
    """Refuse a memslot range the kernel would: size, alignment, page count, overflow, user space."""
    if size <= 0:
        raise RangeError(f"memslot size must be positive, got {size}")
    if size % PAGE_SIZE:
        raise AlignmentError(f"memslot size {size:#x} is not a multiple of the page size {PAGE_SIZE:#x}")
    if gpa % PAGE_SIZE:
        raise AlignmentError(f"guest physical address {gpa:#x} is not page aligned")
    if hva % PAGE_SIZE:
        raise AlignmentError(f"host virtual address {hva:#x} is not page aligned")
    if size >> PAGE_SHIFT > KVM_MEM_MAX_NR_PAGES:
        raise RangeError(f"memslot of {size >> PAGE_SHIFT} pages exceeds KVM_MEM_MAX_NR_PAGES "
                         f"({KVM_MEM_MAX_NR_PAGES})")
    if gpa + size >= 1 << 64:
        raise RangeError(f"guest range {gpa:#x}+{size:#x} overflows")
    if hva + size > TASK_SIZE:
        raise RangeError(f"host range {hva:#x}+{size:#x} is not in the user address space")


def check_gpa_limit(gpa: int, size: int) -> None:
    """Refuse a guest range beyond MAX_GPA_BITS (checked after the overlap test, as the kernel
    does: arch code, after EEXIST)."""
    if gpa + size > 1 << MAX_GPA_BITS:
        raise RangeError(f"guest range {gpa:#x}+{size:#x} goes beyond the {MAX_GPA_BITS}-bit "
                         "guest physical address space")


class MemSlot:
    """One memslot of a :class:`Vm`: ``id`` in address space ``as_id`` mapping
    ``[gpa, gpa + size)`` to host ``hva``. Made by :meth:`Vm.add_memslot`.

    Only the gpa (:meth:`move`) and dirty logging (:meth:`set_dirty_logging`) of a slot can
    change; :meth:`delete` removes it (idempotent; also ``close()`` and the context manager).

    Threads: every method may be called from any thread: each takes its VM's lock
    (:attr:`Vm.lock`) around its checks, the shared ioctl struct and the bookkeeping, so the
    memslot calls of one VM run one at a time (see :class:`Vm`); vCPUs keep running meanwhile. (No Closeable base: ``__slots__`` keeps 32764 slots small.)
    """

    __slots__ = ("vm", "id", "as_id", "gpa", "size", "hva", "flags", "memory", "guest_memfd",
                 "guest_memfd_offset", "deleted")

    def __init__(self, vm: Vm, slot_id: int, as_id: int, gpa: int, size: int, hva: int, flags: int,
                 memory: GuestMemory | None, guest_memfd: Any = None, guest_memfd_offset: int = 0) -> None:
        self.vm = vm
        self.id = slot_id
        self.as_id = as_id
        self.gpa = gpa
        self.size = size
        self.hva = hva
        self.flags = flags
        self.memory = memory
        self.guest_memfd = guest_memfd
        self.guest_memfd_offset = guest_memfd_offset
        self.deleted = False

    @property
    def slot(self) -> int:
        """The kernel's slot number: ``as_id << 16 | id``."""
        return self.as_id << 16 | self.id

    @property
    def npages(self) -> int:
        return self.size >> PAGE_SHIFT

    @property
    def end(self) -> int:
        return self.gpa + self.size

    @property
    def log_dirty(self) -> bool:
        return bool(self.flags & MemFlag.LOG_DIRTY_PAGES)

    @property
    def readonly(self) -> bool:
        return bool(self.flags & MemFlag.READONLY)

    def _live(self) -> None:
        if self.deleted:
            raise StateError(f"memslot {self.id} was deleted")
        self.vm.fileno()

    def _set(self, flags: int, gpa: int) -> None:
        if self.flags & MemFlag.GUEST_MEMFD:
            raise ArgumentError("guest_memfd memslots are immutable: delete and re-create them")
        self.vm.set_user_memory_region(self.slot, flags, gpa, self.size, self.hva)

    def move(self, gpa: int) -> None:
        """Change the guest physical address (KVM_MR_MOVE). OverlapError/AlignmentError/RangeError
        before the syscall; the dirty bitmap survives the move."""
        vm = self.vm
        gpa = u64(gpa, "memslot gpa")
        with vm.lock:
            self._live()
            check_range(gpa, self.size, self.hva)
            other = vm._overlap(self.as_id, gpa, gpa + self.size, exclude=self)
            if other is not None:
                raise OverlapError(f"moving slot {self.id} to {gpa:#x}+{self.size:#x} overlaps slot "
                                   f"{other.id} ({other.gpa:#x}+{other.size:#x})")
            check_gpa_limit(gpa, self.size)
            if gpa == self.gpa:
                return
            self._set(self.flags, gpa)
            vm._unindex(self)
            self.gpa = gpa
            vm._index(self)

    def set_dirty_logging(self, enabled: bool) -> None:
        """Turn KVM_MEM_LOG_DIRTY_PAGES on or off (a flags-only change, KVM_MR_FLAGS_ONLY)."""
        with self.vm.lock:
            self._live()
            flags = (self.flags | MemFlag.LOG_DIRTY_PAGES) if enabled else (self.flags & ~MemFlag.LOG_DIRTY_PAGES)
            if flags == self.flags:
                return
            self.vm._check_flags(int(flags))
            self._set(int(flags), self.gpa)
            self.flags = int(flags)

    def _check_log(self) -> None:
        self._live()
        if not self.log_dirty:
            raise ArgumentError(f"memslot {self.id} has no dirty logging: set_dirty_logging(True) first")
        if self.vm.dirty_ring_bytes:
            raise ArgumentError("this VM uses the dirty ring: harvest Vcpu.dirty_ring instead")

    def get_dirty_log(self, out: DirtyBitmap | None = None) -> DirtyBitmap:
        """KVM_GET_DIRTY_LOG into ``out`` (or a new bitmap): bit i = page i of the slot.

        Without manual protect the kernel clears what it reports; with it pages stay dirty
        until :meth:`clear_dirty_log`.
        """
        self._check_log()
        if out is None:
            out = DirtyBitmap.zeros(self.npages, page_size=PAGE_SIZE, base=self.gpa)
        elif out.npages < self.npages or out.nbytes < bytes_for(self.npages) or not out.words.flags.writeable:
            raise RangeError(f"bitmap of {out.npages} pages / {out.nbytes} bytes is too small for "
                             f"{self.npages} pages ({bytes_for(self.npages)} bytes) or read-only")
        self.vm.get_dirty_log(self.slot, out.address)
        return out

    def clear_dirty_log(self, bitmap: DirtyBitmap | None = None, first_page: int = 0,
                        num_pages: int | None = None) -> None:
        """KVM_CLEAR_DIRTY_LOG: clean the pages set in ``bitmap`` (bit 0 = ``first_page``).

        Without ``bitmap`` every page of the range is cleared. ``first_page`` must be a multiple
        of 64 and ``num_pages`` too unless the range ends at the slot's end (AlignmentError);
        the range must lie in the slot (RangeError).
        """
        self._check_log()
        if num_pages is None:
            num_pages = (bitmap.npages if bitmap is not None else self.npages - first_page)
        if first_page % 64:
            raise AlignmentError(f"first_page {first_page} is not a multiple of 64")
        if first_page < 0 or num_pages < 0 or first_page + num_pages > self.npages:
            raise RangeError(f"pages {first_page}+{num_pages} are outside the slot's {self.npages}")
        if num_pages % 64 and first_page + num_pages != self.npages:
            raise AlignmentError(f"num_pages {num_pages} must be a multiple of 64 unless the range "
                                 f"reaches the slot end (page {self.npages})")
        if bitmap is None:
            bitmap = DirtyBitmap.ones(num_pages)
        elif bitmap.npages < num_pages:
            raise RangeError(f"bitmap has {bitmap.npages} pages, the range {num_pages}")
        self.vm.clear_dirty_log(self.slot, first_page, num_pages, bitmap.address)

    def fetch_dirty(self, out: DirtyBitmap | None = None) -> DirtyBitmap:
        """One dirty-log cycle: GET, then (manual protect) CLEAR exactly the reported pages."""
        bm = self.get_dirty_log(out)
        if self.vm.manual_protect:
            self.vm.clear_dirty_log(self.slot, 0, self.npages, bm.address)
        return bm

    def delete(self) -> None:
        """KVM_SET_USER_MEMORY_REGION with size 0. Idempotent; a closed VM just forgets the slot."""
        if self.deleted:
            return
        vm = self.vm
        with vm.lock:
            if self.deleted:  # another thread deleted it meanwhile
                return
            if vm._fd >= 0:
                if self.flags & _GMEM:
                    vm.set_user_memory_region2(self.slot, self.flags, self.gpa, 0, self.hva)
                else:
                    r = vm._region
                    r.slot = self.as_id << 16 | self.id
                    r.flags = self.flags
                    r.guest_phys_addr = self.gpa
                    r.memory_size = 0
                    r.userspace_addr = self.hva
                    vm.backend.ioctl(vm._fd, _SET_REGION, r)
            self.deleted = True
            vm._forget(self)

    close = delete

    def _dead(self) -> None:
        """The VM went away: the kernel freed the slot."""
        if not self.deleted:
            self.deleted = True
            if self.memory is not None:
                self.memory._unuse()

    def __enter__(self) -> "MemSlot":
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def __repr__(self) -> str:
        return (f"<MemSlot {self.as_id}:{self.id} gpa={self.gpa:#x} size={self.size:#x} "
                f"flags={MemFlag(self.flags)!r}{' deleted' if self.deleted else ''}>")
