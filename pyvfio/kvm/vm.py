"""KVM system, VM and memslot objects (/dev/kvm, the VM fd, struct kvm_userspace_memory_region).

Layering inside this module: the *raw* methods of :class:`Vm` (``set_user_memory_region``,
``get_dirty_log``, ``clear_dirty_log``...) issue one ioctl each with exactly the arguments given,
so the kernel's own errno rules can be observed; the *managed* API (:meth:`Vm.add_memslot` and
:class:`MemSlot`) validates everything the kernel would refuse *before* the syscall, raising a
ValueError subclass (:class:`~pyvfio.errors.AlignmentError`, :class:`~pyvfio.errors.RangeError`,
:class:`~pyvfio.errors.OverlapError`, :class:`~pyvfio.errors.ArgumentError`) whose message
says why, and keeps slot ids, address spaces and guest-physical ranges in its own bookkeeping.

Example (mock kernel)::

    >>> from pyvfio.seam.mock import MockBackend
    >>> from pyvfio.kvm import Kvm, GuestMemory
    >>> be = MockBackend()
    >>> with Kvm(backend=be) as kvm, kvm.create_vm() as vm:
    ...     mem = GuestMemory.anonymous(1 << 20, backend=be)
    ...     slot = vm.add_memslot(mem, gpa=0x100000, log_dirty=True)
    ...     (slot.id, slot.npages, slot.get_dirty_log().count())
    (0, 256, 0)
"""

from __future__ import annotations

import enum
import errno
import heapq
import mmap
import weakref
from typing import TYPE_CHECKING, Any, Iterator

from .. import ioctls as I
from ..errors import (
    AlignmentError,
    ArgumentError,
    OverlapError,
    RangeError,
    StateError,
    UnsupportedError,
    register_hint,
)
from ..seam import Backend, get_backend
from ..core.bitmap import DirtyBitmap, bytes_for
from ..uapi import ffi
from ..core.fd import FdObject
from ..util.intervals import SortedIndex
from .memory import GuestMemory

if TYPE_CHECKING:
    from .device import KvmDevice, KvmVfioDevice
    from .eventfd import IoEventFd, IrqFd
    from .vcpu import Vcpu

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


class Kvm(FdObject):
    """The KVM system fd (/dev/kvm): API version, extensions, VM creation.

    Opens ``path`` and checks KVM_GET_API_VERSION == 12 (UnsupportedError otherwise).
    """

    def __init__(self, path: str = "/dev/kvm", *, backend: Backend | str | None = None) -> None:
        be = get_backend(backend)
        fd = be.open(path)
        self._adopt_fd(be, fd, path)
        self._vms: weakref.WeakSet[Vm] = weakref.WeakSet()
        self._mmap_size: int | None = None
        try:
            v = self.api_version()
        except Exception:
            self.close()
            raise
        if v != I.KVM_API_VERSION:
            self.close()
            raise UnsupportedError(op="KVM_GET_API_VERSION", path=path,
                                   hint=f"KVM API version {v}, pyvfio speaks {I.KVM_API_VERSION}")

    def api_version(self) -> int:
        """KVM_GET_API_VERSION: 12 on every kernel since 2.6.22."""
        return self._ioctl(I.KVM_GET_API_VERSION, 0)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on /dev/kvm: 0 when absent, else 1 or a cap-specific value."""
        return self._ioctl(I.KVM_CHECK_EXTENSION, int(cap))

    @property
    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: bytes to mmap from a vCPU fd (kvm_run and friends)."""
        if self._mmap_size is None:
            self._mmap_size = self._ioctl(I.KVM_GET_VCPU_MMAP_SIZE, 0)
        return self._mmap_size

    def create_vm(self, vm_type: int = 0) -> "Vm":
        """KVM_CREATE_VM: a new VM. EINVAL for a type this kernel does not support."""
        fd = self._ioctl(I.KVM_CREATE_VM, int(vm_type))
        self.backend.label(fd, "anon_inode:kvm-vm")
        vm = Vm(self, fd, vm_type)
        self._vms.add(vm)
        return vm

    def _close_children(self) -> None:
        for vm in list(self._vms):
            vm.close()

    def __repr__(self) -> str:
        return f"<Kvm {self.path} fd={self._fd}>"


class Vm(FdObject):
    """A KVM VM fd: capabilities, memslots, dirty logs, vCPUs, devices, ioeventfd/irqfd.

    Made by :meth:`Kvm.create_vm`. Closing it closes its vCPUs, devices and eventfd bindings
    and forgets its memslots (the kernel frees them with the VM).
    """

    def __init__(self, kvm: Kvm, fd: int, vm_type: int = 0) -> None:
        self._adopt_fd(kvm.backend, fd, "anon_inode:kvm-vm")
        self.kvm = kvm
        self.vm_type = vm_type
        self._caps: dict[int, int] = {}
        # bookkeeping: (as_id, id) -> MemSlot; per address space a sorted list of starts and
        # the slots in the same order (for O(log n) overlap checks).
        self._slots: dict[int, MemSlot] = {}
        self._index_of: list[SortedIndex[MemSlot]] = []
        self._free_ids: list[list[int]] = []
        self._next_id: list[int] = []
        self._region = ffi.new("struct kvm_userspace_memory_region *")
        self._region2: Any = None
        self._dirty_log = ffi.new("struct kvm_dirty_log *")
        self._clear_log = ffi.new("struct kvm_clear_dirty_log *")
        self.manual_protect = 0  # KVM_DIRTY_LOG_* options enabled
        self.dirty_ring_bytes = 0
        self.dirty_ring_acq_rel = False
        self.vcpus: dict[int, Vcpu] = {}
        self._children: list[Any] = []  # devices, ioeventfds, irqfds, guest memfds
        self._irqchip = False
        self._valid: int | None = None
        self._limits: tuple[int, int, int] | None = None

    # -- capabilities ------------------------------------------------------------------------
    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (cached): 0 when absent."""
        v = self._caps.get(int(cap))
        if v is None:
            v = self._caps[int(cap)] = self._ioctl(I.KVM_CHECK_EXTENSION, int(cap))
        return v

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the VM fd. EINVAL: unknown cap, bad args or flags, wrong state."""
        if len(args) > 4:
            raise ArgumentError("KVM_ENABLE_CAP takes at most 4 arguments")
        c = ffi.new("struct kvm_enable_cap *")
        c.cap = int(cap)
        c.flags = flags
        for i, a in enumerate(args):
            c.args[i] = int(a)
        self._ioctl(I.KVM_ENABLE_CAP, c)
        self._caps.clear()
        self._valid = None
        self._limits = None

    @property
    def max_slots(self) -> int:
        """User memslots per address space (KVM_CAP_NR_MEMSLOTS; 32764 on x86)."""
        return self.check_extension(I.KVM_CAP_NR_MEMSLOTS) or 32

    @property
    def address_spaces(self) -> int:
        """Number of memslot address spaces (KVM_CAP_MULTI_ADDRESS_SPACE, 1 if absent)."""
        return max(1, self.check_extension(I.KVM_CAP_MULTI_ADDRESS_SPACE))

    @property
    def has_readonly_mem(self) -> bool:
        return bool(self.check_extension(I.KVM_CAP_READONLY_MEM))

    def enable_manual_dirty_log_protect(self, *, initially_set: bool = False) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2): GET no longer clears; CLEAR does.

        ``initially_set``: new logging slots start all-dirty (KVM_DIRTY_LOG_INITIALLY_SET).
        UnsupportedError when the kernel lacks the cap or the option.
        """
        caps = self.check_extension(I.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
        want = I.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | (I.KVM_DIRTY_LOG_INITIALLY_SET if initially_set else 0)
        if not caps or want & ~caps:
            raise UnsupportedError(op="KVM_ENABLE_CAP", path=self.path,
                                   hint=f"KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 reports {caps:#x}, need {want:#x}")
        self.enable_cap(I.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, want)
        self.manual_protect = want

    def enable_dirty_ring(self, size_bytes: int, *, acq_rel: bool = False) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING[_ACQ_REL]): per-vCPU rings of ``size_bytes``.

        Must precede the first vCPU. ``size_bytes`` is a power of two, at least a page, at
        most what the cap reports. Afterwards GET/CLEAR_DIRTY_LOG answer ENXIO; harvest
        :attr:`Vcpu.dirty_ring` and call :meth:`reset_dirty_rings`.
        """
        cap = I.KVM_CAP_DIRTY_LOG_RING_ACQ_REL if acq_rel else I.KVM_CAP_DIRTY_LOG_RING
        limit = self.check_extension(cap)
        if not limit:
            raise UnsupportedError(op="KVM_ENABLE_CAP", path=self.path, hint="no dirty ring on this kernel")
        if self.vcpus:
            raise StateError("the dirty ring must be enabled before the first vCPU is created")
        if self.dirty_ring_bytes:
            raise StateError("the dirty ring is already enabled (once per VM)")
        if size_bytes < PAGE_SIZE or size_bytes & (size_bytes - 1):
            raise ArgumentError(f"dirty ring size {size_bytes} must be a power of two >= {PAGE_SIZE}")
        if size_bytes > limit:
            raise RangeError(f"dirty ring size {size_bytes} exceeds the kernel's {limit}")
        self.enable_cap(cap, size_bytes)
        self.dirty_ring_bytes = size_bytes
        self.dirty_ring_acq_rel = acq_rel

    # -- raw ioctls (no validation: the kernel's rules apply) --------------------------------
    def set_user_memory_region(self, slot: int, flags: int, gpa: int, size: int, hva: int) -> None:
        """KVM_SET_USER_MEMORY_REGION, raw: create (new slot), modify, or delete (size 0).

        ``slot`` is ``as_id << 16 | id``. EINVAL: bad flags, unaligned gpa/size/hva, id or
        as_id out of range, size/hva/READONLY change, delete of a missing slot; EEXIST: overlap.
        """
        r = self._region
        r.slot = slot
        r.flags = flags
        r.guest_phys_addr = gpa
        r.memory_size = size
        r.userspace_addr = hva
        self._ioctl(I.KVM_SET_USER_MEMORY_REGION, r)

    def set_user_memory_region2(self, slot: int, flags: int, gpa: int, size: int, hva: int,
                                guest_memfd: int = 0, guest_memfd_offset: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION2, raw (adds guest_memfd + offset; KVM_CAP_USER_MEMORY2)."""
        if self._region2 is None:
            self._region2 = ffi.new("struct kvm_userspace_memory_region2 *")
        r = self._region2
        r.slot = slot
        r.flags = flags
        r.guest_phys_addr = gpa
        r.memory_size = size
        r.userspace_addr = hva
        r.guest_memfd = guest_memfd
        r.guest_memfd_offset = guest_memfd_offset
        self._ioctl(I.KVM_SET_USER_MEMORY_REGION2, r)

    def get_dirty_log(self, slot: int, bitmap_addr: int) -> None:
        """KVM_GET_DIRTY_LOG, raw: the kernel writes ALIGN(npages, 64) / 8 bytes at ``bitmap_addr``.

        ENOENT: no such slot or no logging; EINVAL: id out of range; ENXIO: dirty ring in use;
        EFAULT: the buffer is not writable for the whole bitmap size.
        """
        d = self._dirty_log
        d.slot = slot
        d.dirty_bitmap = ffi.cast("void *", bitmap_addr)
        self._ioctl(I.KVM_GET_DIRTY_LOG, d)

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int, bitmap_addr: int) -> None:
        """KVM_CLEAR_DIRTY_LOG, raw: clear the pages whose bit is set (bit 0 = ``first_page``).

        EINVAL: first_page not a multiple of 64, num_pages not a multiple of 64 without reaching
        the slot end, or a range beyond the slot; ENOENT: no such slot or no logging; ENXIO: ring.
        """
        c = self._clear_log
        c.slot = slot
        c.first_page = first_page
        c.num_pages = num_pages
        c.dirty_bitmap = ffi.cast("void *", bitmap_addr)
        self._ioctl(I.KVM_CLEAR_DIRTY_LOG, c)

    def reset_dirty_rings(self) -> int:
        """KVM_RESET_DIRTY_RINGS: re-protect harvested ring entries; returns how many were reset."""
        return self._ioctl(I.KVM_RESET_DIRTY_RINGS, 0)

    # -- managed memslots ---------------------------------------------------------------------
    def _as(self, as_id: int) -> None:
        while len(self._index_of) <= as_id:
            self._index_of.append(SortedIndex())
            self._free_ids.append([])
            self._next_id.append(0)

    def _valid_flags(self) -> int:
        if self._valid is not None:
            return self._valid
        v = int(MemFlag.LOG_DIRTY_PAGES)
        if self.has_readonly_mem:
            v |= MemFlag.READONLY
        if self.check_extension(I.KVM_CAP_GUEST_MEMFD) and self.check_extension(I.KVM_CAP_USER_MEMORY2):
            v |= MemFlag.GUEST_MEMFD
        self._valid = int(v)
        return self._valid

    def _check_flags(self, flags: int) -> None:
        valid = self._valid if self._valid is not None else self._valid_flags()
        if flags & ~valid:
            raise ArgumentError(
                f"memslot flags {flags:#x} not allowed here: valid are {MemFlag(valid)!r}"
                + ("" if self.has_readonly_mem or not flags & MemFlag.READONLY
                   else " (this architecture has no KVM_CAP_READONLY_MEM)"))
        if flags & _GMEM and flags & _LOG:
            raise ArgumentError("dirty logging of guest_memfd (private) memory is not supported")

    def _check_range(self, gpa: int, size: int, hva: int) -> None:
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

    @staticmethod
    def _check_gpa_limit(gpa: int, size: int) -> None:
        # checked after the overlap test, as the kernel does (arch code, after EEXIST)
        if gpa + size > 1 << MAX_GPA_BITS:
            raise RangeError(f"guest range {gpa:#x}+{size:#x} goes beyond the {MAX_GPA_BITS}-bit "
                             "guest physical address space")

    def _overlap(self, as_id: int, gpa: int, end: int, exclude: "MemSlot | None" = None) -> "MemSlot | None":
        # slots never overlap each other, so among those starting below `end` the nearest
        # one (skipping `exclude`) has the highest end: it alone decides
        for s in self._index_of[as_id].below(end):
            if s is exclude:
                continue
            return s if s.gpa + s.size > gpa else None
        return None

    def _index(self, s: "MemSlot") -> None:
        self._index_of[s.as_id].insert(s.gpa, s)

    def _unindex(self, s: "MemSlot") -> None:
        self._index_of[s.as_id].remove(s.gpa, s)

    def add_memslot(self, memory: GuestMemory | int, gpa: int, size: int | None = None, *,
                    offset: int = 0, slot: int | None = None, as_id: int = 0,
                    log_dirty: bool = False, readonly: bool = False,
                    guest_memfd: Any = None, guest_memfd_offset: int = 0) -> "MemSlot":
        """Map ``size`` bytes of ``memory`` (from ``offset``) at guest physical ``gpa``.

        Issues KVM_SET_USER_MEMORY_REGION (or ...REGION2 with ``guest_memfd``). ``memory`` is a
        :class:`GuestMemory` (kept alive while mapped) or a raw host address (the caller keeps
        it mapped). ``slot`` defaults to the lowest free id of ``as_id``.

        Refused before the syscall: unaligned gpa/size/hva (AlignmentError), empty, oversized,
        beyond the guest or user address space, or outside ``memory`` (RangeError), a slot id or
        address space out of range or in use, bad flags (ArgumentError), a guest-physical
        overlap with another slot of the address space (OverlapError).

        Safety: the guest can read and write the memory as long as the slot exists.
        """
        if self._fd < 0:
            self.fileno()  # StateError
        if isinstance(memory, GuestMemory):
            if memory.closed:
                memory._check_open()
            msize = memory.size
            if size is None:
                size = msize - offset
            if offset % PAGE_SIZE:
                raise AlignmentError(f"offset {offset:#x} into the memory is not page aligned")
            if offset < 0 or offset + size > msize:
                raise RangeError(f"{offset:#x}+{size:#x} is outside the {msize:#x}-byte memory")
            hva = memory.addr + offset
            keep: GuestMemory | None = memory
        else:
            if size is None:
                raise ArgumentError("size is required when memory is a raw address")
            hva = int(memory) + offset
            keep = None
        flags = (_LOG if log_dirty else 0) | (_RO if readonly else 0)
        gmem_fd = 0
        if guest_memfd is not None:
            flags |= _GMEM
            gmem_fd = guest_memfd if isinstance(guest_memfd, int) else guest_memfd.fileno()
            if not self.check_extension(I.KVM_CAP_USER_MEMORY2) or not self.check_extension(I.KVM_CAP_GUEST_MEMFD):
                raise UnsupportedError(op="KVM_SET_USER_MEMORY_REGION2", path=self.path,
                                       hint="KVM_CAP_USER_MEMORY2/KVM_CAP_GUEST_MEMFD absent")
            if guest_memfd_offset % PAGE_SIZE:
                raise AlignmentError(f"guest_memfd offset {guest_memfd_offset:#x} is not page aligned")
        limits = self._limits
        if limits is None:
            limits = self._limits = (self.max_slots, self.address_spaces, self._valid_flags())
        max_slots, nspaces, valid = limits
        if as_id and not 0 <= as_id < nspaces:
            raise RangeError(f"address space {as_id} out of range: this VM has {nspaces}")
        if flags & ~valid or (flags & _GMEM and flags & _LOG):
            self._check_flags(flags)  # raises, saying why
        if (size <= 0 or size % PAGE_SIZE or gpa % PAGE_SIZE or hva % PAGE_SIZE
                or size >> PAGE_SHIFT > KVM_MEM_MAX_NR_PAGES or hva + size > TASK_SIZE):
            self._check_range(gpa, size, hva)  # raises, saying why
        if as_id >= len(self._index_of):
            self._as(as_id)
        if slot is None:
            slot_id = self._alloc_id(as_id)
        else:
            if not 0 <= slot < max_slots:
                raise RangeError(f"slot id {slot} out of range 0..{max_slots - 1}")
            if (as_id << 16 | slot) in self._slots:
                raise ArgumentError(f"slot {slot} of address space {as_id} is in use")
            slot_id = slot
        key = as_id << 16 | slot_id
        try:
            other = self._overlap(as_id, gpa, gpa + size)
            if other is not None:
                raise OverlapError(f"guest range {gpa:#x}+{size:#x} overlaps slot {other.id} "
                                   f"({other.gpa:#x}+{other.size:#x})")
            if gpa + size > _MAX_GPA:
                self._check_gpa_limit(gpa, size)
            if flags & _GMEM:
                self.set_user_memory_region2(key, flags, gpa, size, hva, gmem_fd, guest_memfd_offset)
            else:
                r = self._region
                r.slot = key
                r.flags = flags
                r.guest_phys_addr = gpa
                r.memory_size = size
                r.userspace_addr = hva
                self.backend.ioctl(self._fd, _SET_REGION, r)
        except BaseException:
            if slot is None:
                self._release_id(as_id, slot_id)
            raise
        s = MemSlot(self, slot_id, as_id, gpa, size, hva, flags, keep, guest_memfd, guest_memfd_offset)
        self._slots[key] = s
        self._index_of[as_id].insert(s.gpa, s)
        if keep is not None:
            keep.users += 1
        return s

    def _alloc_id(self, as_id: int) -> int:
        free = self._free_ids[as_id]
        while free:
            i = heapq.heappop(free)
            if (as_id << 16 | i) not in self._slots:
                return i
        i = self._next_id[as_id]
        while (as_id << 16 | i) in self._slots:
            i += 1
        limit = self._limits[0] if self._limits is not None else self.max_slots
        if i >= limit:
            raise RangeError(f"all {limit} memslots of address space {as_id} are in use")
        self._next_id[as_id] = i + 1
        return i

    def _release_id(self, as_id: int, slot_id: int) -> None:
        if slot_id == self._next_id[as_id] - 1:
            self._next_id[as_id] = slot_id
        else:
            heapq.heappush(self._free_ids[as_id], slot_id)

    def _forget(self, s: "MemSlot") -> None:
        del self._slots[s.slot]
        self._unindex(s)
        self._release_id(s.as_id, s.id)
        if s.memory is not None:
            s.memory.users -= 1

    @property
    def memslots(self) -> list["MemSlot"]:
        """Live memslots, by address space then gpa."""
        return [s for index in self._index_of for s in index]

    def memslot(self, slot: int, as_id: int = 0) -> "MemSlot":
        """The live MemSlot with this id (KeyError if none)."""
        return self._slots[as_id << 16 | slot]

    def find_memslot(self, gpa: int, as_id: int = 0) -> "MemSlot | None":
        """The slot containing guest physical address ``gpa`` (None if unmapped)."""
        if as_id >= len(self._index_of):
            return None
        return self._overlap(as_id, gpa, gpa + 1)

    def __iter__(self) -> Iterator["MemSlot"]:
        return iter(self.memslots)

    # -- vCPUs, devices, eventfds, guest_memfd -----------------------------------------------
    def create_vcpu(self, vcpu_id: int | None = None) -> "Vcpu":
        """KVM_CREATE_VCPU and mmap of its kvm_run. EEXIST: id in use; EINVAL: id too large."""
        from .vcpu import Vcpu

        if vcpu_id is None:
            vcpu_id = 0
            while vcpu_id in self.vcpus:
                vcpu_id += 1
        fd = self._ioctl(I.KVM_CREATE_VCPU, vcpu_id)
        self.backend.label(fd, f"anon_inode:kvm-vcpu:{vcpu_id}")
        v = Vcpu(self, fd, vcpu_id)
        self.vcpus[vcpu_id] = v
        return v

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP (x86: PIC + IOAPIC in the kernel; needed for irqfd)."""
        self._ioctl(I.KVM_CREATE_IRQCHIP, 0)
        self._irqchip = True

    def create_device(self, dev_type: int, *, test: bool = False) -> "KvmDevice | None":
        """KVM_CREATE_DEVICE. With ``test`` only asks whether the type exists (returns None).

        ENODEV: unknown type; EBUSY: a second VFIO device (one per VM); EEXIST: other singletons.
        """
        from .device import KvmDevice, KvmVfioDevice

        c = ffi.new("struct kvm_create_device *")
        c.type = int(dev_type)
        c.flags = I.KVM_CREATE_DEVICE_TEST if test else 0
        self._ioctl(I.KVM_CREATE_DEVICE, c)
        if test:
            return None
        fd = int(c.fd)
        cls = KvmVfioDevice if dev_type == I.KVM_DEV_TYPE_VFIO else KvmDevice
        self.backend.label(fd, f"anon_inode:kvm-device-{dev_type}")
        dev = cls(self, fd, int(dev_type))
        self._children.append(dev)
        return dev

    def create_vfio_device(self) -> "KvmVfioDevice":
        """The KVM VFIO pseudo device (KVM_DEV_TYPE_VFIO): FILE_ADD/DEL of VFIO group or device fds."""
        dev = self.create_device(I.KVM_DEV_TYPE_VFIO)
        assert dev is not None
        return dev  # type: ignore[return-value]

    def ioeventfd(self, addr: int, length: int = 4, *, eventfd: int | None = None,
                  datamatch: int | None = None, pio: bool = False) -> "IoEventFd":
        """Register an ioeventfd (KVM_IOEVENTFD): guest writes to ``addr`` signal the eventfd."""
        from .eventfd import IoEventFd

        ev = IoEventFd(self, addr, length, eventfd=eventfd, datamatch=datamatch, pio=pio)
        self._children.append(ev)
        return ev

    def irqfd(self, gsi: int, *, eventfd: int | None = None, resample_fd: int | None = None) -> "IrqFd":
        """Register an irqfd (KVM_IRQFD): signalling the eventfd raises guest interrupt ``gsi``."""
        from .eventfd import IrqFd

        ev = IrqFd(self, gsi, eventfd=eventfd, resample_fd=resample_fd)
        self._children.append(ev)
        return ev

    def create_guest_memfd(self, size: int, flags: int = 0) -> "GuestMemfd":
        """KVM_CREATE_GUEST_MEMFD (KVM_CAP_GUEST_MEMFD; UnsupportedError otherwise)."""
        if not self.check_extension(I.KVM_CAP_GUEST_MEMFD):
            raise UnsupportedError(op="KVM_CREATE_GUEST_MEMFD", path=self.path,
                                   hint="KVM_CAP_GUEST_MEMFD is absent on this kernel/VM type")
        if size <= 0 or size % PAGE_SIZE:
            raise AlignmentError(f"guest_memfd size {size:#x} must be a positive multiple of {PAGE_SIZE:#x}")
        g = ffi.new("struct kvm_create_guest_memfd *")
        g.size = size
        g.flags = flags
        fd = self._ioctl(I.KVM_CREATE_GUEST_MEMFD, g)
        self.backend.label(fd, "anon_inode:[kvm-gmem]")
        gm = GuestMemfd(self, fd, size)
        self._children.append(gm)
        return gm

    def _close_children(self) -> None:
        for child in reversed(self._children):
            try:
                child.close()
            except OSError:
                pass
        self._children.clear()
        for v in list(self.vcpus.values()):
            v.close()
        self.vcpus.clear()
        for s in list(self._slots.values()):
            s._dead()
        self._slots.clear()
        self._index_of.clear()
        self._free_ids.clear()
        self._next_id.clear()

    def __repr__(self) -> str:
        return f"<Vm fd={self._fd} slots={len(self._slots)} vcpus={len(self.vcpus)}>"


class GuestMemfd(FdObject):
    """A guest_memfd (KVM_CREATE_GUEST_MEMFD) of ``size`` bytes, usable with memslots' REGION2."""

    def __init__(self, vm: Vm, fd: int, size: int) -> None:
        self._adopt_fd(vm.backend, fd, "anon_inode:[kvm-gmem]")
        self.vm = vm
        self.size = size


class MemSlot:
    """One memslot of a :class:`Vm`: ``id`` in address space ``as_id`` mapping
    ``[gpa, gpa + size)`` to host ``hva``. Made by :meth:`Vm.add_memslot`.

    Only the gpa (:meth:`move`) and dirty logging (:meth:`set_dirty_logging`) of a slot can
    change; :meth:`delete` removes it (idempotent; also ``close()`` and the context manager).
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
        self._live()
        vm = self.vm
        vm._check_range(gpa, self.size, self.hva)
        other = vm._overlap(self.as_id, gpa, gpa + self.size, exclude=self)
        if other is not None:
            raise OverlapError(f"moving slot {self.id} to {gpa:#x}+{self.size:#x} overlaps slot "
                               f"{other.id} ({other.gpa:#x}+{other.size:#x})")
        vm._check_gpa_limit(gpa, self.size)
        if gpa == self.gpa:
            return
        self._set(self.flags, gpa)
        vm._unindex(self)
        self.gpa = gpa
        vm._index(self)

    def set_dirty_logging(self, enabled: bool) -> None:
        """Turn KVM_MEM_LOG_DIRTY_PAGES on or off (a flags-only change, KVM_MR_FLAGS_ONLY)."""
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
                self.memory.users -= 1

    def __enter__(self) -> "MemSlot":
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def __repr__(self) -> str:
        return (f"<MemSlot {self.as_id}:{self.id} gpa={self.gpa:#x} size={self.size:#x} "
                f"flags={MemFlag(self.flags)!r}{' deleted' if self.deleted else ''}>")
